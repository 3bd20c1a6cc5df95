"""The pieces of the fast training recipe that are more than a number: weight averaging and the
weight-decay groups (flip test-time augmentation is the tasks' evaluation, `study.tasks.base`).
Each is the same for every method.

Weight averaging (`WeightAverage`) keeps an exponential moving average of a network's parameters and
floating-point buffers, updated after every optimiser step.  BatchNorm's running statistics are
*tracked*: they are averaged like the weights (as timm's ModelEma does), which is close to the
averaged network's own statistics because one-cycle training ends with the learning rate near zero,
where the averaged and the live weights meet.  Two things are copied rather than averaged:
  * pruning masks (`*_mask` buffers), so that a pruned network stays pruned: its averaged weight is
    the average of `weight_orig` times the live mask;
  * integer buffers (BatchNorm's batch counter).
For CSG the average is of the codes and of the generator, so the averaged network's kernels are
`average(generator) x average(codes)`, not the average of the kernels the live network used.  Both
are legitimate networks of the same parameter count; the averaged one is what is evaluated.
A method that changes the network's set of tensors starts a new average: a reshape (filter pruning,
decomposition), or masks appearing in place when unstructured pruning begins.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn


class WeightAverage:
    """EMA of `model`'s weights, with the warm-up of timm's ModelEmaV3: the decay used at update t
    is `min(decay, (1 + t) / (10 + t))`, so the first updates are not dominated by the initial
    weights.  `module` is the averaged network (evaluate it; it is checkpointed with `state_dict`)."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.updates = 0
        _detach_derived(model)
        self.module = copy.deepcopy(model)
        self.module.requires_grad_(False)
        self._names = _tensor_names(model)
        self._pairs = self._match(model)

    def follows(self, model: nn.Module) -> bool:
        """Whether `model` still has the tensors this average was built for (no new masks or shapes)."""
        return _tensor_names(model) == self._names

    def _match(self, model: nn.Module):
        """(averaged, live) tensor lists: the averaged ones, and the ones copied as they are."""
        mine = dict(self.module.named_parameters()) | dict(self.module.named_buffers())
        averaged, copied = ([], []), ([], [])
        for name, live in list(model.named_parameters()) + list(model.named_buffers()):
            target = averaged if live.is_floating_point() and not name.endswith("_mask") else copied
            target[0].append(mine[name])
            target[1].append(live)
        return averaged, copied

    def _decay_now(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        """Fold the live network's current weights into the average (call after each step)."""
        decay = self._decay_now()
        self.updates += 1
        (avg, live), (dst, src) = self._pairs
        if avg:
            torch._foreach_lerp_(avg, [t.detach() for t in live], 1.0 - decay)
        for d, s in zip(dst, src):
            d.copy_(s)

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])


def _tensor_names(model: nn.Module) -> tuple:
    return tuple((name, tuple(t.shape)) for name, t in list(model.named_parameters()) + list(model.named_buffers()))


def _detach_derived(model: nn.Module) -> None:
    """Replace tensors that modules keep as plain attributes and that autograd derived (a pruned
    layer's `weight = weight_orig * weight_mask`) by detached ones, which deepcopy can copy.  They
    are recomputed by the module's forward pre-hook on every pass, so nothing changes for it."""
    for module in model.modules():
        for key, value in list(vars(module).items()):
            if isinstance(value, torch.Tensor) and value.grad_fn is not None:
                setattr(module, key, value.detach())


NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


def norm_and_bias_names(model: nn.Module) -> set[str]:
    """Names of the normalisation layers' parameters and of every `bias`: exactly what the recipe's
    `no_decay_norm_bias` exempts.  Chosen by the module's type and the parameter's name, not by
    shape: a 1-D parameter can be a real weight (HashedNets' buckets)."""
    names = set()
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        for name, _ in module.named_parameters(recurse=False):
            if isinstance(module, NORM_LAYERS) or name == "bias":
                names.add(prefix + name)
    return names


def decay_groups(model: nn.Module, weight_decay: float, exempt: set[str]) -> list[dict]:
    """SGD parameter groups: the trainable parameters outside `exempt` decay, the rest do not.
    A parameter shared by several modules appears once, under its first name."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():  # named_parameters already yields a shared tensor once
        if p.requires_grad:
            (no_decay if name in exempt else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups

