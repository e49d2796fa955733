"""`python -m hf_tl.eval`: label mapping, every kind of checkpoint, eval.json and the confusion matrix."""

from __future__ import annotations

import json
import shlex
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from conftest import TINY_VIT, collate, digits, exit_status_of, make_transform, run_cli
from datasets import ClassLabel, DatasetDict, Features, Value, load_from_disk
from PIL import Image

from hf_tl.cli.eval import main as evaluation_main
from hf_tl.cli.eval import parse_args
from hf_tl.config.recipe import DataSection, load_recipe
from hf_tl.errors import DataError, HfTlError, RecipeError
from hf_tl.hub.plots import CONFUSION_FILE, confusion_matrix
from hf_tl.inference.evaluate import EVAL_FILE, evaluate
from hf_tl.training.run import run

NAMES = [f"digit_{i}" for i in range(5)]
EVAL_KEYS = {
    "model",
    "revision",
    "dataset",
    "config_name",
    "split",
    "num_examples",
    "skipped_images",
    "labels",
    "label_mapping",
    "metrics",
    "confusion_matrix",
    "throughput",
    "card",
    "versions",
}


def save_named_vit(path, id2label: dict[int, str]):
    """A checkpoint hf_tl did not make: transformers' own ViT, saved directly, random (so varied) predictions."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    config = ViTConfig(
        **TINY_VIT, num_labels=len(id2label), id2label=id2label, label2id={v: k for k, v in id2label.items()}
    )
    ViTForImageClassification(config).save_pretrained(path)
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def named_vit(tmp_path_factory):
    return save_named_vit(tmp_path_factory.mktemp("named-vit") / "vit", dict(enumerate(NAMES)))


def relabelled(source, dest, names: list[str], order: list[int] | None = None):
    """The test split with its ClassLabel renamed to `names`, and its classes renumbered into `order` if given."""
    test = load_from_disk(str(source))["test"]
    order = order or list(range(len(names)))  # order[i]: the new id of old class i
    features = test.features.copy()
    features["label"] = ClassLabel(names=[names[order.index(j)] for j in range(len(names))])
    test = test.map(lambda b: {"label": [order[v] for v in b["label"]]}, batched=True, features=features)
    DatasetDict({"test": test}).save_to_disk(str(dest))
    return dest


def args_for(model, dataset, output, *extra):
    return parse_args([f"model={model}", f"dataset={dataset}", "split=test", f"output={output}", *extra])


def plain_accuracy(model_dir, dataset_dir) -> float:
    """Accuracy as a transformers user computes it, labels matched by name through config.label2id."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(model_dir).eval()
    processor = AutoImageProcessor.from_pretrained(model_dir)
    test = load_from_disk(str(dataset_dir))["test"]
    names = test.features["label"].names
    transform = make_transform(processor, DataSection(dataset=str(dataset_dir)), False, "image", "label")
    batch = collate([test.with_transform(transform)[i] for i in range(len(test))])
    with torch.no_grad():
        predicted = model(pixel_values=batch["pixel_values"]).logits.argmax(-1)
    truth = torch.tensor([model.config.label2id[names[i]] for i in batch["labels"]])
    return (predicted == truth).sum().item() / len(truth)


def test_labels_map_by_name_whatever_their_order(named_vit, digits_splits_dir, tmp_path):
    shuffled = relabelled(digits_splits_dir, tmp_path / "shuffled", NAMES, order=[3, 0, 4, 1, 2])
    assert load_from_disk(str(shuffled))["test"].features["label"].names != NAMES
    ordered = evaluate(args_for(named_vit, digits_splits_dir, tmp_path / "a"))
    reordered = evaluate(args_for(named_vit, shuffled, tmp_path / "b"))
    assert ordered["metrics"] == reordered["metrics"]
    assert reordered["label_mapping"] == {name: name for name in NAMES}
    assert ordered["metrics"]["accuracy"] == pytest.approx(plain_accuracy(named_vit, digits_splits_dir), abs=1e-9)
    assert 0 < ordered["metrics"]["accuracy"] < 1  # a random head: a real mix of right and wrong
    assert set(ordered) == EVAL_KEYS
    assert ordered["num_examples"] == 100 and sum(map(sum, ordered["confusion_matrix"])) == 100
    assert set(ordered["metrics"]["per_class_accuracy"]) == set(NAMES)
    saved = json.loads((tmp_path / "a" / EVAL_FILE).read_text())
    assert saved["metrics"] == ordered["metrics"]
    assert Image.open(tmp_path / "a" / CONFUSION_FILE).format == "PNG"


