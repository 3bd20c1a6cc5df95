"""Baseline compression methods: real behaviour on small CIFAR ResNets (CPU, a few seconds each)."""
from __future__ import annotations

import copy
import io
import math
import re

import pytest
import torch
import torch.nn as nn

from study import accounting, methods
from study.models import get_arch

from baselines import filterprune as FP
from baselines import hashed as H
from baselines import lowrank as LR
from baselines import softshare as SS
from numerics import assert_close_fp64, assert_within_dot_bound

TARGET = 176_698          # CSG 16/72 on ResNet-20 (README, Ground truth)
NAMES = ["prune", "filterprune", "lowrank", "hashed", "width", "softshare"]
ARCH = get_arch("resnet20")


def method(name):
    return methods.get_method(name)


def x_batch(n=2, seed=0):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def randomise_(model: nn.Module, seed=0):
    """Trained-like state: every parameter and BN statistic nonzero and off its init."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
            elif isinstance(m, nn.Linear):
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    return model


def sgd_steps(model, steps=2, seed=0):
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9,
                          weight_decay=5e-4)
    model.train()
    for i in range(steps):
        x = x_batch(4, seed + i)
        y = torch.arange(4)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def roundtrip(model):
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    return torch.load(buf)


def final_model(name, args, seed=0):
    """The model a run ends training with: built, then every scheduled change applied."""
    m = method(name)
    model = m.build(ARCH, args, seed=seed)
    randomise_(model, seed)
    for epoch in range(10):
        model = m.on_epoch_start(model, args, epoch, 10)
    return model


# -- prune ------------------------------------------------------------------------------------------
def effective_weights(model):
    return {n: (m.weight_orig * m.weight_mask).detach().clone() for n, m in model.named_modules()
            if hasattr(m, "weight_mask")}


def test_prune_masks_survive_sgd_and_checkpoint():
    m = method("prune")
    args = m.args({"sparsity": 0.6, "mode": "oneshot", "prune_at": 0.5})
    model = randomise_(m.build(ARCH, args))
    assert m.on_epoch_start(model, args, 0, 4) is model and m.structure(model) == {"pruned": []}
    m.on_epoch_start(model, args, 2, 4)
    masks = {n: mod.weight_mask.clone() for n, mod in model.named_modules() if hasattr(mod, "weight_mask")}
    convs = FP.C.select_convs(ARCH.build(), ARCH, "authors")
    assert set(masks) == {n for n, _ in convs}  # exactly the block convs; never the stem or classifier
    zeros = sum(int((k == 0).sum()) for k in masks.values())
    assert zeros == round(0.6 * sum(k.numel() for k in masks.values()))

    sgd_steps(model)
    for n, w in effective_weights(model).items():
        assert torch.all(w[masks[n] == 0] == 0), n
        assert torch.count_nonzero(w[masks[n] == 1]) > 0

    state, structure = roundtrip(model), m.structure(model)
    fresh = m.restore(m.build(ARCH, args), args, structure)
    fresh.load_state_dict(state, strict=True)
    for n, mod in fresh.named_modules():
        if n in masks:
            assert torch.equal(mod.weight_mask, masks[n])
            assert torch.all(mod.weight[masks[n] == 0] == 0)  # right after loading, before any forward
    assert accounting.count_parameters(fresh)["nonzero"] == accounting.count_parameters(model)["nonzero"]
    model.eval(), fresh.eval()
    assert torch.allclose(model(x_batch()), fresh(x_batch()), atol=1e-5)
    before = {n: k.clone() for n, k in masks.items()}
    m.on_epoch_start(fresh, args, 3, 4)  # resuming after the pruning epoch prunes nothing more
    sgd_steps(fresh, seed=10)
    for n, w in effective_weights(fresh).items():
        assert torch.equal(dict(fresh.named_modules())[n].weight_mask, before[n])
        assert torch.all(w[before[n] == 0] == 0), n


def test_prune_resume_keeps_the_optimiser_state_aligned():
    """`weight_orig` takes `weight`'s place, so a resumed optimiser (built after restore) matches."""
    m = method("prune")
    args = m.args({"sparsity": 0.5, "mode": "oneshot", "prune_at": 0.5, "linear": True})
    model = m.build(ARCH, args)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)  # built before pruning, as the trainer does
    for epoch in range(2):
        assert m.on_epoch_start(model, args, epoch, 2) is model
        nn.functional.cross_entropy(model(x_batch()), torch.arange(2)).backward()
        opt.step()
    assert "classifier" in m.structure(model)["pruned"]
    fresh = m.restore(m.build(ARCH, args), args, m.structure(model))
    fresh.load_state_dict(roundtrip(model), strict=True)
    opt2 = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
    opt2.load_state_dict(opt.state_dict())
    for p, q in zip(model.parameters(), fresh.parameters()):
        assert p.shape == q.shape
        assert torch.equal(opt.state[p]["momentum_buffer"], opt2.state[q]["momentum_buffer"])


