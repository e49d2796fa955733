"""`python benchmarks/bench.py [--quick] [--json]`: hf_tl against the alternatives, both sides timed in one run.

Three ratios, each from one process on one machine, so that they compare like with like:

- step_overhead_ratio: hf_tl's training step (data loading, device-side preprocessing, Trainer,
  fused AdamW, gradient clipping) / the same step in a bare PyTorch loop over a ready batch
  (same model, same frozen parameters, same optimizer and clipping). Target <= 1.10.
- cache_time_ratio: wall time of a whole 10-epoch last_block run (loading, training, evaluation,
  saving) with the frozen-prefix cache / without it, on a 12-block tiny ViT, data.augment=none.
  Target <= 0.35. cache_time_ratio_with_hflip is the same with flips, where the cache computes two
  views of every image: 22 frozen-block passes per image against the 140 of ten uncached epochs.
- preprocess_speedup: images/s of hf_tl's 32 -> 224 preprocessing (uint8 loader, batched resize,
  flip and normalise) / images/s of the per-image train transforms of transformers'
  examples/pytorch/image-classification/run_image_classification.py (RandomResizedCrop,
  RandomHorizontalFlip, ToTensor, Normalize on each PIL image, then torch.stack): both from the
  same decoded images, at batch 32 (hf_tl's default; batch 64 beside it). Target >= 3.
  pipeline_speedup is the same through each side's data loader, decoding the PNGs included;
  vs_image_processor_speedup compares with transformers' own image processor called on a batch
  (torchvision-backed, no flip), which is what hf_tl's batched path improves on least.

Models are built from configs (no Hub); images are scikit-learn's digits, coloured and
upscaled to CIFAR's 32x32, stored as PNG in a datasets Dataset as a Hub dataset would be.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image  # noqa: E402
from PIL import Image as PILImage  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from torchvision.transforms import Compose, Normalize, RandomHorizontalFlip, RandomResizedCrop, ToTensor  # noqa: E402
from transformers import TrainerCallback, ViTConfig, ViTForImageClassification, ViTImageProcessor  # noqa: E402

from hf_tl.config.recipe import load_recipe  # noqa: E402
from hf_tl.data.datasets import collate_images, image_transform  # noqa: E402
from hf_tl.data.preprocess import Preprocess, draw_flips, to_uint8  # noqa: E402
from hf_tl.strategies.freezing import apply_strategy  # noqa: E402
from hf_tl.training.run import build_trainer, run  # noqa: E402

TARGETS = {"step_overhead_ratio": ("<=", 1.10), "cache_time_ratio": ("<=", 0.35), "preprocess_speedup": (">=", 3.0)}
MEAN, STD = [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]


def cifar_like(count: int, seed: int = 0) -> Dataset:
    """Real images (digits), coloured per channel and upscaled to 32x32, PNG-encoded like a Hub dataset."""
    digits = load_digits()
    rng = np.random.default_rng(seed)
    rows = {"image": [], "label": []}
    for i in range(count):
        gray = (digits.images[i % len(digits.images)] * 255 / 16).astype(np.uint8)
        big = np.asarray(PILImage.fromarray(gray).resize((32, 32), PILImage.BILINEAR))
        noise = rng.integers(0, 30, big.shape, dtype=np.uint8)
        rgb = np.stack([big, 255 - big, big // 2 + noise], axis=-1)
        rows["image"].append(PILImage.fromarray(rgb, "RGB"))
        rows["label"].append(int(digits.target[i % len(digits.target)]))
    features = Features({"image": Image(), "label": ClassLabel(names=[str(d) for d in range(10)])})
    return Dataset.from_dict(rows, features=features)


def tiny_vit(folder: Path, image_size: int, width: int) -> Path:
    """A 12-block ViT from its config alone, saved with its image processor, as a Hub checkpoint would be."""
    config = ViTConfig(
        image_size=image_size,
        patch_size=4,
        hidden_size=width,
        num_hidden_layers=12,
        num_attention_heads=4,
        intermediate_size=4 * width,
        num_labels=10,
    )
    torch.manual_seed(0)
    ViTForImageClassification(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": image_size, "width": image_size}, image_mean=MEAN, image_std=STD).save_pretrained(
        folder
    )
    return folder


def recipe_for(model: Path, data: Path, out: Path, *overrides: str):
    return load_recipe(
        "quickstart",
        [f"model.name={model}", f"data.dataset={data}", f"output.dir={out}", "output.overwrite=true", *overrides],
    )


# --- step overhead --------------------------------------------------------------------------------------


class StepClock(TrainerCallback):
    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())


def hf_tl_step_seconds(model: Path, data: Path, out: Path, steps: int, batch: int) -> float:
    """Median step-to-step time inside one epoch (no evaluation or checkpoint between the steps timed)."""
    recipe = recipe_for(
        model, data, out, "strategy.kind=last_block", "training.cache_features=false", "data.val_fraction=0.01",
        f"training.batch_size={batch}", f"training.max_steps={steps}", "training.logging_steps=1000",
    )  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        trainer, *_ = build_trainer(recipe, out)
        clock = StepClock()
        trainer.add_callback(clock)
        trainer.args.disable_tqdm = True
        trainer.train()
    return float(statistics.median(np.diff(clock.ends[steps // 4 :])))


def bare_step_seconds(model_dir: Path, steps: int, batch: int, image_size: int) -> float:
    """The same model, frozen the same way, in a plain loop over one ready batch."""
    model = ViTForImageClassification.from_pretrained(model_dir)
    recipe = load_recipe("quickstart", [f"model.name={model_dir}", "strategy.kind=last_block"])
    model, _ = apply_strategy(model, recipe.strategy)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=recipe.training.lr, fused=True)
    pixels = torch.randn(batch, 3, image_size, image_size)
    labels = torch.randint(0, 10, (batch,))
    ends = []
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(pixel_values=pixels).logits, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)  # the Trainer's default max_grad_norm
        optimizer.step()
        optimizer.zero_grad()
        ends.append(time.perf_counter())
    return float(statistics.median(np.diff(ends[steps // 4 :])))


# --- cache ------------------------------------------------------------------------------------------------


def run_seconds(model: Path, data: Path, out: Path, cache: str, batch: int, flip: bool) -> tuple[float, dict]:
    recipe = recipe_for(
        model, data, out, "strategy.kind=last_block", "training.epochs=10", f"training.batch_size={batch}",
        "training.lr=1e-3", f"training.cache_features={cache}", f"data.augment={'flip' if flip else 'none'}",
    )  # fmt: skip
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        run(recipe)
    seconds = time.perf_counter() - started
    return seconds, json.loads((out / "metrics.json").read_text())


# --- preprocessing ------------------------------------------------------------------------------------


def example_transform():
    """transformers' image-classification example: torchvision transforms on each PIL image."""
    return Compose([RandomResizedCrop((224, 224)), RandomHorizontalFlip(), ToTensor(), Normalize(MEAN, STD)])


