"""One interface over every way of building a (compressed) network: plain, CSG and the baselines.

A `Method` turns an architecture plus its own arguments into a model, may reshape the model during
training (pruning schedules, decomposition), and can search its own knob so that a parameter count
lands on a target.  The baselines in `baselines/` implement the same interface and register here.
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch.nn as nn

from study import accounting, schema
from study.csg import CSGSpec, all_eligible, convert
from study.models import ArchSpec, get_arch


class BudgetError(ValueError):
    """A parameter target the method cannot reach; raised before any training."""


class Method:
    name: ClassVar[str]
    knob: ClassVar[str | None] = None     # the argument `search` tunes (sparsity, rank, width, ...)
    count: ClassVar[str] = "total"        # which accounting count a budget is matched on
    tolerance: ClassVar[float] = 0.01     # relative tolerance of a matched budget
    defaults: ClassVar[dict[str, Any]] = {}

    # -- construction --------------------------------------------------------------------------
    def args(self, given: dict[str, Any]) -> dict[str, Any]:
        """Defaults filled in, unknown keys refused."""
        unknown = set(given) - set(self.defaults)
        if unknown:
            raise ValueError(f"method {self.name!r} does not take {sorted(unknown)}; "
                             f"allowed: {sorted(self.defaults) or 'none'}")
        return {**self.defaults, **given}

    def build(self, arch: ArchSpec, args: dict[str, Any], seed: int = 0) -> nn.Module:
        raise NotImplementedError

    # -- during training (defaults: nothing changes) -------------------------------------------
    def on_epoch_start(self, model: nn.Module, args: dict, epoch: int, epochs: int) -> nn.Module:
        """Called before each epoch; may return a different model (the trainer rebuilds its optimiser)."""
        return model

    def on_step(self, model: nn.Module, args: dict, step: int, total_steps: int) -> None:
        """Called after every optimiser step (`step` counts from 1); may change values in place (a
        pruning mask every few steps), never the structure: that is `on_epoch_start`'s job."""

    def no_weight_decay(self, model: nn.Module) -> set[str]:
        """Names (as in `model.named_parameters()`) of the parameters this method never decays,
        whatever the recipe says (soft sharing's mixing coefficients, as its reference code does)."""
        return set()

    def final_model(self, model: nn.Module, args: dict) -> nn.Module:
        """The network as training will end it (pruned, decomposed): what counts are reported on.

        Running the schedule's last step at once: epoch 0 of a one-epoch schedule is the last one."""
        return self.on_epoch_start(model, args, 0, 1)

    def structure(self, model: nn.Module) -> dict:
        """JSON-able description of any structural change made during training, for checkpoints."""
        return {}

    def restore(self, model: nn.Module, args: dict, structure: dict) -> nn.Module:
        """Re-apply `structure` to a freshly built model so that a checkpoint's state dict loads."""
        return model

    # -- budgets -------------------------------------------------------------------------------
    def counted(self, model: nn.Module, arch: ArchSpec, args: dict) -> int:
        """The count this method's budget is matched on, for the model it will end training with."""
        return accounting.count_parameters(model)[self.count]

    def search(self, arch: ArchSpec, args: dict, target: int) -> dict:
        """Return `args` with the knob set so that `counted` lands within tolerance of `target`."""
        raise BudgetError(f"method {self.name!r} has no knob to match a parameter target")


METHODS: dict[str, Method] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: one shared instance per method (methods hold no state)."""
    METHODS[cls.name] = cls()
    return cls


def get_method(name: str) -> Method:
    _load_baselines()
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(method_names())}") from None


def method_names() -> list[str]:
    _load_baselines()
    return list(METHODS)


def _load_baselines():
    import baselines  # noqa: F401  (registers the baseline methods on import)


@register
class Plain(Method):
    name = "none"

    def build(self, arch, args, seed=0):
        return arch.build(num_classes=arch.num_classes)


@register
class CSG(Method):
    name = "csg"
    knob = "code_dim"
    count = "stored"  # a random-binary generator is regenerated from its seed, never stored
    defaults = dict(schema.CSG_DEFAULTS)

    def spec(self, arch: ArchSpec, args: dict, seed: int = 0) -> CSGSpec:
        return CSGSpec(slice=int(args["slice"]), code_dim=int(args["code_dim"]), kernel_size=arch.csg_kernel_size,
                       layout=args["layout"], generator=args["generator"], init=arch.csg_init,
                       code_mean=arch.code_mean, seed=seed)

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

    def build(self, arch, args, seed=0):
        model = arch.build(num_classes=arch.num_classes)
        policy = arch.authors_policy if args["policy"] == "authors" else all_eligible(arch.first_conv)
        model = convert(model, self.spec(arch, args, seed), policy)
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


def build(arch_name: str, method_name: str = "none", args: dict | None = None, seed: int = 0,
          target_params: int | None = None) -> tuple[nn.Module, dict]:
    """Build a model; with `target_params` the method's knob is searched first.  Returns (model, args)."""
    arch, method = get_arch(arch_name), get_method(method_name)
    args = method.args(dict(args or {}))
    if target_params is not None:
        args = method.search(arch, args, int(target_params))
    return method.build(arch, args, seed=seed), args
