"""A grid that outlives its machine (study/carry.py, `carry-out` / `carry-in`, `load-study --keep-existing`).

  * a grid killed on one machine, carried as its portable runs and its in-flight checkpoint, finishes on
    another (a fresh store and a fresh checkpoint folder) under the same run id and, on the same CPU and
    thread count, with bitwise the numbers of a grid that was never interrupted;
  * each direction keeps the newer side, refuses a carried file that fails its checksum or belongs to
    another configuration, and leaves nothing behind for a run that has finished;
  * a resumed run's checkpoint and tags say where each stretch of it trained.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO, Crash
from grid_subprocess import each_epoch_once, popen_grid, run_grid, runs, study, uri, write_grid
from study import carry, checkpoint, env
from study.config import RunConfig
from study.train import train


def _analysis(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "analysis", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


def _finals(store) -> dict:
    """Every metric's last value, per config, without the wall-clock ones."""
    _, found = runs(uri(store), "carried")
    return {r.data.tags["config_hash"]: {k: v for k, v in r.data.metrics.items() if "seconds" not in k}
            for r in found}


@pytest.mark.slow
def test_a_grid_killed_on_one_machine_finishes_on_another_as_if_never_stopped(tmp_path):
    grid = write_grid(tmp_path, "carried", [{"method": "csg", "method_args": {"slice": 16, "code_dim": 16}}])
    reference = tmp_path / "reference"
    assert run_grid(grid, reference).returncode == 0

    # machine A: the run is killed with two of its three epochs on disk
    a = tmp_path / "machine-a"
    proc = popen_grid(grid, a, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not list((a / "out").glob("checkpoints/*/epoch0002-*.pt")):
        time.sleep(0.05)
    assert proc.poll() is None, "the grid finished before it could be killed; make it longer"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    _, on_a = runs(uri(a), "carried")
    assert [r.info.status for r in on_a] == ["RUNNING"]  # killed without a chance to say so

    # what travels: the report's portable runs and the in-flight checkpoint
    folder = tmp_path / "results" / "carried"
    assert _analysis("report", "--tracking-uri", uri(a), "--experiment", "carried", "--out", str(folder)).returncode == 0
    out = study("carry-out", str(grid), str(folder), "--tracking-uri", uri(a), "--output", str(a / "out"))
    assert out.returncode == 0, out.stderr
    killed = on_a[0]
    carried = list((folder / carry.IN_FLIGHT).glob("*/*.pt"))
    assert [p.parent.name for p in carried] == [killed.data.tags["config_hash"]]
    assert carried[0].name.startswith("epoch0002-")

    # machine B: a fresh store and checkpoint folder; bring both back, then run the grid again
    b = tmp_path / "machine-b"
    loaded = _analysis("load-study", str(folder), "--tracking-uri", uri(b), "--keep-existing")
    assert loaded.returncode == 0, loaded.stderr
    back = study("carry-in", str(grid), str(folder), "--tracking-uri", uri(b), "--output", str(b / "out"))
    assert back.returncode == 0 and "1 checkpoint(s) copied" in back.stdout, back.stdout + back.stderr
    assert run_grid(grid, b).returncode == 0

    (finished,) = each_epoch_once(uri(b), "carried", n_runs=1, epochs=3)
    assert finished.info.run_id == killed.info.run_id  # the same run, continued, not a new one
    assert finished.data.tags["resumed_from"].startswith("epoch 3 batch 0/")  # after 2 epochs
    assert _finals(b) == _finals(reference)  # bitwise: same CPU, one thread

    # loading again keeps the store, which is now further on; carrying out again leaves nothing in flight
    again = _analysis("load-study", str(folder), "--tracking-uri", uri(b), "--keep-existing")
    assert again.returncode == 0 and "nothing to load" in again.stdout
    assert study("carry-out", str(grid), str(folder), "--tracking-uri", uri(b), "--output", str(b / "out")).returncode == 0
    assert not (folder / carry.IN_FLIGHT).exists()


def _cfgs(n: int = 2) -> list[RunConfig]:
    return [RunConfig(arch="resnet20", method="none", epochs=4, seed=s) for s in range(n)]


def _ckpt(folder, cfg: RunConfig, epoch: int, batch: int | None = None):
    return checkpoint.save(folder / cfg.hash(), epoch, {"config_hash": cfg.hash(), "epoch": epoch}, batch=batch)


def test_each_direction_keeps_the_newer_side(tmp_path):
    first, second = _cfgs()
    here, folder = tmp_path / "checkpoints", tmp_path / "results"
    _ckpt(here, first, 2)
    _ckpt(folder / carry.IN_FLIGHT, second, 3)  # carried from elsewhere, not brought here yet
    out = {c.config_hash: c.action for c in carry.export([first, second], here, folder, finished=set())}
    assert out == {first.hash(): "copied", second.hash(): "kept"}

    _ckpt(here, first, 3, batch=5)  # this machine went further: mid-epoch 4
    carry.export([first, second], here, folder, finished=set())
    names = [p.name for p in (folder / carry.IN_FLIGHT / first.hash()).iterdir()]
    assert len(names) == 1 and names[0].startswith("epoch0003.b0005-")  # one file per run, the newest

    back = {c.config_hash: c for c in carry.import_([first, second], here, folder, finished=set())}
    assert back[first.hash()].action == "kept"  # as far as this machine's
    assert back[second.hash()].action == "copied"
    assert checkpoint.position(checkpoint.candidates(here / second.hash())[0]) == (3, 0)


def test_a_finished_run_leaves_nothing_in_flight(tmp_path):
    first, second = _cfgs()
    here, folder = tmp_path / "checkpoints", tmp_path / "results"
    _ckpt(here, first, 2)
    _ckpt(here, second, 2)
    carry.export([first, second], here, folder, finished=set())
    out = {c.config_hash: c.action for c in carry.export([first, second], here, folder, finished={first.hash()})}
    assert out[first.hash()] == "removed" and not (folder / carry.IN_FLIGHT / first.hash()).exists()
    back = {c.config_hash: c.action for c in carry.import_([first, second], tmp_path / "elsewhere", folder,
                                                            finished={second.hash()})}
    assert back == {second.hash(): "skipped"}  # finished in that store: its checkpoint is not brought back
    carry.export([first, second], here, folder, finished={first.hash(), second.hash()})
    assert not (folder / carry.IN_FLIGHT).exists()


def test_a_carried_file_that_fails_its_check_or_fits_another_run_is_refused(tmp_path):
    first, second = _cfgs()
    folder, here = tmp_path / "results", tmp_path / "checkpoints"
    corrupt = _ckpt(folder / carry.IN_FLIGHT, first, 2)
    corrupt.write_bytes(corrupt.read_bytes()[:-7])  # truncated on the way
    wrong = _ckpt(folder / carry.IN_FLIGHT, first, 1)
    (folder / carry.IN_FLIGHT / second.hash()).mkdir(parents=True)
    wrong.rename(folder / carry.IN_FLIGHT / second.hash() / wrong.name)  # first's checkpoint under second's hash
    stale = folder / carry.IN_FLIGHT / "0123456789abcdef"
    stale.mkdir()
    back = {c.config_hash: c for c in carry.import_([first, second], here, folder, finished=set())}
    assert back[first.hash()].action == "skipped" and "checksum" in back[first.hash()].detail
    assert back[second.hash()].action == "skipped" and "another configuration" in back[second.hash()].detail
    assert back["0123456789abcdef"].action == "skipped"
    assert not here.exists()  # nothing was copied


def test_carry_in_of_a_missing_folder_is_one_line_and_exit_2(tmp_path):
    grid = write_grid(tmp_path, "carried", [{"method": "none"}])
    done = study("carry-in", str(grid), str(tmp_path / "nowhere"), "--tracking-uri", uri(tmp_path),
                 "--output", str(tmp_path / "out"))
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and "nowhere" in done.stderr


def test_a_run_resumed_on_another_machine_says_where_each_stretch_trained(tmp_path, data_root, monkeypatch):
    torch.set_num_threads(1)
    cfg = RunConfig(arch="resnet20", method="none", epochs=3, batch_size=64, lr=0.1, schedule="onecycle",
                    warmup_epochs=1, train_subset=256, val_size=128, test_subset=128, precision="fp32")

    def killed(metrics):
        if metrics["epoch"] == 1:
            raise Crash

    with pytest.raises(Crash):
        train(cfg, data_root, tmp_path, on_epoch=killed)
    here = env.device_name(torch.device("cpu"))
    monkeypatch.setattr(env, "device_name", lambda dev: "cpu: Other CPU x2")
    done = train(cfg, data_root, tmp_path)
    assert done.segments == [{"from_epoch": 0, "cpu": here, "precision": "fp32"},
                             {"from_epoch": 1, "cpu": "cpu: Other CPU x2", "precision": "fp32"}]
    assert done.trained_on == f"epochs 1-1: {here} (fp32); 2-3: cpu: Other CPU x2 (fp32)"
    assert done.precision == "fp32"
