"""A study's runs in a portable, committed form, and back into a fresh MLflow store.

`python -m analysis report` writes, beside the tables, `runs/` (see `FORMAT` below, also written there
as `runs/README.md`): every run of the reported experiments with its params, tags, statuses, times,
dataset inputs and the full per-epoch history of every metric, as plain JSON lines and CSV.  Model
artifacts are left out (they stay in the store that trained them).

`python -m analysis load-study results/<profile>` loads such a folder into an embedded store (default:
the project's `mlflow.db`, or `--tracking-uri sqlite:///PATH`), keeping each run's id, name, status
and times, so that `python -m analysis ui` shows the study and `python -m analysis report` regenerates
its tables and REPORT.md byte for byte.  The store must not hold the experiment already (loading the
same folder twice is a no-op, loading over different runs is refused).
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from unittest import mock
from urllib.parse import urlparse

from analysis.load import AnalysisError, _check_store_exists, _client
from study import schema

FORMAT_VERSION = 1
FILES = ("README.md", "experiments.jsonl", "runs.jsonl", "metrics.csv")

FORMAT = """# Portable runs

Written by `python -m analysis report` from the MLflow store the runs were logged to; loaded back with
`python -m analysis load-study FOLDER [--tracking-uri sqlite:///PATH]`, where FOLDER holds this `runs/`.
Format version {version}.  UTF-8, one record per line, sorted, so that a re-export of the same runs is
byte-identical.

- `experiments.jsonl`: one JSON object per experiment: `name`, `tags` (experiment tags: the experiment
  type `mlflow.experimentKind`, the run-table view `mlflow.sharedViewState.study`, ...),
  `tracking_uri` (the store the runs were logged to), `format_version`.
- `runs.jsonl`: one JSON object per run (active runs only), sorted by experiment, start time and id:
  `run_id`, `experiment`, `run_name`, `status` (FINISHED, FAILED, KILLED, RUNNING, SCHEDULED),
  `start_time` and `end_time` (ms since the epoch, or null), `user_id`, `params` (name -> string, as
  MLflow stores them), `tags` (name -> string, MLflow's own `mlflow.*` tags included), `inputs` (the
  dataset inputs: `name`, `digest`, `source_type`, `source`, `schema`, `profile`, `tags`).
- `metrics.csv`: every logged value of every metric, with a header row:
  `run_id,key,step,timestamp,value` (`timestamp` in ms; `value` in Python's shortest round-trip
  form, `nan`/`inf` where so), sorted by run, key, step, timestamp and value.  Per-epoch metrics have
  step = epoch (1-based); the final summary metrics are logged once, at step = the number of epochs.

