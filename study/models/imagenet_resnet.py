"""ImageNet ResNets from torchvision (He et al. 2016), built without pretrained weights.

The authors' ImageNet code (Implementations/Imagenet-1000/models/resnet.py in their repository)
is torchvision's ResNet with the bottleneck 3x3 conv generated; module names are torchvision's
(`conv1` stem, `layer{1..4}.{i}.conv{1,2,3}`, `downsample.0`, `fc`).

CSG policies:
* ResNet-50 (the authors'): the 3x3 conv of every Bottleneck (`layer*.*.conv2`).  The 7x7 stem,
  the 1x1 convs, the 1x1 downsample convs and `fc` stay ordinary.
* ResNet-18 (ours; the authors did not publish one): the analogous choice, every 3x3 conv inside
  the residual blocks, i.e. both convs of each BasicBlock (`layer*.*.conv1` and `conv2`).  The 7x7
  stem, the 1x1 downsample convs and `fc` stay ordinary.  This is the same rule as for the CIFAR
  ResNets.
"""
from __future__ import annotations

import re

import torch.nn as nn

from study.models.registry import ArchSpec, register


def _check_width(width: float) -> None:
    if width != 1.0:
        raise ValueError("width scaling is not available for torchvision's ImageNet ResNets")


def imagenet_resnet18(num_classes: int = 1000, width: float = 1.0) -> nn.Module:
    from torchvision import models  # here, not at import: torchvision costs seconds to import

    _check_width(width)
    return models.resnet18(weights=None, num_classes=num_classes)


def imagenet_resnet50(num_classes: int = 1000, width: float = 1.0) -> nn.Module:
    from torchvision import models

    _check_width(width)
    return models.resnet50(weights=None, num_classes=num_classes)


_BOTTLENECK_3X3 = re.compile(r"^layer[1-4]\.\d+\.conv2$")
_BASIC_3X3 = re.compile(r"^layer[1-4]\.\d+\.conv[12]$")


def resnet50_policy(name: str, conv: nn.Conv2d) -> bool:
    """The authors generate the 3x3 conv of every Bottleneck."""
    return bool(_BOTTLENECK_3X3.match(name))


def resnet18_policy(name: str, conv: nn.Conv2d) -> bool:
    """Every 3x3 conv inside the residual blocks (both convs of each BasicBlock)."""
    return bool(_BASIC_3X3.match(name))


register(ArchSpec(
    name="imagenet_resnet18", build=imagenet_resnet18, task="imagenet", num_classes=1000,
    input_size=(3, 224, 224), first_conv="conv1",
    notes=("torchvision ResNet-18; no authors' model: our policy generates every 3x3 conv inside the residual "
           "blocks (both convs of the 8 BasicBlocks, 16 layers); 11,689,512 params plain, 1,609,256 with "
           "CSG 16x16x3x3 / 128")))

register(ArchSpec(
    name="imagenet_resnet50", build=imagenet_resnet50, task="imagenet", num_classes=1000,
    input_size=(3, 224, 224), first_conv="conv1",
    notes=("torchvision ResNet-50; the authors generate the 3x3 conv of each of the 16 Bottlenecks; "
           "25,557,032 params plain, 15,163,432 with CSG 16x16x3x3 / 128")))
