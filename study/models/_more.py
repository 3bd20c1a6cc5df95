"""Registers the architectures beyond the CIFAR ResNets (filled in by their own files).

Parameter counts (`total`, checked in tests/test_zoo.py) are given in each entry's notes.
"""
from __future__ import annotations

import functools

from study.models import ArchSpec, register
from study.models import deeplab, densenet_bc, imagenet_resnet, mobilenetv2, shufflenetv2

# -- CIFAR-10 -----------------------------------------------------------------------------------
for _k, _plain, _csg in ((36, "1,542,682", "842,842"), (48, "2,733,130", "1,416,394")):
    register(ArchSpec(
        name=f"densenet_bc_k{_k}", build=functools.partial(densenet_bc.densenet_bc, _k), task="cifar10",
        num_classes=10, input_size=(3, 32, 32), first_conv="conv1",
        authors_policy=densenet_bc.authors_policy, csg_kernel_size=3, csg_init="linear", code_mean=0.0,
        authors_code_names={"code2": "conv2.code"},
        notes=(f"DenseNet-BC-40, growth {_k}, authors' (kuangliu) layout; only each bottleneck's 3x3 conv "
               f"is generated (18 layers); {_plain} params plain, {_csg} with CSG 12x12x3x3 / 72")))

register(ArchSpec(
    name="mobilenetv2", build=mobilenetv2.mobilenetv2, task="cifar10", num_classes=10, input_size=(3, 32, 32),
    first_conv="conv1", authors_policy=mobilenetv2.authors_policy, csg_kernel_size=1, csg_init="linear",
    code_mean=0.0, authors_code_names={"code1": "conv1.code"},
    notes=("MobileNetV2 with CIFAR strides (kuangliu layout); only the 1x1 expansion conv of each of the 17 "
           "blocks is generated, 1x1 slices; 2,296,922 params plain, 1,595,322 with CSG 16x16x1x1 / 16")))

register(ArchSpec(
    name="shufflenetv2_0_5", build=functools.partial(shufflenetv2.shufflenetv2, 0.5), task="cifar10",
    num_classes=10, input_size=(3, 32, 32), first_conv="conv1", authors_policy=shufflenetv2.authors_policy,
    csg_kernel_size=1, csg_init="linear", code_mean=0.0, authors_code_names={"code2": "conv2.code"},
    notes=("ShuffleNetV2 net size 0.5 (kuangliu layout); only the final 1x1 conv 192->1024 is generated, "
           "1x1 slices, codes stored at top level as `code2` by the authors; 352,042 params plain, "
           "171,818 with CSG 16x16x1x1 / 16")))

# -- ImageNet -----------------------------------------------------------------------------------
register(ArchSpec(
    name="imagenet_resnet18", build=imagenet_resnet.imagenet_resnet18, task="imagenet", num_classes=1000,
    input_size=(3, 224, 224), first_conv="conv1", authors_policy=imagenet_resnet.resnet18_policy,
    csg_kernel_size=3, csg_init="linear", code_mean=0.0,
    notes=("torchvision ResNet-18; no authors' model: our policy generates every 3x3 conv inside the residual "
           "blocks (both convs of the 8 BasicBlocks, 16 layers); 11,689,512 params plain, 1,609,256 with "
           "CSG 16x16x3x3 / 128")))

register(ArchSpec(
    name="imagenet_resnet50", build=imagenet_resnet.imagenet_resnet50, task="imagenet", num_classes=1000,
    input_size=(3, 224, 224), first_conv="conv1", authors_policy=imagenet_resnet.resnet50_policy,
    csg_kernel_size=3, csg_init="linear", code_mean=0.0, authors_code_names={"code2": "conv2.code"},
    notes=("torchvision ResNet-50; the authors generate the 3x3 conv of each of the 16 Bottlenecks; "
           "25,557,032 params plain, 15,163,432 with CSG 16x16x3x3 / 128")))

# -- Pascal VOC ---------------------------------------------------------------------------------
_DEEPLAB_NOTES = (
    "torchvision DeepLabV3 (no aux head, output stride 8), forward returns out['out']; generated: the "
    "backbone's Bottleneck 3x3 convs and ASPP's three 3x3 atrous convs (dilation kept). {counts} The "
    "authors' DeepLabV3+ ResNet-101 goes 59,344,309 -> 26,406,325 (2.25x); it adds a decoder (low-level "
    "skip + two 3x3 convs, kept ordinary) that torchvision's DeepLabV3 does not have, and uses two "
    "generators (backbone, ASPP) where we share one.")
register(ArchSpec(
    name="deeplabv3_resnet50", build=deeplab.deeplabv3_resnet50, task="voc", num_classes=21,
    input_size=(3, 513, 513), first_conv="backbone.conv1", authors_policy=deeplab.authors_policy,
    csg_kernel_size=3, csg_init="linear", code_mean=0.0,
    notes=_DEEPLAB_NOTES.format(counts="19 layers; 39,638,869 params plain, 15,875,925 with CSG 16x16x3x3 / 128 "
                                       "(2.50x fewer).")))
register(ArchSpec(
    name="deeplabv3_resnet101", build=deeplab.deeplabv3_resnet101, task="voc", num_classes=21,
    input_size=(3, 513, 513), first_conv="backbone.conv1", authors_policy=deeplab.authors_policy,
    csg_kernel_size=3, csg_init="linear", code_mean=0.0,
    notes=_DEEPLAB_NOTES.format(counts="36 layers; 58,630,997 params plain, 25,398,101 with CSG 16x16x3x3 / "
                                       "128 (2.31x fewer).")))
