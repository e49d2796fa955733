"""What `hf-tl quickstart` does: rebuild the quickstart's data and backbone into the folder DIR.

Writes DIR/backbone, a tiny ViT that hf_tl pretrains itself (strategy `full`, weights from scratch) on
scikit-learn's digits 0-4, and DIR/digits-5-9, the data the `quickstart` recipe fine-tunes its last block
on: a real transfer to classes the backbone has never seen. These are the assets shipped in
hf_tl/assets/quickstart/; the command never writes into the installed package, and replaces nothing in DIR
but those two folders. Needs scikit-learn (the `dev` extra). Train on the rebuilt assets with
`hf-tl train recipe=quickstart model.name=DIR/backbone data.dataset=DIR/digits-5-9`.
"""

from __future__ import annotations

import shlex
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from datasets import ClassLabel, Dataset, Features, Image
from PIL import Image as PILImage
from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

from hf_tl.config.recipe import (
    DataSection,
    ModelSection,
    OutputSection,
    Recipe,
    StrategySection,
    TrainingSection,
)
from hf_tl.config.resources import PACKAGE_DIR
from hf_tl.runs.folder import MODEL_DIR, check_writable, replaced_atomically

ASSETS = PACKAGE_DIR / "assets" / "quickstart"  # the shipped copy, which this never writes
BACKBONE_DIR = "backbone"
FINETUNE_DIR = "digits-5-9"
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
        output=OutputSection(dir=str(run_dir)),
    )


def build(out: Path) -> None:
    """Pretrain the backbone in a temporary folder, then replace out/backbone and out/digits-5-9, each whole."""
    from hf_tl.training.run import run

    out = Path(out)
    check_writable(out, "out", "quickstart-assets")  # refuses the installed package too
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        init_dir = tmp / "init"
        ViTForImageClassification(ViTConfig(**TINY_VIT, num_labels=len(PRETRAIN_DIGITS))).save_pretrained(init_dir)
        ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(init_dir)
        write_dataset(digits_dataset(PRETRAIN_DIGITS), tmp / "digits-0-4")
        run_dir = run(pretrain_recipe(init_dir, tmp / "digits-0-4", tmp / "run"))
        with replaced_atomically(out / BACKBONE_DIR) as backbone:
            ignore = shutil.ignore_patterns("training_args.bin")
            shutil.copytree(run_dir / MODEL_DIR, backbone, ignore=ignore, dirs_exist_ok=True)
        with replaced_atomically(out / FINETUNE_DIR) as finetune:
            write_dataset(digits_dataset(FINETUNE_DIGITS), finetune)
    print(
        f"wrote {out / BACKBONE_DIR} and {out / FINETUNE_DIR}. Train on them: "
        + shlex.join(
            [
                "hf-tl",
                "train",
                "recipe=quickstart",
                f"model.name={out / BACKBONE_DIR}",
                f"data.dataset={out / FINETUNE_DIR}",
            ]
        ),  # fmt: skip
        file=sys.stderr,
    )
