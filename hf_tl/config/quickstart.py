"""What `hf-tl quickstart` does: rebuild the quickstart's data and backbone into the folder DIR.

Writes DIR/backbone, a tiny ViT that hf_tl pretrains itself (strategy `full`, weights from scratch) on
scikit-learn's digits 0-4, and DIR/digits-5-9, the data the `quickstart` recipe fine-tunes its last block
on: a real transfer to classes the backbone has never seen. These are the assets shipped in
hf_tl/assets/quickstart/; the command never writes into the installed package, and replaces nothing in DIR
but those two folders. Needs scikit-learn (the `dev` extra). Train on the rebuilt assets with
`hf-tl train recipe=quickstart model.name=DIR/backbone data.dataset=DIR/digits-5-9`.

With zoo=true it also rebuilds the miniature zoo (`build_zoo`): a tiny ResNet, ConvNeXt and Swin, pretrained
the same way into DIR/zoo/NAME, and DIR/zoo.yaml, a zoo of those three and the ViT for `hf-tl select`. These
are the backbones shipped in hf_tl/assets/miniature/ and listed by recipes/zoos/miniature.yaml.
"""

from __future__ import annotations

import json
import shlex
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from datasets import ClassLabel, Dataset, Features, Image
from PIL import Image as PILImage
from transformers import (
    AutoModelForImageClassification,
    ConvNextConfig,
    PretrainedConfig,
    ResNetConfig,
    SwinConfig,
    ViTConfig,
    ViTImageProcessor,
)

from hf_tl import progress
from hf_tl.config.commands import BACKBONE_DIR, FINETUNE_DIR, ZOO_DIR, ZOO_FILE
from hf_tl.config.recipe import (
    DataSection,
    ModelSection,
    OutputSection,
    Recipe,
    StrategySection,
    TrainingSection,
)
from hf_tl.config.resources import PACKAGE_DIR
from hf_tl.errors import HfTlError
from hf_tl.runs.folder import METRICS_FILE, MODEL_DIR, check_writable, replaced_atomically, write_text

ASSETS = PACKAGE_DIR / "assets" / "quickstart"  # the shipped copy, which this never writes
ZOO_DESCRIPTION = (
    "The miniature zoo of `hf-tl quickstart zoo=true`: four tiny backbones of four families (ViT, ResNet, ConvNeXt, "
    "Swin), pretrained by hf_tl on digits 0-4."
)
PRETRAIN_DIGITS = (0, 1, 2, 3, 4)
FINETUNE_DIGITS = (5, 6, 7, 8, 9)
IMAGE_SIZE = 16
TINY_VIT = dict(
    image_size=IMAGE_SIZE,
    patch_size=4,
    num_channels=3,
    hidden_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    intermediate_size=128,
)
# The stem (a stride-2 convolution, then a stride-2 max pool) takes 16x16 to 4x4; the second stage to 2x2.
TINY_RESNET = dict(num_channels=3, embedding_size=24, hidden_sizes=[24, 40], depths=[1, 1], layer_type="basic")
# A 2x2 patch stem keeps 8x8 for the first stage, 4x4 for the second.
TINY_CONVNEXT = dict(num_channels=3, patch_size=2, num_stages=2, hidden_sizes=[24, 48], depths=[2, 2])
# 2x2 patches: 8x8 tokens in 4x4 windows (shifted by 2), then one 4x4 window after the patch merging.
TINY_SWIN = dict(
    image_size=IMAGE_SIZE,
    patch_size=2,
    num_channels=3,
    embed_dim=56,
    depths=[2, 2],
    num_heads=[2, 4],
    window_size=4,
    mlp_ratio=2.0,
)


@dataclass(frozen=True)
class Backbone:
    """A tiny backbone hf_tl pretrains from scratch on digits 0-4, and the training that suits it."""

    title: str
    config: type[PretrainedConfig]
    shape: dict = field(default_factory=dict)
    epochs: float = 40
    lr: float = 1e-3


QUICKSTART_VIT = Backbone("ViT", ViTConfig, TINY_VIT)
MINIATURE_ZOO = {  # every one reads its images through the ViT's processor: a ranking compares backbones alone
    "resnet": Backbone("ResNet", ResNetConfig, TINY_RESNET, epochs=30, lr=3e-3),
    "convnext": Backbone("ConvNeXt", ConvNextConfig, TINY_CONVNEXT, epochs=30, lr=3e-3),
    "swin": Backbone("Swin", SwinConfig, TINY_SWIN, epochs=30, lr=1e-3),
}


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


def pretrain_recipe(init_dir: Path, data_dir: Path, run_dir: Path, epochs: float = 40, lr: float = 1e-3) -> Recipe:
    return Recipe(
        name="quickstart_pretrain",
        model=ModelSection(name=str(init_dir), weights="none"),
        strategy=StrategySection(kind="full"),
        data=DataSection(dataset=str(data_dir), val_fraction=0.1),
        training=TrainingSection(epochs=epochs, batch_size=32, lr=lr, weight_decay=0.05, warmup_ratio=0.05, seed=0),
        output=OutputSection(dir=str(run_dir)),
    )


