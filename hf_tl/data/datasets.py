"""Datasets in, train/eval splits out: loading, column detection, seeded split, transforms, collator."""

from __future__ import annotations

import dataclasses
import io
import json
import random
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import PIL.Image
import torch
from datasets import (
    ClassLabel,
    Dataset,
    DatasetDict,
    Features,
    Image,
    ReadInstruction,
    Value,
    concatenate_datasets,
    load_dataset,
    load_from_disk,
)

from hf_tl.config.recipe import SLICE_FORMS, DataSection
from hf_tl.data.image_check import drop_or_refuse_bad_images
from hf_tl.data.preprocess import Preprocess, to_uint8
from hf_tl.data.processors import checked_preprocess
from hf_tl.errors import DataError, RecipeError

LABEL_NAMES = ("label", "labels", "class")  # a label column found by its name when none is a ClassLabel
HELD_OUT = "held out"
VALIDATION = "validation"  # the split name eval takes for a run's held-out validation split
SIZE_SAMPLE = 64  # training images whose sizes decide data.resize=auto


@dataclass
class Splits:
    train: Dataset
    eval: Dataset
    labels: list[str]
    image_column: str
    label_column: str
    eval_split: str
    skipped_images: dict[str, int] = field(default_factory=dict)  # undecodable images left out, per split


def load_splits(cfg: DataSection, seed: int) -> Splits:
    """Train and eval sets with a ClassLabel label column; eval is seeded-split from train if absent."""
    dataset = open_dataset(cfg)
    train = select_split(dataset, cfg.train_split, "data.train_split", cfg.dataset)
    image_column, label_column = detect_columns(train, cfg)
    skipped: dict[str, int] = {}
    # Every image is decoded once before training. A run capped by max_*_samples checks only what it keeps,
    # after the cut; otherwise each source split is checked whole, before the held-out split is drawn.
    capped = bool(cfg.max_train_samples or cfg.max_eval_samples)

    def readable(split: Dataset, name: str) -> Dataset:
        kept, count = drop_or_refuse_bad_images(
            split, image_column, cfg.on_bad_image, name, num_proc=cfg.num_workers or None
        )
        skipped[name] = skipped.get(name, 0) + count
        return kept

    train = _as_class_label(train if capped else readable(train, cfg.train_split), label_column)
    _check_apart(dataset, cfg)
    if cfg.eval_split:
        eval_set, eval_name = select_split(dataset, cfg.eval_split, "data.eval_split", cfg.dataset), cfg.eval_split
        eval_source = eval_name
    elif "validation" in dataset:
        eval_set, eval_name = dataset["validation"], "validation"
        eval_source = eval_name
    else:
        train, eval_set = _seeded_split(train, label_column, cfg.val_fraction, seed)
        eval_name = held_out_name(cfg.train_split, cfg.val_fraction, seed)
        eval_source = None  # drawn from the train split, checked already
    if eval_source:
        eval_set = _labels_like(eval_set if capped else readable(eval_set, eval_source), train, label_column)
    labels = train.features[label_column].names
    if len(labels) < 2:
        folders = " An image folder has one class per subfolder: put each class's images in a folder of its own."
        raise DataError(
            f"column '{label_column}' has {len(labels)} class(es): {labels}; classification needs at least 2."
            + (folders if train.info.builder_name == "imagefolder" else "")
        )
    train = _first(train.shuffle(seed=seed), cfg.max_train_samples) if cfg.max_train_samples else train
    eval_set = _first(eval_set.shuffle(seed=seed), cfg.max_eval_samples) if cfg.max_eval_samples else eval_set
    if capped:
        train, eval_set = readable(train, cfg.train_split), readable(eval_set, eval_source or cfg.train_split)
    for name, part in (("training", train), ("evaluation", eval_set)):
        if len(part) == 0:
            raise DataError(f"the {name} split of '{cfg.dataset}' is empty; check data.*_split and max_*_samples.")
    return Splits(train, eval_set, labels, image_column, label_column, eval_name, skipped)


def held_out_name(train_split: str, fraction: float, seed: int) -> str:
    """How a validation split carved out of the training split is named in metrics.json and the card."""
    return f"{train_split}[{fraction:.0%} {HELD_OUT}, seed {seed}]"


def is_held_out(split_name: str | None) -> bool:
    """A split hf_tl carved out of the training split: `hf-tl eval split=validation` makes it again."""
    return bool(split_name) and f" {HELD_OUT}, seed " in split_name


