"""What the evidence says: the report's findings, written from the runs, with their uncertainty.

Every sentence is computed from the FINISHED runs (and `reference/` for the authors' numbers and
logs), so it stays true when the grid or the results change.  Every contrast comes from one model
per experiment, architecture and training length (`analysis.inference`), with a simultaneous 95%
interval over its family; a difference is called resolved only when that interval excludes zero.
Each verdict names the training length it rests on; the paper's claim (within one point) is judged
only for the networks the paper reported; and where a short training budget is known to favour one
side, the verdict says so.
"""
from __future__ import annotations

import math

import pandas as pd

from analysis import inference, reference, stats, tables
from analysis.load import python_value
from analysis.reference import AUTHORS_CSG, AUTHORS_EPOCHS, csg_arg
from study.schema import HEADLINE, method_label

CLAIM_POINTS = 1.0   # the paper's claim: fewer parameters at less than 1% (point) of accuracy
SHORT_BUDGET = 150   # epochs: well short of the authors' (AUTHORS_EPOCHS), where their CSG still lags plain


def _int(v):
    return int(v) if isinstance(v, float) and v.is_integer() else v


def _num(v) -> float:
    v = python_value(v)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


def when(epochs, recipe: str = "") -> str:
    """'at 10 epochs', or 'between 10 and 30 epochs' for a contrast over training lengths; with the
    recipe where that length ran more than one ('at 10 epochs with random flips', `stats.recipes`)."""
    vals = sorted({int(_num(e)) for e in (epochs if isinstance(epochs, (list, tuple)) else [epochs])
                   if not math.isnan(_num(e))})
    if not vals:
        return "at an unknown training length"
    if len(vals) > 1:
        return f"between {vals[0]} and {vals[-1]} epochs"
    return f"at {vals[0]} epochs" + (f" with {recipe}" if recipe else "")


def recipe_of(row) -> str:
    """A comparison row's recipe label ('' where its length ran one recipe)."""
    v = row.get("recipe", "")
    return v if isinstance(v, str) else ""


def apart(row) -> str:
    """'at 10 epochs plain trained in bf16, CSG in fp32' where a comparison row's two sides trained in
    different precisions (`stats.precisions`); '' where they trained in one, or the runs do not say."""
    if not stats.trained_apart(row):
        return ""
    return (f"{when(row['epochs'], recipe_of(row))} {row['method_label']} trained in {row['precision']}, "
            f"CSG in {row['csg_precision']}")


def caution(rows, what: str = "this contrast") -> str:
    """A bold caution where any of the comparison `rows` set two precisions against each other ('' else)."""
    clauses = list(dict.fromkeys(c for c in map(apart, rows) if c))
    if not clauses:
        return ""
    return (f" **Caution: {'; '.join(clauses)}. `precision: auto` resolved differently on the machines these runs "
            f"trained on, so {what} does not separate the method from the arithmetic.**")


def direction(res: dict) -> str:
    """'higher' or 'lower' where the interval excludes zero, 'open' where it spans it, 'none' without one."""
    if math.isnan(res["ci_low"]):
        return "none"
    return "higher" if res["ci_low"] > 0 else "lower" if res["ci_high"] < 0 else "open"


def cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def is_short(epochs) -> bool:
    vals = [_num(e) for e in (epochs if isinstance(epochs, (list, tuple)) else [epochs])]
    return any(v < SHORT_BUDGET for v in vals if not math.isnan(v))


def csg_lag(arch: str) -> str:
    """What the authors' own logs show of CSG against plain early in training, for `arch`'s networks
    (or every network they logged, where they logged none of `arch`)."""
    runs, curves = reference.authors_runs(), reference.authors_curves()
    runs = runs[runs["reuses_generator"] == "no"]
    archs = [arch] if ((runs["arch"] == arch) & (runs["method"] == "csg")).any() else sorted(set(runs["arch"]))
    parts = []
    for a in archs:
        plain = runs[(runs["arch"] == a) & (runs["method"] == "none")]
        if plain.empty:
            continue
        p = curves[curves["run"] == plain.iloc[0]["run"]].set_index("epoch")["test_acc"]
        for _, c in runs[(runs["arch"] == a) & (runs["method"] == "csg")].iterrows():
            q = curves[curves["run"] == c["run"]].set_index("epoch")["test_acc"]
            quarter = int(min(p.index.max(), q.index.max())) // 4
            early = float((p - q).dropna().loc[:quarter].mean())
            end = float(p.max() - q.max())
            parts.append(f"{a} CSG S{int(c['slice'])} d{int(c['code_dim'])} is {abs(early):.1f} points "
                         f"{'behind' if early >= 0 else 'ahead'} on average over their first {quarter} epochs and "
                         f"{abs(end):.2f} {'behind' if end >= 0 else 'ahead'} at their best test epochs")
    return "; ".join(parts)


