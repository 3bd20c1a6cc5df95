"""The authors' DenseNet-BC and ShuffleNetV2 checkpoints reproduce their stored accuracy in our models.

Real tests on the full CIFAR-10 test set (10,000 images).  The data and checkpoints live in
`../shared` next to the repository (or `STUDY_DATA_ROOT` for the data).  Where they are missing
the tests are skipped, except under `CI=true`, where a missing file is a failure.
DenseNet-BC-40 (k=36) needs ~1.3 GFLOP per image, so its test alone takes a few minutes on 2 cores.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import need, shared_authors_dir
from study.authors import evaluate, load_model, read
from study.csg import generated_convs

pytestmark = pytest.mark.slow
AUTHORS = shared_authors_dir()


def _need(path: Path) -> Path:
    need(path.exists(), f"{path} is missing")
    return path


@pytest.fixture(scope="module")
def cifar_test(cifar):
    return cifar.test_x, cifar.test_y


# file, arch, expected CSG arguments (None = plain), generated layers
CHECKPOINTS = [
    ("SHUFFLENETV2.t7", "shufflenetv2_0_5", None, 0),
    ("SHUFFLENETV2_CSG.t7", "shufflenetv2_0_5", {"slice": 16, "code_dim": 16}, 1),
    ("DNBC4036-CSG1212-72.t7", "densenet_bc_k36", {"slice": 12, "code_dim": 72}, 18),
]


@pytest.mark.parametrize("filename,arch,csg,layers", CHECKPOINTS, ids=[c[0] for c in CHECKPOINTS])
def test_checkpoint_reproduces_stored_accuracy(cifar_test, filename, arch, csg, layers):
    model, meta = load_model(_need(AUTHORS / filename), arch)
    assert meta["method"] == ("csg" if csg else "none")
    assert meta["generated_layers"] == layers
    if csg:
        assert (meta["slice"], meta["code_dim"]) == (csg["slice"], csg["code_dim"])
    x, y = cifar_test
    assert len(y) == 10_000
    accuracy = evaluate(model, x, y)["acc"]
    assert abs(accuracy - meta["stored_accuracy"]) <= 0.05, (accuracy, meta["stored_accuracy"])


def _to_fp16(src: Path, dst: Path) -> dict:
    """What the authors' `*-FP16` releases hold: the same dict with half-precision float tensors."""
    ckpt = read(src)
    ckpt["net"] = {k: v.half() if v.is_floating_point() else v for k, v in ckpt["net"].items()}
    torch.save(ckpt, dst)
    return ckpt


@pytest.mark.parametrize("filename,arch", [("SHUFFLENETV2_CSG.t7", "shufflenetv2_0_5"),
                                           ("DNBC4036-CSG1212-72.t7", "densenet_bc_k36")])
def test_fp16_checkpoint_loads(cifar_test, tmp_path, filename, arch):
    src = _need(AUTHORS / filename)
    half = _to_fp16(src, tmp_path / "ckpt_half.t7")
    model16, meta16 = load_model(tmp_path / "ckpt_half.t7", arch)
    model32, meta32 = load_model(src, arch)
    assert {k: v for k, v in meta16.items()} == meta32
    # every tensor arrives in fp32 holding exactly the stored half-precision values
    for name, p in model16.named_parameters():
        assert p.dtype == torch.float32, name
    gen = half["net"].get("module.CSG.weight", half["net"].get("module.CLG.weight"))
    assert torch.equal(model16.csg.weight, gen.float())
    layer_name, layer = next(iter(generated_convs(model16)))
    x, y = cifar_test
    if arch == "densenet_bc_k36":  # slow network: compare logits on a few images
        assert torch.equal(layer.code, half["net"][f"module.{layer_name.rpartition('.')[0]}.code2"].float())
        with torch.no_grad():
            from study.data.cifar import normalize
            xb = normalize(x[:16])
            torch.testing.assert_close(model16(xb), model32(xb), rtol=0.02, atol=0.05)
            assert torch.equal(model16(xb).argmax(1), model32(xb).argmax(1))
    else:  # evaluate: fp16 storage moves at most a handful of the first 2,000 predictions
        assert torch.equal(layer.code, half["net"]["module.code2"].float())
        acc16, acc32 = evaluate(model16, x[:2000], y[:2000])["acc"], evaluate(model32, x[:2000], y[:2000])["acc"]
        assert abs(acc16 - acc32) <= 0.25, (acc16, acc32)
