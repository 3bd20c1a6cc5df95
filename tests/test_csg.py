"""The CSG layer: kernel layouts against independent references, conversion, materialisation, the
random-binary generator, batched generation and its cache."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from study import accounting
from study.csg import (CSGSpec, GeneratedConv2d, SliceGenerator, all_eligible, assemble, convert,
                       generated_convs, generators, materialize, n_slices)
from study.methods import build

from numerics import assert_close_fp64, assert_within_dot_bound, linear_exact, split_product


def _resnet20_csg(seed=0, **args):
    torch.manual_seed(seed)
    model, _ = build("resnet20", "csg", {"slice": 16, "code_dim": 8, **args}, seed=seed)
    return model


def _randomise_bn(model, seed=0):
    """Non-trivial BN statistics, so that eval-mode outputs depend on every layer."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model


def _x(n=2, seed=0):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


# -- independent references of the two layouts ---------------------------------------------------
def authors_contiguous(flat: torch.Tensor, c_out: int, c_in: int, s: int, k: int) -> torch.Tensor:
    """The authors' code: out = CSG(code) -> view(ceil(Cout/S)*S, ceil(Cin/S)*S, k, k)[:Cout, :Cin]."""
    return flat.view(math.ceil(c_out / s) * s, math.ceil(c_in / s) * s, k, k)[:c_out, :c_in]


def block_reference(flat: torch.Tensor, c_out: int, c_in: int, s: int, k: int) -> torch.Tensor:
    """Slice (i, j) (row-major over output block i, input block j) is the S x S tile at rows i*S..,
    cols j*S.. of the padded kernel; built tile by tile with explicit loops."""
    n_out, n_in = math.ceil(c_out / s), math.ceil(c_in / s)
    padded = torch.full((n_out * s, n_in * s, k, k), float("nan"))
    for i in range(n_out):
        for j in range(n_in):
            padded[i * s:(i + 1) * s, j * s:(j + 1) * s] = flat[i * n_in + j].view(s, s, k, k)
    return padded[:c_out, :c_in]


def _distinct_slices(c_out, c_in, s, k):
    """Slice number q holds q*10^6 + 0, 1, 2, ...: every value names its slice and its position."""
    n = n_slices(c_in, c_out, s)
    return torch.arange(n, dtype=torch.float64)[:, None] * 1e6 + torch.arange(s * s * k * k, dtype=torch.float64)


def _assembled_as_reference(c_out, c_in, s, k, layout, reference):
    """Distinct slices assembled in `layout`: the kernel's shape, and equality with `reference`."""
    flat = _distinct_slices(c_out, c_in, s, k)
    got = assemble(flat, c_out, c_in, s, k, layout)
    assert got.shape == (c_out, c_in, k, k)
    assert torch.equal(got, reference(flat, c_out, c_in, s, k))
    return flat, got


SHAPES = [  # (c_out, c_in, slice, kernel)
    (16, 16, 16, 3), (32, 16, 16, 3), (64, 32, 16, 3),   # resnet shapes
    (37, 20, 16, 3), (37, 20, 16, 1), (7, 5, 4, 3), (7, 5, 4, 1), (5, 7, 4, 3), (3, 3, 4, 3),
]


@pytest.mark.parametrize("c_out,c_in,s,k", SHAPES)
def test_contiguous_layout_is_the_authors_reshape_and_crop(c_out, c_in, s, k):
    flat, got = _assembled_as_reference(c_out, c_in, s, k, "contiguous", authors_contiguous)
    # and element by element: (o, i, a, b) is entry ((o*Pin + i)*k + a)*k + b of the flat padded buffer
    p_in = math.ceil(c_in / s) * s
    buffer = flat.reshape(-1)
    o, i, a, b = torch.meshgrid(*(torch.arange(n) for n in (c_out, c_in, k, k)), indexing="ij")
    assert torch.equal(got, buffer[((o * p_in + i) * k + a) * k + b])


