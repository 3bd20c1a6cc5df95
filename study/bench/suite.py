"""`python -m study bench`: how fast the harness trains and evaluates, CSG against plain, on this machine.

Four measurements, all in one process except the memory and worker probes:

1. **Throughput** (images/s), training steps and evaluation batches, for each architecture's plain
   network and its CSG versions, on the harness's path (bf16 autocast where the CPU has AMX or
   AVX512-BF16, channels_last, SGD with momentum and weight decay), same batch size, one synthetic
   batch for all models.  The models take turns within every repeat (plain, CSG a, CSG b, plain,
   ...), so a change in machine load hits them alike; the reported figure is the median over
   repeats, and the CSG/plain ratios are the medians of the per-repeat ratios.  One evaluation
   "pass" is `--steps` batches and starts from stale kernels, as after an optimiser step, so it
   pays for one kernel generation (a real pass over 5,000-10,000 images pays the same once).
2. **Seconds per epoch** of the harness's training loop (`study.train`'s inner loop over a
   `CifarLoader`, bf16 + channels_last) against a reference loop in the authors' style (a
   torchvision-like `Dataset` handing out PIL images, `RandomCrop(32, padding=4)`,
   `RandomHorizontalFlip`, `ToTensor`, `Normalize`, a `DataLoader` with 2 workers, fp32, NCHW), on
   the same real CIFAR-10 images with the same plain model.  Only `--reference-epoch-images` images
   are timed; the epoch estimate is `startup + steady seconds per image x 45,000` (startup: until
   the first batch arrives).  A third loop, the harness's loader with an fp32 NCHW model, splits
   the gain into data path and precision.  Evaluation is not part of either epoch.
3. **Peak resident memory** (VmHWM): this process's, and that of two fresh processes (started
   together) that load CIFAR-10 the way a run does and train a few steps of ResNet-56, plain and CSG.
4. **Two workers or one** (`--workers-images`): two equal runs of `study.train.train` (the plain
   `--epoch-arch`, one epoch over that many real training images, evaluation included), first one
   after the other in fresh processes with all the threads, then both at once in two fresh processes
   with half the threads each, as `run --jobs 2` would.  Every process imports first and starts
   training only on a signal, so import time is not counted and the two parallel runs start together.
   `jobs2_over_sequential` = parallel wall time / the sum of the sequential times.

`--modes eager,compile` measures throughput both ways in one run (`torch.compile` of the forward,
plain and CSG alike; CSG layers trace their generator product into the graph when compiled).
Every timed training step is `study.train.train_step`, the trainer's own, with the fast recipe's
optimiser and loss.

5. **Where a step's time goes** (`--profile-steps`): real ResNet-20 training steps over a
   `CifarLoader` and one evaluation pass under `torch.profiler`, each operator's own CPU time put
   in one category (convolution forward and backward, BatchNorm, ReLU, residual and other adds,
   the optimiser, the CSG product, data, evaluation), for plain and CSG 16/72.

Speed targets are reported, never asserted.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

EPOCH_IMAGES = 45_000  # the training split: 50,000 minus the 5,000 held out for validation
DEFAULT_CONFIGS = {"resnet20": ["16/72"], "resnet56": ["16/128", "12/72"]}
FALLBACK_CONFIGS = ["16/72"]
MEMORY_ARCH, MEMORY_CONFIG = "resnet56", "16/128"


# -- arguments ------------------------------------------------------------------------------------
def _positive(text: str) -> int:
    from study.cli import _positive_int  # the CLI's own check; imported late (cli imports bench)

    return _positive_int(text)


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {value}")
    return value


def add_arguments(parser):
    parser.add_argument("--archs", default="resnet20,resnet56",
                        help="comma-separated CIFAR-10 architectures (default: resnet20,resnet56)")
    parser.add_argument("--configs",
                        help="comma-separated CSG configurations, each SLICE/CODE_DIM[/LAYOUT], optionally "
                             "prefixed by ARCH: (e.g. resnet56:16/128,resnet56:12/72,resnet20:16/72); "
                             "an unprefixed one applies to every arch (default: resnet20 16/72, "
                             "resnet56 16/128 and 12/72, others 16/72)")
    parser.add_argument("--batch-size", type=_positive, default=128)
    parser.add_argument("--steps", type=_positive, default=5, help="timed batches per model and repeat")
    parser.add_argument("--repeats", type=_positive, default=5, help="interleaved repeats (median reported)")
    parser.add_argument("--warmup", type=_non_negative, default=2, help="untimed batches per model first")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                        help="auto: bf16 on CPUs with AMX/AVX512-BF16, else fp32 (the trainer's rule)")
    parser.add_argument("--modes", default="eager,compile",
                        help="comma-separated: eager, compile (torch.compile of the training step's forward, plain "
                             "and CSG alike; compiling takes about a minute a model)")
    parser.add_argument("--profile-steps", type=_non_negative, default=20,
                        help="real training steps of ResNet-20 under torch.profiler for the time breakdown (0: skip)")
    parser.add_argument("--threads", type=_positive, help="torch threads (default: torch's own choice)")
    parser.add_argument("--reference-epoch-images", type=_positive, default=5000,
                        help="real CIFAR-10 images timed per epoch loop, scaled to a 45,000-image epoch")
    parser.add_argument("--epoch-arch", default="resnet20", help="plain model of the epoch comparison")
    parser.add_argument("--memory-steps", type=_non_negative, default=3,
                        help="training steps of the ResNet-56 memory probes (0: skip the probes)")
    parser.add_argument("--workers-images", type=_non_negative, default=10_000,
                        help="training images per run of the two-workers comparison (0: skip it)")
    parser.add_argument("--data-root", help="folder holding cifar-10-batches-bin/ or -py/ (default STUDY_DATA_ROOT)")
    parser.add_argument("--json", action="store_true")


def _usage(message: str):
    from study.cli import UsageError
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


def _label(args: dict) -> str:
    tag = f"csg {args['slice']}/{args['code_dim']}"
    return tag if args.get("layout", "contiguous") == "contiguous" else f"{tag} {args['layout']}"


# -- hardware ---------------------------------------------------------------------------------------
def hardware(precision: str, channels_last: bool = True) -> dict:
    import psutil
    import torch

    from study.train import cpu_has_bf16

    model = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return {
        "cpu_model": model, "logical_cores": os.cpu_count(), "physical_cores": psutil.cpu_count(logical=False),
        "amx_bf16": "amx_bf16" in flags, "avx512_bf16": "avx512_bf16" in flags, "cpu_has_bf16": cpu_has_bf16(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "torch_version": torch.__version__, "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset)"),
        "precision": precision, "channels_last": channels_last, "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


# -- throughput -------------------------------------------------------------------------------------
def _recipe_config(batch_size: int):
    """The settings a timed step trains with: the fast recipe's optimiser and loss (configs/fast91.yaml)."""
    from study.config import RunConfig

    return RunConfig(arch="resnet20", epochs=1, batch_size=batch_size, lr=0.2, nesterov=True, schedule="onecycle",
                     label_smoothing=0.1, no_decay_norm_bias=True)


