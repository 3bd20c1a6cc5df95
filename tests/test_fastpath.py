"""The fast path: batched kernel generation and its caches on the harness's own path (bf16 autocast,
channels_last, `Task.evaluate`, checkpoints), bf16 against fp32, the batched augmentation as
`CifarLoader` hands it out, and `python -m study bench`.

Speed targets are measured by `python -m study bench` and reported; nothing here asserts a timing.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision.transforms.functional as TF

from study import checkpoint
from study.cli import main as cli_main
from study.csg import assemble, generated_convs, generators, materialize
from study.data.cifar import MEAN, STD, CifarLoader, normalize
from study.methods import build
from study.tasks import get_task
from study.train import autocast_for

from numerics import assert_close_fp64, assert_within_dot_bound, linear_exact, split_product

CL = torch.channels_last
BF16 = autocast_for("bf16", torch.device("cpu"))


def _csg(arch="resnet20", seed=0, **args):
    torch.manual_seed(seed)
    model, _ = build(arch, "csg", {"slice": 16, "code_dim": 72, **args}, seed=seed)
    return model


def _calibrate_bn(model, x):
    """BN statistics of real images (one pass, cumulative average), so activations are well scaled."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        model(x)
    return model.eval()


# -- batched generation -----------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["contiguous", "block"])
@pytest.mark.parametrize("fmt", [torch.contiguous_format, CL])
def test_batched_generation_equals_per_layer_resnet56(layout, fmt):
    """By design the batched kernels are one matrix product, split per layer: checked bitwise.  Against
    generating layer by layer (another GEMM shape, so on some CPUs another summation order), both are
    checked against the exact value within the rounding bound of a code_dim-term dot product."""
    model = _csg("resnet56", slice=16, code_dim=128, layout=layout)
    (gen,) = generators(model)
    layers = [layer for _, layer in generated_convs(model)]
    assert len(layers) == 54
    with torch.no_grad():
        batched = gen.generate_all(fmt)
        once = split_product(gen)
        for layer, kernel, part in zip(layers, batched, once):
            def shape(flat, layer=layer):
                return assemble(flat, layer.out_channels, layer.in_channels, 16, 3, layout)
            assert kernel.shape == (layer.out_channels, layer.in_channels, 3, 3)
            assert kernel.is_contiguous(memory_format=fmt)
            assert torch.equal(kernel, shape(part))
            exact, magnitude = (shape(t) for t in linear_exact(layer.code, gen.weight))
            assert_within_dot_bound(kernel, exact, magnitude, 128, "batched")
            assert_within_dot_bound(shape(F.linear(layer.code, gen.weight)), exact, magnitude, 128, "per layer")


def test_batched_generation_gradients_equal_per_layer():
    """One split of the batched product must give each code and the generator the same gradients
    as generating layer by layer (ResNet-56 12/72: every kernel is cropped).  The loss is linear in the
    kernels, so on both paths dL/dkernel is `weights` exactly; what differs is the order of the final
    reductions: over every slice of the network for the generator's gradient, over S*S*k*k values for
    a code's.  Both paths are checked against the exact gradients within those reductions' bounds."""
    model = _csg("resnet56", slice=12, code_dim=72)
    (gen,) = generators(model)
    layers = [layer for _, layer in generated_convs(model)]
    weights = [torch.randn(layer.out_channels, layer.in_channels, 3, 3) for layer in layers]

    def loss(kernels, weights=weights):
        return sum((k * w).sum() for k, w in zip(kernels, weights))

    def per_layer(weight, codes):
        return [assemble(F.linear(c, weight), layer.out_channels, layer.in_channels, 12, 3, "contiguous")
                for c, layer in zip(codes, layers)]

    loss(gen.generate_all(CL)).backward()
    batched = [gen.weight.grad.clone()] + [layer.code.grad.clone() for layer in layers]
    model.zero_grad(set_to_none=True)
    loss(per_layer(gen.weight, [layer.code for layer in layers])).backward()
    single = [gen.weight.grad] + [layer.code.grad for layer in layers]

    def float64_gradients(f):
        weight = f(gen.weight).requires_grad_()
        codes = [f(layer.code).requires_grad_() for layer in layers]
        loss(per_layer(weight, codes), [f(w) for w in weights]).backward()
        return [weight.grad] + [c.grad for c in codes]
    exact = float64_gradients(lambda t: t.detach().double())
    magnitude = float64_gradients(lambda t: t.detach().double().abs())  # sum of |terms| of each reduction
    lengths = [sum(layer.code.shape[0] for layer in layers)] + [12 * 12 * 9] * len(layers)
    for a, b, e, m, n in zip(batched, single, exact, magnitude, lengths):
        assert_within_dot_bound(a, e, m, n, "batched")
        assert_within_dot_bound(b, e, m, n, "per layer")


