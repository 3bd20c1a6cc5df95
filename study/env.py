"""The machine a run finds itself on: the one home of the project root, the device, the CPU's name and
flags and the precision a run trains in.  (The default tracking store is `study.schema`'s, part of the
store contract.)

Light on purpose (no torch or MLflow at import): `study fetch` and the bench use it too.
`/proc/cpuinfo` is read here and nowhere else, once per process.
"""
from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent  # the repository: configs/, reference/, results/


# -- the CPU ------------------------------------------------------------------------------------------
@functools.cache
def _cpuinfo() -> str:
    with contextlib.suppress(OSError):
        return Path("/proc/cpuinfo").read_text()
    return ""


def cpu_flags() -> frozenset[str]:
    """The first processor's feature flags (empty where /proc/cpuinfo is not there)."""
    for line in _cpuinfo().splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_model() -> str:
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return ""


def cpu_has_bf16() -> bool:
    """AMX or AVX512-BF16: bf16 autocast trains faster than fp32 here."""
    return bool({"amx_bf16", "avx512_bf16"} & cpu_flags())


# -- device and precision -------------------------------------------------------------------------------
def device(requested: str | None = None):
    """`requested` (e.g. "cpu", "cuda:1"), else CUDA where there is one, else the CPU."""
    import torch

    return torch.device(requested or ("cuda" if torch.cuda.is_available() else "cpu"))


def device_name(dev) -> str:
    """A line naming the hardware a run trained on (logged with the run)."""
    import torch

    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    model = cpu_model()
    return f"cpu: {model} x{os.cpu_count()}" if model else "cpu"


def resolve_precision(requested: str, dev) -> str:
    """`auto`: bf16 on a GPU that has it (else fp16), bf16 on a CPU with AMX/AVX512-BF16, else fp32."""
    if requested != "auto":
        return requested
    if dev.type == "cuda":
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_bf16() else "fp32"
