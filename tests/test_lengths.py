"""The gap against training length: runs linked across lengths, in the store and through a manifest.

A synthetic store shaped like the converged study (`analysis.synthetic.make_lengths_store`): plain and
CSG 16/72 at 10, 20 and 40 epochs with the warm-up a fifth of the run, and another recipe (random flips)
at 10 epochs.
"""
from __future__ import annotations

import pandas as pd
import pytest

from analysis import load, report, synthetic
from analysis.load import MANIFEST_RECIPE, NOT_PROTOCOL


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("lengths")
    runs = load.load(synthetic.make_lengths_store(root / "store"), "converged")
    report.write(runs, root / "out")
    return runs, root / "out"


def linked(runs: load.Runs) -> dict[str, list[int]]:
    """Each run's name -> the training lengths of the runs linked with it."""
    fin = runs.finished
    lengths = fin.groupby("across_lengths")["epochs"].apply(lambda e: sorted({int(v) for v in e}))
    return {name: lengths[key] for name, key in zip(fin["run_name"], fin["across_lengths"])}


def partition(runs: load.Runs, col: str) -> set[frozenset]:
    return {frozenset(g["run_name"]) for _, g in runs.finished.groupby(col)}


def test_one_recipe_is_linked_over_its_lengths_and_another_recipe_is_not(study):
    runs, _ = study
    for name, lengths in linked(runs).items():
        assert lengths == ([10] if "quickrecipe" in name else [10, 20, 40]), name
    # the two recipes at 10 epochs are two protocols, and plain and CSG of one recipe share one
    assert len(partition(runs, "protocol")) == 4


def test_the_manifest_links_and_separates_the_runs_as_the_store_does(study):
    runs, out = study
    again = load.from_manifest(out / "manifest.csv")
    for col in ("group", "protocol", "across_lengths"):
        assert partition(again, col) == partition(runs, col), col
    assert {"flip", "warmup_epochs"} <= set(again.config_columns)


def test_a_manifest_without_the_training_settings_still_loads_and_links_no_ambiguous_run(study, tmp_path):
    _, out = study
    old = pd.read_csv(out / "manifest.csv", dtype=str).drop(columns=MANIFEST_RECIPE)
    old.to_csv(tmp_path / "manifest.csv", index=False)
    runs = load.from_manifest(tmp_path / "manifest.csv")
    for name, lengths in linked(runs).items():
        # at 10 epochs two recipes of one method, told apart by nothing: neither is linked
        assert lengths == ([10] if "-e10" in name else [20, 40]), name


def test_the_manifest_lists_every_protocol_field_of_the_config():
    from study.config import RunConfig

    assert MANIFEST_RECIPE == [k for k in RunConfig.keys() if k not in NOT_PROTOCOL | {"epochs"}]
