"""What `hf-tl eval` does: evaluate any checkpoint.

Any `AutoModelForImageClassification` checkpoint: one hf_tl made (linear or MLP head, LoRA
merged), a timm-wrapped one, or one hf_tl never saw. The dataset's label names are mapped
onto the model's `id2label` whatever their order (`labels=by_index` maps by position instead).
Metrics come from the package's offline evaluate module (hf_tl/metrics.py). Writes eval.json
and a confusion-matrix PNG; when the model's own card records results on the same dataset
and split, they are printed beside these, with the difference.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
from datasets import ClassLabel, Dataset, Value
from torch.utils.data import DataLoader

from hf_tl import progress
from hf_tl.config.commands import EvalArgs
from hf_tl.config.recipe import DataSection, ModelSection, Recipe, load_recipe
from hf_tl.data.datasets import VALIDATION, detect_columns, is_held_out, load_splits, open_dataset
from hf_tl.data.image_check import drop_or_refuse_bad_images
from hf_tl.data.preprocess import Preprocess, to_device
from hf_tl.data.processors import preprocess_of
from hf_tl.device import resolve_device
from hf_tl.errors import DataError, RecipeError
from hf_tl.hub.card import CARD_FILE, HUB_METRICS, is_hub_id, load_card, recorded_results
from hf_tl.hub.plots import CONFUSION_FILE, confusion_matrix
from hf_tl.inference.loading import inference_loader, load_for_inference, pick_split
from hf_tl.models.loading import warn_remote_code
from hf_tl.models.source import resolve_model
from hf_tl.runs.environment import library_versions
from hf_tl.runs.folder import MODEL_DIR, RECIPE_FILE, write_json
from hf_tl.runs.paths import check_output_folder, slug
from hf_tl.training.metrics import confusion_counts, full_metrics, named_per_class

EVAL_FILE = "eval.json"
LABEL_MODES = ("by_name", "by_index")


@progress.with_library_bars
def evaluate(args: EvalArgs) -> dict:
    """Evaluate `args.model` on `args.dataset`'s split; write eval.json and the confusion matrix; return eval.json."""
    args.model = resolve_model(args.model)  # a run folder stands for its model/
    if args.trust_remote_code:
        warn_remote_code(args.model)
    recipe = _take_the_runs_dataset(args) if args.dataset is None else _read_as_the_run_did(args)
    device = resolve_device(args.device)  # a device or an output folder that cannot be used: said before any work
    output = check_output_folder(Path(args.output) if args.output else default_output(args), "output")
    dataset, split_name = _load_split(args, recipe)
    image_column, label_column = detect_columns(dataset, _data_section(args))
    dataset, skipped = drop_or_refuse_bad_images(dataset, image_column, args.on_bad_image, split_name)
    model, processor = _load_model(args, device)
    model_labels = [str(model.config.id2label[i]) for i in range(model.config.num_labels)]
    dataset_labels, name_of = _dataset_labels(dataset, label_column)
    to_model = map_labels(dataset_labels, model_labels, args.labels)
    index = {name: to_model[i] for i, name in enumerate(dataset_labels)}
    loader = inference_loader(  # uint8 at native size, resized on the device
        dataset, image_column, args.batch_size, args.num_workers, label_column, lambda v: index[name_of(v)]
    )
    preprocess = preprocess_of(processor, args.interpolation)  # what pipeline() does with this checkpoint
    logits, references, seconds = _predict(model, loader, preprocess, device)
    metrics = named_per_class(full_metrics(logits, references), model_labels)
    counts = confusion_counts(references, logits.argmax(axis=1), len(model_labels))
    where = f"{args.dataset}{f' ({args.config_name})' if args.config_name else ''} / {split_name}"
    confusion_matrix(counts, model_labels, output / CONFUSION_FILE, title=f"{args.model} on {where}")
    result = {
        "model": args.model,
        "revision": args.revision,
        "dataset": args.dataset,
        "config_name": args.config_name,
        "split": split_name,
        "num_examples": len(references),
        "skipped_images": skipped,
        "labels": args.labels,
        "label_mapping": {name: model_labels[index[name]] for name in dataset_labels},
        "metrics": metrics,
        "confusion_matrix": counts.tolist(),
        "throughput": {
            "images_per_second": round(len(references) / seconds, 2) if seconds > 0 else None,
            "seconds": round(seconds, 3),
            "batch_size": args.batch_size,
            "device": str(device),
        },
        "card": compare_with_card(args, metrics, split_name),
        "versions": library_versions(),
    }
    write_json(output / EVAL_FILE, result)
    _report(result, output)
    return result


