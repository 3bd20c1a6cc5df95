"""Low-rank convolutions by Tucker-2 factorisation (`--method lowrank`; Kim et al., ICLR 2016).

A conv W [C_out, C_in, k, k] of `layers` (default `authors`: on CIFAR ResNets the 3x3 block
convs) becomes three convs:

    reduce  1x1, C_in  -> r_in                 (U_in^T)
    core    kxk, r_in  -> r_out                (G; the original stride, padding and dilation)
    expand  1x1, r_out -> C_out, with W's bias (U_out)

holding C_in*r_in + r_in*r_out*k*k + r_out*C_out parameters instead of C_out*C_in*k*k.  The factors
come from the truncated higher-order SVD of W (`tucker2`): U_out and U_in are the leading left
singular vectors of the mode-0 and mode-1 unfoldings, G = W x_0 U_out^T x_1 U_in^T.

Ranks: `rank_ratio` rho gives each layer r ~ rho * C on both its input and output side.  Taken
layer by layer as ceil(rho * C), every same-width layer steps at once and the count is too coarse
a staircase to land within 1% of a target (on ResNet-20 no ratio comes within 1.8% of 176,698), so
the ranks are apportioned from the rounded total round(rho * sum of C) by largest remainder: every
rank is within one of rho * C, at least 1 and at most C.

Modes:
  scratch    the network is built factorised; the factors start as the Tucker-2 factors of the
             architecture's own dense init, the core rescaled so the product keeps the dense
             kernel's norm.
  decompose  train dense; at the start of epoch round(decompose_at * epochs) (at the latest the
             last epoch) replace each conv by the Tucker-2 factors of its trained weight and
             fine-tune.  `on_epoch_start` then returns a new model object.
Protocol `kim` (Kim et al.'s own: decompose a trained network, then fine-tune it): mode decompose
(named or not; `mode: scratch` is refused), and unless the grid names `decompose_at` it is 0.8, the
split the filter-pruning `li` protocol takes from Li et al. (the two compress-a-trained-network
baselines are timed alike; Kim et al. fine-tune after full training).  At least one epoch is
dense.  The fine-tuning runs on the run's learning-rate schedule: a method cannot set the
trainer's.  Kim et al. choose each layer's ranks by VBMF on the trained kernel; here the ranks
come from `rank_ratio`, so the budget is known before training.  Left out (the default), the
config hashes as it did before the argument existed.  `variant(args)` names the protocol.

The budget count is `total` of the factorised model (for an undecomposed model, what it will hold).
`structure` records the ranks once decomposed; `restore` factorises a fresh model to them.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from study.accounting import unique_parameters
from study.methods import Method, register
from study.surgery import set_submodule

from baselines import _common as C

MODES = ("scratch", "decompose")
PROTOCOLS = (None, "kim")


@torch.no_grad()
def _leading(unfolding: torch.Tensor, r: int) -> torch.Tensor:
    """The `r` leading left singular vectors of a [n, m] matrix, as columns of an [n, r] matrix."""
    gram = unfolding @ unfolding.T               # n x n: every left singular vector, even when n > m
    values, vectors = torch.linalg.eigh(gram)    # ascending
    return vectors.flip(-1)[:, :r]


@torch.no_grad()
def tucker2(weight: torch.Tensor, r_out: int, r_in: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Truncated HOSVD of a conv kernel along its output and input channel modes.

    Returns conv weights (reduce [r_in, C_in, 1, 1], core [r_out, r_in, kh, kw], expand
    [C_out, r_out, 1, 1]) whose composition expand(core(reduce(x))) applies
    W_hat = G x_0 U_out x_1 U_in, the orthogonal projection of W onto the leading subspaces; so the
    reconstruction error never rises with either rank.
    """
    c_out, c_in = weight.shape[:2]
    if not (1 <= r_out <= c_out and 1 <= r_in <= c_in):
        raise ValueError(f"tucker2: ranks must satisfy 1 <= r_out <= {c_out} and 1 <= r_in <= {c_in}, "
                         f"got r_out={r_out}, r_in={r_in}")
    w = weight.detach().double()
    u_out = _leading(w.reshape(c_out, -1), r_out)                    # [C_out, r_out]
    u_in = _leading(w.transpose(0, 1).reshape(c_in, -1), r_in)       # [C_in, r_in]
    core = torch.einsum("oikl,or,is->rskl", w, u_out, u_in)
    cast = dict(dtype=weight.dtype, device=weight.device)
    return (u_in.T[:, :, None, None].contiguous().to(**cast), core.contiguous().to(**cast),
            u_out[:, :, None, None].contiguous().to(**cast))


