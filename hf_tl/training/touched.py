"""Which training images a run draws: all of them, or, for a run that stops inside its first epoch, fewer.

A smoke run (`training.max_steps=1`, or `training.epochs` below 1) should cost what it trains: the
feature cache computes, and the train-set metrics score, only the images its steps draw. Which ones
those are is read from accelerate's own sampler, built as the Trainer builds it (the same seeded
permutation, the same sharding over processes), without touching any random generator, so the run
draws exactly what it would draw if nothing were left out.
"""

from __future__ import annotations

import math
from typing import Any

from accelerate.data_loader import prepare_data_loader
from torch.utils.data import DataLoader, Dataset

from hf_tl.data.datasets import Splits, image_transform


def training_rows(trainer: Any) -> list[int] | None:
    """The training rows this run's optimizer steps draw, in order of first use; None when it draws every row."""
    args = trainer.args
    num_train = len(trainer.train_dataset)
    if args.max_steps <= 0 and args.num_train_epochs >= 1:
        return None
    processes = trainer.accelerator.num_processes
    shards = [_batches(trainer, num_train, processes, index) for index in range(processes)]
    per_epoch = len(shards[0])  # batches per process and epoch, as the Trainer counts them
    accum = args.gradient_accumulation_steps
    updates_per_epoch = max(per_epoch // accum + int(per_epoch % accum > 0), 1)
    updates = args.max_steps if args.max_steps > 0 else math.ceil(args.num_train_epochs * updates_per_epoch)
    if updates >= updates_per_epoch:
        return None
    drawn: dict[int, None] = {}
    for shard in shards:
        for count, batch in enumerate(shard):
            if count == updates * accum:
                break
            drawn.update(dict.fromkeys(batch))
    return list(drawn)


def train_metrics_dataset(trainer: Any, splits: Splits) -> Any:
    """What the train-set metrics score: the training images the run drew (cached rows when the cache is on)."""
    if trainer.features:
        return trainer.features.train_eval_dataset()
    rows = training_rows(trainer)
    train = splits.train if rows is None else splits.train.select(sorted(rows))
    return train.with_transform(image_transform(splits.image_column, splits.label_column))


class _Rows(Dataset):
    def __init__(self, count: int) -> None:
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> int:
        return index


def _batches(trainer: Any, num_train: int, processes: int, index: int) -> Any:
    """Process `index`'s batch sampler for the first epoch, as `Trainer.get_train_dataloader` would prepare it."""
    rows = _Rows(num_train)
    loader = DataLoader(
        rows,
        batch_size=trainer._train_batch_size,
        sampler=trainer._get_train_sampler(rows),
        drop_last=trainer.args.dataloader_drop_last,
    )
    config = trainer.accelerator.dataloader_config
    prepared = prepare_data_loader(
        loader,
        num_processes=processes,
        process_index=index,
        split_batches=config.split_batches,
        even_batches=config.even_batches,
        use_seedable_sampler=config.use_seedable_sampler,
        data_seed=config.data_seed,
        put_on_device=False,
    )
    return prepared.batch_sampler  # indices only: iterating the loader itself would register it with accelerate