def test_labels_missing_on_either_side_are_an_error_listing_them(named_vit, digits_splits_dir, tmp_path):
    other = relabelled(digits_splits_dir, tmp_path / "other", [*NAMES[:4], "seven"])
    with pytest.raises(DataError) as error:
        evaluate(args_for(named_vit, other, tmp_path / "out"))
    message = str(error.value)
    assert "in the dataset, not the model: ['seven']" in message
    assert "in the model, not the dataset: ['digit_4']" in message
    assert "labels=by_index" in message
    assert not (tmp_path / "out").exists()


def test_by_index_maps_by_position(named_vit, digits_splits_dir, tmp_path):
    generic = save_named_vit(tmp_path / "generic", {i: f"LABEL_{i}" for i in range(5)})  # same weights, no names
    with pytest.raises(DataError, match="labels=by_index"):
        evaluate(args_for(generic, digits_splits_dir, tmp_path / "x"))
    by_index = evaluate(args_for(generic, digits_splits_dir, tmp_path / "by-index", "labels=by_index"))
    by_name = evaluate(args_for(named_vit, digits_splits_dir, tmp_path / "by-name"))
    assert by_index["label_mapping"] == {name: f"LABEL_{i}" for i, name in enumerate(NAMES)}
    assert by_index["metrics"]["accuracy"] == by_name["metrics"]["accuracy"]
    assert list(by_index["metrics"]["per_class_accuracy"].values()) == list(
        by_name["metrics"]["per_class_accuracy"].values()
    )
    three_classes = save_named_vit(tmp_path / "three", dict(enumerate("abc")))
    with pytest.raises(DataError, match="the dataset has 5, the model 3"):
        evaluate(args_for(three_classes, digits_splits_dir, tmp_path / "y", "labels=by_index"))


def test_string_label_columns_map_by_name(named_vit, digits_splits_dir, tmp_path):
    test = load_from_disk(str(digits_splits_dir))["test"]
    names = test.features["label"].names
    strings = test.map(
        lambda b: {"name": [names[v] for v in b["label"]]},
        batched=True,
        remove_columns=["label"],
        features=Features({"image": test.features["image"], "name": Value("string")}),
    )
    DatasetDict({"test": strings}).save_to_disk(str(tmp_path / "strings"))
    result = evaluate(args_for(named_vit, tmp_path / "strings", tmp_path / "out", "label_column=name"))
    expected = evaluate(args_for(named_vit, digits_splits_dir, tmp_path / "expected"))
    assert result["metrics"] == expected["metrics"]


CHECKPOINTS = {
    "lora-merged": ("vit", ["strategy.kind=lora"]),
    "mlp-head": ("vit", ["strategy.kind=last_block", "model.head=mlp"]),
    "timm-densenet": ("densenet", ["strategy.kind=last_block"]),
    "timm-cait-mlp": ("cait", ["strategy.kind=last_block", "model.head=mlp"]),
}