def reconstruct(reduce: torch.Tensor, core: torch.Tensor, expand: torch.Tensor) -> torch.Tensor:
    """The dense kernel the three factors apply."""
    return torch.einsum("rskl,or,si->oikl", core, expand[:, :, 0, 0], reduce[:, :, 0, 0])


class Tucker2Conv(nn.Module):
    """1x1 (C_in -> r_in) -> kxk (r_in -> r_out) -> 1x1 (r_out -> C_out)."""

    def __init__(self, conv: nn.Conv2d, r_out: int, r_in: int):
        super().__init__()
        self.in_channels, self.out_channels, self.ranks = conv.in_channels, conv.out_channels, (r_out, r_in)
        self.reduce = nn.Conv2d(conv.in_channels, r_in, 1, bias=False)
        self.core = nn.Conv2d(r_in, r_out, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                              dilation=conv.dilation, bias=False, padding_mode=conv.padding_mode)
        self.expand = nn.Conv2d(r_out, conv.out_channels, 1, bias=conv.bias is not None)
        C.like(self, conv.weight)

    @torch.no_grad()
    def load_factors(self, conv: nn.Conv2d, keep_norm: bool = False) -> "Tucker2Conv":
        reduce, core, expand = tucker2(conv.weight, *self.ranks)
        if keep_norm:  # factors are orthonormal, so the product's norm is the core's
            core = core * (conv.weight.norm() / core.norm().clamp_min(1e-12))
        self.reduce.weight.copy_(reduce)
        self.core.weight.copy_(core)
        self.expand.weight.copy_(expand)
        if conv.bias is not None:
            self.expand.bias.copy_(conv.bias)
        return self

    def forward(self, x):
        return self.expand(self.core(self.reduce(x)))

    def extra_repr(self):
        return f"{self.in_channels}, {self.out_channels}, ranks(out, in)={self.ranks}"


def ranks(convs: list[tuple[str, nn.Conv2d]], ratio: float) -> dict[str, tuple[int, int]]:
    """(r_out, r_in) per conv, apportioned from round(ratio * sum of channels)."""
    sizes = []
    for _, conv in convs:
        sizes += [conv.out_channels, conv.in_channels]
    r = C.apportion([ratio * s for s in sizes], minimum=1, maximum=sizes)
    return {name: (r[2 * i], r[2 * i + 1]) for i, (name, _) in enumerate(convs)}


def factorised_params(conv: nn.Conv2d, r_out: int, r_in: int) -> int:
    kh, kw = conv.kernel_size
    return conv.in_channels * r_in + r_in * r_out * kh * kw + r_out * conv.out_channels + \
        (conv.out_channels if conv.bias is not None else 0)


