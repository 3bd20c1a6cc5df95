"""MobileNetV2 (Sandler et al. 2018) for CIFAR, in kuangliu's pytorch-cifar layout used by the authors.

CIFAR changes to the ImageNet network: the stem conv has stride 1, the second stage (24 channels)
has stride 1, and the head pools the final 4x4 map.  Module names follow the authors' code
(`conv1`/`bn1` stem, `layers.{i}.{conv1,bn1,conv2,bn2,conv3,bn3,shortcut}`, `conv2`/`bn2` head,
`linear`).

CSG (authors' policy): only the 1x1 expansion conv of every inverted-residual block
(`layers.{i}.conv1`, also in the first block whose expansion factor is 1) is generated, with
1x1 slices.  The depthwise 3x3 convs cannot be generated; the 1x1 projection convs, the 1x1
shortcut convs, the stem, the 1x1 head conv and the classifier stay ordinary.
"""
from __future__ import annotations

import re

import torch
import torch.nn as nn
import torch.nn.functional as F

from study.models.registry import ArchSpec, register

# (expansion, out_planes, num_blocks, stride); the second row's stride is 1 on CIFAR (2 on ImageNet)
CIFAR_CFG = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
             (6, 320, 1, 1))


class Block(nn.Module):
    """Expand (1x1) + depthwise (3x3) + project (1x1); a residual only where the stride is 1."""

    def __init__(self, in_planes: int, out_planes: int, expansion: int, stride: int):
        super().__init__()
        self.stride = stride
        planes = expansion * in_planes
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, groups=planes, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.Sequential()
        if stride == 1 and in_planes != out_planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, out_planes, kernel_size=1, bias=False),
                                          nn.BatchNorm2d(out_planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return out + self.shortcut(x) if self.stride == 1 else out


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 10, width: float = 1.0, cfg=CIFAR_CFG):
        super().__init__()

        def w(c: int) -> int:
            return max(1, round(c * width))

        self.conv1 = nn.Conv2d(3, w(32), kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(w(32))
        layers, in_planes = [], w(32)
        for expansion, out_planes, num_blocks, stride in cfg:
            for i in range(num_blocks):
                layers.append(Block(in_planes, w(out_planes), expansion, stride if i == 0 else 1))
                in_planes = w(out_planes)
        self.layers = nn.Sequential(*layers)
        self.conv2 = nn.Conv2d(in_planes, w(1280), kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(w(1280))
        self.linear = nn.Linear(w(1280), num_classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layers(out)
        out = F.relu(self.bn2(self.conv2(out)))
        out = torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)  # = avg_pool2d(4) on 32x32 inputs
        return self.linear(out)


def mobilenetv2(num_classes: int = 10, width: float = 1.0) -> MobileNetV2:
    """`width` scales every channel count (the width baseline); 1.0 is the authors' network."""
    return MobileNetV2(num_classes=num_classes, width=width)


_EXPANSION = re.compile(r"^layers\.\d+\.conv1$")


def authors_policy(name: str, conv: nn.Conv2d) -> bool:
    """The authors generate only the 1x1 expansion conv of every block."""
    return bool(_EXPANSION.match(name))


register(ArchSpec(
    name="mobilenetv2", build=mobilenetv2, task="cifar10", num_classes=10, input_size=(3, 32, 32),
    first_conv="conv1",
    notes=("MobileNetV2 with CIFAR strides (kuangliu layout); only the 1x1 expansion conv of each of the 17 "
           "blocks is generated, 1x1 slices; 2,296,922 params plain, 1,595,322 with CSG 16x16x1x1 / 16")))