@pytest.mark.parametrize("kind", sorted(CHECKPOINTS))
def test_eval_reproduces_the_runs_own_metrics(kind, tiny_vit, tiny_family, digits_splits_dir, tmp_path, capsys):
    family, overrides = CHECKPOINTS[kind]
    recipe = load_recipe(
        "quickstart",
        [
            f"model.name={tiny_vit if family == 'vit' else tiny_family(family)}",
            f"data.dataset={digits_splits_dir}",
            "data.eval_split=test",
            "training.epochs=1",
            "training.batch_size=16",
            f"output.dir={tmp_path / 'run'}",
            *overrides,
        ],
    )
    run_dir = run(recipe)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    mlp = "model.head=mlp" in overrides
    if mlp:
        with pytest.raises(HfTlError, match="ships its own model code.*trust_remote_code=true"):
            evaluate(args_for(run_dir, digits_splits_dir, tmp_path / "refused"))
        assert not (tmp_path / "refused").exists()
    capsys.readouterr()
    trust = [f"trust_remote_code={str(mlp).lower()}"]
    result = evaluate(args_for(run_dir, digits_splits_dir, tmp_path / "eval", *trust))  # the run folder: its model/
    assert result["model"] == str(run_dir / "model")
    assert result["label_mapping"] == {name: name for name in NAMES}  # the checkpoint kept the dataset's names
    for key in ("accuracy", "macro_f1", "per_class_accuracy", "num_examples"):
        assert result["metrics"][key] == pytest.approx(metrics["eval"][key], abs=1e-9), key
    compared = result["card"]["compared"]  # the run folder's card, one level above model/
    assert compared["accuracy"]["difference"] == pytest.approx(0.0, abs=1e-9)
    err = capsys.readouterr().err
    assert ("warning: trust_remote_code=true runs the Python code shipped with" in err) == mlp
    card = (run_dir / "README.md").read_text()
    assert ('from_pretrained("path/to/this/repository", trust_remote_code=True)' in card) == mlp


