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
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# A private HF cache, set before datasets/transformers are imported (they read it at import time).
_HF_HOME = tempfile.mkdtemp(prefix="hf_tl-tests-hf-home-")
os.environ["HF_HOME"] = _HF_HOME
os.environ["HF_DATASETS_CACHE"] = os.path.join(_HF_HOME, "datasets")

import torch  # noqa: E402
from datasets import Dataset, DatasetDict  # noqa: E402

from hf_tl.config.quickstart import digits_dataset  # noqa: E402
from hf_tl.config.recipe import DataSection  # noqa: E402
from hf_tl.data.datasets import preprocess_for  # noqa: E402
from hf_tl.data.preprocess import draw_flips, to_uint8  # noqa: E402

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


@pytest.fixture(autouse=True)
def warnings_said_afresh():
    """hf_tl says each warning once per command (`hf_tl.errors.warn`); each test is a command of its own."""
    from hf_tl.errors import forget_warnings

    forget_warnings()


@pytest.fixture
def machine_without_accelerator(monkeypatch):
    """The device policy (`hf_tl.device`) as on a machine with no GPU, whatever this one has."""
    monkeypatch.setattr("hf_tl.device.no_accelerator", lambda: True)


@pytest.fixture
def machine_with_accelerator(monkeypatch):
    """The device policy's decisions as on a GPU machine (the run itself stays where torch puts it)."""
    monkeypatch.setattr("hf_tl.device.no_accelerator", lambda: False)


@pytest.fixture(scope="session", autouse=True)
def _remove_private_hf_home():
    yield
    shutil.rmtree(_HF_HOME, ignore_errors=True)


def digits(classes=(0, 1, 2, 3, 4), per_class: int | None = None) -> Dataset:
    """scikit-learn's bundled 8x8 digits (real images), as grayscale PIL images with a ClassLabel."""
    return digits_dataset(tuple(classes), per_class=per_class, label_format="digit_{}")


def saved_digits(folder: Path, per_class: int) -> Path:
    """A save_to_disk DatasetDict with only a train split (so hf_tl makes the validation split)."""
    path = folder / "saved"
    DatasetDict({"train": digits(per_class=per_class)}).save_to_disk(str(path))
    return path


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory) -> Path:
    return saved_digits(tmp_path_factory.mktemp("digits"), per_class=40)


@pytest.fixture(scope="session")
def digits_splits_dir(tmp_path_factory) -> Path:
    """Digits 0-4 with a train split and a test split of other images (20 of each class in each), save_to_disk."""
    every = digits(per_class=40)  # 40 of each class, class after class
    labels = every["label"]
    first = [i for i, label in enumerate(labels) if i - labels.index(label) < 20]
    rest = sorted(set(range(len(every))) - set(first))
    path = tmp_path_factory.mktemp("digits-splits") / "saved"
    DatasetDict({"train": every.select(first), "test": every.select(rest)}).save_to_disk(str(path))
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
    from transformers import ResNetConfig, ResNetForImageClassification

    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 2], num_labels=3)
    return _save_with_processor(ResNetForImageClassification(config), path, 16)


def save_swin(path: Path) -> Path:
    from transformers import SwinConfig, SwinForImageClassification

    config = SwinConfig(
        image_size=32, patch_size=4, embed_dim=16, depths=[1, 2], num_heads=[2, 2], window_size=4, num_labels=3
    )
    return _save_with_processor(SwinForImageClassification(config), path, 32)


def save_convnext(path: Path) -> Path:
    from transformers import ConvNextConfig, ConvNextForImageClassification

    config = ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 2], num_stages=2, num_labels=3)
    return _save_with_processor(ConvNextForImageClassification(config), path, 32)


def save_bit(path: Path) -> Path:
    """BiT as google/bit-50 is: pre-activation bottlenecks, weight-standardised convolutions, GroupNorm."""
    from transformers import BitConfig, BitForImageClassification

    config = BitConfig(
        embedding_size=8, hidden_sizes=[8, 16], depths=[1, 2], layer_type="preactivation", num_groups=2, num_labels=3
    )
    return _save_with_processor(BitForImageClassification(config), path, 32)


def save_timm(path: Path, architecture: str, **model_args) -> Path:
    """A timm model through transformers' timm wrapper; its image settings live in config.json, as on the Hub."""
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

    image = {"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bilinear"}
    config = TimmWrapperConfig(architecture=architecture, model_args=model_args, num_labels=3, pretrained_cfg=image)
    TimmWrapperForImageClassification(config).save_pretrained(path)
    return path


def save_densenet(path: Path) -> Path:
    return save_timm(path, "densenet121", growth_rate=4, block_config=[2, 2], bn_size=2)


def save_cait(path: Path) -> Path:
    # Layer scale starts at 1, not CaiT's 1e-5, so that a few steps move every parameter visibly in float32.
    return save_timm(
        path,
        "cait_xxs24_224",
        depth=2,
        depth_token_only=2,
        embed_dim=16,
        num_heads=2,
        img_size=32,
        patch_size=8,
        init_values=1.0,
    )