@register
class LowRank(Method):
    name = "lowrank"
    knob = "rank_ratio"
    count = "total"
    defaults = {"rank_ratio": 0.5, "mode": "scratch", "decompose_at": 0.5, "layers": "authors", "protocol": None}
    unnamed = {"protocol": None}  # left out of the resolved args at this value (see C.omit_at)
    KIM_DECOMPOSE_AT = 0.8

    def args(self, given):
        args = super().args(given)
        C.check_choice(self.name, "protocol", args["protocol"], PROTOCOLS)
        if args["protocol"] == "kim":
            if given.get("mode", "decompose") != "decompose":
                raise ValueError(f"{self.name}: protocol kim decomposes a trained network; it takes mode: decompose, "
                                 f"not {given['mode']!r}")
            args["mode"] = "decompose"
            if "decompose_at" not in given:
                args["decompose_at"] = self.KIM_DECOMPOSE_AT
        args["rank_ratio"] = C.check_fraction(self.name, "rank_ratio", args["rank_ratio"], lo_open=True)
        args["decompose_at"] = C.check_fraction(self.name, "decompose_at", args["decompose_at"])
        C.check_choice(self.name, "mode", args["mode"], MODES)
        C.check_choice(self.name, "layers", args["layers"], C.LAYER_SETS)
        return C.omit_at(args, self.unnamed)

    def variant(self, args: dict) -> str:
        if args.get("protocol") == "kim":
            return f"Kim et al.: train dense, decompose the trained network at {args['decompose_at']:g}, fine-tune"
        if args.get("mode") == "decompose":
            return f"decomposed at {args['decompose_at']:g} of training, fine-tuned"
        return "factorised from the start"

    def decompose_epoch(self, args: dict, epochs: int) -> int:
        """The 0-based epoch at whose start a decompose-mode network is factorised."""
        at = C.epoch_at(args["decompose_at"], epochs)
        if args.get("protocol") == "kim":
            at = max(1, at)  # a trained network: at least one dense epoch (when there are two)
        return min(at, max(0, epochs - 1))

    def convs(self, model, arch, args):
        convs = C.select_convs(model, arch, args["layers"])
        C.require(self.name, arch, convs)
        return convs

    @staticmethod
    def is_decomposed(model) -> bool:
        return any(isinstance(m, Tucker2Conv) for m in model.modules())

    def factorise(self, model, plan: dict[str, tuple[int, int]], from_weights: bool, keep_norm: bool = False):
        for name, (r_out, r_in) in plan.items():
            conv = model.get_submodule(name)
            new = Tucker2Conv(conv, r_out, r_in)
            if from_weights:
                new.load_factors(conv, keep_norm=keep_norm)
            new.train(conv.training)
            set_submodule(model, name, new)
        return model

    # -- the Method interface ------------------------------------------------------------------
    def build(self, arch, args, seed=0):
        model = C.tag(arch.build(num_classes=arch.num_classes), arch)
        plan = ranks(self.convs(model, arch, args), float(args["rank_ratio"]))
        if args["mode"] == "scratch":
            self.factorise(model, plan, from_weights=True, keep_norm=True)
        return model

    def on_epoch_start(self, model, args, epoch, epochs):
        if args["mode"] != "decompose" or self.is_decomposed(model):
            return model
        if epoch < self.decompose_epoch(args, epochs):
            return model
        arch = C.arch_of(model, self.name)
        model = copy.deepcopy(model)  # a new object: the trainer rebuilds its optimiser
        return self.factorise(model, ranks(self.convs(model, arch, args), float(args["rank_ratio"])),
                              from_weights=True)

    def structure(self, model):
        if not self.is_decomposed(model):
            return {}
        return {"ranks": {n: list(m.ranks) for n, m in model.named_modules() if isinstance(m, Tucker2Conv)}}

    def restore(self, model, args, structure):
        plan = structure.get("ranks")
        if not plan or self.is_decomposed(model):
            return model
        return self.factorise(model, {n: tuple(r) for n, r in plan.items()}, from_weights=False)

    def counted(self, model, arch, args):
        """`total` of the factorised model (for a dense one in decompose mode: after decomposition)."""
        total = unique_parameters(model)
        if self.is_decomposed(model):
            return total
        convs = self.convs(model, arch, args)
        plan = ranks(convs, float(args["rank_ratio"]))
        return total + sum(factorised_params(c, *plan[n]) - unique_parameters(c) for n, c in convs)

    def search(self, arch, args, target):
        model = C.skeleton(arch)
        convs = self.convs(model, arch, args)
        dense = unique_parameters(model) - sum(unique_parameters(c) for _, c in convs)

        def count(ratio):
            plan = ranks(convs, ratio)
            return dense + sum(factorised_params(c, *plan[n]) for n, c in convs)

        ratio = C.search_monotone(self.name, "rank_ratio", count, target, 1e-9, 1.0, self.tolerance)
        return {**args, "rank_ratio": C.shorten(count, ratio, 1e-9, 1.0)}
