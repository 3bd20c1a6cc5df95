"""`--backend slurm`: each run is a submitit `Checkpointable` that requeues itself when preempted.

SLURM warns a job before stopping it: at the time limit it sends submitit's signal (`--signal
USR2@<signal_delay_s>`, 90 s by default; `SUBMITIT_PREEMPT_SIGNAL` names another), and at preemption
SIGTERM followed by that signal; the kill comes after a grace time.  In the job, submitit ignores
SIGTERM (it logs it) and on the signal calls `checkpoint()` of the submitted callable, writes the
`DelayedSubmission` it returns over the job's pickle, requeues the job (`scontrol requeue`; the
local executor restarts the task on exit status 144) and exits.

`RequeueableRun` puts the run's own checkpoint in front of that.  Its `__call__` routes the signal to
`study.preempt.request` instead: the trainer writes a checkpoint at the next batch boundary
(mid-epoch, with the data-order position) and raises `Preempted`, and only then is submitit's
handler called, which calls `checkpoint()` (the same callable with the same `Job`: everything the
next start needs is in the checkpoint folder and the MLflow store) and requeues.  The requeued task
finds the run's MLflow run by its config hash, sets it RUNNING again, resumes from the batch it
stopped at and logs only the epochs the store does not have, so every epoch is logged once.
"""
from __future__ import annotations

import signal

from submitit.core.job_environment import JobEnvironment
from submitit.helpers import Checkpointable, DelayedSubmission

from study import preempt


class RequeueableRun(Checkpointable):
    """`RequeueableRun(run_one)(job)`: `run_one(job)` inside a submitit job, requeued on preemption.

    The runner hands in its own `run_one` (pickled by reference), so that this module, which the
    runner imports, never imports the runner."""

    def __init__(self, run_one):
        self.run_one = run_one

    def __call__(self, job):
        signum = JobEnvironment._usr_sig()
        submitits = signal.getsignal(signum)  # installed by submitit before it called us
        preempt.clear()
        preempt.defer(signum)
        try:
            return self.run_one(job)
        except preempt.Preempted:
            if not callable(submitits):  # not inside a submitit job: nothing to requeue through
                raise
            submitits(signum, None)  # calls self.checkpoint(job), requeues and exits (SystemExit)
            raise  # not reached: submitit has exited

    def checkpoint(self, job) -> DelayedSubmission:
        """The same run again: its state is in its checkpoint folder and the tracking store."""
        return DelayedSubmission(type(self)(self.run_one), job)