def _make_step(model, forward, x, y, autocast, cfg):
    """One call = one `study.train.train_step` (the trainer's own step) on the fixed batch."""
    import torch

    from study.tasks import get_task
    from study.train import make_optimizer, train_step

    opt, sched = make_optimizer(model, cfg, steps_per_epoch=10 ** 6, steps_done=0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    task = get_task("cifar10")

    def step():
        return train_step(forward, x, y, opt, sched, scaler, task, cfg, autocast)
    return step


def _make_eval(model, x, autocast):
    import torch

    def batch():
        with torch.no_grad(), autocast():
            return model(x).float()
    return batch


def throughput(arch_name: str, configs: list[dict], a, precision: str, mode: str) -> list[dict]:
    import torch

    from study import accounting
    from study.csg import generators
    from study.methods import build
    from study.train import autocast_for

    autocast = autocast_for(precision, torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(a.batch_size, 3, 32, 32, generator=g).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (a.batch_size,), generator=g)
    cfg = _recipe_config(a.batch_size)
    compiled = mode == "compile"
    entries = []
    for method, args in [("none", {})] + [("csg", c) for c in configs]:
        torch.manual_seed(0)
        model, _ = build(arch_name, method, args)
        model = model.to(memory_format=torch.channels_last)
        forward = torch.compile(model) if compiled else model
        entries.append({"model": model, "gens": generators(model), "step": _make_step(model, forward, x, y, autocast, cfg),
                        "eval": _make_eval(forward, x, autocast), "train": [], "infer": [],
                        "label": "plain" if method == "none" else _label(args), "args": args,
                        "params": accounting.count_parameters(model)})
    for e in entries:  # warm-up: oneDNN primitives, allocator, autocast caches (and compilation)
        e["model"].train()
        for _ in range(max(a.warmup, 2 if compiled else 0)):
            e["step"]()
        e["model"].eval()
        for _ in range(max(a.warmup, 2 if compiled else 0)):
            e["eval"]()
    n = a.batch_size * a.steps
    for _ in range(a.repeats):
        for e in entries:
            e["model"].train()
            t = time.perf_counter()
            for _ in range(a.steps):
                e["step"]()
            e["train"].append(n / (time.perf_counter() - t))
        for e in entries:
            e["model"].eval()
            for gen in e["gens"]:
                gen.invalidate()  # a pass starts after an optimiser step: kernels are generated once
            t = time.perf_counter()
            for _ in range(a.steps):
                e["eval"]()
            e["infer"].append(n / (time.perf_counter() - t))
    plain = entries[0]
    out = []
    for e in entries:
        row = {"arch": arch_name, "config": e["label"], "mode": mode, "method": "none" if e is plain else "csg",
               **({k: e["args"][k] for k in ("slice", "code_dim", "layout")} if e is not plain else {}),
               "params_total": e["params"]["total"],
               "train_images_per_s": round(statistics.median(e["train"]), 1),
               "eval_images_per_s": round(statistics.median(e["infer"]), 1),
               "train_images_per_s_repeats": [round(v, 1) for v in e["train"]],
               "eval_images_per_s_repeats": [round(v, 1) for v in e["infer"]]}
        if e is not plain:
            row["train_over_plain"] = round(statistics.median(c / p for c, p in zip(e["train"], plain["train"])), 4)
            row["eval_over_plain"] = round(statistics.median(c / p for c, p in zip(e["infer"], plain["infer"])), 4)
            # best repeat against best repeat: the usual estimator when other processes interfere
            # (they only ever slow a repeat down); a cross-check of the medians, not a replacement
            row["train_over_plain_best"] = round(max(e["train"]) / max(plain["train"]), 4)
            row["eval_over_plain_best"] = round(max(e["infer"]) / max(plain["infer"]), 4)
        out.append(row)
    return out


# -- seconds per epoch --------------------------------------------------------------------------------
class ReferenceCifar:
    """What the authors' loader does per image: torchvision's `CIFAR10.__getitem__` over HWC uint8."""

    def __init__(self, x_chw, y, transform):
        self.data = x_chw.permute(0, 2, 3, 1).contiguous().numpy()  # torchvision keeps [N, H, W, C]
        self.targets = y.tolist()
        self.transform = transform

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.data[i])), self.targets[i]


