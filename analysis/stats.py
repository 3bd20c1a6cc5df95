"""Statistics over seeds: mean, std and a 95% t-interval per configuration, and the method comparison.

A configuration (a *group*) is every config value except the seed.  With one seed there is no
interval for its mean.  Differences between configurations (`comparisons`) are not tested pair by
pair: they are contrasts of one model per experiment, architecture and training length,
accuracy ~ configuration + seed, with simultaneous intervals per family (`analysis.inference`).

The headline accuracy is `test_acc_at_best_val` (test accuracy at the epoch of best validation
accuracy); `final_test_acc` is reported beside it, and `best_test_acc` (the best test epoch, the
authors' rule) only in its own clearly labelled column.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats as sps

from analysis import inference
from analysis.load import MANIFEST_RECIPE, NOT_IN_GROUP, parse_value, python_value, sort_key_frame
from study.schema import HEADLINE

CONFIDENCE = inference.CONFIDENCE
ACC_METRICS = ["test_acc_at_best_val", "final_test_acc", "best_val_acc", "best_test_acc"]
METRIC_LABEL = {
    "test_acc_at_best_val": "test acc. at best val. epoch",
    "final_test_acc": "final test acc.",
    "best_val_acc": "best val. acc.",
    "best_test_acc": "best test epoch (paper's rule)",
}
COUNT_COLUMNS = ["params_total", "params_trainable", "params_frozen", "params_stored", "params_nonzero",
                 "bytes_on_disk", "bytes_sparse", "bytes_sparse_index", "flops", "macs", "kernel_gen_flops"]
NO_INTERVAL = "1 seed, no interval"


def describe(values) -> dict:
    """n, mean, std (ddof=1), standard error and the two-sided 95% t-interval of the mean."""
    x = np.asarray([v for v in np.asarray(values, dtype=float) if not np.isnan(v)], dtype=float)
    n = len(x)
    out = {"n": n, "mean": float(x.mean()) if n else math.nan, "std": math.nan, "sem": math.nan,
           "half_width": math.nan, "ci_low": math.nan, "ci_high": math.nan}
    if n >= 2:
        std = float(x.std(ddof=1))
        sem = std / math.sqrt(n)
        half = _t(n - 1) * sem
        out.update(std=std, sem=sem, half_width=half, ci_low=out["mean"] - half, ci_high=out["mean"] + half)
    return out


def _t(df: float) -> float:
    """The two-sided critical value of Student's t at CONFIDENCE."""
    return float(sps.t.ppf(0.5 + CONFIDENCE / 2, df=df))


# -- per configuration ----------------------------------------------------------------------------
def varying_protocol(finished: pd.DataFrame, config_cols: list[str]) -> list[str]:
    """Config columns (other than arch, method, method args, seed) whose value differs between runs."""
    out = []
    for c in config_cols:
        if c in NOT_IN_GROUP or c in ("arch", "method", "target_params") or c not in finished:
            continue
        if finished[c].astype(str).nunique(dropna=False) > 1:
            out.append(c)
    return out


