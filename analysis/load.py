"""MLflow runs -> pandas: one tidy row per run, and a long frame of per-epoch metrics.

The training code logs (the names are `study.schema`'s, the only module of `study` read here):
- params: every `RunConfig` field, flattened, with the method's own arguments beside them, plus
  `budget_count`, `knob` and `precision_used`;
- per-epoch metrics (step = epoch, 1-based), final single-value metrics, and, at run start, the
  parameter breakdown by role (`breakdown_*`);
- tags: `config_hash`, `git_commit`, `device`, `torch_version`, `precision`, `grid`, `arch`, `method`,
  `failure_reason` on failure, and the labels: `config_keys` (which params are config fields),
  `method_label`, `variant`, `variant_name`.  Runs logged before the labels and the breakdown existed
  get them from `python -m study backfill-metadata`.

Params arrive as strings; they are parsed back into ints, floats and bools column by column.  Runs
that share every config value except the seed form one *group* (a configuration); statistics are
taken over the seeds of a group, and only FINISHED runs enter them (`finished`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]

from study.schema import (ARCH_ORDER, CONFIG_KEYS_TAG, EPOCH_METRICS, FINAL_METRICS,
                          MANIFEST_EXTRA, METHOD_LABEL_TAG, METHOD_ORDER, TAGS, VARIANT_NAME_TAG, VARIANT_TAG,
                          args_from_variant, default_tracking_uri, method_label, parse_value)
from study import schema

# never part of a configuration's identity: the seed varies within a group, the rest is bookkeeping (a
# reused generator's source config hash changes with the seed too: `generator_from` names its group)
NOT_IN_GROUP = {"seed", "name", "precision_used", "workers", "generator_from_hash"}
# arguments that may name another run: its budget (`target_params`) or its generator's source
NAMES_A_RUN = ("target_params", "generator_from")
# config fields that describe the training protocol (what must match for two methods to be compared)
NOT_PROTOCOL = {"arch", "method", "method_args", "target_params", "seed", "name", "workers", "compile",
                "channels_last", "precision"}

# the config fields a manifest.csv lists (in `RunConfig`'s order), for a report regenerated from one
MANIFEST_CONFIG = ["arch", "method", "target_params", "seed", "epochs"]
# and the training settings it lists beside them: every config field of the protocol (not in NOT_PROTOCOL)
# but `epochs`, which a FINISHED run's `epochs_completed` gives.  Without them a report regenerated from
# the manifest could not tell two recipes at one training length apart (a manifest written before they
# were listed still loads, with the caveats `from_manifest` states)
MANIFEST_RECIPE = ["batch_size", "lr", "momentum", "nesterov", "weight_decay", "schedule", "milestones", "gamma",
                   "warmup_epochs", "label_smoothing", "ema_decay", "no_decay_norm_bias", "val_size", "train_subset",
                   "test_subset", "flip", "image_size"]


class AnalysisError(ValueError):
    """A problem with the user's arguments or store: reported as one line, exit status 2."""


def config_keys(tagged: list) -> list[str]:
    """The config fields, in field order, from the runs' `config_keys` tags (JSON lists; None where a
    run has none): the longest list first, then what the others add."""
    lists = sorted((json.loads(t) for t in tagged if t), key=len, reverse=True)
    out: list[str] = []
    for keys in lists:
        out += [k for k in keys if k not in out]
    return out


def _quiet_mlflow() -> None:
    for name in ("alembic", "mlflow", "mlflow.store", "mlflow.tracking"):
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def _check_store_exists(uri: str) -> None:
    """Refuse to read a store that is not there (MLflow would silently create an empty one)."""
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite":
        path = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else parsed.path
        if path and path != ":memory:" and not Path(path).exists():
            raise AnalysisError(f"no MLflow store at {uri} (file {path} does not exist)")
    elif parsed.scheme in ("", "file"):
        path = parsed.path if parsed.scheme == "file" else uri
        if not Path(path).is_dir():
            raise AnalysisError(f"no MLflow store at {uri} (directory {path} does not exist)")