def open_dataset(cfg: DataSection) -> DatasetDict:
    """A Hub id, a directory written by save_to_disk, or any folder load_dataset understands."""
    path = Path(cfg.dataset).expanduser()
    if path.exists():
        if cfg.revision:
            raise RecipeError(
                f"data.revision='{cfg.revision}' pins a revision of a Hub dataset, but data.dataset='{cfg.dataset}' "
                "is a local folder, which has no revisions: drop data.revision, or name the dataset by its Hub id."
            )
        try:
            dataset = _open_local(path, cfg.config_name)
        except (ValueError, IndexError, KeyError, OSError) as e:
            raise DataError(f"could not read the dataset at '{cfg.dataset}': {e}") from None
        if cfg.image_column is None:
            _check_holds_images(dataset, cfg.dataset)
        return dataset
    if cfg.dataset.startswith(("/", "./", "../", "~")) or cfg.dataset.count("/") > 1:
        raise DataError(f"dataset path '{cfg.dataset}' does not exist. Give an existing directory or a Hub id.")
    try:
        return load_dataset(cfg.dataset, cfg.config_name, revision=cfg.revision)
    except (ConnectionError, FileNotFoundError, OSError) as e:
        raise DataError(
            f"could not load dataset '{cfg.dataset}': {e}\n  If the Hub is unreachable, point data.dataset "
            "at a local image folder or a directory written by Dataset.save_to_disk."
        ) from None


def _open_local(path: Path, config_name: str | None) -> DatasetDict:
    if (path / "state.json").exists():
        return DatasetDict({"train": _saved_split(path)})
    if (path / "dataset_dict.json").exists():
        names = json.loads((path / "dataset_dict.json").read_text())["splits"]
        return DatasetDict({name: _saved_split(path / name) for name in names})
    loaded = load_dataset(str(path), config_name)
    if all(_unlabelled_image_folder(split) for split in loaded.values()):
        # datasets labels an image folder only when its images lie in 2 or more class folders. Asked to label it
        # anyway, a folder of one class has that one class, which load_splits then names as the cause.
        loaded = load_dataset(str(path), config_name, drop_labels=False)
    return loaded


def _saved_split(path: Path) -> Dataset:
    """One split written by save_to_disk. datasets writes an empty split with no data file, which its own
    load_from_disk cannot read back ("list index out of range"): it is read here as the empty split it is."""
    state = json.loads((path / "state.json").read_text())
    if state.get("_data_files"):
        return load_from_disk(str(path))
    features = Features.from_dict(json.loads((path / "dataset_info.json").read_text())["features"])
    return Dataset.from_dict({name: [] for name in features}, features=features)


def _unlabelled_image_folder(split: Dataset) -> bool:
    features = split.features.values()
    return split.info.builder_name == "imagefolder" and all(isinstance(f, Image) for f in features)


def _check_holds_images(dataset: DatasetDict, name: str) -> None:
    """A local folder of files datasets reads as something else (text, audio, ...) holds no images: say so, rather
    than ask for columns it cannot have."""
    builders = {split.info.builder_name or "" for split in dataset.values()}
    has_images = any(isinstance(f, Image) for split in dataset.values() for f in split.features.values())
    if has_images or not any(b == "text" or b.endswith("folder") for b in builders):
        return
    raise DataError(
        f"no images found in '{name}': datasets read its files as {', '.join(sorted(builders))} data. An image "
        "folder holds image files (.png, .jpg, ...) in one folder per class, e.g. train/cat/001.png."
    )


def detect_columns(dataset: Dataset, cfg: DataSection) -> tuple[str, str]:
    """The Image column and the label column, unless the recipe names them. The label column is the first
    ClassLabel one, else a column named label, labels or class of any scalar type (class-encoded later)."""
    image = detect_image_column(dataset, cfg.image_column)
    features = dataset.features
    label = cfg.label_column or _label_column(features)
    if label is None:
        raise DataError(
            f"no column of a ClassLabel type found, nor one named {', '.join(LABEL_NAMES)}; set "
            f"data.label_column=NAME. Columns: {_columns(dataset)}"
        )
    if label not in features:
        raise DataError(f"data.label_column='{label}' is not a column of this dataset. Columns: {_columns(dataset)}")
    return image, label


