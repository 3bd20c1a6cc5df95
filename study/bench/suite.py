"""The bench command: its arguments, the hardware it reports, and the run of every measurement.

Five measurements, all in one process except the memory and worker probes:

1. **Throughput** (images/s), training steps and evaluation batches, for each architecture's plain
   network and its CSG versions, on the harness's path (bf16 autocast where the CPU has AMX or
   AVX512-BF16, channels_last, SGD with momentum and weight decay), same batch size, one synthetic
   batch for all models.  The models take turns within every repeat (plain, CSG a, CSG b, plain,
   ...), so a change in machine load hits them alike; the reported figure is the median over
   repeats, and the CSG/plain ratios are the medians of the per-repeat ratios.  Every evaluation
   batch is one forward pass of the model and so pays for one kernel generation, as in the trainer's
   evaluation.
2. **Seconds per epoch** of the harness's training loop (`study.train`'s inner loop over a
   `CifarLoader`, bf16 + channels_last) against a reference loop in the authors' style (a
   torchvision-like `Dataset` handing out PIL images, `RandomCrop(32, padding=4)`,
   `RandomHorizontalFlip`, `ToTensor`, `Normalize`, a `DataLoader` with 2 workers, fp32, NCHW), on
   the same real CIFAR-10 images with the same plain model.  Only `--reference-epoch-images` images
   are timed; the epoch estimate is `startup + steady seconds per image x 45,000` (startup: until
   the first batch arrives).  A third loop, the harness's loader with an fp32 NCHW model, splits
   the gain into data path and precision.  Where `--modes` has `compile`, one more loop times the
   harness's epoch with the step's forward compiled, as `compile: true` trains
   (`harness_speedup_over_reference_compiled`; compilation happens in the untimed warm-up, whose
   seconds are reported).  Evaluation is not part of any of these epochs.
3. **Peak resident memory** (VmHWM): this process's, and that of two fresh processes (started
   together) that load CIFAR-10 the way a run does and train a few steps of ResNet-56, plain and CSG.
4. **Two workers or one** (`--workers-images`): two equal runs of `study.train.train` (the plain
   `--epoch-arch`, one epoch over that many real training images, evaluation included), first one
   after the other in fresh processes with all the threads, then both at once in two fresh processes
   with half the threads each, as `run --jobs 2` would.  Every process imports first and starts
   training only on a signal, so import time is not counted and the two parallel runs start together.
   `jobs2_over_sequential` = parallel wall time / the sum of the sequential times.

5. **Where a step's time goes** (`--profile-steps`): real ResNet-20 training steps over a
   `CifarLoader` and one evaluation pass under `torch.profiler`, each operator's own CPU time put
   in one category (convolution forward and backward, BatchNorm, ReLU, residual and other adds,
   the optimiser, the CSG product, data, evaluation), for plain and CSG 16/72.

`--modes eager,compile` measures throughput and the epoch both ways in one run (`torch.compile` of the forward,
plain and CSG alike; CSG layers trace their generator product into the graph when compiled).
Every timed training step is `study.train.train_step`, the trainer's own, with the fast recipe's
optimiser and loss.

Speed targets are reported, never asserted.
"""
from __future__ import annotations

import os
import platform
import time

from study import env
from study.args import UsageError, non_negative_int, positive_int
from study.args import data_root as parse_data_root

DEFAULT_CONFIGS = {"resnet20": ["16/72"], "resnet56": ["16/128", "12/72"]}
FALLBACK_CONFIGS = ["16/72"]
MEMORY_ARCH = "resnet56"


# -- arguments ------------------------------------------------------------------------------------
def add_arguments(parser):
    parser.add_argument("--archs", default="resnet20,resnet56",
                        help="comma-separated CIFAR-10 architectures (default: resnet20,resnet56)")
    parser.add_argument("--configs",
                        help="comma-separated CSG configurations, each SLICE/CODE_DIM[/LAYOUT], optionally "
                             "prefixed by ARCH: (e.g. resnet56:16/128,resnet56:12/72,resnet20:16/72); "
                             "an unprefixed one applies to every arch (default: resnet20 16/72, "
                             "resnet56 16/128 and 12/72, others 16/72)")
    parser.add_argument("--batch-size", type=positive_int, default=128)
    parser.add_argument("--steps", type=positive_int, default=5, help="timed batches per model and repeat")
    parser.add_argument("--repeats", type=positive_int, default=5, help="interleaved repeats (median reported)")
    parser.add_argument("--warmup", type=non_negative_int, default=2, help="untimed batches per model first")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                        help="auto: bf16 on CPUs with AMX/AVX512-BF16, else fp32 (the trainer's rule)")
    parser.add_argument("--modes", default="eager,compile",
                        help="comma-separated: eager, compile (torch.compile of the training step's forward, plain "
                             "and CSG alike; compiling takes about a minute a model)")
    parser.add_argument("--profile-steps", type=non_negative_int, default=20,
                        help="real training steps of ResNet-20 under torch.profiler for the time breakdown (0: skip)")
    parser.add_argument("--threads", type=positive_int, help="torch threads (default: torch's own choice)")
    parser.add_argument("--reference-epoch-images", type=positive_int, default=5000,
                        help="real CIFAR-10 images timed per epoch loop, scaled to a 45,000-image epoch")
    parser.add_argument("--epoch-arch", default="resnet20", help="plain model of the epoch comparison")
    parser.add_argument("--memory-steps", type=non_negative_int, default=3,
                        help="training steps of the ResNet-56 memory probes (0: skip the probes)")
    parser.add_argument("--workers-images", type=non_negative_int, default=10_000,
                        help="training images per run of the two-workers comparison (0: skip it)")
    parser.add_argument("--data-root", help="folder holding cifar-10-batches-bin/ or -py/ (default STUDY_DATA_ROOT)")
    parser.add_argument("--json", action="store_true")


