"""CIFAR-10 as in-memory uint8 tensors, with augmentation done for a whole batch at once.

Two on-disk forms load into the same arrays: the official binary version (`cifar-10-batches-bin/`,
md5-verified) and torchvision's python version (`cifar-10-batches-py/`, fetched by torchvision where
there is internet).  Images are `[N, 3, 32, 32]` uint8, labels `[N]` int64.

The fast path (`CifarLoader`) keeps the data as tensors on the training device and does the
authors' augmentation (random crop with 4 pixels of zero padding, horizontal flip) per batch with
tensor indexing instead of per-image PIL work; `tests/test_data.py` checks it against torchvision's
transforms for the same offsets and flips.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

MEAN = (0.4914, 0.4822, 0.4465)  # the authors' normalisation (CIFAR-10 statistics)
STD = (0.2023, 0.1994, 0.2010)

BIN_FILES = {  # official md5 sums of the binary version
    "data_batch_1.bin": "5dd7e06a14cb22eb9f671a540d1b7c25",
    "data_batch_2.bin": "5ea93a67294ea407fff1d09f752e9692",
    "data_batch_3.bin": "942cd6a4bcdd0dd3c604fbe906cb4421",
    "data_batch_4.bin": "ae636b3ba5c66a11e91e8cb52e771fcb",
    "data_batch_5.bin": "53f37980c15c3d472c316c40844f3f0d",
    "test_batch.bin": "803d5f7f4d78ea53de84dbe85f74fb6d",
}


def py_files() -> dict[str, str]:
    """The python version's files and md5 sums, in batch order: torchvision's own list.  Imported when
    asked for: torchvision costs seconds to import, which every `python -m study` would pay."""
    from torchvision.datasets import CIFAR10

    return dict(CIFAR10.train_list + CIFAR10.test_list)


class DataError(ValueError):
    """Missing or corrupt data: the message names the file and what was expected."""


def default_root() -> str:
    return os.environ.get("STUDY_DATA_ROOT", "data")


def md5(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _verified_folder(root: Path, folder: str, files: dict[str, str], check_md5: bool) -> Path:
    base = root / folder
    for name, expected in files.items():
        path = base / name
        if not path.is_file():
            raise DataError(f"{path}: missing (expected md5 {expected})")
        if check_md5 and md5(path) != expected:
            raise DataError(f"{path}: corrupt, md5 differs from the official {expected}")
    return base


def locate(root: str | os.PathLike, check_md5: bool = True) -> tuple[str, Path]:
    """Which form of CIFAR-10 `root` holds; raises `DataError` naming the missing or corrupt file."""
    root = Path(root)
    if (root / "cifar-10-batches-bin").is_dir():
        return "bin", _verified_folder(root, "cifar-10-batches-bin", BIN_FILES, check_md5)
    if (root / "cifar-10-batches-py").is_dir():
        return "py", _verified_folder(root, "cifar-10-batches-py", py_files(), check_md5)
    raise DataError(f"{root}: holds neither cifar-10-batches-bin/ nor cifar-10-batches-py/ "
                    "(set STUDY_DATA_ROOT or --data-root)")


def _read_bin(path: Path) -> tuple[np.ndarray, np.ndarray]:
    raw = np.fromfile(path, dtype=np.uint8).reshape(-1, 3073)
    return raw[:, 1:].reshape(-1, 3, 32, 32), raw[:, 0].astype(np.int64)


def _read_py(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch of the python version: a pickled dict with `data` ([N, 3072] uint8, R, G then B
    planes, row-major) and `labels`.  Read here rather than through torchvision's `CIFAR10`, which
    re-checks the md5 sums itself and so would ignore `check_md5=False`."""
    import pickle

    with open(path, "rb") as f:
        entry = pickle.load(f, encoding="latin1")  # the official files are Python 2 pickles
    entry = {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}
    data = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    return data, np.asarray(entry["labels"], dtype=np.int64)


@dataclass
class Cifar10:
    train_x: torch.Tensor  # [50000, 3, 32, 32] uint8
    train_y: torch.Tensor
    test_x: torch.Tensor   # [10000, 3, 32, 32] uint8
    test_y: torch.Tensor


def load_cifar10(root: str | os.PathLike | None = None, check_md5: bool = True) -> Cifar10:
    kind, base = locate(root or default_root(), check_md5)
    if kind == "bin":
        parts = [_read_bin(base / name) for name in BIN_FILES]
        train_x = np.concatenate([p[0] for p in parts[:5]])
        train_y = np.concatenate([p[1] for p in parts[:5]])
        test_x, test_y = parts[5]
    else:
        parts = [_read_py(base / name) for name in py_files()]
        train_x = np.concatenate([p[0] for p in parts[:5]])
        train_y = np.concatenate([p[1] for p in parts[:5]])
        test_x, test_y = parts[5]
    return Cifar10(*(torch.from_numpy(np.ascontiguousarray(a)) for a in (train_x, train_y, test_x, test_y)))


