"""One interface over every way of building a (compressed) network, the registry and the budget search.

A `Method` turns an architecture plus its own arguments into a model, may reshape the model during
training (pruning schedules, decomposition), and can search its own knob so that a parameter count
lands on a target.

Registration: a method's module decorates its class with `register`.  The core's own methods
(`plain`, `csg`) are imported by `study.methods`; every other one (the project's `baselines/`, or a
third party's) is found through the `study.methods` entry-point group of its installed package
(`[project.entry-points."study.methods"]` in its pyproject.toml), loaded the first time a name is
looked up.  The core never imports a plugin by name.
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch.nn as nn

from study import accounting
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

    def final_model(self, model: nn.Module, args: dict, epochs: int) -> nn.Module:
        """The network as training of `epochs` epochs will end it (pruned, decomposed): what counts are
        reported on, by the grid, `params`, and the breakdown a run logs.  The schedule's last epoch,
        run at once."""
        return self.on_epoch_start(model, args, epochs - 1, epochs)

    def final_metrics(self, model: nn.Module, total: int) -> dict[str, float]:
        """This method's own metrics of the trained `model` (whose parameter count is `total`), logged
        beside the accounting counts when a run ends."""
        return {}

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
PLUGIN_GROUP = "study.methods"  # entry points: each loads a module that registers its methods
_plugins_loaded = False


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: one shared instance per method (methods hold no state)."""
    METHODS[cls.name] = cls()
    return cls


def load_plugins() -> None:
    """Import every module named in the installed `study.methods` entry points (once per process,
    once all have loaded: a plugin that fails to import raises, naming its entry point, every time)."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    from importlib.metadata import entry_points

    found = list(entry_points(group=PLUGIN_GROUP))
    for ep in found:
        try:
            ep.load()
        except Exception as e:
            raise ImportError(f"the {PLUGIN_GROUP!r} entry point {ep.name!r} ({ep.value}) does not load: "
                              f"{type(e).__name__}: {e}") from e
    _plugins_loaded = True


def no_plugins_hint() -> str:
    """A sentence for the user when no `study.methods` entry point is installed (else "")."""
    from importlib.metadata import entry_points

    if entry_points(group=PLUGIN_GROUP):
        return ""
    return (f"no {PLUGIN_GROUP!r} entry point is installed, so only the core methods exist (a checkout on "
            "PYTHONPATH without installed metadata?): pip install -e .")


def get_method(name: str) -> Method:
    if name not in METHODS:
        load_plugins()
    try:
        return METHODS[name]
    except KeyError:
        hint = no_plugins_hint() or (f"a method of another package registers through its {PLUGIN_GROUP!r} "
                                     "entry point: reinstall it, e.g. pip install -e .")
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(method_names())} ({hint})") from None


def method_names() -> list[str]:
    load_plugins()
    return list(METHODS)


# -- budgets: the one place a parameter target is resolved ------------------------------------------
def budget_of(arch_name: str, method_name: str, args: dict | None = None) -> int:
    """The count a configuration's budget is matched on (CSG: `stored`): what a grid's
    `target_params: {method: ..., method_args: ...}` means."""
    arch, method = get_arch(arch_name), get_method(method_name)
    args = method.args(dict(args or {}))
    return int(method.counted(method.build(arch, args), arch, args))


def resolve(arch_name: str, method_name: str, args: dict | None = None, target_params: int | None = None) -> dict:
    """The method's arguments with its defaults filled in and, with `target_params`, its knob searched."""
    arch, method = get_arch(arch_name), get_method(method_name)
    args = method.args(dict(args or {}))
    return method.search(arch, args, int(target_params)) if target_params is not None else args


def build(arch_name: str, method_name: str = "none", args: dict | None = None, seed: int = 0,
          target_params: int | None = None) -> tuple[nn.Module, dict]:
    """Build a model; with `target_params` the method's knob is searched first.  Returns (model, args)."""
    args = resolve(arch_name, method_name, args, target_params)
    return get_method(method_name).build(get_arch(arch_name), args, seed=seed), args


def plan(arch_name: str, method_name: str, args: dict | None = None, seed: int = 0,
         target_params: int | None = None, *, epochs: int) -> tuple[dict, dict[str, int]]:
    """(resolved args, accounting counts of the network as `epochs` epochs of training will end it):
    what a grid needs to know of a run before any training."""
    model, args = build(arch_name, method_name, args, seed=seed, target_params=target_params)
    return args, accounting.count_parameters(get_method(method_name).final_model(model, args, epochs))
