"""A study's runs exported by `python -m analysis report` and loaded into a fresh store regenerate it.

Real SQLite stores throughout: the synthetic study store (`analysis.synthetic`, every status, per-epoch
histories), its report with `runs/`, `load-study` into a new store, and the report again from there:
tables, manifest.csv, REPORT.md and the re-exported runs are byte-identical.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from analysis.__main__ import main


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and "figures" not in p.parts}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from analysis import synthetic

    root = tmp_path_factory.mktemp("portable")
    uri = synthetic.make_store(root / "orig")
    assert main(["report", "--tracking-uri", uri, "--experiment", "quick", "--out", str(root / "first")]) == 0
    return root, uri


def test_report_writes_the_runs_in_the_documented_format(exported):
    from analysis.portable import FILES
    from mlflow.tracking import MlflowClient

    root, uri = exported
    runs_dir = root / "first" / "runs"
    assert sorted(p.name for p in runs_dir.iterdir()) == sorted(FILES)
    runs = [json.loads(line) for line in (runs_dir / "runs.jsonl").read_text().splitlines()]
    client = MlflowClient(uri)
    stored = client.search_runs([client.get_experiment_by_name("quick").experiment_id], max_results=1000)
    assert {r["run_id"] for r in runs} == {r.info.run_id for r in stored}
    assert {r["status"] for r in runs} == {r.info.status for r in stored} and len({r["status"] for r in runs}) > 1
    one = next(r for r in stored if r.info.status == "FINISHED")
    hist = client.get_metric_history(one.info.run_id, "val_acc")
    lines = [line for line in (runs_dir / "metrics.csv").read_text().splitlines()
             if line.startswith(f"{one.info.run_id},val_acc,")]
    assert len(lines) == len(hist) > 1  # every epoch, not only the last value
    assert "metrics.csv" in (runs_dir / "README.md").read_text()


def test_load_study_then_report_regenerates_every_table_byte_for_byte(exported):
    root, uri = exported
    fresh = f"sqlite:///{root / 'fresh' / 'mlflow.db'}"
    assert main(["load-study", str(root / "first"), "--tracking-uri", fresh]) == 0
    assert main(["load-study", str(root / "first"), "--tracking-uri", fresh]) == 0  # again: a no-op
    assert main(["report", "--tracking-uri", fresh, "--experiment", "quick", "--out", str(root / "second")]) == 0
    first, second = _files(root / "first"), _files(root / "second")
    assert sorted(first) == sorted(second)
    assert [k for k in first if first[k] != second[k]] == []
    assert uri in (root / "second" / "REPORT.md").read_text()  # names the store the runs were logged to


def test_load_study_refuses_a_store_with_other_runs_and_a_non_export(exported, tmp_path, capsys):
    from analysis import synthetic

    root, uri = exported
    assert main(["load-study", str(root / "first"), "--tracking-uri", uri]) == 0  # its own runs: nothing to do
    assert "nothing to load" in capsys.readouterr().out
    other = synthetic.make_store(tmp_path / "other", epochs=2, with_failures=False)  # "quick", other runs
    assert main(["load-study", str(root / "first"), "--tracking-uri", other]) == 2
    assert "already holds experiment 'quick' with other runs" in capsys.readouterr().err
    assert main(["load-study", str(tmp_path), "--tracking-uri", f"sqlite:///{tmp_path / 'x.db'}"]) == 2
    assert "not a portable export" in capsys.readouterr().err
