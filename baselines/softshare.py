"""Soft parameter sharing (`--method softshare`; Savarese & Maire, ICLR 2019).

The converted convs (default `layers: authors`; on CIFAR ResNets the 3x3 block convs) are grouped
by stage and kernel shape: a group is every converted conv with the same [C_out, C_in, kh, kw]
inside the same top-level child module of the network (`stage_1`, `stage_2`, ... on CIFAR ResNets;
`layer1`, ... on torchvision ResNets).  Each group shares one bank of `templates` template kernels
(registered once, on the network's root, as `softshare_banks`); each layer owns a coefficient
vector alpha of that length and its kernel is sum_j alpha_j * template_j.  Stride, padding and any
bias stay per layer.

A conv whose shape no other conv of its stage shares (on CIFAR ResNets the stride-2 conv_a that
opens stages 2 and 3, C_in != C_out) keeps its own ordinary weights: a bank of its own could only
re-parametrise it, never share it.

Knob `templates`: one integer for every group, or a list with one integer per group (groups in
module order; `groups(model, arch, args)` lists them).  A single integer moves the count in steps of
a whole template of the widest stage (48,400 parameters on ResNet-20, over a quarter of CSG's
176,698), so the budget search returns a per-group list when no single integer lands within
tolerance, choosing, among the lists that do, the most even one (smallest max - min), then the
closest.  Templates start N(0, s^2) with s the std of the architecture's init of the group's convs;
coefficients start orthogonal with unit-norm rows, so every initial kernel has the dense init's
scale.  The budget count is `total`.  No structural change during training.

Weight decay: as in the reference implementation (lolemacs/soft-sharing, whose `group_weight_decay`
puts every parameter named `coefficients` in a group with weight decay 0), the coefficients are never
decayed: `no_weight_decay(model)` names them, and the trainer leaves them out of its decay.  The
templates and every other parameter are decayed as the recipe says.  `decay_coefficients: true`
decays them as well, as every softshare run made before this argument existed did; the default
`false` is written into the resolved args, so those runs and the new ones never share a config hash.
"""
from __future__ import annotations

import itertools
import math
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

from study.accounting import unique_parameters
from study.methods import BudgetError, Method, register
from study.surgery import set_submodule

from baselines import _common as C

MAX_ENUMERATION = 200_000


class TemplateBank(nn.Module):
    """`count` template kernels of one shape [C_out, C_in, kh, kw], stored stacked along the output
    channels as one 4-D tensor [count * C_out, C_in, kh, kw], so the model can be made channels-last."""

    def __init__(self, count: int, shape: tuple[int, ...], std: float, device=None, dtype=None):
        super().__init__()
        self.count, self.shape = count, tuple(shape)
        self.templates = nn.Parameter(torch.randn(count * shape[0], *shape[1:], device=device, dtype=dtype) * std)

    def stacked(self) -> torch.Tensor:
        """[count, C_out, C_in, kh, kw], a view whatever the memory format."""
        return self.templates.unflatten(0, (self.count, self.shape[0]))

    def extra_repr(self):
        return f"templates={self.count}, shape={self.shape}"


class SharedConv2d(nn.Module):
    """A conv whose kernel is a learned mixture of its group's templates."""

    def __init__(self, conv: nn.Conv2d, bank: TemplateBank, coefficients: torch.Tensor):
        super().__init__()
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size, self.stride, self.padding, self.dilation = (conv.kernel_size, conv.stride, conv.padding,
                                                                      conv.dilation)
        self.coefficients = nn.Parameter(coefficients.to(device=conv.weight.device, dtype=conv.weight.dtype).clone())
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone())
        # outside the module tree: the bank is registered once, at the root, and counted once
        object.__setattr__(self, "bank", bank)

    def kernel(self) -> torch.Tensor:
        return torch.tensordot(self.coefficients, self.bank.stacked(), dims=1)

    def forward(self, x):
        return F.conv2d(x, self.kernel(), self.bias, self.stride, self.padding, self.dilation)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"templates={self.coefficients.numel()}")


def groups(model: nn.Module, arch, layers: str) -> list[list[tuple[str, nn.Conv2d]]]:
    """Sharing groups of two or more same-shaped converted convs per stage, in module order."""
    found: "OrderedDict[tuple, list]" = OrderedDict()
    for name, conv in C.select_convs(model, arch, layers):
        found.setdefault((name.split(".")[0], tuple(conv.weight.shape)), []).append((name, conv))
    return [members for members in found.values() if len(members) > 1]


def per_group(templates, n_groups: int) -> list[int]:
    if isinstance(templates, (list, tuple)):
        if len(templates) != n_groups:
            raise ValueError(f"softshare: templates lists {len(templates)} values but there are {n_groups} "
                             f"sharing groups")
        return [int(t) for t in templates]
    return [int(templates)] * n_groups


