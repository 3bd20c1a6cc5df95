"""More bad input, refused before any work (exit status 2, one line): an unreachable tracking server, an
output folder without the space for its checkpoints, a checkpoint of another config in a run's folder.
And a disk that fills up in the middle of a run: the run stops cleanly, keeps its last checkpoint and
resumes once there is space again.

The disk is a small tmpfs where the machine allows mounting one (root); elsewhere the same tests
inject the failure (`ENOSPC` from the write, or a small free-space figure).
"""
from __future__ import annotations

import errno
import os
import shutil
import socket
import subprocess
from collections import namedtuple
from pathlib import Path

import pytest
import torch
import yaml

from grid_subprocess import DATA_ROOT, TINY, runs, uri
from study import checkpoint
from study import grid as grid_mod
from study.cli import main

SMALL = {**TINY, "epochs": 3, "train_subset": 256, "val_size": 128, "test_subset": 128}


@pytest.fixture
def study(capsys):
    """`python -m study ...` in-process; returns (exit status, stdout, stderr).  Restores torch's threads."""
    threads = torch.get_num_threads()

    def call(*args):
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err
    yield call
    torch.set_num_threads(threads)


def _grid(tmp_path: Path, name: str = "g", **defaults) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "defaults": {**SMALL, **defaults}, "grid": [{"method": "none"}]}))
    return path


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


Disk = namedtuple("Disk", "path real")


@pytest.fixture
def small_disk(tmp_path):
    """`make(size)`: a folder on a tmpfs of `size` (e.g. "1m"), or a plain folder (real=False) where
    mounting is not allowed."""
    mounted = []

    def make(size: str) -> Disk:
        path = tmp_path / f"disk{len(mounted)}"
        path.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                              capture_output=True) if shutil.which("mount") and os.geteuid() == 0 else None
        if done is not None and done.returncode == 0:
            mounted.append(path)
            return Disk(path, True)
        return Disk(path, False)
    yield make
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], check=False)


# -- refused before any work ------------------------------------------------------------------------
def test_an_unreachable_tracking_server_is_refused(tmp_path, study):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    code, out, err = study("run", _grid(tmp_path), "--tracking-uri", url, "--output", tmp_path / "out",
                           "--data-root", DATA_ROOT)
    line = _one_line(err)
    assert code == 2 and out == ""
    assert line.startswith(f"{url}: the tracking server cannot be reached") and "refused" in line.lower(), line
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_an_output_folder_without_space_for_checkpoints_is_refused(tmp_path, study, small_disk, monkeypatch):
    disk = small_disk("1m")  # a ResNet-20 checkpoint alone is 2 MB
    if not disk.real:
        monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(2 ** 20, 0, 2 ** 20))
    out = disk.path / "out"
    code, stdout, err = study("run", _grid(tmp_path), "--tracking-uri", uri(tmp_path), "--output", out,
                              "--data-root", DATA_ROOT)
    line = _one_line(err)
    assert code == 2 and stdout == ""
    assert line.startswith(f"{out}: not enough free space for checkpoints"), line
    assert not (out / "checkpoints").exists() and not (tmp_path / "mlflow.db").exists()


def test_a_checkpoint_of_another_config_in_a_runs_folder_is_refused(tmp_path, study):
    path = _grid(tmp_path)
    mine = grid_mod.load(path).runs[0].hash()
    other = grid_mod.load(_grid(tmp_path, "other", seed=1)).runs[0].hash()
    assert other != mine
    folder = tmp_path / "out" / "checkpoints" / mine
    stray = checkpoint.save(folder, 2, {"epoch": 2, "config_hash": other, "history": []})
    code, out, err = study("run", path, "--tracking-uri", uri(tmp_path), "--output", tmp_path / "out",
                           "--data-root", DATA_ROOT)
    line = _one_line(err)
    assert code == 2 and out == ""
    assert line.startswith(f"{stray}: a checkpoint of another config (config_hash {other})"), line
    assert mine in line
    assert [p.name for p in folder.iterdir()] == [stray.name]  # nothing trained, nothing written
    assert not (tmp_path / "mlflow.db").exists()


# -- a disk that fills up mid-run -------------------------------------------------------------------
def test_a_disk_full_mid_run_stops_cleanly_keeps_the_checkpoint_and_resumes(tmp_path, data_root, study,
                                                                          small_disk, monkeypatch):
    disk = small_disk("64m")
    out, path = disk.path / "out", _grid(tmp_path, "full")
    folder = out / "checkpoints" / grid_mod.load(path).runs[0].hash()
    filler = disk.path / "filler"
    save = checkpoint.save

    def save_on_a_filling_disk(where, epoch, state, *a, **kw):
        if epoch == 2:  # the disk fills up just before the second checkpoint
            if disk.real:
                with open(filler, "wb") as f:
                    try:
                        while True:
                            f.write(b"\0" * 2 ** 20)
                    except OSError as e:
                        assert e.errno == errno.ENOSPC
            else:  # fault injection: the write of the temporary file fails half-way
                real_fsync = os.fsync

                def full(fd):
                    monkeypatch.setattr(os, "fsync", real_fsync)
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                monkeypatch.setattr(os, "fsync", full)
        return save(where, epoch, state, *a, **kw)
    monkeypatch.setattr(checkpoint, "save", save_on_a_filling_disk)

    argv = ("run", path, "--tracking-uri", uri(tmp_path), "--output", out, "--data-root", DATA_ROOT, "--threads", "1")
    code, stdout, err = study(*argv)
    assert code == 75, stdout + err  # interrupted, not failed
    client, (run,) = runs(uri(tmp_path), "full")
    assert run.info.status == "KILLED"  # resumable
    assert "No space left on device" in run.data.tags["failure_reason"]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")] == [1]
    kept = checkpoint.candidates(folder)
    assert [p.name[:9] for p in kept] == ["epoch0001"] and checkpoint.verify(kept[0])
    assert not list(folder.glob(".*.tmp"))  # nothing half-written left behind

    filler.unlink(missing_ok=True)  # space again
    monkeypatch.setattr(checkpoint, "save", save)
    code, stdout, err = study(*argv)
    assert code == 0, stdout + err
    client, (again,) = runs(uri(tmp_path), "full")
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_acc")) == [1, 2, 3]
