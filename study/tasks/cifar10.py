"""CIFAR-10: the in-memory loader of `study.data.cifar`, a stratified validation split of the training set."""
from __future__ import annotations

from study.tasks.base import Loaders, Task


class Cifar10Task(Task):
    name = "cifar10"

    def check_data(self, data_root):
        from study.data import cifar

        cifar.locate(data_root)  # names the missing or corrupt file and its official md5

    def check_config(self, cfg):
        if cfg.image_size not in (None, 32):
            raise ValueError(f"image_size {cfg.image_size} is not possible on CIFAR-10, whose images are "
                             "32x32 (leave it unset or set 32)")

    def loaders(self, cfg, data_root, device):
        from study.data import cifar

        self.check_config(cfg)
        data = cifar.load_cifar10(data_root)
        # val_size 0: the authors' protocol, training on all 50,000 images with no validation split
        train_idx, val_idx = cifar.stratified_split(data.train_y, cfg.val_size, seed=cfg.seed)
        train_x, train_y = cifar.subset(data.train_x[train_idx], data.train_y[train_idx], cfg.train_subset, cfg.seed)
        val_x, val_y = cifar.subset(data.train_x[val_idx], data.train_y[val_idx], cfg.test_subset, cfg.seed)
        test_x, test_y = cifar.subset(data.test_x, data.test_y, cfg.test_subset, cfg.seed)
        kw = dict(device=device, channels_last=cfg.channels_last)
        eval_batch = max(cfg.batch_size, 500)
        return Loaders(
            train=cifar.CifarLoader(train_x, train_y, cfg.batch_size, train=True, seed=cfg.seed, flip=cfg.flip, **kw),
            val=cifar.CifarLoader(val_x, val_y, eval_batch, train=False, **kw) if cfg.val_size else None,
            test=cifar.CifarLoader(test_x, test_y, eval_batch, train=False, **kw))
