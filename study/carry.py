"""A grid that outlives its machine: the newest checkpoint of each unfinished run, in a folder that travels.

A study of several machine-hours spans sessions, and a session's machine can go with its store and its
checkpoints.  The store's runs travel as the portable export that `python -m analysis report` writes
(`results/<profile>/runs/`, loaded elsewhere by `python -m analysis load-study`).  This module carries
the other half: for every run of the grid that has not finished, its newest checkpoint that passes its
checksum, copied to `results/<profile>/in_flight/<config hash>/` under its own name (which carries the
epoch and the checksum).  `bash run_all.sh` brings both back before the grid starts, so an unfinished run
resumes from its last epoch on the new machine, and its checkpoint records where each stretch trained
(`Result.segments`).

Both directions keep the newer side: a copy never replaces a checkpoint that is further on, and a run
the store calls FINISHED leaves nothing behind in the folder.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from study import checkpoint
from study.config import RunConfig

IN_FLIGHT = "in_flight"


@dataclass(frozen=True)
class Carried:
    """What one run's checkpoint did on the way (a line of the command's report)."""
    name: str
    config_hash: str
    action: str  # "copied", "kept", "removed" or "skipped"
    detail: str

    def line(self) -> str:
        return f"{self.name} ({self.config_hash}): {self.action}, {self.detail}"


def _newest_good(folder: Path) -> Path | None:
    return next((p for p in checkpoint.candidates(folder) if checkpoint.verify(p)), None)


def _at(path: Path) -> str:
    epochs, batches = checkpoint.position(path)
    return f"after {epochs} epochs" + (f" and {batches} batches" if batches else "")


def _copy_into(src: Path, folder: Path) -> None:
    """A copy of `src` in `folder` under its name, written beside it and renamed into place (no half file)."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{src.name}.tmp"
    shutil.copyfile(src, tmp)
    tmp.replace(folder / src.name)


def export(runs: list[RunConfig], checkpoint_root: Path, folder: Path, finished: set[str]) -> list[Carried]:
    """Copy the newest good checkpoint of every unfinished run to `folder/in_flight/<hash>/`.

    A run FINISHED in the store loses its carried checkpoint; a run with nothing here keeps the one it
    carries (it was never brought to this machine, or has not advanced); folders of runs the grid no
    longer has are removed.
    """
    out = folder / IN_FLIGHT
    done: list[Carried] = []
    hashes = set()
    for cfg in runs:
        h = cfg.hash()
        hashes.add(h)
        carried_dir = out / h
        carried = _newest_good(carried_dir)
        if h in finished:
            if carried_dir.exists():
                shutil.rmtree(carried_dir)
                done.append(Carried(cfg.name, h, "removed", "the run has FINISHED"))
            continue
        local = _newest_good(checkpoint_root / h)
        if local is None:
            if carried is not None:
                done.append(Carried(cfg.name, h, "kept", f"{_at(carried)}; nothing newer here"))
            continue
        if carried is not None and checkpoint.position(carried) >= checkpoint.position(local):
            done.append(Carried(cfg.name, h, "kept", f"{_at(carried)}; as far as this machine's"))
            continue
        _copy_into(local, carried_dir)
        for old in carried_dir.iterdir():  # the folder carries one checkpoint per run
            if old.name != local.name:
                old.unlink()
        done.append(Carried(cfg.name, h, "copied", f"{_at(local)}, {local.stat().st_size / 1e6:.1f} MB"))
    for stale in sorted(out.iterdir()) if out.is_dir() else ():
        if stale.name not in hashes:
            shutil.rmtree(stale)
            done.append(Carried("(not in the grid)", stale.name, "removed", "no run of the grid has this hash"))
    if out.is_dir() and not any(out.iterdir()):  # every run finished: nothing travels any more
        out.rmdir()
    return done


def import_(runs: list[RunConfig], checkpoint_root: Path, folder: Path, finished: set[str]) -> list[Carried]:
    """Copy each carried checkpoint into `checkpoint_root/<hash>/` where it is further on than what is there.

    A carried file must pass its checksum and name its own config hash; one that does not is skipped
    with the reason, and the run starts from what this machine has.
    """
    by_hash = {cfg.hash(): cfg for cfg in runs}
    done: list[Carried] = []
    src = folder / IN_FLIGHT
    for carried_dir in sorted(src.iterdir()) if src.is_dir() else ():
        h = carried_dir.name
        cfg = by_hash.get(h)
        if cfg is None:
            done.append(Carried("(not in the grid)", h, "skipped", "no run of the grid has this hash"))
            continue
        if h in finished:
            done.append(Carried(cfg.name, h, "skipped", "the run has FINISHED in this store"))
            continue
        found = checkpoint.candidates(carried_dir)
        carried = _newest_good(carried_dir)
        if carried is None:
            done.append(Carried(cfg.name, h, "skipped", f"{len(found)} carried file(s), none passes its checksum"))
            continue
        if checkpoint.config_hash_of(carried) != h:
            done.append(Carried(cfg.name, h, "skipped", f"{carried.name} was written for another configuration"))
            continue
        local = _newest_good(checkpoint_root / h)
        if local is not None and checkpoint.position(local) >= checkpoint.position(carried):
            done.append(Carried(cfg.name, h, "kept", f"this machine's is {_at(local)}, as far or further"))
            continue
        _copy_into(carried, checkpoint_root / h)
        done.append(Carried(cfg.name, h, "copied", f"resumes {_at(carried)}"))
    return done