def map_labels(dataset_labels: list[str], model_labels: list[str], how: str) -> list[int]:
    """For each dataset class, the model's class id: by name (any order), or by position."""
    if how == "by_index":
        if len(dataset_labels) != len(model_labels):
            raise DataError(
                f"labels=by_index needs as many classes on both sides: the dataset has {len(dataset_labels)}, "
                f"the model {len(model_labels)}."
            )
        return list(range(len(dataset_labels)))
    duplicated = sorted({name for name in model_labels if model_labels.count(name) > 1})
    if duplicated:
        raise DataError(f"the model's id2label repeats {duplicated[:10]}; map by position with labels=by_index.")
    position = {name: i for i, name in enumerate(model_labels)}
    only_data = [name for name in dataset_labels if name not in position]
    only_model = [name for name in model_labels if name not in set(dataset_labels)]
    if only_data or only_model:
        raise DataError(
            "the dataset's labels and the model's id2label differ:\n"
            f"  in the dataset, not the model: {_some(only_data)}\n"
            f"  in the model, not the dataset: {_some(only_model)}\n"
            "  If they are the same classes under other names, in the same order, pass labels=by_index."
        )
    return [position[name] for name in dataset_labels]


def compare_with_card(args: EvalArgs, metrics: dict, split_name: str | None = None) -> dict | None:
    """The results the model's card records on this dataset and split, beside this evaluation's."""
    split_name = split_name or args.split
    card = _model_card(args)
    if card is None:
        return None
    recorded = recorded_results(card)
    same = [
        r
        for r in recorded
        if _same_dataset(r["dataset"], args.dataset, local=r.get("local", False))
        and r["split"] == split_name
        and (r["config"] or None) == (args.config_name or None)
    ]
    if not same:
        elsewhere = sorted({f"{r['dataset']} / {r['split']}" for r in recorded})
        return {"compared": {}, "card_records_other": elsewhere} if elsewhere else None
    compared = {}
    for r in same:
        if r["metric"] in metrics and isinstance(r["value"], (int, float)):
            compared[r["metric"]] = {
                "card": r["value"],
                "eval": metrics[r["metric"]],
                "difference": metrics[r["metric"]] - r["value"],
            }
    return {"compared": compared}


def default_output(args: EvalArgs) -> Path:
    return Path("evals") / f"{slug(args.model)}__{slug(args.dataset)}__{slug(args.split)}"


def run_recipe(model: str, revision: str | None, *, needed_for: str, instead: str) -> Recipe | None:
    """The recipe of the hf_tl run that made `model`: a run folder's, or recipe.yaml beside a pushed checkpoint.

    None when there is no recipe.yaml. Read only where it is `needed_for` something: one that hf_tl cannot read
    (another framework's file of the same name, or another hf_tl version's) is an error that names it and says
    to pass `instead`.
    """
    found = run_file(model, RECIPE_FILE, revision)
    return None if found is None else _read_run_recipe(found, needed_for, instead)


def run_file(model: str, filename: str, revision: str | None = None) -> Path | None:
    """Where `filename` of the checkpoint `model` is, if it has one: in its folder, in the run folder above a
    run's model/, or in its Hub repository (from the cache when offline). Read nothing from it yet."""
    path = Path(model).expanduser()
    if path.is_dir():
        candidates = [path / filename, path.parent / filename if path.name == MODEL_DIR else None]
        return next((c for c in candidates if c is not None and c.is_file()), None)
    return _hub_file(model, filename, revision) if is_hub_id(model) else None


def _read_run_recipe(found: Path, needed_for: str, instead: str) -> Recipe:
    try:
        return load_recipe(str(found))
    except RecipeError as e:
        reason = " ".join(str(e).split())  # the error stays one line
        raise DataError(
            f"{found} is not a recipe this hf_tl can read ({reason}), and {needed_for} needs it; pass {instead}."
        ) from None