@pytest.mark.parametrize("c_out,c_in,s,k", SHAPES)
def test_block_layout_places_slice_ij_as_tile(c_out, c_in, s, k):
    flat, got = _assembled_as_reference(c_out, c_in, s, k, "block", block_reference)
    n_in = math.ceil(c_in / s)
    for i in range(math.ceil(c_out / s)):
        for j in range(n_in):
            tile = got[i * s:(i + 1) * s, j * s:(j + 1) * s]
            # every value in the tile comes from slice i*n_in + j, at its own row-major position
            assert torch.all(torch.div(tile, 1e6, rounding_mode="floor") == i * n_in + j)
            expected = flat[i * n_in + j].view(s, s, k, k)[:tile.shape[0], :tile.shape[1]]
            assert torch.equal(tile, expected)


def test_layouts_differ_when_input_is_wider_than_a_slice():
    flat = _distinct_slices(32, 32, 16, 3)
    assert not torch.equal(assemble(flat, 32, 32, 16, 3, "contiguous"), assemble(flat, 32, 32, 16, 3, "block"))
    # with one input block the two readings coincide
    flat = _distinct_slices(32, 16, 16, 3)
    assert torch.equal(assemble(flat, 32, 16, 16, 3, "contiguous"), assemble(flat, 32, 16, 16, 3, "block"))


