"""What the evidence says: the report's findings, written from the runs, with their uncertainty.

Every sentence is computed from the FINISHED runs (and `reference/` for the paper's numbers), so it
stays true when the grid or the results change.  A difference is called a difference only when its
95% interval excludes zero.  Where a side ran one seed there is no t-test; the interval then comes
from the seed-to-seed SD pooled over the grid (`stats.pooled_seed_sd`) and is marked "≈".
"""
from __future__ import annotations

import math

import pandas as pd
from scipy import stats as sps

from analysis import tables
from analysis.load import python_value
from analysis.stats import HEADLINE, approximate_interval, compare, pooled_seed_sd

CSG_DEFAULTS = {"layout": "contiguous", "generator": "learned", "policy": "authors"}
CLAIM_POINTS = 1.0  # the paper's claim: fewer parameters at less than 1% (point) of accuracy


def _arg(row, key):
    v = python_value(row.get(key)) if key in row else None
    return CSG_DEFAULTS.get(key) if v in (None, "") else v


def _int(v):
    return int(v) if isinstance(v, float) and v.is_integer() else v


class Evidence:
    def __init__(self, summary: pd.DataFrame, comp: pd.DataFrame, finished: pd.DataFrame, ref: pd.DataFrame):
        self.summary, self.comp, self.finished, self.ref = summary, comp, finished, ref
        self.sd, self.df = pooled_seed_sd(finished)
        self.by_group = {g: d.set_index("seed")[HEADLINE] for g, d in finished.groupby("group")}
        self.protocol = finished.groupby("group")["protocol"].first() if len(finished) else pd.Series(dtype=object)
        self.tested = self.approximated = 0

    # -- one contrast ----------------------------------------------------------------------------
    def contrast(self, a: str, b: str) -> dict:
        """mean(a) − mean(b) with a 95% interval: a t-test where both sides have >= 2 seeds, else ≈."""
        res = compare(self.by_group[a], self.by_group[b])
        res["approx"] = math.isnan(res["ci_low"]) and not math.isnan(res["diff"])
        if res["approx"]:
            res["ci_low"], res["ci_high"] = approximate_interval(res["diff"], res["n_a"], res["n_b"], self.sd, self.df)
            self.approximated += 1
        else:
            self.tested += 1
        return res

    @staticmethod
    def fmt(res: dict) -> str:
        if math.isnan(res["ci_low"]):
            return f"{tables.fmt_signed(res['diff'])} points (no interval: no configuration ran two seeds)"
        mark = "≈" if res["approx"] else ""
        how = "pooled seed SD" if res["approx"] else f"{res['test']}, p = {tables.fmt_p(res['pvalue'])}"
        return (f"{tables.fmt_signed(res['diff'])} points, 95% CI {mark}[{tables.fmt_signed(res['ci_low'])}, "
                f"{tables.fmt_signed(res['ci_high'])}] ({how})")

    @staticmethod
    def verdict(res: dict, higher: str, lower: str) -> str:
        if math.isnan(res["ci_low"]):
            return "undetermined"
        if res["ci_low"] > 0:
            return higher
        if res["ci_high"] < 0:
            return lower
        return "no difference resolved (the interval spans zero)"

    def acc(self, row) -> str:
        return tables.fmt_acc_row(row, HEADLINE)

    def row(self, group: str):
        return self.summary[self.summary["group"] == group].iloc[0]

    def same_protocol(self, a: str, b: str) -> bool:
        return self.protocol.get(a) == self.protocol.get(b)

    def related(self, relation: str) -> pd.DataFrame:
        """The method-comparison rows of one relation ('plain network' or 'matched budget')."""
        return self.comp[self.comp["relation"] == relation] if len(self.comp) else pd.DataFrame(columns=["csg_group"])

    def csg_rows(self) -> pd.DataFrame:
        return self.summary[self.summary["method"] == "csg"]

    def partner(self, row, **changes):
        """The CSG configuration equal to `row` except for `changes` (same arch and protocol), or None."""
        for _, other in self.csg_rows().iterrows():
            if other["group"] == row["group"] or other["arch"] != row["arch"]:
                continue
            if not self.same_protocol(other["group"], row["group"]):
                continue
            keys = ("slice", "code_dim", "layout", "generator", "policy")
            want = {k: changes.get(k, _arg(row, k)) for k in keys}
            if all(_arg(other, k) == want[k] for k in keys):
                return other
        return None

    # -- the findings ------------------------------------------------------------------------------
    def against_plain(self) -> list[str]:
        out = []
        for _, p in self.related("plain network").iterrows():
            csg = self.row(p["csg_group"])
            if _arg(csg, "generator") != "learned" or _arg(csg, "layout") != "contiguous":
                continue  # those are judged against their learned / contiguous twin below
            res = self.contrast(p["group"], csg["group"])
            if math.isnan(res["ci_high"]):
                claim = "cannot be judged without an interval"
            elif res["ci_high"] < CLAIM_POINTS:
                claim = f"is supported: the whole interval lies below {CLAIM_POINTS:g} point"
            elif res["ci_low"] >= CLAIM_POINTS:
                claim = f"is contradicted: the whole interval lies above {CLAIM_POINTS:g} point"
            else:
                claim = f"is neither confirmed nor ruled out: the interval straddles {CLAIM_POINTS:g} point"
            out.append(f"CSG {csg['variant']} ({csg['arch']}) stores {tables.fmt_int(csg['params_stored'])} parameters, "
                       f"{tables.fmt_fewer(p['params_total'], csg['params_stored'])} than the plain network's "
                       f"{tables.fmt_int(p['params_total'])}, and "
                       f"scores {self.acc(csg)} against plain {self.acc(p)}. Plain − CSG = {self.fmt(res)}. "
                       f"A loss under {CLAIM_POINTS:g} point, as the paper claims for its CSG networks, {claim}.")
        return out

    def against_baselines(self) -> list[str]:
        out = []
        for csg_group, m in self.related("matched budget").groupby("csg_group", sort=False):
            csg = self.row(csg_group)
            items, tally = [], {"above": 0, "below": 0, "open": 0}
            for _, b in m.iterrows():
                res = self.contrast(b["group"], csg_group)
                v = self.verdict(res, "above", "below")
                tally[v if v in ("above", "below") else "open"] += 1
                items.append((res["diff"], f"{b['method_label']} ({b['variant']}; {tables.fmt_int(b['params_counted'])} "
                                           f"{b['budget_count']} parameters): {self.acc(b)}, method − CSG = {self.fmt(res)}"))
            lines = [f"At the budget of CSG {csg['variant']} ({tables.fmt_int(csg['params_stored'])} stored parameters, "
                     f"{self.acc(csg)}), best baseline first:"]
            lines += [f"  - {text}" for _, text in sorted(items, key=lambda t: -t[0])]
            lines.append(f"  - In all: {tally['below']} baseline(s) resolved below CSG, {tally['above']} above, and "
                         f"{tally['open']} not resolved from CSG at this number of seeds.")
            out.append("\n".join(lines))
        return out

    def code_dim_tradeoff(self) -> list[str]:
        out = []
        learned = self.csg_rows()
        learned = learned[[(_arg(r, "generator"), _arg(r, "layout"), _arg(r, "policy")) == tuple(CSG_DEFAULTS[k]
                           for k in ("generator", "layout", "policy")) for _, r in learned.iterrows()]]
        if learned.empty or "code_dim" not in learned:
            return out
        for (arch, slice_, _), g in learned.groupby(
                [learned["arch"], learned["slice"].map(python_value), learned["group"].map(self.protocol)], sort=False):
            if g["code_dim"].nunique() < 2:
                continue
            g = g.assign(_d=g["code_dim"].map(python_value)).sort_values("_d")
            steps = "; ".join(f"d = {int(r['_d'])}: {tables.fmt_int(r['params_stored'])} parameters, {self.acc(r)}"
                              for _, r in g.iterrows())
            text = f"Learned CSG on {arch}, slice {_int(slice_)}, by code dimension: {steps}."
            lo, hi = g.iloc[0], g.iloc[-1]
            res = self.contrast(hi["group"], lo["group"])
            text += (f" Going from d = {int(lo['_d'])} to d = {int(hi['_d'])} multiplies the stored parameters by "
                     f"{hi['params_stored'] / lo['params_stored']:.2f} and changes accuracy by {self.fmt(res)}.")
            if len(g) >= 3:
                rho, p = sps.spearmanr(g["_d"], g[f"{HEADLINE}_mean"])
                text += (f" Across the {len(g)} code dimensions, Spearman's ρ between d and mean accuracy is "
                         f"{rho:.2f} (p = {tables.fmt_p(p)}, n = {len(g)} configurations).")
            out.append(text)
        return out

    def twin(self, key: str, value: str, label: str) -> list[str]:
        """Each CSG configuration whose `key` is `value`, against the same configuration with the default."""
        out = []
        for _, r in self.csg_rows().iterrows():
            if _arg(r, key) != value:
                continue
            base = self.partner(r, **{key: CSG_DEFAULTS[key]})
            if base is None:
                out.append(f"CSG {r['variant']} ({r['arch']}): {self.acc(r)}; no {CSG_DEFAULTS[key]} twin ran, so "
                           f"there is nothing to compare it with.")
                continue
            res = self.contrast(r["group"], base["group"])
            verdict = self.verdict(res, f"the {label} is better", f"the {label} costs accuracy")
            out.append(f"CSG {r['variant']} ({r['arch']}; {tables.fmt_int(r['params_stored'])} stored parameters) "
                       f"scores {self.acc(r)} against {self.acc(base)} for {base['variant']} "
                       f"({tables.fmt_int(base['params_stored'])} stored): {value} − {CSG_DEFAULTS[key]} = "
                       f"{self.fmt(res)}; {verdict}.")
        return out

    def paper(self) -> list[str]:
        out = []
        for _, p in self.related("plain network").iterrows():
            csg = self.row(p["csg_group"])
            if _arg(csg, "generator") != "learned" or _arg(csg, "policy") != "authors":
                continue
            arch = csg["arch"]
            rp = self.ref[(self.ref["arch"] == arch) & (self.ref["method"] == "none")]
            rc = self.ref[(self.ref["arch"] == arch) & (self.ref["method"] == "csg")
                          & (self.ref["slice"] == python_value(csg.get("slice")))
                          & (self.ref["code_dim"] == python_value(csg.get("code_dim")))]
            if rp.empty or rc.empty or _arg(csg, "layout") != "contiguous":
                continue
            a_plain, a_csg = float(rp.iloc[0]["accuracy"]), float(rc.iloc[0]["accuracy"])
            ours_rule = p["best_test_acc_mean"] - csg["best_test_acc_mean"]
            ours_head = p[f"{HEADLINE}_mean"] - csg[f"{HEADLINE}_mean"]
            out.append(
                f"{arch}, CSG {csg['variant']}: the authors report plain {a_plain:.2f} and CSG {a_csg:.2f} (one run "
                f"each, best test epoch), a gap of {a_plain - a_csg:.2f} points. By the same rule our means are "
                f"{p['best_test_acc_mean']:.2f} and {csg['best_test_acc_mean']:.2f}, a gap of {ours_rule:.2f}; by "
                f"validation-based selection the gap is {ours_head:.2f}. Ours minus theirs, by their rule: "
                f"{tables.fmt_signed(p['best_test_acc_mean'] - a_plain)} (plain) and "
                f"{tables.fmt_signed(csg['best_test_acc_mean'] - a_csg)} (CSG) points. Levels depend on the training "
                f"length and recipe (see the protocol section); the gap is what the two protocols share.")
        return out

    def thin(self) -> str:
        ns = self.summary["n"].astype(int) if len(self.summary) else pd.Series(dtype=int)
        q = self.comp["q"].dropna() if len(self.comp) and "q" in self.comp else pd.Series(dtype=float)
        text = (f"Of the {self.tested + self.approximated} contrasts above, {self.tested} rest on a t-test (two or more "
                f"seeds on both sides) and {self.approximated} on the pooled-noise approximation ")
        text += (f"(seed-to-seed SD {self.sd:.2f} points, pooled over {self.df} degree(s) of freedom from the "
                 f"configurations that ran several seeds), which assumes every method is as noisy as those. "
                 if self.df else "(unavailable: no configuration ran two seeds). ")
        text += (f"{int((ns == 1).sum())} of {len(ns)} configurations ran a single seed. ")
        if len(q):
            text += (f"Of the {len(q)} t-tests in the method comparison, {int((q < 0.05).sum())} remain below 0.05 after "
                     f"the Benjamini–Hochberg adjustment. ")
        text += ("Differences of a few tenths of a point between single-seed configurations are within the noise, "
                 "so a ranking among them is not evidence; more seeds, not more configurations, would sharpen it.")
        return text


def findings(summary: pd.DataFrame, comp: pd.DataFrame, finished: pd.DataFrame, ref: pd.DataFrame) -> list[str]:
    """Markdown paragraphs for the report's 'What the evidence says' section."""
    if summary.empty:
        return ["No run FINISHED, so there is no evidence yet."]
    ev = Evidence(summary, comp, finished, ref)
    sections = [("CSG against the plain network", ev.against_plain()),
                ("CSG against the baselines at equal parameters", ev.against_baselines()),
                ("Code dimension", ev.code_dim_tradeoff()),
                ("The random-binary generator", ev.twin("generator", "binary", "random-binary generator")),
                ("Block against contiguous layout", ev.twin("layout", "block", "block layout")),
                ("Against the paper", ev.paper())]
    out = []
    for title, paragraphs in sections:
        if paragraphs:
            out.append(f"**{title}.**\n\n" + "\n\n".join(paragraphs))
    if ev.tested + ev.approximated:
        out.append("**How firm this is.** " + ev.thin())
    else:
        out.append("Nothing to compare: no CSG configuration finished beside a plain network, a baseline at its "
                   "budget or a twin configuration.")
    return out
