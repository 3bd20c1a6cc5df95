"""`python -m study ...`: params, evaluate-authors, run, status, retrain, bench, fetch, backfill-metadata, carry-out,
carry-in.

Every bad argument is caught before work starts and reported as one line on stderr, exit status 2.
"""
from __future__ import annotations

import dataclasses
import errno
import json
import os
import sys
from pathlib import Path

from study.args import Parser, UsageError, data_root, key_value, minutes, positive_int, seconds
from study.env import PROJECT
from study.schema import default_tracking_uri
from study.tracking import RETRY_ENV, Tracker, TrackingUnavailable, unreachable

INTERRUPTED_EXIT = 75  # EX_TEMPFAIL: a run stopped for a reason outside it (store away, disk full); run again


def _arch_names() -> list[str]:
    from study.models import ARCHS
    return list(ARCHS)


def build_parser() -> Parser:
    from study.csg import GENERATORS, LAYOUTS
    from study.methods import method_names, no_plugins_hint

    p = Parser(prog="python -m study", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)

    q = sub.add_parser("params", help="parameter, size and FLOP counts of one configuration")
    q.add_argument("--arch", required=True, choices=_arch_names())
    q.add_argument("--method", default="none", choices=method_names(), help=no_plugins_hint() or None)
    q.add_argument("--code-dim", type=positive_int)
    q.add_argument("--slice", type=positive_int)
    q.add_argument("--layout", choices=LAYOUTS)
    q.add_argument("--generator", choices=GENERATORS)
    q.add_argument("--policy", choices=("authors", "all"))
    q.add_argument("--arg", action="append", type=key_value, default=[], metavar="KEY=VALUE",
                   help="another argument of the method (e.g. sparsity=0.5); repeatable")
    q.add_argument("--target-params", type=positive_int, help="search the method's knob to match this count")
    q.add_argument("--no-flops", action="store_true", help="skip FLOP counting (faster on big models)")
    q.add_argument("--json", action="store_true")

    e = sub.add_parser("evaluate-authors", help="load an authors' checkpoint and re-measure its test accuracy")
    e.add_argument("checkpoint")
    e.add_argument("--arch", required=True, choices=_arch_names())
    e.add_argument("--data-root")
    e.add_argument("--tta", action="store_true",
                   help="also report flip test-time augmentation (accuracy_tta), as runs log test_acc_tta")
    e.add_argument("--json", action="store_true")

    for name, helptext in (("run", "train a grid file"), ("status", "show what a grid has done")):
        r = sub.add_parser(name, help=helptext)
        r.add_argument("grid")
        r.add_argument("--data-root")
        r.add_argument("--tracking-uri")
        r.add_argument("--output", default=str(PROJECT / "outputs"), help="checkpoints go here")
        r.add_argument("--progress", choices=("auto", "rich", "plain", "none"), default="auto",
                       help="live progress on stderr: auto = a rich table on a terminal, else one line per "
                            "finished epoch" + ("" if name == "run" else " (with --watch)"))
        if name == "status":
            r.add_argument("--watch", action="store_true",
                           help="follow the grid (running here or elsewhere) until every run has ended")
            r.add_argument("--interval", type=float, default=5.0, help="seconds between looks at the store")
        if name == "run":
            r.add_argument("--jobs", type=positive_int, default=1)
            r.add_argument("--threads", type=positive_int, help="torch threads per worker (default cores/jobs)")
            r.add_argument("--backend", choices=("local", "dask", "slurm"), default="local")
            r.add_argument("--scheduler", help="Dask scheduler address, e.g. tcp://127.0.0.1:8786")
            r.add_argument("--slurm", action="append", type=key_value, default=[], metavar="KEY=VALUE",
                           help="submitit parameters (e.g. slurm_partition=gpu, timeout_min=600, cluster=local)")
            r.add_argument("--retry-failed", action="store_true")
            r.add_argument("--tracking-retry-seconds", type=seconds, metavar="SECONDS",
                           help="how long a worker keeps retrying an unreachable tracking store before its run "
                                f"stops, marked interrupted, to resume on the next run (default ${RETRY_ENV} or 600)")
            r.add_argument("--checkpoint-minutes", type=minutes, metavar="MINUTES",
                           help="also checkpoint in the middle of an epoch this often, for any backend (default: "
                                "the grid file's checkpoint_minutes, else only at the end of each epoch; 0: off)")
            r.add_argument("--dry-run", action="store_true", help="list the runs and their counts, train nothing")

    for name, helptext in (
            ("carry-out", "copy the newest checkpoint of each unfinished run of a grid into FOLDER/in_flight/, "
                          "to commit or move with the study's runs/"),
            ("carry-in", "copy the checkpoints carried in FOLDER/in_flight/ back beside this machine's, where "
                         "they are further on, so the runs resume from them")):
        c = sub.add_parser(name, help=helptext)
        c.add_argument("grid")
        c.add_argument("folder", nargs="?", help="the study's folder (default: <project>/results/<grid name>)")
        c.add_argument("--tracking-uri", help="the store that says which runs have FINISHED (default: "
                                              "$MLFLOW_TRACKING_URI, else <project>/mlflow.db)")
        c.add_argument("--output", default=str(PROJECT / "outputs"), help="where the grid's checkpoints live")

    t = sub.add_parser("retrain", help="set FINISHED runs of a grid aside (kept, tagged with the reason) so that "
                                       "the next `run` trains them again from the start")
    t.add_argument("grid")
    t.add_argument("names", nargs="+", metavar="NAME", help="run names of the grid (as `status` lists them)")
    t.add_argument("--reason", required=True, help="why, e.g. 'trained in fp32; the runs it is compared with in bf16'")
    t.add_argument("--tracking-uri")
    t.add_argument("--output", default=str(PROJECT / "outputs"), help="where the grid's checkpoints live")

    f = sub.add_parser("fetch", help="download and verify CIFAR-10 and the authors' checkpoints (what is missing)")
    f.add_argument("what", nargs="?", choices=("all", "cifar10", "authors"), default="all")
    f.add_argument("--data-root", help="CIFAR-10 goes here (default: $STUDY_DATA_ROOT, else <project>/data)")
    f.add_argument("--authors-dir", help="checkpoints go here (default: $STUDY_AUTHORS_DIR, else "
                                         "<project>/pretrained/authors)")
    f.add_argument("--only", action="append", default=[], metavar="NAME",
                   help="one checkpoint (e.g. RN56_ORG); repeatable; default all thirteen")
    f.add_argument("--cifar-url", help="a mirror of the CIFAR-10 archive (checked file by file against the "
                                       "official md5s)")
    f.add_argument("--authors-url", help="a mirror of the authors' repository at the pinned commit")
    f.add_argument("--timeout", type=float, default=60.0, help="seconds without data before giving up")

    m = sub.add_parser("backfill-metadata", help="log the parameter breakdown and the labels to runs logged "
                                                 "before they existed (from their logged params), or add them "
                                                 "to a manifest.csv")
    m.add_argument("--tracking-uri", help="the store (default: $MLFLOW_TRACKING_URI, else <project>/mlflow.db)")
    m.add_argument("--experiment", help="only this experiment (default: every one)")
    m.add_argument("--manifest", metavar="CSV", help="a manifest.csv written by `python -m analysis report`: add "
                                                     "the columns the analysis reads there instead of a store")

    b = sub.add_parser("bench", help="training/inference throughput, plain against CSG, and the data path")
    from study import bench
    bench.add_arguments(b)
    return p


