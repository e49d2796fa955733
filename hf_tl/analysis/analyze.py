"""What `hf-tl analyze` does: how two backbones' representations compare.

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
import time
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset

from hf_tl import progress
from hf_tl.analysis.attention_distance import AttentionDistance
from hf_tl.analysis.cka import MIN_BATCH
from hf_tl.analysis.compare import Backbone, LayerCKA, layer_cka
from hf_tl.analysis.figures import attention_distance_plot, cka_heatmap
from hf_tl.analysis.layers import Tap
from hf_tl.config.commands import CkaArgs, DataArgs, DistanceArgs
from hf_tl.config.recipe import DataSection, ModelSection
from hf_tl.data.datasets import detect_image_column, input_size, open_dataset
from hf_tl.data.image_check import drop_or_refuse_bad_images
from hf_tl.data.preprocess import Preprocess, to_device
from hf_tl.data.processors import preprocess_of
from hf_tl.device import resolve_device
from hf_tl.errors import DataError, warn
from hf_tl.inference.loading import inference_loader, load_for_inference, pick_split
from hf_tl.models.source import resolve_model
from hf_tl.runs.environment import library_versions
from hf_tl.runs.folder import write_json, written_atomically
from hf_tl.runs.paths import check_output_folder, slug

CKA_NPY, CKA_JSON, CKA_PNG = "cka.npy", "cka.json", "cka.png"
DISTANCE_JSON, DISTANCE_PNG = "attention_distance.json", "attention_distance.png"
ESTIMATOR = (
    "minibatch linear CKA (Nguyen et al. 2021): unbiased HSIC (Song et al. 2012) per minibatch, "
    "HSIC(K,L), HSIC(K,K), HSIC(L,L) summed over minibatches, CKA = sum HSIC(K,L) / sqrt(sum HSIC(K,K) sum HSIC(L,L))"
)


@progress.with_library_bars
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
    with progress.bar(total=_used(len(dataset), args.batch_size), unit="img", desc="CKA") as bar:
        loader = inference_loader(dataset, image_column, args.batch_size, args.num_workers)
        images = (batch["images"] for batch in loader)
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


@progress.with_library_bars
def run_attention_distance(args: DistanceArgs) -> dict:
    """Mean attention distance of every head of every layer, averaged over the images; write JSON and the plot."""
    args.model = resolve_model(args.model)
    device = resolve_device(args.device)
    output = _output(args, [args.model])
    model, processor = _load(args.model, args, device)
    size = input_size(processor)
    measure = AttentionDistance(model, size)
    dataset, split, image_column = _examples(args, minimum=1)
    loader = inference_loader(dataset, image_column, args.batch_size, args.num_workers)
    preprocess = _preprocess(processor, args)
    with measure.hooked(), torch.inference_mode():
        with progress.bar(total=len(dataset), unit="img", desc="attention distance") as bar:
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
    return load_for_inference(source, device)


def _examples(args: DataArgs, minimum: int) -> tuple[Dataset, str, str]:
    """The first num_examples of a seeded shuffle of the split (a sorted split would give one-class minibatches)."""
    splits = open_dataset(DataSection(dataset=args.dataset, config_name=args.config_name))
    dataset, split = pick_split(splits, args.split or None, args.dataset)
    image_column = detect_image_column(dataset, args.image_column, key="image_column")
    dataset = dataset.shuffle(seed=args.seed).select(range(min(args.num_examples, len(dataset))))
    dataset, _ = drop_or_refuse_bad_images(dataset, image_column, args.on_bad_image, split)
    if len(dataset) < minimum:
        raise DataError(f"split '{split}' of '{args.dataset}' has {len(dataset)} usable images; this needs {minimum}.")
    return dataset, split, image_column


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
        warn(f"CKA is undefined (null) for layers that do not vary across these images: {undefined}")


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
