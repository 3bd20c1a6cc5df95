"""The gap against training length: runs linked across lengths, the trend of the gap in log epochs, its
sentences, its figure.

A synthetic store shaped like the converged study (`analysis.synthetic.make_lengths_store`): plain and
CSG 16/72 at 10, 20 and 40 epochs with the warm-up a fifth of the run, and another recipe (random flips)
at 10 epochs; and synthetic run tables with a known gap and slope (`analysis.synthetic.run_table`).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf

from analysis import evidence, figures, inference, load, report, stats, synthetic
from analysis.load import MANIFEST_RECIPE, NOT_PROTOCOL
from analysis.reference import AUTHORS_EPOCHS, paper_reference

HEADLINE = stats.HEADLINE


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


# -- the trend model on run tables with known effects ---------------------------------------------------
def lengths_table(gap10: float, slope: float, lengths=(10, 20, 40), seeds=(0, 1), rng=0,
                  noise_sd: float = 0.3) -> pd.DataFrame:
    """Plain and CSG at each length, the gap plain − CSG = gap10 + slope · log2(epochs / 10); both rise with
    the length, and every length draws its own seed effects (a block per length and seed)."""
    rng = np.random.default_rng(rng)
    parts = []
    for e in lengths:
        level = 84.0 + 2.0 * math.log2(e / 10)
        parts.append(synthetic.run_table({"plain": level, "csg": level - gap10 - slope * math.log2(e / 10)},
                                         seeds=seeds, noise_sd=noise_sd, rng=rng, epochs=e))
    return pd.concat(parts, ignore_index=True)


def trend_of(table: pd.DataFrame) -> inference.GapTrend:
    comp = compare(table)
    (series,) = stats.length_series(comp, table)
    return stats.gap_trend(series, table, AUTHORS_EPOCHS)


def compare(table: pd.DataFrame) -> pd.DataFrame:
    return stats.comparisons(stats.summarize(table, [], synthetic.ARG_COLUMNS), table)


def across(table: pd.DataFrame) -> str:
    text = "\n\n".join(evidence.findings(stats.summarize(table, [], synthetic.ARG_COLUMNS), compare(table), table,
                                         paper_reference()))
    start = text.index("**Across training lengths.**")
    return text[start:text.index("**", start + 30)]


def test_the_trend_is_statsmodels_own_fit_of_the_gap_against_log_epochs():
    table = lengths_table(3.0, -0.8, rng=1)
    trend = trend_of(table)
    data = table.assign(block=table["epochs"].astype(str) + ":" + table["seed"].astype(str),
                        is_csg=(table["method"] == "csg").astype(float), log2_epochs=np.log2(table["epochs"]))
    fit = smf.ols(f"{HEADLINE} ~ C(block) + is_csg + is_csg:log2_epochs", data=data).fit()
    ci = fit.conf_int(alpha=0.05 / 2)  # a family of two: the slope and the gap at 200 epochs
    assert trend.slope["estimate"] == pytest.approx(-fit.params["is_csg:log2_epochs"], abs=1e-9)  # plain − CSG
    assert [trend.slope["ci_low"], trend.slope["ci_high"]] == pytest.approx(
        [-ci.loc["is_csg:log2_epochs", 1], -ci.loc["is_csg:log2_epochs", 0]], abs=1e-9)
    at = -(fit.params["is_csg"] + fit.params["is_csg:log2_epochs"] * math.log2(200))
    assert trend.gap_at["estimate"] == pytest.approx(at, abs=1e-9)
    assert trend.df_resid == fit.df_resid == 12 - 6 - 2 and trend.slope["m"] == trend.gap_at["m"] == 2
    assert trend.epochs == [10, 20, 40] == trend.slope["epochs"]
    # the band the figure draws ends in the stated interval
    est, lo, hi = trend.gap([200])
    assert (est[0], lo[0], hi[0]) == pytest.approx((at, trend.gap_at["ci_low"], trend.gap_at["ci_high"]), abs=1e-9)


def test_a_known_slope_and_gap_at_200_epochs_lie_in_their_intervals():
    slope, gap10, sims = -0.8, 3.0, 40
    true_at = gap10 + slope * math.log2(200 / 10)
    covered, slopes = 0, []
    for rng in range(sims):
        trend = trend_of(lengths_table(gap10, slope, rng=rng))
        covered += (trend.slope["ci_low"] <= slope <= trend.slope["ci_high"]
                    and trend.gap_at["ci_low"] <= true_at <= trend.gap_at["ci_high"])
        slopes.append(trend.slope["estimate"])
    assert covered >= 35, covered  # both at once in at least 95% of simulations, by Bonferroni
    assert np.mean(slopes) == pytest.approx(slope, abs=0.1)


def test_a_true_zero_slope_is_seldom_resolved():
    sims = 100
    resolved = sum(trend_of(lengths_table(1.0, 0.0, rng=rng)).slope["resolved"] for rng in range(sims))
    assert resolved <= 0.05 * sims + 2 * math.sqrt(0.05 * 0.95 * sims), resolved


def test_two_lengths_of_one_seed_give_no_interval_and_the_report_says_so():
    table = lengths_table(3.0, -0.8, lengths=(10, 20), seeds=(0,))
    trend = trend_of(table)
    assert trend.df_resid == 0 and math.isnan(trend.slope["ci_low"]) and not trend.slope["resolved"]
    assert trend.slope["estimate"] == pytest.approx(float(np.diff(compare_gaps(table))[0]), abs=1e-9)  # through both
    text = across(table)
    assert "(no interval: the trend model for resnet20, CSG S16 d72 against plain, over 10 and 20 epochs has no " \
           "residual degrees of freedom: 4 runs for 4 parameters" in text
    assert "no verdict without an interval" in text and "cannot be set against the line without an interval" in text
    # with two seeds the seeds give the line residual degrees of freedom, and the report says what they do not test
    two = across(lengths_table(3.0, -0.8, lengths=(10, 20), seeds=(0, 1)))
    assert "(Bonferroni over 2; 2 residual df)" in two and "the line runs through both gaps" in two


def compare_gaps(table: pd.DataFrame) -> list[float]:
    comp = compare(table)
    rows = comp[comp["relation"] == "plain network"].assign(_e=lambda f: f["epochs"].astype(float)).sort_values("_e")
    return rows["diff_vs_csg"].tolist()


@pytest.mark.parametrize("gap10, slope, verdict", [
    (3.0, -1.0, "resolved: plain − CSG falls as training lengthens, so plain's lead narrows"),
    (1.0, 1.0, "resolved: plain − CSG rises as training lengthens, so plain's lead widens"),
    (-1.0, -1.0, "resolved: plain − CSG falls as training lengthens, so CSG's lead widens"),
    (1.0, 0.0, "not resolved (the interval spans zero)"),
])
def test_the_trend_sentence_says_what_the_estimate_says_whatever_its_sign(gap10, slope, verdict):
    text = across(lengths_table(gap10, slope, seeds=(0, 1, 2), noise_sd=0.1, rng=2))
    assert verdict in text
    assert "Between 10 and 40 epochs, the gap as a straight line in log2(epochs)" in text
    assert all(f"at {e} epochs, " in text for e in (10, 20, 40))  # the gap at each length
    assert ("narrows" in text) == (verdict.endswith("narrows")) and ("widens" in text) == verdict.endswith("widens")
    assert "from runs of at most 40 epochs" in text


def test_the_extrapolated_gap_is_set_against_the_authors_gap_read_from_the_reference():
    ref = paper_reference().query("arch == 'resnet20'")
    theirs = ref.query("method == 'none'")["accuracy"].item() - ref.query("code_dim == 72")["accuracy"].item()
    for gap10, slope, where in ((3.0, -1.0, "lies above the interval: the line predicts a smaller gap than theirs"),
                                (1.0, 1.0, "lies below the interval: the line predicts a larger gap than theirs"),
                                (theirs, 0.0, "lies inside the interval: the line is consistent with their gap")):
        text = across(lengths_table(gap10, slope, seeds=(0, 1, 2), noise_sd=0.1, rng=3))
        assert f"The authors' gap at 200 epochs, 91.98 − 91.64 = {theirs:.2f} points" in text and where in text


# -- the figure and the report --------------------------------------------------------------------
def test_the_figure_is_drawn_for_a_series_of_lengths_and_says_so_without_one(tmp_path):
    table = lengths_table(3.0, -0.8)
    paths = figures.gap_vs_length(compare(table), table, tmp_path / "a")
    assert [p.name for p in paths] == ["gap_vs_length.png", "gap_vs_length.pdf"]
    drawn = [p.stat().st_size for p in paths]
    one = lengths_table(3.0, -0.8, lengths=(10,))
    paths = figures.gap_vs_length(compare(one), one, tmp_path / "b")
    assert all(p.exists() for p in paths) and paths[0].stat().st_size < drawn[0]  # a placeholder
    # one seed at two lengths: no interval, no band, and still a figure
    two = lengths_table(3.0, -0.8, lengths=(10, 20), seeds=(0,))
    assert all(p.stat().st_size > 1000 for p in figures.gap_vs_length(compare(two), two, tmp_path / "c"))


def test_the_report_of_a_length_study_states_the_trend_and_regenerates_identically(study, tmp_path):
    runs, out = study
    text = (out / "REPORT.md").read_text()
    assert "figures/gap_vs_length.png" in text and (out / "figures" / "gap_vs_length.pdf").exists()
    section = text[text.index("**Across training lengths.**"):text.index("**Against the paper.**")]
    assert "one recipe at 3 training lengths" in section and "Between 10 and 40 epochs" in section
    assert "The authors' gap at 200 epochs, 91.98 − 91.64 = 0.34 points" in section
    report.write(runs, tmp_path / "again")
    for name in ["REPORT.md", "manifest.csv"] + [f"tables/{p.name}" for p in (out / "tables").iterdir()]:
        assert (tmp_path / "again" / name).read_bytes() == (out / name).read_bytes(), name
    # from the manifest: the same runs, linked the same way, so the same trend
    again = load.from_manifest(out / "manifest.csv")
    report.write(again, tmp_path / "manifest")
    regenerated = (tmp_path / "manifest" / "REPORT.md").read_text()
    assert section in regenerated
