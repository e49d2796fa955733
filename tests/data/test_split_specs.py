"""data.train_split / data.eval_split in datasets' own split syntax (train[:10%], validation[:500], train[10:20]),
and data.revision, which pins a Hub dataset and reaches load_dataset."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import digits
from datasets import Dataset, DatasetDict
from datasets import load_dataset as real_load_dataset

import hf_tl.data.datasets as datasets_module
from hf_tl.config.recipe import DataSection, load_recipe
from hf_tl.data.datasets import load_splits, open_dataset
from hf_tl.errors import DataError, RecipeError


def cfg(dataset, **kw) -> DataSection:
    return DataSection(dataset=str(dataset), **kw)


def indexed(n_per_class: int) -> Dataset:
    ds = digits(per_class=n_per_class)
    return ds.add_column("idx", list(range(len(ds))))


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """save_to_disk: train of 100 digits, validation of 50 and test of 50, each with an `idx` column."""
    path = tmp_path_factory.mktemp("specs") / "saved"
    every = indexed(40)  # 200, class after class
    DatasetDict(
        {
            "train": every.select(range(0, 200, 2)),
            "validation": every.select(range(1, 100, 2)),
            "test": every.select(range(101, 200, 2)),
        }
    ).save_to_disk(str(path))
    return path


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("specs-folder") / "imgs"
    ds = digits(per_class=4)
    names = ds.features["label"].names
    for i, example in enumerate(ds):
        folder = path / "train" / names[example["label"]]
        folder.mkdir(parents=True, exist_ok=True)
        example["image"].save(folder / f"{i:04d}.png")
    return path


def idx(ds: Dataset) -> list[int]:
    return list(ds["idx"])


def test_slices_select_the_rows_datasets_would(saved):
    whole = open_dataset(cfg(saved))
    splits = load_splits(cfg(saved, train_split="train[10:20]", eval_split="validation[:50%]"), seed=0)
    assert idx(splits.train) == idx(whole["train"])[10:20]
    assert idx(splits.eval) == idx(whole["validation"])[:25]
    assert splits.eval_split == "validation[:50%]"  # metrics.json and the card name the spec as given
    expected = real_load_dataset(
        "parquet", data_files={"train": str(_parquet(whole["train"], saved.parent))}, split="train[10%:30%]"
    )
    percent = load_splits(cfg(saved, train_split="train[10%:30%]", eval_split="test"), seed=0)
    assert idx(percent.train) == idx(expected)  # datasets' own rounding of percent slices


def _parquet(ds: Dataset, folder: Path) -> Path:
    path = folder / "train.parquet"
    ds.to_parquet(str(path))
    return path


def test_disjoint_slices_of_one_split_train_and_validate(saved):
    splits = load_splits(cfg(saved, train_split="train[:80%]", eval_split="train[80%:]"), seed=0)
    whole = idx(open_dataset(cfg(saved))["train"])
    assert (idx(splits.train), idx(splits.eval)) == (whole[:80], whole[80:])
    assert splits.labels == ["digit_0", "digit_1", "digit_2", "digit_3", "digit_4"]


def test_a_slice_with_no_eval_split_holds_out_part_of_itself(image_folder):
    splits = load_splits(cfg(image_folder, train_split="train[:16]", val_fraction=0.25), seed=0)
    assert (len(splits.train), len(splits.eval)) == (12, 4)
    assert splits.eval_split == "train[:16][25% held out, seed 0]"


def test_slices_joined_with_plus(saved):
    splits = load_splits(cfg(saved, train_split="train[:10]+test[:5]", eval_split="validation"), seed=0)
    whole = open_dataset(cfg(saved))
    assert idx(splits.train) == idx(whole["train"])[:10] + idx(whole["test"])[:5]


def test_an_image_folder_is_sliced_too(image_folder):
    splits = load_splits(cfg(image_folder, train_split="train[:50%]", eval_split="train[50%:]"), seed=0)
    assert (len(splits.train), len(splits.eval)) == (10, 10)


@pytest.mark.parametrize(
    ("train", "eval_split"),
    [
        ("train[:80%]", "train[:80%]"),
        ("train[:80%]", "train[50%:]"),
        ("train[10:20]", "train"),
        ("train", "train[5:6]"),
    ],
)
def test_overlapping_train_and_eval_are_refused(saved, train, eval_split):
    with pytest.raises(DataError, match="validation would see (the )?training images"):
        load_splits(cfg(saved, train_split=train, eval_split=eval_split), seed=0)


def test_training_on_the_validation_split_with_no_eval_split_is_refused(saved):
    """With no data.eval_split, validation is the 'validation' split: training on rows of it is refused too."""
    with pytest.raises(DataError) as info:
        load_splits(cfg(saved, train_split="train+validation[:10]"), seed=0)
    assert str(info.value).startswith(
        "the 'validation' split (the default) and data.train_split='train+validation[:10]' share rows of the split "
        "'validation': validation would see training images."
    )


def test_a_slice_out_of_range_is_a_recipe_mistake_found_before_any_work(saved):
    with pytest.raises(RecipeError) as info:
        load_recipe("quickstart", [f"data.dataset={saved}", "data.train_split=train[:200%]"])
    assert str(info.value).startswith(
        "recipe key 'data.train_split' got 'train[:200%]', which is not a valid slice (Percent slice boundaries"
    )


@pytest.mark.parametrize("key", ["train_split", "eval_split"])
@pytest.mark.parametrize("spec", ["train[:abc]", "train[1:2:3]", "dev[:10]", "train[:200%]"])
def test_a_bad_slice_names_the_key_and_the_forms(saved, key, spec):
    with pytest.raises(DataError) as info:
        load_splits(cfg(saved, **{key: spec}), seed=0)
    message = str(info.value)
    assert message.startswith(f"data.{key}='{spec}' is not a split of this dataset, nor a slice of one (")
    assert "Splits: train, validation, test." in message
    assert "train[:10%], validation[:500], train[10:20]" in message


def test_an_empty_slice_is_refused(saved):
    with pytest.raises(DataError) as info:
        load_splits(cfg(saved, train_split="train[20:10]", eval_split="test"), seed=0)
    assert str(info.value) == (
        f"data.train_split='train[20:10]' selects no examples of '{saved}'. "
        "Splits: train (100 examples), validation (50 examples), test (50 examples)"
    )


# --- data.revision ------------------------------------------------------------------------------------------


@pytest.fixture
def hub_served_from(monkeypatch):
    """load_dataset as hf_tl calls it for a Hub id, recorded, then called for real on a local folder standing in
    for the Hub repository (the tests have no network)."""
    calls = []

    def serve(folder: Path):
        def load_dataset(path, name=None, **kwargs):
            calls.append({"path": path, "name": name, **kwargs})
            return real_load_dataset(str(folder), name)

        monkeypatch.setattr(datasets_module, "load_dataset", load_dataset)
        return calls

    return serve


def test_the_revision_reaches_load_dataset(image_folder, hub_served_from):
    calls = hub_served_from(image_folder)
    splits = load_splits(cfg("alice/digits", revision="0123abc", train_split="train[:75%]"), seed=0)
    assert calls == [{"path": "alice/digits", "name": None, "revision": "0123abc"}]
    assert len(splits.train) + len(splits.eval) == 15  # a slice of a Hub dataset, as of a local one


def test_no_revision_is_none(image_folder, hub_served_from):
    calls = hub_served_from(image_folder)
    open_dataset(cfg("alice/digits"))
    assert calls == [{"path": "alice/digits", "name": None, "revision": None}]


def test_a_local_folder_has_no_revision(image_folder):
    with pytest.raises(RecipeError) as info:
        open_dataset(cfg(image_folder, revision="main"))
    assert str(info.value) == (
        f"data.revision='main' pins a revision of a Hub dataset, but data.dataset='{image_folder}' is a local "
        "folder, which has no revisions: drop data.revision, or name the dataset by its Hub id."
    )