# -- commands -----------------------------------------------------------------------------------
def cmd_params(a) -> dict:
    from study import accounting
    from study.config import RunConfig
    from study.methods import BudgetError, build, get_method
    from study.models import get_arch

    method = get_method(a.method)
    args = dict(a.arg)
    for key in ("code_dim", "slice", "layout", "generator", "policy"):
        if getattr(a, key) is not None:
            if a.method != "csg":
                raise UsageError(f"--{key.replace('_', '-')} only applies to --method csg")
            args[key] = getattr(a, key)
    try:
        model, resolved = build(a.arch, a.method, args, target_params=a.target_params)
    except BudgetError as e:
        raise UsageError(str(e)) from None
    except ValueError as e:
        raise UsageError(f"{a.method}: {e}") from None
    arch = get_arch(a.arch)
    model = method.final_model(model, resolved, RunConfig.epochs)  # a run's length where a grid names none
    counts = accounting.account(model, None if a.no_flops else arch.input_size)
    budget = method.counted(model, arch, resolved)
    out = {"arch": a.arch, "method": a.method, **counts, "args": resolved, "budget_count": method.count,
           "budget_value": budget, "knob": method.knob,
           "knob_value": resolved.get(method.knob) if method.knob else None}
    if a.target_params:
        out["target_params"] = a.target_params
        out["relative_error"] = budget / a.target_params - 1
    return out


