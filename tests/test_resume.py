"""Resume after kill -9, corrupt checkpoints, idempotent re-runs, failure isolation and Ctrl-C."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import Crash, without_timing
from grid_subprocess import REPO, popen_grid, run_grid, runs, uri, write_grid
from study import checkpoint
from study.config import RunConfig
from study.train import train

pytestmark = pytest.mark.slow

FINAL = ("final_test_acc", "test_acc_at_best_val", "best_val_acc", "best_test_acc", "params_total")


def _final(store: Path, experiment: str) -> dict[str, dict]:
    _, found = runs(uri(store), experiment)
    return {r.data.tags["config_hash"]: {k: r.data.metrics[k] for k in FINAL} for r in found}


def test_kill_minus_9_then_rerun_matches_an_uninterrupted_grid(tmp_path, data_root):
    blocks = [{"method": "none"}, {"method": "csg", "method_args": {"slice": 16, "code_dim": 16}}]
    grid = write_grid(tmp_path, "resume", blocks, epochs=4)

    reference = tmp_path / "reference"
    done = run_grid(grid, reference)
    assert done.returncode == 0, done.stderr

    store = tmp_path / "killed"
    proc = popen_grid(grid, store, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpts = store / "out" / "checkpoints"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not list(ckpts.glob("*/epoch0002-*.pt")):
        time.sleep(0.05)  # kill in the middle of a run: two of its four epochs are on disk
    assert proc.poll() is None, "the grid finished before it could be killed; make it longer"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    _, partial = runs(uri(store), "resume")
    assert any(r.info.status == "RUNNING" for r in partial)  # killed without a chance to say so

    again = run_grid(grid, store)
    assert again.returncode == 0, again.stderr

    client, final = runs(uri(store), "resume")
    assert sorted(r.info.status for r in final) == ["FINISHED", "FINISHED"]  # one run per config
    assert len({r.data.tags["config_hash"] for r in final}) == 2
    for r in final:  # continuous epoch metrics, each epoch logged exactly once
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "val_acc")]
        assert sorted(steps) == [1, 2, 3, 4]
    assert _final(store, "resume") == _final(reference, "resume")  # bitwise, fixed thread count


def _tiny_cfg(**overrides) -> RunConfig:
    return RunConfig(**{"arch": "resnet20", "method": "csg", "method_args": {"slice": 16, "code_dim": 16},
                        "epochs": 3, "batch_size": 64, "lr": 0.1, "schedule": "onecycle", "warmup_epochs": 1,
                        "train_subset": 384, "val_size": 256, "test_subset": 256, **overrides})


def test_epochs_checkpointed_but_never_reported_are_reported_on_resume(tmp_path, data_root):
    torch.set_num_threads(1)
    cfg, reported = _tiny_cfg(epochs=2), []

    def killed_before_reporting_two(metrics):
        if metrics["epoch"] == 2:  # epoch 2 is on disk, but its metrics never reach the tracker
            raise Crash
        reported.append(metrics["epoch"])

    with pytest.raises(Crash):
        train(cfg, data_root, tmp_path, on_epoch=killed_before_reporting_two)
    train(cfg, data_root, tmp_path, on_epoch=lambda m: reported.append(m["epoch"]))
    assert reported == [1, 1, 2]  # the restored history is replayed; the caller drops what it has


def test_corrupt_checkpoint_falls_back_to_the_previous_good_one(tmp_path, data_root, caplog):
    torch.set_num_threads(1)
    cfg = _tiny_cfg()
    uninterrupted = train(cfg, data_root).history

    def crash_after_two(metrics):
        if metrics["epoch"] == 2:
            raise Crash

    with pytest.raises(Crash):
        train(cfg, data_root, tmp_path, on_epoch=crash_after_two)
    newest = checkpoint.candidates(tmp_path)[0]
    assert newest.name.startswith("epoch0002")
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # truncated write

    resumed = train(cfg, data_root, tmp_path)
    assert "unusable" in caplog.text
    assert without_timing(resumed.history) == without_timing(uninterrupted)


def test_no_good_checkpoint_means_a_fresh_start(tmp_path):
    (tmp_path / "epoch0001-000000000000.pt").write_bytes(b"not a checkpoint")
    assert checkpoint.load_latest(tmp_path) is None


def test_failures_are_isolated_marked_and_not_retried_unless_asked(tmp_path, data_root):
    blocks = [{"method": "none", "lr": 1.0e8}, {"method": "csg", "method_args": {"slice": 16, "code_dim": 8}}]
    grid = write_grid(tmp_path, "failing", blocks, epochs=1)
    store = tmp_path / "store"
    first = run_grid(grid, store)
    assert first.returncode == 1
    assert "FAILED" in first.stdout and "FINISHED" in first.stdout  # the summary table
    _, found = runs(uri(store), "failing")
    by_status = {r.info.status: r for r in found}
    assert set(by_status) == {"FAILED", "FINISHED"}
    assert "DivergedError" in by_status["FAILED"].data.tags["failure_reason"]

    second = run_grid(grid, store)  # finished run skipped, failed one not retried
    assert second.returncode == 0 and second.stdout.count("skipped") == 2
    third = run_grid(grid, store, "--retry-failed")
    assert third.returncode == 1
    _, found = runs(uri(store), "failing")
    assert len(found) == 2  # retried in place, not duplicated

    status = subprocess.run([sys.executable, "-m", "study", "status", str(grid), "--tracking-uri", uri(store),
                             "--output", str(store / "out")], cwd=REPO, capture_output=True, text=True)
    assert "failed (DivergedError" in status.stdout and "done" in status.stdout


def test_ctrl_c_marks_the_run_killed_and_it_resumes(tmp_path, data_root):
    grid = write_grid(tmp_path, "interrupt", [{"method": "none"}], epochs=4)
    store = tmp_path / "store"
    proc = popen_grid(grid, store, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not list((store / "out").glob("checkpoints/*/epoch0001-*.pt")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    _, found = runs(uri(store), "interrupt")
    assert [r.info.status for r in found] == ["KILLED"]
    assert not list((store / "out").glob("checkpoints/*/.*.tmp"))  # nothing half-written

    again = run_grid(grid, store)
    assert again.returncode == 0, again.stderr
    client, found = runs(uri(store), "interrupt")
    assert [r.info.status for r in found] == ["FINISHED"]
    steps = sorted(m.step for m in client.get_metric_history(found[0].info.run_id, "val_acc"))
    assert steps == [1, 2, 3, 4]
