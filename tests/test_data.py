"""CIFAR-10 on real data: md5-checked loading of both on-disk forms, the split, the batched augmentation
(against torchvision's transforms) and the normalisation."""
from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from scipy import stats

from study.data import cifar as cifar_mod
from study.data.cifar import (BIN_FILES, CifarLoader, DataError, crop_flip, load_cifar10, normalize,
                              stratified_split, subset)

AUTHORS_MEAN = (0.4914, 0.4822, 0.4465)
AUTHORS_STD = (0.2023, 0.1994, 0.2010)


def _link_bin_copy(data_root, dest, corrupt=None, drop=None):
    """A cifar-10-batches-bin folder in `dest` that links the real files, with one corrupted or missing."""
    folder = dest / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    for name in BIN_FILES:
        src = data_root / "cifar-10-batches-bin" / name
        if name == drop:
            continue
        if name == corrupt:
            data = bytearray(src.read_bytes())
            data[12345] ^= 0x01  # one flipped bit in one pixel
            (folder / name).write_bytes(bytes(data))
        else:
            os.symlink(src, folder / name)
    return folder


# -- loading ----------------------------------------------------------------------------------
def test_loaded_arrays(cifar, data_root):
    assert cifar.train_x.shape == (50_000, 3, 32, 32) and cifar.train_x.dtype == torch.uint8
    assert cifar.test_x.shape == (10_000, 3, 32, 32) and cifar.test_x.dtype == torch.uint8
    assert cifar.train_y.dtype == cifar.test_y.dtype == torch.int64
    assert torch.equal(torch.bincount(cifar.train_y), torch.full((10,), 5000))
    assert torch.equal(torch.bincount(cifar.test_y), torch.full((10,), 1000))
    # the well-known first labels: frog, truck, truck, deer, ... and cat, ship, ship, airplane, ...
    assert cifar.train_y[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    assert cifar.test_y[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    # record layout: 1 label byte, then 1024 R, 1024 G, 1024 B bytes, row-major
    raw = np.fromfile(data_root / "cifar-10-batches-bin" / "data_batch_2.bin", np.uint8, count=2 * 3073)
    rec = raw[3073:]  # second record of batch 2 = training image 10,001
    assert cifar.train_y[10_001] == rec[0]
    assert np.array_equal(cifar.train_x[10_001, 1].numpy().ravel(), rec[1 + 1024:1 + 2048])
    assert np.array_equal(cifar.train_x[10_001, 0, 0].numpy(), rec[1:33])


def test_corrupt_bin_file_is_refused_with_its_name_and_md5(data_root, tmp_path):
    folder = _link_bin_copy(data_root, tmp_path, corrupt="data_batch_3.bin")
    with pytest.raises(DataError) as e:
        load_cifar10(tmp_path)
    msg = str(e.value)
    assert str(folder / "data_batch_3.bin") in msg
    assert BIN_FILES["data_batch_3.bin"] in msg and "\n" not in msg


def test_missing_bin_file_is_refused(data_root, tmp_path):
    folder = _link_bin_copy(data_root, tmp_path, drop="test_batch.bin")
    with pytest.raises(DataError, match="test_batch.bin"):
        load_cifar10(tmp_path)
    assert not (folder / "test_batch.bin").exists()


def test_empty_root_is_refused(tmp_path):
    with pytest.raises(DataError, match="cifar-10-batches"):
        load_cifar10(tmp_path)


@pytest.fixture(scope="module")
def py_root(cifar, tmp_path_factory):
    """The python version of CIFAR-10, written in the official format from the binary data."""
    root = tmp_path_factory.mktemp("pyversion")
    folder = root / "cifar-10-batches-py"
    folder.mkdir()

    def dump(name, x, y, label):
        entry = {"batch_label": label, "labels": y.tolist(),
                 "data": x.numpy().reshape(len(x), 3072),  # [N, 3072] uint8: R plane, G plane, B plane
                 "filenames": [f"img_{i}.png" for i in range(len(y))]}
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f, protocol=2)

    for b in range(5):
        sl = slice(b * 10_000, (b + 1) * 10_000)
        dump(f"data_batch_{b + 1}", cifar.train_x[sl], cifar.train_y[sl], f"training batch {b + 1} of 5")
    dump("test_batch", cifar.test_x, cifar.test_y, "testing batch 1 of 1")
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names, "num_cases_per_batch": 10_000, "num_vis": 3072}, f, protocol=2)
    return root