def _label_column(features: Features) -> str | None:
    by_type = next((c for c, f in features.items() if isinstance(f, ClassLabel)), None)
    by_name = (c for c, f in features.items() if c.lower() in LABEL_NAMES and isinstance(f, Value))
    return by_type or next(by_name, None)


def detect_image_column(dataset: Dataset, name: str | None, key: str = "data.image_column") -> str:
    """The first Image column, or the one named, checked to hold images."""
    features = dataset.features
    image = name or next((c for c, f in features.items() if isinstance(f, Image)), None)
    if image is None:
        raise DataError(f"no column of an Image type found; set {key}=NAME. Columns: {_columns(dataset)}")
    if image not in features:
        raise DataError(f"{key}='{image}' is not a column of this dataset. Columns: {_columns(dataset)}")
    if not isinstance(features[image], Image):
        raise DataError(
            f"{key}='{image}' holds {type(features[image]).__name__}, not images. Columns: {_columns(dataset)}"
        )
    return image


def _columns(dataset: Dataset) -> str:
    return ", ".join(f"{c} ({type(f).__name__})" for c, f in dataset.features.items())


def input_size(processor: Any) -> tuple[int, int]:
    """The (height, width) the model was trained at, from its image processor."""
    if hasattr(processor, "data_config"):  # timm's processor, through transformers' timm wrapper
        return tuple(processor.data_config["input_size"][-2:])
    size = processor.crop_size if getattr(processor, "do_center_crop", False) else processor.size
    get = size.get if isinstance(size, dict) else lambda k: getattr(size, k, None)
    if get("height") and get("width"):
        return get("height"), get("width")
    edge = get("shortest_edge") or get("longest_edge")
    if edge:
        return edge, edge
    raise DataError(f"cannot tell the input size from the image processor's size {size}.")


def normalisation(processor: Any, cfg: DataSection | None = None) -> tuple[list[float], list[float]]:
    """Mean and std the model was trained with, unless the recipe sets its own (data.image_mean/std)."""
    if hasattr(processor, "data_config"):
        mean, std = list(processor.data_config["mean"]), list(processor.data_config["std"])
    else:
        mean, std = list(processor.image_mean), list(processor.image_std)
    if cfg is not None:
        mean, std = list(cfg.image_mean or mean), list(cfg.image_std or std)
    return mean, std


@dataclass(frozen=True)
class Resizing:
    """How a run's images reach the model's input size (data.resize), and why: metrics.json's `preprocessing`."""

    preprocess: Preprocess
    resize: str  # 'crop' or 'direct', what the run does
    chosen_by: str  # 'auto' or 'recipe'
    reason: str

    def record(self) -> dict[str, Any]:
        """`resize_to`: an int scales the shorter side to it, a [h, w] resizes to that, before any centre crop."""
        p = self.preprocess
        resize_to = list(p.size) if p.resize is None else p.resize
        return {
            "resize": self.resize,
            "chosen_by": self.chosen_by,
            "reason": self.reason,
            "size": list(p.size),
            "resize_to": list(resize_to) if isinstance(resize_to, tuple) else resize_to,
            "interpolation": p.interpolation,
            "mean": list(p.mean) if p.normalize else None,
            "std": list(p.std) if p.normalize else None,
        }


def preprocess_for(
    processor: Any, cfg: DataSection, channels_last: bool = False, splits: Splits | None = None
) -> Preprocess:
    """The batched preprocessing a model expects: its input size and normalisation, resized as data.resize says
    (data.resize=auto without `splits`, no training images to measure, resizes directly)."""
    return resizing_for(processor, cfg, splits, channels_last).preprocess


def resizing_for(processor: Any, cfg: DataSection, splits: Splits | None, channels_last: bool = False) -> Resizing:
    """data.resize decided: direct to the input size, or the checkpoint's own evaluation pipeline (crop), which
    auto takes when the training images are at least the input's size. A crop hf_tl cannot batch on the device
    is refused when asked for, and replaced by direct under auto."""
    chosen_by = "auto" if cfg.resize == "auto" else "recipe"
    wanted, reason = _auto_resize(splits, input_size(processor)) if chosen_by == "auto" else (cfg.resize, "")
    reason = reason or f"data.resize={cfg.resize} in the recipe"
    if wanted == "direct":
        return Resizing(_direct(processor, cfg, channels_last), "direct", chosen_by, reason)
    crop, why_not = checked_preprocess(processor)
    if crop is None:
        cannot = f"the image processor ({type(processor).__name__}) does what hf_tl cannot batch ({why_not})"
        if chosen_by == "recipe":
            raise DataError(
                f"data.resize=crop: {cannot}, and training needs its preprocessing batched on the device. "
                "Set data.resize=direct to resize straight to the input size."
            )
        return Resizing(_direct(processor, cfg, channels_last), "direct", chosen_by, f"{reason}, but {cannot}")
    mean, std = normalisation(processor, cfg)
    crop = dataclasses.replace(
        crop,
        interpolation=cfg.interpolation or crop.interpolation,
        mean=tuple(mean),
        std=tuple(std),
        normalize=bool(crop.normalize or cfg.image_mean or cfg.image_std),
        channels_last=channels_last,
    )
    return Resizing(crop, "crop", chosen_by, reason)


