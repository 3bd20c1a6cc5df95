"""HashedNets for convolutions (`--method hashed`; Chen, Wilson, Tyree, Weinberger & Chen, ICML 2015).

Each converted conv (default `layers: authors`, the convs CSG converts) stores only a vector of B
`buckets`.  Virtual kernel entry i (row-major over [C_out, C_in, k, k]) is
xi(i) * buckets[h(i)], with the index hash h(i) in [0, B) and the sign hash xi(i) in {-1, +1}.
The hashes are drawn from a generator seeded by (hash seed, the layer's name).  The hash seed is the
run's seed (`hash_seed: run`, the default), so a grid's seeds sample hash-to-hash variation along
with the initialisation and the data order, as two runs of the original would; an integer
`hash_seed` fixes the hashes across seeds (every run before this default existed used
`hash_seed: 0`, and such a config keeps its hash; the run-seed default gives seed 0 the same hashes as
`hash_seed: 0`).  The hashes are regenerated at construction and live in non-persistent buffers, so they are neither parameters nor
in the state dict, and no count includes them.  Buckets are initialised N(0, s^2) with s the std of
the architecture's own init of that conv, so the virtual kernel has the dense init's scale.  A
conv's bias (if any) stays dense.

Knob `compression` c in (0, 1]: every converted layer gets B = max(1, round(c * k*k*C_in*C_out))
buckets (one global factor).  The budget count is `stored` (equal to `total` here).
No structural change during training: `structure` is empty.
"""
from __future__ import annotations

import zlib

import torch
import torch.nn as nn
import torch.nn.functional as F

from study.accounting import unique_parameters
from study.methods import Method, register
from study.surgery import set_submodule

from baselines import _common as C


def hashes(numel: int, buckets: int, seed: int, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed((int(seed) * 1_000_003 + zlib.crc32(name.encode())) % (2 ** 63))
    index_dtype = torch.int32 if buckets < 2 ** 31 else torch.long
    index = torch.randint(0, buckets, (numel,), generator=g).to(index_dtype)
    sign = torch.randint(0, 2, (numel,), generator=g).float().mul_(2).sub_(1)
    return index, sign


class HashedConv2d(nn.Module):
    def __init__(self, conv: nn.Conv2d, buckets: int, seed: int, name: str):
        super().__init__()
        if conv.groups != 1:
            raise ValueError(f"hashed: {name} is a grouped conv; only ungrouped convs are hashed")
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size, self.stride, self.padding, self.dilation = (conv.kernel_size, conv.stride, conv.padding,
                                                                      conv.dilation)
        self.shape = tuple(conv.weight.shape)
        device, dtype = conv.weight.device, conv.weight.dtype
        with torch.no_grad():
            std = float(conv.weight.float().std()) if conv.weight.numel() > 1 else 1.0
        self.buckets = nn.Parameter(torch.randn(buckets, device=device, dtype=dtype) * std)
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone())
        index, sign = hashes(conv.weight.numel(), buckets, seed, name)
        # regenerable from (seed, name): never stored, never counted
        self.register_buffer("index", index.to(device), persistent=False)
        self.register_buffer("sign", sign.to(device=device, dtype=dtype), persistent=False)
        self.hash_name, self.hash_seed = name, int(seed)

    def kernel(self) -> torch.Tensor:
        return (self.buckets.index_select(0, self.index) * self.sign).view(self.shape)

    def forward(self, x):
        return F.conv2d(x, self.kernel(), self.bias, self.stride, self.padding, self.dilation)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"buckets={self.buckets.numel()} (virtual {self.index.numel()})")


def n_buckets(numel: int, compression: float) -> int:
    return max(1, round(compression * numel))


@register
class Hashed(Method):
    name = "hashed"
    knob = "compression"
    count = "stored"
    defaults = {"compression": 0.5, "layers": "authors", "hash_seed": "run"}

    def args(self, given):
        args = super().args(given)
        args["compression"] = C.check_fraction(self.name, "compression", args["compression"], lo_open=True)
        C.check_choice(self.name, "layers", args["layers"], C.LAYER_SETS)
        hs = args["hash_seed"]
        if hs != "run" and (not isinstance(hs, int) or isinstance(hs, bool)):
            raise ValueError(f"{self.name}: hash_seed must be 'run' (the run's seed) or an integer, got {hs!r}")
        return args

    @staticmethod
    def hash_seed(args: dict, seed: int) -> int:
        """The seed the hashes are drawn from: the run's, unless `hash_seed` names one."""
        return int(seed) if args["hash_seed"] == "run" else int(args["hash_seed"])

    def variant(self, args: dict) -> str:
        return "hashes from the run seed" if args["hash_seed"] == "run" else f"hashes fixed (seed {args['hash_seed']})"

    def convs(self, model, arch, args):
        convs = C.select_convs(model, arch, args["layers"])
        C.require(self.name, arch, convs)
        return convs

    def build(self, arch, args, seed=0):
        model = C.tag(arch.build(num_classes=arch.num_classes), arch)
        hash_seed = self.hash_seed(args, seed)
        for name, conv in self.convs(model, arch, args):
            layer = HashedConv2d(conv, n_buckets(conv.weight.numel(), float(args["compression"])),
                                 hash_seed, name)
            layer.train(conv.training)
            set_submodule(model, name, layer)
        return model

    def search(self, arch, args, target):
        model = C.skeleton(arch)
        convs = self.convs(model, arch, args)
        sizes = [c.weight.numel() for _, c in convs]
        dense = unique_parameters(model) - sum(sizes)

        def count(c):
            return dense + sum(n_buckets(n, c) for n in sizes)

        c = C.search_monotone(self.name, "compression", count, target, 1e-12, 1.0, self.tolerance)
        return {**args, "compression": C.shorten(count, c, 1e-12, 1.0)}
