"""Data: every on-disk layout, column detection, label alignment, the seeded split, transforms and the collator."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import collate, digits, make_transform
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value
from PIL import Image as PILImage
from transformers import CLIPImageProcessor, ConvNextImageProcessor, DeiTImageProcessor, ViTImageProcessor

from hf_tl.config.recipe import DataSection
from hf_tl.data.datasets import detect_columns, input_size, load_splits, open_dataset
from hf_tl.errors import DataError

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def cfg(dataset, **kw) -> DataSection:
    return DataSection(dataset=str(dataset), **kw)


def pixels(image) -> bytes:
    return np.asarray(image).tobytes()


def with_idx(ds: Dataset) -> Dataset:
    """The dataset with an `idx` column (a plain int column, which detection must ignore) to track examples."""
    return ds.add_column("idx", list(range(len(ds))))


def examples(ds: Dataset, image_column="image", label_column="label") -> Counter:
    """Each example as (pixel bytes, label name), counted."""
    names = ds.features[label_column].names
    return Counter((pixels(ex[image_column]), names[ex[label_column]]) for ex in ds)


def save_dict(path: Path, **splits: Dataset) -> Path:
    DatasetDict(splits).save_to_disk(str(path))
    return path


def save_parquet(path: Path, **splits: Dataset) -> Path:
    (path / "data").mkdir(parents=True)
    for name, ds in splits.items():
        ds.to_parquet(str(path / "data" / f"{name}-00000-of-00001.parquet"))
    return path


def save_imagefolder(path: Path, **splits: Dataset) -> Path:
    for split, ds in splits.items():
        names = ds.features["label"].names
        for i, ex in enumerate(ds):
            folder = path / split / names[ex["label"]]
            folder.mkdir(parents=True, exist_ok=True)
            ex["image"].save(folder / f"{i:04d}.png")
    return path


@pytest.fixture(scope="module")
def small() -> Dataset:
    """50 real 8x8 grayscale digits, 10 of each of 5 classes."""
    return digits(per_class=10)


@pytest.fixture(scope="module")
def indexed_dir(tmp_path_factory) -> Path:
    """200 digits (40 per class) with an idx column, train split only."""
    return save_dict(tmp_path_factory.mktemp("indexed") / "saved", train=with_idx(digits(per_class=40)))


# --- the on-disk layouts ------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["dataset_dict", "single_dataset", "imagefolder", "parquet"])
def test_every_layout_loads_all_examples_with_their_labels(layout, small, tmp_path):
    path = tmp_path / layout
    if layout == "dataset_dict":
        save_dict(path, train=small)
    elif layout == "single_dataset":
        small.save_to_disk(str(path))
    elif layout == "imagefolder":
        save_imagefolder(path, train=small)
    else:
        save_parquet(path, train=small)

    opened = open_dataset(cfg(path))
    assert isinstance(opened, DatasetDict) and list(opened) == ["train"]
    assert len(opened["train"]) == 50

    splits = load_splits(cfg(path, val_fraction=0.2), seed=0)
    assert (splits.image_column, splits.label_column) == ("image", "label")
    assert splits.labels == [f"digit_{c}" for c in range(5)]
    assert isinstance(splits.train.features["label"], ClassLabel)
    assert isinstance(splits.train.features["image"], Image)
    assert (len(splits.train), len(splits.eval)) == (40, 10)
    assert splits.eval_split == "train[20% held out, seed 0]"
    # Nothing lost, nothing duplicated, every image keeps its class.
    assert examples(splits.train) + examples(splits.eval) == examples(small)


def test_parquet_hub_layout_with_a_test_split(small, tmp_path):
    path = save_parquet(tmp_path / "pq", train=small.select(range(0, 50, 2)), test=small.select(range(1, 50, 2)))
    splits = load_splits(cfg(path, eval_split="test"), seed=0)
    assert splits.eval_split == "test"
    assert (len(splits.train), len(splits.eval)) == (25, 25)
    assert examples(splits.eval) == examples(small.select(range(1, 50, 2)))


def test_imagefolder_with_train_and_validation_dirs(small, tmp_path):
    path = save_imagefolder(
        tmp_path / "imgs", train=small.select(range(0, 50, 2)), validation=small.select(range(1, 50, 2))
    )
    splits = load_splits(cfg(path), seed=0)
    assert splits.eval_split == "validation"
    assert examples(splits.train) == examples(small.select(range(0, 50, 2)))
    assert examples(splits.eval) == examples(small.select(range(1, 50, 2)))


# --- column detection ---------------------------------------------------------------------------------


def renamed(ds: Dataset) -> Dataset:
    """Columns `coarse` (int, first), `img` (Image), `fine_label` (ClassLabel)."""
    features = Features({"coarse": Value("int64"), "img": Image(), "fine_label": ds.features["label"]})
    return Dataset.from_dict(
        {"coarse": [label % 2 for label in ds["label"]], "img": ds["image"], "fine_label": ds["label"]},
        features=features,
    )


def test_columns_detected_by_type_whatever_their_names(small, tmp_path):
    data = renamed(small)
    assert list(data.features) == ["coarse", "img", "fine_label"]
    assert detect_columns(data, cfg("x")) == ("img", "fine_label")

    splits = load_splits(cfg(save_dict(tmp_path / "renamed", train=data)), seed=0)
    assert (splits.image_column, splits.label_column) == ("img", "fine_label")
    assert splits.labels == [f"digit_{c}" for c in range(5)]
    assert examples(splits.train, "img", "fine_label") + examples(splits.eval, "img", "fine_label") == examples(small)
    processor = ViTImageProcessor(size={"height": 16, "width": 16})
    item = splits.train.with_transform(make_transform(processor, cfg("x"), True, "img", "fine_label"))[0]
    assert set(item) == {"pixel_values", "labels"}
    assert item["pixel_values"].shape == (3, 16, 16)


def test_explicit_columns_override_detection(small):
    data = renamed(small).cast_column("coarse", ClassLabel(names=["even", "odd"]))
    data = data.add_column("thumb", data.cast_column("img", Image(decode=False))["img"], feature=Image())
    # Detection takes the first of each type ...
    assert detect_columns(data, cfg("x")) == ("img", "coarse")
    # ... and the recipe's names win.
    assert detect_columns(data, cfg("x", image_column="thumb", label_column="fine_label")) == ("thumb", "fine_label")
    assert detect_columns(data, cfg("x", label_column="fine_label")) == ("img", "fine_label")


def test_explicit_columns_through_load_splits(small, tmp_path):
    data = renamed(small).cast_column("coarse", ClassLabel(names=["even", "odd"]))
    path = save_dict(tmp_path / "two-labels", train=data)
    assert load_splits(cfg(path), seed=0).labels == ["even", "odd"]
    splits = load_splits(cfg(path, label_column="fine_label"), seed=0)
    assert splits.label_column == "fine_label"
    assert splits.labels == [f"digit_{c}" for c in range(5)]


@pytest.mark.parametrize("key, name", [("image_column", "picture"), ("label_column", "klass")], ids=["image", "label"])
def test_wrong_column_name_lists_the_real_columns(small, key, name):
    with pytest.raises(DataError) as info:
        detect_columns(renamed(small), cfg("x", **{key: name}))
    assert str(info.value) == (
        f"data.{key}='{name}' is not a column of this dataset. "
        "Columns: coarse (Value), img (Image), fine_label (ClassLabel)"
    )
    assert info.value.exit_code == 1


def test_no_image_column_says_to_set_image_column(tmp_path):
    data = Dataset.from_dict(
        {"pixels": [[0, 1], [1, 0], [1, 1], [0, 0]], "label": [0, 1, 0, 1]},
        features=Features({"pixels": [Value("int64")], "label": ClassLabel(names=["a", "b"])}),
    )
    with pytest.raises(DataError) as info:
        load_splits(cfg(save_dict(tmp_path / "noimg", train=data)), seed=0)
    message = str(info.value)
    assert "no column of an Image type found; set data.image_column=NAME" in message
    assert "pixels (" in message and "label (ClassLabel)" in message


def test_no_class_label_column_says_to_set_label_column(small):
    data = Dataset.from_dict(
        {"image": small["image"][:4], "name": ["a", "b", "a", "b"]},
        features=Features({"image": Image(), "name": Value("string")}),
    )
    with pytest.raises(DataError) as info:
        detect_columns(data, cfg("x"))
    assert str(info.value) == (
        "no column of a ClassLabel type found, nor one named label, labels, class; set data.label_column=NAME. "
        "Columns: image (Image), name (Value)"
    )


# --- labels -------------------------------------------------------------------------------------------


def test_string_labels_are_class_encoded(small, tmp_path):
    names = small.features["label"].int2str(list(small["label"]))
    data = Dataset.from_dict(
        {"image": small["image"], "name": names, "idx": list(range(50))},
        features=Features({"image": Image(), "name": Value("string"), "idx": Value("int64")}),
    )
    splits = load_splits(cfg(save_dict(tmp_path / "strings", train=data), label_column="name"), seed=0)
    assert isinstance(splits.train.features["name"], ClassLabel)
    assert splits.eval.features["name"] == splits.train.features["name"]
    assert splits.labels == sorted(set(names))
    for part in (splits.train, splits.eval):
        for ex in part:
            assert splits.labels[ex["name"]] == names[ex["idx"]]


def test_eval_split_with_another_class_order_is_aligned_to_train(small, tmp_path):
    names = small.features["label"].int2str(list(small["label"]))
    reversed_labels = ClassLabel(names=list(reversed(small.features["label"].names)))
    test = Dataset.from_dict(
        {"image": small["image"], "label": [reversed_labels.str2int(n) for n in names], "idx": list(range(50))},
        features=Features({"image": Image(), "label": reversed_labels, "idx": Value("int64")}),
    )
    assert test[0]["label"] == 4 and names[0] == "digit_0"  # the raw ids disagree with train's
    path = save_dict(tmp_path / "reordered", train=small, test=test)
    splits = load_splits(cfg(path, eval_split="test"), seed=0)
    assert splits.eval.features["label"] == splits.train.features["label"]
    assert splits.labels == [f"digit_{c}" for c in range(5)]
    assert splits.eval[0]["label"] == 0  # digit_0 keeps its name under train's ids
    assert splits.labels[splits.eval[17]["label"]] == names[17] == "digit_1"
    for ex in splits.eval:
        assert splits.labels[ex["label"]] == names[ex["idx"]]


def test_string_labelled_validation_split_is_cast_to_train_ids(small, tmp_path):
    names = small.features["label"].int2str(list(small["label"]))
    validation = Dataset.from_dict(
        {"image": small["image"], "label": names}, features=Features({"image": Image(), "label": Value("string")})
    )
    splits = load_splits(cfg(save_dict(tmp_path / "strval", train=small, validation=validation)), seed=0)
    assert splits.eval.features["label"] == splits.train.features["label"]
    assert [splits.labels[label] for label in splits.eval["label"]] == names


# --- the seeded validation split ----------------------------------------------------------------------


def test_validation_split_is_made_when_absent_and_is_seeded(indexed_dir):
    first = load_splits(cfg(indexed_dir), seed=0)
    again = load_splits(cfg(indexed_dir), seed=0)
    other = load_splits(cfg(indexed_dir), seed=1)
    assert first.eval_split == "train[10% held out, seed 0]"
    assert other.eval_split == "train[10% held out, seed 1]"
    assert (len(first.train), len(first.eval)) == (180, 20)
    # Same seed: the same examples in the same order, down to the pixels.
    assert list(first.eval["idx"]) == list(again.eval["idx"]) and list(first.train["idx"]) == list(again.train["idx"])
    assert [pixels(ex["image"]) for ex in first.eval] == [pixels(ex["image"]) for ex in again.eval]
    # Another seed: another split.
    assert set(first.eval["idx"]) != set(other.eval["idx"])
    # A partition of train.
    for splits in (first, other):
        assert set(splits.train["idx"]).isdisjoint(list(splits.eval["idx"]))
        assert sorted(list(splits.train["idx"]) + list(splits.eval["idx"])) == list(range(200))


@pytest.mark.parametrize("fraction, n_eval", [(0.1, 20), (0.25, 50), (0.5, 100)])
def test_validation_size_follows_val_fraction_and_is_stratified(indexed_dir, fraction, n_eval):
    splits = load_splits(cfg(indexed_dir, val_fraction=fraction), seed=3)
    assert (len(splits.train), len(splits.eval)) == (200 - n_eval, n_eval)
    # Stratified: each of the 5 balanced classes gets exactly its share.
    assert Counter(splits.eval["label"]) == {c: n_eval // 5 for c in range(5)}
    assert Counter(splits.train["label"]) == {c: 40 - n_eval // 5 for c in range(5)}


def test_existing_validation_split_is_used(small, tmp_path):
    path = save_dict(
        tmp_path / "withval", train=small.select(range(0, 50, 2)), validation=small.select(range(1, 50, 2))
    )
    splits = load_splits(cfg(path, val_fraction=0.5), seed=0)
    assert splits.eval_split == "validation"
    assert (len(splits.train), len(splits.eval)) == (25, 25)
    assert examples(splits.eval) == examples(small.select(range(1, 50, 2)))
    assert examples(splits.train) == examples(small.select(range(0, 50, 2)))


def test_eval_split_names_the_split_to_use(small, tmp_path):
    path = save_dict(
        tmp_path / "three",
        train=small.select(range(0, 30)),
        validation=small.select(range(30, 40)),
        test=small.select(range(40, 50)),
    )
    splits = load_splits(cfg(path, eval_split="test"), seed=0)
    assert splits.eval_split == "test"
    assert examples(splits.eval) == examples(small.select(range(40, 50)))
    assert len(splits.train) == 30


@pytest.mark.parametrize("key", ["eval_split", "train_split"])
def test_unknown_split_lists_the_splits(small, tmp_path, key):
    path = save_dict(tmp_path / "tt", train=small.select(range(25)), test=small.select(range(25, 50)))
    with pytest.raises(DataError) as info:
        load_splits(cfg(path, **{key: "dev"}), seed=0)
    assert str(info.value) == f"data.{key}='dev' is not a split of this dataset. Splits: train, test"


# --- sizes and bad datasets ---------------------------------------------------------------------------


def test_max_samples_cut_the_sizes(indexed_dir):
    splits = load_splits(cfg(indexed_dir, max_train_samples=7, max_eval_samples=3), seed=0)
    assert (len(splits.train), len(splits.eval)) == (7, 3)
    full = load_splits(cfg(indexed_dir), seed=0)
    assert set(splits.train["idx"]) <= set(full.train["idx"])
    assert set(splits.eval["idx"]) <= set(full.eval["idx"])
    again = load_splits(cfg(indexed_dir, max_train_samples=7), seed=0)
    assert list(again.train["idx"]) == list(splits.train["idx"])
    # More than there are keeps them all.
    bigger = load_splits(cfg(indexed_dir, max_train_samples=10_000, max_eval_samples=10_000), seed=0)
    assert (len(bigger.train), len(bigger.eval)) == (180, 20)


def test_fewer_than_two_classes(tmp_path):
    path = save_dict(tmp_path / "one", train=digits(classes=(3,), per_class=10))
    with pytest.raises(DataError) as info:
        load_splits(cfg(path), seed=0)
    assert str(info.value) == "column 'label' has 1 class(es): ['digit_3']; classification needs at least 2."


def test_empty_validation_split(small, tmp_path):
    empty = Dataset.from_dict({"image": [], "label": []}, features=small.features)
    path = save_parquet(tmp_path / "emptyval", train=small, validation=empty)
    with pytest.raises(DataError) as info:
        load_splits(cfg(path), seed=0)
    assert str(path) in str(info.value)


def test_train_split_too_small_to_hold_out_a_validation_split(small, tmp_path):
    path = save_dict(tmp_path / "single", train=small.select([0]))
    with pytest.raises(DataError) as info:
        load_splits(cfg(path), seed=0)
    assert "train" in str(info.value)


@pytest.mark.parametrize("dataset", ["./nope/x", "../nope", "/nonexistent/hf_tl/data"])
def test_missing_dataset_path(dataset):
    with pytest.raises(DataError) as info:
        open_dataset(cfg(dataset))
    assert str(info.value) == f"dataset path '{dataset}' does not exist. Give an existing directory or a Hub id."


def test_existing_directory_without_data(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as info:
        open_dataset(cfg(tmp_path / "empty"))
    assert str(tmp_path / "empty") in str(info.value)


# --- transforms ---------------------------------------------------------------------------------------

PROCESSORS = {
    "vit": ViTImageProcessor(size={"height": 16, "width": 16}),
    "imagenet": ViTImageProcessor(size={"height": 16, "width": 16}, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD),
}


def rgb_digit(image) -> PILImage.Image:
    """A colour image from a grayscale digit: each channel different, and not left-right symmetric."""
    g = np.asarray(image)
    return PILImage.fromarray(np.stack([g, 255 - g, np.roll(g, 2, axis=1)], axis=-1), "RGB")


def apply(transform, image):
    out = transform({"image": [image], "label": [3]})
    assert out["labels"] == [3]
    return out["pixel_values"][0]


@pytest.mark.parametrize("name", PROCESSORS)
@pytest.mark.parametrize("mode", ["L", "RGBA", "RGB"])
@pytest.mark.parametrize("train", [True, False])
def test_transform_output_shape_and_dtype(small, name, mode, train):
    image = rgb_digit(small[0]["image"]).convert(mode) if mode != "L" else small[0]["image"]
    assert image.mode == mode
    out = apply(make_transform(PROCESSORS[name], cfg("x"), train, "image", "label"), image)
    assert out.shape == (3, 16, 16)
    assert out.dtype == torch.float32


def test_grayscale_becomes_three_equal_channels(small):
    out = apply(make_transform(PROCESSORS["vit"], cfg("x"), False, "image", "label"), small[0]["image"])
    assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])
    assert out.min() >= -1.0 and out.max() <= 1.0 and out.min() < 0 < out.max()


def test_rgba_is_read_as_image_processors_read_it(small):
    """Composited onto white, as transformers' processors do (so the saved processor agrees with training)."""
    rgb = rgb_digit(small[1]["image"])
    rgba = rgb.copy()
    rgba.putalpha(128)
    on_white = PILImage.alpha_composite(PILImage.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    transform = make_transform(PROCESSORS["imagenet"], cfg("x"), False, "image", "label")
    assert torch.equal(apply(transform, rgba), apply(transform, on_white))
    opaque = rgb.copy()
    opaque.putalpha(255)
    assert torch.equal(apply(transform, opaque), apply(transform, rgb))


@pytest.mark.parametrize("name", PROCESSORS)
def test_normalisation_uses_the_processors_mean_and_std(name):
    processor = PROCESSORS[name]
    white = PILImage.new("RGB", (8, 8), (255, 255, 255))
    out = apply(make_transform(processor, cfg("x"), False, "image", "label"), white)
    for c in range(3):
        expected = (1.0 - processor.image_mean[c]) / processor.image_std[c]
        assert torch.allclose(out[c], torch.full((16, 16), expected), atol=1e-6)


# Measured: with interpolation=bilinear the eval transform and transformers' (torchvision-backed) image
# processor agree to within 5e-7 (float rounding) for 8x8 -> 16x16, 64x64 -> 16x16 and 40x24 -> 16x16.
MATCH_TOLERANCE = 1e-5


@pytest.mark.parametrize("name", PROCESSORS)
def test_eval_transform_matches_the_image_processor(small, name):
    processor = PROCESSORS[name]
    transform = make_transform(processor, cfg("x", interpolation="bilinear"), False, "image", "label")
    rng = np.random.default_rng(0)
    images = [rgb_digit(small[i]["image"]) for i in range(0, 50, 7)]  # 8x8, upsampled
    images += [
        PILImage.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), "RGB") for shape in [(64, 64, 3), (40, 24, 3)]
    ]
    for image in images:
        ours = apply(transform, image)
        theirs = processor(images=image, return_tensors="pt").pixel_values[0]
        assert theirs.shape == ours.shape == (3, 16, 16)
        assert (ours - theirs).abs().max().item() < MATCH_TOLERANCE