def stratified_split(labels: torch.Tensor, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded split with every class in the same proportion on both sides; returns (train, val) indices."""
    rng = np.random.default_rng(seed)
    labels = labels.numpy()
    classes, counts = np.unique(labels, return_counts=True)
    perms = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    # largest-remainder apportionment: each class gets floor or ceil of its exact share, and the
    # shares add up to val_size exactly (ties between equal remainders broken by the seeded rng)
    quota = val_size * counts / len(labels)
    take = np.floor(quota).astype(np.int64)
    short = int(val_size - take.sum())
    if short > 0:
        order = np.lexsort((rng.random(len(classes)), -(quota - take)))
        take[order[:short]] += 1
    val = np.concatenate([p[:t] for p, t in zip(perms, take)])
    rest = np.setdiff1d(np.arange(len(labels)), val)
    return torch.from_numpy(np.sort(rest)), torch.from_numpy(np.sort(val))


def subset(x: torch.Tensor, y: torch.Tensor, n: int | None, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded, class-stratified subset of n examples (all of them when n is None)."""
    if n is None or n >= len(y):
        return x, y
    keep, _ = stratified_split(y, len(y) - n, seed)
    return x[keep], y[keep]


# -- the fast path ------------------------------------------------------------------------------
def normalize(x_uint8: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """ToTensor + Normalize: `(x / 255 - mean) / std`, the same operations in the same order (so the
    same values), done in place on the one float copy; a channels_last input stays channels_last."""
    mean = torch.tensor(MEAN, device=x_uint8.device, dtype=dtype)
    std = torch.tensor(STD, device=x_uint8.device, dtype=dtype)
    if x_uint8.dim() == 4 and not x_uint8.is_contiguous() and x_uint8.is_contiguous(memory_format=torch.channels_last):
        # work on the dense [B, H, W, C] view: the per-channel constants broadcast along the last dim
        return x_uint8.permute(0, 2, 3, 1).to(dtype).div_(255.0).sub_(mean).div_(std).permute(0, 3, 1, 2)
    return x_uint8.to(dtype).div_(255.0).sub_(mean.view(3, 1, 1)).div_(std.view(3, 1, 1))


def crop_flip(x: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """Batched RandomCrop(32, padding=pad) + RandomHorizontalFlip for given offsets `[B, 2]` (dy, dx)
    and flips `[B]`; zero padding, as torchvision pads the uint8 image before normalisation."""
    b, c, h, w = x.shape
    rows = offsets[:, 0, None] + torch.arange(h, device=x.device)           # [B, H]
    cols = offsets[:, 1, None] + torch.arange(w, device=x.device)           # [B, W]
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    if x.dtype == torch.uint8 and c <= 4:
        # Pack each pixel's channels into one int32 and gather B*H*W words (2x faster than
        # gathering B*H*W*C bytes); returned dense in channels_last, as the general path below.
        hp, wp = h + 2 * pad, w + 2 * pad
        packed = torch.zeros(b, hp, wp, 4, dtype=torch.uint8, device=x.device)
        packed[:, pad:pad + h, pad:pad + w, :c] = x.permute(0, 2, 3, 1)
        index = (rows[:, :, None] * wp + cols[:, None, :]).reshape(b, h * w)
        out = packed.view(torch.int32).view(b, hp * wp).gather(1, index)
        out = out.view(b, h, w, 1).view(torch.uint8)[..., :c].permute(0, 3, 1, 2)
        return out.contiguous(memory_format=torch.channels_last)
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    batch = torch.arange(b, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # [B, H, W, C]
    return out.permute(0, 3, 1, 2)


class CifarLoader:
    """Batches of (normalised float images, labels) from uint8 tensors held on `device`.

    `generator` fixes the data order and the augmentation; its state goes into checkpoints so a
    resumed run sees exactly the batches an uninterrupted one would have seen.

    `flip="alternating"` (airbench): each image's flip in the first epoch is a seeded coin, and
    every later epoch flips it the other way from the epoch before, so consecutive epochs see both
    orientations.  The coins come from `seed` alone and the trainer names the epoch
    (`set_epoch`, as with torch's DistributedSampler), so a resumed run flips as an uninterrupted
    one does.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, *, train: bool, device="cpu",
                 seed: int = 0, channels_last: bool = False, drop_last: bool = False, flip: str = "random"):
        if flip not in ("random", "alternating"):
            raise ValueError(f"flip must be 'random' or 'alternating', got {flip!r}")
        self.x, self.y = x.to(device), y.to(device)
        self.batch_size, self.train, self.device = batch_size, train, torch.device(device)
        self.channels_last, self.drop_last, self.flip = channels_last, drop_last, flip
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch = 0
        if flip == "alternating":
            self.first_flips = torch.rand(len(y), generator=torch.Generator().manual_seed(seed + 1)) < 0.5

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self):
        n = len(self.y)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        return self.iter_from(0)

    def iter_from(self, start: int):
        """This epoch's batches from index `start` on: the order and augmentation are drawn for the whole
        epoch as usual (same generator use), the skipped batches are not built (a mid-epoch resume)."""
        n = len(self.y)
        order = torch.randperm(n, generator=self.generator) if self.train else torch.arange(n)
        if self.train:
            offsets = torch.randint(0, 9, (n, 2), generator=self.generator)
            if self.flip == "alternating":
                flips = self.first_flips ^ bool(self.epoch % 2)
            else:
                flips = torch.rand(n, generator=self.generator) < 0.5
        for i in range(start, len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            x = self.x[idx.to(self.device)]
            if self.train:
                x = crop_flip(x, offsets[idx].to(self.device), flips[idx].to(self.device))
            x = normalize(x)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, self.y[idx.to(self.device)]