def build(out: Path, epochs: float | None = None) -> None:
    """Pretrain the backbone in a temporary folder, then replace out/backbone and out/digits-5-9, each whole.
    `epochs` shortens the pretraining (tests); the shipped backbone has its own."""
    out = Path(out)
    check_writable(out, "out", "quickstart-assets")  # refuses the installed package too
    with pretraining_data() as (tmp, data_dir):
        pretrain(QUICKSTART_VIT, data_dir, tmp / "vit", out / BACKBONE_DIR, epochs)
        with replaced_atomically(out / FINETUNE_DIR) as finetune:
            write_dataset(digits_dataset(FINETUNE_DIGITS), finetune)
    train = [
        "hf-tl",
        "train",
        "recipe=quickstart",
        f"model.name={out / BACKBONE_DIR}",
        f"data.dataset={out / FINETUNE_DIR}",
    ]
    print(f"wrote {out / BACKBONE_DIR} and {out / FINETUNE_DIR}. Train on them: {shlex.join(train)}", file=sys.stderr)


def build_zoo(out: Path, epochs: float | None = None) -> dict[str, float]:
    """Pretrain the miniature zoo's ResNet, ConvNeXt and Swin into out/zoo/NAME, each replaced whole, and write
    out/zoo.yaml listing them with the ViT that `build` wrote to out/backbone. Returns each one's held-out
    accuracy on digits 0-4. `epochs` shortens the pretraining (tests); the shipped zoo has its own."""
    out = Path(out)
    check_writable(out, "out", "quickstart-assets")  # refuses the installed package too
    vit = out / BACKBONE_DIR
    if not (vit / "config.json").is_file():
        quickstart = shlex.join(["hf-tl", "quickstart", f"out={out}", "zoo=true"])
        raise HfTlError(f"the miniature zoo lists the quickstart's ViT, but {vit} holds none: run `{quickstart}`.")
    with pretraining_data() as (tmp, data_dir):
        accuracies = {
            name: pretrain(backbone, data_dir, tmp / name, out / ZOO_DIR / name, epochs)
            for name, backbone in MINIATURE_ZOO.items()
        }
    write_text(out / ZOO_FILE, zoo_yaml(out, accuracies))
    select = ["hf-tl", "select", f"dataset={out / FINETUNE_DIR}", f"zoo={out / ZOO_FILE}"]
    print(
        f"wrote {out / ZOO_DIR} and {out / ZOO_FILE}. Rank the zoo on digits 5-9: {shlex.join(select)}", file=sys.stderr
    )
    return accuracies


@contextmanager
def pretraining_data() -> Iterator[tuple[Path, Path]]:
    """A temporary folder, and in it digits 0-4 written as a dataset folder."""
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "digits-0-4"
        write_dataset(digits_dataset(PRETRAIN_DIGITS), data_dir)
        yield Path(tmp), data_dir


def pretrain(backbone: Backbone, data_dir: Path, work: Path, target: Path, epochs: float | None = None) -> float:
    """Train `backbone` from scratch (strategy full, weights none) in `work`, replace `target` whole with the
    model, and return its held-out accuracy."""
    from hf_tl.training.run import run

    init_dir = work / "init"  # a config and a processor: weights=none builds the model from the config
    backbone.config(**backbone.shape, num_labels=len(PRETRAIN_DIGITS)).save_pretrained(init_dir)
    ViTImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(init_dir)
    recipe = pretrain_recipe(init_dir, data_dir, work / "run", epochs or backbone.epochs, backbone.lr)
    run_dir = run(recipe)
    with replaced_atomically(target) as model:
        shutil.copytree(
            run_dir / MODEL_DIR, model, ignore=shutil.ignore_patterns("training_args.bin"), dirs_exist_ok=True
        )
    accuracy = json.loads((run_dir / METRICS_FILE).read_text())["eval"]["accuracy"]
    print(f"{target}: digits 0-4 held-out accuracy {accuracy:.3f}", file=sys.stderr)
    return accuracy


def zoo_yaml(out: Path, accuracies: dict[str, float]) -> str:
    """The zoo file (hf_tl.selection.zoo's format) of out/backbone and out/zoo/NAME, absolute paths as ids."""
    notes = {out / BACKBONE_DIR: f"the quickstart's tiny {QUICKSTART_VIT.title}, built by `hf-tl quickstart`"}
    notes |= {
        out / ZOO_DIR / name: f"a tiny {MINIATURE_ZOO[name].title}, digits 0-4 held-out accuracy {accuracy:.3f}"
        for name, accuracy in accuracies.items()
    }
    models = [zoo_entry(path, note) for path, note in notes.items()]
    return yaml.safe_dump({"description": ZOO_DESCRIPTION, "models": models}, sort_keys=False, width=1000)


def zoo_entry(path: Path, note: str) -> dict[str, str]:
    """One model of a zoo file: its family and its size read from the checkpoint itself."""
    with progress.transformers_bars_off():
        model = AutoModelForImageClassification.from_pretrained(path)
    size = sum(p.numel() for p in model.parameters())
    return {"id": str(path.resolve()), "family": model.config.model_type, "note": f"{size:,} parameters: {note}."}
