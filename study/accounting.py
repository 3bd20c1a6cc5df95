"""Parameter, size and FLOP accounting, with every count named and none mixed silently.

total      unique parameters (a shared tensor counts once)
trainable  parameters that receive gradients
frozen     parameters that do not
stored     what a checkpoint must hold: total minus tensors regenerable from a seed
           (a frozen random-binary generator carries `regenerable = True`)
nonzero    nonzero values of the effective weights (a pruned weight is `weight_orig * weight_mask`)
"""
from __future__ import annotations

import io

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from study.csg import generators, materialize

COUNTS = ("total", "trainable", "frozen", "stored", "nonzero")


def _effective(module: nn.Module, name: str, p: torch.Tensor) -> torch.Tensor:
    # torch.nn.utils.prune keeps the dense tensor as `<name>_orig` and the product as an attribute
    if name.endswith("_orig") and hasattr(module, name[:-5]):
        return getattr(module, name[:-5])
    return p


@torch.no_grad()
def count_parameters(model: nn.Module) -> dict[str, int]:
    counts = dict.fromkeys(COUNTS, 0)
    seen: set[int] = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            n = p.numel()
            counts["total"] += n
            counts["trainable" if p.requires_grad else "frozen"] += n
            counts["stored"] += 0 if getattr(p, "regenerable", False) else n
            counts["nonzero"] += int(torch.count_nonzero(_effective(module, name, p)))
    return counts


def compact_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """What a deployment checkpoint holds: no regenerable tensors, pruned weights folded and sparse."""
    state = {}
    for key, value in model.state_dict().items():
        if key.endswith("_mask"):
            continue
        if key.endswith("_orig"):
            module_name, _, leaf = key.rpartition(".")
            module = model.get_submodule(module_name) if module_name else model
            value = getattr(module, leaf[:-5]).detach()
            key = key[:-5]
            if value.numel() and torch.count_nonzero(value) < value.numel() / 2:
                value = value.to_sparse()
        state[key] = value
    return state


def bytes_on_disk(model: nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(compact_state_dict(model), buffer)
    return buffer.tell()


@torch.no_grad()
def flops(model: nn.Module, input_size: tuple[int, ...]) -> dict[str, int]:
    """aten-level FLOPs of one image's forward pass, and, separately, of generating the kernels.

    The forward is counted on the materialised network, so generated kernels are convolved like any
    other; generation does not grow with batch size and vanishes once kernels are materialised.
    """
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        x = torch.zeros(1, *input_size, device=device)
        plain = materialize(model)
        with FlopCounterMode(display=False) as counter:
            plain(x)
        forward = counter.get_total_flops()
        with FlopCounterMode(display=False) as counter:
            for g in generators(model):
                g.generate_all()
        generation = counter.get_total_flops()
    finally:
        model.train(was_training)
    return {"flops": int(forward), "macs": int(forward) // 2, "kernel_gen_flops": int(generation)}


def account(model: nn.Module, input_size: tuple[int, ...] | None = None) -> dict[str, int]:
    """Every count at once, as logged with each run."""
    out = {**count_parameters(model), "bytes_on_disk": bytes_on_disk(model)}
    if input_size is not None:
        out.update(flops(model, input_size))
    return out
