"""Import the authors' released checkpoints into our models and check the accuracy they store.

Their files are `{'net': state_dict, 'acc': float, 'epoch': int}` with DataParallel's `module.`
prefix, the generator named `CLG` (older) or `CSG` (newer) and repeated once per block that holds a
reference to it, codes named after the block (`code`, `code2`) rather than after the conv, and
sometimes fp16 storage.  The slice size and code dimension are read from the tensor shapes.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import torch
import torch.nn as nn

from study.csg import generated_convs
from study.methods import build
from study.methods.csg import csg_plan
from study.models import ArchSpec, get_arch

_GENERATOR = re.compile(r"(^|\.)(CLG|CSG)\.weight$")


class CheckpointError(ValueError):
    pass


def read(path: str | Path) -> dict:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint") from None
    except Exception as e:  # truncated / not a torch file
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({type(e).__name__})") from None
    if not isinstance(ckpt, dict) or "net" not in ckpt:
        raise CheckpointError(f"{path}: expected the authors' {{'net', 'acc', 'epoch'}} dict")
    return ckpt


def translate(state: dict[str, torch.Tensor], arch: ArchSpec) -> tuple[dict[str, torch.Tensor], dict | None]:
    """Our state dict and the CSG arguments (None for a plain network) for an authors' state dict."""
    state = {k.removeprefix("module."): v.float() if v.is_floating_point() else v for k, v in state.items()}
    out, generator = {}, None
    names = csg_plan(arch).authors_code_names
    for key, value in state.items():
        if _GENERATOR.search(key):
            if key.count(".") == 1:  # the top-level copy; per-block copies hold the same values
                generator = value
            continue
        parent, _, leaf = key.rpartition(".")
        if leaf in names:
            key = f"{parent}.{names[leaf]}" if parent else names[leaf]
        out[key] = value
    if generator is None:
        copies = [v for k, v in state.items() if _GENERATOR.search(k)]
        generator = copies[0].float() if copies else None
    if generator is None:
        return out, None
    out["csg.weight"] = generator
    rows, code_dim = generator.shape
    k = csg_plan(arch).kernel_size
    slice_size = math.isqrt(rows // (k * k))
    if slice_size * slice_size * k * k != rows:
        raise CheckpointError(f"generator of shape {tuple(generator.shape)} is not S*S*{k}*{k} x d")
    return out, {"slice": slice_size, "code_dim": code_dim}


def load_model(path: str | Path, arch_name: str) -> tuple[nn.Module, dict]:
    """The authors' network in our implementation, with their weights; and the checkpoint's metadata."""
    arch = get_arch(arch_name)
    ckpt = read(path)
    state, csg_args = translate(ckpt["net"], arch)
    model, args = build(arch_name, "csg" if csg_args else "none", csg_args or {})
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if "\n" in str(e) else str(e)
        raise CheckpointError(f"{path}: does not fit {arch_name}: {first}") from None
    meta = {"stored_accuracy": float(ckpt.get("acc", float("nan"))), "epoch": ckpt.get("epoch"),
            "method": "csg" if csg_args else "none", **(csg_args or {}),
            "generated_layers": sum(1 for _ in generated_convs(model))}
    return model.eval(), meta


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 20,
             tta: bool = False) -> dict[str, float]:
    """The CIFAR-10 task's own evaluation (`Task.evaluate`, fp32) over all of (x, y), normalised as the
    authors did: `loss`, top-1 accuracy `acc` in %, and with `tta` also `acc_tta` (the runs'
    `test_acc_tta`: softmax averaged over each image and its mirror), so that the authors' networks
    and ours are compared under the same rules.

    channels_last and small batches keep the activations cache-sized, which is what decides the speed
    on CPU: on the 2-core AVX2 AMD EPYC (fp32, one thread) DenseNet-BC k=36 evaluated 42-47 img/s at
    batch 20 against 26-27 at batch 100 and 20 against contiguous tensors, and ResNet-56 about the same
    at 20 as at 100 (2026-12-03).  In eval mode a batch's size does not change any image's output."""
    from study.data.cifar import CifarLoader
    from study.tasks import get_task

    model.eval().to(memory_format=torch.channels_last)
    return get_task("cifar10").evaluate(model, CifarLoader(x, y, batch_size, train=False, channels_last=True), tta=tta)