def hf_tl_preprocess() -> Preprocess:
    return Preprocess((224, 224), "bilinear", tuple(MEAN), tuple(STD))


def transforms_per_second(images: list, batch: int) -> dict[str, float]:
    """Preprocessing alone, from the same decoded images to a batch of pixel values, both sides."""
    transform, preprocess = example_transform(), hf_tl_preprocess()
    chunks = [images[i : i + batch] for i in range(0, len(images), batch)]

    def example():
        return [torch.stack([transform(image.convert("RGB")) for image in chunk]).shape for chunk in chunks]

    def ours():
        return [preprocess(torch.stack([to_uint8(i) for i in chunk]), draw_flips(len(chunk))).shape for chunk in chunks]

    return {
        "hf_tl": _images_per_second(ours, len(images)),
        "transformers_example": _images_per_second(example, len(images)),
    }


def image_processor_per_second(images: list, batch: int) -> dict[str, float]:
    """hf_tl against transformers' own image processor (torchvision-backed in v5) called on a batch of images."""
    processor = ViTImageProcessor(size={"height": 224, "width": 224}, image_mean=MEAN, image_std=STD)
    preprocess = hf_tl_preprocess()
    chunks = [images[i : i + batch] for i in range(0, len(images), batch)]

    def theirs():
        return [processor(images=chunk, return_tensors="pt").pixel_values.shape for chunk in chunks]

    def ours():
        return [preprocess(torch.stack([to_uint8(i) for i in chunk]), draw_flips(len(chunk))).shape for chunk in chunks]

    return {"hf_tl": _images_per_second(ours, len(images)), "image_processor": _images_per_second(theirs, len(images))}


def pipeline_per_second(dataset: Dataset, batch: int) -> dict[str, float]:
    """The same with the data loader: decoding PNGs from the dataset counted on both sides."""
    transform = example_transform()

    def train_transforms(example_batch):
        example_batch["pixel_values"] = [transform(image.convert("RGB")) for image in example_batch["image"]]
        return example_batch

    def collate_fn(examples):
        return {
            "pixel_values": torch.stack([e["pixel_values"] for e in examples]),
            "labels": torch.tensor([e["label"] for e in examples]),
        }

    theirs = DataLoader(dataset.with_transform(train_transforms), batch_size=batch, collate_fn=collate_fn)
    ours = DataLoader(dataset.with_transform(image_transform("image", "label")), batch, collate_fn=collate_images)
    preprocess = hf_tl_preprocess()
    return {
        "hf_tl": _images_per_second(
            lambda: [preprocess(b["images"], draw_flips(len(b["labels"]))).shape for b in ours], len(dataset)
        ),
        "transformers_example": _images_per_second(lambda: [b["pixel_values"].shape for b in theirs], len(dataset)),
    }


