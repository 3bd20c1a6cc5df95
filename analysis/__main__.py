"""Command line: `python -m analysis report ...`, `python -m analysis load-study ...` and
`python -m analysis ui ...`.

A bad argument (unknown experiment, empty or missing store, bad --x) prints one line on stderr and
exits with status 2, without a traceback.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from analysis.load import REPO, AnalysisError
from study.schema import default_tracking_uri

PROG = "python -m analysis"


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, status 2 (argparse prints the usage too)
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Analyse the study's MLflow runs.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    r = sub.add_parser("report", help="figures, tables, manifest.csv and REPORT.md from the runs")
    r.add_argument("--tracking-uri", default=None,
                   help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///<repo>/mlflow.db)")
    r.add_argument("--experiment", default=None, help="experiment (grid) name; default: every experiment with runs")
    r.add_argument("--from-manifest", default=None, metavar="CSV",
                   help="read the runs from a manifest.csv an earlier report wrote, not from the store (no per-epoch "
                        "figures; the manifest itself is left as it is)")
    r.add_argument("--out", default=None,
                   help="output folder (default: <repo>/results/<experiment> with --experiment, else <repo>/results)")
    r.add_argument("--x", default="budget", choices=["budget", "total", "stored", "nonzero"],
                   help="parameter count on the x axis of the accuracy-vs-parameters figure (default: each "
                        "method's own budget count: stored for CSG, nonzero for pruning, ...)")
    s = sub.add_parser("load-study", help="load a committed study (results/<profile>/runs/) into a fresh "
                                         "embedded store, for `ui` and `report`")
    s.add_argument("folder", help="a study folder written by `report` (results/<profile>) or its runs/ folder")
    s.add_argument("--tracking-uri", default=None,
                   help="embedded store to create (default: $MLFLOW_TRACKING_URI, else sqlite:///<repo>/mlflow.db)")
    s.add_argument("--keep-existing", action="store_true",
                   help="where the store already holds the study's experiment, keep it as it is and load nothing "
                        "of it (how `run_all.sh` continues a committed study on a machine that may be further on)")
    u = sub.add_parser("ui", help="run `mlflow ui` on the store, bound to 127.0.0.1")
    u.add_argument("--tracking-uri", default=None, help="MLflow store (default as for `report`)")
    u.add_argument("--port", type=int, default=5000, help="port (default 5000)")
    u.add_argument("--workers", type=int, default=1, help="server worker processes (default 1)")
    return p


def cmd_report(args) -> int:
    if args.from_manifest:
        return cmd_report_from_manifest(args)
    from analysis import load, report

    from analysis import portable

    uri = args.tracking_uri or default_tracking_uri()
    runs = load.load(uri, args.experiment)
    out = Path(args.out) if args.out else REPO / "results" / (args.experiment or "")
    written = report.write(runs, out, x=args.x)
    # the runs themselves, portable: `load-study` puts them into a fresh store that regenerates this report
    written["runs"] = portable.export(uri, runs.experiments, out / "runs")
    n = sum(len(v) for v in written.values())
    print(f"wrote {n} files under {out} ({len(runs.finished)} FINISHED runs of {len(runs.runs)}; the runs "
          f"themselves in {out / 'runs'}); see {out / 'REPORT.md'}")
    return 0


def cmd_report_from_manifest(args) -> int:
    """`report --from-manifest CSV`: the report from the run table an earlier report wrote, without the store.

    Writes where --out says (where it is unset, into the manifest's own folder); the manifest stays as it is.
    """
    from analysis import load, report

    if args.tracking_uri:
        raise AnalysisError("--from-manifest and --tracking-uri exclude each other")
    runs = load.from_manifest(args.from_manifest)
    if args.experiment:
        runs = load.only_experiment(runs, args.experiment)
    out = Path(args.out) if args.out else Path(args.from_manifest).parent
    written = report.write(runs, out, x=args.x)
    n = sum(len(v) for v in written.values())
    print(f"wrote {n} files under {out} from {args.from_manifest} ({len(runs.finished)} FINISHED runs of "
          f"{len(runs.runs)}); see {out / 'REPORT.md'}")
    return 0


def cmd_load_study(args) -> int:
    from analysis import portable

    uri = args.tracking_uri or default_tracking_uri()
    done = portable.load_study(Path(args.folder), uri, keep_existing=args.keep_existing)
    exps = ", ".join(f"{name} (id {i})" for name, i in sorted(done["experiments"].items()))
    if done["already"] and not done["runs"]:
        print(f"{uri} already holds {exps}: nothing to load")
    else:
        print(f"loaded {done['runs']} runs into {uri}: {exps}")
    print(f"MLflow UI: {PROG} ui{'' if args.tracking_uri is None else ' --tracking-uri ' + uri}   "
          f"report: {PROG} report{'' if args.tracking_uri is None else ' --tracking-uri ' + uri} "
          f"--experiment NAME")
    return 0


def ui_command(tracking_uri: str, port: int, workers: int = 1) -> list[str]:
    return [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri,
            "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]


def ui_env() -> dict[str, str]:
    """mlflow's server also starts background job runners (GenAI jobs); browsing runs needs none of them."""
    env = os.environ.copy()
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    return env


def cmd_ui(args) -> int:
    from analysis.load import _check_store_exists

    if not 1 <= args.port <= 65535:
        raise AnalysisError(f"--port must be in 1..65535, got {args.port}")
    if args.workers < 1:
        raise AnalysisError(f"--workers must be at least 1, got {args.workers}")
    uri = args.tracking_uri or default_tracking_uri()
    _check_store_exists(uri)
    print(f"MLflow UI for {uri} on http://127.0.0.1:{args.port} (Ctrl-C to stop)", flush=True)
    for name, url in experiment_urls(uri, args.port):
        print(f"  {name}: {url}", flush=True)
    # its own process group, so that stopping us stops every process the server spawned
    proc = subprocess.Popen(ui_command(uri, args.port, args.workers), env=ui_env(), start_new_session=True)

    stopping: list[tuple[float, int]] = []

    def stop(signum, _frame):  # only signal here; the loop below waits
        if not stopping:
            stopping.append((time.monotonic(), signum))
            _signal_group(proc.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while True:
        try:
            rc = proc.wait(timeout=0.5)
            break
        except subprocess.TimeoutExpired:
            if stopping and time.monotonic() - stopping[0][0] > 10:
                _signal_group(proc.pid, signal.SIGKILL)
    _signal_group(proc.pid, signal.SIGKILL)  # anything the server left behind in its group
    return 128 + stopping[0][1] if stopping else rc


def experiment_urls(uri: str, port: int) -> list[tuple[str, str]]:
    """For each experiment of the store, the URL of its run table in MLflow's training view with the
    study's columns (MLflow 3.17 takes both from the URL; see `study.schema.ui_path`)."""
    from analysis.load import _client
    from study.schema import describe_experiment, ui_path

    try:
        client = _client(uri)
        exps = client.search_experiments()
    except Exception:  # noqa: BLE001  (the server will say what is wrong)
        return []
    for e in exps:  # a store logged before the UI tags existed: add them (two experiment tags, idempotent)
        if e.name != "Default":
            describe_experiment(client, e.experiment_id)
    return [(e.name, f"http://127.0.0.1:{port}/#{ui_path(e.experiment_id)}")
            for e in sorted(exps, key=lambda e: e.name) if e.name != "Default"]


def _signal_group(pgid: int, sig) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return {"report": cmd_report, "load-study": cmd_load_study, "ui": cmd_ui}[args.command](args)
    except AnalysisError as e:
        sys.stderr.write(f"{PROG} {args.command}: error: {e}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