def _direct(processor: Any, cfg: DataSection, channels_last: bool) -> Preprocess:
    """Straight to the input size (CIFAR's 32->224), bilinear unless the recipe names a filter."""
    mean, std = normalisation(processor, cfg)
    normalize = bool(getattr(processor, "do_normalize", True) or cfg.image_mean or cfg.image_std)
    interpolation = cfg.interpolation or "bilinear"
    return Preprocess(input_size(processor), interpolation, tuple(mean), tuple(std), normalize, channels_last)


def _auto_resize(splits: Splits | None, size: tuple[int, int]) -> tuple[str, str]:
    """crop when the median shorter side of a sample of training images is at least the input's shorter side."""
    if splits is None:
        return "direct", "no training images to measure"
    sides = sorted(min(h, w) for h, w in image_sizes(splits.train, splits.image_column))
    if not sides:
        return "direct", "no training image could be measured"
    median = statistics.median(sides)
    measured = f"median shorter side {median:g} px of {len(sides)} sampled training images"
    if median >= min(size):
        return "crop", f"{measured} >= input {min(size)}"
    return "direct", f"{measured} < input {min(size)}"


def image_sizes(dataset: Dataset, column: str, count: int = SIZE_SAMPLE) -> list[tuple[int, int]]:
    """(height, width) of up to `count` images drawn with a fixed seed (the same whatever training.seed, so a seed
    sweep preprocesses alike), read from the image headers: PIL opens lazily, datasets does not decode here."""
    rows = random.Random(0).sample(range(len(dataset)), min(count, len(dataset)))
    sizes = []
    for item in dataset.select(rows).cast_column(column, Image(decode=False))[column]:
        try:
            with PIL.Image.open(io.BytesIO(item["bytes"]) if item.get("bytes") else item["path"]) as image:
                sizes.append((image.height, image.width))
        except (OSError, ValueError, TypeError):  # unreadable, or no file: measured by the others
            continue
    return sizes


def image_transform(image_column: str, label_column: str | None = None):
    """A batched `with_transform` function: uint8 RGB tensors at native size, for `Preprocess` on the device."""

    def transform(batch: dict) -> dict:
        images = {"images": [to_uint8(img) for img in batch[image_column]]}
        return {**images, "labels": batch[label_column]} if label_column else images

    return transform


def collate_images(examples: list[dict]) -> dict[str, Any]:
    """uint8 images stacked when they share a size (the usual case), else kept as a list."""
    images = [e["images"] for e in examples]
    same_size = all(image.shape == images[0].shape for image in images)
    batch = {"images": torch.stack(images) if same_size else images}
    if "labels" in examples[0]:
        batch["labels"] = torch.tensor([e["labels"] for e in examples])
    return batch


def select_split(dataset: DatasetDict, name: str, key: str, source: str) -> Dataset:
    """A split by name, or the rows a slice of datasets' own syntax names (train[:10%], validation[:500]).

    The one reading of a split spec: training takes its splits through it, and eval takes a run's recorded one.
    """
    parts = [(dataset[split], rows) for split, rows in _rows_of(dataset, name, key)]
    for examples, _ in parts:
        if len(examples) == 0:
            sizes = ", ".join(f"{s} ({len(e)} examples)" for s, e in dataset.items())
            raise DataError(
                f"{key}='{name}' is an empty split of '{source}': it holds no examples. Fill it, or choose another "
                f"split. Splits: {sizes}"
            )
    if name in dataset:
        return dataset[name]
    try:
        selected = concatenate_datasets([examples.select(rows) for examples, rows in parts])
    except ValueError as e:  # splits of different features cannot be joined with +
        raise DataError(f"{key}='{name}' joins splits that cannot be concatenated: {e}") from None
    if len(selected) == 0:
        sizes = ", ".join(f"{s} ({len(e)} examples)" for s, e in dataset.items())
        raise DataError(f"{key}='{name}' selects no examples of '{source}'. Splits: {sizes}")
    return selected


