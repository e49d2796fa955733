"""Rebuild the embedded quickstart: digits data and a tiny ViT pretrained on digits 0-4.

`python -m hf_tl.quickstart` (needs scikit-learn, from the `dev` extra) rewrites
hf_tl/assets/quickstart/. The backbone is pretrained by hf_tl itself (strategy `full`,
weights from scratch) on digits 0-4; the `quickstart` recipe then fine-tunes its last
block on digits 5-9, a real transfer to classes it has never seen.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from datasets import ClassLabel, Dataset, Features, Image
from PIL import Image as PILImage
from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

from hf_tl.recipe import DataSection, ModelSection, OutputSection, Recipe, StrategySection, TrainingSection

ASSETS = Path(__file__).parent / "assets" / "quickstart"
PRETRAIN_DIGITS = (0, 1, 2, 3, 4)
FINETUNE_DIGITS = (5, 6, 7, 8, 9)
TINY_VIT = dict(
    image_size=16,
    patch_size=4,
    num_channels=3,
    hidden_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    intermediate_size=128,
)


def digits_dataset(classes: tuple[int, ...], per_class: int | None = None, label_format: str = "{}") -> Dataset:
    """scikit-learn's bundled 8x8 digits as a datasets.Dataset of grayscale PIL images."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    keep = np.flatnonzero(np.isin(digits.target, classes))
    if per_class:
        keep = np.concatenate([keep[digits.target[keep] == c][:per_class] for c in classes])
    pixels = (digits.images[keep] * (255 / 16)).round().astype(np.uint8)
    names = [label_format.format(c) for c in classes]
    return Dataset.from_dict(
        {
            "image": [PILImage.fromarray(p, mode="L") for p in pixels],
            "label": [list(classes).index(t) for t in digits.target[keep]],
        },
        features=Features({"image": Image(), "label": ClassLabel(names=names)}),
    )


def write_dataset(dataset: Dataset, folder: Path) -> None:
    """Parquet in the Hub's layout, so load_dataset(folder) takes the same path as a Hub id."""
    (folder / "data").mkdir(parents=True, exist_ok=True)
    dataset.to_parquet(str(folder / "data" / "train-00000-of-00001.parquet"))


def pretrain_recipe(init_dir: Path, data_dir: Path, run_dir: Path) -> Recipe:
    return Recipe(
        name="quickstart_pretrain",
        model=ModelSection(name=str(init_dir), weights="none"),
        strategy=StrategySection(kind="full"),
        data=DataSection(dataset=str(data_dir), val_fraction=0.1),
        training=TrainingSection(epochs=40, batch_size=32, lr=1e-3, weight_decay=0.05, warmup_ratio=0.05, seed=0),
        output=OutputSection(dir=str(run_dir), overwrite=True),
    )


def build(assets: Path = ASSETS) -> None:
    from hf_tl.train import run

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        init_dir = tmp / "init"
        ViTForImageClassification(ViTConfig(**TINY_VIT, num_labels=len(PRETRAIN_DIGITS))).save_pretrained(init_dir)
        ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(init_dir)
        write_dataset(digits_dataset(PRETRAIN_DIGITS), tmp / "digits-0-4")
        run_dir = run(pretrain_recipe(init_dir, tmp / "digits-0-4", tmp / "run"))
        shutil.rmtree(assets, ignore_errors=True)
        shutil.copytree(run_dir / "model", assets / "backbone", ignore=shutil.ignore_patterns("training_args.bin"))
        write_dataset(digits_dataset(FINETUNE_DIGITS), assets / "digits-5-9")
    print(f"wrote {assets}", file=sys.stderr)


if __name__ == "__main__":
    build()