def test_prune_gradual_follows_agp_and_masks_only_grow():
    m = method("prune")
    args = m.args({"sparsity": 0.8, "mode": "gradual", "start": 0.2, "end": 0.6})
    epochs = 10
    s = [m.scheduled(args, e, epochs) for e in range(epochs)]
    assert s[:3] == [0.0, 0.0, 0.0] and s[6:] == [0.8] * 4
    assert all(a < b for a, b in zip(s[2:7], s[3:7]))
    assert s[3] == pytest.approx(0.8 * (1 - (1 - 1 / 4) ** 3))
    model, previous = randomise_(m.build(ARCH, args)).to(memory_format=torch.channels_last), None
    for e in range(epochs):
        model = m.on_epoch_start(model, args, e, epochs)
        masks = torch.cat([k.flatten() for k in
                           (mod.weight_mask for mod in model.modules() if hasattr(mod, "weight_mask"))]) \
            if m.structure(model)["pruned"] else None
        if masks is not None:
            assert int((masks == 0).sum()) == round(s[e] * masks.numel())
            if previous is not None:
                assert torch.all(masks[previous == 0] == 0)
            previous = masks
        with torch.no_grad():  # training moves the weights, and with them the magnitude order
            for p in model.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(e)))


# -- filterprune -----------------------------------------------------------------------------------
@pytest.mark.parametrize("arch_name", ["resnet20", "mobilenetv2"])
def test_filterprune_matches_zeroed_filters_and_restores(arch_name):
    m, arch = method("filterprune"), get_arch(arch_name)
    args = m.args({"ratio": 0.5, "prune_at": 0.5})
    dense = randomise_(m.build(arch, args))
    masked = copy.deepcopy(dense)
    found = {c.conv: c for c in FP.chains(dense, arch, "authors")}
    expected = m.counted(dense, arch, args)
    pruned = m.on_epoch_start(dense, args, 5, 10)
    assert pruned is not dense and m.on_epoch_start(pruned, args, 6, 10) is pruned
    total = accounting.count_parameters(pruned)["total"]
    assert total < accounting.count_parameters(dense)["total"] and total == expected == m.counted(pruned, arch, args)

    kept = m.structure(pruned)["kept"]
    if arch_name == "resnet20":  # conv_a of every basic block, through bn_a into conv_b
        assert set(kept) == {f"stage_{s}.{b}.conv_a" for s in (1, 2, 3) for b in range(3)}
        assert all(found[n].through == (n.replace("conv_a", "bn_a"),) for n in kept)
    else:  # every expansion conv, through bn1, the depthwise conv2 and bn2, into the projection conv3
        assert len(kept) == 17 and all(len(found[n].through) == 3 for n in kept)
    with torch.no_grad():
        for name, keep in kept.items():
            conv = masked.get_submodule(name)
            gone = sorted(set(range(conv.out_channels)) - set(keep))
            assert len(gone) == conv.out_channels // 2
            norms = conv.weight.abs().sum((1, 2, 3))  # the removed filters have the smallest L1 norms
            assert norms[gone].max() <= norms[keep].min()
            conv.weight[gone] = 0
            for through in found[name].through:
                mod = masked.get_submodule(through)
                if isinstance(mod, nn.BatchNorm2d):
                    mod.weight[gone] = 0
                    mod.bias[gone] = 0
            assert pruned.get_submodule(name).out_channels == len(keep)
            assert pruned.get_submodule(found[name].consumer).in_channels == len(keep)
    pruned.eval(), masked.eval(), dense.eval()
    x = x_batch()
    # fewer channels against zeroed ones: the same sums in other orders, compared in float64
    x64, (pruned64, masked64, dense64) = x.double(), (copy.deepcopy(n).double() for n in (pruned, masked, dense))
    assert_close_fp64(pruned64(x64), masked64(x64), "pruned against masked")
    assert not torch.allclose(pruned64(x64), dense64(x64), atol=1e-3)  # the comparison can tell them apart

    fresh = m.restore(m.build(arch, args), args, m.structure(pruned))
    fresh.load_state_dict(roundtrip(pruned), strict=True)
    fresh.eval()
    assert torch.equal(fresh(x), pruned(x))  # the same network and weights: the same operations