@pytest.mark.parametrize("layout", ["contiguous", "block"])
@pytest.mark.parametrize("c_in,c_out,s,k", [(20, 37, 16, 3), (20, 37, 16, 1), (5, 7, 4, 3), (5, 7, 4, 1)])
def test_odd_channel_counts_crop(layout, c_in, c_out, s, k):
    expected_slices = math.ceil(c_in / s) * math.ceil(c_out / s)
    assert n_slices(c_in, c_out, s) == expected_slices
    gen = SliceGenerator(CSGSpec(slice=s, code_dim=6, kernel_size=k, layout=layout))
    layer = GeneratedConv2d(c_in, c_out, gen, padding=k // 2)
    assert tuple(layer.code.shape) == (expected_slices, 6)
    assert tuple(gen.weight.shape) == (s * s * k * k, 6)
    with torch.no_grad():
        kernel = layer.kernel()
        flat = F.linear(layer.code, gen.weight)
    assert kernel.shape == (c_out, c_in, k, k) and kernel.is_contiguous()
    ref = (authors_contiguous if layout == "contiguous" else block_reference)(flat, c_out, c_in, s, k)
    assert torch.equal(kernel, ref)
    y = layer(torch.randn(2, c_in, 9, 9))
    assert y.shape == (2, c_out, 9, 9)


@pytest.mark.parametrize("layout", ["contiguous", "block"])
@pytest.mark.parametrize("stride,padding,dilation,bias", [(2, 1, 1, False), (1, 2, 2, False), (2, 3, 3, True),
                                                          ((2, 1), (0, 2), (1, 2), True)])
def test_stride_dilation_padding_bias_are_honoured(layout, stride, padding, dilation, bias):
    torch.manual_seed(0)
    gen = SliceGenerator(CSGSpec(slice=4, code_dim=5, layout=layout))
    layer = GeneratedConv2d(6, 10, gen, stride=stride, padding=padding, dilation=dilation, bias=bias)
    if bias:
        nn.init.normal_(layer.bias)
    x = torch.randn(2, 6, 15, 13)
    flat = F.linear(layer.code, gen.weight)
    ref_kernel = (authors_contiguous if layout == "contiguous" else block_reference)(flat, 10, 6, 4, 3)
    # one layer: its kernel is this very product (same operands, same call), and the layer is one
    # F.conv2d with it, so the comparison is exact
    assert torch.equal(layer.kernel(), ref_kernel)
    expected = F.conv2d(x, ref_kernel.contiguous(), layer.bias, stride, padding, dilation)
    got = layer(x)
    assert got.shape == expected.shape
    assert torch.equal(got, expected)
    # and really strided / dilated: differs from the stride-1, dilation-1 result
    plain = F.conv2d(x, ref_kernel, layer.bias, 1, padding, 1)
    assert plain.shape != got.shape or not torch.allclose(plain, got)


def test_gradients_match_an_independent_implementation():
    """Two layers sharing one generator: autograd through the cache equals a direct re-implementation.
    The batched product and the per-layer ones sum in different orders, and that difference runs on
    through two convolutions and their backward: compared in float64."""
    torch.manual_seed(0)
    gen = SliceGenerator(CSGSpec(slice=4, code_dim=5, layout="contiguous"))
    l1 = GeneratedConv2d(3, 6, gen, padding=1)
    l2 = GeneratedConv2d(6, 5, gen, padding=1, stride=2)
    for module in (gen, l1, l2):  # the layers hold the generator outside their module tree
        module.double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    loss = l2(F.relu(l1(x))).square().sum()
    loss.backward()
    got = [gen.weight.grad, l1.code.grad, l2.code.grad]

    w, c1, c2 = (t.detach().clone().requires_grad_() for t in (gen.weight, l1.code, l2.code))
    k1 = authors_contiguous(F.linear(c1, w), 6, 3, 4, 3)
    k2 = authors_contiguous(F.linear(c2, w), 5, 6, 4, 3)
    ref = F.conv2d(F.relu(F.conv2d(x, k1, padding=1)), k2, padding=1, stride=2).square().sum()
    ref.backward()
    assert_close_fp64(loss, ref, "loss")
    for g, r, name in zip(got, [w.grad, c1.grad, c2.grad], ["generator", "codes 1", "codes 2"]):
        assert_close_fp64(g, r, name)


# -- materialisation ---------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["contiguous", "block"])
def test_materialize_gives_identical_outputs_with_plain_convs(layout):
    model = _randomise_bn(_resnet20_csg(layout=layout)).eval()
    x = _x(4)
    with torch.no_grad():
        expected = model(x)
    plain = materialize(model).eval()
    with torch.no_grad():
        got = plain(x)
    assert torch.equal(got, expected)
    assert not any(isinstance(m, (GeneratedConv2d, SliceGenerator)) for m in plain.modules())
    convs = [m for m in plain.modules() if "conv" in type(m).__name__.lower()]
    assert len(convs) == 19 and all(type(m) is nn.Conv2d for m in convs)
    # the materialised net is an ordinary ResNet-20 in size, and the CSG original is untouched
    assert accounting.count_parameters(plain)["total"] == 269_722
    assert len(list(generated_convs(model))) == 18
    with torch.no_grad():
        assert torch.equal(model(x), expected)


# -- the random-binary generator ------------------------------------------------------------------
def test_binary_generator_is_frozen_seeded_and_not_stored():
    model = _resnet20_csg(seed=3, generator="binary")
    (gen,) = generators(model)
    w = gen.weight
    assert not w.requires_grad
    assert set(w.unique().tolist()) == {-0.5, 0.5}
    model.train()
    model(_x(2)).logsumexp(1).sum().backward()
    assert w.grad is None
    codes = [layer.code for _, layer in generated_convs(model)]
    assert len(codes) == 18 and all(c.grad is not None and c.grad.abs().sum() > 0 for c in codes)

    state = model.state_dict()
    assert "csg.weight" not in state and not any(k.endswith("csg.weight") for k in state)

    same = _resnet20_csg(seed=3, generator="binary")
    other = _resnet20_csg(seed=4, generator="binary")
    assert torch.equal(generators(same)[0].weight, w)
    assert not torch.equal(generators(other)[0].weight, w)
    # about half of each sign: the sign of a normal draw
    assert 0.45 < (w > 0).float().mean().item() < 0.55

    counts = accounting.count_parameters(model)
    assert counts["frozen"] == w.numel() and counts["stored"] == counts["total"] - w.numel()


def test_binary_state_dict_round_trip_restores_outputs():
    model = _randomise_bn(_resnet20_csg(seed=5, generator="binary"), seed=1)
    with torch.no_grad():
        for _, layer in generated_convs(model):
            layer.code.mul_(1.5).add_(0.1)
    model.eval()
    x = _x(3)
    with torch.no_grad():
        expected = model(x)
    fresh = _resnet20_csg(seed=5, generator="binary").eval()  # other codes, same seed
    with torch.no_grad():
        assert not torch.allclose(fresh(x), expected)
    fresh.load_state_dict(model.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(fresh(x), expected)


# -- batched generation and its cache -----------------------------------------------------------
@pytest.mark.parametrize("layout", ["contiguous", "block"])
def test_batched_generation_equals_per_layer_generation(layout):
    """Bitwise: the batched kernels are one product split per layer.  Per layer (another GEMM shape):
    within the rounding bound of a code_dim-term dot product of the exact value, as the batched ones."""
    model = _resnet20_csg(layout=layout)
    (gen,) = generators(model)
    layers = [layer for _, layer in generated_convs(model)]
    assert gen.layers == layers  # module order fixes the order inside the batched product
    with torch.no_grad():
        batched = gen.generate_all()
        assert len(batched) == len(layers) == 18
        once = split_product(gen)
        for layer, kernel, part in zip(layers, batched, once):
            def shape(flat, layer=layer):
                return assemble(flat, layer.out_channels, layer.in_channels, 16, 3, layout)
            assert kernel.shape == (layer.out_channels, layer.in_channels, 3, 3)
            assert torch.equal(kernel, shape(part))
            exact, magnitude = (shape(t) for t in linear_exact(layer.code, gen.weight))
            assert_within_dot_bound(kernel, exact, magnitude, 8, "batched")
            assert_within_dot_bound(shape(F.linear(layer.code, gen.weight)), exact, magnitude, 8, "per layer")


def _fresh_eval(model, x):
    """The output of an ordinary-conv copy whose kernels are generated from scratch now (`materialize`)."""
    with torch.no_grad():
        return materialize(model)(x)


def test_eval_follows_optimiser_steps():
    model = _randomise_bn(_resnet20_csg()).eval()
    (gen,) = generators(model)
    x = _x(2)
    with torch.no_grad():
        first = model(x)
        second = model(x)
    assert torch.equal(first, second) and torch.equal(first, _fresh_eval(model, x))

    # an optimiser step on the codes
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5, momentum=0.9)
    for _, layer in generated_convs(model):
        layer.code.grad = torch.randn_like(layer.code)
    opt.step()
    with torch.no_grad():
        after_codes = model(x)
    assert not torch.allclose(after_codes, first)
    assert torch.equal(after_codes, _fresh_eval(model, x))

    # an optimiser step on the generator alone
    opt.zero_grad(set_to_none=True)
    gen.weight.grad = torch.randn_like(gen.weight)
    torch.optim.SGD([gen.weight], lr=0.5).step()
    with torch.no_grad():
        after_weight = model(x)
    assert not torch.allclose(after_weight, after_codes)
    assert torch.equal(after_weight, _fresh_eval(model, x))


def test_eval_follows_load_state_dict():
    model = _randomise_bn(_resnet20_csg(seed=0)).eval()
    other = _randomise_bn(_resnet20_csg(seed=1)).eval()
    x = _x(2)
    with torch.no_grad():
        before, target = model(x), other(x)
    assert not torch.allclose(before, target)
    model.load_state_dict(other.state_dict())
    with torch.no_grad():
        assert torch.equal(model(x), target)


def test_eval_follows_dtype_conversion():
    """Evaluating, then converting the model (e.g. to fp64 or fp16), must not reuse the old kernels:
    the output after the conversion is bitwise the output of kernels generated afresh in float64."""
    model = _randomise_bn(_resnet20_csg()).eval()
    x = _x(2)
    with torch.no_grad():
        model(x)
    model.double()
    with torch.no_grad():
        out = model(x.double())
    assert out.dtype == torch.float64
    assert torch.equal(out, _fresh_eval(model, x.double()))


def test_training_mode_regenerates_every_pass():
    model = _resnet20_csg().train()
    (gen,) = generators(model)
    x = _x(4)
    grads = []
    for _ in range(3):  # no "backward through the graph a second time"
        model.zero_grad(set_to_none=True)
        model(x).logsumexp(1).sum().backward()
        assert gen.weight.grad is not None and gen.weight.grad.abs().sum() > 0
        grads.append(gen.weight.grad.clone())
    # each pass's gradients are those of a fresh pass, not accumulated over passes
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads[2], grads[0], rtol=1e-5, atol=1e-6)
    # two passes before one backward: each has its own graph, so the gradient is twice one pass's
    model.zero_grad(set_to_none=True)
    (model(x).logsumexp(1).sum() + model(x).logsumexp(1).sum()).backward()
    torch.testing.assert_close(gen.weight.grad, 2 * grads[0], rtol=1e-4, atol=1e-5)