def summarize(finished: pd.DataFrame, protocol_cols: list[str] | None = None,
              arg_cols: list[str] | None = None) -> pd.DataFrame:
    """One row per configuration: identity columns, method arguments, counts, and mean/std/CI of every accuracy."""
    protocol_cols = protocol_cols or []
    arg_cols = [c for c in (arg_cols or []) if c not in protocol_cols]
    rows = []
    for group, g in finished.groupby("group", sort=False):
        g = g.sort_values("seed")
        first = g.iloc[0]
        row = {"group": group, "arch": first["arch"], "method": first["method"],
               "method_label": first["method_label"], "variant": first["variant"]}
        for c in protocol_cols + arg_cols:
            row[c] = python_value(first[c]) if c in first else None
        row["which_variant"] = python_value(first.get("variant_name")) or ""  # the run's `variant_name` tag
        row["target_params"] = python_value(first.get("target_params"))
        row["budget_count"] = python_value(first.get("budget_count")) or ""
        row["n"] = int(g["seed"].notna().sum()) if g["seed"].notna().any() else len(g)
        row["seeds"] = ",".join(str(python_value(s)) for s in g["seed"] if python_value(s) is not None)
        row["epochs"] = python_value(first.get("epochs"))
        for c in COUNT_COLUMNS:
            row[c] = float(g[c].mean()) if c in g and g[c].notna().any() else math.nan
        for m in ACC_METRICS:
            d = describe(g[m]) if m in g else describe([])
            for k in ("n", "mean", "std", "ci_low", "ci_high", "half_width"):
                row[f"{m}_{k}"] = d[k]
        row["train_seconds_sum"] = float(g["train_seconds"].sum()) if "train_seconds" in g else math.nan
        row["run_names"] = ",".join(g["run_name"].astype(str))
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    keys = sort_key_frame(table)
    # within a method and variant, shortest training first, and at one length the recipes in one order for
    # every method (no-ops where every run has one length and one recipe)
    keys["_e"] = pd.to_numeric(table["epochs"], errors="coerce").fillna(-1) if "epochs" in table else 0
    protocol = finished.groupby("group")["protocol"].first() if "protocol" in finished else None
    keys["_p"] = table["group"].map(protocol).astype(str) if protocol is not None else ""
    keys["_g"] = table["group"]
    order = sorted(table.index, key=lambda i: tuple(keys.loc[i]))
    return table.loc[order].reset_index(drop=True)


def counted(row, count: str | None) -> float:
    """A configuration's parameter count on the named accounting (total if unnamed)."""
    count = count or "total"
    return row.get(f"params_{count}", math.nan)


def _same_target(target, csg_row, csg_names: set[str]) -> bool:
    """Was this budget set from this CSG configuration? An int equal to one of its counts, or its run name."""
    if target is None:
        return False
    t = parse_value(str(target))
    if isinstance(t, (int, float)) and not isinstance(t, bool):
        # CSG's budget is its own count (`stored` unless the run says otherwise)
        return abs(counted(csg_row, csg_row.get("budget_count") or "stored") - t) < 0.5
    return str(t) in csg_names or str(t).startswith("group:") and str(t)[6:] == csg_row["group"]


# how a recipe's setting reads in a sentence, where the plain "key value" would not
RECIPE_WORDS = {"flip": "{} flips", "precision": "{}", "compile": "compile={}", "channels_last": "channels_last={}"}
# the config fields outside the protocol that change how a configuration is computed, not what it trains
HOW_COMPUTED = ["precision", "compile", "channels_last"]


def recipe_words(key: str, value) -> str:
    """One training setting in words: 'random flips', 'lr 0.1'."""
    v = python_value(value)
    v = "none" if v is None else int(v) if isinstance(v, float) and v.is_integer() else v
    return RECIPE_WORDS[key].format(v) if key in RECIPE_WORDS else f"{key} {v}"


def _differing(rows: pd.DataFrame, cols: list[str]) -> list[str]:
    """The columns among `cols` whose values are not all the same over `rows`."""
    return [c for c in cols if rows[c].map(lambda v: repr(python_value(v))).nunique() > 1]


