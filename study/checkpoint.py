"""Atomic, verifiable checkpoints: at the end of every epoch, and mid-epoch when asked.

Each checkpoint is written to a temporary file in the same folder, flushed to disk and renamed into
place, so a kill at any moment leaves either the old file or the new one, never half of one.  Its
name carries the epoch and a SHA-256 prefix of its bytes (`epoch0007-3fa2c1d9e0b4.pt`): a truncated or
corrupted file fails the check and the run falls back to the previous good checkpoint (the last
`keep` are kept), or starts over, with a warning.  A mid-epoch checkpoint (every N minutes, or at
once when the job is to be preempted: `study/preempt.py`) also names the batches done in the epoch
under way, `epoch0007.b0123-3fa2c1d9e0b4.pt`: 7 epochs and 123 batches; it sorts between
`epoch0007` and `epoch0008`.  A write that fails (a full disk) removes its
temporary file and leaves the previous checkpoints as they were.  Loading always uses `weights_only=True`.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import re
from pathlib import Path

import torch

log = logging.getLogger(__name__)
_NAME = re.compile(r"^epoch(\d{4,})(?:\.b(\d{4,}))?-([0-9a-f]{12})\.pt$")


def save(folder: Path, epoch: int, state: dict, keep: int = 2, batch: int | None = None) -> Path:
    """Write `state` after `epoch` finished epochs (and `batch` batches of the next, mid-epoch)."""
    folder.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    mid = f".b{batch:04d}" if batch is not None else ""
    path = folder / f"epoch{epoch:04d}{mid}-{hashlib.sha256(data).hexdigest()[:12]}.pt"
    tmp = folder / f".{path.name}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # e.g. a full disk: no half-written file stays; the previous checkpoint is untouched
        tmp.unlink(missing_ok=True)
        raise
    for old in candidates(folder)[keep:]:
        old.unlink(missing_ok=True)
    return path


def candidates(folder: Path) -> list[Path]:
    """Checkpoints in the folder, newest first (by epoch, then batch: an epoch's end after its middle)."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), int(m.group(2) or 0), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for *_, p in sorted(found, reverse=True)]


def position(path: Path) -> tuple[int, int]:
    """(finished epochs, batches done of the next) that a checkpoint's name says."""
    m = _NAME.match(path.name)
    return int(m.group(1)), int(m.group(2) or 0)


def verify(path: Path) -> bool:
    digest = _NAME.match(path.name).group(3)
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12] == digest


def config_hash_of(path: Path) -> str | None:
    """The `config_hash` a checkpoint was written for (None if it has none or cannot be read).  Memory-mapped:
    the tensors are not read."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001  (unreadable: `load_latest` sets it aside and falls back)
        return None
    value = state.get("config_hash") if isinstance(state, dict) else None
    return str(value) if value is not None else None


def load_latest(folder: Path) -> dict | None:
    """The newest checkpoint that passes its check, or None; bad ones are reported and set aside."""
    for path in candidates(folder):
        try:
            if not verify(path):
                raise ValueError("checksum mismatch")
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # truncated, corrupt, or unreadable
            log.warning("checkpoint %s is unusable (%s); falling back to an earlier one", path, e)
            path.rename(path.with_suffix(".corrupt"))
    return None