def test_training_steps_change_the_kernels():
    model = _resnet20_csg().train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = _x(8), torch.arange(8) % 10
    layer = next(layer for _, layer in generated_convs(model))
    k0 = layer.kernel().detach().clone()
    losses = []
    for _ in range(3):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert not torch.allclose(layer.kernel().detach(), k0)
    assert losses[-1] < losses[0]


# -- conversion --------------------------------------------------------------------------------
class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),                 # 0: stem
            nn.Conv2d(8, 8, 3, padding=1),                 # 1: converted
            nn.Conv2d(8, 8, 3, padding=1, groups=8),       # 2: depthwise
            nn.Conv2d(8, 8, 3, padding=1, groups=2),       # 3: grouped
            nn.Conv2d(8, 16, 1),                           # 4: 1x1, another kernel size
            nn.Sequential(nn.Conv2d(16, 12, 3, stride=2, padding=2, dilation=2, bias=True)),  # 5.0: converted
        )

    def forward(self, x):
        return self.body(x)


def test_convert_policy_all_skips_stem_depthwise_grouped_and_other_kernel_sizes():
    net = _Net()
    x = torch.randn(1, 3, 8, 8)
    convert(net, CSGSpec(slice=4, code_dim=3, kernel_size=3), all_eligible("body.0"))
    generated = dict(generated_convs(net))
    assert set(generated) == {"body.1", "body.5.0"}
    body = net.body
    assert type(body[0]) is nn.Conv2d and body[2].groups == 8 and body[3].groups == 2
    assert type(body[4]) is nn.Conv2d
    g = generated["body.5.0"]
    assert g.stride == (2, 2) and g.dilation == (2, 2) and g.padding == (2, 2) and g.bias is not None
    assert isinstance(net.csg, SliceGenerator) and len(net.csg.layers) == 2
    assert net(x).shape == (1, 12, 4, 4)


