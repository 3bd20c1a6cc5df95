"""The model zoo: one architecture per file, each registered beside its builder (as torchvision does).

The files are imported here in the order of the paper, which is the order of `ARCHS`.
"""
from study.models.registry import ARCHS, ArchSpec, get_arch, register
from study.models import cifar_resnet, densenet_bc, mobilenetv2, shufflenetv2  # noqa: F401,E402  (CIFAR-10)
from study.models import imagenet_resnet  # noqa: F401,E402  (ImageNet)
from study.models import deeplab  # noqa: F401,E402  (Pascal VOC)

__all__ = ["ARCHS", "ArchSpec", "get_arch", "register"]
