"""What a run logs about itself before it trains, so the analysis never rebuilds a network: the
parameter breakdown (metrics `study.schema.BREAKDOWN_METRICS`, step 0) and the labels (tags
`study.schema.LABEL_TAGS`).

`runner` logs them when a run starts (and when it resumes a run logged without them), from the run's
config and resolved arguments (`labels_and_breakdown`).  `backfill` adds them to runs logged before
they existed, from each run's logged params (`from_logged_params`); `backfill_manifest`
adds the same as columns to a `manifest.csv` written by `python -m analysis report` (whose runs are
known only by their arch, method, variant label, seed and training length).  Both are
`python -m study backfill-metadata`.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Callable

import torch

from study import accounting, schema
from study.config import RunConfig
from study.methods import build, get_method


def method_args(params: dict[str, str], config_keys: list[str]) -> dict:
    """The method's arguments among logged params, read back as plain values (None left out)."""
    args = {k: schema.literal(schema.parse_value(params[k])) for k in schema.method_arg_keys(params, config_keys)}
    return {k: v for k, v in args.items() if v is not None}


def labels(method: str, args: dict, target, config_keys: list[str]) -> dict[str, str]:
    """The label tags of a run whose method arguments, read back from its params, are `args`."""
    try:
        named = getattr(get_method(method), "variant", None)  # plain and CSG have none
        variant_name = str(named(dict(args))) if named is not None else ""
    except (KeyError, TypeError, ValueError):  # an argument the run's code did not log yet
        variant_name = ""
    return {schema.CONFIG_KEYS_TAG: json.dumps(list(config_keys)),
            schema.METHOD_LABEL_TAG: schema.method_label(method),
            schema.VARIANT_TAG: schema.variant_label(method, dict(args), target),
            schema.VARIANT_NAME_TAG: variant_name}


def breakdown(arch: str, method: str, args: dict, epochs: int, seed: int = 0, target=None,
              logged_total: float | None = None) -> dict[str, int]:
    """The breakdown metrics of the network `method` builds from `args` on `arch`, brought to the
    structure it ends training with (a method that reshapes the network part-way does so at its last
    epoch).  Where the count differs from `logged_total` and the run had a numeric target (arguments
    read back from a label are rounded), the method's knob is searched for the target again."""
    method_obj = get_method(method)

    def counts(target_params=None) -> dict[str, int]:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model, margs = build(arch, method, args, seed=seed, target_params=target_params)
            model = method_obj.final_model(model, margs, epochs)
            return accounting.breakdown(model)

    out = counts()
    if (logged_total is not None and logged_total == logged_total and sum(out.values()) != round(logged_total)
            and isinstance(target, (int, float)) and not isinstance(target, bool)):
        out = counts(int(target))
    return {**{schema.BREAKDOWN[c]: n for c, n in out.items()}, schema.BREAKDOWN_TOTAL: sum(out.values())}


def _read(params: dict[str, str], config_keys: list[str] | None = None) -> tuple[dict, object, int, int, dict]:
    """(method args, target, epochs, seed, label tags) of a run from its logged params (every value a
    string, as MLflow stores them); `config_keys` defaults to the `RunConfig` fields among them."""
    keys = config_keys if config_keys is not None else [k for k in RunConfig.keys() if k in params]
    args = method_args(params, keys)
    target = schema.parse_value(params.get("target_params"))
    epochs = int(schema.parse_value(params.get("epochs")) or 1)
    seed = int(schema.parse_value(params.get("seed")) or 0)
    return args, target, epochs, seed, labels(params["method"], args, target, keys)


def from_logged_params(params: dict[str, str], logged_total: float | None = None,
                       config_keys: list[str] | None = None) -> tuple[dict, dict]:
    """(breakdown metrics, label tags) for a run from its logged params."""
    args, target, epochs, seed, tags = _read(params, config_keys)
    return breakdown(params["arch"], params["method"], args, epochs, seed, target, logged_total), tags


