"""A run's resolved configuration: every choice that can change a result, and its hash.

Grid files (`configs/*.yaml`) expand into `RunConfig`s (see `study/grid.py`).  A run is keyed by the
hash of its resolved config, so re-running a grid finds the runs it already has.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

SCHEDULES = ("step", "onecycle", "cosine")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
FLIPS = ("random", "alternating")
# Fields added after runs were stored: left out of the hash while at these defaults, so the runs of
# older stores (and of a study still training) keep their keys.
ADDED_LATER = {"image_size": None, "ema_decay": None, "no_decay_norm_bias": False, "flip": "random"}


@dataclass(frozen=True)
class RunConfig:
    arch: str = "resnet20"
    method: str = "none"
    # the method's own arguments (CSG: slice, code_dim, layout, generator, policy; baselines: their knob)
    method_args: dict[str, Any] = field(default_factory=dict)
    # parameter budget: an int; a grid file may name a configuration instead (`target_params: {method: ...,
    # method_args: ...}`), which the grid resolves to that configuration's count before building this
    # RunConfig (it refuses any other value)
    target_params: int | None = None
    seed: int = 0

    # optimisation (defaults: the authors' CIFAR protocol)
    epochs: int = 200
    batch_size: int = 192
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: str = "step"
    milestones: tuple[float, ...] = (0.5, 0.75)   # step schedule: fractions of `epochs`
    gamma: float = 0.1
    warmup_epochs: float = 0.0                    # onecycle: fraction of epochs is pct_start
    label_smoothing: float = 0.0
    # the fast recipe (see configs/fast91.yaml): an exponential moving average of the weights (decay
    # per optimiser step, None = off) is what gets evaluated, checkpointed and logged; BatchNorm and
    # bias parameters can be kept out of weight decay
    ema_decay: float | None = None
    no_decay_norm_bias: bool = False

    # data
    val_size: int = 5000          # held out from the training set for model selection
    train_subset: int | None = None   # smoke tests: a stratified subset of the training images
    test_subset: int | None = None
    workers: int = 2              # only for DataLoader-based tasks (ImageNet, VOC)
    # horizontal flips: "random" each epoch, or "alternating" (airbench): random in the first epoch,
    # then every image flipped the other way from the epoch before (CIFAR-10's in-memory loader only)
    flip: str = "random"
    # side of the square training/eval images; None = the task's standard size (ImageNet: 224 crop,
    # eval resize 256; VOC: 513 crop).  ImageNet at S: crop S, eval resize round(S*256/224); VOC at S:
    # crop S, images larger than S scaled to fit.  CIFAR-10 is 32 only (anything else is refused).
    image_size: int | None = None

    # speed
    precision: str = "auto"       # auto: bf16 on CPUs with AMX/AVX512-BF16, fp16 AMP on CUDA, else fp32
    channels_last: bool = True
    compile: bool = False

    name: str = ""                # display name; not part of the hash

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        for key in ("nesterov", "no_decay_norm_bias", "channels_last", "compile"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"{key} must be true or false, got {getattr(self, key)!r}")
        if self.flip not in FLIPS:
            raise ValueError(f"flip must be one of {FLIPS}, got {self.flip!r}")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie strictly between 0 and 1 (or be null: off), got {self.ema_decay}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        for key in ("epochs", "batch_size"):
            if int(getattr(self, key)) <= 0:
                raise ValueError(f"{key} must be a positive integer, got {getattr(self, key)}")
        if self.image_size is not None and (isinstance(self.image_size, bool) or not isinstance(self.image_size, int)
                                            or self.image_size <= 0):
            raise ValueError(f"image_size must be a positive integer or null (the task's standard size), "
                             f"got {self.image_size!r}")
        if isinstance(self.val_size, bool) or not isinstance(self.val_size, int) or self.val_size < 0:
            raise ValueError(f"val_size must be a non-negative integer (0: no validation split), got {self.val_size!r}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        object.__setattr__(self, "milestones", tuple(self.milestones))

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["milestones"] = list(self.milestones)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        return cls(**d)

    def hash(self) -> str:
        d = self.to_dict()
        d.pop("name")
        for key, default in ADDED_LATER.items():
            if d[key] == default:
                d.pop(key)
        blob = json.dumps(d, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def flat_params(self) -> dict[str, Any]:
        """For MLflow: method arguments flattened beside the rest, so the compare view can sort by them."""
        d = self.to_dict()
        d.update(d.pop("method_args"))
        d["milestones"] = ",".join(str(m) for m in self.milestones)
        return d