# -- the caches on the harness's path ---------------------------------------------------------------
@pytest.fixture(scope="module")
def test_images(cifar):
    return cifar.test_x[:256], cifar.test_y[:256]


def _eval_pass(model, images, batch=64):
    x, y = images
    return get_task("cifar10").evaluate(model, CifarLoader(x, y, batch, train=False, channels_last=True), BF16)


def test_eval_pass_follows_optimiser_steps_and_checkpoints(test_images, tmp_path):
    """On the harness's path (bf16, channels_last, the task's evaluation): a pass after an optimiser
    step, or after a checkpoint is loaded as a resumed run loads it, sees the new values."""
    model = _calibrate_bn(_csg(), normalize(test_images[0][:128])).to(memory_format=CL)
    first = _eval_pass(model, test_images)       # 4 batches
    assert _eval_pass(model, test_images) == first  # nothing changed: the same figures

    # a training step (bf16, channels_last, as the trainer does it)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    x = normalize(test_images[0][:32]).contiguous(memory_format=CL)
    model.train()
    with BF16():
        loss = F.cross_entropy(model(x), test_images[1][:32])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    after_step = _eval_pass(model, test_images)
    assert after_step != first
    assert _eval_pass(model, test_images) == after_step

    # loading a checkpoint (through study.checkpoint, as a resumed run does)
    other = _calibrate_bn(_csg(seed=1), normalize(test_images[0][:128])).to(memory_format=CL)
    checkpoint.save(tmp_path, 1, {"model": other.state_dict()})
    target = _eval_pass(other, test_images)
    model.load_state_dict(checkpoint.load_latest(tmp_path)["model"])
    assert _eval_pass(model, test_images) == target


def test_a_pass_sees_changes_survives_failures_and_deep_copies():
    """Outputs equal those of freshly generated kernels (`materialize`) after a change between passes,
    after a forward that failed half-way, and in a deep copy; a layer called on its own gets the
    kernel a pass uses (from its own codes alone: another GEMM shape, so equal to rounding)."""
    import copy

    model = _csg().eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        torch.testing.assert_close(ref, materialize(model)(x), rtol=0, atol=0)
        layers = [layer for _, layer in generated_convs(model)]
        (gen,) = generators(model)
        for layer, kernel in zip(layers[:3], gen.generate_all()):
            torch.testing.assert_close(layer.kernel(), kernel)
        with pytest.raises(RuntimeError):
            model(torch.randn(2, 5, 32, 32))     # wrong channel count: the stem fails
        torch.testing.assert_close(model(x), ref, rtol=0, atol=0)
        layers[0].code.add_(1.0)                 # a change between passes is seen
        changed = model(x)
        torch.testing.assert_close(changed, materialize(model)(x), rtol=0, atol=0)
    assert not torch.allclose(changed, ref)
    clone = copy.deepcopy(model)
    with torch.no_grad():
        torch.testing.assert_close(clone(x), changed)
        next(layer for _, layer in generated_convs(clone)).code.add_(1.0)  # the copy's own codes
        torch.testing.assert_close(model(x), changed, rtol=0, atol=0)


def test_memory_format_switch_gives_the_same_outputs():
    """A channels_last forward then a contiguous one: the same outputs.  The two formats take
    different convolution kernels, so the outputs are compared in float64."""
    model = _csg().double().eval()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        a = model.to(memory_format=CL)(x.contiguous(memory_format=CL))
        b = model(x)
        layer = next(layer for _, layer in generated_convs(model))
        assert layer.kernel(CL).is_contiguous(memory_format=CL) and layer.kernel().is_contiguous()
    assert_close_fp64(a, b, "channels_last against contiguous")


# -- bf16 against fp32 ------------------------------------------------------------------------------
# Tolerances, stated once: per image, the relative L2 error of the bf16 logits against fp32 has a
# median below 2% and a maximum below 10%; top-1 predictions agree on at least 97% of images for an
# untrained (BN-calibrated) ResNet-20, whose logits are close together, and on at least 99% for the
# authors' trained ResNet-56s, whose accuracy moves by at most 0.6 points.
def _bf16_vs_fp32(model, x):
    model = model.to(memory_format=CL).eval()
    x = x.contiguous(memory_format=CL)
    with torch.no_grad():
        fp32 = model(x)
        with BF16():
            bf16 = model(x)
    assert bf16.dtype == torch.bfloat16
    bf16 = bf16.float()
    rel = (bf16 - fp32).norm(dim=1) / fp32.norm(dim=1)
    return rel, fp32.argmax(1), bf16.argmax(1)


