"""Static HyperNetworks (`--method hypernet`; Ha, Dai & Le, "HyperNetworks", ICLR 2017).

The convs CSG converts (the same `policy`: `authors`, the authors' layers, or `all`, every
ungrouped conv but the stem, and the same kernel size: CSG's per-architecture plan, `study.methods.csg.csg_plan`) are cut into
blocks of S_out x S_in x k x k (S = `slice`, 16 as in the paper; channels that are not a multiple
of S are padded to one and cropped, as CSG does).  Block (i, j) (output block i, input block j)
owns a learned embedding z_ij of N_z = `z_dim` values (64 in the paper).  One hypernetwork, shared
by the whole network, writes every block from its embedding through two linear maps:

    a = W_in z + b_in          S_in * d values, read as S_in vectors a_1 .. a_{S_in} of d = `hidden`
    K_c = W_out a_c + b_out    S_out * k * k values, read as [S_out, k, k]: input channel c of the block

so block (i, j) is [K_1 .. K_{S_in}] along the input channels (the paper's eq. for K^j, with
W_in = W_i, W_out = W_out; g1910/HyperNetworks's `HyperNetwork.forward` applies the same two maps).
The paper sets d = N_z = 64; `hidden` (d) is this method's knob, the budget search holds N_z at 64.

Parameters: the hypernetwork holds (N_z + 1) * S * d + (d + 1) * S * k * k, the embeddings N_z per
block (`hypernet_params`); the first conv, BatchNorms, any conv the policy leaves alone and the
classifier stay as they are.  Everything is learned and stored, so `stored` = `total`; the budget
count is `stored`, as for CSG.

Speed: kernels are regenerated every training step, so the generator writes the blocks of *all*
its layers in one pair of matrix products (`HyperGenerator.product` on every embedding at once) and
serves each layer its kernel from that batch.  `HyperGenerator` is a `study.csg.SliceGenerator` (and
`HyperConv2d` a `GeneratedConv2d`) so it reuses CSG's one generation per forward pass, its handling of
channels-last, `study.csg.materialize` and the accounting of kernel-generation FLOPs; only the
generation (`product`: two linear maps with biases, not one bias-free map) and the block layout differ.

Initialisation: embeddings truncated N(0, 1) in [-2, 2] (the reference draws fmod(randn, 2)); W_in
N(0, 1/N_z), so each a_c has unit-variance entries; W_out N(0, s^2/d), with s the RMS of the
architecture's own init std over the converted convs, so generated kernels start at the dense
init's scale; both biases zero.  (The reference draws every hypernetwork weight fmod(randn, 2),
which puts the generated kernels at a std of about sqrt(N_z * d), ~64.)
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from study.accounting import unique_parameters
from study.csg import CSGSpec, GeneratedConv2d, SliceGenerator, attach_generator, n_slices
from study.methods import Method, register
from study.methods.csg import csg_plan, select
from study.surgery import set_submodule

from baselines import _common as C

POLICIES = ("authors", "all")
GENERATOR_NAME = "hypernet"


def hypernet_params(n_blocks: int, slice_size: int, z_dim: int, hidden: int, kernel_size: int) -> int:
    """Parameters of the hypernetwork and the embeddings: the closed formula."""
    S, k2 = slice_size, kernel_size * kernel_size
    return n_blocks * z_dim + (z_dim + 1) * S * hidden + (hidden + 1) * S * k2


class HyperGenerator(SliceGenerator):
    """The shared two-layer hypernetwork (a `SliceGenerator` whose generation is Ha et al.'s).

    `product(z)` (the `SliceGenerator` hook it overrides) maps embeddings [n, N_z] to blocks
    [n, S_in * S_out * k * k], each one row-major [S_in, S_out, k, k] (input channel c of the block
    is K_c, as the maps produce it); the layers' `assemble` puts them in place.
    """

    def __init__(self, slice_size: int, z_dim: int, hidden: int, kernel_size: int, std: float = 1.0):
        # layout/generator only describe the spec; `product` and `HyperConv2d.assemble` do the work
        super().__init__(CSGSpec(slice=slice_size, code_dim=z_dim, kernel_size=kernel_size, layout="block",
                                 generator="learned", init="linear", code_mean=0.0))
        del self.weight  # the CSG's one bias-free map: not used here
        S, k2 = slice_size, kernel_size * kernel_size
        self.z_dim, self.hidden = z_dim, hidden
        self.weight_in = nn.Parameter(torch.randn(S * hidden, z_dim) / math.sqrt(z_dim))     # W_in (all a_c at once)
        self.bias_in = nn.Parameter(torch.zeros(S * hidden))
        self.weight_out = nn.Parameter(torch.randn(S * k2, hidden) * (std / math.sqrt(hidden)))  # W_out
        self.bias_out = nn.Parameter(torch.zeros(S * k2))

    def product(self, z: torch.Tensor) -> torch.Tensor:
        """[n, N_z] embeddings -> [n, S_in * S_out * k * k] blocks: two matrix products for all n (the
        generation `SliceGenerator.generate_all` and `kernel_for` run)."""
        a = F.linear(z, self.weight_in, self.bias_in)                   # [n, S_in * d]
        kernel = F.linear(a.reshape(-1, self.hidden), self.weight_out, self.bias_out)  # [n * S_in, S_out*k*k]
        return kernel.reshape(z.shape[0], -1)

    def extra_repr(self) -> str:
        s = self.spec
        return (f"block={s.slice}x{s.slice}x{s.kernel_size}x{s.kernel_size}, z_dim={self.z_dim}, "
                f"hidden={self.hidden}, layers={len(self._layers)}")


class HyperConv2d(GeneratedConv2d):
    """A conv whose kernel the shared `HyperGenerator` writes, block by block, from this layer's
    embeddings (`code`: one row of N_z per block, output blocks major)."""

    def __init__(self, in_channels: int, out_channels: int, generator: HyperGenerator, **kwargs):
        super().__init__(in_channels, out_channels, generator, **kwargs)
        with torch.no_grad():
            nn.init.trunc_normal_(self.code, mean=0.0, std=1.0, a=-2.0, b=2.0)

    def assemble(self, slices: torch.Tensor,
                 memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
        S, k = self.generator.spec.slice, self.generator.spec.kernel_size
        n_out, n_in = math.ceil(self.out_channels / S), math.ceil(self.in_channels / S)
        # [n_out, n_in, S_in, S_out, k, k] -> [n_out, S_out, n_in, S_in, k, k]: block (i, j) at
        # output channels i*S.., input channels j*S..; its input channel c is K_c
        kernel = slices.reshape(n_out, n_in, S, S, k, k).permute(0, 3, 1, 2, 4, 5)
        kernel = kernel.reshape(n_out * S, n_in * S, k, k)[:self.out_channels, :self.in_channels]
        return kernel.contiguous(memory_format=memory_format)


def chosen_convs(model: nn.Module, arch, policy: str) -> list[tuple[str, nn.Conv2d]]:
    """The convs CSG would convert under `policy` (study.csg.convert's rule), in module order."""
    C.check_choice("hypernet", "policy", policy, POLICIES)
    rule = select(arch, policy)
    k = csg_plan(arch).kernel_size
    chosen = [(name, m) for name, m in model.named_modules()
              if isinstance(m, nn.Conv2d) and m.kernel_size == (k, k) and rule(name, m)]
    if not chosen:
        raise ValueError(f"hypernet: the {policy} policy selects no {k}x{k} convolution of {arch.name}")
    for name, conv in chosen:
        if conv.groups != 1:
            raise ValueError(f"hypernet: {name} is a grouped/depthwise conv and cannot be generated")
    return chosen


@torch.no_grad()
def _init_std(convs: list[tuple[str, nn.Conv2d]]) -> float:
    return float(torch.stack([c.weight.float().std() for _, c in convs]).square().mean().sqrt())


def convert(model: nn.Module, arch, slice_size: int, z_dim: int, hidden: int, policy: str) -> nn.Module:
    """Replace the chosen convs by `HyperConv2d`s sharing one `HyperGenerator`, registered on the
    root as `hypernet`.  In place; returns `model`."""
    if isinstance(model, (nn.Sequential, nn.ModuleList, nn.ModuleDict)):
        raise ValueError(f"hypernet: the model's root is an nn.{type(model).__name__}; the shared hypernetwork "
                         "is registered on the root, so wrap it in an nn.Module")
    chosen = chosen_convs(model, arch, policy)
    generator = HyperGenerator(slice_size, z_dim, hidden, csg_plan(arch).kernel_size, std=_init_std(chosen))
    for name, conv in chosen:
        new = HyperConv2d(conv.in_channels, conv.out_channels, generator, stride=conv.stride,
                          padding=conv.padding, dilation=conv.dilation, bias=conv.bias is not None)
        new.train(conv.training)
        set_submodule(model, name, new)
    return attach_generator(model, GENERATOR_NAME, generator)


def _positive_int(method: str, key: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{method}: {key} must be a positive integer, got {value!r}")
    return value


@register
class HyperNet(Method):
    name = "hypernet"
    knob = "hidden"
    count = "stored"  # = total: nothing is regenerable from a seed
    defaults = {"slice": 16, "z_dim": 64, "hidden": 64, "policy": "authors"}
    max_hidden = 1 << 20

    def args(self, given):
        args = super().args(given)
        for key in ("slice", "z_dim", "hidden"):
            args[key] = _positive_int(self.name, key, args[key])
        C.check_choice(self.name, "policy", args["policy"], POLICIES)
        return args

    def build(self, arch, args, seed=0):
        model = C.tag(arch.build(num_classes=arch.num_classes), arch)
        return convert(model, arch, args["slice"], args["z_dim"], args["hidden"], args["policy"])

    @staticmethod
    def _shape(arch, args) -> tuple[int, int]:
        """(parameters the conversion leaves alone, blocks of the converted convs), from a skeleton."""
        model = C.skeleton(arch)
        chosen = chosen_convs(model, arch, args["policy"])
        rest = unique_parameters(model) - sum(c.weight.numel() for _, c in chosen)
        return rest, sum(n_slices(c.in_channels, c.out_channels, args["slice"]) for _, c in chosen)

    def formula(self, arch, args) -> int:
        """The count of `build(arch, args)`, by the closed formula (no model built but a skeleton)."""
        rest, blocks = self._shape(arch, args)
        return rest + hypernet_params(blocks, args["slice"], args["z_dim"], args["hidden"], csg_plan(arch).kernel_size)

    def search(self, arch, args, target):
        rest, blocks = self._shape(arch, args)

        def count(d):
            return rest + hypernet_params(blocks, args["slice"], args["z_dim"], int(d), csg_plan(arch).kernel_size)

        hi = 1
        while count(hi) < target and hi < self.max_hidden:
            hi = min(self.max_hidden, hi * 2)
        d = C.search_monotone(self.name, "hidden", count, target, 1, hi, self.tolerance, integer=True,
                              fmt=lambda v: str(int(v)))
        return {**args, "hidden": int(d)}
