"""Shared fixtures: tiny real-family models saved locally, and small image datasets made here.

Nothing reaches the Hub: HF_HUB_OFFLINE is set and every model is loaded from a directory
through the same `from_pretrained` path a Hub id takes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# A private HF cache, set before datasets/transformers are imported (they read it at import time).
_HF_HOME = tempfile.mkdtemp(prefix="hf_tl-tests-hf-home-")
os.environ["HF_HOME"] = _HF_HOME
os.environ["HF_DATASETS_CACHE"] = os.path.join(_HF_HOME, "datasets")

from datasets import Dataset, DatasetDict  # noqa: E402

from hf_tl.quickstart import digits_dataset  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TINY_VIT = dict(
    image_size=16,
    patch_size=4,
    num_channels=3,
    hidden_size=32,
    num_hidden_layers=3,
    num_attention_heads=2,
    intermediate_size=64,
)


@pytest.fixture(scope="session", autouse=True)
def _remove_private_hf_home():
    yield
    shutil.rmtree(_HF_HOME, ignore_errors=True)


def digits(classes=(0, 1, 2, 3, 4), per_class: int | None = None) -> Dataset:
    """scikit-learn's bundled 8x8 digits (real images), as grayscale PIL images with a ClassLabel."""
    return digits_dataset(tuple(classes), per_class=per_class, label_format="digit_{}")


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory) -> Path:
    """A save_to_disk DatasetDict with only a train split (so hf_tl makes the validation split)."""
    path = tmp_path_factory.mktemp("digits") / "saved"
    DatasetDict({"train": digits(per_class=40)}).save_to_disk(str(path))
    return path


def save_vit(path: Path, **overrides) -> Path:
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    ViTForImageClassification(ViTConfig(**{**TINY_VIT, **overrides}, num_labels=3)).save_pretrained(path)
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(path)
    return path


def save_deit_distilled(path: Path) -> Path:
    from transformers import DeiTConfig, DeiTForImageClassificationWithTeacher, ViTImageProcessor

    DeiTForImageClassificationWithTeacher(DeiTConfig(**TINY_VIT, num_labels=3)).save_pretrained(path)
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(path)
    return path


def save_resnet(path: Path) -> Path:
    from transformers import ResNetConfig, ResNetForImageClassification, ViTImageProcessor

    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=3)
    ResNetForImageClassification(config).save_pretrained(path)
    ViTImageProcessor(size={"height": 16, "width": 16}, image_mean=[0.485, 0.456, 0.406]).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_resnet(tmp_path_factory) -> Path:
    return save_resnet(tmp_path_factory.mktemp("models") / "tiny-resnet")


@pytest.fixture(scope="session")
def tiny_vit(tmp_path_factory) -> Path:
    return save_vit(tmp_path_factory.mktemp("models") / "tiny-vit")


@pytest.fixture(scope="session")
def tiny_deit(tmp_path_factory) -> Path:
    return save_deit_distilled(tmp_path_factory.mktemp("models") / "tiny-deit-distilled")


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 600, **extra_env: str) -> subprocess.CompletedProcess:
    """Run a command as a user would, with this interpreter's environment."""
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", **extra_env}
    return subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
