"""Unstructured global magnitude pruning (`--method prune`), with `torch.nn.utils.prune` masks.

Pruned layers: the convs of `layers` (default `authors`: the convs CSG converts; on CIFAR ResNets
every 3x3 conv inside the residual blocks; `eligible`: every ungrouped conv but the stem), plus
every `nn.Linear` (the classifier) when `linear: true`.  The stem is never pruned.  One global L1
threshold is taken over all pruned weights together: the semantics of `prune.global_unstructured`
with `L1Unstructured`, computed here (see `apply` for why) on top of `prune.identity`, so the model
carries torch's usual `weight_orig`/`weight_mask` and forward pre-hook.

Schedules (`epoch` is 0-based and `on_epoch_start` runs before each epoch):
  oneshot  train dense until epoch round(prune_at * epochs), prune to `sparsity` there, fine-tune
           for the rest.
  gradual  Zhu & Gupta (2017) automated gradual pruning: at each epoch start e in [e0, e1]
           (e0 = round(start * epochs), e1 = round(end * epochs)) the sparsity is
           s_f * (1 - (1 - (e - e0) / (e1 - e0))**3); s_f from e1 on.
  gradual with `every_steps: dt` (Zhu & Gupta's own granularity): the masks are updated every dt
           optimiser steps instead of once per epoch, through the trainer's `on_step` hook.  With T
           the run's optimiser steps, t0 = round(start * T), t1 = round(end * T) and
           n = max(1, round((t1 - t0) / dt)) updates, the sparsity from step t0 + k*dt on is
           s_f * (1 - (1 - k / n)**3), k = 0..n (Zhu & Gupta 2017, eq. 1 with s_i = 0).  The masks
           (all ones) are installed when the model is built, so a step only narrows them in place.
           Left out (`every_steps: null`, the default) the schedule is the per-epoch one above and the
           config hashes as it did before the argument existed.
Either way the final sparsity is reached at the latest at the start of the last epoch.  Masks only
grow: a weight once pruned stays pruned.  Each step prunes the extra weights needed to reach the
scheduled fraction, so calling `on_epoch_start` twice (or again after resuming) changes nothing.

`sparsity` is the fraction of the *pruned layers'* weights set to zero.  The budget count is
`nonzero`, taken as the count the model ends training with: total parameters minus the pruned
weights (trained BN biases and surviving weights are nonzero; a fresh model's zero-initialised BN
biases are not counted as pruned).

Checkpoints: the state dict of a pruned model holds `weight_orig` and `weight_mask`.
`structure(model)` lists the modules that carry a mask; `restore` re-applies `prune.identity` to
them so the checkpoint loads with `strict=True`, masks included.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.utils.prune as tprune

from study.accounting import unique_parameters
from study.methods import BudgetError, Method, register

from baselines import _common as C

MODES = ("oneshot", "gradual")


def _refresh(module: nn.Module, incompatible_keys=None) -> None:
    """Recompute the masked `weight` attribute (prune only refreshes it in the forward pre-hook)."""
    if hasattr(module, "weight_orig") and hasattr(module, "weight_mask"):
        with torch.no_grad():
            module.weight = module.weight_orig * module.weight_mask


def _track(module: nn.Module) -> None:
    # `weight_orig` is registered after `bias`; put it back where `weight` was, so a resumed run's
    # optimiser (built after `restore`) lists parameters in the order the checkpointed one did
    params = module._parameters
    if "weight_orig" in params and next(iter(params)) != "weight_orig":
        ordered = {"weight_orig": params["weight_orig"], **{k: v for k, v in params.items() if k != "weight_orig"}}
        params.clear()
        params.update(ordered)
    # keeps `module.weight` in step with a loaded checkpoint, so counts read right before any forward
    if not getattr(module, "_prune_refresh_hook", False):
        module.register_load_state_dict_post_hook(_refresh)
        module._prune_refresh_hook = True


def is_pruned(module: nn.Module) -> bool:
    return hasattr(module, "weight_mask") and hasattr(module, "weight_orig")


@register
class MagnitudePrune(Method):
    name = "prune"
    knob = "sparsity"
    count = "nonzero"
    defaults = {"sparsity": 0.5, "mode": "gradual", "prune_at": 0.5, "start": 0.1, "end": 0.5,
                "layers": "authors", "linear": False, "every_steps": None}
    unnamed = {"every_steps": None}  # left out of the resolved args at this value (see C.omit_at)

    def args(self, given):
        args = super().args(given)
        C.check_choice(self.name, "mode", args["mode"], MODES)
        C.check_choice(self.name, "layers", args["layers"], C.LAYER_SETS)
        for key in ("sparsity", "prune_at", "start", "end"):
            args[key] = C.check_fraction(self.name, key, args[key])
        if args["mode"] == "gradual" and args["end"] < args["start"]:
            raise ValueError(f"{self.name}: end ({args['end']}) must not come before start ({args['start']})")
        if not isinstance(args["linear"], bool):
            raise ValueError(f"{self.name}: linear must be true or false, got {args['linear']!r}")
        dt = args["every_steps"]
        if dt is not None:
            if isinstance(dt, bool) or not isinstance(dt, int) or dt < 1:
                raise ValueError(f"{self.name}: every_steps must be a positive integer (optimiser steps "
                                 f"between mask updates) or null, got {dt!r}")
            if args["mode"] != "gradual":
                raise ValueError(f"{self.name}: every_steps applies to mode: gradual only, not {args['mode']!r}")
        return C.omit_at(args, self.unnamed)

    @staticmethod
    def every_steps(args: dict) -> int | None:
        return args.get("every_steps")

    def variant(self, args: dict) -> str:
        """A label for the schedule a run used, for tables and figures."""
        if args.get("mode", "gradual") == "oneshot":
            return "one-shot magnitude pruning"
        dt = self.every_steps(args)
        return f"AGP every {dt} steps (Zhu & Gupta)" if dt else "AGP once per epoch"

    # -- which weights -------------------------------------------------------------------------
    def targets(self, model: nn.Module, arch, args) -> list[tuple[str, nn.Module]]:
        out = C.select_convs(model, arch, args["layers"])
        if args["linear"]:
            out += [(n, m) for n, m in model.named_modules() if type(m) is nn.Linear]
        C.require(self.name, arch, out, "layer")
        return out

    @staticmethod
    def _weight(module: nn.Module) -> torch.Tensor:
        return module.weight_orig if is_pruned(module) else module.weight

    def prunable(self, model, arch, args) -> int:
        return sum(self._weight(m).numel() for _, m in self.targets(model, arch, args))

    # -- schedule ------------------------------------------------------------------------------
    def scheduled(self, args: dict, epoch: int, epochs: int) -> float:
        """Sparsity the pruned layers hold from the start of `epoch` on."""
        s_f, last = float(args["sparsity"]), max(0, epochs - 1)
        if args["mode"] == "oneshot":
            return s_f if epoch >= min(C.epoch_at(args["prune_at"], epochs), last) else 0.0
        e0 = min(C.epoch_at(args["start"], epochs), last)
        e1 = min(C.epoch_at(args["end"], epochs), last)
        if epoch >= e1:
            return s_f
        if epoch <= e0:
            return 0.0
        return s_f * (1.0 - (1.0 - (epoch - e0) / (e1 - e0)) ** 3)

    def scheduled_at_step(self, args: dict, step: int, total_steps: int) -> float | None:
        """With `every_steps`, the sparsity a mask update at optimiser step `step` (counted from 1)
        sets, or None when `step` is not an update step."""
        dt = self.every_steps(args)
        if dt is None:
            return None
        t0, t1 = round(float(args["start"]) * total_steps), round(float(args["end"]) * total_steps)
        n = max(1, round((t1 - t0) / dt))
        k, rest = divmod(step - t0, dt)
        if rest or k < 0 or k > n:
            return None
        return float(args["sparsity"]) * (1.0 - (1.0 - k / n) ** 3)

    @torch.no_grad()
    def apply(self, model: nn.Module, arch, args, sparsity: float) -> nn.Module:
        """Prune (globally, by magnitude) until `sparsity` of the pruned layers' weights are masked."""
        targets = [m for _, m in self.targets(model, arch, args)]
        total = sum(self._weight(m).numel() for m in targets)
        already = sum(int((m.weight_mask == 0).sum()) for m in targets if is_pruned(m))
        extra = round(sparsity * total) - already
        if extra <= 0:
            return model
        # global_unstructured + L1Unstructured, computed here: among the weights not yet pruned, the
        # `extra` smallest magnitudes over all pruned layers go.  Theirs cannot flatten channels-last
        # weights, and each call leaves a full copy of every mask in the module's hook, which gradual
        # pruning would pile up epoch after epoch; here `prune.identity` installs torch's machinery
        # (`weight_orig`, the `weight_mask` buffer, the forward pre-hook) once and the mask buffer is
        # narrowed in place.
        live = [(m.weight_orig * m.weight_mask if is_pruned(m) else m.weight).detach() for m in targets]
        masks = [(m.weight_mask if is_pruned(m) else torch.ones_like(w)).detach() for m, w in zip(targets, live)]
        flat_scores = torch.cat([w.abs().reshape(-1) for w in live]).float()
        flat_mask = torch.cat([k.reshape(-1) for k in masks]).float()
        flat_scores[flat_mask == 0] = float("inf")  # already pruned: never chosen again
        flat_mask[torch.topk(flat_scores, int(extra), largest=False).indices] = 0
        start = 0
        for m, w in zip(targets, live):
            new_mask = flat_mask[start:start + w.numel()].reshape(w.shape)
            start += w.numel()
            if not is_pruned(m):
                tprune.identity(m, "weight")
            m.weight_mask.mul_(new_mask.to(m.weight_mask.dtype))
            _refresh(m)
        for m in targets:
            _track(m)
        return model

    # -- the Method interface ------------------------------------------------------------------
    def build(self, arch, args, seed=0):
        model = C.tag(arch.build(num_classes=arch.num_classes), arch)
        targets = self.targets(model, arch, args)  # fail early when nothing would be pruned
        if self.every_steps(args):  # masks of ones now, so that `on_step` only changes values
            for _, m in targets:
                tprune.identity(m, "weight")
                _track(m)
        return model

    def on_epoch_start(self, model, args, epoch, epochs):
        if self.every_steps(args):
            # the steps set the schedule; the last epoch starts at the final sparsity whatever the
            # step count (the guarantee of the per-epoch schedule, and what `final_model` reports)
            if epoch < max(0, epochs - 1):
                return model
            return self.apply(model, C.arch_of(model, self.name), args, float(args["sparsity"]))
        return self.apply(model, C.arch_of(model, self.name), args, self.scheduled(args, epoch, epochs))

    def on_step(self, model, args, step, total_steps):
        sparsity = self.scheduled_at_step(args, step, total_steps)
        if sparsity is not None:
            self.apply(model, C.arch_of(model, self.name), args, sparsity)

    def structure(self, model):
        return {"pruned": [name for name, m in model.named_modules() if is_pruned(m)]}

    def restore(self, model, args, structure):
        for name in structure.get("pruned", []):
            module = model.get_submodule(name)
            if not is_pruned(module):
                tprune.identity(module, "weight")
                _track(module)
        return model

    def counted(self, model, arch, args):
        total = unique_parameters(model)
        return total - round(float(args["sparsity"]) * self.prunable(model, arch, args))

    def search(self, arch, args, target):
        model = C.skeleton(arch)
        total, n = unique_parameters(model), self.prunable(model, arch, args)
        smallest = total - n
        if not smallest <= target <= total:
            raise BudgetError(f"{self.name}: target {target} is not reachable; smallest reachable count is "
                              f"{smallest} (sparsity=1, every {args['layers']} layer emptied), largest {total}")
        k = total - target  # weights to prune: the count is exact, not just within tolerance
        return {**args, "sparsity": C.shorten(lambda s: round(s * n), k / n, 0.0, 1.0)}