def _take_the_runs_dataset(args: EvalArgs) -> Recipe:
    """No dataset= given: the run's own, read as the run read it, with its config and columns unless given."""
    found = run_file(args.model, RECIPE_FILE, args.revision)
    if found is None:
        if Path(args.model).expanduser().exists():
            raise RecipeError("'dataset=' is required: the model is not an hf_tl run, so it names no dataset.")
        raise RecipeError(
            f"'dataset=' is required: there is no folder {args.model} here, and as a Hub id it has no recipe.yaml of "
            "an hf_tl run to be had (not an hf_tl checkpoint, or the Hub cannot be reached). Check the path, or "
            "pass dataset=."
        )
    recipe = _read_run_recipe(
        found,
        "finding the dataset it was trained on",
        "dataset= (and config_name=, image_column=, label_column= as the run had them)",
    )
    data = recipe.data
    if not is_hub_id(data.dataset) and not Path(data.dataset).expanduser().exists():
        raise DataError(
            f"the run's dataset '{data.dataset}' (data.dataset in {found}) does not exist here (looked for "
            f"{Path(data.dataset).expanduser().absolute()}); pass dataset= with where that dataset is now."
        )
    args.dataset = data.dataset
    for key, value in _run_settings_unless_given(args, data).items():
        setattr(args, key, value)
    return recipe


def _read_as_the_run_did(args: EvalArgs) -> Recipe | None:
    """dataset= naming the run's own dataset (as its card's command and `hf-tl download`'s do): its config and
    columns come from the run, unless given. The recipe is not needed for that: one hf_tl cannot read is passed over."""
    found = run_file(args.model, RECIPE_FILE, args.revision)
    try:
        recipe = load_recipe(str(found)) if found else None
    except RecipeError:
        return None
    if recipe is not None and _same_dataset(recipe.data.dataset, args.dataset):
        for key, value in _run_settings_unless_given(args, recipe.data).items():
            setattr(args, key, value)
    return recipe


def _load_split(args: EvalArgs, recipe: Recipe | None) -> tuple[Dataset, str]:
    """The split to evaluate and its name; `validation` of a run that held one out is carved again, as it was."""
    splits = open_dataset(_data_section(args, recipe))
    if args.split == VALIDATION and args.split not in splits and recipe is None:  # only now is the recipe needed
        splits_here = f"split= one of the splits of '{args.dataset}': {', '.join(splits)}"
        needed_for = "carving the run's held-out split=validation again"
        recipe = run_recipe(args.model, args.revision, needed_for=needed_for, instead=splits_here)
    if args.split == VALIDATION and args.split not in splits and recipe is not None:
        dataset, name = _held_out_validation(recipe, args)
    else:
        hint = "" if args.split in splits else _split_hint(args, recipe)
        dataset, name = pick_split(splits, args.split, args.dataset, hint)
    if args.max_samples:
        dataset = dataset.select(range(min(args.max_samples, len(dataset))))
    if len(dataset) == 0:
        raise DataError(f"the split '{name}' of '{args.dataset}' is empty.")
    return dataset, name


def _split_hint(args: EvalArgs, recipe: Recipe | None) -> str:
    """After a missing split's error: on an hf_tl run, what split=validation means."""
    is_run = recipe is not None or run_file(args.model, RECIPE_FILE, args.revision) is not None
    return "; split=validation on an hf_tl run is the part of train it held out" if is_run else ""


def _held_out_validation(recipe: Recipe, args: EvalArgs) -> tuple[Dataset, str]:
    """The run's own validation split: its data settings and seed, on `args.dataset`, through training's code."""
    settings = _run_settings_unless_given(args, recipe.data)
    revision = runs_revision(recipe, args.dataset)  # a local copy has no Hub revision
    data = dataclasses.replace(recipe.data, dataset=args.dataset, revision=revision, **settings)
    splits = load_splits(data, recipe.training.seed)
    if not is_held_out(splits.eval_split):
        raise DataError(
            f"the run validated on '{splits.eval_split}', not on a part of train it held out; "
            f"pass split={splits.eval_split}."
        )
    # the config and columns it was carved with are the ones evaluated: the run's, unless given
    args.config_name, args.image_column, args.label_column = data.config_name, splits.image_column, splits.label_column
    return splits.eval, splits.eval_split


def _run_settings_unless_given(args: EvalArgs, data: DataSection) -> dict[str, str | None]:
    """How the run read its dataset (config, columns), where the command line does not say otherwise."""
    return {key: getattr(args, key) or getattr(data, key) for key in ("config_name", "image_column", "label_column")}


