"""Mid-epoch checkpoints: every N minutes (any backend), and at once when the job is to be preempted.

`MidEpoch` is what `study.train.train` asks after every optimiser step whether to checkpoint now.
It answers "timer" every `minutes` of training, and "preempt" once the job has been told that it
will be stopped: under `--backend slurm`, `study.requeue` routes the signal SLURM sends before the
time limit or at preemption (submitit's, USR2 by default) to `request()` instead of acting on it
at once.  A signal handler runs between two bytecodes of the main thread, which could be in the
middle of an optimiser step or of a store call; deferring it to the next batch boundary means the
checkpoint is always of a consistent state.  The trainer then writes the checkpoint (with the
data-order position: `study.train`) and raises `Preempted`; the requeue wrapper hands the signal on
to submitit, which requeues the job.

The position in the data is `(epoch, batch)` plus the train loader's generator state at the start of
that epoch: a resumed run draws the same order and augmentation again and starts at `batch`
(`batches_from`), so no sample is seen twice or skipped.
"""
from __future__ import annotations

import itertools
import signal
import time
from typing import Callable, Iterator

_requested: list[int] = []  # the signals received and not yet acted on (set by the handler)


class Preempted(BaseException):
    """The run checkpointed because its job is to be stopped; the job should requeue itself.

    A BaseException, like KeyboardInterrupt: the runner's failure isolation (`except Exception`) must
    not mark a preempted run FAILED."""

    def __init__(self, where: str, signum: int | None):
        super().__init__(where)
        self.where, self.signum = where, signum


def request(signum: int, frame=None) -> None:
    """Signal handler: note the request; the trainer acts on it at the next batch boundary."""
    _requested.append(signum)


def requested() -> int | None:
    """The signal that asked for a checkpoint-and-stop, or None."""
    return _requested[0] if _requested else None


def clear() -> None:
    _requested.clear()


def defer(signum: int):
    """Route `signum` to `request` (from now on, in this process); returns the handler it replaces."""
    return signal.signal(signum, request)


class MidEpoch:
    """When to write a mid-epoch checkpoint: `minutes` after the last checkpoint (None or 0: never
    on a timer), or at once on a preemption request.  `clock` is injectable for tests."""

    def __init__(self, minutes: float | None = None, clock: Callable[[], float] = time.monotonic):
        self.seconds = 60.0 * minutes if minutes else None
        self.clock = clock
        self.last = clock()

    def due(self) -> str | None:
        if requested() is not None:
            return "preempt"
        if self.seconds is not None and self.clock() - self.last >= self.seconds:
            return "timer"
        return None

    def saved(self, why: str, where: str) -> None:
        """A checkpoint was written at `where`; on a preemption request, stop (`Preempted`)."""
        self.last = self.clock()
        if why == "preempt":
            raise Preempted(where, requested())

    def epoch_saved(self, where: str, last_epoch: bool) -> None:
        """An end-of-epoch checkpoint was written: the timer starts again; a preemption request that
        came during the epoch's evaluation stops the run here (not after the last epoch: finishing
        is then the better use of the grace time)."""
        self.last = self.clock()
        if requested() is not None and not last_epoch:
            self.saved("preempt", where)


def batches_from(loader, start: int) -> Iterator:
    """`loader`'s batches of this epoch from index `start` on, drawing the epoch's order and
    augmentation as a full pass does.  Loaders that can start later without producing the skipped
    batches have `iter_from(start)`; any other is iterated past them."""
    if start == 0:
        return iter(loader)
    if hasattr(loader, "iter_from"):
        return loader.iter_from(start)
    return itertools.islice(iter(loader), start, None)
