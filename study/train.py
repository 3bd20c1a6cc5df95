"""Training and evaluation of one run: the loop, the schedules, precision, checkpoints and resume.

`train(cfg, ...)` is the whole life of a run.  It is seeded; it checkpoints after every epoch (model,
optimiser, schedule, RNG and data-order state, the method's structural changes and the metric
history), and mid-epoch when `mid_epoch` says so (every N minutes, or at once before a preemption:
`study/preempt.py`), and resumes from the newest good checkpoint, so a killed run finishes with the
metrics an uninterrupted one would have had (bitwise on CPU at a fixed thread count;
`tests/test_resume.py`, `tests/test_preempt.py`).
"""
from __future__ import annotations

import contextlib
import functools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from study import checkpoint, env, preempt
from study.config import RunConfig
from study.recipe import WeightAverage, decay_groups, norm_and_bias_names
from study.methods import get_method, resolve
from study.models import get_arch
from study.tasks import get_task


class DivergedError(RuntimeError):
    """The loss became NaN or infinite."""


# -- precision ----------------------------------------------------------------------------------
def autocast_for(precision: str, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    if precision == "fp32":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return functools.partial(torch.autocast, device_type=device.type, dtype=dtype)


# -- learning-rate schedules ---------------------------------------------------------------------
def lr_factor(cfg: RunConfig, progress: float) -> float:
    """Multiplier of `cfg.lr` at `progress` in [0, 1] of training."""
    if cfg.schedule == "step":  # the authors': x gamma at each milestone
        return cfg.gamma ** sum(progress >= m for m in cfg.milestones)
    warm = cfg.warmup_epochs / cfg.epochs
    if progress < warm:
        return progress / warm
    rest = (progress - warm) / max(1e-12, 1 - warm)
    if cfg.schedule == "onecycle":  # linear up, linear down to zero
        return max(0.0, 1.0 - rest)
    return 0.5 * (1 + math.cos(math.pi * rest))  # cosine


def make_optimizer(model: nn.Module, cfg: RunConfig, steps_per_epoch: int, steps_done: int,
                   exempt: set[str] = frozenset()):
    """SGD over the trainable parameters, those named in `exempt` without weight decay, and its
    LR schedule positioned after `steps_done` steps."""
    if cfg.no_decay_norm_bias:
        exempt = set(exempt) | norm_and_bias_names(model)
    opt = torch.optim.SGD(decay_groups(model, cfg.weight_decay, exempt), lr=cfg.lr, momentum=cfg.momentum,
                          nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)
    total = cfg.epochs * steps_per_epoch
    for group in opt.param_groups:
        group["initial_lr"] = cfg.lr
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(cfg, step / total),
                                              last_epoch=steps_done - 1)
    return opt, sched


# -- the run ------------------------------------------------------------------------------------
@dataclass
class Result:
    history: list[dict] = field(default_factory=list)  # one dict of metrics per finished epoch
    summary: dict = field(default_factory=dict)
    model: nn.Module | None = None
    args: dict = field(default_factory=dict)
    precision: str = "fp32"  # every precision the run trained in, in order of first use ("fp32+bf16")
    resumed_from: str | None = None  # where this call started: "epoch E batch B/N", None if from scratch
    # where each stretch of the run was trained: a run carried between machines (study/carry.py) may
    # train its first epochs on one CPU and precision and the rest on another
    segments: list[dict] = field(default_factory=list)  # [{"from_epoch", "cpu", "precision"}], in order

    @property
    def trained_on(self) -> str:
        """"epochs 1-12: AMD EPYC (fp32); 13-40: Intel Xeon (bf16)", for a run's tag."""
        ends = [s["from_epoch"] for s in self.segments[1:]] + [len(self.history)]
        return "; ".join(f"{'epochs ' if i == 0 else ''}{s['from_epoch'] + 1}-{end}: {s['cpu']} ({s['precision']})"
                         for i, (s, end) in enumerate(zip(self.segments, ends)))


def summarize(history: list[dict], primary: str = "acc") -> dict:
    """Final, best-on-validation and (labelled separately) best-on-test figures from a history.
    A run without a validation split (the authors' protocol) has no best-on-validation figures:
    the paper's best-test epoch is then its only selection, and it is named as such."""
    last = history[-1]
    best_test = max(history, key=lambda h: (h[f"test_{primary}"], -h["epoch"]))
    summary = {f"final_test_{primary}": last[f"test_{primary}"],
               f"best_test_{primary}": best_test[f"test_{primary}"], "best_test_epoch": best_test["epoch"]}
    if f"val_{primary}" not in last:
        return {**summary, "train_seconds": sum(h["epoch_seconds"] for h in history),
                **({f"final_test_{primary}_tta": last[f"test_{primary}_tta"]} if f"test_{primary}_tta" in last else {})}
    best_val = max(history, key=lambda h: (h[f"val_{primary}"], -h["epoch"]))
    return {
        **summary, f"final_val_{primary}": last[f"val_{primary}"],
        f"best_val_{primary}": best_val[f"val_{primary}"], "best_val_epoch": best_val["epoch"],
        f"test_{primary}_at_best_val": best_val[f"test_{primary}"],
        "train_seconds": sum(h["epoch_seconds"] for h in history),
        # flip test-time augmentation: its own labelled figures, never the headline
        **({f"final_test_{primary}_tta": last[f"test_{primary}_tta"],
            f"test_{primary}_tta_at_best_val": best_val[f"test_{primary}_tta"]}
           if f"test_{primary}_tta" in best_val else {}),
    }