Left out: model artifacts and logged models (`mlflow.pytorch`), which stay in the store that trained
them, and deleted runs.
"""


def _is_sqlite(uri: str) -> bool:
    return urlparse(uri).scheme == "sqlite"


# -- export ----------------------------------------------------------------------------------------
def _fmt(v: float) -> str:
    return repr(float(v)) if math.isfinite(v) else str(float(v))


def export(tracking_uri: str, experiments: list[str], folder: Path) -> list[Path]:
    """Write `folder/` (see FORMAT) for the named experiments of the store; the files written."""
    from mlflow.entities import ViewType

    client = _client(tracking_uri)
    exps, runs, rows = [], [], set()
    for name in sorted(experiments):
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise AnalysisError(f"no experiment named {name!r} in {tracking_uri}")
        tags = dict(exp.tags)
        source = tags.pop(schema.SOURCE_TAG, None) or tracking_uri
        for key, value in schema.experiment_tags().items():  # a study logged before the UI tags existed opens as well
            tags.setdefault(key, value)
        exps.append({"name": name, "tags": dict(sorted(tags.items())), "tracking_uri": source,
                     "format_version": FORMAT_VERSION})
        token = None
        while True:
            page = client.search_runs([exp.experiment_id], run_view_type=ViewType.ACTIVE_ONLY, max_results=1000,
                                      page_token=token)
            for r in page:
                runs.append({
                    "run_id": r.info.run_id, "experiment": name, "run_name": r.info.run_name,
                    "status": r.info.status, "start_time": r.info.start_time, "end_time": r.info.end_time,
                    "user_id": r.info.user_id,
                    "params": dict(sorted(r.data.params.items())), "tags": dict(sorted(r.data.tags.items())),
                    "inputs": sorted(({"name": d.dataset.name, "digest": d.dataset.digest,
                                       "source_type": d.dataset.source_type, "source": d.dataset.source,
                                       "schema": d.dataset.schema, "profile": d.dataset.profile,
                                       "tags": {t.key: t.value for t in sorted(d.tags, key=lambda t: t.key)}}
                                      for d in (r.inputs.dataset_inputs if r.inputs else [])),
                                     key=lambda d: json.dumps(d, sort_keys=True)),
                })
                for key in r.data.metrics:
                    for m in client.get_metric_history(r.info.run_id, key):
                        rows.add((r.info.run_id, key, int(m.step), int(m.timestamp), float(m.value)))
            token = page.token
            if not token:
                break
    runs.sort(key=lambda r: (r["experiment"], r["start_time"] or 0, r["run_id"]))

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["run_id", "key", "step", "timestamp", "value"])
    for run_id, key, step, ts, value in sorted(rows, key=lambda t: (t[0], t[1], t[2], t[3], _fmt(t[4]))):
        w.writerow([run_id, key, step, ts, _fmt(value)])
    texts = {
        "README.md": FORMAT.format(version=FORMAT_VERSION),
        "experiments.jsonl": "".join(json.dumps(e, sort_keys=True, ensure_ascii=False) + "\n" for e in exps),
        "runs.jsonl": "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in runs),
        "metrics.csv": out.getvalue(),
    }
    written = []
    for name in FILES:
        path = folder / name
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(texts[name], encoding="utf-8")
        tmp.replace(path)
        written.append(path)
    return written


# -- import ----------------------------------------------------------------------------------------
def read(folder: Path) -> tuple[list[dict], list[dict], dict[str, list[tuple[str, int, int, float]]]]:
    folder = Path(folder)
    if (folder / "runs").is_dir() and not (folder / "runs.jsonl").exists():
        folder = folder / "runs"
    missing = [n for n in FILES[1:] if not (folder / n).is_file()]
    if missing:
        raise AnalysisError(f"{folder}: not a portable export of runs (missing {', '.join(missing)}); "
                            "`python -m analysis report` writes one under <out>/runs/")
    try:
        exps = [json.loads(line) for line in (folder / "experiments.jsonl").read_text("utf-8").splitlines() if line]
        runs = [json.loads(line) for line in (folder / "runs.jsonl").read_text("utf-8").splitlines() if line]
        metrics: dict[str, list[tuple[str, int, int, float]]] = {}
        with open(folder / "metrics.csv", newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            if next(reader, None) != ["run_id", "key", "step", "timestamp", "value"]:
                raise ValueError("metrics.csv: unexpected header")
            for run_id, key, step, ts, value in reader:
                metrics.setdefault(run_id, []).append((key, int(step), int(ts), float(value)))
    except (ValueError, KeyError) as e:
        raise AnalysisError(f"{folder}: cannot read the portable export: {e}".splitlines()[0]) from e
    for e in exps:
        if e.get("format_version") != FORMAT_VERSION:
            raise AnalysisError(f"{folder}: format version {e.get('format_version')!r}; this code reads "
                                f"{FORMAT_VERSION}")
    return exps, runs, metrics


def _chunks(items: list, n: int):
    for i in range(0, len(items), n):
        yield items[i:i + n]


def load_study(folder: Path, tracking_uri: str, keep_existing: bool = False) -> dict:
    """Load a portable export into the embedded store at `tracking_uri`; a summary of what was loaded.

    `keep_existing`: an experiment the store already holds with other runs is left as it is (the store
    may be further on than the folder: a study that continued here) instead of refusing the load."""
    from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunStatus, RunTag
    from mlflow.store.tracking import sqlalchemy_store

    if not _is_sqlite(tracking_uri):
        raise AnalysisError(f"{tracking_uri}: load-study writes an embedded store only (sqlite:///PATH), "
                            "so that every run keeps its id")
    exps, runs, metrics = read(folder)
    path = Path(urlparse(tracking_uri).path if not tracking_uri.startswith("sqlite:///")
                else tracking_uri[len("sqlite:///"):])
    path.parent.mkdir(parents=True, exist_ok=True)
    client = _client(tracking_uri)
    store = client._tracking_client.store

    # a fresh store: the experiment is not there, or holds exactly these runs already (a second load)
    present = {}
    for e in exps:
        exp = client.get_experiment_by_name(e["name"])
        if exp is not None:
            have = {r.info.run_id for r in client.search_runs([exp.experiment_id], max_results=50000)}
            if have and (keep_existing or have == {r["run_id"] for r in runs if r["experiment"] == e["name"]}):
                present[e["name"]] = exp.experiment_id
            elif have:
                raise AnalysisError(f"{tracking_uri} already holds experiment {e['name']!r} with other runs; "
                                    "load into a fresh store (--tracking-uri sqlite:///PATH)")
    for r in runs:
        if r["experiment"] not in present:
            try:
                client.get_run(r["run_id"])
            except Exception:  # noqa: BLE001  (not found: as it should be)
                continue
            raise AnalysisError(f"{tracking_uri} already holds run {r['run_id']}; load into a fresh store")

    loaded = 0
    exp_ids = dict(present)
    for e in exps:
        if e["name"] in present:
            continue
        exp = client.get_experiment_by_name(e["name"])  # there without runs, or not there yet
        exp_id = exp.experiment_id if exp is not None else client.create_experiment(
            e["name"], artifact_location=schema.artifact_location(tracking_uri, e["name"]))
        exp_ids[e["name"]] = exp_id
        for key, value in {**e["tags"], schema.SOURCE_TAG: e["tracking_uri"]}.items():
            client.set_experiment_tag(exp_id, key, value)
    for r in runs:
        if r["experiment"] in present:
            continue
        wanted = r["run_id"]
        tags = [RunTag(k, v) for k, v in r["tags"].items()]
        # MLflow names a new run with uuid4().hex; hand it this run's id instead, so ids survive the trip
        with mock.patch.object(sqlalchemy_store, "uuid", _FixedUuid(wanted)):
            run = store.create_run(exp_ids[r["experiment"]], r.get("user_id") or "", r["start_time"] or 0,
                                   tags[:100], r["run_name"])
        if run.info.run_id != wanted:
            raise AnalysisError(f"this MLflow version did not keep run id {wanted}; cannot load faithfully")
        for chunk in _chunks(tags[100:], 100):
            store.log_batch(wanted, metrics=[], params=[], tags=chunk)
        params = [Param(k, v) for k, v in r["params"].items()]
        for chunk in _chunks(params, 100):
            store.log_batch(wanted, metrics=[], params=chunk, tags=[])
        ms = [Metric(k, v, ts, step) for k, step, ts, v in metrics.get(wanted, [])]
        for chunk in _chunks(ms, 1000):
            store.log_batch(wanted, metrics=chunk, params=[], tags=[])
        if r.get("inputs"):
            store.log_inputs(wanted, datasets=[
                DatasetInput(Dataset(d["name"], d["digest"], d["source_type"], d["source"], d.get("schema"),
                                     d.get("profile")),
                             tags=[InputTag(k, v) for k, v in d.get("tags", {}).items()]) for d in r["inputs"]])
        store.update_run_info(wanted, RunStatus.from_string(r["status"]), r["end_time"], r["run_name"])
        loaded += 1
    return {"tracking_uri": tracking_uri, "experiments": exp_ids, "runs": loaded, "already": sorted(present),
            "store_path": str(path)}


class _FixedUuid:
    """Stands in for the `uuid` module inside MLflow's SQL store while one run is created."""

    def __init__(self, hex_id: str):
        import uuid

        self._uuid, self._value = uuid, uuid.UUID(hex=hex_id)

    def uuid4(self):
        return self._value

    def __getattr__(self, name):
        return getattr(self._uuid, name)


__all__ = ["FORMAT", "export", "load_study", "read", "_check_store_exists"]
