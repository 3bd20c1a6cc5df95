"""Preemption and requeue (`--backend slurm`), and mid-epoch checkpoints every N minutes.

Real signals to real processes: the grid runs through `python -m study run` with submitit's local
executor; the test sends the training task what SLURM sends at preemption (SIGTERM, then submitit's
USR2; the kill only after a grace time), and submitit requeues the task.  A timer checkpoint is
followed by kill -9.  Everything is asserted on the MLflow store: one FINISHED run per config, each
epoch's metrics logged once (`get_metric_history`), final metrics equal to an uninterrupted run's,
bit for bit (same machine, one torch thread), and the position the run resumed from (tags).
"""
from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import torch

from conftest import Crash, without_timing
from grid_subprocess import each_epoch_once, popen_grid, run_grid, runs, uri, write_grid
from study import checkpoint, preempt, schema
from study import grid as grid_mod
from study.config import RunConfig
from study.train import train

pytestmark = pytest.mark.slow

EPOCHS, BATCHES = 2, 8  # 256 training images in batches of 32
SMALL = dict(epochs=EPOCHS, batch_size=32, train_subset=256, val_size=128, test_subset=128)
BLOCKS = [{"method": "none"}]  # one run: the machine is shared; the job array of several is test_scaleout's
TIMER = "0.0008"  # --checkpoint-minutes: a mid-epoch checkpoint about every 50 ms, i.e. after every batch or so
FINAL = ("final_test_acc", "test_acc_at_best_val", "best_val_acc", "final_val_acc", "params_total")


def _grid(folder: Path, name: str = "preempt", blocks=BLOCKS) -> Path:
    return write_grid(folder, name, blocks, **SMALL)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_root) -> dict:
    """The uninterrupted grid (in-process backend, one thread): per config hash, final and epoch metrics."""
    folder = tmp_path_factory.mktemp("reference")
    done = run_grid(_grid(folder), folder)
    assert done.returncode == 0, done.stderr
    return _results(folder)


def _results(store: Path, experiment: str = "preempt") -> dict:
    client, found = runs(uri(store), experiment)
    out = {}
    for r in found:
        history = {k: [(m.step, m.value) for m in sorted(client.get_metric_history(r.info.run_id, k),
                                                          key=lambda m: m.step)]
                   for k in schema.EPOCH_METRICS if k != "epoch_seconds"}
        out[r.data.tags["config_hash"]] = {"final": {k: r.data.metrics[k] for k in FINAL}, "history": history}
    return out


