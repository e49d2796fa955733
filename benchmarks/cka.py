"""Throughput and peak memory of hf_tl's minibatch CKA against a naive implementation that stores all features.

    python benchmarks/cka.py [--quick] [--json] [--examples 2048 10240] [--batch-size 512]

Model A is the quickstart backbone that ships with hf_tl (a 4-block ViT, 16x16 input); model B a
small ResNet built from its config (random weights: throughput does not depend on them). Both see
the same synthetic uint8 images (32x32, seeded), so data loading is left out of both timings.

- minibatch: `hf_tl.analysis.compare.layer_cka`, Gram matrices made in the hooks, HSIC sums kept.
- naive: the same hooks store every layer's flattened features for all images (as one does with
  output_hidden_states), then the same estimator runs on the stored features, one plain per-pair loop.

Each method runs in its own process, so its peak resident memory (ru_maxrss) is its own; the table
gives that peak and its growth over the process after the models are loaded. Throughput is given per
wall-clock second and per CPU second of the process (all threads): on a machine shared with other
work the second varies much less. The two matrices are
compared: they must agree (same estimator, same minibatches).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from hf_tl.analysis.cka import MIN_BATCH
from hf_tl.analysis.compare import Backbone, layer_cka
from hf_tl.analysis.layers import GramTaps, Tap, first_tensor
from hf_tl.analysis.tokens import features
from hf_tl.config.quickstart import ASSETS
from hf_tl.config.recipe import DataSection, ModelSection
from hf_tl.data.datasets import input_size, preprocess_for
from hf_tl.models.loading import load_model, load_processor

IMAGE = (3, 32, 32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one small size, well under a minute")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--examples", type=int, nargs="+", default=None, help="image counts to measure")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument(
        "--repeat", type=int, default=None, help="runs of each method, the fastest kept (default 1 quick, 3)"
    )
    parser.add_argument("--child", nargs=3, metavar=("METHOD", "EXAMPLES", "RESNET"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        method, examples, resnet = args.child
        print(json.dumps(measure(method, int(examples), args.batch_size, Path(resnet))))
        return
    sizes = args.examples or ([1024] if args.quick else [2048, 10240])
    batch_size = min(args.batch_size, 256) if args.quick else args.batch_size
    with tempfile.TemporaryDirectory() as tmp:
        resnet = build_resnet(Path(tmp) / "resnet")
        repeat = args.repeat or (1 if args.quick else 3)
        rows = [compare(n, batch_size, resnet, repeat) for n in sizes]
    report = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"{'cuda' if torch.cuda.is_available() else 'no GPU'}",
        "torch": torch.__version__,
        "model_a": "hf_tl quickstart backbone (ViT, 4 blocks, 64 wide, 16x16 input)",
        "model_b": "ResNet from config (hidden 16-32-64-128, depths 1-1-1-1, 32x32 input)",
        "batch_size": batch_size,
        "repeat": repeat,
        "rows": rows,
    }
    print(json.dumps(report, indent=2) if args.json else table(report))


def compare(examples: int, batch_size: int, resnet: Path, repeat: int) -> dict:
    """Each method `repeat` times, alternating (a shared machine's load then hits both alike); the fastest run kept."""
    runs = [[child(method, examples, batch_size, resnet) for method in ("minibatch", "naive")] for _ in range(repeat)]
    fast, slow = (max(column, key=lambda r: r["images_per_cpu_second"]) for column in zip(*runs, strict=True))
    difference = float(np.nanmax(np.abs(np.array(fast.pop("matrix")) - np.array(slow.pop("matrix")))))
    return {
        "examples": examples,
        "minibatch": fast,
        "naive": slow,
        "speedup": round(fast["images_per_second"] / slow["images_per_second"], 2),
        "speedup_cpu": round(fast["images_per_cpu_second"] / slow["images_per_cpu_second"], 2),
        "max_abs_difference": difference,
    }


def child(method: str, examples: int, batch_size: int, resnet: Path) -> dict:
    command = [sys.executable, __file__, "--child", method, str(examples), str(resnet), "--batch-size", str(batch_size)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(method: str, examples: int, batch_size: int, resnet: Path) -> dict:
    """Runs in its own process: load both models, then time one method over `examples` images."""
    backbones = [backbone(ASSETS / "backbone", "model_a"), backbone(resnet, "model_b")]
    for b in backbones:  # warm up, so that lazy initialisation is not timed
        with torch.inference_mode():
            b.model(pixel_values=b.preprocess(images(MIN_BATCH, 0)))
    baseline = peak_rss_mib()
    started, cpu_started = time.perf_counter(), time.process_time()
    batches = (images(min(batch_size, examples - s), s) for s in range(0, examples, batch_size))
    if method == "minibatch":
        matrix = layer_cka(backbones, batches, "blocks", "flatten", torch.device("cpu")).matrix
    else:
        matrix, stored = naive_cka(backbones, batches, batch_size)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    peak = peak_rss_mib()
    return {
        "images_per_second": round(examples / seconds, 1),
        "images_per_cpu_second": round(examples / cpu_seconds, 1),
        "seconds": round(seconds, 3),
        "cpu_seconds": round(cpu_seconds, 3),
        "peak_rss_mib": round(peak, 1),
        "growth_over_loaded_models_mib": round(peak - baseline, 1),
        "stored_features_mib": round(stored / 2**20, 1) if method == "naive" else 0.0,
        "matrix": np.nan_to_num(matrix, nan=np.nan).tolist(),
    }


def naive_cka(backbones: list[Backbone], batches, batch_size: int) -> tuple[np.ndarray, int]:
    """Store every layer's features for all images, then the same minibatch estimator, pair by pair."""
    taps = [probed_taps(b) for b in backbones]
    stored: list[list[list[torch.Tensor]]] = [[[] for _ in side] for side in taps]
    with torch.inference_mode():
        for batch in batches:
            for b, side, store in zip(backbones, taps, stored, strict=True):
                for chunks, layer in zip(store, layer_features(b, side, batch), strict=True):
                    chunks.append(layer)
    every = [[torch.cat(chunks).numpy() for chunks in store] for store in stored]
    nbytes = sum(f.nbytes for side in every for f in side)
    a, b = every
    cross, self_a, self_b = np.zeros((len(a), len(b))), np.zeros(len(a)), np.zeros(len(b))
    for start in range(0, len(a[0]), batch_size):
        rows = slice(start, start + batch_size)
        if len(a[0][rows]) < MIN_BATCH:
            break
        grams_a = [f[rows].astype(np.float64) @ f[rows].astype(np.float64).T for f in a]
        grams_b = [f[rows].astype(np.float64) @ f[rows].astype(np.float64).T for f in b]
        for i, K in enumerate(grams_a):
            self_a[i] += plain_hsic(K, K)
            for j, L in enumerate(grams_b):
                cross[i, j] += plain_hsic(K, L)
        for j, L in enumerate(grams_b):
            self_b[j] += plain_hsic(L, L)
    return cross / np.sqrt(np.outer(self_a, self_b)), nbytes


def plain_hsic(K: np.ndarray, L: np.ndarray) -> float:
    """Song et al. 2012's unbiased HSIC, as written in the paper."""
    n = len(K)
    Kt, Lt = K - np.diag(np.diag(K)), L - np.diag(np.diag(L))
    trace = float((Kt * Lt).sum())  # tr(K̃L̃) for symmetric matrices
    sums = Kt.sum() * Lt.sum() / ((n - 1) * (n - 2))
    rows = 2 / (n - 2) * float(Kt.sum(axis=0) @ Lt.sum(axis=1))
    return (trace + sums - rows) / (n * (n - 3))


def probed_taps(b: Backbone) -> list[Tap]:
    """The layers the minibatch path compares, in the same order."""
    gram_taps = GramTaps(b.model, "blocks", "flatten")
    with gram_taps.hooked():
        gram_taps.probe(b.image_size, torch.device("cpu"), b.label)
    return gram_taps.taps


def layer_features(b: Backbone, taps: list[Tap], batch: torch.Tensor) -> list[torch.Tensor]:
    """Every tap's flattened features for one batch, kept (copied out of the forward pass)."""
    modules, seen, handles = dict(b.model.named_modules()), {}, []
    for tap in taps:
        for name in tap.modules:

            def keep(_module, args, kwargs_or_output, tap=tap):
                value = (args, kwargs_or_output) if tap.where == "input" else kwargs_or_output
                seen[tap.name] = features(first_tensor(value), "flatten").clone()

            if tap.where == "input":
                handles.append(modules[name].register_forward_pre_hook(keep, with_kwargs=True))
            else:
                handles.append(modules[name].register_forward_hook(keep))
    try:
        b.model(pixel_values=b.preprocess(batch))
    finally:
        for handle in handles:
            handle.remove()
    return [seen[tap.name] for tap in taps]


def backbone(path: Path, label: str) -> Backbone:
    source = ModelSection(name=str(path))
    model, processor = load_model(source).eval(), load_processor(source)
    preprocess = preprocess_for(processor, DataSection(dataset="-"))
    return Backbone(f"{label}={path}", model, preprocess, input_size(processor))


def build_resnet(path: Path) -> Path:
    from transformers import ResNetConfig, ResNetForImageClassification, ViTImageProcessor

    config = ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], num_labels=10)
    ResNetForImageClassification(config).save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    return path


def images(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 256, (n, *IMAGE), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def peak_rss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def table(report: dict) -> str:
    lines = [
        f"CKA throughput, {report['model_a']} vs {report['model_b']}; minibatch {report['batch_size']}, "
        f"best of {report['repeat']}",
        f"machine: {report['machine']}, torch {report['torch']}",
        f"{'images':>7} {'method':>10} {'img/s':>8} {'img/cpu-s':>10} {'peak RSS MiB':>13} {'growth MiB':>11} "
        f"{'stored MiB':>11}",
    ]
    for row in report["rows"]:
        for method in ("minibatch", "naive"):
            r = row[method]
            lines.append(
                f"{row['examples']:>7} {method:>10} {r['images_per_second']:>8} {r['images_per_cpu_second']:>10} "
                f"{r['peak_rss_mib']:>13} "
                f"{r['growth_over_loaded_models_mib']:>11} {r['stored_features_mib']:>11}"
            )
        lines.append(
            f"{'':>7} speedup x{row['speedup']} (wall), x{row['speedup_cpu']} (CPU), "
            f"max |difference| {row['max_abs_difference']:.1e}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
