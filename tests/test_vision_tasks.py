"""ImageNet (ImageFolder) and Pascal VOC (VOCSegmentation) tasks on tiny generated trees."""
from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from study.config import RunConfig
from study.data import imagenet as imagenet_data
from study.data import voc as voc_data
from study.data.cifar import DataError
from study.tasks import TASKS, get_task
from study.tasks import ImageNetTask, VOCTask
from study.tasks.voc import confusion_matrix, segmentation_scores
from visiontrees import VOC_SIZES, VOC_VAL, imagenet_tree, voc_tree



@pytest.fixture(scope="module")
def imagenet_root(tmp_path_factory):
    return imagenet_tree(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory):
    return voc_tree(tmp_path_factory.mktemp("data"))


def _cfg(**kw):
    return RunConfig(**{"arch": "imagenet_resnet18", "batch_size": 4, "val_size": 3, "workers": 0,
                        "channels_last": False, **kw})


def _batches(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


# -- registration -------------------------------------------------------------------------------
def test_tasks_register():
    assert isinstance(get_task("imagenet"), ImageNetTask) and isinstance(get_task("voc"), VOCTask)
    assert TASKS["imagenet"].primary == "acc" and TASKS["voc"].primary == "miou"


# -- ImageNet -----------------------------------------------------------------------------------
def test_imagenet_loaders_shapes_and_split(imagenet_root):
    task = ImageNetTask()
    loaders = task.loaders(_cfg(), str(imagenet_root), torch.device("cpu"))
    train, val, test = _batches(loaders.train), _batches(loaders.val), _batches(loaders.test)
    # 18 training images: 3 held out (one per class), 15 left, batches of 4 with the last dropped
    assert [len(y) for _, y in train] == [4, 4, 4]
    assert sorted(int(v) for _, y in val for v in y) == [0, 1, 2]
    assert sum(len(y) for _, y in test) == 6
    for x, y in train + val + test:
        assert x.dtype == torch.float32 and x.shape[1:] == (3, 224, 224)
        assert y.dtype == torch.int64
    # normalised with the ImageNet statistics: uniform random pixels centre near (0.5 - mean) / std
    centre = np.mean([(0.5 - m) / s for m, s in zip(imagenet_data.MEAN, imagenet_data.STD)])
    assert abs(float(torch.cat([x for x, _ in test]).mean()) - centre) < 0.05
    # the validation images are training-folder images, disjoint from the training split
    tr_idx = set(loaders.train.dataset.indices)
    va_idx = set(loaders.val.dataset.indices)
    assert not tr_idx & va_idx and len(tr_idx | va_idx) == 18
    assert loaders.test.dataset.base.root.endswith("val")


def test_imagenet_split_is_seeded(imagenet_root):
    task = ImageNetTask()
    a = task.loaders(_cfg(seed=0), str(imagenet_root), "cpu").val.dataset.indices
    b = task.loaders(_cfg(seed=0), str(imagenet_root), "cpu").val.dataset.indices
    c = [task.loaders(_cfg(seed=s), str(imagenet_root), "cpu").val.dataset.indices for s in range(1, 6)]
    assert a == b and any(a != other for other in c)


def test_imagenet_subsets(imagenet_root):
    loaders = ImageNetTask().loaders(_cfg(train_subset=6, test_subset=3), str(imagenet_root), "cpu")
    assert len(loaders.train.dataset) == 6 and len(loaders.test.dataset) == 3


def test_train_generator_fixes_order_and_augmentation(imagenet_root):
    task = ImageNetTask(image_size=32, resize_size=36)
    train = task.loaders(_cfg(), str(imagenet_root), "cpu").train
    assert isinstance(train.generator, torch.Generator)
    state = train.generator.get_state()
    first = _batches(train)
    second = _batches(train)  # the next epoch differs
    assert any(not torch.equal(a[0], b[0]) for a, b in zip(first, second))
    train.generator.set_state(state)
    again = _batches(train)  # restoring the state replays the epoch exactly
    for (xa, ya), (xb, yb) in zip(first, again):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    # ... whatever the number of worker processes
    workers = task.loaders(_cfg(workers=2), str(imagenet_root), "cpu").train
    workers.generator.set_state(state)
    for (xa, ya), (xb, yb) in zip(first, _batches(workers)):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_channels_last_flag(imagenet_root):
    loaders = ImageNetTask(image_size=32, resize_size=36).loaders(_cfg(channels_last=True), str(imagenet_root), "cpu")
    x, _ = next(iter(loaders.test))
    assert x.is_contiguous(memory_format=torch.channels_last)


class _Fixed(nn.Module):
    """Returns preset logits batch by batch, whatever the input."""

    def __init__(self, logits):
        super().__init__()
        self.logits, self.i = logits, 0

    def forward(self, x):
        out = self.logits[self.i: self.i + len(x)]
        self.i += len(x)
        return out


def test_imagenet_top1_top5_known_case():
    # 10 classes; scores descending from class 0: rank of the true class decides top-1 / top-5
    logits = torch.arange(10, 0, -1, dtype=torch.float32).repeat(4, 1)
    y = torch.tensor([0, 3, 4, 9])  # ranks 1, 4, 5, 10 -> top-1 1/4, top-5 3/4
    loader = [(torch.zeros(2, 3, 8, 8), y[:2]), (torch.zeros(2, 3, 8, 8), y[2:])]
    metrics = ImageNetTask().evaluate(_Fixed(logits), loader)
    assert metrics["acc"] == pytest.approx(25.0) and metrics["top5"] == pytest.approx(75.0)
    expected_loss = float(nn.functional.cross_entropy(logits, y))
    assert metrics["loss"] == pytest.approx(expected_loss, rel=1e-6)
    # top-5 is reported even with fewer than five classes (where it is 100%)
    few = ImageNetTask().evaluate(_Fixed(torch.eye(3)), [(torch.zeros(3, 1), torch.tensor([0, 2, 2]))])
    assert few["acc"] == pytest.approx(200 / 3) and few["top5"] == 100.0


def test_imagenet_missing_tree_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="train/ and val/"):
        imagenet_data.locate(tmp_path)