# -- lowrank ---------------------------------------------------------------------------------------
def recon_error(w, r_out, r_in):
    return float((LR.reconstruct(*LR.tucker2(w, r_out, r_in)) - w).norm() / w.norm())


@pytest.mark.parametrize("kind", ["random", "trained-like"])
def test_tucker2_error_falls_as_rank_rises(kind):
    """The error's fall with rank and Eckart-Young are properties of the projection, checked in float64
    (consecutive errors differ by ~1e-4 of themselves, float32 rounding of the reconstruction by ~1e-7).
    The float32 factors a run trains with are checked at full rank against their rounding bound."""
    g = torch.Generator().manual_seed(1)
    c_out, c_in = 32, 16
    w = torch.randn(c_out, c_in, 3, 3, generator=g)
    if kind == "trained-like":  # decaying spectra along both channel modes, as in trained convs
        q_out = torch.linalg.qr(torch.randn(c_out, c_out, generator=g))[0] * 0.8 ** torch.arange(c_out)
        q_in = torch.linalg.qr(torch.randn(c_in, c_in, generator=g))[0] * 0.7 ** torch.arange(c_in)
        w = torch.einsum("oikl,po,qi->pqkl", w, q_out, q_in) + 1e-3 * torch.randn(w.shape, generator=g)
    w64 = w.double()
    diag = [recon_error(w64, math.ceil(r * c_out / c_in), r) for r in range(1, c_in + 1)]
    assert all(a > b for a, b in zip(diag, diag[1:])), diag
    assert diag[-1] < 1e-12  # full rank: exact up to float64 rounding
    # with the input mode untouched, Tucker-2 is the truncated SVD of the mode-0 unfolding (Eckart-Young)
    sv = torch.linalg.svdvals(w64.reshape(c_out, -1))
    for r in (1, 5, 20):
        best = float(sv[r:].square().sum().sqrt() / sv.square().sum().sqrt())
        assert recon_error(w64, r, c_in) == pytest.approx(best, rel=1e-9, abs=1e-12)
    along_out = [recon_error(w64, r, 8) for r in range(1, c_out + 1)]
    along_in = [recon_error(w64, 16, r) for r in range(1, c_in + 1)]
    for errors in (along_out, along_in):
        assert all(a > b for a, b in zip(errors, errors[1:]))
    # float32 at full rank: each factor rounded once (3 roundings), then two contractions of c_out and
    # c_in terms: within gamma_(c_out + c_in + 3) of the magnitudes |core| x |expand| x |reduce|
    factors = LR.tucker2(w, c_out, c_in)
    magnitude = LR.reconstruct(*(f.double().abs() for f in factors))
    assert_within_dot_bound(LR.reconstruct(*factors), w64, magnitude, c_out + c_in + 3, "float32 full rank")