def cmd_evaluate_authors(a) -> dict:
    import torch

    from study import accounting
    from study.authors import CheckpointError, evaluate, load_model
    from study.data.cifar import load_cifar10

    root = data_root(a.data_root)
    try:
        model, meta = load_model(a.checkpoint, a.arch)
    except CheckpointError as e:
        raise UsageError(str(e)) from None
    data = load_cifar10(root)
    with torch.inference_mode():
        scores = evaluate(model, data.test_x, data.test_y, tta=a.tta)
    acc = scores["acc"]
    return {"checkpoint": a.checkpoint, "arch": a.arch, "accuracy": acc,
            **({"accuracy_tta": scores["acc_tta"]} if a.tta else {}), **meta,
            "difference": acc - meta["stored_accuracy"], **accounting.count_parameters(model)}


def _load_grid(a):
    from study import grid as grid_mod

    try:
        g = grid_mod.load(a.grid)
    except grid_mod.GridError as e:
        raise UsageError(str(e)) from None
    out = Path(a.output)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise UsageError(f"{out}: the output folder's disk is full ({e.strerror})") from None
        raise UsageError(f"{out}: output folder is not writable ({e.strerror})") from None
    uri = a.tracking_uri or default_tracking_uri()
    why = unreachable(uri)
    if why is not None:
        raise UsageError(f"{uri}: the tracking server cannot be reached ({why})")
    if uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).parent
        if not os.access(folder if folder.exists() else folder.parent, os.W_OK):
            raise UsageError(f"{uri}: the tracking store's folder is not writable")
    return g, uri, out


def _tasks_of(g) -> set[str]:
    from study.models import get_arch
    return {get_arch(c.arch).task for c in g.runs}


def _check_configs(g) -> None:
    """Every run's settings are possible on its task (e.g. no image_size other than 32 on CIFAR-10)."""
    from study.models import get_arch
    from study.tasks import get_task

    for c in g.runs:
        try:
            get_task(get_arch(c.arch).task).check_config(c)
        except ValueError as e:
            raise UsageError(f"{g.path}: {c.name}: {e}") from None


def _check_checkpoints(g, out: Path) -> None:
    """A run's checkpoint folder (named by its config hash) holds only checkpoints of that config:
    resuming from a folder copied or renamed from another run would train another configuration."""
    from study import checkpoint

    root = g.checkpoint_root(out)
    for c in g.runs:
        h = c.hash()
        for path in checkpoint.candidates(root / h):
            found = checkpoint.config_hash_of(path)
            if found is not None and found != h:
                raise UsageError(f"{path}: a checkpoint of another config (config_hash {found}) in the folder of "
                                 f"run {c.name} (config_hash {h}); move it away")


CHECKPOINTS_AT_ONCE = 3  # `checkpoint.save` keeps two and writes the next before it drops the oldest


def _check_space(g, out: Path, jobs: int) -> None:
    """Enough free space under `out` for the checkpoints of the runs that can be at work at once."""
    import shutil

    def size(c) -> int:  # weights, momentum and a spare copy (EMA, masks), plus history and pickle framing
        n = g.counts[c.hash()]
        return 4 * (2 * n["total"] + n["trainable"]) + 2 ** 20

    sizes = sorted((size(c) for c in g.runs), reverse=True)
    need = CHECKPOINTS_AT_ONCE * sum(sizes[:max(1, jobs)])
    free = shutil.disk_usage(out).free
    if free < need:
        raise UsageError(f"{out}: not enough free space for checkpoints ({free / 2 ** 20:.1f} MiB free, about "
                         f"{need / 2 ** 20:.1f} MiB needed for {min(len(sizes), max(1, jobs))} run(s) at once)")


