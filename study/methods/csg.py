"""The CSG method: convert an architecture's chosen convs to generated ones, and CSG's per-architecture
plan (`CSGArchPlan`: which convs the authors generated, the kernel size, the init and the code mean).

The plan lives here, beside the one method that uses it, not in the architecture's `ArchSpec`:
an architecture file knows how to build its network; which of its layers CSG generates, and how
they are initialised, is CSG's business (and that of the baselines matched to it layer for layer).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch.nn as nn

from study import schema
from study.csg import CSGSpec, all_eligible, convert, generators
from study.methods.base import BudgetError, Method, register
from study.models import ArchSpec, cifar_resnet, deeplab, densenet_bc, imagenet_resnet, mobilenetv2, shufflenetv2


@dataclass(frozen=True)
class CSGArchPlan:
    """CSG's plan for one architecture: how the authors (or, where they have no model, this study) apply CSG to it."""

    policy: Callable[[str, nn.Conv2d], bool]  # the convs the authors generate (the stem never)
    kernel_size: int = 3                      # 1 where the authors generate 1x1 convs
    init: str = "linear"                      # 'kaiming' only for the authors' CIFAR ResNets
    code_mean: float = 0.0
    # the authors' state-dict names of the codes -> our module names (see study/authors.py)
    authors_code_names: dict[str, str] = field(default_factory=dict)


_CIFAR_RESNET = CSGArchPlan(cifar_resnet.authors_policy, 3, "kaiming", 0.001, {"code": "conv_a.code", "code2": "conv_b.code"})
_DENSENET = CSGArchPlan(densenet_bc.authors_policy, 3, authors_code_names={"code2": "conv2.code"})
_DEEPLAB = CSGArchPlan(deeplab.authors_policy, 3)
CSG_PLANS: dict[str, CSGArchPlan] = {
    **{f"resnet{d}": _CIFAR_RESNET for d in (20, 32, 44, 56, 110)},
    "densenet_bc_k36": _DENSENET, "densenet_bc_k48": _DENSENET,
    "mobilenetv2": CSGArchPlan(mobilenetv2.authors_policy, 1, authors_code_names={"code1": "conv1.code"}),
    "shufflenetv2_0_5": CSGArchPlan(shufflenetv2.authors_policy, 1, authors_code_names={"code2": "conv2.code"}),
    "imagenet_resnet18": CSGArchPlan(imagenet_resnet.resnet18_policy, 3),
    "imagenet_resnet50": CSGArchPlan(imagenet_resnet.resnet50_policy, 3, authors_code_names={"code2": "conv2.code"}),
    "deeplabv3_resnet50": _DEEPLAB, "deeplabv3_resnet101": _DEEPLAB,
}


def csg_plan(arch: ArchSpec | str) -> CSGArchPlan:
    name = arch if isinstance(arch, str) else arch.name
    try:
        return CSG_PLANS[name]
    except KeyError:
        raise ValueError(f"no CSG plan for architecture {name!r}; add one to study/methods/csg.py") from None


def select(arch: ArchSpec, policy: str) -> Callable[[str, nn.Conv2d], bool]:
    """The convs CSG's `policy` argument names: `authors`, the authors' layers (`csg_plan(arch).policy`),
    or `all`, every ungrouped conv but the stem.  (The baselines matched to CSG use it too.)"""
    return csg_plan(arch).policy if policy == "authors" else all_eligible(arch.first_conv)


@register
class CSG(Method):
    name = "csg"
    knob = "code_dim"
    count = "stored"  # a random-binary generator is regenerated from its seed, never stored
    defaults = dict(schema.CSG_DEFAULTS)

    def spec(self, arch: ArchSpec, args: dict, seed: int = 0) -> CSGSpec:
        r = csg_plan(arch)
        return CSGSpec(slice=int(args["slice"]), code_dim=int(args["code_dim"]), kernel_size=r.kernel_size,
                       layout=args["layout"], generator=args["generator"], init=r.init,
                       code_mean=r.code_mean, seed=seed)

    # `generator: reuse` freezes the trained generator of another run of the same grid in this network.
    # `generator_from` names that run; the grid adds its config hash (`generator_from_hash`), so that
    # another source makes another run, and the runner hands `build` the source's final weight as
    # `generator_weight` (a tensor, never a grid argument).  Neither key is a default: the hashes of
    # runs without reuse stay what they were.
    REUSE_KEYS = ("generator_from", "generator_from_hash")

    def args(self, given):
        reuse = {k: given[k] for k in self.REUSE_KEYS if k in given}
        args = super().args({k: v for k, v in given.items() if k not in reuse})
        if args["policy"] not in ("authors", "all"):
            raise ValueError(f"policy must be 'authors' or 'all', got {args['policy']!r}")
        if reuse and args["generator"] != "reuse":
            raise ValueError(f"{sorted(reuse)[0]} only applies to generator: reuse")
        return {**args, **reuse}

    GENERATOR_KEY = "csg.weight"  # the generator's weight in a CSG network's state dict (`convert` registers it as csg)

    def generator_shape(self, arch: ArchSpec | str, args: dict) -> tuple[int, int, int]:
        """(slice, code dim, kernel size) of the generator `build(arch, args)` makes: what the source of
        a reused generator must train."""
        return int(args["slice"]), int(args["code_dim"]), csg_plan(arch).kernel_size

    def generator_in(self, state: dict):
        """The generator weight of a CSG network's state dict (another run's, for reuse), or None."""
        return state.get(self.GENERATOR_KEY)

    def final_metrics(self, model, total):
        """`params_generator` (the shared generator's weights) and `generator_share` (their fraction of
        the network's total, in [0, 1]): what a frozen (random-binary or reused) generator fixes of it."""
        n = sum(g.weight.numel() for g in generators(model))
        return {"params_generator": n, "generator_share": n / total} if n and total else {}

    def build(self, arch, args, seed=0):
        model = arch.build(num_classes=arch.num_classes)
        model = convert(model, self.spec(arch, args, seed), select(arch, args["policy"]))
        if args.get("generator_weight") is not None:  # generator: reuse, inside a run (study/runner.py)
            model.csg.load_reused(args["generator_weight"])
        return model

    def search(self, arch, args, target):
        # The count grows linearly in code_dim, so two probes give it exactly; round to the nearest.
        def count(d):
            return self.counted(self.build(arch, {**args, "code_dim": d}), arch, args)
        c1, c2 = count(1), count(2)
        d = max(1, round(1 + (target - c1) / (c2 - c1)))
        if abs(count(d) - target) > self.tolerance * target:
            raise BudgetError(f"csg: target {target} is not reachable within {self.tolerance:.0%}; "
                              f"smallest reachable count is {c1} (code_dim=1)")
        return {**args, "code_dim": d}