def recipes(finished: pd.DataFrame) -> dict[str, str]:
    """Each configuration's recipe in words, where its training length ran more than one ('' elsewhere).

    Within one experiment and training length, the protocols are told apart by the training settings
    (`MANIFEST_RECIPE`) whose values differ between them: 'random flips' against 'alternating flips'.
    A length with one protocol gets no label, so what is said about it reads as it did before any
    study ran two recipes at one length.
    """
    out = dict.fromkeys(finished["group"], "") if len(finished) else {}
    if finished.empty or "protocol" not in finished:
        return out
    cols = [c for c in MANIFEST_RECIPE if c in finished]
    runs = finished.assign(_e=inference.training_length(finished),
                           _x=finished["experiment"].astype(str) if "experiment" in finished else "")
    for _, g in runs.groupby(["_x", "_e"], sort=False):
        protocols = g.groupby("protocol", sort=True).first()
        if len(protocols) < 2:
            continue
        differ = _differing(protocols, cols)
        for key, row in protocols.iterrows():
            label = ", ".join(recipe_words(c, row[c]) for c in differ) or f"protocol {key}"
            out.update(dict.fromkeys(g.loc[g["protocol"] == key, "group"], label))
    # configurations of one protocol, method and variant that still differ were computed differently
    # (`HOW_COMPUTED`: a precision pair); without their words they would read as one configuration twice
    how = [c for c in HOW_COMPUTED if c in finished]
    keys = [k for k in ("_x", "_e", "protocol", "method", "variant") if k in runs]
    for _, g in runs.groupby(keys, sort=False, dropna=False):
        configs = g.groupby("group", sort=True).first()
        differ = _differing(configs, how)
        for group, row in configs.iterrows():
            words = [out[group]] if out[group] else []
            out[group] = ", ".join(words + [recipe_words(c, row[c]) for c in differ])
    return out


def precisions(finished: pd.DataFrame) -> dict[str, str]:
    """Each configuration's arithmetic precision as its runs logged it (`precision_used`: 'bf16', or
    'bf16, fp32' where its seeds trained in different ones); {} where the runs do not say (a manifest).

    `precision: auto` is one config value, so one configuration trains in bf16 on a CPU with AVX512-BF16
    and in fp32 on one without: a study that spans machines can set a bf16 network against an fp32 one."""
    if finished.empty or "precision_used" not in finished:
        return {}
    used = finished.groupby("group")["precision_used"].agg(
        lambda v: ", ".join(sorted({str(x) for x in v if python_value(x) not in (None, "")})))
    return used.to_dict() if used.astype(bool).any() else {}


def trained_apart(row) -> bool:
    """Whether a comparison row's two sides trained in different precisions (both known)."""
    mine, csg = (v if isinstance(v := row.get(k), str) else "" for k in ("precision", "csg_precision"))
    return bool(mine and csg and mine != csg and row.get("relation") != "CSG")


FAMILY_PLAIN = "CSG against the plain network"
# a contrast's result (`inference.Models.family`) -> its column in the comparison table
RESULT_NAMES = {"estimate": "diff_vs_csg", "ci_low": "diff_ci_low", "ci_high": "diff_ci_high", "se": "se", "df": "df",
                "p": "p", "p_adj": "p_adj", "m": "m", "resolved": "resolved", "reason": "reason", "model": "model"}


def family_name(relation: str, csg_variant: str) -> str:
    """The family a comparison row's contrast belongs to: all CSG-vs-plain contrasts, or one CSG budget's baselines."""
    return FAMILY_PLAIN if relation == "plain network" else f"baselines at the budget of CSG {csg_variant}"


