"""Parameter, size and FLOP accounting, with every count named and none mixed silently.

total      unique parameters (a shared tensor counts once)
trainable  parameters that receive gradients
frozen     parameters that do not
stored     what a checkpoint must hold: total minus tensors regenerable from a seed
           (a frozen random-binary generator carries `regenerable = True`)
nonzero    nonzero values of the effective weights (a pruned weight is `weight_orig * weight_mask`)

and, in bytes (`account`; never parameter counts):
bytes_on_disk      the `torch.save` size of the compact state dict (`compact_state_dict`)
bytes_sparse       what the compact state costs to store when every pruned tensor (one carrying a
                   `torch.nn.utils.prune` mask) keeps only its nonzero values plus where they are,
                   in the cheapest of three encodings (`sparse_tensor_bytes`): a bitmap (one bit per
                   entry), a list of flat indices in the narrowest unsigned integer that holds them,
                   or dense; every other tensor (buffers included) dense.  Raw data, no container
                   overhead, so it is exact and comparable across methods: a 50%-pruned weight is not
                   half price, it costs half its values plus its mask.
bytes_sparse_index the part of `bytes_sparse` that says where the nonzero values are (0 when nothing
                   is pruned): what matching pruning on `nonzero` leaves out.
"""
from __future__ import annotations

import io

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from study import schema
from study.csg import GeneratedConv2d, SliceGenerator, generators, materialize

COUNTS = ("total", "trainable", "frozen", "stored", "nonzero")


def _effective(module: nn.Module, name: str, p: torch.Tensor) -> torch.Tensor:
    # torch.nn.utils.prune keeps the dense tensor as `<name>_orig` and the product as an attribute
    if name.endswith("_orig") and hasattr(module, name[:-5]):
        return getattr(module, name[:-5])
    return p


def unique_parameters(module: nn.Module) -> int:
    """Parameters of `module`, a tensor shared by several layers counted once (`total` below)."""
    return sum(p.numel() for p in module.parameters())  # parameters() yields each tensor once


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


def _index_bytes(numel: int) -> int:
    """Bytes of the narrowest unsigned integer (1, 2, 4 or 8 bytes) that holds every flat index."""
    for width in (1, 2, 4, 8):
        if numel - 1 < 256 ** width:
            return width
    raise ValueError(f"a tensor of {numel} entries cannot be indexed in 8 bytes")


def sparse_tensor_bytes(numel: int, nonzero: int, itemsize: int) -> tuple[int, int]:
    """(bytes, index bytes) of the cheapest encoding of a tensor with `nonzero` of `numel` entries left:
    bitmap (nonzero values + ceil(numel / 8)), index list (nonzero values + nonzero * index width),
    or dense (numel values, no index)."""
    values = nonzero * itemsize
    options = [(numel * itemsize, 0), (values + (numel + 7) // 8, (numel + 7) // 8)]
    if numel:
        options.append((values + nonzero * _index_bytes(numel), nonzero * _index_bytes(numel)))
    return min(options)


@torch.no_grad()
def sparse_storage(model: nn.Module) -> dict[str, int]:
    """`bytes_sparse` and `bytes_sparse_index` (see the module docstring) of `model`'s compact state."""
    state = model.state_dict()
    total = index = 0
    for key, value in state.items():
        if key.endswith("_mask"):
            continue
        if key.endswith("_orig") and key[:-5] + "_mask" in state:
            effective = value * state[key[:-5] + "_mask"]  # what the forward uses, however stale `.weight` is
            b, i = sparse_tensor_bytes(effective.numel(), int(torch.count_nonzero(effective)),
                                       effective.element_size())
        else:
            b, i = value.numel() * value.element_size(), 0
        total, index = total + b, index + i
    return {"bytes_sparse": total, "bytes_sparse_index": index}


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
    out = {**count_parameters(model), "bytes_on_disk": bytes_on_disk(model), **sparse_storage(model)}
    if input_size is not None:
        out.update(flops(model, input_size))
    return out


def breakdown(model: nn.Module) -> dict[str, int]:
    """Unique parameters of `model` by role (`study.schema.CATEGORIES`): the shared generator (a
    regenerable one apart: it is not stored), the per-slice codes, ordinary convolutions, the
    classifier (the last linear layer, else the last conv with parameters), normalisation, other."""
    modules = list(model.named_modules())
    linears = [n for n, m in modules if isinstance(m, nn.Linear)]
    convs = [n for n, m in modules if isinstance(m, nn.Conv2d) and any(True for _ in m.parameters(recurse=False))]
    classifier = linears[-1] if linears else (convs[-1] if convs else None)
    norms = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)
    out = dict.fromkeys(schema.CATEGORIES, 0)
    seen: set[int] = set()
    for name, module in modules:
        for pname, p in module.named_parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            if isinstance(module, SliceGenerator):
                cat = "generator (frozen, not stored)" if getattr(p, "regenerable", False) else "generator"
            elif isinstance(module, GeneratedConv2d):
                cat = "codes" if pname == "code" else "other"
            elif name == classifier:
                cat = "classifier"
            elif isinstance(module, norms):
                cat = "normalisation"
            elif isinstance(module, nn.Conv2d) or p.dim() == 4:
                cat = "convolutions (not generated)"
            else:
                cat = "other"
            out[cat] += p.numel()
    return out
