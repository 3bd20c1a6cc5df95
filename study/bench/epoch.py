"""Seconds per epoch: the harness's training loop (its own `train_step` over a `CifarLoader`) against a
reference loop in the authors' style (PIL transforms per image, a 2-worker `DataLoader`, fp32, NCHW),
on the same real CIFAR-10 images with the same plain model.  The reference loop is deliberately not
the trainer's step: it is what the harness is compared with.
"""
from __future__ import annotations

import contextlib
import dataclasses
import time

from study.bench.throughput import fast_recipe_config, trainer_step

EPOCH_IMAGES = 45_000  # the training split: 50,000 minus the 5,000 held out for validation


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


def epoch_comparison(a, precision: str, data, compiled: bool = False) -> dict:
    """The reference loop, the harness's (in `precision`, channels_last) and the harness's in fp32 NCHW;
    with `compiled`, the harness's again with its training step's forward compiled, as `compile: true`
    trains.  Each harness loop first runs a few untimed steps on random data, one of them at the
    size of the epoch's last batch: that creates the oneDNN primitives and, compiled, compiles both
    graphs a run compiles in its first epoch (the second with a dynamic batch dimension), so the
    timed epoch is a steady one, as every epoch after a run's first is.  `warmup_seconds` says what
    that cost, compilation included."""
    import torch
    import torch.nn.functional as F

    from study.data.cifar import CifarLoader
    from study.methods import build
    from study.train import autocast_for, compiled_forward, make_optimizer

    n = min(a.reference_epoch_images, len(data.train_y))
    x_all, y_all = data.train_x[:n], data.train_y[:n]
    cfg = dataclasses.replace(fast_recipe_config(a.batch_size), arch=a.epoch_arch)
    steps_per_epoch = -(-n // a.batch_size)

    def model_and_opt(channels_last: bool):
        torch.manual_seed(0)
        model, _ = build(a.epoch_arch, "none")
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        model.train()
        opt, sched = make_optimizer(model, cfg, steps_per_epoch, 0)
        return model, opt, sched

    def warm(model, forward, opt, channels_last, autocast) -> float:
        """Untimed steps of the trainer's step at the batch size and at the last batch's size."""
        last = n % a.batch_size
        sizes = [a.batch_size] * max(1, a.warmup) + ([last] if last else [])
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)  # leaves the timed loop's schedule alone
        step = trainer_step(model, cfg, autocast, forward=forward, optimizer=(opt, sched))
        t0 = time.perf_counter()
        for size in sizes:
            x = torch.randn(size, 3, 32, 32)
            step(x.contiguous(memory_format=torch.channels_last) if channels_last else x,
                 torch.zeros(size, dtype=torch.long))
        return round(time.perf_counter() - t0, 2)

    def harness(prec: str, channels_last: bool, compile_step: bool = False) -> dict:
        """study.train's inner loop: its own `train_step` over a `CifarLoader`."""
        autocast = autocast_for(prec, torch.device("cpu"))
        model, opt, sched = model_and_opt(channels_last)
        forward = compiled_forward(model) if compile_step else model
        warmup_seconds = warm(model, forward, opt, channels_last, autocast)
        loader = CifarLoader(x_all, y_all, a.batch_size, train=True, seed=0, channels_last=channels_last)
        train_step = trainer_step(model, cfg, autocast, forward=forward, optimizer=(opt, sched))
        loss_sum, correct = torch.zeros(()), torch.zeros((), dtype=torch.long)

        def step(x, y):
            nonlocal loss_sum, correct
            loss, out = train_step(x, y)
            loss_sum += loss.float() * len(y)
            correct += (out.argmax(1) == y).sum()
        result = _timed_epoch(loader, step, n)
        float(loss_sum), int(correct)
        return {**result, "precision": prec, "channels_last": channels_last, "compiled": compile_step,
                "warmup_seconds": warmup_seconds, "loader": "CifarLoader"}

    def reference() -> dict:
        """The authors' style: PIL transforms per image, DataLoader(2 workers), fp32, .item() per step."""
        model, opt, _ = model_and_opt(False)
        warm(model, model, opt, False, contextlib.nullcontext)
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
    ours_compiled = harness(precision, True, compile_step=True) if compiled else None
    ref = reference()
    fp32 = harness("fp32", False) if precision != "fp32" else None
    out = {"arch": a.epoch_arch, "images_timed": n, "scaled_to_images": EPOCH_IMAGES,
           "scaling": "epoch_seconds = startup_seconds + (measured - startup) / images_timed * 45000",
           "evaluation_included": False, "harness": ours, "reference": ref}
    if ours_compiled is not None:
        out["harness_compiled"] = ours_compiled
        out["compiled_over_eager"] = round(ours["epoch_seconds"] / ours_compiled["epoch_seconds"], 3)
    if fp32 is not None:
        out["harness_fp32_nchw"] = fp32
        out["data_path_speedup"] = round(ref["epoch_seconds"] / fp32["epoch_seconds"], 3)
        out["precision_speedup"] = round(fp32["epoch_seconds"] / ours["epoch_seconds"], 3)
    return out


