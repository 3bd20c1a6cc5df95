"""ImageNet classification on torchvision DataLoaders (the loading is `study.tasks.loading`'s).

Image size.  The task holds its standard size (224 crop, evaluation resize 256); a run's
`RunConfig.image_size` replaces it (crop S, resize round(S * 256 / 224)), so that cheap experiments
and tests can use small images.
"""
from __future__ import annotations

import numpy as np

from study.config import RunConfig
from study.tasks.base import Loaders, Task
from study.tasks.loading import SampleView, make_loader


class ImageNetTask(Task):
    name = "imagenet"
    top5 = True

    def __init__(self, image_size: int = 224, resize_size: int = 256):
        """The standard sizes, used when a run leaves `image_size` unset."""
        self.image_size, self.resize_size = image_size, resize_size

    def sizes(self, cfg: RunConfig) -> tuple[int, int]:
        """(crop, evaluation resize): the standard pair, or `cfg.image_size` and the resize in proportion."""
        from study.data import imagenet

        return imagenet.sizes(cfg.image_size, (self.image_size, self.resize_size))

    def check_data(self, data_root: str) -> None:
        from study.data import imagenet

        imagenet.check(data_root)

    def loaders(self, cfg: RunConfig, data_root: str, device) -> Loaders:
        from study.data import imagenet

        train_folder, val_folder = imagenet.folders(data_root)
        train_idx, val_idx = imagenet.split(train_folder.targets, cfg.val_size, cfg.seed)
        train_idx = imagenet.stratified_subset(train_idx, train_folder.targets, cfg.train_subset, cfg.seed)
        val_idx = imagenet.stratified_subset(val_idx, train_folder.targets, cfg.test_subset, cfg.seed)
        test_idx = imagenet.stratified_subset(np.arange(len(val_folder)), val_folder.targets, cfg.test_subset,
                                              cfg.seed)
        crop, resize = self.sizes(cfg)
        train_tf = imagenet.train_transform(crop)
        eval_tf = imagenet.eval_transform(crop, resize)
        return Loaders(
            train=make_loader(SampleView(train_folder, train_idx, train_tf), cfg, device, train=True),
            val=make_loader(SampleView(train_folder, val_idx, eval_tf), cfg, device, train=False),
            test=make_loader(SampleView(val_folder, test_idx, eval_tf), cfg, device, train=False))