def test_imagenet_val_size_checked(imagenet_root):
    with pytest.raises(ValueError, match="val_size"):
        ImageNetTask().loaders(_cfg(val_size=5000), str(imagenet_root), "cpu")


# -- VOC ----------------------------------------------------------------------------------------
def _voc_cfg(**kw):
    return _cfg(**{"arch": "deeplabv3_resnet50", "batch_size": 2, "val_size": 1, **kw})


def test_voc_loaders_shapes_and_labels(voc_root):
    task = VOCTask(crop_size=32)
    loaders = task.loaders(_voc_cfg(), str(voc_root), "cpu")
    train, val, test = _batches(loaders.train), _batches(loaders.val), _batches(loaders.test)
    assert [len(y) for _, y in train] == [2, 2]  # 5 train images, 1 held out for validation
    assert sum(len(y) for _, y in val) == 1 and sum(len(y) for _, y in test) == 2
    for x, y in train + val + test:
        assert x.dtype == torch.float32 and x.shape[1:] == (3, 32, 32)
        assert y.dtype == torch.int64 and y.shape[1:] == (32, 32)
        values = set(y.unique().tolist())
        assert values <= set(range(21)) | {255} and 255 in values


def test_voc_eval_keeps_every_label_pixel(voc_root):
    task = VOCTask(crop_size=64)
    loaders = task.loaders(_voc_cfg(), str(voc_root), "cpu")
    ds = voc_data.dataset(voc_root, "val")
    (x, y), = _batches(loaders.test)[:1]
    for k, name in enumerate(VOC_VAL):
        w, h = VOC_SIZES[name]
        raw = torch.from_numpy(np.array(Image.open(ds.targets[k]), dtype=np.int64))
        assert torch.equal(y[k, :h, :w], raw)
        assert (y[k, h:, :] == 255).all() and (y[k, :, w:] == 255).all()
        assert (x[k, :, h:, :] == 0).all()


def test_voc_train_transform_is_joint():
    # an image whose pixel values encode its own label map: after the joint transform they agree
    labels = np.tile(np.arange(20, dtype=np.uint8), (20, 1))  # label = column index
    image = Image.fromarray(np.repeat((labels * 12)[:, :, None], 3, axis=2))
    target = Image.fromarray(labels, mode="P")
    tf = voc_data.TrainTransform(crop_size=24, scale_range=(1.0, 1.0))
    for seed in range(6):
        torch.manual_seed(seed)
        x, y = tf(image, target)
        pixel = x[0] * voc_data.STD[0] + voc_data.MEAN[0]  # back to [0, 1]
        inside = y != 255
        assert torch.allclose(pixel[inside] * 255, (y[inside] * 12).float(), atol=1.0)
        assert ((pixel[~inside] - voc_data.MEAN[0]).abs() < 1e-5).all()  # padding is the mean colour