def _usage(message: str) -> UsageError:
    return UsageError(f"python -m study bench: {message}")


def parse_configs(archs: list[str], text: str | None) -> dict[str, list[dict]]:
    """{arch: [csg method args, ...]} from the --configs text (or the defaults)."""
    from study.csg import LAYOUTS

    chosen: dict[str, list[str]] = {a: [] for a in archs}
    if text is None:
        for a in archs:
            chosen[a] = list(DEFAULT_CONFIGS.get(a, FALLBACK_CONFIGS))
    else:
        for item in filter(None, (t.strip() for t in text.split(","))):
            arch, _, spec = item.rpartition(":")
            if arch and arch not in chosen:
                raise _usage(f"--configs: {item!r} names {arch!r}, which is not in --archs ({','.join(archs)})")
            for a in ([arch] if arch else archs):
                chosen[a].append(spec)
    out: dict[str, list[dict]] = {}
    for a, specs in chosen.items():
        out[a] = []
        for spec in specs:
            parts = spec.split("/")
            try:
                if len(parts) not in (2, 3):
                    raise ValueError
                s, d = int(parts[0]), int(parts[1])
                if s <= 0 or d <= 0:
                    raise ValueError
            except ValueError:
                raise _usage(f"--configs: expected SLICE/CODE_DIM[/LAYOUT] with positive integers, "
                             f"got {spec!r}") from None
            layout = parts[2] if len(parts) == 3 else "contiguous"
            if layout not in LAYOUTS:
                raise _usage(f"--configs: layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
            args = {"slice": s, "code_dim": d, "layout": layout}
            if args not in out[a]:
                out[a].append(args)
    return out


def _check_arch(name: str, option: str) -> str:
    from study.models import ARCHS

    if name not in ARCHS:
        raise _usage(f"{option}: unknown architecture {name!r}")
    if ARCHS[name].task != "cifar10":
        raise _usage(f"{option}: {name} is not a CIFAR-10 architecture")
    return name


# -- hardware ---------------------------------------------------------------------------------------
def hardware(precision: str) -> dict:
    import psutil
    import torch

    flags = env.cpu_flags()
    return {
        "cpu_model": env.cpu_model() or platform.processor() or "", "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "amx_bf16": "amx_bf16" in flags, "avx512_bf16": "avx512_bf16" in flags, "cpu_has_bf16": env.cpu_has_bf16(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "torch_version": torch.__version__, "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset)"),
        "precision": precision, "channels_last": True, "python": platform.python_version(),
        "platform": platform.platform(),
    }


def step_description(cfg) -> str:
    """What the timed step trains with, said from the config it uses (configs/fast91.yaml's), so the
    text cannot drift from the recipe."""
    decay = "off BatchNorm and biases" if cfg.no_decay_norm_bias else "on every parameter"
    return (f"study.train.train_step with configs/fast91.yaml's optimiser and loss: "
            f"{'Nesterov ' if cfg.nesterov else ''}SGD (momentum {cfg.momentum:g}), weight decay "
            f"{cfg.weight_decay:g} {decay}, label smoothing {cfg.label_smoothing:g}")


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


