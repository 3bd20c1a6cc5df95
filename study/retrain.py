"""`python -m study retrain GRID NAME... --reason TEXT`: set finished runs aside so the grid trains them again.

A run is found by its config hash, so a FINISHED run is never trained again, however it was trained.
Sometimes it should be: `precision: auto` gave it fp32 on one machine while the runs it is compared
with trained in bf16 on another, or it ran on code since found wrong.  Retraining keeps the old run:

1. its checkpoint folder moves to `<checkpoints>/retrained/<hash>-<run id>/`, so that nothing resumes
   from it;
2. it gets the tag `retrained` (the reason), and the store stops counting it as the configuration's run.

The next `python -m study run GRID` then trains the configuration from the start, as a new MLflow run
with the same name.  The analysis counts the latest FINISHED run of a configuration and seed, so the old
run stays in the statistics until its replacement has finished, and is then listed as superseded.

Every name is checked before anything moves: it must be a run of the grid whose current run is FINISHED.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from study import schema
from study.grid import Grid
from study.tracking import Tracker

RETRAINED_FOLDER = "retrained"  # under the grid's checkpoint root


class RetrainError(ValueError):
    """A name that cannot be retrained: not in the grid, or without a FINISHED run."""


@dataclass(frozen=True)
class SetAside:
    name: str
    config_hash: str
    run_id: str
    checkpoints: Path | None  # where the old checkpoint folder went (None: there was none)

    def line(self) -> str:
        moved = f"its checkpoints moved to {self.checkpoints}" if self.checkpoints else "it had no checkpoints here"
        return f"{self.name} ({self.config_hash}): run {self.run_id} set aside; {moved}"


def plan(grid: Grid, tracker: Tracker, names: list[str]) -> list[tuple]:
    """(config, current FINISHED run) for each name, in order; RetrainError before anything changes."""
    by_name = {c.name: c for c in grid.runs}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise RetrainError(f"not runs of grid {grid.name}: {', '.join(unknown)}")
    current = tracker.current_runs(tracker.existing_experiment(grid.name))
    chosen = []
    for name in dict.fromkeys(names):
        cfg = by_name[name]
        run = current.get(cfg.hash())
        if run is None or run.info.status != "FINISHED":
            state = "no run yet" if run is None else f"its run is {run.info.status}"
            raise RetrainError(f"{name}: only a FINISHED run can be retrained ({state})")
        chosen.append((cfg, run))
    return chosen


def set_aside(grid: Grid, tracker: Tracker, output_root: Path, names: list[str], reason: str) -> list[SetAside]:
    """Set each named run aside (checkpoints first: a crash in between leaves it the configuration's
    FINISHED run, which a second `retrain` sets aside)."""
    if not reason.strip():
        raise RetrainError("--reason: say why the runs are trained again (it is kept with the old runs)")
    root = grid.checkpoint_root(output_root)
    done = []
    for cfg, run in plan(grid, tracker, names):
        h, run_id = cfg.hash(), run.info.run_id
        folder, moved = root / h, None
        if folder.exists():
            moved = root / RETRAINED_FOLDER / f"{h}-{run_id}"
            moved.parent.mkdir(parents=True, exist_ok=True)
            folder.rename(moved)
        tracker.log(run_id, tags={schema.RETRAINED_TAG: reason.strip()})
        done.append(SetAside(cfg.name, h, run_id, moved))
    return done