def _tasks(launcher: subprocess.Popen) -> list[psutil.Process]:
    """The submitit task processes (`python -m submitit.core._submit`) under the launcher."""
    try:
        children = psutil.Process(launcher.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    found = []
    for p in children:
        try:
            if "submitit.core._submit" in " ".join(p.cmdline()):
                found.append(p)
        except psutil.NoSuchProcess:
            pass
    return found


def _wait_for(condition, proc: subprocess.Popen, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the grid ended (status {proc.returncode}) before {what}")
        if time.time() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_slurm_preemption_checkpoints_mid_epoch_requeues_and_matches_an_uninterrupted_run(
        tmp_path, data_root, reference):
    grid = _grid(tmp_path)
    folder = tmp_path / "out" / "checkpoints" / grid_mod.load(grid).runs[0].hash()
    logs = tmp_path / "logs"
    # the timer's checkpoints only show the test where training stands: it signals in the middle of
    # the first epoch, so that the preemption is mid-epoch (one during an evaluation is taken at the
    # epoch's own checkpoint instead)
    proc = popen_grid(grid, tmp_path, "--backend", "slurm", "--slurm", "cluster=local", "--slurm", f"folder={logs}",
                      "--slurm", "timeout_min=30", "--checkpoint-minutes", TIMER,
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(lambda: any(checkpoint.position(p) < (0, BATCHES - 3) for p in checkpoint.candidates(folder)),
              proc, 600, "the first mid-epoch checkpoint under submitit")
    tasks = _tasks(proc)
    assert len(tasks) == 1
    for task in tasks:
        task.send_signal(signal.SIGTERM)  # preemption: SIGTERM first (submitit logs it and goes on) ...
    time.sleep(0.05)
    for task in tasks:
        task.send_signal(signal.SIGUSR2)  # ... then submitit's signal; the kill would follow after the grace time
    gone, alive = psutil.wait_procs(tasks, timeout=60)
    for task in alive:  # the grace time is over
        task.send_signal(signal.SIGKILL)
    assert not alive, "a task did not stop within the grace time"  # it checkpointed and requeued itself

    proc.wait(timeout=600)
    assert proc.returncode == 0, proc.returncode

    found = each_epoch_once(uri(tmp_path), "preempt", len(BLOCKS), EPOCHS)
    for r in found:
        stopped = re.fullmatch(rf"epoch (\d) batch (\d+)/{BATCHES} \(SIGUSR2\); requeued", r.data.tags["preempted"])
        assert stopped, r.data.tags["preempted"]
        assert 1 <= int(stopped.group(2)) <= BATCHES  # mid-epoch: at the batch boundary after the signal
        # the requeued task resumed from there, in the same MLflow run
        assert r.data.tags["resumed_from"] == f"epoch {stopped.group(1)} batch {stopped.group(2)}/{BATCHES}"
    assert _results(tmp_path) == reference  # final and per-epoch metrics, bitwise


def test_timer_checkpoint_mid_epoch_then_kill_9_resumes_from_that_batch(tmp_path, data_root, reference):
    grid = _grid(tmp_path)
    folder = tmp_path / "out" / "checkpoints" / grid_mod.load(grid).runs[0].hash()
    proc = popen_grid(grid, tmp_path, "--checkpoint-minutes", TIMER, stdout=subprocess.DEVNULL,
                      stderr=subprocess.DEVNULL)
    _wait_for(lambda: any(checkpoint.position(p)[0] == 1 and checkpoint.position(p)[1] > 0
                          for p in checkpoint.candidates(folder)), proc, 600, "a mid-epoch checkpoint in epoch 2")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    newest = checkpoint.candidates(folder)[0]
    epochs_done, batch = checkpoint.position(newest)
    assert 0 < batch < BATCHES, newest.name  # killed in the middle of an epoch, its newest checkpoint mid-epoch
    state = torch.load(newest, map_location="cpu", weights_only=True)
    assert state["position"]["batch"] == batch and state["position"]["seen"] == 32 * batch

    again = run_grid(grid, tmp_path, timeout=1200)  # the same command, no timer; a loaded machine is slow
    assert again.returncode == 0, again.stderr
    found = each_epoch_once(uri(tmp_path), "preempt", len(BLOCKS), EPOCHS)
    first = next(r for r in found if r.data.tags["config_hash"] == folder.name)
    assert first.data.tags["resumed_from"] == f"epoch {epochs_done + 1} batch {batch}/{BATCHES}"
    assert "preempted" not in first.data.tags
    assert _results(tmp_path) == reference


TINY = RunConfig(arch="resnet20", method="none", epochs=2, batch_size=64, lr=0.05, schedule="onecycle",
                 warmup_epochs=1, train_subset=256, val_size=128, test_subset=128)


@pytest.fixture(scope="module")
def tiny_reference(data_root) -> list[dict]:
    """TINY trained without interruption, in this process at one thread (epoch times left out)."""
    torch.set_num_threads(1)
    return without_timing(train(TINY, data_root).history)


class CrashAfter(preempt.MidEpoch):
    """A timer on a clock the test controls (one second per look), crashing once it has checkpointed at `at`."""

    def __init__(self, minutes: float, at: str):
        tick = itertools.count()
        super().__init__(minutes, clock=lambda: float(next(tick)))
        self.at = at

    def saved(self, why, where):
        super().saved(why, where)
        if where == self.at:
            raise Crash(where)


def test_a_preemption_request_checkpoints_at_the_next_batch_and_resumes_bitwise(tmp_path, data_root,
                                                                                 tiny_reference):
    torch.set_num_threads(1)
    cfg = TINY
    preempt.clear()
    mid, steps = preempt.MidEpoch(), []

    def on_epoch(metrics):
        steps.append(metrics["epoch"])
        if metrics["epoch"] == 1:
            preempt.request(signal.SIGUSR2)  # arrives during the epoch's evaluation: stop at its checkpoint
    try:
        with pytest.raises(preempt.Preempted) as stop:
            train(cfg, data_root, tmp_path, on_epoch=on_epoch, mid_epoch=mid)
    finally:
        preempt.clear()
    assert stop.value.where == "epoch 2 batch 0/4" and stop.value.signum == signal.SIGUSR2
    assert [p.name[:10] for p in checkpoint.candidates(tmp_path)] == ["epoch0001-"]

    # a request during the second epoch: the checkpoint is taken after the step under way
    class RequestAtStep(preempt.MidEpoch):
        looks = 0

        def due(self):
            self.looks += 1
            if self.looks == 3:
                preempt.request(signal.SIGUSR2)
            return super().due()
    try:
        with pytest.raises(preempt.Preempted) as stop:
            train(cfg, data_root, tmp_path, mid_epoch=RequestAtStep())
    finally:
        preempt.clear()
    assert stop.value.where == "epoch 2 batch 3/4"
    assert checkpoint.position(checkpoint.candidates(tmp_path)[0]) == (1, 3)
    resumed = train(cfg, data_root, tmp_path)
    assert resumed.resumed_from == "epoch 2 batch 3/4"
    assert without_timing(resumed.history) == tiny_reference


def test_timer_checkpoints_on_a_controlled_clock_resume_bitwise(tmp_path, data_root, tiny_reference):
    torch.set_num_threads(1)
    cfg = TINY
    # a look every step, one second each, a checkpoint every 1.5 s: batches 2 and 4 of epoch 1 (0 at its
    # end resets the timer), then batch 2 of epoch 2, where it crashes
    with pytest.raises(Crash):
        train(cfg, data_root, tmp_path, mid_epoch=CrashAfter(1.5 / 60, at="epoch 2 batch 2/4"))
    assert [checkpoint.position(p) for p in checkpoint.candidates(tmp_path)] == [(1, 2), (1, 0)]
    resumed = train(cfg, data_root, tmp_path)
    assert resumed.resumed_from == "epoch 2 batch 2/4"
    assert without_timing(resumed.history) == tiny_reference


def test_epoch_checkpoints_of_the_previous_format_still_resume(tmp_path, data_root, tiny_reference):
    """A checkpoint without a data-order position (written by the code before mid-epoch checkpoints)
    resumes at the start of the next epoch, as it always did."""
    torch.set_num_threads(1)
    cfg = TINY

    def crash_after_one(metrics):
        raise Crash

    with pytest.raises(Crash):
        train(cfg, data_root, tmp_path, on_epoch=crash_after_one)
    (path,) = checkpoint.candidates(tmp_path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert "position" not in state and path.name.startswith("epoch0001-")
    resumed = train(cfg, data_root, tmp_path)
    assert resumed.resumed_from == "epoch 2 batch 0/4"
    assert without_timing(resumed.history) == tiny_reference


def test_checkpoint_names_sort_mid_epoch_between_epoch_ends(tmp_path):
    for name in ("epoch0001-aaaaaaaaaaaa.pt", "epoch0002-bbbbbbbbbbbb.pt", "epoch0001.b0003-cccccccccccc.pt",
                 "epoch0001.b0012-dddddddddddd.pt", ".epoch0002.b0001-eeeeeeeeeeee.pt.tmp"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name[:15] for p in checkpoint.candidates(tmp_path)] == [
        "epoch0002-bbbbb", "epoch0001.b0012", "epoch0001.b0003", "epoch0001-aaaaa"]


def test_checkpoint_minutes_is_no_part_of_any_hash_and_bad_values_are_refused(tmp_path, cli):
    plain = _grid(tmp_path, "plain")
    timed = tmp_path / "timed.yaml"
    timed.write_text(plain.read_text() + "checkpoint_minutes: 30\n")
    a, b = grid_mod.load(plain), grid_mod.load(timed)
    assert [c.hash() for c in a.runs] == [c.hash() for c in b.runs]
    assert (a.checkpoint_minutes, b.checkpoint_minutes) == (None, 30.0)
    bad = tmp_path / "bad.yaml"
    bad.write_text(plain.read_text() + "checkpoint_minutes: -1\n")
    done = cli("run", str(bad), "--dry-run")
    assert done.returncode == 2 and "checkpoint_minutes" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    done = cli("run", str(plain), "--checkpoint-minutes", "soon", "--dry-run")
    assert done.returncode == 2 and "--checkpoint-minutes" in done.stderr
