"""Live progress read from a real SQLite store: states, epochs, ETA, the plain and rich displays, --watch."""
from __future__ import annotations

import io
import time

import pytest
import yaml

from conftest import run_cli


@pytest.fixture(scope="module")
def grid_and_store(tmp_path_factory):
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from study import grid as grid_mod

    root = tmp_path_factory.mktemp("progress")
    path = root / "prog.yaml"
    path.write_text(yaml.safe_dump({"name": "prog", "defaults": {"arch": "resnet20", "epochs": 4},
                                    "grid": [{"method": "none", "seed": [0, 1, 2]}]}))
    g = grid_mod.load(path)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("prog")
    now = int(time.time() * 1000)
    for cfg, (status, epochs) in zip(g.runs, [("FINISHED", 4), ("RUNNING", 2)]):
        run = client.create_run(exp, run_name=cfg.name, tags={"config_hash": cfg.hash()})
        ms = [Metric(k, v, now - 1000 * (4 - e), e) for e in range(1, epochs + 1)
              for k, v in (("val_acc", 50.0 + e), ("epoch_seconds", 10.0))]
        client.log_batch(run.info.run_id, metrics=ms)
        if status == "FINISHED":
            client.log_batch(run.info.run_id, metrics=[Metric("test_acc_at_best_val", 54.5, now, 4)])
            client.set_terminated(run.info.run_id, "FINISHED")
    return g, uri, path


def test_the_watcher_reads_states_epochs_and_an_eta(grid_and_store):
    from study.progress import DONE, PENDING, RUNNING, Watcher

    g, uri, _ = grid_and_store
    snap = Watcher(g, uri, workers=2).poll()
    assert [r.state for r in snap.runs] == [DONE, RUNNING, PENDING]
    assert snap.runs[1].epoch == 2 and snap.runs[1].last_val == 52.0 and snap.runs[1].seconds_per_epoch == 10.0
    assert snap.epochs_done == 6 and snap.epochs_total == 12
    # two workers: the running run has 2 epochs left (less the time in its current one), the pending
    # run 4 epochs at the measured 10 s on the other worker
    assert 39 <= snap.eta_seconds <= 40
    assert "1 done, 1 running, 0 failed, 1 pending of 3" in snap.headline()


def _row(state, epoch, seconds_per_epoch, method="none", logged_at=1000.0):
    """A run of 10 planned epochs, `epoch` of them logged at `logged_at`, each timed at `seconds_per_epoch`."""
    from study.progress import RunProgress

    r = RunProgress("r", str(id(object())), "resnet20", method, 10, state)
    r.done_epochs = list(range(1, epoch + 1))
    r.epoch_seconds = {e: seconds_per_epoch for e in r.done_epochs}
    r.epoch_logged_at = {e: logged_at for e in r.done_epochs}
    r.last_epoch_at = logged_at
    return r


def test_the_eta_schedules_pending_runs_on_the_workers():
    from study.progress import PENDING, RUNNING, estimate

    rows = [_row(RUNNING, 5, 10.0)] + [_row(PENDING, 0, 0) for _ in range(3)]
    assert estimate(rows, 1, 1000.0) == 50 + 3 * 100          # one worker: one after the other
    assert estimate(rows, 2, 1000.0) == 200                    # two: 100 + 100 on one, 50 + 100 on the other
    assert estimate([_row(PENDING, 0, 0)], 1, 0.0) is None      # nothing measured yet
    paused = _row(RUNNING, 5, 10.0)
    paused.epoch_seconds[3] = 3600.0  # the job was stopped for an hour in its third epoch
    assert estimate([paused], 1, 1000.0) == 50                 # the pause is not read as the pace


def test_the_headline_says_when_the_eta_guesses_the_pace_of_a_kind_of_run_not_timed_yet():
    from study.progress import DONE, PENDING, RUNNING, Snapshot, estimate, untimed

    # a ResNet-20 plain run is timed; a ResNet-20 prune run and a ResNet-32 plain run are not
    timed = _row(RUNNING, 5, 10.0)
    other_method = _row(PENDING, 0, 0, method="prune")
    other_arch = _row(PENDING, 0, 0)
    other_arch.arch = "resnet32"
    same_kind = _row(PENDING, 0, 0)
    finished_prune = _row(DONE, 10, 0)  # a prune run with no timed epoch, already done: nothing to guess
    finished_prune.method = "prune"
    rows = [timed, other_method, other_arch, same_kind]
    assert untimed(rows) == [other_method, other_arch]
    assert untimed(rows + [finished_prune]) == [other_method, other_arch]
    snap = Snapshot("g", rows, 1, 1000.0, estimate(rows, 1, 1000.0))
    assert snap.headline().endswith("ETA 5m 50s (a guess: 2 run(s) of a kind not timed yet)")
    # once a prune epoch is timed, only the ResNet-32 run is guessed
    other_method.state, other_method.epoch_seconds, other_method.done_epochs = RUNNING, {1: 30.0}, [1]
    assert untimed(rows) == [other_arch]
    # nothing measured at all: no ETA, and no guess to flag
    assert Snapshot("g", [same_kind], 1, 0.0, None).headline().endswith("ETA unknown (no epoch measured yet)")