def test_other_interpolations_change_the_result(small):
    image = rgb_digit(small[0]["image"])
    outs = {
        mode: apply(make_transform(PROCESSORS["vit"], cfg("x", interpolation=mode), False, "image", "label"), image)
        for mode in ("bilinear", "bicubic", "nearest")
    }
    assert not torch.allclose(outs["bilinear"], outs["bicubic"], atol=1e-3)
    assert not torch.allclose(outs["bilinear"], outs["nearest"], atol=1e-3)
    # nearest upsampling by 2 repeats each source pixel in a 2x2 block
    assert torch.equal(outs["nearest"][:, ::2, ::2], outs["nearest"][:, 1::2, 1::2])


def count_flips(small, hflip: bool, runs: int = 200) -> int:
    image = rgb_digit(small[4]["image"])
    base = apply(make_transform(PROCESSORS["vit"], cfg("x"), False, "image", "label"), image)
    flipped = base.flip(-1)
    assert not torch.allclose(base, flipped)
    transform = make_transform(PROCESSORS["vit"], cfg("x", augment="flip" if hflip else "none"), True, "image", "label")
    n = 0
    for _ in range(runs):
        out = apply(transform, image)
        if torch.allclose(out, flipped, atol=1e-6):
            n += 1
        else:
            assert torch.allclose(out, base, atol=1e-6), "the train transform must only flip"
    return n


