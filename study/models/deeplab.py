"""DeepLabV3 (Chen et al. 2017) with ResNet-50/101 backbones, from torchvision, for Pascal VOC.

torchvision's model returns a dict (`{'out': ...}`); `DeepLabV3` here is a thin subclass whose
forward returns the `out` tensor, so it trains like any classifier with a per-pixel loss.  The
module names are torchvision's (`backbone.*`, `classifier.*`), so torchvision's state dicts load.
Built with `weights=None, weights_backbone=None, aux_loss=False` (no auxiliary FCN head).

CSG policy (after the authors' DeepLabV3+ code, Implementations/PascalVOC in their repository):
* every 3x3 conv of the backbone's Bottlenecks (`backbone.layer*.*.conv2`); in layer3/layer4 they
  are dilated (output stride 8), and the dilation is kept by `GeneratedConv2d`;
* the three 3x3 atrous convs of ASPP (`classifier.0.convs.{1,2,3}.0`, rates 12/24/36).
Never generated: the 7x7 stem, all 1x1 convs (including ASPP's 1x1 branch, its pooling branch and
its projection), the head's 3x3 conv after ASPP (`classifier.1`, not atrous; it plays the part of
DeepLabV3+'s decoder convs, which the authors also kept ordinary) and the final 1x1 classifier.

How this differs from the authors' DeepLabV3+ (59,344,309 -> 26,406,325 parameters, ~2.25x):
torchvision's DeepLabV3 has no decoder: no low-level skip from layer1 (1x1 conv 256->48), no two
3x3 decoder convs over the 304-channel concatenation; its head is ASPP + one 3x3 conv + a 1x1
classifier, and it upsamples the stride-8 logits bilinearly by 8.  The authors' backbone also
uses multi-grid dilations (1, 2, 4) in layer4 and output stride 16 by default, and holds two generators (one in
the backbone, one shared by the ASPP convs) where `study.csg.convert` shares one across the whole
network.  The reduction numbers are recorded in the ArchSpec notes (below).
"""
from __future__ import annotations

import functools
import re

import torch
import torch.nn as nn

from study.models.registry import ArchSpec, register


@functools.cache
def _deeplab_class() -> type:
    """`DeepLabV3`, defined on first use: torchvision costs seconds to import, which every
    `python -m study` would pay, and only a DeepLabV3 needs it."""
    from torchvision.models.segmentation.deeplabv3 import DeepLabV3 as TorchvisionDeepLabV3

    class DeepLabV3(TorchvisionDeepLabV3):
        """torchvision's DeepLabV3 whose forward returns the upsampled logits `[N, classes, H, W]`."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
            return super().forward(x)["out"]

    DeepLabV3.__qualname__ = "DeepLabV3"  # found as `study.models.deeplab.DeepLabV3`, so pickle works
    return DeepLabV3


def __getattr__(name: str):  # `study.models.deeplab.DeepLabV3` (PEP 562), as pickle looks it up
    if name == "DeepLabV3":
        return _deeplab_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _build(builder_name: str, num_classes: int, width: float) -> nn.Module:
    from torchvision.models import segmentation

    if width != 1.0:
        raise ValueError("width scaling is not available for torchvision's DeepLabV3")
    tv = getattr(segmentation, builder_name)(weights=None, weights_backbone=None, num_classes=num_classes,
                                              aux_loss=False)
    return _deeplab_class()(tv.backbone, tv.classifier, tv.aux_classifier)


def deeplabv3_resnet50(num_classes: int = 21, width: float = 1.0) -> nn.Module:
    return _build("deeplabv3_resnet50", num_classes, width)


def deeplabv3_resnet101(num_classes: int = 21, width: float = 1.0) -> nn.Module:
    return _build("deeplabv3_resnet101", num_classes, width)


_BACKBONE_3X3 = re.compile(r"^backbone\.layer[1-4]\.\d+\.conv2$")
_ASPP_ATROUS = re.compile(r"^classifier\.0\.convs\.[1-3]\.0$")


def authors_policy(name: str, conv: nn.Conv2d) -> bool:
    """Backbone Bottleneck 3x3 convs and the ASPP 3x3 atrous convs."""
    return bool(_BACKBONE_3X3.match(name) or _ASPP_ATROUS.match(name))


_NOTES = (
    "torchvision DeepLabV3 (no aux head, output stride 8), forward returns out['out']; generated: the "
    "backbone's Bottleneck 3x3 convs and ASPP's three 3x3 atrous convs (dilation kept). {counts} The "
    "authors' DeepLabV3+ ResNet-101 goes 59,344,309 -> 26,406,325 (2.25x); it adds a decoder (low-level "
    "skip + two 3x3 convs, kept ordinary) that torchvision's DeepLabV3 does not have, and uses two "
    "generators (backbone, ASPP) where we share one.")
register(ArchSpec(
    name="deeplabv3_resnet50", build=deeplabv3_resnet50, task="voc", num_classes=21,
    input_size=(3, 513, 513), first_conv="backbone.conv1",
    notes=_NOTES.format(counts="19 layers; 39,638,869 params plain, 15,875,925 with CSG 16x16x3x3 / 128 "
                               "(2.50x fewer).")))
register(ArchSpec(
    name="deeplabv3_resnet101", build=deeplabv3_resnet101, task="voc", num_classes=21,
    input_size=(3, 513, 513), first_conv="backbone.conv1",
    notes=_NOTES.format(counts="36 layers; 58,630,997 params plain, 25,398,101 with CSG 16x16x3x3 / "
                               "128 (2.31x fewer).")))