def _check_data(g, value: str | None) -> str:
    """The data root, after every task the grid uses has found its data there (else one line, exit 2)."""
    from study.data.cifar import DataError, default_root
    from study.tasks import get_task

    root = value or default_root()
    for name in sorted(_tasks_of(g)):
        try:
            get_task(name).check_data(root)
        except DataError as e:
            raise UsageError(str(e)) from None
        except OSError as e:  # e.g. an unreadable folder
            raise UsageError(f"{e.filename or root}: {e.strerror or e}") from None
    return root


def cmd_run(a) -> int:
    from study import runner

    g, uri, out = _load_grid(a)
    _check_configs(g)
    _check_checkpoints(g, out)
    if a.tracking_retry_seconds is not None:  # the launcher's own store calls, and workers it starts
        os.environ[RETRY_ENV] = repr(a.tracking_retry_seconds)
    if a.dry_run:
        rows = runner.status(g, uri, out)
        print(f"grid {g.name}: {len(rows)} runs (tracking {uri})")
        for r in rows:
            print(f"  {r['name']:<44} total={r['total']:>10,} stored={r['stored']:>10,} "
                  f"nonzero={r['nonzero']:>10,}  {r['state']}")
        return 0
    data_root = _check_data(g, a.data_root)
    if a.backend == "dask" and not a.scheduler:
        raise UsageError("--backend dask needs --scheduler tcp://HOST:PORT")
    _check_space(g, out, a.jobs)
    tracker = Tracker(uri)
    exp_id = tracker.experiment(g.name)  # create store and experiment once, before workers race to
    from study.schema import describe_experiment

    describe_experiment(tracker.client, exp_id, g.description)  # model training, its run table
    jobs = runner.jobs_for(g, uri, data_root, out, a.jobs, a.retry_failed, a.threads, a.checkpoint_minutes)
    if a.tracking_retry_seconds is not None:
        jobs = [dataclasses.replace(j, tracking_retry_seconds=a.tracking_retry_seconds) for j in jobs]
    from study.progress import Monitor

    try:
        # the display reads the store, so it shows runs in worker processes, on Dask or on SLURM alike
        with Monitor(g, uri, a.jobs if a.backend == "local" else None, a.progress):
            outcomes = runner.execute(jobs, a.jobs, a.backend, a.scheduler, dict(a.slurm))
    except KeyboardInterrupt:
        runner.mark_killed(g, uri)
        print("interrupted: unfinished runs are marked KILLED and resume on the next run", file=sys.stderr)
        return 130
    print(runner.summary_table(outcomes))
    if any(o.status == runner.FAILED for o in outcomes):
        return 1
    return INTERRUPTED_EXIT if any(o.status == runner.INTERRUPTED for o in outcomes) else 0


def cmd_status(a) -> int:
    from study import runner

    g, uri, out = _load_grid(a)
    if a.watch:
        from study import progress

        if a.interval <= 0:
            raise UsageError(f"--interval must be positive, got {a.interval}")
        try:
            snap = progress.watch(g, uri, "plain" if a.progress == "none" else a.progress, a.interval)
        except KeyboardInterrupt:
            return 130
        print(f"grid {g.name}: {snap.headline()}")
        return 1 if snap.count(progress.FAILED) else 0
    for r in runner.status(g, uri, out):
        print(f"{r['name']:<44} {r['state']}")
    return 0


def cmd_carry(a) -> int:
    """carry-out / carry-in: see study/carry.py."""
    from study import carry, runner

    g, uri, out = _load_grid(a)
    folder = Path(a.folder) if a.folder else PROJECT / "results" / g.name
    if a.command == "carry-in" and not folder.is_dir():
        raise UsageError(f"{folder}: no such study folder")
    tracker = Tracker(uri)
    finished = {h for h, r in tracker.current_runs(tracker.existing_experiment(g.name)).items()
                if r.info.status == runner.DONE}
    move = carry.export if a.command == "carry-out" else carry.import_
    done = move(g.runs, g.checkpoint_root(out), folder, finished)
    for c in done:
        print(c.line())
    copied = sum(c.action == "copied" for c in done)
    where = folder / carry.IN_FLIGHT
    print(f"{a.command}: {copied} checkpoint(s) copied " + (f"into {where}" if a.command == "carry-out"
                                                           else f"from {where} into {g.checkpoint_root(out)}"))
    return 0


