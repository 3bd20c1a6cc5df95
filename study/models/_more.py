"""Registers the architectures beyond the CIFAR ResNets (filled in by their own files)."""