def test_train_transform_flips_about_half_the_time(small):
    torch.manual_seed(0)
    flips = count_flips(small, hflip=True)
    assert 70 <= flips <= 130, flips  # Binomial(200, 0.5): mean 100, sd ~7
    torch.manual_seed(0)
    assert count_flips(small, hflip=True) == flips  # seeded


def test_train_transform_never_flips_without_hflip(small):
    torch.manual_seed(0)
    assert count_flips(small, hflip=False) == 0


def test_eval_transform_never_flips(small):
    image = rgb_digit(small[4]["image"])
    transform = make_transform(PROCESSORS["vit"], cfg("x", augment="flip"), False, "image", "label")
    base = apply(transform, image)
    torch.manual_seed(0)
    assert all(torch.equal(apply(transform, image), base) for _ in range(50))


def test_input_size_reads_the_processor():
    assert input_size(ViTImageProcessor(size={"height": 16, "width": 24})) == (16, 24)
    assert input_size(ConvNextImageProcessor(size={"shortest_edge": 384})) == (384, 384)
    # do_center_crop: the crop is what the model sees.
    assert input_size(DeiTImageProcessor()) == (224, 224)
    assert input_size(DeiTImageProcessor(do_center_crop=False)) == (256, 256)
    clip = CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 48, "width": 40})
    assert input_size(clip) == (48, 40)
    # Plain dict sizes, as older processors keep them.
    assert input_size(SimpleNamespace(size={"height": 32, "width": 48})) == (32, 48)
    assert input_size(SimpleNamespace(size={"shortest_edge": 96})) == (96, 96)
    assert input_size(
        SimpleNamespace(do_center_crop=True, size={"shortest_edge": 96}, crop_size={"height": 80, "width": 80})
    ) == (80, 80)
    with pytest.raises(DataError, match="cannot tell the input size"):
        input_size(SimpleNamespace(size={"max_pixels": 1000}))


