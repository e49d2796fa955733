"""A CIFAR-10-shaped dataset on disk, laid out as `uoft-cs/cifar10` is on the Hub, for the benchmarks.

`plain_text/train-00000-of-00001.parquet` and `plain_text/test-00000-of-00001.parquet`, columns
`img` (PNG bytes, 32x32 RGB) and `label` (a ClassLabel with CIFAR-10's ten names), and a README.md
whose YAML header declares the config and splits as the Hub's dataset card does, so
`load_dataset(folder)` reads it as it would read the Hub id. The pictures are synthetic (no
download is possible here): each class is a striped pattern of its own orientation, frequency
and colour under per-image noise and phase, so a model can learn them, but the figures measured
on them say nothing about accuracy on CIFAR-10 itself. Only sizes, formats and decoding costs match.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from datasets import ClassLabel, Dataset, Features, Image
from PIL import Image as PILImage

NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SIZE = 32
CHUNK = 2000
FORMAT = 2  # 2: drawn in seeded chunks
MARKER = "hf_tl_benchmark.json"
README = """---
dataset_info:
  config_name: plain_text
  features:
  - name: img
    dtype: image
  - name: label
    dtype:
      class_label:
        names:
{names}
configs:
- config_name: plain_text
  data_files:
  - split: train
    path: plain_text/train-*
  - split: test
    path: plain_text/test-*
  default: true
---
# CIFAR-10-shaped synthetic data

{train} training and {test} test images, 32x32 PNG, columns `img` and `label` as in `uoft-cs/cifar10`.
Synthetic pictures made by hf_tl's `benchmarks/cifar_shaped.py` (seed {seed}); not CIFAR-10.
"""


def cifar_shaped(parent: Path, train: int, test: int, seed: int = 0) -> Path:
    """The dataset folder for these sizes under `parent`, built once and reused (renamed into place when complete)."""
    folder = Path(parent) / f"cifar10-shaped-{train}-{test}-seed{seed}"
    marker = {"format": FORMAT, "train": train, "test": test, "seed": seed}
    try:
        if json.loads((folder / MARKER).read_text()) == marker:
            return folder
    except (OSError, ValueError):
        pass
    partial = folder.with_name(f"{folder.name}.partial-{uuid.uuid4().hex[:8]}")
    try:
        (partial / "plain_text").mkdir(parents=True)
        for split, count, split_seed in (("train", train, seed), ("test", test, seed + 1)):
            pictures(count, split_seed).to_parquet(str(partial / "plain_text" / f"{split}-00000-of-00001.parquet"))
        names = "\n".join(f"          '{i}': {name}" for i, name in enumerate(NAMES))
        (partial / "README.md").write_text(README.format(names=names, train=train, test=test, seed=seed))
        (partial / MARKER).write_text(json.dumps(marker))
        shutil.rmtree(folder, ignore_errors=True)
        partial.rename(folder)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return folder


def pictures(count: int, seed: int) -> Dataset:
    """`count` PNG images, classes balanced and shuffled, as a datasets.Dataset with CIFAR-10's features.

    Drawn in chunks, each from its own seeded generator, on every core: the same images however many there are.
    """
    labels = np.random.default_rng(seed).permutation(np.arange(count) % len(NAMES))
    chunks = [(labels[start : start + CHUNK], (seed, start)) for start in range(0, count, CHUNK)]
    with ProcessPoolExecutor(max_workers=min(len(chunks), os.cpu_count() or 1) or 1) as pool:
        encoded = [png for chunk in pool.map(_chunk, chunks) for png in chunk]
    features = Features({"img": Image(), "label": ClassLabel(names=list(NAMES))})
    return Dataset.from_dict(
        {"img": [{"bytes": b, "path": None} for b in encoded], "label": labels.tolist()}, features=features
    )


def _chunk(job: tuple[np.ndarray, tuple[int, int]]) -> list[bytes]:
    labels, seed = job
    return [_png(image) for image in _draw(labels, np.random.default_rng(seed))]


def _draw(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Stripes whose angle, frequency and colour follow the class, with a random phase, contrast and noise."""
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / SIZE
    angle = labels[:, None, None] * np.pi / len(NAMES)
    frequency = 2 + labels[:, None, None] % 4
    phase = rng.uniform(0, 2 * np.pi, (len(labels), 1, 1))
    stripes = np.sin(2 * np.pi * frequency * (np.cos(angle) * x + np.sin(angle) * y) + phase)
    palette = np.stack([np.cos(np.arange(len(NAMES)) * k) for k in (1.0, 2.0, 3.0)], axis=-1)  # a colour per class
    contrast = rng.uniform(40, 90, (len(labels), 1, 1, 1))
    images = 128 + contrast * stripes[..., None] * palette[labels][:, None, None, :]
    images += rng.normal(0, 20, images.shape)
    return np.clip(images, 0, 255).astype(np.uint8)


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    PILImage.fromarray(image, "RGB").save(buffer, format="PNG")
    return buffer.getvalue()
