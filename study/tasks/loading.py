"""What the ImageNet and VOC tasks share: torchvision-style datasets on a seeded `DataLoader`.

Reproducible loading.  A train loader's `generator` (a seeded `torch.Generator`, also handed to
`DataLoader(generator=...)`) fixes each epoch completely: at the start of an epoch the sampler
draws the order and one seed per sample from it, and every sample is transformed under its own
seed (torch's global RNG is forked and seeded around the transform).  So the batches depend only
on the generator's state, not on the number of worker processes, and restoring the generator's
state restores an epoch.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from study.config import RunConfig


class SeededSampler(Sampler):
    """Yields `(index, seed)`; the order (when shuffling) and the seeds come from `generator`."""

    def __init__(self, n: int, generator: torch.Generator | None = None, shuffle: bool = True):
        self.n, self.generator, self.shuffle = n, generator, shuffle
        self.start = 0  # the next pass yields from this position on (a mid-epoch resume), then 0 again

    def __len__(self):
        return self.n

    def __iter__(self):
        if self.shuffle:
            order = torch.randperm(self.n, generator=self.generator).tolist()
            seeds = torch.randint(0, 2 ** 62, (self.n,), generator=self.generator).tolist()
        else:
            order, seeds = range(self.n), [None] * self.n
        start, self.start = self.start, 0
        return iter(list(zip(order, seeds))[start:])


class SampleView(Dataset):
    """`indices` of `base` (which yields raw `(image, target)`), transformed.

    `transform(image)` is applied to the image alone, or `transform(image, target)` jointly when
    `joint`.  A key `(i, seed)` runs the transform under `torch.manual_seed(seed)` in a forked RNG.
    """

    def __init__(self, base, indices: Sequence[int], transform: Callable, joint: bool = False):
        self.base, self.indices = base, [int(i) for i in indices]
        self.transform, self.joint = transform, joint

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, key):
        i, seed = key if isinstance(key, tuple) else (key, None)
        image, target = self.base[self.indices[i]]
        rng = torch.random.fork_rng(devices=[]) if seed is not None else contextlib.nullcontext()
        with rng:
            if seed is not None:
                torch.manual_seed(seed)
            if self.joint:
                return self.transform(image, target)
            return self.transform(image), target


class DeviceLoader:
    """Wraps a DataLoader: moves batches to `device` (channels-last if asked); exposes `generator`."""

    def __init__(self, loader: DataLoader, device, channels_last: bool = False):
        self.loader, self.device, self.channels_last = loader, torch.device(device), channels_last
        self.generator = loader.generator
        self.dataset = loader.dataset

    def __len__(self):
        return len(self.loader)

    def iter_from(self, start: int):
        """This epoch's batches from index `start` on: the sampler draws the whole epoch's order and
        seeds as usual and skips the first `start` batches' samples, which are not loaded."""
        self.loader.sampler.start = start * self.loader.batch_size
        return iter(self)

    def __iter__(self):
        for x, y in self.loader:
            x = x.to(self.device, non_blocking=True)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, torch.as_tensor(y).to(self.device, non_blocking=True)


def make_loader(view: SampleView, cfg: RunConfig, device, train: bool) -> DeviceLoader:
    device = torch.device(device)
    batch_size = cfg.batch_size
    generator = torch.Generator().manual_seed(cfg.seed)
    loader = DataLoader(view, batch_size=batch_size, sampler=SeededSampler(len(view), generator, shuffle=train),
                        num_workers=cfg.workers, generator=generator, pin_memory=device.type == "cuda",
                        drop_last=train and len(view) > batch_size)  # no lone last batch for BatchNorm
    return DeviceLoader(loader, device, cfg.channels_last)
