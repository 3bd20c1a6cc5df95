"""The gap against training length: runs linked across lengths, the trend of the gap in log epochs, its
sentences, its figure; two recipes at one length, named apart, and the difference of the gaps between them;
the models 'The model' lists.

A synthetic store shaped like the converged study (`analysis.synthetic.make_lengths_store`): plain and
CSG 16/72 at 10, 20 and 40 epochs with the warm-up a fifth of the run, and another recipe (random flips)
at 10 epochs; and synthetic run tables with a known gap and slope, or a known difference of gaps between
two recipes (`analysis.synthetic.run_table`).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf

from conftest import statsmodels_contrast
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


def test_the_figures_that_set_configurations_side_by_side_show_one_training_length(study):
    runs, _ = study
    summary = stats.summarize(runs.finished)
    shown = figures.at_longest(summary)
    assert set(summary["epochs"].astype(int)) == {10, 20, 40}
    assert set(shown["epochs"].astype(int)) == {40} and set(shown["method"]) == {"none", "csg"}
    assert figures.panel_title(shown, "resnet20") == "resnet20, 40 epochs"
    assert figures.panel_title(summary, "resnet20") == "resnet20"


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


# -- two recipes at one training length ------------------------------------------------------------------
# the study's recipe (the one its 40-epoch runs used) is named "new", the other "old"; their labels are
# chosen so that the order of the words ("alternating" before "random") is not what makes "new" the study's
NEW_OLD = {"new": {"flip": "random"}, "old": {"flip": "alternating"}}


def recipes_table(diff: float, gap_new: float = 1.0, seeds=(0, 1), rng=0, noise_sd: float = 0.3,
                  recipes=NEW_OLD, baselines: bool = False) -> pd.DataFrame:
    """Plain and CSG under two recipes at 10 epochs, sharing their seeds, with a known difference of gaps
    (plain − CSG)_new − (plain − CSG)_old = diff; and the new recipe at 40 epochs."""
    rng = np.random.default_rng(rng)
    ten = {"plain/new": 85.0, "csg/new": 85.0 - gap_new, "plain/old": 84.0, "csg/old": 84.0 - (gap_new - diff)}
    forty = {"plain/new": 88.0, "csg/new": 88.0 - gap_new}
    if baselines:
        ten["prune/new"], forty["prune/new"] = 84.0, 87.5
    return pd.concat([synthetic.run_table(ten, seeds=seeds, noise_sd=noise_sd, rng=rng, epochs=10, recipes=recipes),
                      synthetic.run_table(forty, seeds=seeds, noise_sd=noise_sd, rng=rng, epochs=40, recipes=recipes)],
                     ignore_index=True)


def findings_of(table: pd.DataFrame) -> tuple[str, evidence.Evidence]:
    summary, comp = stats.summarize(table, ["flip"], synthetic.ARG_COLUMNS), compare(table)
    return "\n\n".join(evidence.findings(summary, comp, table, paper_reference())), \
        evidence.Evidence(summary, comp, table, paper_reference())


def recipe_difference(table: pd.DataFrame) -> dict:
    """The difference of gaps the recipe section states."""
    _, ev = findings_of(table)
    assert ev.recipe_check()
    return ev.stated[-1]


def section(text: str, title: str) -> str:
    start = text.index(f"**{title}.**")
    end = text.find("\n\n**", start + 10)
    return text[start:] if end < 0 else text[start:end]


RECIPE_SECTION = "The recipe against another at the same length"


def test_a_length_with_two_recipes_names_each_in_words_read_from_the_settings():
    table = recipes_table(0.5)
    assert stats.recipes(table) == {"plain/new@10": "random flips", "csg/new@10": "random flips",
                                    "plain/old@10": "alternating flips", "csg/old@10": "alternating flips",
                                    "plain/new@40": "", "csg/new@40": ""}
    text, _ = findings_of(table)
    plain = section(text, "CSG against the plain network")
    for flips in ("random", "alternating"):
        assert f"At 10 epochs with {flips} flips, CSG S16 d72 (resnet20) stores" in plain
        assert plain.count(f"10 epochs with {flips} flips") == 2  # and the claim's verdict names it too
    assert "At 40 epochs, CSG S16 d72 (resnet20) stores" in plain  # one recipe there: as before
    assert "At 10 epochs with random flips (the authors': about 200)" in section(text, "Against the paper")
    # any setting, not only the flips: recipes that differ in their learning rate
    lr = recipes_table(0.5, recipes={"new": {"flip": "alternating", "lr": 0.2},
                                     "old": {"flip": "alternating", "lr": 0.1}})
    assert set(stats.recipes(lr).values()) == {"lr 0.2", "lr 0.1", ""}
    assert "At 10 epochs with lr 0.1, CSG S16 d72" in findings_of(lr)[0]


def test_configurations_that_differ_only_in_how_they_were_computed_are_named_by_it():
    # the fp32/bf16 pair: one protocol (precision is not part of it), one method and variant, two configurations
    table = synthetic.run_table({"csg/fp32": 82.5, "csg/bf16": 83.2}, seeds=(0,), epochs=10,
                                recipes={"fp32": {"precision": "fp32"}, "bf16": {"precision": "bf16"}})
    table["protocol"] = "bf16_vs_fp32:10"
    assert stats.recipes(table) == {"csg/fp32@10": "fp32", "csg/bf16@10": "bf16"}
    assert stats.recipes(table[table["group"] == "csg/fp32@10"]) == {"csg/fp32@10": ""}


def test_a_comparison_whose_sides_trained_in_two_precisions_says_so_and_one_precision_reads_as_before():
    # `precision: auto` on two machines: plain at 10 epochs in bf16, everything else in fp32
    from analysis import tables

    table = lengths_table(3.0, -0.8, lengths=(10, 40), rng=2)
    table["precision_used"] = np.where((table["group"] == "plain@10"), "bf16", "fp32")
    summary, comp = stats.summarize(table, [], synthetic.ARG_COLUMNS), compare(table)
    text = "\n\n".join(evidence.findings(summary, comp, table, paper_reference()))
    warning = "**Caution: at 10 epochs plain trained in bf16, CSG in fp32. `precision: auto` resolved differently"
    plain = section(text, "CSG against the plain network")
    at10, at40 = (p for p in plain.split("\n\n") if p.startswith(("At 10 epochs", "At 40 epochs")))
    assert warning in at10 and "so this contrast does not separate the method from the arithmetic.**" in at10
    assert "Caution" not in at40
    assert warning in section(text, "Across training lengths") and "so the line does not separate" in text
    disp = tables.method_comparison(comp).display
    assert disp.loc[disp["vs."] == "plain network", ["epochs", "trained in"]].values.tolist() == [["10", "bf16"],
                                                                                                 ["40", "fp32"]]
    # every run in one precision (or a manifest, which does not say): no caution, no column
    for same in (table.assign(precision_used="fp32"), table.drop(columns="precision_used")):
        s2, c2 = stats.summarize(same, [], synthetic.ARG_COLUMNS), compare(same)
        assert "Caution" not in "\n\n".join(evidence.findings(s2, c2, same, paper_reference()))
        t2 = tables.method_comparison(c2)
        assert "trained in" not in t2.display and "precision" not in t2.data


def test_the_tables_tell_the_recipes_of_a_length_apart_and_one_recipe_keeps_them_as_they_were():
    from analysis import tables

    table = recipes_table(0.5)
    summary, comp = stats.summarize(table, ["flip"], synthetic.ARG_COLUMNS), compare(table)
    main = tables.main_table(summary, table, paper_reference()).display
    assert main[["epochs", "recipe"]].values.tolist() == [["10", "random flips"], ["10", "alternating flips"],
                                                          ["40", "–"]]
    disp = tables.method_comparison(comp).display
    assert set(disp.loc[disp["epochs"] == "10", "recipe"]) == {"random flips", "alternating flips"}
    # one length, one recipe: no such columns
    one = lengths_table(3.0, 0.0, lengths=(10,))
    s1, c1 = stats.summarize(one, [], synthetic.ARG_COLUMNS), compare(one)
    assert "recipe" not in tables.method_comparison(c1).display and "recipe" not in tables.method_comparison(c1).data
    assert not {"epochs", "recipe"} & set(tables.main_table(s1, one, paper_reference()).display.columns)


def test_the_difference_of_gaps_is_statsmodels_own_contrast_of_that_lengths_model():
    table = recipes_table(0.8, rng=5)
    res = recipe_difference(table)
    ten = table[table["epochs"] == 10]
    t = statsmodels_contrast(ten, f"{HEADLINE} ~ C(group) + C(seed)",
                             {"plain/new@10": 1, "csg/new@10": -1, "plain/old@10": -1, "csg/old@10": 1})
    (lo, hi), = t.conf_int(alpha=0.05)  # a family of one
    assert res["estimate"] == pytest.approx(float(np.squeeze(t.effect)), abs=1e-9)
    assert [res["ci_low"], res["ci_high"]] == pytest.approx([lo, hi], abs=1e-9)
    assert res["m"] == 1 and res["df"] == t.df_denom == 8 - 4 - 1 and res["epochs"] == [10]


def difference_of_gaps(table: pd.DataFrame) -> dict:
    """The recipe section's contrast from the inference alone (the test above ties the section to it):
    what the simulations below repeat a hundred times, without writing the evidence each time."""
    contrast = inference.gap_change("plain/new@10", "csg/new@10", "plain/old@10", "csg/old@10")
    return inference.Models(table, HEADLINE).family([contrast])[0]


def test_a_known_difference_of_gaps_lies_in_its_interval():
    diff, sims = 1.5, 40
    covered, estimates = 0, []
    for rng in range(sims):
        res = difference_of_gaps(recipes_table(diff, rng=rng))
        covered += res["ci_low"] <= diff <= res["ci_high"]
        estimates.append(res["estimate"])
    assert covered >= 35, covered
    assert np.mean(estimates) == pytest.approx(diff, abs=0.15)


def test_a_zero_difference_of_gaps_is_seldom_resolved():
    sims = 100
    resolved = sum(difference_of_gaps(recipes_table(0.0, rng=rng))["resolved"] for rng in range(sims))
    assert resolved <= 0.05 * sims + 2 * math.sqrt(0.05 * 0.95 * sims), resolved


@pytest.mark.parametrize("diff, verdict", [
    (0.0, "not resolved (the interval spans zero): at 10 epochs these runs do not show the recipe favouring either "
          "network, which is not evidence that it favours neither: the interval allows the recipe with random flips, "
          "against the one with alternating flips, to favour plain by up to "),
    (3.0, "resolved: at 10 epochs the recipe with random flips favours plain against the one with alternating flips, "
          "raising plain − CSG by "),
    (-3.0, "resolved: at 10 epochs the recipe with random flips favours CSG against the one with alternating flips, "
           "lowering plain − CSG by "),
])
def test_the_recipe_section_states_both_gaps_the_difference_and_what_its_interval_allows(diff, verdict):
    text = section(findings_of(recipes_table(diff, seeds=(0, 1, 2), noise_sd=0.1, rng=4))[0], RECIPE_SECTION)
    assert verdict in text, text
    assert "against plain under 2 recipes" in text
    # the study's recipe is the one its longest runs used, whatever the words' order
    assert "with random flips (the recipe of the study's longest runs, 40 epochs), +" in text
    assert "; with alternating flips, " in text
    assert ("The difference of the gaps, (plain − CSG with random flips) − (plain − CSG with alternating flips), from "
            "the model for resnet20 at 10 epochs, which holds all four configurations: ") in text
    assert "(Bonferroni over 1; " in text


def test_the_recipe_section_is_absent_where_one_recipe_ran_at_each_length():
    table = lengths_table(3.0, -0.8)
    text = "\n\n".join(evidence.findings(stats.summarize(table, [], synthetic.ARG_COLUMNS), compare(table), table,
                                         paper_reference()))
    assert RECIPE_SECTION not in text and not any(stats.recipes(table).values())
    assert "At 10 epochs, CSG S16 d72 (resnet20) stores" in text


# -- the models the report states ------------------------------------------------------------------------------
def test_the_model_section_lists_the_trend_model_and_the_model_over_lengths_only_where_a_sentence_uses_it():
    text = section(findings_of(recipes_table(0.5))[0], "The model")
    assert "The model for resnet20 at 10 epochs: 8 runs of 4 configuration(s) over 2 seed(s); its configurations " \
           "ran under 2 recipes (alternating flips; random flips), each seed one block across them;" in text
    assert "The trend model for resnet20, CSG S16 d72 against plain, over 10 and 40 epochs (accuracy ~ a level per " \
           "(training length, seed) block + CSG + CSG × log2 epochs): 8 runs over 4 (training length, seed) blocks; " \
           "residual SD " in text and "points on 2 residual degrees of freedom." in text
    assert "The model for resnet20 over" not in text  # no sentence uses it
    # a baseline at two lengths: its gap's change is a contrast of the model over lengths, which is then listed
    with_baseline = findings_of(recipes_table(0.5, baselines=True))[0]
    assert "against pruning: (pruning − CSG) at 40 epochs minus at 10 epochs with random flips = " \
           in section(with_baseline, "Across training lengths")
    assert "The model for resnet20 over 10 and 40 epochs: 16 runs of 8 configuration(s) over 4 (training length, " \
           "seed) blocks; residual SD" in section(with_baseline, "The model")


def test_the_length_studys_report_keeps_its_two_ten_epoch_recipes_apart_and_checks_the_recipe(study, tmp_path):
    runs, out = study
    text = (out / "REPORT.md").read_text()
    for flips in ("random", "alternating"):
        assert f"- resnet20, CSG S16 d72, at 10 epochs with {flips} flips: " in text  # the headline
        assert f"At 10 epochs with {flips} flips, CSG S16 d72 (resnet20) stores" in text
    check = section(text, RECIPE_SECTION)
    assert "with alternating flips (the recipe of the study's longest runs, 40 epochs), +" in check
    assert "(plain − CSG with alternating flips) − (plain − CSG with random flips)" in check
    models = section(text, "The model")
    assert "The trend model for resnet20, CSG S16 d72 against plain, over 10, 20 and 40 epochs" in models
    assert "The model for resnet20 over" not in models  # no sentence of this report uses it
    assert "| resnet20 | S16 d72 | 10 | random flips |" in text and "| resnet20 | 10 | alternating flips | S16 d72 |" \
        in text  # the main table and the method comparison
    # regenerated from the manifest, which lists the flips: the same section
    report.write(load.from_manifest(out / "manifest.csv"), tmp_path / "manifest")
    assert check in (tmp_path / "manifest" / "REPORT.md").read_text()