def test_a_study_resumed_on_another_machine_is_timed_by_the_machine_at_work_now():
    from study.progress import DONE, PENDING, RUNNING, estimate

    # two runs finished on a slow machine (100 s an epoch) before the watch began at t = 5000; on this
    # machine a resumed run has logged two epochs at 20 s since, and a run of another method waits
    before, watch_began = 1000.0, 5000.0
    slow = [_row(DONE, 10, 100.0, logged_at=before), _row(DONE, 10, 100.0, method="prune", logged_at=before)]
    resumed = _row(RUNNING, 6, 100.0, logged_at=before)
    resumed.epoch_seconds.update({7: 20.0, 8: 20.0})
    resumed.epoch_logged_at.update({7: 5100.0, 8: 5120.0})
    resumed.done_epochs += [7, 8]
    resumed.last_epoch_at = 5120.0
    waiting = _row(PENDING, 0, 0, method="prune")
    rows = slow + [resumed, waiting]
    # one worker at 5120: the resumed run's 2 epochs and the waiting run's 10, all at this machine's 20 s
    assert estimate(rows, 1, 5120.0, since=watch_began) == 2 * 20 + 10 * 20
    # without the watch's start every measurement counts: the resumed run at its median, the waiting
    # prune run at the slow machine's 100 s
    assert estimate(rows, 1, 5120.0) == 2 * 100 + 10 * 100
    # a watch that began before any epoch was logged has nothing newer to go by: the same as no `since`
    assert estimate(rows, 1, 5120.0, since=0.0) == estimate(rows, 1, 5120.0)
    # a watch that began after the newest epoch: nothing timed yet on the machines at work now
    assert estimate(rows, 1, 5120.0, since=6000.0) == estimate(rows, 1, 5120.0)


def test_plain_lines_one_per_finished_epoch_and_a_rich_table(grid_and_store):
    from study.progress import PlainDisplay, RichDisplay, Watcher

    g, uri, _ = grid_and_store
    w = Watcher(g, uri, workers=2)
    out = io.StringIO()
    plain = PlainDisplay(out)
    plain.update(w.poll())
    assert out.getvalue().count("\n") == 1 and "already logged: 6 epoch(s) in 2 run(s)" in out.getvalue()
    snap = w.poll()
    snap.runs[1].done_epochs.append(3)
    snap.runs[1].val_acc[3] = 53.25
    plain.update(snap)
    assert "resnet20-plain-s1 epoch 3/4 val_acc 53.25" in out.getvalue().splitlines()[-1]
    plain.update(snap)
    assert out.getvalue().count("\n") == 2  # nothing new, nothing printed
    from rich.console import Console

    rich = RichDisplay(io.StringIO())
    c = Console(file=io.StringIO(), width=120)
    c.print(rich.render(snap))
    rendered = c.file.getvalue()
    rich.close(None)
    assert "1 done" in rendered and "ETA" in rendered and "resnet20-plain-s1" in rendered and "53.25" in rendered


def test_status_says_when_a_running_run_last_logged_an_epoch(grid_and_store, tmp_path):
    """A run the store holds as RUNNING may be training or may have been killed outright: status gives the
    age of its newest epoch, which tells the two apart (this one logged its second epoch seconds ago)."""
    import re

    _, uri, path = grid_and_store
    shown = run_cli("status", path, "--tracking-uri", uri, "--output", tmp_path)
    assert shown.returncode == 0, shown.stderr
    done, running, pending = shown.stdout.splitlines()
    assert done.endswith(" done") and pending.endswith(" pending")
    assert re.search(r"partial \(epoch 2 of 4\); RUNNING in the store, last epoch logged \d+ (s|min) ago$", running)


def test_status_watch_follows_the_grid_until_every_run_has_ended(grid_and_store):
    from mlflow.tracking import MlflowClient

    g, uri, path = grid_and_store
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("prog").experiment_id
    running = [r for r in client.search_runs([exp]) if r.info.status == "RUNNING"][0]
    client.set_terminated(running.info.run_id, "FAILED")
    last = g.runs[2]
    r = client.create_run(exp, run_name=last.name, tags={"config_hash": last.hash()})
    client.set_terminated(r.info.run_id, "FINISHED")
    done = run_cli("status", path, "--tracking-uri", uri, "--watch", "--interval", "0.2", "--progress", "plain",
                   timeout=300)
    assert done.returncode == 1, done.stderr  # a run failed
    assert "2 done, 0 running, 1 failed, 0 pending of 3" in done.stdout
    assert done.stderr.count("\n") == 1 and "1 failed" in done.stderr  # off a terminal: plain lines