def runs_revision(recipe: Recipe | None, dataset: str) -> str | None:
    """The Hub revision the run pinned (data.revision), when `dataset` is the run's own Hub id: eval reads the
    rows the run read. Another dataset, a local copy included, has no revision of the run's."""
    return recipe.data.revision if recipe is not None and dataset == recipe.data.dataset else None


def _data_section(args: EvalArgs, recipe: Recipe | None = None) -> DataSection:
    """The dataset to evaluate as training's loader reads it, at the run's revision when it is the run's own."""
    return DataSection(
        dataset=args.dataset,
        revision=runs_revision(recipe, args.dataset),
        config_name=args.config_name,
        image_column=args.image_column,
        label_column=args.label_column,
        augment="none",
    )


def _load_model(args: EvalArgs, device: torch.device):
    """The same loader training uses: safetensors only unless allow_pickle, clear errors offline."""
    source = ModelSection(
        name=args.model,
        revision=args.revision,
        trust_remote_code=args.trust_remote_code,
        allow_pickle=args.allow_pickle,
    )
    return load_for_inference(source, device)


def _dataset_labels(dataset: Dataset, column: str):
    """The dataset's class names, and a function from a stored label value to its name."""
    feature = dataset.features[column]
    if isinstance(feature, (ClassLabel, Value)) and feature.dtype != "string" and -1 in dataset.unique(column):
        raise DataError(
            f"column '{column}' has unlabelled rows (label -1), as many Hub test splits do; "
            "evaluate on a labelled split (split=validation, or split=train with max_samples=...)."
        )
    if isinstance(feature, ClassLabel):
        return list(feature.names), feature.int2str
    values = sorted(set(dataset.unique(column)))  # integers in numeric order, as training encodes them
    return [str(v) for v in values], str


def _predict(
    model, loader: DataLoader, preprocess: Preprocess, device: torch.device
) -> tuple[np.ndarray, np.ndarray, float]:
    logits, references = [], []
    started = time.perf_counter()
    with torch.inference_mode(), progress.bar(total=len(loader.dataset), unit="img", desc="evaluating") as bar:
        for batch in loader:
            out = model(pixel_values=preprocess(to_device(batch["images"], device)))
            logits.append(out.logits.float().cpu().numpy())
            references.append(batch["labels"].numpy())
            bar.update(len(batch["labels"]))
            bar.set_postfix(img_s=f"{bar.n / (time.perf_counter() - started):.1f}")
    seconds = time.perf_counter() - started
    return np.concatenate(logits), np.concatenate(references), seconds


def _model_card(args: EvalArgs):
    found = run_file(args.model, CARD_FILE, args.revision)
    return load_card(found) if found else None


def _hub_file(repo_id: str, filename: str, revision: str | None) -> Path | None:
    """A file of a Hub repository (from the cache when offline), or None when there is none to be had."""
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision))
    except Exception:  # no such file, no network and no cache: nothing to read
        return None


def _same_dataset(recorded: str | None, given: str, local: bool = False) -> bool:
    """Whether `given` is the dataset recorded. A card names a `local` dataset by its folder's name alone."""
    if recorded == given:
        return True
    here = Path(given).expanduser()
    if recorded and Path(recorded).expanduser().exists() and here.exists():
        return Path(recorded).expanduser().resolve() == here.resolve()
    return local and here.exists() and here.resolve().name == recorded


def _report(result: dict, output: Path) -> None:
    metrics, throughput = result["metrics"], result["throughput"]
    print(f"hf_tl: {result['model']} on {result['dataset']} / {result['split']} ({result['num_examples']} images)")
    for key in HUB_METRICS:  # the metrics a card records
        if key in metrics:
            print(f"  {key:<16} {metrics[key]:.4f}")
    print(f"  {throughput['images_per_second']} images/s on {throughput['device']} ({throughput['seconds']:.2f} s)")
    card = result["card"]
    if card and card["compared"]:
        print("  beside its model card:")
        print(f"    {'metric':<16} {'card':>8} {'this eval':>10} {'difference':>11}")
        for key, row in card["compared"].items():
            print(f"    {key:<16} {row['card']:>8.4f} {row['eval']:>10.4f} {row['difference']:>+11.4f}")
    elif card:
        print(f"  its card records results on {', '.join(card['card_records_other'])}, not on this split.")
    print(f"  wrote {output / EVAL_FILE} and {output / CONFUSION_FILE}")


def _some(names: list[str]) -> str:
    return (str(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "")) if names else "none"