@pytest.mark.parametrize("method", ["none", "csg"])
def test_bf16_forward_stays_close_to_fp32_resnet20(cifar, method):
    x = normalize(cifar.test_x[:500])
    torch.manual_seed(0)
    model, _ = build("resnet20", method, {"slice": 16, "code_dim": 72} if method == "csg" else {})
    _calibrate_bn(model, x[:256])
    rel, top_fp32, top_bf16 = _bf16_vs_fp32(model, x)
    assert rel.median() < 0.02 and rel.max() < 0.10, (float(rel.median()), float(rel.max()))
    assert (top_fp32 == top_bf16).float().mean() >= 0.97


@pytest.mark.parametrize("name", ["RN56_ORG.t7", "RN56_1616-128.t7"])
def test_bf16_keeps_the_authors_resnet56_predictions(cifar, authors_dir, name):
    from study.authors import load_model

    model, _ = load_model(authors_dir / name, "resnet56")
    x, y = normalize(cifar.test_x[:500]), cifar.test_y[:500]
    rel, top_fp32, top_bf16 = _bf16_vs_fp32(model, x)
    assert rel.median() < 0.02 and rel.max() < 0.10, (float(rel.median()), float(rel.max()))
    assert (top_fp32 == top_bf16).float().mean() >= 0.99
    acc32, acc16 = ((t == y).float().mean() * 100 for t in (top_fp32, top_bf16))
    assert acc32 > 90 and abs(acc32 - acc16) <= 0.6


# -- the batched augmentation, as CifarLoader hands it out --------------------------------------------
def test_cifar_loader_batches_equal_torchvision_transforms(cifar):
    """Black-box: every image of two epochs of CifarLoader(train=True, channels_last=True) is exactly
    torchvision's RandomCrop(32, padding=4) + RandomHorizontalFlip + ToTensor + Normalize of its source
    image for some crop offset and flip, with its own label; each source appears once per epoch; and
    the offsets and flips vary.  (test_data.py checks `crop_flip` for given offsets; this checks the
    loader's own draws, indexing, normalisation and memory format end to end.)"""
    n = 40
    x, y = cifar.train_x[:n], cifar.train_y[:n]
    refs = {}  # uint8 HWC bytes of a torchvision-augmented image -> (source, dy, dx, flip, PIL image)
    for i in range(n):
        padded = TF.pad(TF.to_pil_image(x[i]), [4], fill=0)
        for dy in range(9):
            for dx in range(9):
                crop = TF.crop(padded, dy, dx, 32, 32)
                for flip in (False, True):
                    img = TF.hflip(crop) if flip else crop
                    refs.setdefault(np.asarray(img).tobytes(), (i, dy, dx, flip, img))
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    loader = CifarLoader(x, y, 16, train=True, seed=3, channels_last=True)
    draws = []
    for _ in range(2):
        sources = []
        for xb, yb in loader:
            assert xb.dtype == torch.float32 and xb.is_contiguous(memory_format=CL)
            for img, label in zip(xb, yb):
                raw = ((img * std + mean) * 255).round().clamp(0, 255).to(torch.uint8)
                key = raw.permute(1, 2, 0).contiguous().numpy().tobytes()
                assert key in refs, "an image that no crop offset and flip of any source produces"
                i, dy, dx, flip, pil = refs[key]
                ref = TF.normalize(TF.to_tensor(pil), MEAN, STD)
                torch.testing.assert_close(img, ref, rtol=1e-5, atol=1e-5)
                assert int(label) == int(y[i])
                sources.append(i)
                draws.append((dy, dx, flip))
        assert sorted(sources) == list(range(n))
    assert len({d[:2] for d in draws}) > 20 and {d[2] for d in draws} == {False, True}


