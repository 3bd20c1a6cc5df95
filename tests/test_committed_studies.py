"""Every committed study regenerates from its committed runs alone.

For each `results/<study>/` that holds a report and its portable runs (`runs/`), the runs go into a fresh
SQLite store with `load-study` and `report` writes the study again: every table, the manifest, the runs and
REPORT.md come out as committed.  This is what a reader who clones the repository can do, and it fails
when an analysis change moves a committed number, or when a grid file's text (which REPORT.md quotes)
changes without the report being regenerated.  Figures are left out: PNG and PDF bytes depend on the
plotting back end, not on the numbers.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from analysis.__main__ import main
from conftest import REPO

STUDIES = sorted(p.parent.parent.name for p in (REPO / "results").glob("*/runs/runs.jsonl")
                 if (p.parent.parent / "REPORT.md").is_file())
# the machine that ran the analysis and its library versions: the rest of REPORT.md must not depend on them
ABOUT_THE_ANALYSIS_MACHINE = ("- Analysis software: ", "- Analysis machine: ")


def _contents(folder: Path) -> dict[str, bytes]:
    out = {}
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or "figures" in p.relative_to(folder).parts:
            continue
        data = p.read_bytes()
        if p.name == "REPORT.md":
            data = b"".join(line for line in data.splitlines(keepends=True)
                            if not line.decode().startswith(ABOUT_THE_ANALYSIS_MACHINE))
        out[str(p.relative_to(folder))] = data
    return out


def test_the_committed_studies_are_found():
    assert {"quick", "converged"} <= set(STUDIES)


@pytest.mark.parametrize("study", STUDIES)
def test_a_committed_study_regenerates_from_its_runs_byte_for_byte(study, tmp_path):
    committed = REPO / "results" / study
    experiment = json.loads((committed / "runs" / "experiments.jsonl").read_text().splitlines()[0])["name"]
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["load-study", str(committed), "--tracking-uri", store]) == 0
    assert main(["report", "--tracking-uri", store, "--experiment", experiment, "--out", str(tmp_path / "again")]) == 0
    want, got = _contents(committed), _contents(tmp_path / "again")
    assert sorted(got) == sorted(k for k in want if not k.startswith("in_flight/"))
    assert [name for name in got if got[name] != want[name]] == []
