"""The architectures beyond the CIFAR ResNets: exact parameter counts, conversion policies, materialize."""
from __future__ import annotations

import functools

import pytest
import torch
import torch.nn as nn

from study.accounting import count_parameters
from study.csg import generated_convs, materialize
from study.methods import build
from study.methods.csg import csg_plan
from study.models import ARCHS, get_arch


# arch -> (plain total, CSG args, CSG total); the authors' numbers where they exist (README, Ground truth)
COUNTS = {
    "densenet_bc_k36": (1_542_682, {"slice": 12, "code_dim": 72}, 842_842),
    "densenet_bc_k48": (2_733_130, {"slice": 12, "code_dim": 72}, 1_416_394),
    "shufflenetv2_0_5": (352_042, {"slice": 16, "code_dim": 16}, 171_818),
    "mobilenetv2": (2_296_922, {"slice": 16, "code_dim": 16}, 1_595_322),
    "imagenet_resnet50": (25_557_032, {"slice": 16, "code_dim": 128}, 15_163_432),
    # ours (no published counts): measured once, pinned so that a change shows
    "imagenet_resnet18": (11_689_512, {"slice": 16, "code_dim": 128}, 1_609_256),
    "deeplabv3_resnet50": (39_638_869, {"slice": 16, "code_dim": 128}, 15_875_925),
    "deeplabv3_resnet101": (58_630_997, {"slice": 16, "code_dim": 128}, 25_398_101),
}
NEW_ARCHS = list(COUNTS)


def _bottlenecks(blocks):
    return [(layer, i) for layer, n in zip((1, 2, 3, 4), blocks) for i in range(n)]


EXPECTED_GENERATED = {
    "densenet_bc_k36": [f"dense{s}.{i}.conv2" for s in (1, 2, 3) for i in range(6)],
    "densenet_bc_k48": [f"dense{s}.{i}.conv2" for s in (1, 2, 3) for i in range(6)],
    "mobilenetv2": [f"layers.{i}.conv1" for i in range(17)],
    "shufflenetv2_0_5": ["conv2"],
    "imagenet_resnet50": [f"layer{l}.{i}.conv2" for l, i in _bottlenecks((3, 4, 6, 3))],
    "imagenet_resnet18": [f"layer{l}.{i}.conv{c}" for l, i in _bottlenecks((2, 2, 2, 2)) for c in (1, 2)],
    "deeplabv3_resnet50": [f"backbone.layer{l}.{i}.conv2" for l, i in _bottlenecks((3, 4, 6, 3))]
                          + [f"classifier.0.convs.{j}.0" for j in (1, 2, 3)],
    "deeplabv3_resnet101": [f"backbone.layer{l}.{i}.conv2" for l, i in _bottlenecks((3, 4, 23, 3))]
                           + [f"classifier.0.convs.{j}.0" for j in (1, 2, 3)],
}


@functools.lru_cache(maxsize=None)
def _plain(arch):
    torch.manual_seed(0)
    return build(arch, "none")[0].eval()


@functools.lru_cache(maxsize=None)
def _csg(arch, policy="authors"):
    torch.manual_seed(0)
    return build(arch, "csg", {**COUNTS[arch][1], "policy": policy})[0].eval()


def _small_input(arch):
    spec = get_arch(arch)
    size = 32 if spec.task == "cifar10" else 64
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))


def test_all_new_archs_registered():
    for arch in NEW_ARCHS:
        assert arch in ARCHS
    assert {get_arch(a).task for a in NEW_ARCHS} == {"cifar10", "imagenet", "voc"}


@pytest.mark.parametrize("arch", NEW_ARCHS)
def test_parameter_counts(arch):
    plain, _, csg = COUNTS[arch]
    assert count_parameters(_plain(arch))["total"] == plain
    counts = count_parameters(_csg(arch))
    assert counts["total"] == csg
    assert counts["stored"] == csg  # a learned generator is stored