def test_python_version_loads_into_identical_arrays(cifar, py_root):
    # our pickles are not byte-identical to the official ones, so their md5 cannot match
    got = load_cifar10(py_root, check_md5=False)
    for name in ("train_x", "train_y", "test_x", "test_y"):
        a, b = getattr(got, name), getattr(cifar, name)
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert torch.equal(a, b), name
    assert got.train_x.is_contiguous()


def test_python_version_md5_is_checked(py_root):
    with pytest.raises(DataError, match=r"data_batch_1.*c99cafc152244af753f735de768cd75f"):
        load_cifar10(py_root)


# -- the split ---------------------------------------------------------------------------------
@pytest.mark.parametrize("val_size", [5000, 1003, 10])
def test_stratified_split(cifar, val_size):
    y = cifar.train_y
    train, val = stratified_split(y, val_size, seed=0)
    assert len(val) == val_size and len(train) == len(y) - val_size
    assert len(np.intersect1d(train.numpy(), val.numpy())) == 0
    assert torch.equal(torch.sort(torch.cat([train, val])).values, torch.arange(len(y)))
    per_class = torch.bincount(y[val], minlength=10)
    expected = val_size / 10  # CIFAR-10's classes are balanced
    assert torch.all((per_class - expected).abs() <= 1), per_class
    if val_size == 5000:
        assert torch.equal(per_class, torch.full((10,), 500))
        assert torch.equal(torch.bincount(y[train]), torch.full((10,), 4500))
    again_train, again_val = stratified_split(y, val_size, seed=0)
    assert torch.equal(again_val, val) and torch.equal(again_train, train)
    _, other = stratified_split(y, val_size, seed=1)
    assert not torch.equal(other, val)


def test_stratified_split_unbalanced_labels():
    y = torch.tensor([0] * 700 + [1] * 200 + [2] * 100)
    train, val = stratified_split(y, 100, seed=3)
    assert len(val) == 100
    assert torch.bincount(y[val], minlength=3).tolist() == [70, 20, 10]
    assert torch.bincount(y[train], minlength=3).tolist() == [630, 180, 90]


def test_subset_is_stratified_and_seeded(cifar):
    x, y = subset(cifar.test_x, cifar.test_y, 2000, seed=0)
    assert len(y) == 2000 and torch.equal(torch.bincount(y), torch.full((10,), 200))
    x2, _ = subset(cifar.test_x, cifar.test_y, 2000, seed=0)
    assert torch.equal(x, x2)
    full_x, _ = subset(cifar.test_x, cifar.test_y, None, seed=0)
    assert full_x is cifar.test_x