def labels_and_breakdown(cfg: RunConfig, resolved_args: dict) -> tuple[dict, Callable[[], dict]]:
    """The label tags of a run starting as `cfg` with its method's `resolved_args`, and a callable for
    its breakdown metrics (a network that cannot be built still gets its labels).  From the values
    themselves, not from params read back from the store (which would turn a string argument that
    reads as a number, bool or None into one)."""
    params = {**cfg.flat_params(), **resolved_args}  # the params the runner logs, as values
    keys = [k for k in RunConfig.keys() if k in params]
    args = {k: params[k] for k in schema.method_arg_keys(params, keys) if params[k] is not None}
    tags = labels(cfg.method, args, cfg.target_params, keys)
    return tags, lambda: breakdown(cfg.arch, cfg.method, args, cfg.epochs, cfg.seed)


def lacks_metadata(metrics: dict, tags: dict) -> bool:
    """A run logged without the breakdown or the labels (by code older than them)."""
    return not (set(schema.BREAKDOWN_METRICS) <= set(metrics) and set(schema.LABEL_TAGS) <= set(tags))


# -- older runs -------------------------------------------------------------------------------------
def backfill(tracker, experiment: str | None = None, log=print) -> dict[str, int]:
    """Log the breakdown and the labels to every run of the store (or of one experiment) that lacks
    them, from its logged params; runs that have them are left as they are (`complete`), and so are
    runs without `arch` or `method` params (`skipped`).  A run whose network cannot be built here
    gets its labels and is reported (`failed`)."""
    from mlflow.entities import ViewType

    client = tracker.client
    exps = [e for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY)
            if experiment is None or e.name == experiment]
    if experiment is not None and not exps:
        raise ValueError(f"no experiment named {experiment!r} in {tracker.uri}")
    done = {"updated": 0, "complete": 0, "skipped": 0, "failed": 0}
    for e in exps:
        for run in tracker.runs(e.experiment_id):
            data = run.data
            if not lacks_metadata(data.metrics, data.tags):
                done["complete"] += 1
                continue
            if "arch" not in data.params or "method" not in data.params:
                done["skipped"] += 1
                continue
            args, target, epochs, seed, tags = _read(data.params)
            try:
                metrics = breakdown(data.params["arch"], data.params["method"], args, epochs, seed, target,
                                    data.metrics.get("params_total"))
            except Exception as err:  # noqa: BLE001  (a method or architecture this code cannot build)
                metrics = {}
                done["failed"] += 1
                log(f"{e.name}/{run.info.run_name}: labels only, no breakdown ({type(err).__name__}: {err})")
            tracker.log(run.info.run_id, metrics, step=0, tags=tags)
            done["updated"] += 1
    return done


def backfill_manifest(path: Path) -> int:
    """Add `schema.MANIFEST_EXTRA` to a manifest.csv that lacks them (the analysis reads them there), from
    each run's arch, method, variant label, seed and training length; every existing cell stays as
    it was, byte for byte.  The number of rows filled."""
    path = Path(path)
    text = path.read_text()
    rows = list(csv.reader(io.StringIO(text)))
    header, body = rows[0], rows[1:]
    todo = [c for c in schema.MANIFEST_EXTRA if c not in header]
    if not todo:
        return 0
    col = {c: i for i, c in enumerate(header)}
    cache: dict[tuple, dict] = {}
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(header + todo)
    for r in body:
        arch, method, variant = r[col["arch"]], r[col["method"]], r[col["variant"]]
        done = r[col["epochs_completed"]]
        args = {k: schema.literal(schema.parse_value(v)) for k, v in schema.args_from_variant(method, variant).items()}
        target = args.pop("target_params", None)
        args = {k: v for k, v in args.items() if v is not None}
        total = schema.parse_value(r[col["params_total"]]) if "params_total" in col else None
        key = (arch, method, variant, done, r[col["seed"]], r[col["status"]])
        if key not in cache:
            values = {"budget_count": get_method(method).count, "knob": get_method(method).knob or "",
                      schema.VARIANT_NAME_TAG: labels(method, args, target, [])[schema.VARIANT_NAME_TAG]}
            if r[col["status"]] == "FINISHED" and done:
                seed = int(schema.parse_value(r[col["seed"]]) or 0)
                values.update(breakdown(arch, method, args, int(float(done)), seed, target,
                                        None if total is None else float(total)))
            cache[key] = values
        w.writerow(r + [str(cache[key].get(c, "")) for c in todo])
    path.write_text(out.getvalue())
    return len(body)
