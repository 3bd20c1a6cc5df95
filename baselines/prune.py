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
                "layers": "authors", "linear": False}

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
        return args

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
        self.targets(model, arch, args)  # fail early when nothing would be pruned
        return model

    def on_epoch_start(self, model, args, epoch, epochs):
        return self.apply(model, C.arch_of(model, self.name), args, self.scheduled(args, epoch, epochs))

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
        total = C.numel_params(model)
        return total - round(float(args["sparsity"]) * self.prunable(model, arch, args))

    def search(self, arch, args, target):
        model = C.skeleton(arch)
        total, n = C.numel_params(model), self.prunable(model, arch, args)
        smallest = total - n
        if not smallest <= target <= total:
            raise BudgetError(f"{self.name}: target {target} is not reachable; smallest reachable count is "
                              f"{smallest} (sparsity=1, every {args['layers']} layer emptied), largest {total}")
        k = total - target  # weights to prune: the count is exact, not just within tolerance
        return {**args, "sparsity": C.shorten(lambda s: round(s * n), k / n, 0.0, 1.0)}