def cmd_retrain(a) -> int:
    """retrain: see study/retrain.py."""
    from study import retrain

    g, uri, out = _load_grid(a)
    try:
        done = retrain.set_aside(g, Tracker(uri), out, a.names, a.reason)
    except retrain.RetrainError as e:
        raise UsageError(f"retrain: {e}") from None
    for d in done:
        print(d.line())
    print(f"retrain: {len(done)} run(s) set aside; `python -m study run {a.grid}` trains them again")
    return 0


def cmd_backfill_metadata(a) -> int:
    from study import metadata

    if a.manifest:
        if a.tracking_uri or a.experiment:
            raise UsageError("backfill-metadata: --manifest excludes --tracking-uri and --experiment")
        path = Path(a.manifest)
        if not path.is_file():
            raise UsageError(f"backfill-metadata: no manifest at {path}")
        n = metadata.backfill_manifest(path)
        print(f"{path}: {'filled the missing columns of ' + str(n) + ' rows' if n else 'nothing missing'}")
        return 0
    uri = a.tracking_uri or default_tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise UsageError(f"backfill-metadata: no MLflow store at {uri}")
    why = unreachable(uri)
    if why:
        raise UsageError(f"backfill-metadata: tracking server {uri} does not answer ({why})")
    try:
        done = metadata.backfill(Tracker(uri), a.experiment)
    except ValueError as e:
        raise UsageError(f"backfill-metadata: {e}") from None
    print(f"{uri}: {done['updated']} run(s) given the breakdown and labels ({done['failed']} without a "
          f"breakdown), {done['complete']} already had them"
          + (f", {done['skipped']} skipped (no arch or method param)" if done["skipped"] else ""))
    return 0


def cmd_fetch(a) -> int:
    from study import fetch

    data_root = Path(a.data_root) if a.data_root else fetch.default_data_root()
    authors_dir = Path(a.authors_dir) if a.authors_dir else fetch.default_authors_dir()
    try:
        lines = fetch.run(a.what, data_root, authors_dir, a.cifar_url, a.authors_url or fetch.AUTHORS_URL,
                          a.only, a.timeout)
    except fetch.FetchError as e:
        raise UsageError(f"fetch: {e}") from None
    except KeyboardInterrupt:
        return 130
    for line in lines:
        print(line)
    hints = []
    if a.what in ("all", "cifar10"):
        hints.append(f"STUDY_DATA_ROOT={data_root}")
    if a.what in ("all", "authors"):
        hints.append(f"STUDY_AUTHORS_DIR={authors_dir}")
    print("use them with: export " + " ".join(hints))
    return 0


def main(argv: list[str] | None = None) -> int:
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    try:
        a = build_parser().parse_args(argv)
        if a.command == "params":
            out = cmd_params(a)
        elif a.command == "evaluate-authors":
            out = cmd_evaluate_authors(a)
        elif a.command == "bench":
            from study import bench
            out = bench.run(a)
        elif a.command == "run":
            return cmd_run(a)
        elif a.command == "fetch":
            return cmd_fetch(a)
        elif a.command == "backfill-metadata":
            return cmd_backfill_metadata(a)
        elif a.command in ("carry-out", "carry-in"):
            return cmd_carry(a)
        elif a.command == "retrain":
            return cmd_retrain(a)
        else:
            return cmd_status(a)
    except UsageError as e:
        print(str(e), file=sys.stderr)
        return 2
    except TrackingUnavailable as e:  # the store went away while the launcher itself talked to it
        print(f"{e}; nothing lost, run the command again", file=sys.stderr)
        return INTERRUPTED_EXIT
    if getattr(a, "json", False):
        print(json.dumps(out, indent=2, default=str))
    else:
        for k, v in out.items():
            print(f"{k:>22}: {v:,}" if isinstance(v, int) else f"{k:>22}: {v}")
    return 0
