"""One candidate's frozen pre-head features and its costs, through the store a `linear_probe` run uses.

`select` builds the trainer a `linear_probe` training run builds (`hf_tl.training.run.build_trainer`), with the
feature cache on disk: the store it fills is the one a second `select`, or a later
`hf-tl train strategy.kind=linear_probe data.augment=none ...` on the same data, finds and reuses. What the
head(s) see is the representation: both heads of a distilled DeiT, side by side; a feature map still spatial is
averaged over its positions, as a pooling head does first.
"""

from __future__ import annotations

import gc
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from hf_tl.config.commands import SelectArgs
from hf_tl.errors import HfTlError
from hf_tl.models.families import convolutional, family_of
from hf_tl.selection.recipe import candidate_recipe
from hf_tl.training.cache.features import META_FILE, FeatureCache
from hf_tl.training.trainer import HfTlTrainer


@dataclass
class Extracted:
    """Float32 features of the training and validation images, their labels, and what extracting them cost."""

    train: torch.Tensor
    train_labels: torch.Tensor
    eval: torch.Tensor
    eval_labels: torch.Tensor
    labels: list[str]
    costs: dict


def extract(model: str, args: SelectArgs) -> Extracted:
    """Load the candidate, fill (or reuse) its feature store, read the features back, count its costs, free it."""
    from hf_tl.training.run import build_trainer

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hf_tl-select-") as work:
        trainer, splits, _, _ = build_trainer(candidate_recipe(model, args, Path(work)), Path(work))
        try:
            result = read_features(trainer, list(splits.labels))
        finally:
            del trainer
            free_memory()
    result.costs["candidate_seconds"] = round(time.perf_counter() - started, 3)
    return result


def read_features(trainer: HfTlTrainer, labels: list[str]) -> Extracted:
    """The features in the trainer's store, then the model's costs with its own forward back."""
    cache = trainer.features
    if cache is None:  # cache_features=true raises instead; kept for a clear message if that changes
        raise HfTlError("the feature cache was not used")
    train = features_of(cache, cache.train_dataset.rows)
    evaluated = features_of(cache, cache.eval_dataset.rows)
    cache.close()  # the model's own forward again, for the flop count
    model = trainer.model
    costs = {
        "family": family_of(model),
        "type": "CNN" if convolutional(model) else "transformer",
        "params": sum(p.numel() for p in model.parameters()),
        "gflops": forward_gflops(model, trainer.preprocess.size),
        **store_timing(cache, len(train) + len(evaluated)),
        "feature_dim": int(train.shape[1]),
        "num_train": len(train),
        "num_eval": len(evaluated),
        "feature_store": str(store_folder(cache)),
        "reused_store": bool(cache.report.get("reused")),
    }
    train_labels, eval_labels = torch.tensor(cache.train_labels), torch.tensor(cache.eval_labels)
    return Extracted(train, train_labels, evaluated, eval_labels, labels, costs)


def features_of(cache: FeatureCache, rows: torch.Tensor) -> torch.Tensor:
    """What the heads read for these store rows, as one float32 vector per image."""
    parts = []
    for part in cache.store:
        x = part[rows].float()
        if x.dim() == 4:  # (N, C, H, W): a head that pools first
            x = x.mean(dim=(2, 3))
        elif x.dim() == 3:  # (N, tokens, D): a head that averages tokens first
            x = x.mean(dim=1)
        parts.append(x.flatten(1))
    return torch.cat(parts, dim=1).cpu()


def forward_gflops(model: torch.nn.Module, size: tuple[int, int]) -> float:
    """Forward GFLOPs of one image at the model's input size, counted by torch.utils.flop_counter."""
    parameter = next(model.parameters())
    pixels = torch.zeros(1, 3, *size, device=parameter.device, dtype=parameter.dtype)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model.eval()(pixel_values=pixels)
    return counter.get_total_flops() / 1e9


def store_timing(cache: FeatureCache, images: int) -> dict:
    """Seconds the frozen forward passes took, and images per second: this run's, or the reused store's own."""
    seconds = cache.report.get("build_seconds")
    if seconds is None:  # reused: the store records how long building it took
        seconds = json.loads((store_folder(cache) / META_FILE).read_text()).get("build_seconds")
    if not seconds:
        return {"extract_seconds": None, "images_per_second": None}
    return {"extract_seconds": round(seconds, 3), "images_per_second": round(images / seconds, 1)}


def store_folder(cache: FeatureCache) -> Path:
    """Where the store lives on disk (select always asks for a disk store): its report says `disk: FOLDER`."""
    return Path(cache.report["location"].removeprefix("disk: "))


def free_memory() -> None:
    """Candidates run one after another: each one's weights leave before the next loads."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