def comparisons(summary: pd.DataFrame, finished: pd.DataFrame) -> pd.DataFrame:
    """For each CSG configuration: the plain network and every baseline matched to its budget.

    Matched means same architecture, same training protocol and a baseline whose `target_params`
    was CSG's parameter count (or the CSG run's name).  The plain network is matched on architecture
    and protocol.  `diff_vs_csg` is (method − CSG) in accuracy points, estimated by the model of
    `analysis.inference` with a simultaneous 95% interval over its family (`family`): every
    CSG-vs-plain contrast of one model, or the baselines at one CSG configuration's budget.
    `recipe` names the protocol where its training length ran more than one (`recipes`), else '';
    `precision` and `csg_precision` the precisions the two sides trained in (`precisions`), '' unknown.
    """
    rows = []
    if summary.empty:
        return pd.DataFrame()
    protocol = finished.groupby("group")["protocol"].first()
    names = finished.groupby("group")["run_name"].apply(set)
    raw_targets = finished.groupby("group")["target_params"].first() if "target_params" in finished else None
    recipe, precision = recipes(finished), precisions(finished)
    for _, csg in summary[summary["method"] == "csg"].iterrows():
        same = summary[(summary["arch"] == csg["arch"]) & (summary["group"] != csg["group"])]
        same = same[same["group"].map(protocol) == protocol[csg["group"]]]
        partners = [("CSG", csg)]
        for _, other in same.iterrows():
            if other["method"] == "none":
                partners.append(("plain network", other))
            elif other["method"] != "csg":
                target = raw_targets.get(other["group"]) if raw_targets is not None else None
                if _same_target(python_value(target), csg, names[csg["group"]]):
                    partners.append(("matched budget", other))
        for relation, other in partners:
            row = {"arch": csg["arch"], "epochs": csg["epochs"], "recipe": recipe.get(csg["group"], ""),
                   "csg_group": csg["group"],
                   "csg_variant": csg["variant"], "csg_params_stored": counted(csg, "stored"), "relation": relation,
                   "family": "" if relation == "CSG" else family_name(relation, csg["variant"]),
                   "group": other["group"], "method": other["method"], "method_label": other["method_label"],
                   "variant": other["variant"], "which_variant": other["which_variant"],
                   "budget_count": other["budget_count"] or ("stored" if other["method"] == "csg" else "total"),
                   "n": other["n"], "seeds": other["seeds"],
                   "precision": precision.get(other["group"], ""), "csg_precision": precision.get(csg["group"], "")}
            row["params_counted"] = counted(other, row["budget_count"])
            for c in ("params_total", "params_stored", "params_nonzero", "params_frozen", "bytes_on_disk",
                      "bytes_sparse", "bytes_sparse_index"):
                row[c] = other[c]
            for m in ACC_METRICS:
                for k in ("mean", "std", "ci_low", "ci_high", "n"):
                    row[f"{m}_{k}"] = other[f"{m}_{k}"]
            rows.append(row)
    out = pd.DataFrame(rows)
    if out.empty:  # no CSG configuration finished: nothing to compare with
        return out
    for metric, prefix in ((HEADLINE, ""), ("final_test_acc", "final_")):
        models = inference.Models(finished, metric)
        results = {}
        for _, fam in out[out["relation"] != "CSG"].groupby("family", sort=False):
            wanted = [inference.difference(r["group"], r["csg_group"]) for _, r in fam.iterrows()]
            results.update(zip(fam.index, models.family(wanted)))
        res = pd.DataFrame(list(results.values()), index=list(results), columns=list(RESULT_NAMES))
        res = res.rename(columns=RESULT_NAMES)
        out = out.join(res.add_prefix(prefix))
    return out


def length_series(comp: pd.DataFrame, finished: pd.DataFrame, relation: str = "plain network") -> list[pd.DataFrame]:
    """The comparison rows of one relation that follow one pair of configurations over training lengths.

    A series is a CSG configuration and its partner (the plain network, or a baseline at its budget),
    each the same configuration at every length (`across_lengths`: the same recipe, the warm-up at the
    same share of the run), one row per length, shortest first; only series of two or more lengths.
    """
    if comp.empty or "across_lengths" not in finished:
        return []
    across = finished.groupby("group")["across_lengths"].first()
    rows = comp[comp["relation"] == relation]
    rows = rows.assign(_a=rows["group"].map(across), _b=rows["csg_group"].map(across),
                       _e=pd.to_numeric(rows["epochs"], errors="coerce"))
    out = []
    for _, g in rows.groupby(["_a", "_b"], sort=False):
        if g["_e"].nunique() >= 2:
            out.append(g.sort_values("_e").drop(columns=["_a", "_b", "_e"]))
    return out


def gap_trend(series: pd.DataFrame, finished: pd.DataFrame, at: float) -> inference.GapTrend:
    """The plain − CSG gap of one series (`length_series`) as a line in log2(epochs), extrapolated to `at`."""
    first = series.iloc[0]
    runs = finished[finished["group"].isin(set(series["group"]) | set(series["csg_group"]))]
    lengths = inference.fmt_epochs(pd.to_numeric(series["epochs"]).tolist())
    return inference.GapTrend(runs, HEADLINE, f"{first['arch']}, CSG {first['csg_variant']} against plain, "
                                              f"over {lengths} epochs", at)
