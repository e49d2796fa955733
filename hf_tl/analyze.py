"""`python -m hf_tl.analyze cka|attention-distance key=value ...`: how two backbones' representations compare.

cka: model_a=<hub id|dir> [model_b=...] dataset=<...> — layer-by-layer minibatch CKA (Nguyen et al. 2021, as
  Raghu et al. 2021 used it); writes cka.npy, cka.json (with the layer names) and a cka.png heatmap.
  model_b defaults to model_a: the self-similarity picture.
attention-distance: model=<ViT-like> dataset=<...> — mean attention distance per head per layer;
  writes attention_distance.json and a scatter plot.
Both read any checkpoint a Hub id or folder names (a run folder stands for its model/), see the same
images in the same order (a seeded shuffle of the split), and write each file atomically.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from datasets import Dataset
from omegaconf import MISSING
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from hf_tl.analysis.attention_distance import AttentionDistance
from hf_tl.analysis.cka import MIN_BATCH
from hf_tl.analysis.compare import Backbone, LayerCKA, layer_cka
from hf_tl.analysis.figures import attention_distance_plot, cka_heatmap
from hf_tl.analysis.layers import LAYER_CHOICES, Tap
from hf_tl.analysis.tokens import TOKEN_MODES
from hf_tl.backbones import load_model, load_processor
from hf_tl.command_line import (
    command_help,
    parse_key_values,
    resolve_device,
    resolve_model,
    slug,
    wants_help,
)
from hf_tl.data import (
    collate_images,
    detect_image_column,
    image_transform,
    input_size,
    loader_workers,
    open_dataset,
)
from hf_tl.environment import library_versions
from hf_tl.errors import DataError, RecipeError, cli
from hf_tl.image_check import drop_or_refuse_bad_images
from hf_tl.paths import check_output_folder
from hf_tl.preprocess import Preprocess, to_device
from hf_tl.processors import INTERPOLATION_CHOICES, preprocess_of
from hf_tl.recipe import DataSection, ModelSection, did_you_mean, option, same_option
from hf_tl.rundir import write_json, written_atomically

CKA_NPY, CKA_JSON, CKA_PNG = "cka.npy", "cka.json", "cka.png"
DISTANCE_JSON, DISTANCE_PNG = "attention_distance.json", "attention_distance.png"
SPLIT_PREFERENCE = ("test", "validation", "train")
ESTIMATOR = (
    "minibatch linear CKA (Nguyen et al. 2021): unbiased HSIC (Song et al. 2012) per minibatch, "
    "HSIC(K,L), HSIC(K,K), HSIC(L,L) summed over minibatches, CKA = sum HSIC(K,L) / sqrt(sum HSIC(K,K) sum HSIC(L,L))"
)


@dataclass
class DataArgs:
    """What both commands read: which images, how many, in what order."""

    dataset: str = same_option(DataSection, "dataset")
    split: Optional[str] = option(None, "Split to read; default test, else validation, else train.")
    config_name: Optional[str] = same_option(DataSection, "config_name")
    image_column: Optional[str] = same_option(DataSection, "image_column")
    seed: int = option(0, "Seed of the shuffle that picks the examples (and mixes classes within each minibatch).")
    interpolation: Optional[str] = option(
        None, "Resize filter; default each checkpoint's own, as its image processor says.", INTERPOLATION_CHOICES
    )
    num_workers: Optional[int] = same_option(DataSection, "num_workers")
    on_bad_image: str = same_option(DataSection, "on_bad_image")
    device: Optional[str] = option(None, "cpu, cuda, cuda:1, ...; default: the accelerator if there is one.")
    trust_remote_code: bool = same_option(ModelSection, "trust_remote_code")
    allow_pickle: bool = same_option(ModelSection, "allow_pickle")
    out: Optional[str] = option(None, "Output folder; default analysis/<model(s)>__<dataset>/.")


@dataclass
class CkaArgs(DataArgs):
    model_a: str = option(MISSING, "Hub id or local directory of the first checkpoint (rows of the matrix).")
    model_b: Optional[str] = option(None, "The second checkpoint (columns); default model_a, a self-similarity.")
    num_examples: int = option(10240, "Images to compare on (fewer if the split is smaller).", min=MIN_BATCH)
    batch_size: int = option(1024, "Minibatch of the CKA estimator; memory grows with its square.", min=MIN_BATCH)
    layers: str = option(
        "blocks", "blocks: embedding, every block, pre-head; all: also each block's sublayers.", LAYER_CHOICES
    )
    tokens: str = option(
        "flatten", "Token or feature-map outputs: flatten them all, take the class token, or their mean.", TOKEN_MODES
    )


@dataclass
class DistanceArgs(DataArgs):
    model: str = option(MISSING, "Hub id or local directory of a ViT-like checkpoint.")
    num_examples: int = option(1024, "Images to average over (fewer if the split is smaller).", min=1)
    batch_size: int = option(64, "Images per forward pass.", min=1)


COMMANDS = {"cka": CkaArgs, "attention-distance": DistanceArgs}


def run_cka(args: CkaArgs) -> dict:
    """Compare every layer of model_a with every layer of model_b on the same images; write the matrix and heatmap."""
    args.model_a = resolve_model(args.model_a)
    args.model_b = resolve_model(args.model_b) if args.model_b else args.model_a
    same = args.model_b == args.model_a
    device = resolve_device(args.device)
    output = _output(args, [args.model_a, args.model_b])
    backbones = [_backbone(f"model_a={args.model_a}", args.model_a, args, device)]
    if not same:
        backbones.append(_backbone(f"model_b={args.model_b}", args.model_b, args, device))
    dataset, split, image_column = _examples(args, minimum=MIN_BATCH)
    started = time.perf_counter()
    with tqdm(total=_used(len(dataset), args.batch_size), unit="img", desc="CKA", file=sys.stderr) as bar:
        images = (batch["images"] for batch in _loader(dataset, image_column, args))
        found = layer_cka(backbones, images, args.layers, args.tokens, device, bar.update)
    seconds = time.perf_counter() - started
    result = {
        "model_a": args.model_a,
        "model_b": args.model_b,
        "dataset": args.dataset,
        "config_name": args.config_name,
        "split": split,
        "num_examples": found.examples,
        "batch_size": args.batch_size,
        "minibatches": found.minibatches,
        "layers": args.layers,
        "tokens": args.tokens,
        "seed": args.seed,
        "estimator": ESTIMATOR,
        "layers_a": [t.name for t in found.taps_a],
        "layers_b": [t.name for t in found.taps_b],
        "modules_a": [_where(t) for t in found.taps_a],
        "modules_b": [_where(t) for t in found.taps_b],
        "cka": [[None if math.isnan(v) else round(float(v), 6) for v in row] for row in found.matrix],
        "seconds": round(seconds, 3),
        "device": str(device),
        "versions": library_versions(),
    }
    _write_cka(found, result, output, args)
    return result


def _write_cka(found: LayerCKA, result: dict, output: Path, args: CkaArgs) -> None:
    """cka.npy, cka.json and cka.png, each written atomically, after all the work is done."""
    matrix, names_a, names_b = found.matrix, result["layers_a"], result["layers_b"]
    with written_atomically(output / CKA_NPY) as tmp, open(tmp, "wb") as f:
        np.save(f, matrix)
    write_json(output / CKA_JSON, result)
    title = f"CKA: {_short(args.model_a)}" + ("" if args.model_a == args.model_b else f" vs {_short(args.model_b)}")
    title += f"\non {_dataset_name(args)} / {result['split']}, {found.examples} images, tokens={args.tokens}"
    axes = f"{_short(args.model_b)} layer", f"{_short(args.model_a)} layer"
    cka_heatmap(matrix, names_a, names_b, output / CKA_PNG, title, *axes)
    _warn_undefined(matrix, names_a, names_b)
    print(
        f"hf_tl: CKA of {len(names_a)} x {len(names_b)} layers on {found.examples} images ({found.minibatches} "
        f"minibatches of up to {args.batch_size}) in {result['seconds']:.1f} s on {result['device']}"
    )
    print(f"  wrote {output / CKA_NPY}, {output / CKA_JSON} and {output / CKA_PNG}")


def run_attention_distance(args: DistanceArgs) -> dict:
    """Mean attention distance of every head of every layer, averaged over the images; write JSON and the plot."""
    args.model = resolve_model(args.model)
    device = resolve_device(args.device)
    output = _output(args, [args.model])
    model, processor = _load(args.model, args, device)
    size = input_size(processor)
    measure = AttentionDistance(model, size)
    dataset, split, image_column = _examples(args, minimum=1)
    loader, preprocess = _loader(dataset, image_column, args), _preprocess(processor, args)
    with measure.hooked(), torch.inference_mode():
        with tqdm(total=len(dataset), unit="img", desc="attention distance", file=sys.stderr) as bar:
            for batch in loader:
                measure.add(preprocess(to_device(batch["images"], device)))
                bar.update(len(batch["images"]))
    distances = measure.result()
    result = {
        "model": args.model,
        "dataset": args.dataset,
        "config_name": args.config_name,
        "split": split,
        "num_examples": measure.images,
        "seed": args.seed,
        "input_size": list(size),
        "patch_size": list(measure.patch),
        "patch_grid": list(measure.grid),
        "prefix_tokens_dropped": measure.prefix_tokens,
        "method": "per head: sum over key patches of attention (renormalised over patches) x pixel distance "
        "between patch centres, averaged over query patches and images; class/distillation tokens dropped",
        "layers": [
            {"name": name, "mean_distance_px": [round(float(v), 4) for v in row]}
            for name, row in zip(measure.names, distances, strict=True)
        ],
        "versions": library_versions(),
    }
    write_json(output / DISTANCE_JSON, result)
    title = (
        f"Mean attention distance: {_short(args.model)}\non {_dataset_name(args)} / {split}, {measure.images} images, "
    )
    title += f"{size[0]}x{size[1]} px input, {measure.patch[0]} px patches"
    attention_distance_plot(distances, measure.names, output / DISTANCE_PNG, title)
    print(
        f"hf_tl: attention distance of {distances.shape[1]} heads in {distances.shape[0]} layers, "
        f"{measure.images} images: {distances.min():.1f} to {distances.max():.1f} px"
    )
    print(f"  wrote {output / DISTANCE_JSON} and {output / DISTANCE_PNG}")
    return result


def _backbone(label: str, name: str, args: DataArgs, device: torch.device) -> Backbone:
    model, processor = _load(name, args, device)
    return Backbone(label, model, _preprocess(processor, args), input_size(processor))


def _where(tap: Tap) -> str:
    return f"{tap.where} of {' + '.join(tap.modules)}"


def _load(name: str, args: DataArgs, device: torch.device):
    source = ModelSection(name=name, trust_remote_code=args.trust_remote_code, allow_pickle=args.allow_pickle)
    return load_model(source).to(device).eval(), load_processor(source)


def _examples(args: DataArgs, minimum: int) -> tuple[Dataset, str, str]:
    """The first num_examples of a seeded shuffle of the split (a sorted split would give one-class minibatches)."""
    splits = open_dataset(DataSection(dataset=args.dataset, config_name=args.config_name))
    split = args.split or next((s for s in SPLIT_PREFERENCE if s in splits), next(iter(splits)))
    if split not in splits:
        raise DataError(f"split='{split}' is not a split of '{args.dataset}'. Splits: {', '.join(splits)}")
    dataset = splits[split]
    image_column = detect_image_column(dataset, args.image_column, key="image_column")
    dataset = dataset.shuffle(seed=args.seed).select(range(min(args.num_examples, len(dataset))))
    dataset, _ = drop_or_refuse_bad_images(dataset, image_column, args.on_bad_image, split)
    if len(dataset) < minimum:
        raise DataError(f"split '{split}' of '{args.dataset}' has {len(dataset)} usable images; this needs {minimum}.")
    return dataset, split, image_column


def _loader(dataset: Dataset, image_column: str, args: DataArgs) -> DataLoader:
    """Batches of decoded uint8 images at native size; each model's `Preprocess` resizes and normalises them."""

    workers = loader_workers(args.num_workers)
    images = dataset.with_transform(image_transform(image_column))
    return DataLoader(images, args.batch_size, collate_fn=collate_images, num_workers=workers)


