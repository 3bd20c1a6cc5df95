"""The `Task` interface: data loaders, loss and metrics; one subclass per task, each in its own file.

A task gives the trainer three loaders (train, validation, test) that yield `(x, y)` batches on
the training device.  The train loader has a `generator` attribute (a `torch.Generator`): its state
at the start of an epoch fixes that epoch's order and augmentation, so checkpoints save it.

Before any run starts, `python -m study run` calls `check_config(cfg)` for every run (a setting the
task cannot honour raises `ValueError`) and `check_data(root)` for every task of the grid (missing
or corrupt data raises `study.data.cifar.DataError`, one line naming the file or folder).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from study.config import RunConfig


def flip_tta_logits(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(single-view output, probabilities averaged over the image and its horizontal mirror)."""
    out = model(x)
    mirrored = model(x.flip(3))
    probs = 0.5 * (F.softmax(out.float(), 1) + F.softmax(mirrored.float(), 1))
    return out, probs


@dataclass
class Loaders:
    train: Iterable
    val: Iterable
    test: Iterable


class Task:
    name: str
    primary: str = "acc"  # the metric used for model selection and reports (higher is better)
    top5: bool = False    # report top-5 even with few classes (ImageNet-style tasks)

    def loaders(self, cfg: RunConfig, data_root: str, device: torch.device) -> Loaders:
        raise NotImplementedError

    def check_data(self, data_root: str) -> None:
        """Raise `DataError` (one line naming the missing or corrupt file or folder) if `data_root`
        does not hold this task's data.  Cheap: it looks, it does not load."""

    def check_config(self, cfg: RunConfig) -> None:
        """Raise `ValueError` if `cfg` asks for something this task cannot do."""
        if cfg.flip != "random":
            raise ValueError(f"flip: {cfg.flip} is only implemented by CIFAR-10's in-memory loader; "
                             f"task {self.name} flips at random")

    def loss(self, output: torch.Tensor, y: torch.Tensor, cfg: RunConfig) -> torch.Tensor:
        return F.cross_entropy(output, y, label_smoothing=cfg.label_smoothing)

    classifies: bool = True  # image classification: train accuracy and flip test-time augmentation apply

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: Iterable, autocast=contextlib.nullcontext,
                 tta: bool = False) -> dict[str, float]:
        """Mean loss and top-1 (and top-5 where there are more than 5 classes) accuracy in %.
        With `tta`, also `acc_tta`: top-1 of the softmax averaged over each image and its mirror
        (a separate, labelled metric; the single view stays the headline)."""
        model.eval()
        n, loss, top1, top5, top1_tta = 0, 0.0, 0, 0, 0
        for x, y in loader:
            with autocast():
                if tta:
                    out, probs = flip_tta_logits(model, x)
                else:
                    out = model(x)
            out = out.float()
            loss += float(F.cross_entropy(out, y, reduction="sum"))
            best = out.topk(min(5, out.shape[1]), dim=1).indices
            top1 += int((best[:, 0] == y).sum())
            top5 += int((best == y[:, None]).any(1).sum())
            if tta:
                top1_tta += int((probs.argmax(1) == y).sum())
            n += len(y)
        if n == 0:
            raise ValueError("evaluation loader is empty")
        metrics = {"loss": loss / n, "acc": 100.0 * top1 / n}
        if self.top5 or out.shape[1] > 5:
            metrics["top5"] = 100.0 * top5 / n
        if tta:
            metrics["acc_tta"] = 100.0 * top1_tta / n
        return metrics
