"""Data sets: CIFAR-10 in memory (cifar.py); ImageNet through ImageFolder and Pascal VOC through
VOCSegmentation, both with torchvision DataLoaders."""
