"""The one way `hf-tl eval` and `hf-tl analyze` load a checkpoint, pick a split and batch its images.

Both read any checkpoint the same way training does, and see uint8 images at native size that each model's
`Preprocess` resizes and normalises on the device, so eval's and analyze's pixels cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from datasets import Dataset, DatasetDict
from torch.utils.data import DataLoader
from transformers import PreTrainedModel

from hf_tl.config.recipe import ModelSection
from hf_tl.data.datasets import collate_images, image_transform, select_split
from hf_tl.device import loader_workers
from hf_tl.errors import DataError
from hf_tl.models.loading import load_model, load_processor

SPLIT_PREFERENCE = ("test", "validation", "train")


def load_for_inference(source: ModelSection, device: torch.device) -> tuple[PreTrainedModel, object]:
    """The model on `device` in eval mode, and its processor: training's loader (safetensors only unless
    allow_pickle, clear errors offline)."""
    model = load_model(source)
    return model.to(device).eval(), load_processor(source)


def pick_split(splits: DatasetDict, split: str | None, dataset: str, hint: str = "") -> tuple[Dataset, str]:
    """Split `split`, or when it is None the first of test, validation, train there is (else the first);
    one that is not there is an error listing the splits, with `hint` after it.

    A slice (validation[:500], train[:10%]+test) is read by training's own `select_split`, so a run that
    recorded one as its eval split is evaluated on exactly those rows."""
    name = split if split is not None else next((s for s in SPLIT_PREFERENCE if s in splits), next(iter(splits)))
    if name in splits:
        return splits[name], name
    if "[" in name or "+" in name:
        return select_split(splits, name, "split", dataset), name
    raise DataError(f"split='{name}' is not a split of '{dataset}'. Splits: {', '.join(splits)}{hint}")


def inference_loader(
    dataset: Dataset,
    image_column: str,
    batch_size: int,
    num_workers: int | None,
    label_column: str | None = None,
    label_id: Callable[[Any], int] | None = None,
) -> DataLoader:
    """Batches of decoded uint8 images at native size (and labels, through `label_id` when given), in order."""
    transform = image_transform(image_column, label_column)
    if label_column is not None and label_id is not None:
        transform = _relabelled(transform, label_column, label_id)
    images = dataset.with_transform(transform)
    return DataLoader(images, batch_size=batch_size, collate_fn=collate_images, num_workers=loader_workers(num_workers))


def _relabelled(transform: Callable[[dict], dict], label_column: str, label_id: Callable[[Any], int]):
    """`transform` with each stored label value replaced by `label_id(value)` (eval's dataset-to-model ids)."""

    def relabel(batch: dict) -> dict:
        return {**transform(batch), "labels": [label_id(v) for v in batch[label_column]]}

    return relabel