def logged_to(exps, names: set[str], uri: str) -> str:
    """The store the runs were logged to: `uri`, unless they were loaded there from a portable export
    (`python -m analysis load-study`), whose experiments name the store they came from."""
    sources = {e.tags.get(schema.SOURCE_TAG) for e in exps if e.name in names}
    return sources.pop() if len(sources) == 1 and None not in sources else uri


# -- parsing params back into types (`study.schema.parse_value`) ----------------------------------
def typed_column(values: list) -> pd.Series:
    """One column of raw param strings -> the narrowest dtype every present value fits."""
    parsed = [parse_value(v) for v in values]
    present = [v for v in parsed if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return pd.Series(parsed, dtype="boolean")
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return pd.Series(parsed, dtype="Int64")
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return pd.Series([np.nan if v is None else float(v) for v in parsed], dtype="float64")
    return pd.Series([None if p is None else str(v) for v, p in zip(values, parsed)], dtype="object")


def python_value(v):
    """A frame cell as a plain Python value (for building models and for JSON)."""
    if v is None or v is pd.NA:
        return None
    if isinstance(v, float) and np.isnan(v):
        return None
    if isinstance(v, (np.bool_, bool)):
        return bool(v)
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        return float(v)
    return v


# -- loading --------------------------------------------------------------------------------------
@dataclass
class Runs:
    """Everything the analysis reads from one store."""
    tracking_uri: str
    experiments: list[str]
    runs: pd.DataFrame                     # one row per run, every status
    epochs: pd.DataFrame                   # long: run_id, metric, epoch, value
    param_columns: list[str] = field(default_factory=list)
    config_columns: list[str] = field(default_factory=list)  # the config fields among them, in field order
    method_arg_columns: list[str] = field(default_factory=list)
    duplicates: pd.DataFrame = field(default_factory=pd.DataFrame)  # finished runs superseded by a later one
    manifest: str = ""                     # the manifest.csv the runs were read from (`from_manifest`), if any

    @property
    def finished(self) -> pd.DataFrame:
        return finished(self.runs)

    @property
    def not_finished(self) -> pd.DataFrame:
        return self.runs[self.runs["status"] != "FINISHED"]


def finished(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs that enter statistics: FINISHED, and not superseded by a later run of the same seed."""
    keep = (runs["status"] == "FINISHED") & ~runs["superseded"].astype(bool)
    return runs[keep]


def _client(uri: str):
    from mlflow.tracking import MlflowClient  # mlflow sets its loggers up on import: quiet them after

    _quiet_mlflow()
    return MlflowClient(tracking_uri=uri)


def _experiments(client, name: str | None):
    from mlflow.entities import ViewType

    exps = client.search_experiments(view_type=ViewType.ACTIVE_ONLY)
    if name is not None:
        match = [e for e in exps if e.name == name]
        if not match:
            names = ", ".join(sorted(e.name for e in exps)) or "none"
            raise AnalysisError(f"no experiment named {name!r} in the store; available: {names}")
        return match
    return sorted(exps, key=lambda e: e.name)


def _search_runs(client, experiment_ids: list[str]):
    from mlflow.entities import ViewType

    runs, token = [], None
    while True:
        page = client.search_runs(experiment_ids, run_view_type=ViewType.ACTIVE_ONLY, max_results=1000,
                                  order_by=["attributes.start_time ASC"], page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _group_key(params: dict[str, str], name_to_key: dict[str, str] | None = None) -> str:
    d = {k: v for k, v in params.items() if k not in NOT_IN_GROUP}
    for key in NAMES_A_RUN:
        other = d.get(key)
        if other is None or parse_value(other) is None or isinstance(parse_value(other), (int, float)):
            continue
        # another run's name carries its seed, its group does not
        d[key] = "group:" + name_to_key[other] if name_to_key and other in name_to_key else schema.without_seed(other)
    canon = {k: (None if parse_value(v) is None else str(v)) for k, v in d.items()}
    return hashlib.sha256(json.dumps(canon, sort_keys=True).encode()).hexdigest()[:10]


def without_length(settings: dict) -> dict:
    """A configuration's settings (as param strings) with its training length taken out, for `across_lengths`.

    `epochs` goes, and the warm-up becomes its fraction of the run: a grid that keeps the warm-up at a
    fixed share (2 of 10, 4 of 20, 8 of 40 epochs) runs one recipe at several lengths, while any other
    change of setting (another flip, another learning rate) is another recipe and keeps its runs apart.
    """
    out = {k: v for k, v in settings.items() if k not in ("epochs", "warmup_epochs")}
    if "warmup_epochs" in settings:
        w, e = parse_value(settings["warmup_epochs"]), parse_value(settings.get("epochs"))
        numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (w, e))
        # the fraction at 6 significant digits: 2/10 and 8/40 must give the same text
        out["warmup_fraction"] = f"{w / e:.6g}" if numeric and e else settings["warmup_epochs"]
    return out


def load(tracking_uri: str | None = None, experiment: str | None = None, history: bool = True) -> Runs:
    """Read every run of `experiment` (default: every experiment that has runs) from the store."""
    uri = tracking_uri or default_tracking_uri()
    _check_store_exists(uri)
    client = _client(uri)
    try:
        exps = _experiments(client, experiment)
    except AnalysisError:
        raise
    except Exception as e:  # an unreadable store: say what, not how
        raise AnalysisError(f"cannot read the MLflow store at {uri}: {type(e).__name__}: {e}".splitlines()[0]) from e
    by_id = {e.experiment_id: e.name for e in exps}
    raw = _search_runs(client, list(by_id)) if by_id else []
    if not raw:
        where = f"experiment {experiment!r}" if experiment else f"the store {uri}"
        raise AnalysisError(f"no runs in {where}")

    tagged = [r.data.tags.get(CONFIG_KEYS_TAG) for r in raw]
    cfg_order = config_keys(tagged)
    if not cfg_order:
        raise AnalysisError(f"the runs in {uri} were logged before runs carried their labels and parameter "
                            f"breakdown: add them with `python -m study backfill-metadata --tracking-uri {uri}`")
    cfg_keys = set(cfg_order)
    rows, params_per_run = [], []
    for r in raw:
        p = dict(r.data.params)
        params_per_run.append(p)
        tags = r.data.tags
        own = set(json.loads(tags[CONFIG_KEYS_TAG])) if tags.get(CONFIG_KEYS_TAG) else cfg_keys
        row = {
            "run_id": r.info.run_id,
            "experiment": by_id.get(r.info.experiment_id, r.info.experiment_id),
            "run_name": r.info.run_name or tags.get("mlflow.runName", ""),
            "status": r.info.status,
            "start_time": r.info.start_time,
            "end_time": r.info.end_time,
            "method_args": json.dumps(schema.method_arg_keys(p, own)),
            **{f"tag_{t}": tags.get(t) for t in (METHOD_LABEL_TAG, VARIANT_TAG)},
            VARIANT_NAME_TAG: tags.get(VARIANT_NAME_TAG, ""),
        }
        for t in TAGS:
            if t in ("arch", "method", "precision"):
                row[f"tag_{t}"] = tags.get(t)
            else:
                row[t] = tags.get(t)
        rows.append(row)
    runs = pd.DataFrame(rows)

    # params: one typed column each (union over runs; a run without a key gets a missing value)
    param_cols = sorted({k for p in params_per_run for k in p})
    for k in param_cols:
        col = typed_column([p.get(k) for p in params_per_run])
        runs[k if k not in runs.columns else f"param_{k}"] = col.values
    # final metrics under their own names; any other single-value metric too, unless a param has the name.
    # Per-epoch metrics (e.g. `lr`, also a param) live in the epochs frame, not here.
    extra = sorted({m for r in raw for m in r.data.metrics} - set(FINAL_METRICS) - set(EPOCH_METRICS))
    for m in FINAL_METRICS + extra:
        runs[m if m not in runs.columns else f"metric_{m}"] = [r.data.metrics.get(m, np.nan) for r in raw]
    for k in ("arch", "method"):
        if k not in runs.columns:
            runs[k] = runs[f"tag_{k}"]
        else:
            runs[k] = runs[k].where(runs[k].notna(), runs[f"tag_{k}"])
    if "seed" not in runs.columns:
        runs["seed"] = pd.Series([pd.NA] * len(runs), dtype="Int64")
    runs["failure_reason"] = runs["failure_reason"].fillna("")
    method_arg_cols = schema.method_arg_keys(param_cols, cfg_keys)

    # groups: identical config except the seed; a name-valued budget points at its run's group
    name_to_key: dict[str, str] = {}
    for p, name in zip(params_per_run, runs["run_name"]):
        name_to_key[p.get("name") or name] = _group_key(p)
    runs["group"] = [_group_key(p, name_to_key) for p in params_per_run]
    runs["protocol"] = [_group_key({k: v for k, v in p.items() if k in cfg_keys and k not in NOT_PROTOCOL})
                        for p in params_per_run]
    # the same configuration at another training length (the warm-up as its share of the run): how a gap
    # changes with the length is a contrast
    runs["across_lengths"] = [_group_key(without_length(p), name_to_key) for p in params_per_run]
    runs["method_label"] = [t or method_label(m) for t, m in zip(runs[f"tag_{METHOD_LABEL_TAG}"], runs["method"])]
    runs["variant"] = [row[f"tag_{VARIANT_TAG}"] or variant_label(row, json.loads(row["method_args"]))
                       for _, row in runs.iterrows()]
    runs = runs.drop(columns=[f"tag_{METHOD_LABEL_TAG}", f"tag_{VARIANT_TAG}"])
    runs["epochs_completed"] = np.nan

    # a configuration and seed run twice (a re-run grid): the latest FINISHED run counts
    runs["superseded"] = False
    fin = runs[runs["status"] == "FINISHED"].sort_values(["start_time", "run_id"])
    dup = fin.duplicated(subset=["group", "seed"], keep="last")
    runs.loc[dup[dup].index, "superseded"] = True

    runs = sort_runs(runs).reset_index(drop=True)

    epochs = _history(client, runs) if history else pd.DataFrame(columns=["run_id", "metric", "epoch", "value"])
    if len(epochs):
        done = epochs[epochs["metric"].isin(["val_acc", "test_acc", "train_loss"])].groupby("run_id")["epoch"].max()
        runs["epochs_completed"] = runs["run_id"].map(done)
    names = set(runs["experiment"])
    return Runs(tracking_uri=logged_to(exps, names, uri), experiments=sorted(names), runs=runs, epochs=epochs,
                param_columns=param_cols, config_columns=[k for k in cfg_order if k in param_cols],
                method_arg_columns=method_arg_cols, duplicates=runs[runs["superseded"]])


def from_manifest(path: str | Path) -> Runs:
    """The runs as a `manifest.csv` (written by `python -m analysis report`) lists them, without the store.

    The manifest holds each run's identity, status, seed, training settings (`MANIFEST_RECIPE`),
    final metrics, parameter counts and breakdown, the count its budget was matched on and its knob,
    not its per-epoch metrics (an older manifest gets the `MANIFEST_EXTRA` columns it lacks from
    `python -m study backfill-metadata --manifest CSV`).  What the analysis needs beyond that is
    recovered, and nothing else is invented:
    - the method's arguments from the variant label (`args_from_variant`);
    - the training length from `epochs_completed`: a FINISHED run completed every epoch it was
      configured for;
    - the protocol and the links across training lengths from the training settings, as `load`
      keys them.  A manifest written before it listed them: runs of one experiment with the same
      training length are taken to share one protocol (a grid file's defaults apply to all of its
      runs), stated in the report, and a method and variant are linked across lengths except where
      one length holds two configurations of them (two recipes), which are then linked to nothing.
    """
    path = Path(path)
    if not path.is_file():
        raise AnalysisError(f"no manifest at {path}")
    try:
        # the settings as text, as the store's params are: they are typed and keyed as `load` does it
        m = pd.read_csv(path, dtype={"run_id": str, "config_hash": str, "group": str, "variant": str,
                                     "failure_reason": str, "knob": str, VARIANT_NAME_TAG: str,
                                     **dict.fromkeys(MANIFEST_RECIPE, str)})
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as e:
        raise AnalysisError(f"cannot read the manifest {path}: {type(e).__name__}: {e}".splitlines()[0]) from e
    missing = {"experiment", "run_name", "group", "status", "arch", "method", "variant", "seed"} - set(m.columns)
    if missing or m.empty:
        raise AnalysisError(f"{path} is not a manifest of runs (missing columns: {', '.join(sorted(missing)) or 'none'}"
                            f"{'; no rows' if m.empty else ''})")
    lacking = [c for c in MANIFEST_EXTRA if c not in m.columns]
    if lacking:
        raise AnalysisError(f"{path} predates the columns {', '.join(lacking)}; add them with "
                            f"`python -m study backfill-metadata --manifest {path}`")
    runs = m.copy()
    runs["failure_reason"] = runs["failure_reason"].fillna("")
    runs[VARIANT_NAME_TAG] = runs[VARIANT_NAME_TAG].fillna("")
    runs["knob"] = [None if pd.isna(k) or k == "" else k for k in runs["knob"]]
    runs["superseded"] = runs["superseded"].astype(str).eq("True")
    runs["seed"] = typed_column([None if pd.isna(v) else str(int(v)) for v in runs["seed"]]).values
    runs["variant"] = runs["variant"].fillna("-")
    args = [args_from_variant(me, v) for me, v in zip(runs["method"], runs["variant"])]
    arg_cols = sorted({k for a in args for k in a} - {"target_params"})
    for k in arg_cols + ["target_params"]:
        runs[k] = typed_column([a.get(k) for a in args]).values
    runs["method_args"] = [json.dumps(sorted(k for k in a if k != "target_params")) for a in args]
    runs["epochs"] = runs["epochs_completed"].where(runs["status"] == "FINISHED").astype("Int64")
    runs["method_label"] = runs["method"].map(method_label)
    recipe = [c for c in MANIFEST_RECIPE if c in m.columns and m[c].notna().any()]  # empty: no run logged it
    settings = [{c: None if pd.isna(v) else v for c, v in zip(recipe, vals)}
                for vals in m[recipe].itertuples(index=False, name=None)]
    for c in recipe:
        runs[c] = typed_column([s[c] for s in settings]).values
    runs["protocol"] = [_group_key({"experiment": e, "epochs": str(n), **s})
                        for e, n, s in zip(runs["experiment"], runs["epochs"], settings)]
    runs["across_lengths"] = [
        _group_key(without_length({"experiment": e, "arch": a, "method": me, "variant": v,
                                   "epochs": None if pd.isna(n) else str(n), **s}))
        for e, a, me, v, n, s in zip(runs["experiment"], runs["arch"], runs["method"], runs["variant"],
                                     runs["epochs"], settings)]
    if not recipe:
        # no training settings to tell recipes apart: where one length holds two configurations of a
        # method and variant, which of them goes on at the next length is unknown, so neither is linked
        two = runs.groupby(["across_lengths", "epochs"])["group"].transform("nunique") > 1
        runs.loc[two, "across_lengths"] = runs.loc[two, "group"]
    for col in ("start_time", "end_time"):
        runs[col] = np.nan
    runs = sort_runs(runs).reset_index(drop=True)
    return Runs(tracking_uri="", experiments=sorted(set(runs["experiment"])), runs=runs,
                epochs=pd.DataFrame(columns=["run_id", "metric", "epoch", "value"]),
                param_columns=sorted(["arch", "method", "seed", "epochs", "budget_count", "knob", "target_params",
                                      *arg_cols, *recipe]),
                config_columns=MANIFEST_CONFIG + recipe, method_arg_columns=arg_cols,
                duplicates=runs[runs["superseded"]], manifest=str(path))


def only_experiment(runs: Runs, experiment: str) -> Runs:
    """`runs` restricted to one experiment (refused, as `load` refuses it, when there is none by that name)."""
    if experiment not in runs.experiments:
        raise AnalysisError(f"no experiment named {experiment!r} in {runs.manifest or runs.tracking_uri}; "
                            f"available: {', '.join(runs.experiments) or 'none'}")
    keep = runs.runs[runs.runs["experiment"] == experiment].reset_index(drop=True)
    return dataclasses.replace(runs, experiments=[experiment], runs=keep, duplicates=keep[keep["superseded"]],
                               epochs=runs.epochs[runs.epochs["run_id"].isin(keep["run_id"])])


def _history(client, runs: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for run_id in runs["run_id"]:
        for metric in EPOCH_METRICS:
            try:
                hist = client.get_metric_history(run_id, metric)
            except Exception:
                continue
            best: dict[int, tuple[int, float]] = {}
            for m in hist:  # a resumed run may log an epoch twice: the later value counts
                if m.step not in best or m.timestamp >= best[m.step][0]:
                    best[m.step] = (m.timestamp, m.value)
            rows.extend((run_id, metric, int(step), float(v)) for step, (_, v) in best.items())
    frame = pd.DataFrame(rows, columns=["run_id", "metric", "epoch", "value"])
    return frame.sort_values(["run_id", "metric", "epoch"]).reset_index(drop=True)


def epochs_wide(runs: Runs) -> pd.DataFrame:
    """Per-epoch metrics one row per (run, epoch), with the run's group, arch, method and seed."""
    if runs.epochs.empty:
        return pd.DataFrame(columns=["run_id", "epoch", *EPOCH_METRICS])
    wide = runs.epochs.pivot_table(index=["run_id", "epoch"], columns="metric", values="value").reset_index()
    wide.columns.name = None
    info = runs.runs[["run_id", "group", "arch", "method", "variant", "seed", "status", "superseded"]]
    return wide.merge(info, on="run_id", how="left")


# -- labels and ordering (`study.schema`) ---------------------------------------------------------
def variant_label(row, arg_keys: list[str]) -> str:
    """`study.schema.variant_label` of a run row's method arguments (for rows without the `variant` tag)."""
    args = {k: python_value(row.get(k)) for k in arg_keys}
    return schema.variant_label(row.get("method"), args, python_value(row.get("target_params")))


def arch_rank(a) -> int:
    return ARCH_ORDER.index(a) if a in ARCH_ORDER else len(ARCH_ORDER)


def method_rank(m) -> int:
    return METHOD_ORDER.index(m) if m in METHOD_ORDER else len(METHOD_ORDER)


def _natural(s) -> tuple:
    """'S16 d128' after 'S16 d72': numbers compare as numbers."""
    return tuple((0, float(t), "") if re.fullmatch(r"\d+(\.\d+)?", t) else (1, 0.0, t)
                 for t in re.split(r"(\d+(?:\.\d+)?)", str(s)) if t)


def sort_key_frame(frame: pd.DataFrame) -> pd.DataFrame:
    keys = pd.DataFrame(index=frame.index)
    keys["_a"] = frame["arch"].map(arch_rank) if "arch" in frame else 0
    keys["_aname"] = frame["arch"].astype(str) if "arch" in frame else ""
    keys["_m"] = frame["method"].map(method_rank) if "method" in frame else 0
    keys["_mname"] = frame["method"].astype(str) if "method" in frame else ""
    keys["_v"] = frame["variant"].map(_natural) if "variant" in frame else ""
    return keys


def sort_runs(runs: pd.DataFrame) -> pd.DataFrame:
    keys = sort_key_frame(runs)
    keys["_g"] = runs["group"]
    keys["_s"] = runs["seed"].astype("float64").fillna(-1)
    keys["_n"] = runs["run_name"].astype(str)
    keys["_id"] = runs["run_id"]
    order = sorted(keys.index, key=lambda i: tuple(keys.loc[i]))
    return runs.loc[order]
