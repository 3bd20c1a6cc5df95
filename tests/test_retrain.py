"""`python -m study retrain` (study/retrain.py): a FINISHED run set aside is trained again, and nothing is lost.

  * the old run stays in the store, tagged with the reason, and its checkpoints move out of the run's
    folder; `status` then shows the configuration as pending, and the next `run` trains it from its
    first epoch as a new MLflow run of the same name, while the grid's other runs are left alone;
  * the analysis counts the new run once it has finished and lists the old one as superseded;
  * bad names, runs that have not finished and an empty reason are refused before anything changes.
"""
from __future__ import annotations

import pytest

from analysis.load import load
from grid_subprocess import run_grid, runs, uri, write_grid
from study import grid as grids
from study import schema
from study.cli import main

BLOCKS = [{"method": "none"}, {"method": "csg", "method_args": {"slice": 16, "code_dim": 8}}]


def _study(capsys, command, grid, store, *args):
    """`python -m study COMMAND GRID ARGS` in this process, on the test's store: (exit status, stdout, stderr)."""
    code = main([command, str(grid), *args, "--tracking-uri", uri(store), "--output", str(store / "out")])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.slow
def test_a_run_set_aside_trains_again_from_its_first_epoch_and_supersedes_the_old_one(tmp_path, capsys):
    grid = write_grid(tmp_path, "again", BLOCKS, epochs=2, train_subset=128, val_size=64, test_subset=64)
    store = tmp_path / "store"
    assert run_grid(grid, store).returncode == 0
    client, first = runs(uri(store), "again")
    old = {r.info.run_name: r for r in first}
    csg_name = next(n for n in old if "csg" in n)
    plain_name = next(n for n in old if n != csg_name)
    csg_hash = old[csg_name].data.tags["config_hash"]
    checkpoints = grids.load(grid).checkpoint_root(store / "out")
    folder = checkpoints / csg_hash
    assert folder.is_dir()

    code, out, _ = _study(capsys, "retrain", grid, store, csg_name, "--reason", "trained in fp32; the others in bf16")
    assert code == 0 and "1 run(s) set aside" in out
    assert not folder.exists()                                         # nothing resumes from the old run
    kept = checkpoints / "retrained" / f"{csg_hash}-{old[csg_name].info.run_id}"
    assert kept.is_dir()                                               # with whatever it held
    tagged = client.get_run(old[csg_name].info.run_id)
    assert tagged.info.status == "FINISHED"
    assert tagged.data.tags[schema.RETRAINED_TAG] == "trained in fp32; the others in bf16"
    _, status, _ = _study(capsys, "status", grid, store)
    states = dict(line.split(maxsplit=1) for line in status.splitlines())
    assert states[csg_name] == "pending" and states[plain_name] == "done"

    assert run_grid(grid, store).returncode == 0
    _, now = runs(uri(store), "again")
    assert len(now) == 3                                               # the plain run was not trained again
    new = [r for r in now if r.info.run_name == csg_name and r.info.run_id != old[csg_name].info.run_id]
    assert len(new) == 1 and new[0].info.status == "FINISHED"
    assert schema.RETRAINED_TAG not in new[0].data.tags
    assert [m.step for m in client.get_metric_history(new[0].info.run_id, "train_loss")] == [1, 2]
    assert client.get_run(old[csg_name].info.run_id).info.status == "FINISHED"   # kept as it was

    loaded = load(uri(store), "again", history=False)
    csg = loaded.runs[loaded.runs["run_name"] == csg_name].set_index("run_id")["superseded"]
    assert csg.to_dict() == {old[csg_name].info.run_id: True, new[0].info.run_id: False}
    assert set(loaded.finished["run_id"]) == {new[0].info.run_id, old[plain_name].info.run_id}


def test_bad_retrains_are_refused_before_anything_changes(tmp_path, capsys):
    grid = write_grid(tmp_path, "refused", BLOCKS, epochs=1)
    store = tmp_path / "store"
    pending = grids.load(grid).runs[0].name
    for names, reason, says in ((["no-such-run"], "why", "not runs of grid refused: no-such-run"),
                                ([pending], "why", "only a FINISHED run can be retrained (no run yet)"),
                                ([pending], "  ", "--reason")):
        code, _, err = _study(capsys, "retrain", grid, store, *names, "--reason", reason)
        err = err.strip()
        assert code == 2 and "\n" not in err and says in err, (names, err)
    assert not grids.load(grid).checkpoint_root(store / "out").exists()