def test_transform_resizes_to_the_crop_size(small):
    transform = make_transform(DeiTImageProcessor(), cfg("x"), False, "image", "label")
    assert apply(transform, small[0]["image"]).shape == (3, 224, 224)


# --- collate ------------------------------------------------------------------------------------------


def test_collate_stacks_a_batch(small):
    data = small.with_transform(make_transform(PROCESSORS["vit"], cfg("x"), True, "image", "label"))
    batch = collate([data[i] for i in (0, 11, 22, 33)])
    assert set(batch) == {"pixel_values", "labels"}
    assert batch["pixel_values"].shape == (4, 3, 16, 16)
    assert batch["pixel_values"].dtype == torch.float32
    assert batch["labels"].shape == (4,)
    assert batch["labels"].dtype == torch.int64
    assert batch["labels"].tolist() == [small[i]["label"] for i in (0, 11, 22, 33)] == [0, 1, 2, 3]


def test_recipe_normalisation_overrides_the_processors():
    white = PILImage.new("RGB", (4, 4), (255, 255, 255))
    half = dict(image_mean=[0.5] * 3, image_std=[0.5] * 3)
    transform = make_transform(PROCESSORS["imagenet"], cfg("x", **half), False, "image", "label")
    out = apply(transform, white)
    assert torch.allclose(out, torch.ones_like(out))  # (1 - 0.5) / 0.5