def dense_phase(row, epochs) -> str:
    """How much of its run a baseline trains above its budget, read from its own arguments ('' if none)."""
    e = _num(epochs)
    frac = {k: _num(row.get(k)) for k in ("start", "end", "prune_at", "decompose_at")}

    def part(f):
        return f"{f:.0%} of training" + ("" if math.isnan(e) else f" ({f * e:g} of {e:g} epochs)")
    method, mode = row.get("method"), python_value(row.get("mode"))
    if method == "prune" and mode == "gradual" and not math.isnan(frac["end"]):
        return (f"it holds more nonzero weights than its budget until {part(frac['end'])}, dense for the first "
                f"{frac['start']:.0%}")
    if method == "prune" and mode == "oneshot" and not math.isnan(frac["prune_at"]):
        return f"it trains dense for the first {part(frac['prune_at'])}"
    if method == "filterprune" and not math.isnan(frac["prune_at"]):
        return f"it trains the unpruned network for the first {part(frac['prune_at'])}"
    if method == "lowrank" and mode == "decompose" and not math.isnan(frac["decompose_at"]):
        return f"it trains the dense network for the first {part(frac['decompose_at'])}"
    return ""


class Evidence:
    def __init__(self, summary: pd.DataFrame, comp: pd.DataFrame, finished: pd.DataFrame, ref: pd.DataFrame):
        self.summary, self.comp, self.finished, self.ref = summary, comp, finished, ref
        self.models = inference.Models(finished, HEADLINE)
        self.protocol = finished.groupby("group")["protocol"].first() if len(finished) else pd.Series(dtype=object)
        self.across = (finished.groupby("group")["across_lengths"].first() if "across_lengths" in finished
                       else pd.Series(dtype=object))
        self.recipe = stats.recipes(finished)  # group -> its recipe in words, where its length ran several
        self.stated: list[dict] = []  # every contrast a sentence states, for the closing tally
        self.trends: list[inference.GapTrend] = []  # the trend models a sentence states, for 'The model'

    # -- one contrast ----------------------------------------------------------------------------
    def state(self, res: dict) -> dict:
        self.stated.append(res)
        return res

    @staticmethod
    def comp_result(row) -> dict:
        """A method-comparison row's contrast (method − CSG), as `inference.Models.family` gives one."""
        return {"estimate": row["diff_vs_csg"], "ci_low": row["diff_ci_low"], "ci_high": row["diff_ci_high"],
                "df": row["df"], "m": row["m"], "resolved": bool(row["resolved"]), "reason": row["reason"],
                "epochs": [row["epochs"]], "recipe": recipe_of(row), "model": row.get("model", "")}

    def from_comp(self, row) -> dict:
        return self.state(self.comp_result(row))

    def family(self, wanted: list[inference.Wanted]) -> list[dict]:
        return [self.state(r) for r in self.models.family(wanted)]

    @staticmethod
    def fmt(res: dict) -> str:
        if math.isnan(res["ci_low"]):
            return f"{tables.fmt_signed(res['estimate'])} points (no interval: {res['reason']})"
        return (f"{tables.fmt_signed(res['estimate'])} points, simultaneous 95% CI [{tables.fmt_signed(res['ci_low'])}, "
                f"{tables.fmt_signed(res['ci_high'])}] (Bonferroni over {int(res['m'])}; {int(res['df'])} residual df)")

    @staticmethod
    def verdict(res: dict, higher: str, lower: str) -> str:
        return {"none": "no verdict without an interval", "higher": f"resolved: {higher}",
                "lower": f"resolved: {lower}", "open": "not resolved (the interval spans zero)"}[direction(res)]

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
            want = {k: changes.get(k, python_value(row.get(k))) for k in ("slice", "code_dim")}
            want.update({k: changes.get(k, csg_arg(row, k)) for k in AUTHORS_CSG})
            have = {k: python_value(other.get(k)) for k in ("slice", "code_dim")}
            have.update({k: csg_arg(other, k) for k in AUTHORS_CSG})
            if have == want:
                return other
        return None

    # -- the findings ------------------------------------------------------------------------------
    def the_models(self) -> list[str]:
        """The models the sentences rest on: one per training length, the model over lengths where a
        sentence states one of its contrasts, and each trend model.  Called after the other findings."""
        used = {r.get("model") for r in self.stated}
        out = []
        for m in self.models.per_length + [m for m in self.models.over_lengths if m.label in used]:
            blocks = "seed(s)" if len(m.epochs) == 1 else "(training length, seed) blocks"
            text = (f"The model for {m.label}: {len(m.data)} runs of {len(m.configs)} configuration(s) over "
                    f"{m.data['seed'].nunique()} {blocks}; ")
            labels = sorted({self.recipe.get(c, "") for c in m.configs} - {""})
            if len(labels) >= 2 and len(m.epochs) == 1:
                text += (f"its configurations ran under {len(labels)} recipes ({'; '.join(labels)}), each seed one "
                         f"block across them; ")
            if m.fit is None:
                out.append(text + f"no interval from it ({m.reason}).")
                continue
            text += f"residual SD {m.sigma:.2f} points on {m.df_resid} residual degrees of freedom."
            if len(m.epochs) == 1:  # the per-length model is the one the spread diagnostic speaks for
                text += " " + self.spread(m)
            out.append(text)
        for t in self.trends:
            text = (f"The trend model for {t.label} (accuracy ~ a level per (training length, seed) block + CSG + "
                    f"CSG × log2 epochs): {len(t.data)} runs over {t.data['block'].nunique()} (training length, seed) "
                    f"blocks; ")
            if t.fit is None:
                out.append(text + f"no interval from it ({t.slope['reason']}).")
            else:
                out.append(text + f"residual SD {t.sigma:.2f} points on {t.df_resid} residual degrees of freedom.")
        return out

    @staticmethod
    def spread(m: inference.Model) -> str:
        s = m.spread()
        if not s["rms"]:
            return ""
        rms = ", ".join(f"{method_label(k)} {v:.2f}" for k, v in s["rms"].items())
        text = f"RMS residual by method (configurations with two or more seeds): {rms}. "
        if math.isnan(s["p"]):
            return text + ("Whether the spread differs between methods is not testable here: no two methods have two "
                           "or more residual degrees of freedom of their own (k seeds of a configuration give k − 1), "
                           "so the model's single residual variance is an assumption these runs cannot check.")
        text += (f"Brown–Forsythe test (Levene's, about the median) of equal spread across "
                 f"{', '.join(method_label(k) for k in s['tested'])}: W = {s['statistic']:.2f}, "
                 f"p = {tables.fmt_p(s['p'])}.")
        if s["flag"]:
            text += (" **Flag: the residual spread differs between methods, so the pooled model's equal-variance "
                     "assumption is in doubt: intervals involving the noisier methods are too narrow, and those of "
                     "the quieter ones too wide.**")
        return text

    def reported(self) -> str:
        """The networks of this grid's architectures the paper reported, for the claim's scope."""
        archs = set(self.csg_rows()["arch"])
        rows = self.ref[(self.ref["method"] == "csg") & self.ref["arch"].isin(archs)]
        return ", ".join(f"{r['arch']} CSG S{int(r['slice'])} d{int(r['code_dim'])}" for _, r in rows.iterrows())

    def against_plain(self) -> list[str]:
        rows = self.related("plain network")
        if rows.empty:
            return []
        out = []
        scope = self.reported()
        intro = (f"All CSG configurations against the plain network form one family per model. The paper's claim "
                 f"(a loss under {CLAIM_POINTS:g} point at about half the parameters) is judged only for the networks "
                 "it reported, with the authors' contiguous layout, learned generator and converted layers"
                 + (f" ({scope} here)" if scope else " (none of this grid's)") + "; the others get their difference "
                 "and its interval.")
        short = [a for a in sorted(set(rows["arch"])) if is_short(rows.loc[rows["arch"] == a, "epochs"].tolist())]
        lags = list(dict.fromkeys(lag for lag in map(csg_lag, short) if lag))  # once per network they logged
        if lags:
            intro += (f" A short budget favours the plain network: the authors trained for about {AUTHORS_EPOCHS} "
                      f"epochs, and in their own logs {'; '.join(lags)}.")
        out.append(intro)
        for _, p in rows.iterrows():
            csg = self.row(p["csg_group"])
            res = self.from_comp(p)
            text = (f"{cap(when(p['epochs'], recipe_of(p)))}, CSG {csg['variant']} ({csg['arch']}) stores "
                    f"{tables.fmt_int(csg['params_stored'])} parameters, "
                    f"{tables.fmt_fewer(p['params_total'], csg['params_stored'])} than the plain network's "
                    f"{tables.fmt_int(p['params_total'])}, and scores {self.acc(csg)} against plain {self.acc(p)}. "
                    f"Plain − CSG = {self.fmt(res)}; {self.verdict(res, 'plain is better', 'CSG is better')}")
            text += " (a short budget favours plain: see above)." if is_short(p["epochs"]) else "."
            text += caution([p])
            if reference.authors_row(self.ref, csg) is not None:
                text += f" The paper's claim for this network, a loss under {CLAIM_POINTS:g} point, {self.claim(res)}."
            out.append(text)
        return out

    def recipe_check(self) -> list[str]:
        """Plain − CSG under each recipe run at one training length, and how much the recipe moves it: the
        difference of the gaps, (plain − CSG) with the study's recipe − (plain − CSG) with the other, a
        contrast of that length's model over the four configurations (one family).

        The study's recipe is the one its longest runs used (the headline): the pair linked across
        lengths (`across_lengths`) to the longest length, or to the most lengths.  Where nothing tells
        the recipes apart that way, the first in the order of their labels is taken and not named as the
        study's."""
        rows = self.related("plain network")
        if rows.empty or not any(recipe_of(r) for _, r in rows.iterrows()):
            return []
        exp = (self.finished.groupby("group")["experiment"].first() if "experiment" in self.finished
               else pd.Series(dtype=object))
        rows = rows.assign(_x=rows["csg_group"].map(exp).astype(str), _e=rows["epochs"].map(_num),
                           _pair=[(self.across.get(a), self.across.get(b))
                                  for a, b in zip(rows["group"], rows["csg_group"])])
        checks = []
        for (_, arch), g in rows.groupby(["_x", "arch"], sort=False):
            longest = g["_e"].max()
            spans: dict[tuple, set] = {}  # the lengths each pair of configurations (one recipe) ran at
            for pair, e in zip(g["_pair"], g["_e"]):
                spans.setdefault(pair, set()).add(e)
            for _, same in g.groupby(["_e", "csg_variant", "variant"], sort=False):
                if same["recipe"].nunique() < 2:
                    continue
                score = {i: (longest in spans[r["_pair"]], len(spans[r["_pair"]])) for i, r in same.iterrows()}
                order = sorted(same.index, key=lambda i: (not score[i][0], -score[i][1], same.at[i, "recipe"]))
                named = score[order[0]] != score[order[1]] and score[order[0]][0] and longest > same["_e"].iloc[0]
                checks.append((same.loc[order[0]], [same.loc[i] for i in order[1:]], named, longest))
        results = iter(self.family([inference.gap_change(new["group"], new["csg_group"], old["group"], old["csg_group"])
                                    for new, olds, _, _ in checks for old in olds]))
        out = []
        for new, olds, named, longest in checks:
            at = when(new["epochs"])
            gaps = "; ".join(
                f"with {recipe_of(r)}" + (f" (the recipe of the study's longest runs, {int(longest)} epochs)"
                                          if named and r is new else "") + f", {self.fmt(self.comp_result(r))}"
                for r in [new, *olds])
            text = (f"{cap(at)}, CSG {new['csg_variant']} ({new['arch']}) against plain under {1 + len(olds)} recipes. "
                    f"Plain − CSG under each, from that length's model (as under CSG against the plain network): "
                    f"{gaps}.")
            for old in olds:
                res = next(results)
                a, b = recipe_of(new), recipe_of(old)
                text += (f" The difference of the gaps, (plain − CSG with {a}) − (plain − CSG with {b}), from the "
                         f"model for {res['model']}, which holds all four configurations: {self.fmt(res)}; "
                         f"{self.recipe_verdict(res, a, b, at)}.")
            out.append(text + caution([new, *olds], "the difference of the gaps"))
        return out

    @staticmethod
    def recipe_verdict(res: dict, new: str, old: str, at: str) -> str:
        """Whom the recipe with `new` favours against the one with `old`, from the difference of the gaps."""
        d = direction(res)
        lo, hi = res["ci_low"], res["ci_high"]
        if d == "none":
            return "no verdict without an interval"
        if d == "higher":
            return (f"resolved: {at} the recipe with {new} favours plain against the one with {old}, raising "
                    f"plain − CSG by {lo:.2f} to {hi:.2f} points")
        if d == "lower":
            return (f"resolved: {at} the recipe with {new} favours CSG against the one with {old}, lowering "
                    f"plain − CSG by {-hi:.2f} to {-lo:.2f} points")
        return (f"not resolved (the interval spans zero): {at} these runs do not show the recipe favouring either "
                f"network, which is not evidence that it favours neither: the interval allows the recipe with {new}, "
                f"against the one with {old}, to favour plain by up to {hi:.2f} points or CSG by up to {-lo:.2f}")

    @staticmethod
    def claim(res: dict) -> str:
        at = when(res["epochs"], res.get("recipe", ""))
        if math.isnan(res["ci_high"]):
            return f"cannot be judged {at} without an interval"
        if res["ci_high"] < CLAIM_POINTS:
            return f"is supported {at}: the whole interval lies below {CLAIM_POINTS:g} point"
        if res["ci_low"] >= CLAIM_POINTS:
            return f"is contradicted {at}: the whole interval lies above {CLAIM_POINTS:g} point"
        return f"is neither confirmed nor ruled out {at}: the interval straddles {CLAIM_POINTS:g} point"

    def against_baselines(self) -> list[str]:
        out = []
        for csg_group, m in self.related("matched budget").groupby("csg_group", sort=False):
            csg = self.row(csg_group)
            epochs, at = m.iloc[0]["epochs"], when(m.iloc[0]["epochs"], recipe_of(m.iloc[0]))
            items, tally = [], {"higher": 0, "lower": 0, "open": 0, "none": 0}
            for _, b in m.iterrows():
                res = self.from_comp(b)
                v = self.verdict(res, "above CSG", "below CSG")
                tally[direction(res)] += 1
                base = self.row(b["group"])
                which = b["which_variant"]
                dense = dense_phase(base, epochs)
                items.append((res["estimate"], f"{b['method_label']}" + (f", variant '{which}'" if which else "")
                              + f" ({b['variant']}; matched on {b['budget_count']}: {tables.fmt_int(b['params_counted'])}, "
                                f"leaves out {tables.leaves_out(b)}): {self.acc(b)}, method − CSG = {self.fmt(res)}; {v}"
                              + (f"; {dense}" if dense else "") + "." + caution([b])))
            lines = [f"{cap(at)}, at the budget of CSG {csg['variant']} "
                     f"({tables.fmt_int(csg['params_stored'])} stored parameters, {self.acc(csg)}), best baseline first "
                     f"(one family):"]
            lines += [f"  - {text}" for _, text in sorted(items, key=lambda t: -t[0])]
            total = (f"  - In all {at}: {tally['lower']} baseline(s) resolved below CSG, {tally['higher']} "
                     f"above, {tally['open']} not resolved from CSG" + (f", and {tally['none']} without an interval"
                                                                         if tally["none"] else "") + ".")
            if is_short(epochs):
                total += (" A short budget favours the baselines: CSG lags plain early in the authors' own logs (see "
                          "CSG against the plain network), and a baseline that prunes part-way trains above its "
                          "budget until then (noted beside it).")
            lines.append(total)
            out.append("\n".join(lines))
        return out

    def code_dim_tradeoff(self) -> list[str]:
        learned = self.csg_rows()
        learned = learned[[all(csg_arg(r, k) == v for k, v in AUTHORS_CSG.items()) for _, r in learned.iterrows()]]
        if learned.empty or "code_dim" not in learned:
            return []
        sweeps = []
        for _, g in learned.groupby([learned["arch"], learned["slice"].map(python_value),
                                     learned["group"].map(self.protocol)], sort=False):
            if g["code_dim"].nunique() >= 2:
                g = g.assign(_d=g["code_dim"].map(python_value)).sort_values("_d")
                sweeps.append(g)
        results = self.family([inference.difference(g.iloc[-1]["group"], g.iloc[0]["group"]) for g in sweeps])
        out = []
        for g, res in zip(sweeps, results):
            lo, hi = g.iloc[0], g.iloc[-1]
            steps = "; ".join(f"d = {int(r['_d'])}: {tables.fmt_int(r['params_stored'])} parameters, {self.acc(r)}"
                              for _, r in g.iterrows())
            at = when(res["epochs"], self.recipe.get(lo["group"], ""))
            text = (f"{cap(at)}, learned CSG on {lo['arch']}, slice {_int(python_value(lo['slice']))}, "
                    f"by code dimension: {steps}. Going from d = {int(lo['_d'])} to d = {int(hi['_d'])} multiplies the "
                    f"stored parameters by {hi['params_stored'] / lo['params_stored']:.2f} and changes accuracy by "
                    f"{self.fmt(res)}; {self.verdict(res, 'the larger code is better', 'the smaller code is better')}.")
            if len(g) >= 3:
                sp = inference.spearman(g["_d"], g[f"{HEADLINE}_mean"])
                how = "exact permutation p" if sp["exact"] else "permutation p (9,999 orderings)"
                text += (f" Across the {len(g)} code dimensions, Spearman's ρ between d and mean accuracy is "
                         f"{sp['rho']:.2f} ({how} = {tables.fmt_p(sp['p'])}, n = {len(g)} configurations).")
            out.append(text)
        return out

    def twin(self, key: str, value: str, label: str, count: str = "stored") -> list[str]:
        """Each CSG configuration whose `key` is `value`, against the same configuration with the default.
        `count` is the parameter count each side is stated with: 'stored', or 'trainable' where the two
        sides store alike and differ in what they train (a reused generator)."""

        def size(r) -> str:
            said = (f"trains {tables.fmt_int(r['params_trainable'])} of {tables.fmt_int(r['params_total'])} parameters"
                    if count == "trainable" else f"{tables.fmt_int(r['params_stored'])} stored parameters")
            frozen = _num(r.get("params_frozen"))
            if frozen > 0:  # (nan where unlogged) how much of the network the frozen generator is decides how harsh it is
                said += (f"; its frozen generator, {tables.fmt_int(frozen)} parameters, is "
                         f"{100 * frozen / _num(r['params_total']):.1f}% of the network")
            return said
        pairs, lonely = [], []
        for _, r in self.csg_rows().iterrows():
            if csg_arg(r, key) != value:
                continue
            base = self.partner(r, **{key: AUTHORS_CSG[key]})
            if base is None:
                lonely.append(r)
            else:
                pairs.append((r, base))
        out = [f"CSG {r['variant']} ({r['arch']}): {self.acc(r)}; no {AUTHORS_CSG[key]} twin ran, so there is "
               f"nothing to compare it with." for r in lonely]
        results = self.family([inference.difference(r["group"], base["group"]) for r, base in pairs])
        for (r, base), res in zip(pairs, results):
            verdict = self.verdict(res, f"the {label} is better", f"the {label} costs accuracy")
            at = when(res["epochs"], self.recipe.get(r["group"], ""))
            out.append(f"{cap(at)}, CSG {r['variant']} ({r['arch']}; {size(r)}) scores {self.acc(r)} against "
                       f"{self.acc(base)} for {base['variant']} ({size(base)}): "
                       f"{value} − {AUTHORS_CSG[key]} = {self.fmt(res)}; {verdict}.")
        return out

    def across_lengths(self) -> list[str]:
        """How CSG's gaps change with the training length, where the grid ran one recipe at several lengths:
        against plain, the gap at each length and its trend in log epochs; against a baseline, the change
        of the gap from each length to the next."""
        out = []
        for series in stats.length_series(self.comp, self.finished):
            out += self.gap_trend(series)
        wanted, labels = [], []
        for g in stats.length_series(self.comp, self.finished, "matched budget"):
            for (_, short), (_, long) in zip(g.iloc[:-1].iterrows(), g.iloc[1:].iterrows()):
                wanted.append(inference.gap_change(long["group"], long["csg_group"], short["group"], short["csg_group"]))
                labels.append((long, short))

        def sentence(long, short, res) -> str:
            who = long["method_label"]
            trend = self.verdict(res, "the gap widens with training", "the gap narrows with training")
            return (f"{cap(when([short['epochs'], long['epochs']]))}, CSG {long['csg_variant']} ({long['arch']}) "
                    f"against {who}: ({who} − CSG) {when(long['epochs'], recipe_of(long))} minus "
                    f"{when(short['epochs'], recipe_of(short))} = "
                    f"{self.fmt(res)}; {trend}." + caution([short, long], "this change of the gap"))
        return out + [sentence(long, short, res) for (long, short), res in zip(labels, self.family(wanted))]

    def gap_trend(self, series: pd.DataFrame) -> list[str]:
        """Plain − CSG at each training length of one recipe, its line in log2(epochs) and where the line
        puts the gap at the authors' training length."""
        first = series.iloc[0]
        csg = self.row(first["csg_group"])
        gaps = [self.comp_result(r) for _, r in series.iterrows()]  # stated already, under CSG against plain
        lengths = [int(_num(e)) for e in series["epochs"]]
        per_length = "; ".join(f"{when(e, res['recipe'])}, {self.fmt(res)}, "
                               f"{self.verdict(res, 'plain is better', 'CSG is better')}"
                               for e, res in zip(lengths, gaps))
        out = [f"CSG {csg['variant']} ({csg['arch']}) against plain, one recipe at {len(lengths)} training lengths "
               f"(the warm-up at the same share of each run). Plain − CSG at each length, from that length's model "
               f"(as under CSG against the plain network): {per_length}."]
        trend = stats.gap_trend(series, self.finished, AUTHORS_EPOCHS)
        self.trends.append(trend)
        slope, at = self.state(trend.slope), self.state(trend.gap_at)
        text = (f"{cap(when(trend.epochs))}, the gap as a straight line in log2(epochs), from one model over these "
                f"{len(trend.data)} runs (accuracy ~ a level per (training length, seed) block + CSG + CSG × log2 "
                f"epochs; its two contrasts, the slope and the gap at {AUTHORS_EPOCHS} epochs, one family): the gap's "
                f"change per doubling of the epochs is {self.fmt(slope)}; {self.trend_verdict(slope, gaps)}.")
        if len(trend.epochs) == 2:
            text += (" With two lengths the line runs through both gaps, so that the gap is straight in log epochs "
                     "is assumed, not tested.")
        longest = max(trend.epochs)
        text += (f" Extrapolated along that line to the authors' {AUTHORS_EPOCHS} epochs "
                 f"({AUTHORS_EPOCHS / longest:.3g} times our longest run, on a log scale, from runs of at most {longest} "
                 f"epochs: nothing here checks that the line holds beyond them), plain − CSG = {self.fmt(at)}; "
                 f"{self.verdict(at, 'the line puts plain ahead there', 'the line puts CSG ahead there')}.")
        theirs = reference.authors_accuracies(self.ref, csg)
        if theirs is not None:
            text += " " + self.against_authors_gap(at, *theirs)
        out.append(text + caution([r for _, r in series.iterrows()], "the line"))
        return out

    @staticmethod
    def trend_verdict(slope: dict, gaps: list[dict]) -> str:
        """The slope's verdict, in words that hold whatever the signs: whose lead narrows or widens is said
        only where every length's gap has the same sign."""
        d = direction(slope)
        if d == "none":
            return "no verdict without an interval"
        if d == "open":
            return "not resolved (the interval spans zero): these lengths do not show the gap changing with training"
        falls = d == "lower"
        text = f"resolved: plain − CSG {'falls' if falls else 'rises'} as training lengthens"
        signs = {math.copysign(1, g["estimate"]) for g in gaps if not math.isnan(g["estimate"]) and g["estimate"] != 0}
        if signs == {1.0}:
            text += f", so plain's lead {'narrows' if falls else 'widens'}"
        elif signs == {-1.0}:
            text += f", so CSG's lead {'widens' if falls else 'narrows'}"
        return text

    @staticmethod
    def against_authors_gap(at: dict, plain: float, csg: float) -> str:
        gap = plain - csg
        theirs = (f"The authors' gap at {AUTHORS_EPOCHS} epochs, {plain:.2f} − {csg:.2f} = {gap:.2f} points (one run "
                  f"each, their recipe, best test epoch rather than our validation-selected epoch)")
        if math.isnan(at["ci_low"]):
            return theirs + " cannot be set against the line without an interval."
        if gap > at["ci_high"]:
            return theirs + " lies above the interval: the line predicts a smaller gap than theirs."
        if gap < at["ci_low"]:
            return theirs + " lies below the interval: the line predicts a larger gap than theirs."
        return theirs + " lies inside the interval: the line is consistent with their gap."

    def paper(self) -> list[str]:
        out = []
        for _, p in self.related("plain network").iterrows():
            csg = self.row(p["csg_group"])
            rc = reference.authors_row(self.ref, csg)
            rp = reference.authors_row(self.ref, {"arch": csg["arch"], "method": "none"})
            if rc is None or rp is None:
                continue
            a_plain, a_csg = float(rp["accuracy"]), float(rc["accuracy"])
            ours_rule = p["best_test_acc_mean"] - csg["best_test_acc_mean"]
            ours_head = p[f"{HEADLINE}_mean"] - csg[f"{HEADLINE}_mean"]
            out.append(
                f"{cap(when(p['epochs'], recipe_of(p)))} (the authors': about {AUTHORS_EPOCHS}), {csg['arch']}, "
                f"CSG {csg['variant']}: the authors report plain {a_plain:.2f} and CSG {a_csg:.2f} (one "
                f"run each, best test epoch), a gap of {a_plain - a_csg:.2f} points. By the same rule our means are "
                f"{p['best_test_acc_mean']:.2f} and {csg['best_test_acc_mean']:.2f}, a gap of {ours_rule:.2f}; by "
                f"validation-based selection the gap is {ours_head:.2f}. Ours minus theirs, by their rule: "
                f"{tables.fmt_signed(p['best_test_acc_mean'] - a_plain)} (plain) and "
                f"{tables.fmt_signed(csg['best_test_acc_mean'] - a_csg)} (CSG) points. Levels depend on the training "
                f"length and recipe (see the protocol section); the gap is what the two protocols share.")
        return out

    def thin(self) -> str:
        ns = self.summary["n"].astype(int) if len(self.summary) else pd.Series(dtype=int)
        with_interval = [r for r in self.stated if not math.isnan(r["ci_low"])]
        resolved = sum(bool(r["resolved"]) for r in with_interval)
        text = (f"Of the {len(self.stated)} contrasts above, {len(with_interval)} have an interval from the model and "
                f"{resolved} of those are resolved; {len(self.stated) - len(with_interval)} are without one. ")
        text += (f"{int((ns == 1).sum())} of {len(ns)} configurations ran a single seed: the model reads that seed's "
                 f"effect off the configurations that ran it, so their contrasts are estimated, with wider intervals "
                 f"than a second seed would give. ")
        text += ("Intervals are simultaneous within each family (Bonferroni), so a family with more contrasts has "
                 "wider ones; more seeds, not more configurations, would sharpen them.")
        return text


