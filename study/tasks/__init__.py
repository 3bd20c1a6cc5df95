"""What a model is trained on and judged by: one task per file, registered here by name.

`base` defines the `Task` interface; `cifar10`, `imagenet` and `voc` implement it (the last two share
`loading`).  An architecture names its task (`ArchSpec.task`); the trainer asks the task, never the
shape of a batch, what kind of problem it is (`Task.classifies`).
"""
from __future__ import annotations

from study.tasks.base import Loaders, Task
from study.tasks.cifar10 import Cifar10Task
from study.tasks.imagenet import ImageNetTask
from study.tasks.voc import VOCTask

TASKS: dict[str, Task] = {"cifar10": Cifar10Task(), "imagenet": ImageNetTask(), "voc": VOCTask()}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; choose from {', '.join(TASKS)}") from None


__all__ = ["TASKS", "Cifar10Task", "ImageNetTask", "Loaders", "Task", "VOCTask", "get_task"]