def test_voc_loss_ignores_255():
    out = torch.randn(2, 21, 4, 4)
    y = torch.randint(0, 21, (2, 4, 4))
    y_ignored = y.clone()
    y_ignored[:, 0] = 255
    task, cfg = VOCTask(), _voc_cfg()
    expected = nn.functional.cross_entropy(out[:, :, 1:].permute(0, 2, 3, 1).reshape(-1, 21), y[:, 1:].reshape(-1))
    torch.testing.assert_close(task.loss(out, y_ignored, cfg), expected)


def test_miou_by_hand():
    # 3 classes; 255 pixels must not count, wherever the prediction falls
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 255]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 0]])
    cm = confusion_matrix(pred, target, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    # IoU: class 0: 1 / (2 + 2 - 1) = 1/3; class 1: 2 / (2 + 3 - 2) = 2/3; class 2: 1 / (2 + 1 - 1) = 1/2
    scores = segmentation_scores(cm)
    assert scores["acc"] == pytest.approx(100 * 4 / 6)
    assert scores["miou"] == pytest.approx(100 * (1 / 3 + 2 / 3 + 1 / 2) / 3)
    # a class absent from targets and predictions is left out of the mean
    assert segmentation_scores(confusion_matrix(pred, target, 5))["miou"] == pytest.approx(scores["miou"])


def test_voc_evaluate_matches_hand_computation():
    target = torch.tensor([[[0, 0, 1, 1], [2, 2, 255, 255]]])
    pred = torch.tensor([[[0, 1, 1, 1], [2, 0, 2, 0]]])
    logits = nn.functional.one_hot(pred, 21).permute(0, 3, 1, 2).float() * 10
    metrics = VOCTask().evaluate(_Fixed(logits), [(torch.zeros(1, 3, 2, 4), target)])
    assert set(metrics) == {"loss", "acc", "miou"}
    assert metrics["acc"] == pytest.approx(100 * 4 / 6)
    assert metrics["miou"] == pytest.approx(100 * (1 / 3 + 2 / 3 + 1 / 2) / 3)
    ce = nn.functional.cross_entropy(logits, target, ignore_index=255)
    assert metrics["loss"] == pytest.approx(float(ce), rel=1e-5)


def test_voc_missing_tree_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="VOCdevkit"):
        voc_data.locate(tmp_path)


def test_deeplab_trains_one_step_on_voc(voc_root):
    """The pieces fit: a DeepLabV3 CSG model, the VOC loader and the loss, one SGD step."""
    from study.methods import build

    model, _ = build("deeplabv3_resnet50", "csg", {"slice": 16, "code_dim": 8})
    loaders = VOCTask(crop_size=32).loaders(_voc_cfg(), str(voc_root), "cpu")
    x, y = next(iter(loaders.train))
    model.train()
    loss = VOCTask().loss(model(x), y, _voc_cfg())
    loss.backward()
    assert torch.isfinite(loss) and model.csg.weight.grad is not None
    metrics = VOCTask().evaluate(model, loaders.test)
    assert 0.0 <= metrics["miou"] <= 100.0 and 0.0 <= metrics["acc"] <= 100.0


def test_runconfig_has_the_fields_the_loaders_read():
    """RunConfig fields the vision loaders read all exist."""
    names = {f.name for f in dataclasses.fields(RunConfig)}
    assert {"batch_size", "val_size", "train_subset", "test_subset", "workers", "seed", "channels_last"} <= names


# -- image size (RunConfig.image_size) and data checks ------------------------------------------------
def test_imagenet_image_size_from_config(imagenet_root):
    task = ImageNetTask()
    assert task.sizes(_cfg()) == (224, 256)
    assert task.sizes(_cfg(image_size=64)) == (64, 73)  # round(64 * 256 / 224)
    assert task.sizes(_cfg(image_size=32)) == (32, 37)
    loaders = task.loaders(_cfg(image_size=32), str(imagenet_root), "cpu")
    for loader in (loaders.train, loaders.val, loaders.test):
        x, _ = next(iter(loader))
        assert x.shape[1:] == (3, 32, 32)
    resize = [t for t in loaders.test.dataset.transform.transforms if type(t).__name__ == "Resize"][0]
    assert resize.size == 37