def findings(summary: pd.DataFrame, comp: pd.DataFrame, finished: pd.DataFrame, ref: pd.DataFrame) -> list[str]:
    """Markdown paragraphs for the report's 'What the evidence says' section."""
    if summary.empty:
        return ["No run FINISHED, so there is no evidence yet."]
    ev = Evidence(summary, comp, finished, ref)
    sections = [("CSG against the plain network", ev.against_plain()),
                ("The recipe against another at the same length", ev.recipe_check()),
                ("CSG against the baselines at equal parameters", ev.against_baselines()),
                ("Code dimension", ev.code_dim_tradeoff()),
                ("The random-binary generator", ev.twin("generator", "binary", "random-binary generator")),
                ("Generator reuse", ev.twin("generator", "reuse", "reused generator", count="trainable")),
                ("Block against contiguous layout", ev.twin("layout", "block", "block layout")),
                ("Across training lengths", ev.across_lengths()),
                ("Against the paper", ev.paper())]
    sections.insert(0, ("The model", ev.the_models()))  # last: it lists the models the sentences above used
    out = []
    for title, paragraphs in sections:
        if paragraphs:
            out.append(f"**{title}.**\n\n" + "\n\n".join(paragraphs))
    if ev.stated:
        out.append("**How firm this is.** " + ev.thin())
    else:
        out.append("Nothing to compare: no CSG configuration finished beside a plain network, a baseline at its "
                   "budget or a twin configuration.")
    return out