def init_coefficients(n_layers: int, templates: int) -> torch.Tensor:
    a = torch.empty(n_layers, templates)
    nn.init.orthogonal_(a)
    return a / a.norm(dim=1, keepdim=True).clamp_min(1e-6)


@register
class SoftShare(Method):
    name = "softshare"
    knob = "templates"
    count = "total"
    defaults = {"templates": 2, "layers": "authors", "decay_coefficients": False}

    def args(self, given):
        args = super().args(given)
        t = args["templates"]
        values = t if isinstance(t, (list, tuple)) else [t]
        if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
            raise ValueError(f"softshare: templates must be a positive integer or a list of them, got {t!r}")
        if isinstance(t, tuple):
            args["templates"] = list(t)
        C.check_choice(self.name, "layers", args["layers"], C.LAYER_SETS)
        if not isinstance(args["decay_coefficients"], bool):
            raise ValueError(f"softshare: decay_coefficients must be true or false, got {args['decay_coefficients']!r}")
        return args

    def variant(self, args: dict) -> str:
        return "coefficients decayed" if args["decay_coefficients"] else "no weight decay on the coefficients"

    def no_weight_decay(self, model):
        """The mixing coefficients of every shared conv (names as in `model.named_parameters()`),
        unless the model was built with `decay_coefficients: true`."""
        if getattr(model, "softshare_decay_coefficients", False):
            return set()
        return {f"{name}.coefficients" if name else "coefficients"
                for name, m in model.named_modules() if isinstance(m, SharedConv2d)}

    def groups(self, model, arch, args):
        found = groups(model, arch, args["layers"])
        if not found:
            raise ValueError(f"softshare: {arch.name} has no two same-shaped {args['layers']} convs in one stage "
                             f"to share templates")
        return found

    def build(self, arch, args, seed=0):
        model = C.tag(arch.build(num_classes=arch.num_classes), arch)
        found = self.groups(model, arch, args)
        banks = []
        for t, members in zip(per_group(args["templates"], len(found)), found):
            weight = members[0][1].weight
            with torch.no_grad():
                std = float(torch.stack([c.weight.float().std() for _, c in members]).mean())
            bank = TemplateBank(t, tuple(weight.shape), std, device=weight.device, dtype=weight.dtype)
            coefficients = init_coefficients(len(members), t)
            for (name, conv), alpha in zip(members, coefficients):
                layer = SharedConv2d(conv, bank, alpha)
                layer.train(conv.training)
                set_submodule(model, name, layer)
            banks.append(bank)
        model.add_module("softshare_banks", nn.ModuleList(banks))
        model.softshare_decay_coefficients = bool(args["decay_coefficients"])  # read by no_weight_decay
        return model

    # -- budgets -------------------------------------------------------------------------------
    def search(self, arch, args, target):
        model = C.skeleton(arch)
        found = self.groups(model, arch, args)
        sizes = [len(m) for m in found]
        costs = [m[0][1].weight.numel() + len(m) for m in found]  # one template + one coefficient per layer
        rest = unique_parameters(model) - sum(unique_parameters(c) for m in found for _, c in m)

        def count(vec):
            return rest + sum(t * c for t, c in zip(vec, costs))

        tol = self.tolerance * target
        smallest, largest = count([1] * len(found)), count(sizes)
        if target < smallest - tol or target > largest + tol:
            raise BudgetError(f"softshare: target {target} is not reachable; smallest reachable count is {smallest} "
                              f"(templates=1), largest {largest} (templates={sizes})")
        uniform = min(range(1, max(sizes) + 1), key=lambda t: abs(count([t] * len(found)) - target))
        if abs(count([uniform] * len(found)) - target) <= tol:
            return {**args, "templates": uniform}
        if math.prod(sizes) <= MAX_ENUMERATION:
            fits = [v for v in itertools.product(*(range(1, n + 1) for n in sizes)) if abs(count(v) - target) <= tol]
            best = min(fits, key=lambda v: (max(v) - min(v), abs(count(v) - target), v), default=None)
        else:  # greedy: the largest uniform count below the target, then templates where they help most
            t0 = max([t for t in range(1, max(sizes) + 1) if count([t] * len(found)) <= target] or [1])
            vec = [min(t0, n) for n in sizes]
            for g in sorted(range(len(found)), key=lambda g: -costs[g]):
                while vec[g] < sizes[g] and abs(count(vec[:g] + [vec[g] + 1] + vec[g + 1:]) - target) < \
                        abs(count(vec) - target):
                    vec[g] += 1
            best = tuple(vec) if abs(count(vec) - target) <= tol else None
        if best is None:
            raise BudgetError(f"softshare: target {target} is not reachable within {self.tolerance:.0%}; "
                              f"smallest reachable count is {smallest} (templates=1)")
        return {**args, "templates": list(best)}