def test_voc_image_size_from_config(voc_root):
    loaders = VOCTask().loaders(_voc_cfg(image_size=24), str(voc_root), "cpu")
    for loader in (loaders.train, loaders.val, loaders.test):
        x, y = next(iter(loader))
        assert x.shape[1:] == (3, 24, 24) and y.shape[1:] == (24, 24)


def test_voc_train_fits_large_images_like_eval():
    # an image larger than the crop is scaled to fit it first, so training sees evaluation's scale
    image = Image.fromarray(np.zeros((40, 80, 3), np.uint8))
    target = Image.fromarray(np.ones((40, 80), np.uint8), mode="P")
    torch.manual_seed(0)
    x, y = voc_data.TrainTransform(crop_size=20, scale_range=(1.0, 1.0))(image, target)
    assert x.shape[1:] == (20, 20) and int((y == 1).sum()) == 20 * 10  # 80x40 -> 20x10, then padded
    x, y = voc_data.EvalTransform(crop_size=20)(image, target)
    assert int((y == 1).sum()) == 20 * 10


def test_image_size_validated():
    with pytest.raises(ValueError, match="image_size"):
        RunConfig(image_size=0)
    with pytest.raises(ValueError, match="image_size"):
        RunConfig(image_size="64")
    # left unset, it does not enter the config hash, so runs keyed before it existed keep their keys
    assert RunConfig().hash() != RunConfig(image_size=64).hash()
    from study.config import ADDED_LATER

    d = RunConfig(arch="mobilenetv2").to_dict()
    del d["name"]
    for key in ADDED_LATER:  # every field added after runs were stored, image_size among them
        del d[key]
    old = hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]
    assert RunConfig(arch="mobilenetv2").hash() == old


def test_cifar_task_refuses_other_image_sizes():
    task = get_task("cifar10")
    task.check_config(RunConfig(image_size=None))
    task.check_config(RunConfig(image_size=32))
    with pytest.raises(ValueError, match="CIFAR-10"):
        task.check_config(RunConfig(image_size=64))
    with pytest.raises(ValueError, match="image_size 64"):
        task.loaders(RunConfig(image_size=64), "/nonexistent", "cpu")


def test_check_data_names_what_is_missing(tmp_path, imagenet_root, voc_root):
    imagenet, voc = get_task("imagenet"), get_task("voc")
    imagenet.check_data(str(imagenet_root))
    voc.check_data(str(voc_root))
    with pytest.raises(DataError, match=rf"^{tmp_path / 'train'}: missing \(expected an ImageFolder tree"):
        imagenet.check_data(str(tmp_path))
    (tmp_path / "imagenet" / "train" / "n01").mkdir(parents=True)
    with pytest.raises(DataError, match=rf"^{tmp_path / 'imagenet' / 'val'}: missing"):
        imagenet.check_data(str(tmp_path))
    (tmp_path / "imagenet" / "val" / "n02").mkdir(parents=True)
    with pytest.raises(DataError, match="'n01' is only in train/"):
        imagenet.check_data(str(tmp_path))
    with pytest.raises(DataError, match=rf"^{tmp_path / 'VOCdevkit' / 'VOC2012'}: missing"):
        voc.check_data(str(tmp_path))


def test_voc_check_data_names_missing_list_and_files(tmp_path):
    root = voc_tree(tmp_path / "a")
    base = root / "VOCdevkit" / "VOC2012"
    (base / "ImageSets/Segmentation/val.txt").unlink()
    with pytest.raises(DataError, match=r"Segmentation/val\.txt: missing"):
        get_task("voc").check_data(str(root))
    root = voc_tree(tmp_path / "b")
    (root / "VOCdevkit/VOC2012/SegmentationClass" / f"{VOC_VAL[0]}.png").unlink()
    with pytest.raises(DataError, match=rf"{VOC_VAL[0]}\.png: missing \(listed in val\.txt\)"):
        get_task("voc").check_data(str(root))