def compiled_forward(model: nn.Module) -> nn.Module:
    """The forward `compile: true` trains with (and `study bench` times).  torch's default shapes: a
    run compiles one graph for its batch size and, at its first epoch's last, smaller batch, one
    with a dynamic batch dimension that serves every batch after; a method that reshapes the network
    then costs one more graph.  Static shapes (`dynamic=False`) were 3% faster per full batch on the
    2-core Intel machine with AMX (867 against 836 img/s, ResNet-20 bf16, one thread, beside other
    work), but they compile two graphs again at every reshape: about 40 s, what 3% saves over a
    50-epoch run, and one graph more than issue 12 allows a reshape."""
    return torch.compile(model)


def train_step(forward: nn.Module, x: torch.Tensor, y: torch.Tensor, opt, sched, scaler, task, cfg: RunConfig,
               autocast) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimiser step on a batch: forward and loss under autocast, backward (scaled for fp16),
    SGD step, LR schedule step.  Returns (loss, output), detached.  `study bench` times this very
    function."""
    with autocast():
        out = forward(x)
        loss = task.loss(out, y, cfg)
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    sched.step()
    return loss.detach(), out.detach()


def _rng_state(loader) -> dict:
    return {"torch": torch.get_rng_state(), "loader": loader.generator.get_state()}


def _where(epoch: int, batch: int, steps_per_epoch: int) -> str:
    return f"epoch {epoch + 1} batch {batch}/{steps_per_epoch}"


def train(cfg: RunConfig, data_root: str, checkpoint_dir: Path | None = None, device: str | None = None,
          on_epoch: Callable[[dict], None] | None = None, resolved_args: dict | None = None,
          mid_epoch: preempt.MidEpoch | None = None) -> Result:
    """Train `cfg` to the end (resuming from `checkpoint_dir` if it holds a good checkpoint).

    `on_epoch(metrics)` is called for every epoch of the history: first for the epochs restored from a
    checkpoint (a caller killed between checkpoint and logging catches up on them; it ignores the ones
    it already has), then for each newly finished epoch, after that epoch is checkpointed.
    `resolved_args` are the method's arguments with any budget search already done.
    `mid_epoch`, asked after every optimiser step, says when to checkpoint in the middle of an epoch
    (with the data-order position: the epoch, the batches done and the train loader's generator state
    at the epoch's start); on a preemption request it raises `preempt.Preempted` once that is on disk.
    """
    device = env.device(device)
    arch, method, task = get_arch(cfg.arch), get_method(cfg.method), get_task(get_arch(cfg.arch).task)
    torch.manual_seed(cfg.seed)
    if resolved_args is None:
        resolved_args = resolve(cfg.arch, cfg.method, cfg.method_args, target_params=cfg.target_params)
        torch.manual_seed(cfg.seed)
    model = method.build(arch, resolved_args, seed=cfg.seed)
    loaders = task.loaders(cfg, data_root, device)
    precision = env.resolve_precision(cfg.precision, device)
    autocast = autocast_for(precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    steps_per_epoch = len(loaders.train)

    history: list[dict] = []
    start_epoch, position, resumed_from, segments = 0, None, None, []
    state = checkpoint.load_latest(checkpoint_dir) if checkpoint_dir else None
    if state is not None:
        model = method.restore(model, resolved_args, state["structure"])

    def prepare(net: nn.Module):
        """On the device, in the memory format, with a new weight average (when the recipe asks for
        one): what a built, restored or reshaped network needs before it trains."""
        net = net.to(device)
        if cfg.channels_last:
            net = net.to(memory_format=torch.channels_last)
        return net, (WeightAverage(net, cfg.ema_decay) if cfg.ema_decay else None)

    model, average = prepare(model)
    opt, sched = make_optimizer(model, cfg, steps_per_epoch, 0, method.no_weight_decay(model))
    if state is not None:
        model.load_state_dict(state["model"])
        position = state.get("position")  # mid-epoch: {"batch", "loader", accumulators}; else None
        opt, sched = make_optimizer(model, cfg, steps_per_epoch,
                                    state["epoch"] * steps_per_epoch + (position["batch"] if position else 0),
                                    method.no_weight_decay(model))
        opt.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        if average is not None:
            average.load_state_dict(state["average"])
        torch.set_rng_state(state["rng"]["torch"])
        loaders.train.generator.set_state(state["rng"]["loader"])
        history, start_epoch = list(state["history"]), state["epoch"]
        resumed_from = _where(start_epoch, position["batch"] if position else 0, steps_per_epoch)
        segments = list(state.get("segments") or [{"from_epoch": 0, "cpu": "unrecorded", "precision": "unrecorded"}])
        for metrics in history if on_epoch else ():
            on_epoch(metrics)
    here = {"cpu": env.device_name(device), "precision": precision}
    if not segments or {k: segments[-1][k] for k in here} != here:  # a new stretch: begun, or moved machine
        segments.append({"from_epoch": start_epoch, **here})
    forward = compiled_forward(model) if cfg.compile else model
    total_steps = cfg.epochs * steps_per_epoch

    def snapshot(epochs_done: int, **extra) -> dict:
        return {"epoch": epochs_done, "model": model.state_dict(), "optimizer": opt.state_dict(),
                "scaler": scaler.state_dict(), "rng": _rng_state(loaders.train),
                **({"average": average.state_dict()} if average is not None else {}),
                "structure": method.structure(model), "history": history, "segments": segments, "config_hash": cfg.hash(),
                **extra}

    for epoch in range(start_epoch, cfg.epochs):
        resuming = position is not None and epoch == start_epoch
        if not resuming:  # a resumed epoch has started already: the method's changes are in the checkpoint
            changed = method.on_epoch_start(model, resolved_args, epoch, cfg.epochs)
            if changed is not model:  # the method reshaped the network: new parameters, new optimiser
                model, average = prepare(changed)
                opt, sched = make_optimizer(model, cfg, steps_per_epoch, epoch * steps_per_epoch,
                                            method.no_weight_decay(model))
                forward = compiled_forward(model) if cfg.compile else model
            elif average is not None and not average.follows(model):  # masks appeared in place: pruning began
                average = WeightAverage(model, cfg.ema_decay)
        if hasattr(loaders.train, "set_epoch"):
            loaders.train.set_epoch(epoch)
        t0 = time.perf_counter()
        model.train()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen, first = 0, 0
        if resuming:  # the epoch's order again (its generator state at the start), from the next batch
            loaders.train.generator.set_state(position["loader"])
            loss_sum += position["loss_sum"].to(device)
            correct += position["correct"].to(device)
            seen, first, t0 = position["seen"], position["batch"], t0 - position["seconds"]
        epoch_start = loaders.train.generator.get_state()
        for i, (x, y) in enumerate(preempt.batches_from(loaders.train, first), start=first):
            loss, out = train_step(forward, x, y, opt, sched, scaler, task, cfg, autocast)
            method.on_step(model, resolved_args, epoch * steps_per_epoch + i + 1, total_steps)
            if average is not None:
                average.update()
            loss_sum += loss.float() * len(y)
            if task.classifies:  # segmentation reports pixel metrics at evaluation
                correct += (out.argmax(1) == y).sum()
            seen += len(y)
            why = mid_epoch.due() if mid_epoch is not None else None
            if why is not None:
                if checkpoint_dir:
                    checkpoint.save(checkpoint_dir, epoch, snapshot(epoch, position={
                        "batch": i + 1, "loader": epoch_start, "loss_sum": loss_sum.cpu(),
                        "correct": correct.cpu(), "seen": seen, "seconds": time.perf_counter() - t0}), batch=i + 1)
                mid_epoch.saved(why, _where(epoch, i + 1, steps_per_epoch))
        train_loss = float(loss_sum) / seen
        if not math.isfinite(train_loss):
            raise DivergedError(f"training loss became {train_loss} in epoch {epoch + 1}")
        # evaluation runs eager: a compiled forward would recompile for eval mode and no_grad
        judged = average.module if average is not None else model
        val = task.evaluate(judged, loaders.val, autocast) if loaders.val is not None else {}
        test = task.evaluate(judged, loaders.test, autocast, tta=task.classifies)
        metrics = {"epoch": epoch + 1, "train_loss": train_loss, "lr": opt.param_groups[0]["lr"],
                   **({"train_acc": 100.0 * int(correct) / seen} if task.classifies else {}),
                   **{f"val_{k}": v for k, v in val.items()}, **{f"test_{k}": v for k, v in test.items()},
                   "epoch_seconds": time.perf_counter() - t0}
        history.append(metrics)
        if checkpoint_dir:
            checkpoint.save(checkpoint_dir, epoch + 1, snapshot(epoch + 1))
        if on_epoch:
            on_epoch(metrics)
        if mid_epoch is not None:
            mid_epoch.epoch_saved(_where(epoch + 1, 0, steps_per_epoch), last_epoch=epoch + 1 == cfg.epochs)

    if average is not None:  # the averaged network is the one evaluated, so it is the one reported
        for averaged, live in zip(average.module.parameters(), model.parameters()):
            averaged.requires_grad_(live.requires_grad)  # its accounting: trainable as the live network was
        model = average.module
    used = list(dict.fromkeys(s["precision"] for s in segments))
    return Result(history=history, summary=summarize(history, task.primary), model=model, args=resolved_args,
                  precision="+".join(used), resumed_from=resumed_from, segments=segments)