def _rows_of(dataset: DatasetDict, name: str, key: str) -> list[tuple[str, range]]:
    """The splits and row ranges `name` stands for, read by datasets' own parser of split specs."""
    if name in dataset:
        return [(name, range(len(dataset[name])))]
    if "[" not in name and "+" not in name:
        raise DataError(f"{key}='{name}' is not a split of this dataset. Splits: {', '.join(dataset)}")
    try:
        instructions = ReadInstruction.from_spec(name).to_absolute({s: len(e) for s, e in dataset.items()})
    except (ValueError, AssertionError) as e:
        raise DataError(
            f"{key}='{name}' is not a split of this dataset, nor a slice of one ({e}). Splits: {', '.join(dataset)}. "
            f"A slice is written as datasets writes it: {SLICE_FORMS}."
        ) from None
    return [(i.splitname, range(i.from_, max(i.from_, i.to))) for i in instructions]


def _check_apart(dataset: DatasetDict, cfg: DataSection) -> None:
    """Validation must not see training images: the same split, or slices of one split that overlap, are refused."""
    if cfg.eval_split == cfg.train_split:
        raise DataError(
            f"data.eval_split and data.train_split are both '{cfg.train_split}': "
            "validation would see the training images."
        )
    eval_split = cfg.eval_split or (VALIDATION if VALIDATION in dataset else None)  # the one load_splits takes
    if not eval_split:
        return  # validation is held out of the training rows
    train = _rows_of(dataset, cfg.train_split, "data.train_split")
    evaluation = _rows_of(dataset, eval_split, "data.eval_split")
    for split, rows in train:
        shared = [r for s, r in evaluation if s == split and range(max(rows.start, r.start), min(rows.stop, r.stop))]
        if shared:
            given = f"data.eval_split='{eval_split}'" if cfg.eval_split else f"the '{eval_split}' split (the default)"
            raise DataError(
                f"{given} and data.train_split='{cfg.train_split}' share rows of the "
                f"split '{split}': validation would see training images. Give them disjoint slices, e.g. "
                f"{split}[:80%] and {split}[80%:]."
            )


def _as_class_label(dataset: Dataset, column: str) -> Dataset:
    """Integer or string labels become a ClassLabel, classes in natural order (2 before 10)."""
    if isinstance(dataset.features[column], ClassLabel):
        return dataset
    values = sorted(set(dataset.unique(column)))
    return _encode(dataset, column, ClassLabel(names=[str(v) for v in values]))


def _labels_like(dataset: Dataset, reference: Dataset, column: str) -> Dataset:
    """Give `dataset` the label ids of `reference`, whatever order or type its own labels have."""
    target = reference.features[column]
    feature = dataset.features[column]
    if feature == target:
        return dataset
    return _encode(dataset, column, target, feature.int2str if isinstance(feature, ClassLabel) else str)


def _encode(dataset: Dataset, column: str, target: ClassLabel, name_of: Callable[[Any], str] = str) -> Dataset:
    unknown = sorted({name_of(v) for v in dataset.unique(column)} - set(target.names))
    if unknown:
        raise DataError(
            f"labels {unknown[:10]} of column '{column}' are not among the training classes {target.names[:20]}."
        )
    features = dataset.features.copy()
    features[column] = target
    return dataset.map(
        lambda batch: {column: [target.str2int(name_of(v)) for v in batch[column]]},
        batched=True,
        features=features,
        desc="encoding labels",
    )


def _seeded_split(train: Dataset, label_column: str, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    if len(train) < 2:
        raise DataError(
            f"the train split has {len(train)} example(s): too few to hold out data.val_fraction={fraction}."
        )
    try:
        parts = train.train_test_split(test_size=fraction, seed=seed, stratify_by_column=label_column)
    except ValueError:  # a class too small to stratify
        parts = train.train_test_split(test_size=fraction, seed=seed)
    return parts["train"], parts["test"]


def _first(dataset: Dataset, n: int | None) -> Dataset:
    return dataset if n is None else dataset.select(range(min(n, len(dataset))))