def test_the_command_line(named_vit, digits_splits_dir, tmp_path):
    result = run_cli(
        sys.executable,
        "-m",
        "hf_tl.eval",
        f"model={named_vit}",
        f"dataset={digits_splits_dir}",
        "split=test",
        "batch_size=32",
        cwd=tmp_path,
        HF_TL_PROGRESS="1",  # bars even into a pipe (hf_tl.progress)
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (output,) = (tmp_path / "evals").iterdir()  # the default output folder
    report = json.loads((output / EVAL_FILE).read_text())
    assert set(report) == EVAL_KEYS and report["card"] is None  # no card beside this checkpoint
    assert report["throughput"]["batch_size"] == 32 and report["throughput"]["images_per_second"] > 0
    assert f"{report['throughput']['images_per_second']} images/s on cpu" in result.stdout
    assert f"accuracy         {report['metrics']['accuracy']:.4f}" in result.stdout
    assert "evaluating: 100%" in result.stderr and "100/100" in result.stderr  # the progress bar
    assert Image.open(output / CONFUSION_FILE).format == "PNG"

    bad = run_cli(sys.executable, "-m", "hf_tl.eval", f"model={named_vit}", "dataset=d", "labels=by_nmae", cwd=tmp_path)
    assert bad.returncode == 2
    assert "error: key 'labels' got 'by_nmae', which is not one of: by_name, by_index." in bad.stderr
    assert "Did you mean 'by_name'?" in bad.stderr and "Traceback" not in bad.stderr


def test_arguments_are_checked_with_clear_errors():
    with pytest.raises(RecipeError, match="unknown key 'splt'. Did you mean 'split'"):
        parse_args(["model=m", "dataset=d", "splt=test"])
    with pytest.raises(RecipeError, match="'model=' is required"):
        parse_args(["dataset=d"])
    with pytest.raises(RecipeError, match="not of the form key=value"):
        parse_args(["model"])
    with pytest.raises(RecipeError, match="key 'batch_size' got 'many', which is not a valid int"):
        parse_args(["model=m", "dataset=d", "batch_size=many"])
    with pytest.raises(RecipeError, match="key 'batch_size' got 0; it must be at least 1"):
        parse_args(["model=m", "dataset=d", "batch_size=0"])
    args = parse_args(["model=m", "dataset=d", "labels=by_index", "trust_remote_code=true"])
    assert (args.split, args.labels, args.trust_remote_code, args.batch_size) == ("test", "by_index", True, 64)


def test_bad_model_or_split_is_a_clear_error(named_vit, digits_splits_dir, tmp_path):
    with pytest.raises(DataError, match="split='validation' is not a split of .* Splits: train, test"):
        evaluate(parse_args([f"model={named_vit}", f"dataset={digits_splits_dir}", "split=validation"]))
    with pytest.raises(HfTlError, match="could not load model"):
        evaluate(args_for(tmp_path, digits_splits_dir, tmp_path / "out"))


def test_confusion_matrix_draws_any_label(tmp_path):
    counts = torch.randint(0, 9, (4, 4)).numpy()
    path = confusion_matrix(counts, ["$x^2$", "a|b", "<b>", "unclosed $"], tmp_path / "cm.png", title="on $data")
    assert Image.open(path).format == "PNG"


SIZES = ["small", "large"]
CONFIGS_CARD = """---
configs:
- config_name: few
  data_files:
  - {split: train, path: few/train.parquet}
  - {split: test, path: few/test.parquet}
- config_name: all
  data_files:
  - {split: train, path: all/train.parquet}
  - {split: test, path: all/test.parquet}
---
"""
SPARSEML_RECIPE = """version: 1.1.0

training_modifiers:
  - !EpochRangeModifier
    start_epoch: 0.0
    end_epoch: 10.0
"""


def two_label_digits(folder: Path) -> Path:
    """Digits with two ClassLabel columns, `label` (digit_0..4) first and `size` (small: 0-1, large: 2-4) second,
    in two configs of a parquet folder: `all`, and `few` (5 images a class); train and test of other images."""
    every = digits(per_class=30)
    every = every.map(lambda b: {"size": [int(v >= 2) for v in b["label"]]}, batched=True)
    every = every.cast_column("size", ClassLabel(names=SIZES))
    labels = every["label"]
    rank = [i - labels.index(label) for i, label in enumerate(labels)]  # the image's place within its class
    for config, per_class in (("few", 5), ("all", 15)):
        (folder / config).mkdir(parents=True)
        for split, first in (("train", 0), ("test", 15)):
            rows = [i for i, r in enumerate(rank) if first <= r < first + per_class]
            every.select(rows).to_parquet(str(folder / config / f"{split}.parquet"))
    (folder / "README.md").write_text(CONFIGS_CARD)
    return folder


@pytest.fixture(scope="module")
def size_run(tiny_vit, tmp_path_factory):
    """A run on the config `all` of two_label_digits, trained on its second ClassLabel column, `size`."""
    data = two_label_digits(tmp_path_factory.mktemp("two-labels") / "two-labels")
    overrides = ["data.config_name=all", "data.label_column=size", "data.eval_split=test", "training.epochs=1"]
    run_dir = tmp_path_factory.mktemp("size-run") / "run"
    recipe = load_recipe(
        "quickstart",
        [f"model.name={tiny_vit}", f"data.dataset={data}", *overrides, f"output.dir={run_dir}"],
    )
    run(recipe)
    return SimpleNamespace(run_dir=run_dir, data=data, metrics=json.loads((run_dir / "metrics.json").read_text()))


def reproduces(result: dict, metrics: dict) -> None:
    assert result["num_examples"] == metrics["num_eval_examples"] == 5 * 15  # the config `all`, not `few`
    assert result["label_mapping"] == {name: name for name in SIZES}
    assert result["metrics"]["accuracy"] == pytest.approx(metrics["eval"]["accuracy"], abs=1e-9)
    assert result["metrics"]["macro_f1"] == pytest.approx(metrics["eval"]["macro_f1"], abs=1e-9)


def test_eval_reads_the_runs_dataset_with_its_config_and_columns(size_run, tmp_path):
    """No dataset= given, or the run's own named (as the card's command does): the run's config and label
    column come with it, and the run's validation metrics are reproduced."""
    defaulted = evaluate(parse_args([f"model={size_run.run_dir}", f"output={tmp_path / 'a'}"]))
    assert (defaulted["dataset"], defaulted["config_name"]) == (str(size_run.data), "all")
    reproduces(defaulted, size_run.metrics)
    reproduces(evaluate(args_for(size_run.run_dir, size_run.data, tmp_path / "b")), size_run.metrics)
    with pytest.raises(DataError, match="the dataset's labels and the model's id2label differ"):  # given: it wins
        evaluate(parse_args([f"model={size_run.run_dir}", "label_column=label", f"output={tmp_path / 'c'}"]))


def test_a_relative_dataset_path_of_the_run_is_looked_for_here(size_run, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    shutil.copytree(size_run.run_dir, run_dir)
    recipe = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    recipe["data"]["dataset"] = "./two-labels"  # as a run started in the dataset's parent folder records it
    (run_dir / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    with pytest.raises(DataError) as error:
        evaluate(parse_args([f"model={run_dir}", f"output={tmp_path / 'a'}"]))
    assert str(error.value) == (
        f"the run's dataset './two-labels' (data.dataset in {run_dir / 'recipe.yaml'}) does not exist here "
        f"(looked for {tmp_path / 'elsewhere' / 'two-labels'}); pass dataset= with where that dataset is now."
    )
    monkeypatch.chdir(size_run.data.parent)
    reproduces(evaluate(parse_args([f"model={run_dir}", f"output={tmp_path / 'b'}"])), size_run.metrics)


def test_a_recipe_yaml_hf_tl_cannot_read_stops_only_what_needs_it(size_run, tmp_path, capsys):
    """Another framework's recipe.yaml (SparseML's) beside the checkpoint: eval with dataset= does not read it; the
    default dataset and a held-out validation split need it, and say on one line which file and what to pass."""
    run_dir = tmp_path / "run"
    shutil.copytree(size_run.run_dir, run_dir)
    (run_dir / "recipe.yaml").write_text(SPARSEML_RECIPE)
    given = [f"model={run_dir}", f"dataset={size_run.data}", "config_name=all", "label_column=size"]
    code, err = exit_status_of(evaluation_main, [*given, "split=test", f"output={tmp_path / 'a'}"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "a" / EVAL_FILE).read_text())["metrics"]["accuracy"] == pytest.approx(
        size_run.metrics["eval"]["accuracy"], abs=1e-9
    )
    unreadable = f"error: {run_dir / 'recipe.yaml'} is not a recipe this hf_tl can read (recipe '"
    code, err = exit_status_of(evaluation_main, [f"model={run_dir}", f"output={tmp_path / 'b'}"], capsys)
    (line,) = err.splitlines()
    assert code == 1 and line.startswith(unreadable), err
    assert line.endswith(
        "and finding the dataset it was trained on needs it; "
        "pass dataset= (and config_name=, image_column=, label_column= as the run had them)."
    )
    code, err = exit_status_of(evaluation_main, [*given, "split=validation", f"output={tmp_path / 'c'}"], capsys)
    (line,) = err.splitlines()
    assert code == 1 and line.startswith(unreadable), err
    assert line.endswith(
        "and carving the run's held-out split=validation again needs it; "
        f"pass split= one of the splits of '{size_run.data}': train, test."
    )


SLICE = "test[10:70]"  # a slice of datasets' own syntax, as data.eval_split=validation[:500] is


@pytest.fixture(scope="module")
def sliced_run(tiny_vit, digits_splits_dir, tmp_path_factory):
    """A two-step run validated on a slice of the test split: metrics.json and the card record the slice."""
    run_dir = tmp_path_factory.mktemp("sliced-run") / "run"
    overrides = [f"data.dataset={digits_splits_dir}", f"data.eval_split={SLICE}", "training.max_steps=2"]
    recipe = load_recipe("quickstart", [f"model.name={tiny_vit}", *overrides, f"output.dir={run_dir}"])
    run(recipe)
    return SimpleNamespace(run_dir=run_dir, metrics=json.loads((run_dir / "metrics.json").read_text()))


def test_a_sliced_eval_split_is_evaluated_on_the_rows_the_run_validated_on(sliced_run, digits_splits_dir, tmp_path):
    """The card's own eval command names the slice; eval reads it as training did, and reproduces the run."""
    from hf_tl.hub.download import eval_command

    assert sliced_run.metrics["eval_split"] == SLICE
    words = shlex.split(eval_command(sliced_run.run_dir))[3:]  # after `python -m hf_tl.eval`
    assert f"split={SLICE}" in words
    for result in (
        evaluate(parse_args([*words, f"output={tmp_path / 'card'}"])),
        evaluate(args_for(sliced_run.run_dir, digits_splits_dir, tmp_path / "given", f"split={SLICE}")),
    ):
        assert (result["split"], result["num_examples"]) == (SLICE, sliced_run.metrics["num_eval_examples"])
        assert result["num_examples"] == 60
        assert result["metrics"]["accuracy"] == sliced_run.metrics["eval"]["accuracy"]
        assert result["card"]["compared"]["accuracy"]["difference"] == 0
    with pytest.raises(DataError, match=r"split='test\[10:70\]\+nope' is not a split of this dataset"):
        evaluate(args_for(sliced_run.run_dir, digits_splits_dir, tmp_path / "bad", f"split={SLICE}+nope"))


def pinned(run_dir: Path, dest: Path) -> Path:
    """A copy of the run folder whose recipe says it trained on the Hub dataset alice/digits pinned at v1.0."""
    shutil.copytree(run_dir, dest)
    recipe = yaml.safe_load((dest / "recipe.yaml").read_text())
    recipe["data"].update(dataset="alice/digits", revision="v1.0")
    (dest / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return dest


def test_the_runs_pinned_revision_goes_with_its_own_hub_dataset_only(tmp_path):
    from hf_tl.inference.evaluate import _data_section, runs_revision

    recipe = load_recipe("quickstart", ["data.dataset=alice/digits", "data.revision=v1.0"])
    for dataset, revision in (("alice/digits", "v1.0"), ("bob/digits", None), (str(tmp_path), None)):
        assert runs_revision(recipe, dataset) == revision
        assert _data_section(parse_args(["model=m", f"dataset={dataset}"]), recipe).revision == revision
    assert runs_revision(None, "alice/digits") is None


def test_eval_reads_the_runs_hub_dataset_at_its_pinned_revision(sliced_run, digits_splits_dir, tmp_path, monkeypatch):
    """The run's own Hub dataset (taken by default, or named) is loaded at data.revision; a local copy given
    instead has no revision, and none is passed (open_dataset refuses a revision for a folder)."""
    import hf_tl.data.datasets as datasets_module

    calls = []

    def load_dataset(path, name=None, **kwargs):  # the Hub, recorded, served by a local copy (no network here)
        calls.append({"path": path, "name": name, **kwargs})
        return load_from_disk(str(digits_splits_dir))

    monkeypatch.setattr(datasets_module, "load_dataset", load_dataset)
    run_dir = pinned(sliced_run.run_dir, tmp_path / "run")
    for given in ([], ["dataset=alice/digits"]):
        out = tmp_path / f"eval{len(given)}"
        result = evaluate(parse_args([f"model={run_dir}", *given, f"split={SLICE}", f"output={out}"]))
        assert calls.pop() == {"path": "alice/digits", "name": None, "revision": "v1.0"}
        assert result["metrics"]["accuracy"] == sliced_run.metrics["eval"]["accuracy"]
    copy = evaluate(args_for(run_dir, digits_splits_dir, tmp_path / "copy", f"split={SLICE}"))
    assert calls == [] and copy["metrics"]["accuracy"] == sliced_run.metrics["eval"]["accuracy"]
