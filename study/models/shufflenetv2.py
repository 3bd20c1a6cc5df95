"""ShuffleNetV2 (Ma et al. 2018) for CIFAR, in kuangliu's pytorch-cifar layout used by the authors.

CIFAR changes to the ImageNet network: the stem conv has stride 1 and there is no max pool, so
the three stages work at 16x16, 8x8 and 4x4.  Each stage is one down-sampling block followed by
`num_blocks` basic blocks.  Module names follow the authors' code (`conv1`/`bn1` stem,
`layer{1,2,3}.{i}.conv{1..5}`, `conv2`/`bn2` head, `linear`).

CSG (authors' policy): only the final 1x1 conv (`conv2`, 192 -> 1024 at net size 0.5) is
generated, with 1x1 slices.  The authors' checkpoint stores its codes at the top level as `code2`.
"""
from __future__ import annotations

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

from study.models.registry import ArchSpec, register

CONFIGS = {  # net size -> (stage output channels + head channels, basic blocks per stage)
    0.5: ((48, 96, 192, 1024), (3, 7, 3)),
    1.0: ((116, 232, 464, 1024), (3, 7, 3)),
    1.5: ((176, 352, 704, 1024), (3, 7, 3)),
    2.0: ((224, 488, 976, 2048), (3, 7, 3)),
}


def channel_shuffle(x: torch.Tensor, groups: int = 2) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class BasicBlock(nn.Module):
    """Split the channels in half; the second half goes 1x1 -> depthwise 3x3 -> 1x1; concat; shuffle."""

    def __init__(self, channels: int):
        super().__init__()
        half = channels // 2
        self.conv1 = nn.Conv2d(half, half, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = nn.Conv2d(half, half, kernel_size=3, padding=1, groups=half, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = nn.Conv2d(half, half, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(half)

    def forward(self, x):
        c = x.shape[1] // 2
        x1, x2 = x[:, :c], x[:, c:]
        out = F.relu(self.bn1(self.conv1(x2)))
        out = self.bn2(self.conv2(out))
        out = F.relu(self.bn3(self.conv3(out)))
        return channel_shuffle(torch.cat([x1, out], 1))


class DownBlock(nn.Module):
    """Stride-2 block: left branch depthwise 3x3 -> 1x1; right branch 1x1 -> depthwise 3x3 -> 1x1."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        mid = out_channels // 2
        self.conv1 = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=2, padding=1, groups=in_channels,
                               bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, mid, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(in_channels, mid, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, kernel_size=3, stride=2, padding=1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, kernel_size=1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x):
        left = self.bn1(self.conv1(x))
        left = F.relu(self.bn2(self.conv2(left)))
        right = F.relu(self.bn3(self.conv3(x)))
        right = self.bn4(self.conv4(right))
        right = F.relu(self.bn5(self.conv5(right)))
        return channel_shuffle(torch.cat([left, right], 1))


class ShuffleNetV2(nn.Module):
    def __init__(self, net_size: float = 0.5, num_classes: int = 10, width: float = 1.0):
        super().__init__()
        channels, num_blocks = CONFIGS[net_size]
        # width scaling keeps every channel count even, as the split and the shuffle need
        channels = tuple(max(2, 2 * round(c * width / 2)) for c in channels)
        stem = max(1, round(24 * width))
        self.conv1 = nn.Conv2d(3, stem, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        in_channels = stem
        for i, (out_channels, n) in enumerate(zip(channels[:3], num_blocks), start=1):
            blocks = [DownBlock(in_channels, out_channels)] + [BasicBlock(out_channels) for _ in range(n)]
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
            in_channels = out_channels
        self.conv2 = nn.Conv2d(in_channels, channels[3], kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels[3])
        self.linear = nn.Linear(channels[3], num_classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)  # = avg_pool2d(4) on 32x32 inputs
        return self.linear(out)


def shufflenetv2(net_size: float = 0.5, num_classes: int = 10, width: float = 1.0) -> ShuffleNetV2:
    """`width` scales the channel counts (the width baseline); 1.0 is the authors' network."""
    return ShuffleNetV2(net_size, num_classes=num_classes, width=width)


def authors_policy(name: str, conv: nn.Conv2d) -> bool:
    """The authors generate only the final 1x1 conv before the classifier."""
    return name == "conv2"


register(ArchSpec(
    name="shufflenetv2_0_5", build=functools.partial(shufflenetv2, 0.5), task="cifar10", num_classes=10,
    input_size=(3, 32, 32), first_conv="conv1",
    notes=("ShuffleNetV2 net size 0.5 (kuangliu layout); only the final 1x1 conv 192->1024 is generated, "
           "1x1 slices, codes stored at top level as `code2` by the authors; 352,042 params plain, "
           "171,818 with CSG 16x16x1x1 / 16")))