# -- the bench command ----------------------------------------------------------------------------------
def test_bench_json_tiny(data_root, monkeypatch, capsys):
    # The bench's compiled paths run with torch's `eager` backend: they are what is under test here, and
    # inductor would spend minutes compiling on these cores (tests/test_compile.py checks compiled steps)
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: real_compile(model, **{**kwargs, "backend": "eager"}))
    assert cli_main(["bench", "--archs", "resnet20", "--configs", "16/72", "--batch-size", "16", "--steps", "1",
                     "--repeats", "2", "--warmup", "1", "--reference-epoch-images", "48", "--memory-steps", "1",
                     "--workers-images", "64", "--modes", "eager,compile", "--profile-steps", "2",
                     "--data-root", str(data_root), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["precision"] in ("fp32", "bf16") and out["cpu_model"]
    assert out["targets"]["harness_speedup_over_reference"] == (4.0 if out["precision"] == "bf16" else 2.0)
    assert set(out["images_per_s"]) == {f"resnet20 {m} {mode}" for m in ("plain", "csg") for mode in ("eager", "compile")}
    for label in ("plain", "csg 16/72"):  # every category's share of the profiled time, adding up to one
        share = out["time_breakdown"][label]["share"]
        assert {"conv forward", "conv backward", "batchnorm", "data", "evaluation", "optimizer"} <= set(share)
        assert sum(share.values()) == pytest.approx(1.0, abs=1e-3)
    assert "csg_product" in out["time_breakdown"]["csg 16/72"]["share"]
    assert "csg_product" not in out["time_breakdown"]["plain"]["share"]
    for key in ("csg_over_plain_train", "csg_over_plain_eval", "harness_speedup_over_reference",
                "csg_over_plain_train_compiled", "csg_over_plain_eval_compiled", "harness_speedup_over_reference_compiled"):
        assert isinstance(out[key], float) and out[key] > 0, key
    rows = [r for r in out["throughput"] if r["mode"] == "eager"]
    assert [r["config"] for r in rows] == ["plain", "csg 16/72"]
    for r in rows:
        assert r["train_images_per_s"] > 0 and r["eval_images_per_s"] > 0
    assert rows[1]["train_over_plain"] == out["csg_over_plain_train"]
    epoch = out["epoch"]
    assert epoch["scaled_to_images"] == 45_000 and epoch["images_timed"] == 48
    for loop in ("harness", "harness_compiled", "reference"):
        assert epoch[loop]["epoch_seconds"] > 0 and epoch[loop]["images"] == 48
    # the compiled epoch is the harness's loop with the step's forward compiled, its compilation untimed
    assert not epoch["harness"]["compiled"] and epoch["harness_compiled"]["compiled"]
    assert epoch["harness_compiled"]["warmup_seconds"] > 0
    assert out["harness_speedup_over_reference_compiled"] == pytest.approx(
        epoch["reference"]["epoch_seconds"] / epoch["harness_compiled"]["epoch_seconds"], abs=1e-3)
    assert epoch["compiled_over_eager"] == pytest.approx(
        epoch["harness"]["epoch_seconds"] / epoch["harness_compiled"]["epoch_seconds"], abs=1e-3)
    hw = out["hardware"]
    assert hw["cpu_model"] and hw["logical_cores"] > 0 and hw["threads"] > 0 and hw["torch_version"]
    assert hw["precision"] in ("fp32", "bf16")
    mem = out["memory"]
    assert mem["bench_process_peak_rss_mb"] > 0 and mem["resnet56_csg_train_peak_rss_mb"] > 0
    assert mem["resnet56_plain_train_process"]["peak_rss_mb"] > 0
    workers = out["workers"]
    assert workers["sequential"]["total_seconds"] == pytest.approx(sum(workers["sequential"]["runs_seconds"]), abs=0.02)
    assert workers["parallel"]["wall_seconds"] == max(workers["parallel"]["runs_seconds"])
    assert workers["parallel"]["threads_each"] == max(1, workers["sequential"]["threads"] // 2)
    assert out["jobs2_over_sequential"] == workers["jobs2_over_sequential"] == pytest.approx(
        workers["parallel"]["wall_seconds"] / workers["sequential"]["total_seconds"], abs=1e-3)


@pytest.mark.parametrize("argv", [
    ["--archs", "resnet99"], ["--archs", "imagenet_resnet50"], ["--configs", "16/x"],
    ["--configs", "resnet56:16/128"], ["--configs", "16/72/diagonal"], ["--batch-size", "0"],
    ["--precision", "fp64"], ["--steps", "-1"], ["--reference-epoch-images", "10"],
    ["--workers-images", "-5"], ["--modes", "eager,jit"], ["--profile-steps", "-1"],
])
def test_bench_bad_arguments_exit_2_with_one_line(argv, capsys):
    assert cli_main(["bench", "--archs", "resnet20", *argv] if argv[0] != "--archs" else ["bench", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err and "\n" not in err and "Traceback" not in err