# -- augmentation ------------------------------------------------------------------------------
def test_crop_flip_equals_torchvision(cifar):
    images = cifar.train_x[:6]
    combos = [(dy, dx, f) for dy in range(9) for dx in range(9) for f in (False, True)]
    n = len(combos)
    x = images.repeat(n // len(images) + 1, 1, 1, 1)[:n]
    offsets = torch.tensor([(dy, dx) for dy, dx, _ in combos])
    flips = torch.tensor([f for _, _, f in combos])
    got = crop_flip(x, offsets, flips)
    assert got.shape == x.shape and got.dtype == torch.uint8
    for k, (dy, dx, f) in enumerate(combos):
        ref = TF.crop(TF.pad(x[k], [4], fill=0), dy, dx, 32, 32)  # RandomCrop(32, padding=4)
        if f:
            ref = TF.hflip(ref)                                       # then RandomHorizontalFlip
        assert torch.equal(got[k], ref), (dy, dx, f)
    # offset (4, 4) without a flip is the identity
    assert torch.equal(got[[k for k, c in enumerate(combos) if c == (4, 4, False)][0]],
                       x[[k for k, c in enumerate(combos) if c == (4, 4, False)][0]])


def test_augmentation_distribution(monkeypatch):
    """Offsets uniform over 0..8 in each axis (independently), flips with probability 1/2, per image."""
    seen_offsets, seen_flips = [], []
    real = cifar_mod.crop_flip

    def recording(x, offsets, flips, pad=4):
        seen_offsets.append(offsets.clone())
        seen_flips.append(flips.clone())
        return real(x, offsets, flips, pad)

    monkeypatch.setattr(cifar_mod, "crop_flip", recording)
    n = 18_000
    x = torch.zeros(n, 3, 2, 2, dtype=torch.uint8)  # tiny images: only the draws matter here
    loader = CifarLoader(x, torch.zeros(n, dtype=torch.long), 4096, train=True, seed=1234)
    batches = list(loader)
    assert sum(len(b[1]) for b in batches) == n
    offsets, flips = torch.cat(seen_offsets), torch.cat(seen_flips)
    assert len(offsets) == n and offsets.min() == 0 and offsets.max() == 8
    for axis in (0, 1):
        counts = torch.bincount(offsets[:, axis], minlength=9).numpy()
        assert stats.chisquare(counts).pvalue > 1e-3, counts
    joint = torch.bincount(offsets[:, 0] * 9 + offsets[:, 1], minlength=81).numpy()
    assert stats.chisquare(joint).pvalue > 1e-3
    n_flip = int(flips.sum())
    assert stats.binomtest(n_flip, n, 0.5).pvalue > 1e-3, n_flip
    assert stats.chisquare([n_flip, n - n_flip]).pvalue > 1e-3


def test_loader_is_seeded_and_reshuffles(cifar):
    x, y = cifar.train_x[:300], cifar.train_y[:300]

    def epoch(loader):
        return [(xb.clone(), yb.clone()) for xb, yb in loader]

    a = CifarLoader(x, y, 128, train=True, seed=7)
    b = CifarLoader(x, y, 128, train=True, seed=7)
    e1, e2 = epoch(a), epoch(a)
    f1 = epoch(b)
    assert len(e1) == 3 and [len(t[1]) for t in e1] == [128, 128, 44]
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(e1, f1))
    assert not torch.equal(e1[0][1], e2[0][1])  # a new order (and augmentation) each epoch
    assert sorted(torch.cat([t[1] for t in e1]).tolist()) == sorted(y.tolist())
    dropped = CifarLoader(x, y, 128, train=True, seed=7, drop_last=True)
    assert len(dropped) == 2 and len(list(dropped)) == 2


def test_eval_loader_is_plain_and_in_order(cifar):
    x, y = cifar.test_x[:250], cifar.test_y[:250]
    batches = list(CifarLoader(x, y, 100, train=False))
    assert [len(b[1]) for b in batches] == [100, 100, 50]
    assert torch.equal(torch.cat([b[0] for b in batches]), normalize(x))
    assert torch.equal(torch.cat([b[1] for b in batches]), y)


# -- normalisation -----------------------------------------------------------------------------
def test_normalisation_uses_the_authors_statistics(cifar):
    assert cifar_constants() == (AUTHORS_MEAN, AUTHORS_STD)
    x = cifar.test_x[:8]
    got = normalize(x)
    assert got.dtype == torch.float32
    for k in range(len(x)):
        pil = TF.to_pil_image(x[k])
        ref = TF.normalize(TF.to_tensor(pil), AUTHORS_MEAN, AUTHORS_STD)  # ToTensor + Normalize
        torch.testing.assert_close(got[k], ref, rtol=1e-5, atol=1e-5)


def cifar_constants():
    return tuple(cifar_mod.MEAN), tuple(cifar_mod.STD)


def test_data_root_default_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("STUDY_DATA_ROOT", str(tmp_path))
    assert cifar_mod.default_root() == str(tmp_path)
    with pytest.raises(DataError, match=str(tmp_path)):
        load_cifar10()