@pytest.mark.parametrize("arch", NEW_ARCHS)
def test_authors_policy_selects_exactly_the_intended_layers(arch):
    names = [name for name, _ in generated_convs(_csg(arch))]
    assert names == EXPECTED_GENERATED[arch]
    spec, plain = get_arch(arch), dict(_plain(arch).named_modules())
    for name, layer in generated_convs(_csg(arch)):
        conv = plain[name]
        assert isinstance(conv, nn.Conv2d) and conv.groups == 1
        assert conv.kernel_size == (csg_plan(spec).kernel_size,) * 2
        assert (layer.in_channels, layer.out_channels) == (conv.in_channels, conv.out_channels)
        assert layer.stride == conv.stride and layer.padding == conv.padding and layer.dilation == conv.dilation
    assert spec.first_conv not in names


def test_deeplab_keeps_dilation():
    layers = dict(generated_convs(_csg("deeplabv3_resnet50")))
    assert layers["classifier.0.convs.1.0"].dilation == (12, 12)
    assert layers["classifier.0.convs.3.0"].dilation == (36, 36)
    assert layers["backbone.layer4.2.conv2"].dilation == (4, 4)


@pytest.mark.parametrize("arch", NEW_ARCHS)
def test_all_policy_converts_every_ungrouped_conv_but_the_stem(arch):
    spec = get_arch(arch)
    k = csg_plan(spec).kernel_size
    expected = [name for name, m in _plain(arch).named_modules()
                if isinstance(m, nn.Conv2d) and m.groups == 1 and m.kernel_size == (k, k) and name != spec.first_conv]
    converted = [name for name, _ in generated_convs(_csg(arch, "all"))]
    assert converted == expected
    # whatever is left as an ordinary conv is the stem, depthwise, or of the other kernel size
    for name, m in _csg(arch, "all").named_modules():
        if isinstance(m, nn.Conv2d):
            assert name == spec.first_conv or m.groups > 1 or m.kernel_size != (k, k), name


@torch.no_grad()
def _calibrate_batchnorm(model, x):
    """Running statistics from one batch: an untrained deep network with the default statistics
    (mean 0, var 1) overflows in eval mode, which would hide the comparison behind inf/nan."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average: after one batch, exactly its statistics
    model.train()(x)
    return model.eval()


@pytest.mark.parametrize("arch", NEW_ARCHS)
def test_materialize_gives_identical_outputs(arch):
    x = _small_input(arch)
    model = _calibrate_batchnorm(_csg(arch), x)
    with torch.no_grad():
        plain = materialize(model).eval()
        assert not list(generated_convs(plain))
        out, ref = model(x), plain(x)
    assert isinstance(out, torch.Tensor) and torch.isfinite(out).all()
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", ["deeplabv3_resnet50", "deeplabv3_resnet101"])
def test_deeplab_returns_a_plain_tensor_with_clean_names(arch):
    model = _plain(arch)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert isinstance(out, torch.Tensor) and out.shape == (1, 21, 64, 64)
    keys = list(model.state_dict())
    assert keys[0].startswith("backbone.conv1") and all(k.startswith(("backbone.", "classifier.")) for k in keys)


def test_classifier_outputs():
    for arch, shape in (("densenet_bc_k36", (2, 10)), ("mobilenetv2", (2, 10)), ("shufflenetv2_0_5", (2, 10)),
                        ("imagenet_resnet18", (2, 1000))):
        with torch.no_grad():
            assert _plain(arch)(_small_input(arch)).shape == shape


def test_width_scaling_of_cifar_models():
    for arch in ("densenet_bc_k36", "mobilenetv2", "shufflenetv2_0_5"):
        spec = get_arch(arch)
        half = spec.build(num_classes=10, width=0.5)
        full = count_parameters(_plain(arch))["total"]
        assert count_parameters(half)["total"] < 0.5 * full
        with torch.no_grad():
            assert half.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError):
        get_arch("imagenet_resnet50").build(num_classes=1000, width=0.5)