def _images_per_second(one_pass, count: int, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        one_pass()
        best = min(best, time.perf_counter() - started)
    return count / best


# --- main -------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: under 5 minutes on a 2-core CPU")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args()
    sizes = (
        {"images": 800, "width": 192, "steps": 60, "batch": 32, "preprocess_images": 1024}
        if args.quick
        else {"images": 2000, "width": 256, "steps": 60, "batch": 32, "preprocess_images": 4096}
    )
    torch.manual_seed(0)
    result: dict = {"quick": args.quick, "sizes": sizes, "device": "cpu", "threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory(prefix="hf_tl-bench-") as tmp:
        tmp = Path(tmp)
        os.environ.setdefault("HF_TL_CACHE", str(tmp / "feature-cache"))
        data = tmp / "data"
        DatasetDict({"train": cifar_like(sizes["images"])}).save_to_disk(str(data))
        model = tiny_vit(tmp / "vit", image_size=32, width=sizes["width"])
        _say(args, "step overhead ...")
        step_data = tmp / "step-data"
        DatasetDict({"train": cifar_like(2 * sizes["steps"] * sizes["batch"])}).save_to_disk(str(step_data))
        # Alternate the two sides, so that a machine busy with something else slows both alike.
        bare_first = bare_step_seconds(model, sizes["steps"], sizes["batch"], 32)
        hf_tl_step = hf_tl_step_seconds(model, step_data, tmp / "steps", sizes["steps"], sizes["batch"])
        bare_step = min(bare_first, bare_step_seconds(model, sizes["steps"], sizes["batch"], 32))
        result["step_seconds"] = {"hf_tl": round(hf_tl_step, 5), "bare_pytorch": round(bare_step, 5)}
        result["step_overhead_ratio"] = round(hf_tl_step / bare_step, 3)
        _say(args, "10-epoch last_block runs, with and without the feature cache ...")
        # One short run first: the first run in a process pays one-time costs (plotting, metric modules).
        recipe = recipe_for(model, data, tmp / "warm-up", "training.epochs=1", "data.max_train_samples=64")
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            run(recipe)
        for hflip in (False, True):  # with flips the cache holds two views of each image: twice the prefix passes
            name = "cache_time_ratio" if not hflip else "cache_time_ratio_with_hflip"
            cached, cached_metrics = run_seconds(model, data, tmp / "cached", "true", sizes["batch"], hflip)
            uncached, uncached_metrics = run_seconds(model, data, tmp / "uncached", "false", sizes["batch"], hflip)
            result[name] = round(cached / uncached, 3)
            result[f"{name}_detail"] = {
                "run_seconds": {"cached": round(cached, 2), "uncached": round(uncached, 2)},
                "cache_prepare_seconds": cached_metrics["feature_cache"]["prepare_seconds"],
                "eval_accuracy": {
                    k: m["eval"]["accuracy"] for k, m in (("cached", cached_metrics), ("uncached", uncached_metrics))
                },
            }
        _say(args, "32 -> 224 preprocessing ...")
        images = cifar_like(sizes["preprocess_images"], seed=1)
        decoded = list(images["image"])
        for batch in (32, 64):
            rates = transforms_per_second(decoded, batch)
            result[f"images_per_second_batch_{batch}"] = {k: round(v) for k, v in rates.items()}
            ratio = round(rates["hf_tl"] / rates["transformers_example"], 2)
            result["preprocess_speedup" if batch == 32 else "preprocess_speedup_batch_64"] = ratio
        rates = image_processor_per_second(decoded, 32)
        result["vs_image_processor_images_per_second_batch_32"] = {k: round(v) for k, v in rates.items()}
        result["vs_image_processor_speedup"] = round(rates["hf_tl"] / rates["image_processor"], 2)
        rates = pipeline_per_second(images, 32)
        result["pipeline_images_per_second_batch_32"] = {k: round(v) for k, v in rates.items()}
        result["pipeline_speedup"] = round(rates["hf_tl"] / rates["transformers_example"], 2)
    result["targets_met"] = {k: _meets(result[k], *TARGETS[k]) for k in TARGETS}
    if args.json:
        print(json.dumps(result))
    else:
        for key, (op, target) in TARGETS.items():
            mark = "ok" if result["targets_met"][key] else "MISSED"
            print(f"{key:22s} {result[key]:>8}   target {op} {target}   {mark}")
        print(json.dumps({k: v for k, v in result.items() if k not in TARGETS and k != "targets_met"}, indent=1))


def _meets(value: float, op: str, target: float) -> bool:
    return value <= target if op == "<=" else value >= target


def _say(args, message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
