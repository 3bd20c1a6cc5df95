"""Measurements in fresh processes: peak resident memory of a run's process (`memory`), and two
workers against one (`worker`, one `study.train.train` each).  `python -m study.bench.probes --probe
KIND SPEC` is one probe's process; `in_subprocesses` starts them together behind a barrier."""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path


def peak_rss_mb() -> float:
    """This process's peak resident set size in MiB: VmHWM, the high-water mark of its own address
    space.  (`ru_maxrss` would do, but Linux carries it over fork and exec, so a child started by
    a big parent reports the parent's peak.)"""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)  # kB
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB


def _wait_for_go() -> None:
    """A probe's barrier: tell the parent it is set up, then wait for its word to start."""
    print("ready", flush=True)
    sys.stdin.readline()


def memory_probe(spec: dict) -> dict:
    """In a fresh process: load CIFAR-10 as a run does, build the model, train a few steps, evaluate one
    batch; report the process's peak resident memory."""
    import torch

    from study.bench.throughput import fast_recipe_config, trainer_step
    from study.methods import build
    from study.tasks import get_task
    from study.train import autocast_for

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    _wait_for_go()
    before = peak_rss_mb()
    cfg = dataclasses.replace(fast_recipe_config(spec["batch_size"]), arch=spec["arch"], method=spec["method"],
                              method_args=spec["args"])
    loaders = get_task("cifar10").loaders(cfg, spec["data_root"], torch.device("cpu"))
    data_rss = peak_rss_mb()
    torch.manual_seed(0)
    model, _ = build(cfg.arch, cfg.method, cfg.method_args)
    model = model.to(memory_format=torch.channels_last).train()
    autocast = autocast_for(spec["precision"], torch.device("cpu"))
    step = trainer_step(model, cfg, autocast, steps_per_epoch=len(loaders.train))
    for i, (x, y) in enumerate(loaders.train):  # the trainer's own step
        if i == spec["steps"]:
            break
        step(x, y)
    model.eval()
    with torch.no_grad(), autocast():
        x, _ = next(iter(loaders.val))
        model(x)
    return {"arch": cfg.arch, "method": cfg.method, "args": cfg.method_args, "steps": spec["steps"],
            "eval_batch": len(x), "peak_rss_mb": peak_rss_mb(), "rss_after_imports_mb": before,
            "rss_after_data_mb": data_rss}


def worker_probe(spec: dict) -> dict:
    """In a fresh process: one run of `study.train.train` as a grid worker makes it (no store, no checkpoints)."""
    import torch

    from study.config import RunConfig
    from study.train import train

    torch.set_num_threads(spec["threads"])
    cfg = RunConfig(arch=spec["arch"], epochs=1, batch_size=spec["batch_size"], precision=spec["precision"],
                    train_subset=spec["images"], test_subset=spec["eval_images"], seed=spec["seed"])
    _wait_for_go()
    t = time.perf_counter()
    result = train(cfg, spec["data_root"], device="cpu")
    return {"threads": spec["threads"], "seconds": round(time.perf_counter() - t, 2),
            "epoch_seconds": round(result.history[-1]["epoch_seconds"], 2)}


PROBES = {"memory": memory_probe, "worker": worker_probe}


def in_subprocesses(kind: str, specs: list[dict]) -> list[dict]:
    """One fresh process per spec, all started at once; each measures only itself, and starts measuring
    only when every process has imported and set up (`_wait_for_go`)."""
    procs = [subprocess.Popen([sys.executable, "-m", "study.bench.probes", "--probe", kind, json.dumps(spec)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=os.environ.copy()) for spec in specs]
    for proc in procs:
        proc.stdout.readline()  # "ready", or "" if the probe died first
    for proc in procs:
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.write("go\n")
            proc.stdin.flush()
    out = []
    for spec, proc in zip(specs, procs):
        stdout, stderr = proc.communicate(timeout=1800)
        if proc.returncode != 0:
            tail = (stderr.strip().splitlines() or ["?"])[-1]
            out.append({**spec, "error": tail})
        else:
            out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def workers_comparison(a, precision: str, data_root, threads: int) -> dict:
    spec = {"arch": a.epoch_arch, "images": a.workers_images, "eval_images": max(a.batch_size, a.workers_images // 5),
            "batch_size": a.batch_size, "precision": precision, "data_root": str(data_root)}
    half = max(1, threads // 2)
    sequential = [in_subprocesses("worker", [{**spec, "threads": threads, "seed": s}])[0] for s in (0, 1)]
    parallel = in_subprocesses("worker", [{**spec, "threads": half, "seed": s} for s in (0, 1)])
    runs = sequential + parallel
    failed = [r["error"] for r in runs if "error" in r]
    if failed:
        return {"error": failed[0], "settings": spec}
    one_after_other = sum(r["seconds"] for r in sequential)
    together = max(r["seconds"] for r in parallel)
    return {"jobs2_over_sequential": round(together / one_after_other, 3),
            "sequential": {"threads": threads, "runs_seconds": [r["seconds"] for r in sequential],
                           "total_seconds": round(one_after_other, 2)},
            "parallel": {"threads_each": half, "runs_seconds": [r["seconds"] for r in parallel],
                         "wall_seconds": together},
            "settings": {**spec, "epochs": 1, "seeds": [0, 1],
                         "timed": "study.train.train: data loading, one epoch, validation and test"}}


def main(argv=None) -> int:  # `python -m study.bench.probes --probe KIND SPEC`: one probe's process
    p = argparse.ArgumentParser(prog="python -m study.bench.probes")
    p.add_argument("--probe", nargs=2, metavar=("KIND", "SPEC"), required=True)
    a = p.parse_args(argv)
    kind, spec = a.probe
    print(json.dumps(PROBES[kind](json.loads(spec))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