def test_tucker2_conv_applies_the_reconstructed_kernel():
    """Three convolutions against one with the composed kernel: the same sums in other orders, so
    compared in float64."""
    conv = nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=True).double()
    layer = LR.Tucker2Conv(conv, 12, 6).load_factors(conv)
    kernel = LR.reconstruct(layer.reduce.weight, layer.core.weight, layer.expand.weight)
    x = x_batch(2)[:, :1].repeat(1, 16, 1, 1).double()
    ref = nn.functional.conv2d(x, kernel, conv.bias, stride=2, padding=1)
    assert_close_fp64(layer(x), ref, "Tucker-2 conv")
    with pytest.raises(ValueError):
        LR.tucker2(conv.weight, 33, 4)


def test_lowrank_decompose_mid_training_and_restore():
    m = method("lowrank")
    args = m.args({"rank_ratio": 0.5, "mode": "decompose", "decompose_at": 0.5})
    model = randomise_(m.build(ARCH, args))
    expected = m.counted(model, ARCH, args)
    assert m.on_epoch_start(model, args, 4, 10) is model and m.structure(model) == {}
    new = m.on_epoch_start(model, args, 5, 10)
    assert new is not model and accounting.count_parameters(new)["total"] == expected
    for name, layer in new.named_modules():
        if isinstance(layer, LR.Tucker2Conv):
            w = model.get_submodule(name).weight
            err = (LR.reconstruct(layer.reduce.weight, layer.core.weight, layer.expand.weight) - w).norm() / w.norm()
            assert err < 0.9
    fresh = m.restore(m.build(ARCH, args), args, m.structure(new))
    fresh.load_state_dict(roundtrip(new), strict=True)
    new.eval(), fresh.eval()
    assert torch.allclose(fresh(x_batch()), new(x_batch()), atol=1e-6)


# -- hashed ----------------------------------------------------------------------------------------
def test_hashed_layer_holds_at_most_buckets_distinct_values():
    m = method("hashed")
    args = m.args({"compression": 0.05})
    model = m.build(ARCH, args)
    layers = [mod for mod in model.modules() if isinstance(mod, H.HashedConv2d)]
    assert len(layers) == 18
    for layer in layers:
        b = layer.buckets.numel()
        assert b == max(1, round(0.05 * layer.index.numel()))
        assert layer.kernel().abs().unique().numel() <= b
        assert layer.kernel().unique().numel() > b  # signs really differ: not a plain weight tie
    state = model.state_dict()
    assert not any(k.endswith((".index", ".sign")) for k in state)  # regenerable, never stored
    counts = accounting.count_parameters(model)
    assert counts["stored"] == counts["total"] == m.counted(model, ARCH, args)
    again = m.build(ARCH, args, seed=0)  # the hashes come from the run seed (hash_seed: run)
    again.load_state_dict(state, strict=True)
    model.eval(), again.eval()
    assert torch.equal(model(x_batch()), again(x_batch()))


# -- width -----------------------------------------------------------------------------------------
def cifar_resnet_params(depth, widths, classes=10):
    n, (a, b, c) = (depth - 2) // 6, widths
    stem = 27 * a + 2 * a
    stage1 = n * (18 * a * a + 4 * a)
    stage2 = 9 * a * b + 9 * b * b + 4 * b + (n - 1) * (18 * b * b + 4 * b)
    stage3 = 9 * b * c + 9 * c * c + 4 * c + (n - 1) * (18 * c * c + 4 * c)
    return stem + stage1 + stage2 + stage3 + c * classes + classes


@pytest.mark.parametrize("depth", [20, 32, 56])
@pytest.mark.parametrize("w", [0.25, 0.5, 0.805, 1.0, 1.5])
def test_width_count_matches_formula(depth, w):
    m, arch = method("width"), get_arch(f"resnet{depth}")
    model = m.build(arch, m.args({"width": w}))
    widths = tuple(max(1, round(w * c)) for c in (16, 32, 64))
    assert m.counted(model, arch, {"width": w}) == cifar_resnet_params(depth, widths)
    assert cifar_resnet_params(20, (16, 32, 64)) == 269_722