def reference_transform():
    import torchvision.transforms as T

    from study.data.cifar import MEAN, STD
    return T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(MEAN, STD)])


def _timed_epoch(loader, step, images: int) -> dict:
    """Run `step(x, y)` over `loader`; startup = until the first batch is there."""
    t0 = time.perf_counter()
    seen, first = 0, None
    for x, y in loader:
        if first is None:
            first = time.perf_counter()
        step(x, y)
        seen += len(y)
    end = time.perf_counter()
    startup, steady = first - t0, end - first
    return {"images": seen, "measured_seconds": round(end - t0, 3), "startup_seconds": round(startup, 3),
            "epoch_seconds": round(startup + steady / seen * EPOCH_IMAGES, 2)}


def epoch_comparison(a, precision: str, data) -> dict:
    import torch
    import torch.nn.functional as F

    from study.data.cifar import CifarLoader
    from study.methods import build
    from study.train import autocast_for, make_optimizer

    n = min(a.reference_epoch_images, len(data.train_y))
    x_all, y_all = data.train_x[:n], data.train_y[:n]
    cfg = dataclasses.replace(_recipe_config(a.batch_size), arch=a.epoch_arch)
    steps_per_epoch = -(-n // a.batch_size)

    def model_and_opt(channels_last: bool):
        torch.manual_seed(0)
        model, _ = build(a.epoch_arch, "none")
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        model.train()
        opt, sched = make_optimizer(model, cfg, steps_per_epoch, 0)
        return model, opt, sched

    def warm(model, opt, channels_last, autocast):  # untimed: create oneDNN primitives first
        x = torch.randn(a.batch_size, 3, 32, 32)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        for _ in range(max(1, a.warmup)):
            with autocast():
                loss = F.cross_entropy(model(x), torch.zeros(a.batch_size, dtype=torch.long))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    def harness(prec: str, channels_last: bool) -> dict:
        """study.train's inner loop: its own `train_step` over a `CifarLoader`."""
        from study.tasks import get_task
        from study.train import train_step

        autocast = autocast_for(prec, torch.device("cpu"))
        model, opt, sched = model_and_opt(channels_last)
        warm(model, opt, channels_last, autocast)
        loader = CifarLoader(x_all, y_all, a.batch_size, train=True, seed=0, channels_last=channels_last)
        scaler, task = torch.amp.GradScaler("cpu", enabled=False), get_task("cifar10")
        loss_sum, correct = torch.zeros(()), torch.zeros((), dtype=torch.long)

        def step(x, y):
            nonlocal loss_sum, correct
            loss, out = train_step(model, x, y, opt, sched, scaler, task, cfg, autocast)
            loss_sum += loss.float() * len(y)
            correct += (out.argmax(1) == y).sum()
        result = _timed_epoch(loader, step, n)
        float(loss_sum), int(correct)
        return {**result, "precision": prec, "channels_last": channels_last, "loader": "CifarLoader"}

    def reference() -> dict:
        """The authors' style: PIL transforms per image, DataLoader(2 workers), fp32, .item() per step."""
        model, opt, _ = model_and_opt(False)
        warm(model, opt, False, contextlib.nullcontext)
        dataset = ReferenceCifar(x_all, y_all, reference_transform())
        loader = torch.utils.data.DataLoader(dataset, batch_size=a.batch_size, shuffle=True, num_workers=2,
                                             generator=torch.Generator().manual_seed(0))
        stats = {"loss": 0.0, "correct": 0}

        def step(x, y):
            opt.zero_grad()
            out = model(x)
            loss = F.cross_entropy(out, y)
            loss.backward()
            opt.step()
            stats["loss"] += loss.item()
            stats["correct"] += out.max(1)[1].eq(y).sum().item()
        result = _timed_epoch(loader, step, n)
        return {**result, "precision": "fp32", "channels_last": False,
                "loader": "DataLoader(num_workers=2) over PIL images with torchvision transforms"}

    ours = harness(precision, True)
    ref = reference()
    fp32 = harness("fp32", False) if precision != "fp32" else None
    out = {"arch": a.epoch_arch, "images_timed": n, "scaled_to_images": EPOCH_IMAGES,
           "scaling": "epoch_seconds = startup_seconds + (measured - startup) / images_timed * 45000",
           "evaluation_included": False, "harness": ours, "reference": ref}
    if fp32 is not None:
        out["harness_fp32_nchw"] = fp32
        out["data_path_speedup"] = round(ref["epoch_seconds"] / fp32["epoch_seconds"], 3)
        out["precision_speedup"] = round(fp32["epoch_seconds"] / ours["epoch_seconds"], 3)
    return out


# -- where a step's time goes -----------------------------------------------------------------------
SCOPES = ("data", "evaluation", "optimizer", "csg_product")  # record_function scopes: all time inside counts
OPERATOR_CATEGORIES = (  # (category, operator names) for time outside the scopes, by the operator's own time
    ("conv forward", ("aten::mkldnn_convolution", "aten::_convolution", "aten::convolution", "aten::conv2d")),
    ("conv backward", ("aten::convolution_backward", "aten::mkldnn_convolution_backward")),
    ("batchnorm", ("aten::native_batch_norm", "aten::native_batch_norm_backward", "aten::batch_norm",
                   "aten::_batch_norm_impl_index", "aten::_native_batch_norm_legit")),
    ("relu", ("aten::relu", "aten::relu_", "aten::clamp_min", "aten::clamp_min_", "aten::threshold_backward")),
    ("residual and other adds", ("aten::add", "aten::add_")),
)


def _category(event) -> str:
    """The scope an operator ran in (its own name or an ancestor's), else its operator category."""
    node = event
    while node is not None:
        if node.name in SCOPES:
            return node.name
        node = node.cpu_parent
    for category, names in OPERATOR_CATEGORIES:
        if event.name in names:
            return category
    return "other"


def profile_breakdown(a, precision: str, data) -> dict:
    """Share of CPU time by category over `--profile-steps` real training steps of ResNet-20 (plain,
    then CSG 16/72) and one evaluation pass over 2,000 test images, in the trainer's own step."""
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    from study.data.cifar import CifarLoader
    from study.methods import build
    from study.tasks import get_task
    from study.train import autocast_for, make_optimizer, train_step

    autocast = autocast_for(precision, torch.device("cpu"))
    cfg, task = _recipe_config(a.batch_size), get_task("cifar10")
    n = min(len(data.train_y), a.batch_size * a.profile_steps)
    out = {}
    for label, method, args in (("plain", "none", {}), ("csg 16/72", "csg", {"slice": 16, "code_dim": 72})):
        torch.manual_seed(0)
        model, _ = build("resnet20", method, args)
        model = model.to(memory_format=torch.channels_last)
        opt, sched = make_optimizer(model, cfg, 10 ** 6, 0)
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        train_loader = CifarLoader(data.train_x[:n], data.train_y[:n], a.batch_size, train=True, channels_last=True)
        test_loader = CifarLoader(data.test_x[:2000], data.test_y[:2000], 500, train=False, channels_last=True)
        opt_step = opt.step

        def timed_step(*args, **kwargs):  # the optimiser's own time, in its scope
            with record_function("optimizer"):
                return opt_step(*args, **kwargs)
        opt.step = timed_step
        for x, y in train_loader:  # untimed warm-up pass: oneDNN primitives, allocator
            train_step(model, x, y, opt, sched, scaler, task, cfg, autocast)
            break
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            model.train()
            batches = iter(train_loader)
            while True:
                with record_function("data"):
                    batch = next(batches, None)
                if batch is None:
                    break
                train_step(model, *batch, opt, sched, scaler, task, cfg, autocast)
            with record_function("evaluation"):
                task.evaluate(model, test_loader, autocast)
        totals: dict[str, float] = {}
        for event in prof.events():
            category = _category(event)
            totals[category] = totals.get(category, 0.0) + event.self_cpu_time_total
        whole = sum(totals.values())
        out[label] = {"steps": len(train_loader), "images": n, "eval_images": 2000, "cpu_seconds": round(whole / 1e6, 3),
                      "share": {k: round(v / whole, 4) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}}
    return out


# -- memory -------------------------------------------------------------------------------------------
def _peak_rss_mb() -> float:
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
    import torch.nn.functional as F

    from study.config import RunConfig
    from study.methods import build
    from study.tasks import get_task
    from study.train import autocast_for

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    _wait_for_go()
    before = _peak_rss_mb()
    cfg = RunConfig(arch=spec["arch"], method=spec["method"], method_args=spec["args"],
                    batch_size=spec["batch_size"], epochs=1)
    loaders = get_task("cifar10").loaders(cfg, spec["data_root"], torch.device("cpu"))
    data_rss = _peak_rss_mb()
    torch.manual_seed(0)
    model, _ = build(cfg.arch, cfg.method, cfg.method_args)
    model = model.to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    autocast = autocast_for(spec["precision"], torch.device("cpu"))
    for i, (x, y) in enumerate(loaders.train):
        if i == spec["steps"]:
            break
        with autocast():
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad(), autocast():
        x, _ = next(iter(loaders.val))
        model(x)
    return {"arch": cfg.arch, "method": cfg.method, "args": cfg.method_args, "steps": spec["steps"],
            "eval_batch": len(x), "peak_rss_mb": _peak_rss_mb(), "rss_after_imports_mb": before,
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


def _in_subprocesses(kind: str, specs: list[dict]) -> list[dict]:
    """One fresh process per spec, all started at once; each measures only itself, and starts measuring
    only when every process has imported and set up (`_wait_for_go`)."""
    procs = [subprocess.Popen([sys.executable, "-m", "study.bench", "--probe", kind, json.dumps(spec)],
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
    sequential = [_in_subprocesses("worker", [{**spec, "threads": threads, "seed": s}])[0] for s in (0, 1)]
    parallel = _in_subprocesses("worker", [{**spec, "threads": half, "seed": s} for s in (0, 1)])
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


# -- the command -----------------------------------------------------------------------------------------
def run(a) -> dict:
    from study.cli import _data_root

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
    data_root = _data_root(a.data_root)

    import torch

    from study.data.cifar import load_cifar10
    from study.train import resolve_precision

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
    epoch = epoch_comparison(a, precision, data)
    breakdown = profile_breakdown(a, precision, data) if a.profile_steps else None
    del data

    memory = {"bench_process_peak_rss_mb": _peak_rss_mb()}
    if a.memory_steps:
        mem_args = next((c for c in configs.get(MEMORY_ARCH, []) if (c["slice"], c["code_dim"]) == (16, 128)),
                        {"slice": 16, "code_dim": 128, "layout": "contiguous"})
        specs = [{"arch": MEMORY_ARCH, "method": method, "args": args, "batch_size": a.batch_size,
                  "precision": precision, "steps": a.memory_steps, "data_root": str(data_root),
                  "threads": torch.get_num_threads()} for method, args in (("none", {}), ("csg", mem_args))]
        for spec, probe in zip(specs, _in_subprocesses("memory", specs)):
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
    return {
        **ratios,
        "harness_speedup_over_reference": round(epoch["reference"]["epoch_seconds"]
                                                / epoch["harness"]["epoch_seconds"], 3),
        **({"jobs2_over_sequential": workers.get("jobs2_over_sequential")} if workers else {}),
        "precision": precision, "cpu_model": hardware(precision)["cpu_model"],
        "images_per_s": {f"{archs[0]} {m} {mode}": images_per_s(m, mode) for m in ("plain", "csg") for mode in modes},
        "targets": {"csg_over_plain_train": 0.97, "csg_over_plain_eval": 0.98,
                    "harness_speedup_over_reference": 4.0 if bf16 else 2.0,
                    "harness_speedup_target_rule": ">= 4.0 where the CPU trains in bf16, >= 2.0 where it trains in fp32"},
        **({"time_breakdown": breakdown} if breakdown else {}),
        "throughput": rows,
        "epoch": epoch,
        "memory": memory,
        **({"workers": workers} if workers else {}),
        "hardware": {**hardware(precision), "modes": modes},
        "settings": {"archs": archs, "configs": {k: [_label(c) for c in v] for k, v in configs.items()},
                     "batch_size": a.batch_size, "steps": a.steps, "repeats": a.repeats, "warmup": a.warmup,
                     "throughput_input": "one synthetic N(0,1) batch, channels_last",
                     "step": "study.train.train_step with the fast recipe's optimiser and loss: Nesterov SGD, "
                             "weight decay 5e-4 off BatchNorm and biases, label smoothing 0.1",
                     "ratio": "median over repeats of (CSG images/s / plain images/s), models interleaved; "
                              "*_best: best repeat / best repeat",
                     "eval_pass": "--steps batches under no_grad, kernels generated once at the start",
                     "data_root": str(data_root)},
        "load_average": {"start": load_start, "end": _load()},
        "seconds": round(time.perf_counter() - started, 1),
    }


def main(argv=None) -> int:  # `python -m study.bench --probe KIND SPEC`: one probe's process
    p = argparse.ArgumentParser(prog="python -m study.bench")
    p.add_argument("--probe", nargs=2, metavar=("KIND", "SPEC"), required=True)
    a = p.parse_args(argv)
    kind, spec = a.probe
    print(json.dumps(PROBES[kind](json.loads(spec))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
