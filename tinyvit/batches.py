"""Where a step's images come from: one call, two sources (and the feature cache, tinyvit/cache.py).

    TensorBatches   a low-res dataset held as one uint8 tensor [n, 3, h, w] on the training device
                    (data.as_tensor: digits, MNIST, CIFAR, small hf: sets); batches gathered by index
                    and augmented whole on the device (tinyvit/augment.py)
    ImageBatches    any dataset of PIL images, through per-image transforms in DataLoader workers
                    (photo folders, and whatever is too large to hold)

`source.batches(index_lists, first_step)` yields (inputs, labels) on the device, one batch per list
of item indices. `first_step` is the training step of the first list: augmentation is seeded by
(seed, step), so a resumed run draws what an uninterrupted one drew. None means evaluation: no
augmentation. Item indices at or above the number of images wrap around (--repeat-train).
"""
from __future__ import annotations

from typing import Callable, Iterator, Optional

import torch
from torch.utils.data import DataLoader, Dataset

from tinyvit.augment import BatchAugment, pick, step_generator
from tinyvit.data import Repeat, Transformed
from tinyvit.processes import start_workers


class TensorBatches:
    def __init__(self, images: torch.Tensor, labels: torch.Tensor, pipeline: BatchAugment, *, augment: bool,
                 seed: int = 0, rank: int = 0, world: int = 1, repeat: int = 1):
        self.images, self.labels = images, labels  # uint8 [n, 3, h, w], int64 [n], on the training device
        self.pipeline, self.augment, self.seed = pipeline, augment, seed
        self.rank, self.world, self.repeat = rank, world, repeat

    def __len__(self) -> int:
        return len(self.labels) * self.repeat

    def batches(self, index_lists: list[list[int]], first_step: Optional[int] = None) -> Iterator:
        n = len(self.labels)
        for k, indices in enumerate(index_lists):
            i = torch.as_tensor(indices, device=self.images.device) % n
            images, labels = self.images[i], self.labels[i]
            if first_step is None or not self.augment:
                yield self.pipeline.prepare(images), labels
                continue
            # Drawn for the global batch; this process's images are every world-th of it.
            params = self.pipeline.draw(len(indices) * self.world, step_generator(self.seed, first_step + k))
            yield self.pipeline(images, pick(params, self.rank, self.world)), labels


class ImageBatches:
    def __init__(self, dataset: Dataset, train_transform: Callable, eval_transform: Callable, *, device: torch.device,
                 seed: int = 0, num_workers: int = 0, repeat: int = 1):
        self.dataset = Repeat(dataset, repeat) if repeat > 1 else dataset  # each repeat draws its own augmentation
        self.train_transform, self.eval_transform = train_transform, eval_transform
        self.device, self.seed, self.num_workers = device, seed, num_workers

    def __len__(self) -> int:
        return len(self.dataset)

    def batches(self, index_lists: list[list[int]], first_step: Optional[int] = None) -> Iterator:
        if first_step is None:
            keys, transform = index_lists, self.eval_transform
        else:  # (index, step) keys: Transformed seeds each image's transform by (seed, step, index)
            keys, transform = [[(i, first_step + k) for i in b] for k, b in enumerate(index_lists)], self.train_transform
        loader = DataLoader(
            Transformed(self.dataset, transform, seed=self.seed), batch_sampler=keys, num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            generator=torch.Generator(),  # DataLoader draws worker seeds; keep the global RNG (dropout) untouched
        )
        for images, labels in start_workers(loader):
            yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
