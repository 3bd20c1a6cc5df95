"""analysis.inference: one model for every contrast, simultaneous intervals, verdicts tied to the training length.

Synthetic run tables with known effects (`analysis.synthetic.run_table`, the frame the statistics read,
no MLflow) and the committed quick study's runs (`results/quick/manifest.csv`).
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
from scipy import stats as sps

from conftest import REPO, statsmodels_contrast
from analysis import evidence, inference, load, stats, synthetic, tables
from analysis.reference import paper_reference

MANIFEST = REPO / "results" / "quick" / "manifest.csv"
HEADLINE = stats.HEADLINE


def compare(table: pd.DataFrame) -> pd.DataFrame:
    """The method comparison the report computes from a run table."""
    return stats.comparisons(stats.summarize(table, [], synthetic.ARG_COLUMNS), table)


def width(table: pd.DataFrame, a: str, b: str) -> float:
    res = inference.Models(table, HEADLINE).family([inference.difference(a, b)])[0]
    return res["ci_high"] - res["ci_low"]


# -- known effects ----------------------------------------------------------------------------------
def test_three_seeds_a_true_difference_of_two_points_is_resolved():
    for rng in range(20):
        means = {"plain": 84.0, "csg": 82.0, **{b: 82.0 for b in synthetic.TABLE_BASELINES}}
        means["prune"] = 84.0  # one baseline truly 2 points above CSG, inside a family of six
        comp = compare(synthetic.run_table(means, seeds=(0, 1, 2), noise_sd=0.3, rng=rng)).set_index("method")
        for method in ("none", "prune"):
            assert comp.loc[method, "resolved"], (rng, method)
            assert comp.loc[method, "diff_ci_low"] > 0
        assert comp.loc["none", "m"] == 1 and comp.loc["prune", "m"] == 6
        assert comp.loc["none", "df"] == 24 - 8 - 2       # 24 runs, 8 configurations, 3 seeds
        # the four baselines equal to CSG: their intervals cover the true zero here
        equal = comp.loc[["filterprune", "lowrank", "hashed", "width", "softshare"]]
        assert ((equal["diff_ci_low"] < 0) & (equal["diff_ci_high"] > 0)).sum() >= 4


def test_six_baselines_equal_to_csg_keep_the_familywise_error_at_five_percent():
    sims = 200
    wanted = [inference.difference(f"{b}@10", "csg@10") for b in synthetic.TABLE_BASELINES]
    any_resolved = any_unadjusted = 0
    for rng in range(sims):
        means = {"plain": 86.0, "csg": 84.0, **{b: 84.0 for b in synthetic.TABLE_BASELINES}}
        table = synthetic.run_table(means, seeds=(0, 1), noise_sd=0.3, rng=rng)  # the quick study's shape
        res = inference.Models(table, HEADLINE).family(wanted)
        assert {r["m"] for r in res} == {6}
        any_resolved += any(r["resolved"] for r in res)
        any_unadjusted += any(r["p"] < 0.05 for r in res)
    bound = 0.05 + 2 * math.sqrt(0.05 * 0.95 / sims)
    assert any_resolved / sims <= bound
    # the simulation can tell: unadjusted, six tests at 5% each make a false 'resolved' far likelier
    assert any_unadjusted / sims > 0.15


@pytest.mark.parametrize("seeds", [(0, 1), (0, 1, 2)])
def test_one_seed_never_gets_a_narrower_interval_than_two_seeds_with_the_same_mean(seeds):
    """The block layout ran seed 0 only; its twin adds seed 1 with the same mean.  The second seed agrees
    with the seed effect the other configurations show, so it adds information and no noise: the
    one-seed interval must be the wider (under the old rules it was the narrower)."""
    for rng in range(10):
        means = {"plain": 86.0, "csg": 82.2, "csg-block": 82.5, **{b: 84.5 for b in synthetic.TABLE_BASELINES}}
        one = synthetic.run_table(means, seeds={**{k: list(seeds) for k in means}, "csg-block": [0]}, rng=rng)
        shift = inference.Models(one, HEADLINE).per_length[0].fit.params["C(seed)[T.1]"]  # seed 1 minus seed 0
        x = one.loc[one["group"] == "csg-block@10", HEADLINE].item()
        row0 = one[one["group"] == "csg-block@10"].iloc[0]
        two = pd.concat([one, row0.to_frame().T.assign(seed=1, run_id="csg-block-10-1")], ignore_index=True)
        block = two["group"] == "csg-block@10"
        two.loc[block, HEADLINE] = [x - shift / 2, x + shift / 2]
        assert two.loc[block, HEADLINE].mean() == pytest.approx(x)
        for other in ("csg@10", "prune@10", "plain@10"):
            assert width(one, "csg-block@10", other) > width(two, "csg-block@10", other), (rng, other)


def test_no_configuration_with_two_seeds_gives_no_interval():
    means = {"plain": 86.0, "csg": 82.0, "prune": 85.0}
    comp = compare(synthetic.run_table(means, seeds=(0,), rng=1))
    rows = comp[comp["relation"] != "CSG"]
    assert rows["diff_ci_low"].isna().all() and not rows["resolved"].any()
    assert rows["reason"].str.contains("no residual degrees of freedom").all()
    plain, csg = rows.set_index("method").loc["none"], comp[comp["relation"] == "CSG"].iloc[0]
    assert plain["diff_vs_csg"] == pytest.approx(plain[f"{HEADLINE}_mean"] - csg[f"{HEADLINE}_mean"])  # still given
    assert tables.method_comparison(comp).display["resolved"].tolist().count("no interval") == 2


def test_the_gap_across_training_lengths_is_a_contrast_of_a_model_over_lengths():
    short = synthetic.run_table({"plain": 86.0, "csg": 82.0}, seeds=(0, 1, 2), rng=3, epochs=10)
    long = synthetic.run_table({"plain": 91.5, "csg": 91.0}, seeds=(0, 1, 2), rng=4, epochs=30)
    table = pd.concat([short, long], ignore_index=True)
    models = inference.Models(table, HEADLINE)
    assert [m.epochs for m in models.per_length] == [[10], [30]] and [m.epochs for m in models.over_lengths] == [[10, 30]]
    res = models.family([inference.gap_change("plain@30", "csg@30", "plain@10", "csg@10")])[0]
    assert res["epochs"] == [10, 30] and res["resolved"] and res["ci_high"] < 0   # the gap narrows with training
    # the same contrast from statsmodels itself, seeds blocked within each training length
    data = table.assign(block=table["epochs"].astype(str) + ":" + table["seed"].astype(str))
    t = statsmodels_contrast(data, f"{HEADLINE} ~ C(group) + C(block)",
                             {"plain@30": 1, "csg@30": -1, "plain@10": -1, "csg@10": 1})
    assert res["estimate"] == pytest.approx(float(np.squeeze(t.effect)), abs=1e-9)
    assert [res["ci_low"], res["ci_high"]] == pytest.approx(list(t.conf_int(alpha=0.05)[0]), abs=1e-9)
    text = "\n\n".join(evidence.findings(stats.summarize(table, [], synthetic.ARG_COLUMNS), compare(table), table,
                                         paper_reference()))
    section = text[text.index("**Across training lengths.**"):]
    assert "Between 10 and 30 epochs" in section
    assert "resolved: plain − CSG falls as training lengthens, so plain's lead narrows" in section
    assert "At 10 epochs, CSG S16 d72" in text and "At 30 epochs, CSG S16 d72" in text


def test_unequal_residual_spread_between_methods_is_flagged():
    """Brown–Forsythe on the model's residuals: one method ten times noisier is flagged most of the time,
    equal noise seldom (the quick study's eight configurations, six seeds)."""
    means = {"plain": 86.0, "csg": 82.0, **{b: 84.5 for b in synthetic.TABLE_BASELINES}}
    flagged, shown = {"equal": 0, "prune noisier": 0}, None
    for rng in range(40):
        calm = synthetic.run_table(means, seeds=tuple(range(6)), noise_sd=0.3, rng=rng)
        noisy = calm.copy()
        prune = noisy["method"] == "prune"
        noisy.loc[prune, HEADLINE] += np.random.default_rng(100 + rng).normal(0, 3.0, prune.sum())
        flagged["equal"] += inference.Models(calm, HEADLINE).per_length[0].spread()["flag"]
        if inference.Models(noisy, HEADLINE).per_length[0].spread()["flag"]:
            flagged["prune noisier"] += 1
            shown = noisy
    assert flagged["equal"] <= 6 and flagged["prune noisier"] >= 30, flagged
    model = inference.Models(shown, HEADLINE).per_length[0]
    spread = model.spread()
    assert spread["tested"] == sorted(set(shown["method"]))
    by = shown.reset_index(drop=True)["method"].to_numpy()
    resid = model.fit.resid.to_numpy()
    ref = sps.levene(*[resid[by == m] for m in spread["tested"]], center="median")
    assert spread["p"] == pytest.approx(ref.pvalue) and spread["p"] < 0.05
    text = "\n\n".join(evidence.findings(stats.summarize(shown, [], synthetic.ARG_COLUMNS), compare(shown), shown,
                                         paper_reference()))
    assert "Brown–Forsythe" in text and "**Flag: the residual spread differs between methods" in text


# -- Spearman ---------------------------------------------------------------------------------------
def test_spearman_p_is_exact_for_five_points():
    d = [8, 16, 32, 72, 128]
    up = inference.spearman(d, [69.4, 75.7, 80.1, 82.2, 83.5])
    assert up["exact"] and up["rho"] == pytest.approx(1.0) and up["p"] == pytest.approx(2 / 120)
    down = inference.spearman(d, [83.5, 82.2, 80.1, 75.7, 69.4])
    assert down["rho"] == pytest.approx(-1.0) and down["p"] == pytest.approx(2 / 120)


def test_spearman_p_equals_enumerating_every_ordering():
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    y = np.array([2.0, 1.0, 4.0, 3.0, 6.0, 5.0])
    rho = sps.spearmanr(x, y).statistic
    perms = [sps.spearmanr(x, np.array(p)).statistic for p in itertools.permutations(y)]
    exact = np.mean([abs(r) >= abs(rho) - 1e-12 for r in perms])
    res = inference.spearman(x, y)
    assert res["rho"] == pytest.approx(rho) and res["p"] == pytest.approx(exact)


# -- the committed quick study ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def quick():
    runs = load.from_manifest(MANIFEST)
    fin = runs.finished
    summary = stats.summarize(fin, [], runs.method_arg_columns)
    return runs, fin, summary, stats.comparisons(summary, fin)


def test_the_variant_labels_read_back_into_the_same_arguments(quick):
    runs = quick[0].runs
    for _, r in runs.iterrows():
        args = load.args_from_variant(r["method"], r["variant"])
        target = args.pop("target_params", None)
        row = {"method": r["method"], **args, "target_params": target}
        assert load.variant_label(row, sorted(args)) == r["variant"]
    assert set(runs["budget_count"]) == {"stored", "nonzero", "total"}
    assert runs.loc[runs["method"] == "prune", "budget_count"].eq("nonzero").all()


def test_the_models_estimates_and_intervals_equal_statsmodels_on_the_quick_study(quick):
    _, fin, _, comp = quick
    fin = fin.assign(seed=fin["seed"].astype(int))  # patsy reads plain integers
    csg = comp[(comp["relation"] == "CSG") & (comp["csg_variant"] == "S16 d72")].iloc[0]["group"]
    # statsmodels, coded so that each coefficient *is* the contrast with CSG 16/72
    fit = smf.ols(f"{HEADLINE} ~ C(group, Treatment(reference='{csg}')) + C(seed)", data=fin).fit()
    assert fit.df_resid == 8 and math.sqrt(fit.scale) == pytest.approx(0.4275, abs=1e-4)

    def coef(group):
        return f"C(group, Treatment(reference='{csg}'))[T.{group}]"
    rows = comp[(comp["csg_group"] == csg) & (comp["relation"] == "matched budget")]
    assert len(rows) == 7  # the seven baselines form one family
    for _, r in rows.iterrows():
        lo, hi = fit.conf_int(alpha=0.05 / 7).loc[coef(r["group"])]
        assert r["diff_vs_csg"] == pytest.approx(fit.params[coef(r["group"])], abs=1e-9)
        assert (r["diff_ci_low"], r["diff_ci_high"]) == pytest.approx((lo, hi), abs=1e-9)
        assert r["df"] == 8 and r["m"] == 7
        assert r["p_adj"] == pytest.approx(min(1.0, 7 * fit.pvalues[coef(r["group"])]), abs=1e-12)
        assert r["resolved"] == (lo > 0 or hi < 0)
    plain = comp[(comp["csg_group"] == csg) & (comp["relation"] == "plain network")].iloc[0]
    lo, hi = fit.conf_int(alpha=0.05 / 7).loc[coef(plain["group"])]  # seven CSG configurations against plain
    assert (plain["diff_ci_low"], plain["diff_ci_high"]) == pytest.approx((lo, hi), abs=1e-9) and plain["m"] == 7
    # a one-seed configuration's contrast: the block layout against the same baselines
    block = comp[(comp["relation"] == "CSG") & (comp["csg_variant"] == "S16 d72 block layout")].iloc[0]["group"]
    fit_b = smf.ols(f"{HEADLINE} ~ C(group, Treatment(reference='{block}')) + C(seed)", data=fin).fit()
    for _, r in comp[(comp["csg_group"] == block) & (comp["relation"] == "matched budget")].iterrows():
        name = f"C(group, Treatment(reference='{block}'))[T.{r['group']}]"
        assert (r["diff_ci_low"], r["diff_ci_high"]) == pytest.approx(tuple(fit_b.conf_int(alpha=0.05 / 7).loc[name]),
                                                                       abs=1e-9)


def test_the_block_layout_row_no_longer_carries_the_authors_contiguous_numbers(quick):
    _, fin, summary, _ = quick
    main = tables.main_table(summary, fin, paper_reference()).data.set_index("csg_variant")
    assert main.loc["S16 d72", "authors_csg_acc"] == 91.64 and main.loc["S16 d72", "authors_csg_params"] == 176698
    for variant in ("S16 d72 block layout", "S16 d72 binary", "S16 d32"):
        assert math.isnan(main.loc[variant, "authors_csg_acc"]) and math.isnan(main.loc[variant, "authors_csg_params"])
    # with no contiguous run, the authors' CSG row finds no match at all (it used to take the block layout)
    block_only = summary[~((summary["method"] == "csg") & (summary["variant"] == "S16 d72"))]
    paper = tables.paper_vs_us(block_only, paper_reference()).data
    assert list(paper["config"]) == ["plain"]


def test_verdicts_name_the_training_length_and_the_claim_only_where_the_paper_reported(quick):
    _, fin, summary, comp = quick
    text = "\n\n".join(evidence.findings(summary, comp, fin, paper_reference()))
    plain = text[text.index("**CSG against the plain network.**"):text.index("**CSG against the baselines")]
    paragraphs = [p for p in plain.split("\n\n")[2:] if p]
    assert len(paragraphs) == 7 and all(p.startswith("At 10 epochs, CSG S16 d") for p in paragraphs)
    claims = [p for p in paragraphs if "The paper's claim for this network" in p]
    assert len(claims) == 1 and claims[0].startswith("At 10 epochs, CSG S16 d72 (resnet20)")
    assert "is contradicted at 10 epochs" in claims[0]
    assert all("a short budget favours plain" in p for p in paragraphs)
    assert "in their own logs resnet20 CSG S16 d72 is" in plain
    baselines = text[text.index("**CSG against the baselines"):text.index("**Code dimension.**")]
    assert "At 10 epochs, at the budget of CSG S16 d72 (" in baselines
    assert "pruning, variant 'AGP once per epoch'" in baselines and "matched on nonzero" in baselines
    assert "it trains the unpruned network for the first 50% of training (5 of 10 epochs)" in baselines
    assert "1 baseline(s) resolved below CSG, 5 above, 1 not resolved" in baselines
    code = text[text.index("**Code dimension.**"):]
    assert "(exact permutation p = 0.017, n = 5 configurations)" in code
    assert "block − contiguous = -0.05 points" in text and "not resolved (the interval spans zero)" in text
    assert "≈" not in text and "pooled seed SD" not in text


def test_the_comparison_table_says_what_each_count_leaves_out(quick):
    comp = quick[3]
    disp = tables.method_comparison(comp).display
    prune = disp[(disp["method"] == "pruning") & (disp["CSG config"] == "S16 d72")].iloc[0]
    assert prune["matched on"] == "nonzero" and "269,722" in prune["leaves out"]
    assert prune["bytes on disk"] == "1,118,679" and prune["variant"] == "AGP once per epoch"
    binary = disp[(disp["vs."] == "CSG") & (disp["CSG config"] == "S16 d72 binary")].iloc[0]
    assert binary["leaves out"] == "165,888 frozen parameters, rebuilt from a seed"
    width = disp[(disp["method"] == "width scaling") & (disp["CSG config"] == "S16 d72")].iloc[0]
    assert width["matched on"] == "total" and width["leaves out"].startswith("nothing")


def test_the_report_regenerates_from_the_manifest_identically_and_leaves_the_manifest_alone(tmp_path):
    import shutil

    from analysis.__main__ import main

    manifest = tmp_path / "manifest.csv"
    shutil.copy(MANIFEST, manifest)
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        assert main(["report", "--from-manifest", str(manifest), "--out", str(out)]) == 0
    assert manifest.read_bytes() == MANIFEST.read_bytes() and not (outs[0] / "manifest.csv").exists()
    names = ["REPORT.md"] + [f"tables/{p.name}" for p in sorted((outs[0] / "tables").iterdir())]
    for name in names:
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name
    text = (outs[0] / "REPORT.md").read_text()
    # the manifest lists each run's training settings, so the protocol section restates them
    assert "--from-manifest" in text and "**Not in the manifest.**" not in text
    assert "lr 0.2 (authors: 0.05); schedule onecycle (authors: step)" in text
    assert not (outs[0] / "figures" / "training_curves.png").exists()
    assert "Not available here: the manifest holds no per-epoch metrics." in text
    # the committed study's numbers come through: 24 runs, the model's 8 residual degrees of freedom
    assert "24 FINISHED run(s) enter the statistics, in 15 configuration(s)" in text
    assert "residual SD 0.43 points on 8 residual degrees of freedom" in text
    # a manifest written before it listed the training settings says so instead of restating them
    pd.read_csv(manifest, dtype=str).drop(columns=load.MANIFEST_RECIPE).to_csv(manifest, index=False)
    assert main(["report", "--from-manifest", str(manifest), "--out", str(tmp_path / "older")]) == 0
    older = (tmp_path / "older" / "REPORT.md").read_text()
    assert "**Not in the manifest.**" in older and "(authors: step)" not in older


def test_a_bad_manifest_is_refused_in_one_line(tmp_path, capsys):
    from analysis.__main__ import main

    bad = tmp_path / "manifest.csv"
    bad.write_text("a,b\n1,2\n")
    for argv in (["report", "--from-manifest", str(bad)], ["report", "--from-manifest", str(tmp_path / "none.csv")],
                 ["report", "--from-manifest", str(MANIFEST), "--experiment", "nope", "--out", str(tmp_path)]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "error" in err[0]


def test_a_difference_on_a_rounding_tie_prints_alike_whatever_the_last_bits_of_the_arithmetic():
    from analysis.inference import settled

    # 89.28 - 87.175 is 2.105 to the last decimal the runs carry; two CPUs' least squares land on either
    # side of it by a few ulps, which an unrounded '.2f' prints as 2.10 on one and 2.11 on the other
    below, above = 2.105 - 4e-15, 2.105 + 4e-15
    assert f"{below:.2f}" != f"{above:.2f}"
    assert f"{settled(below):.2f}" == f"{settled(above):.2f}"
    assert settled(1.23456789012) == 1.23456789  # real differences keep nine decimals