def test_convert_on_a_container_root_works_or_refuses_clearly():
    """The generator is registered on the root; on an nn.Sequential it must not become a layer."""
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1))
    try:
        convert(net, CSGSpec(slice=4, code_dim=3), all_eligible("0"))
    except ValueError as e:
        assert "Sequential" in str(e)
        return
    assert net(torch.randn(1, 3, 8, 8)).shape == (1, 8, 8, 8)


def test_convert_refuses_an_empty_selection():
    net = _Net()
    with pytest.raises(ValueError, match="no convolution"):
        convert(net, CSGSpec(kernel_size=5), all_eligible("body.0"))  # no 5x5 conv
    with pytest.raises(ValueError, match="no convolution"):
        convert(net, CSGSpec(), lambda name, conv: False)
    assert not list(generated_convs(net))


@pytest.mark.parametrize("policy", ["authors", "all"])
def test_resnet_policies_convert_every_block_conv_but_not_the_stem(policy):
    model, _ = build("resnet20", "csg", {"policy": policy})
    convs = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, GeneratedConv2d))}
    assert type(convs.pop("conv_1_3x3")) is nn.Conv2d
    assert len(convs) == 18 and all(isinstance(m, GeneratedConv2d) for m in convs.values())


def test_policy_all_on_mobilenetv2_leaves_depthwise_convs():
    model, _ = build("mobilenetv2", "csg", {"policy": "all", "code_dim": 4})
    authors, _ = build("mobilenetv2", "csg", {"policy": "authors", "code_dim": 4})
    gen = dict(generated_convs(model))
    remaining = [m for m in model.modules() if type(m) is nn.Conv2d]
    assert all(m.kernel_size == (1, 1) for m in gen.values())
    # what is left: the stem, the depthwise convs and nothing else of kernel size 1 but grouped ones
    assert all(m.groups > 1 or m.kernel_size != (1, 1) or n == "conv1"
               for n, m in model.named_modules() if type(m) is nn.Conv2d)
    assert any(m.groups > 1 for m in remaining)
    assert len(gen) > len(dict(generated_convs(authors))) == 17