def _save_with_processor(model, path: Path, size: int) -> Path:
    from transformers import ViTImageProcessor

    model.save_pretrained(path)
    ViTImageProcessor(size={"height": size, "width": size}, image_mean=[0.485, 0.456, 0.406]).save_pretrained(path)
    return path


SAVERS = {
    "vit": lambda path: save_vit(path),
    "deit": lambda path: save_deit_distilled(path),
    "swin": save_swin,
    "convnext": save_convnext,
    "resnet": save_resnet,
    "bit": save_bit,
    "densenet": save_densenet,
    "cait": save_cait,
}
TINY_FAMILIES = tuple(SAVERS)  # the one list of tiny families the per-family tests run over, in this order


@pytest.fixture(scope="session")
def tiny_family(tmp_path_factory):
    """`tiny_family(name)`: the directory of a tiny saved model of that family, built once per session."""
    root = tmp_path_factory.mktemp("families")
    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            torch.manual_seed(zlib.crc32(name.encode()))  # the same weights every session: no flaky dead units
            built[name] = SAVERS[name](root / name)
        return built[name]

    return get


@pytest.fixture(scope="session")
def tiny_resnet(tmp_path_factory) -> Path:
    return save_resnet(tmp_path_factory.mktemp("models") / "tiny-resnet")


@pytest.fixture(scope="session")
def tiny_vit(tmp_path_factory) -> Path:
    return save_vit(tmp_path_factory.mktemp("models") / "tiny-vit")


@pytest.fixture(scope="session")
def tiny_deit(tmp_path_factory) -> Path:
    return save_deit_distilled(tmp_path_factory.mktemp("models") / "tiny-deit-distilled")


def make_transform(processor, cfg: DataSection, train: bool, image_column: str, label_column: str):
    """Per-image float pixel values, to check hf_tl's batched `Preprocess` against one image at a time."""
    preprocess = preprocess_for(processor, cfg)
    flip = train and cfg.augment == "flip"

    def transform(batch: dict) -> dict:
        pixels = [preprocess(to_uint8(img)[None], draw_flips(1) if flip else None)[0] for img in batch[image_column]]
        return {"pixel_values": pixels, "labels": batch[label_column]}

    return transform


def collate(examples: list[dict]) -> dict[str, torch.Tensor]:
    """Stack `make_transform`'s examples into a batch a model takes."""
    return {
        "pixel_values": torch.stack([e["pixel_values"] for e in examples]),
        "labels": torch.tensor([e["labels"] for e in examples]),
    }


def outcome_of(main, argv: list[str], capsys) -> tuple[int, str, str]:
    """Run a command's `main` in this process as the command line does: its exit status, stdout and stderr."""
    try:
        main(argv)
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def exit_status_of(main, argv: list[str], capsys) -> tuple[int, str]:
    """`outcome_of` without stdout: the exit status and stderr."""
    code, _, err = outcome_of(main, argv, capsys)
    return code, err


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 600, **extra_env: str) -> subprocess.CompletedProcess:
    """Run a command as a user would, with this interpreter's environment."""
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", **extra_env}
    return subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


HUB_FIXTURES = Path(__file__).resolve().parent / "fixtures" / "hub"


def hub_fixture_ids() -> list[str]:
    """The Hub ids under tests/fixtures/hub/ (`org/name` folders holding a checkpoint's published JSON files)."""
    return sorted(f"{d.parent.name}/{d.name}" for d in HUB_FIXTURES.glob("*/*") if d.is_dir())


@dataclass(frozen=True)
class FixtureHub:
    """An HF cache of tests/fixtures/hub/: `env` points a command at it; `snapshot(id)` is a checkpoint's folder."""

    home: Path
    snapshots: dict[str, Path]

    @property
    def env(self) -> dict[str, str]:
        return {"HF_HOME": str(self.home), "HF_HUB_CACHE": str(self.home / "hub"), "HF_HUB_OFFLINE": "1"}

    def snapshot(self, repo_id: str) -> Path:
        return self.snapshots[repo_id]


@pytest.fixture(scope="session")
def real_size_hub(tmp_path_factory) -> FixtureHub:
    """The published configs of every checkpoint the recipes and studies name (no weights), as an HF cache.

    Laid out as huggingface_hub keeps downloads, so that with HF_HUB_OFFLINE=1 `model.name=<Hub id>` resolves
    through transformers' own code in a command run with `env`.
    """
    import hashlib

    from fake_hub import fill_hf_cache

    home = tmp_path_factory.mktemp("hf-home-real-size")
    snapshots = {}
    for repo_id in hub_fixture_ids():
        files = {p.name: p.read_bytes() for p in sorted((HUB_FIXTURES / repo_id).iterdir())}
        commit = hashlib.sha1(repo_id.encode() + b"".join(files.values())).hexdigest()
        snapshots[repo_id] = fill_hf_cache(home / "hub", repo_id, files, commit)
    return FixtureHub(home, snapshots)