# -- the command -----------------------------------------------------------------------------------------
def run(a) -> dict:
    archs = [_check_arch(s.strip(), "--archs") for s in a.archs.split(",") if s.strip()]
    if not archs:
        raise _usage("--archs: name at least one architecture")
    archs = list(dict.fromkeys(archs))
    configs = parse_configs(archs, a.configs)
    if not any(configs.values()):
        raise _usage("--configs: no CSG configuration to compare with")
    _check_arch(a.epoch_arch, "--epoch-arch")
    if a.reference_epoch_images < 2 * a.batch_size:
        raise _usage(f"--reference-epoch-images must be at least two batches ({2 * a.batch_size}), "
                     f"got {a.reference_epoch_images}")
    modes = list(dict.fromkeys(m.strip() for m in a.modes.split(",") if m.strip()))
    if not modes or set(modes) - {"eager", "compile"}:
        raise _usage(f"--modes: a comma-separated list of eager and compile, got {a.modes!r}")
    data_root = parse_data_root(a.data_root)

    import torch

    from study.data.cifar import load_cifar10
    from study.bench.epoch import epoch_comparison
    from study.bench.probes import in_subprocesses, peak_rss_mb, workers_comparison
    from study.bench.profile import profile_breakdown
    from study.bench.throughput import csg_row_label, fast_recipe_config, throughput
    from study.env import resolve_precision

    if a.threads:
        torch.set_num_threads(a.threads)
    precision = resolve_precision(a.precision, torch.device("cpu"))
    started, load_start = time.perf_counter(), _load()

    rows = []
    for mode in modes:
        for arch in archs:
            if configs[arch]:
                rows += throughput(arch, configs[arch], a, precision, mode)

    data = load_cifar10(data_root)
    epoch = epoch_comparison(a, precision, data, compiled="compile" in modes)
    breakdown = profile_breakdown(a, precision, data) if a.profile_steps else None
    del data

    memory = {"bench_process_peak_rss_mb": peak_rss_mb()}
    if a.memory_steps:  # ResNet-56, plain and CSG 16/128 (the --configs entry if there is one)
        mem_args = next((c for c in configs.get(MEMORY_ARCH, []) if (c["slice"], c["code_dim"]) == (16, 128)),
                        {"slice": 16, "code_dim": 128, "layout": "contiguous"})
        specs = [{"arch": MEMORY_ARCH, "method": method, "args": args, "batch_size": a.batch_size,
                  "precision": precision, "steps": a.memory_steps, "data_root": str(data_root),
                  "threads": torch.get_num_threads()} for method, args in (("none", {}), ("csg", mem_args))]
        for spec, probe in zip(specs, in_subprocesses("memory", specs)):
            memory[f"{MEMORY_ARCH}_{'plain' if spec['method'] == 'none' else 'csg'}_train_process"] = probe
        csg_probe = memory[f"{MEMORY_ARCH}_csg_train_process"]
        memory[f"{MEMORY_ARCH}_csg_train_peak_rss_mb"] = csg_probe.get("peak_rss_mb")

    workers = workers_comparison(a, precision, data_root, torch.get_num_threads()) if a.workers_images else None

    def smallest(key, mode):
        worst = min((r for r in rows if r["method"] == "csg" and r["mode"] == mode), key=lambda r: r[key])
        return worst[key], f"{worst['arch']} {worst['config']}"

    def images_per_s(method, mode):
        row = next(r for r in rows if r["arch"] == archs[0] and r["mode"] == mode
                   and (r["method"] == "none") == (method == "plain"))
        return {"train": row["train_images_per_s"], "eval": row["eval_images_per_s"], "config": row["config"]}

    ratios = {}
    for mode in modes:
        suffix = "" if mode == "eager" else "_compiled"  # eager is the trainer's default (compile: false)
        for kind in ("train", "eval"):
            value, worst = smallest(f"{kind}_over_plain", mode)
            ratios[f"csg_over_plain_{kind}{suffix}"], ratios[f"csg_over_plain_{kind}{suffix}_worst"] = value, worst
    bf16 = precision == "bf16"
    machine = hardware(precision)
    return {
        **ratios,
        "harness_speedup_over_reference": round(epoch["reference"]["epoch_seconds"]
                                                / epoch["harness"]["epoch_seconds"], 3),
        **({"harness_speedup_over_reference_compiled": round(epoch["reference"]["epoch_seconds"]
                                                             / epoch["harness_compiled"]["epoch_seconds"], 3)}
           if "harness_compiled" in epoch else {}),
        **({"jobs2_over_sequential": workers.get("jobs2_over_sequential")} if workers else {}),
        "precision": precision, "cpu_model": machine["cpu_model"],
        "images_per_s": {f"{archs[0]} {m} {mode}": images_per_s(m, mode) for m in ("plain", "csg") for mode in modes},
        "targets": {"csg_over_plain_train": 0.97, "csg_over_plain_eval": 0.98,
                    "harness_speedup_over_reference": 4.0 if bf16 else 2.0,
                    "harness_speedup_target_rule": ">= 4.0 where the CPU trains in bf16, >= 2.0 where it trains in fp32"},
        **({"time_breakdown": breakdown} if breakdown else {}),
        "throughput": rows,
        "epoch": epoch,
        "memory": memory,
        **({"workers": workers} if workers else {}),
        "hardware": {**machine, "modes": modes},
        "settings": {"archs": archs, "configs": {k: [csg_row_label(c) for c in v] for k, v in configs.items()},
                     "batch_size": a.batch_size, "steps": a.steps, "repeats": a.repeats, "warmup": a.warmup,
                     "throughput_input": "one synthetic N(0,1) batch, channels_last",
                     "step": step_description(fast_recipe_config(a.batch_size)),
                     "ratio": "median over repeats of (CSG images/s / plain images/s), models interleaved; "
                              "*_best: best repeat / best repeat",
                     "eval_pass": "--steps batches under no_grad, each one forward pass (one kernel generation)",
                     "data_root": str(data_root)},
        "load_average": {"start": load_start, "end": _load()},
        "seconds": round(time.perf_counter() - started, 1),
    }