def test_specs_are_arguments_and_two_models_coexist():
    a, _ = build("resnet20", "csg", {"slice": 16, "code_dim": 72})
    b, _ = build("resnet20", "csg", {"slice": 8, "code_dim": 20})
    ga, gb = generators(a)[0], generators(b)[0]
    assert tuple(ga.weight.shape) == (16 * 16 * 9, 72) and tuple(gb.weight.shape) == (8 * 8 * 9, 20)
    la, lb = dict(generated_convs(a)), dict(generated_convs(b))
    for name in la:
        ci, co = la[name].in_channels, la[name].out_channels
        assert la[name].code.shape == (n_slices(ci, co, 16), 72)
        assert lb[name].code.shape == (n_slices(ci, co, 8), 20)
    assert accounting.count_parameters(a)["total"] == 176_698
    n_b = sum(n_slices(m.in_channels, m.out_channels, 8) for m in lb.values())
    assert accounting.count_parameters(b)["total"] == 269_722 - sum(
        m.in_channels * m.out_channels * 9 for m in lb.values()) + n_b * 20 + 8 * 8 * 9 * 20
    x = _x(2)
    a.eval(), b.eval()
    with torch.no_grad():
        assert a(x).shape == b(x).shape == (2, 10)
    assert accounting.count_parameters(a)["total"] == 176_698  # building b changed nothing in a


def test_spec_validation():
    for bad in (dict(slice=0), dict(code_dim=-1), dict(layout="diagonal"), dict(generator="ternary"),
                dict(init="xavier")):
        with pytest.raises(ValueError):
            CSGSpec(**bad)


def test_deepcopy_and_pickle_give_independent_working_copies():
    import copy
    import pickle

    model = _resnet20_csg().train()
    model(_x(2)).sum()  # a pass whose graph is still alive
    clone = copy.deepcopy(model)
    clone(_x(2)).logsumexp(1).sum().backward()  # the copy trains on its own graph
    assert generators(clone)[0].weight.grad is not None and generators(model)[0].weight.grad is None
    restored = pickle.loads(pickle.dumps(model))
    (g,) = generators(restored)
    assert len(g.layers) == 18
    # the clone's layers point to the clone's generator
    assert all(layer.generator is g for _, layer in generated_convs(restored))
    restored.eval(), model.eval()
    with torch.no_grad():
        assert torch.equal(restored(_x(2)), _fresh_eval(model, _x(2)))