def _preprocess(processor: object, args: DataArgs) -> Preprocess:
    return preprocess_of(processor, args.interpolation)  # what the checkpoint's processor does at inference


def _used(count: int, batch_size: int) -> int:
    """Examples the estimator sees: a last minibatch of fewer than MIN_BATCH is left out."""
    rest = count % batch_size
    return count - rest if 0 < rest < MIN_BATCH else count


def _warn_undefined(matrix: np.ndarray, names_a: list[str], names_b: list[str]) -> None:
    rows = [names_a[i] for i in range(len(names_a)) if np.isnan(matrix[i]).all()]
    cols = [names_b[j] for j in range(len(names_b)) if np.isnan(matrix[:, j]).all()]
    if rows or cols:
        undefined = sorted(set(rows + cols))
        print(f"warning: CKA is undefined (null) for layers that do not vary across these images: {undefined}")


def _output(args: DataArgs, models: list[str]) -> Path:
    """The output folder, checked before any work: out=, or analysis/<model(s)>__<dataset>/."""
    return check_output_folder(Path(args.out) if args.out else _default_output(models, args.dataset), "out")


def _default_output(models: list[str], dataset: str) -> Path:
    return Path("analysis") / "__".join([*(slug(m) for m in models), slug(dataset)])


def _dataset_name(args: DataArgs) -> str:
    return f"{_short(args.dataset)}{f' ({args.config_name})' if args.config_name else ''}"


def _short(model: str) -> str:
    """A model as an axis label: a Hub id as is, a folder by its last two parts."""
    path = Path(model).expanduser()
    return "/".join(path.resolve().parts[-2:]) if path.exists() else model


@cli
def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if wants_help(argv):
        chosen = [c for c in COMMANDS if argv[0] == c] if argv else []
        print(command_help(__doc__, [(f"{c} keys", COMMANDS[c], "") for c in chosen or COMMANDS]))
        return
    if not argv or argv[0] not in COMMANDS:
        given = f"'{argv[0]}'" if argv else "nothing"
        hint = did_you_mean(argv[0], COMMANDS) if argv else ""
        raise RecipeError(
            f"got {given}; start with a command: {' or '.join(COMMANDS)}.{hint}\n  e.g. python -m hf_tl.analyze cka "
            "model_a=google/vit-base-patch16-224 model_b=microsoft/resnet-50 dataset=cifar10"
        )
    command, rest = argv[0], argv[1:]
    args = parse_key_values(COMMANDS[command], rest)
    if command == "cka":
        run_cka(args)
    else:
        run_attention_distance(args)


if __name__ == "__main__":
    main()