# -- softshare -------------------------------------------------------------------------------------
def test_softshare_groups_and_kernels():
    m = method("softshare")
    args = m.args({"templates": [2, 3, 4]})
    model = m.build(ARCH, args)
    shapes = [tuple(b.stacked().shape) for b in model.softshare_banks]
    assert shapes == [(2, 16, 16, 3, 3), (3, 32, 32, 3, 3), (4, 64, 64, 3, 3)]
    # the stride-2 convs opening stages 2 and 3 keep their own weights
    assert type(model.stage_2[0].conv_a) is nn.Conv2d and type(model.stage_3[0].conv_a) is nn.Conv2d
    layer = model.stage_2[1].conv_a
    assert isinstance(layer, SS.SharedConv2d) and layer.bank is model.softshare_banks[1]
    expected = sum(a * t for a, t in zip(layer.coefficients, model.softshare_banks[1].stacked()))
    assert torch.allclose(layer.kernel(), expected, atol=1e-6)
    rest = 269_722 - 6 * 2304 - 5 * 9216 - 5 * 36864
    assert accounting.count_parameters(model)["total"] == rest + 2 * (2304 + 6) + 3 * (9216 + 5) + 4 * (36864 + 5)
    with pytest.raises(ValueError, match="3 sharing groups"):
        m.build(ARCH, m.args({"templates": [2, 2]}))


# -- every method ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_target_search_lands_within_tolerance(name):
    m = method(name)
    model, args = methods.build("resnet20", name, {}, target_params=TARGET)
    assert m.knob in args and args[m.knob] != m.defaults[m.knob]
    reported = m.counted(model, ARCH, args)
    assert abs(reported - TARGET) <= m.tolerance * TARGET
    # the count the finished model really has, on the method's own budget count
    final = final_model(name, args)
    assert accounting.count_parameters(final)[m.count] == reported


@pytest.mark.parametrize("name", NAMES)
def test_count_at_resolved_knob_is_what_the_model_holds(name):
    m = method(name)
    knobs = {"prune": 0.3, "filterprune": 0.25, "lowrank": 0.4, "hashed": 0.2, "width": 0.7, "softshare": 2}
    args = m.args({m.knob: knobs[name]})
    final = final_model(name, args, seed=3)
    assert accounting.count_parameters(final)[m.count] == m.counted(final, ARCH, args) == \
        m.counted(m.build(ARCH, args), ARCH, args)


@pytest.mark.parametrize("name", NAMES)
def test_unreachable_target_names_smallest_reachable_count(name):
    m = method(name)
    args = m.args({})
    with pytest.raises(methods.BudgetError) as err:
        methods.build("resnet20", name, {}, target_params=100)
    message = str(err.value)
    assert "\n" not in message and message.startswith(name) and "target 100" in message
    smallest = int(re.search(r"smallest reachable count is (\d+)", message).group(1))
    extreme = {"prune": 1.0, "filterprune": 1 - 1e-9, "lowrank": 1e-9, "hashed": 1e-12, "width": 1e-3,
               "softshare": 1}[name]
    at_extreme = m.args({**args, m.knob: extreme})
    assert smallest == m.counted(m.build(ARCH, at_extreme), ARCH, at_extreme)
    assert smallest > 100


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_every_trainable_parameter(name):
    m = method(name)
    args = m.args({})
    model = final_model(name, args).to(memory_format=torch.channels_last)  # as the trainer does
    model.train()
    nn.functional.cross_entropy(model(x_batch(2)), torch.arange(2)).backward()
    for pname, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.count_nonzero(p.grad) > 0, pname


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="mode"):
        method("prune").args({"mode": "sometimes"})
    with pytest.raises(ValueError, match="ratio"):
        method("filterprune").args({"ratio": 1.0})
    with pytest.raises(ValueError, match="does not take"):
        method("hashed").args({"buckets": 3})
    with pytest.raises(ValueError, match="templates"):
        method("softshare").args({"templates": 0})
