"""Static HyperNetworks (baselines/hypernet.py): kernels, counts, budget search, speed path (CPU, seconds)."""
from __future__ import annotations

import copy
import io
import json
import subprocess

import pytest
import torch
import torch.nn.functional as F

from study import accounting, methods
from study.csg import generated_convs, materialize
from study.models import get_arch

from baselines import hypernet as HN

from conftest import PYTHON, REPO

TARGET = 176_698  # CSG 16/72 on ResNet-20
RESNET20_CONVS = 6 * 2304 + (4608 + 5 * 9216) + (18432 + 5 * 36864)   # its 18 block convs
RESNET20_BLOCKS = 6 * 1 + (2 + 5 * 4) + (8 + 5 * 16)                   # 16x16 blocks of those convs


def hypernet(arch="resnet20", seed=0, **args):
    m = methods.get_method("hypernet")
    return m, m.build(get_arch(arch), m.args(args), seed=seed)


def randomise_(gen: HN.HyperGenerator, seed=0):
    """Nonzero biases too, so a kernel that ignored either bias would differ."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in (gen.weight_in, gen.bias_in, gen.weight_out, gen.bias_out):
            p.copy_(torch.randn(p.shape, generator=g))
    return gen


def by_hand(z, w_in, b_in, w_out, b_out, s_in, d, s_out, k):
    """Ha et al.'s two maps for one embedding, written out: a = W_in z + b_in, K_c = W_out a_c + b_out;
    returns the block [S_out, S_in, k, k] whose input channel c is K_c."""
    a = (w_in @ z + b_in).reshape(s_in, d)
    block = torch.empty(s_out, s_in, k, k, dtype=z.dtype)
    for c in range(s_in):
        block[:, c] = (w_out @ a[c] + b_out).reshape(s_out, k, k)
    return block


@pytest.mark.parametrize("c_in, c_out, S, k", [(16, 32, 8, 3), (20, 10, 8, 3), (12, 12, 4, 1)])
def test_kernel_is_the_two_layer_product_by_hand(c_in, c_out, S, k):
    z_dim, d = 5, 7
    gen = randomise_(HN.HyperGenerator(S, z_dim, d, k))
    layer = HN.HyperConv2d(c_in, c_out, gen, padding=k // 2)
    other = HN.HyperConv2d(8, 8, gen, padding=k // 2)  # a second layer shares the generator
    kernel = layer.kernel().detach()
    assert kernel.shape == (c_out, c_in, k, k)
    n_in = -(-c_in // S)
    for b, z in enumerate(layer.code.detach()):
        i, j = divmod(b, n_in)
        block = by_hand(z, gen.weight_in.detach(), gen.bias_in.detach(), gen.weight_out.detach(),
                        gen.bias_out.detach(), S, d, S, k)
        expect = block[:max(0, min(S, c_out - i * S)), :max(0, min(S, c_in - j * S))]  # cropped at the edges
        got = kernel[i * S:(i + 1) * S, j * S:(j + 1) * S]
        assert torch.allclose(got, expect, atol=1e-5), (i, j)
    x = torch.randn(2, c_in, 9, 9)
    assert torch.allclose(layer(x), F.conv2d(x, kernel, None, 1, k // 2), atol=1e-4)
    assert other.kernel().shape == (8, 8, k, k)


def test_counts_match_the_closed_formula():
    for z_dim, hidden in ((64, 64), (8, 3), (64, 141)):
        m, model = hypernet(z_dim=z_dim, hidden=hidden)
        hyper = (z_dim + 1) * 16 * hidden + (hidden + 1) * 16 * 9
        expected = 269_722 - RESNET20_CONVS + RESNET20_BLOCKS * z_dim + hyper
        counts = accounting.count_parameters(model)
        assert counts["total"] == counts["stored"] == counts["trainable"] == expected
        assert m.formula(get_arch("resnet20"), m.args({"z_dim": z_dim, "hidden": hidden})) == expected
    # Ha et al.'s N_z = d = 64 on ResNet-20: 85,802 in all
    assert accounting.count_parameters(hypernet()[1])["total"] == 85_802
    # 1x1 blocks where CSG generates 1x1 convs (MobileNetV2's expansion convs), on the formula too
    m, model = hypernet("mobilenetv2", z_dim=8, hidden=4)
    arch = get_arch("mobilenetv2")
    assert accounting.count_parameters(model)["total"] == m.formula(arch, m.args({"z_dim": 8, "hidden": 4}))
    layers = [layer for _, layer in generated_convs(model)]
    assert layers and all(layer.kernel_size == (1, 1) for layer in layers)


def test_same_layers_as_csg():
    for arch, policy in (("resnet20", "authors"), ("resnet20", "all"), ("mobilenetv2", "authors")):
        csg, _ = methods.build(arch, "csg", {"policy": policy, "code_dim": 4})
        _, hyper = hypernet(arch, policy=policy, hidden=4, z_dim=4)
        assert [n for n, _ in generated_convs(csg)] == [n for n, _ in generated_convs(hyper)]
        assert all(isinstance(layer, HN.HyperConv2d) for _, layer in generated_convs(hyper))


@pytest.mark.parametrize("arch, target", [("resnet20", TARGET), ("resnet56", 347_162), ("resnet20", 120_000)])
def test_budget_search_lands_within_tolerance(arch, target):
    m = methods.get_method("hypernet")
    model, args = methods.build(arch, "hypernet", {}, target_params=target)
    got = accounting.count_parameters(model)[m.count]
    assert got == m.counted(model, get_arch(arch), args)
    assert abs(got - target) <= m.tolerance * target
    assert args["z_dim"] == 64  # the knob is the hidden width; N_z stays the paper's
    # the nearest width: one step either way is no closer
    for d in (args["hidden"] - 1, args["hidden"] + 1):
        assert abs(m.formula(get_arch(arch), {**args, "hidden": d}) - target) >= abs(got - target)
    if (arch, target) == ("resnet20", TARGET):
        assert args["hidden"] == 141 and got == 176_970
    with pytest.raises(methods.BudgetError, match="smallest reachable count"):
        methods.build(arch, "hypernet", {}, target_params=1000)


def test_params_cli_lands_within_one_percent():
    out = subprocess.run([PYTHON, "-m", "study", "params", "--arch", "resnet20", "--method", "hypernet",
                          "--target-params", str(TARGET), "--json"], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert abs(report["relative_error"]) <= 0.01 and report["budget_count"] == "stored"
    assert report["total"] == report["stored"] == 176_970 and report["kernel_gen_flops"] > 0


def test_one_generation_per_forward_pass_and_gradients_everywhere():
    m, model = hypernet(hidden=8, z_dim=8)
    model = model.to(memory_format=torch.channels_last)
    gen = model.hypernet
    calls = []
    real = gen.product
    gen.product = lambda z: (calls.append(z.shape[0]), real(z))[1]
    model.train()
    x = torch.randn(2, 3, 32, 32).to(memory_format=torch.channels_last)
    for _ in range(2):
        model.zero_grad()
        F.cross_entropy(model(x), torch.arange(2)).backward()
    assert calls == [RESNET20_BLOCKS, RESNET20_BLOCKS]  # every layer's blocks in one product, once a pass
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.count_nonzero(p.grad) > 0, name


def test_materialize_checkpoint_and_deepcopy_agree():
    m, model = hypernet(hidden=8, z_dim=8)
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    y = model(x)
    assert torch.allclose(materialize(model).eval()(x), y, atol=1e-5)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    _, fresh = hypernet(hidden=8, z_dim=8, seed=5)
    fresh.load_state_dict(torch.load(buf), strict=True)
    assert torch.allclose(fresh.eval()(x), y, atol=1e-6)
    clone = copy.deepcopy(model)
    with torch.no_grad():
        clone.hypernet.bias_out.add_(1.0)
    assert torch.allclose(model(x), y) and not torch.allclose(clone(x), y, atol=1e-3)


def test_generated_kernels_start_at_the_dense_init_scale():
    _, model = hypernet()
    plain = get_arch("resnet20").build(num_classes=10)
    dense = torch.cat([c.weight.detach().flatten() for n, c in plain.named_modules()
                       if n in dict(generated_convs(model))]).std()
    generated = torch.cat([layer.kernel().detach().flatten() for _, layer in generated_convs(model)]).std()
    assert 0.5 < float(generated / dense) < 2.0


def test_bad_arguments_are_refused():
    m = methods.get_method("hypernet")
    for bad in ({"hidden": 0}, {"z_dim": 1.5}, {"policy": "some"}, {"embedding": 3}):
        with pytest.raises(ValueError):
            m.args(bad)
