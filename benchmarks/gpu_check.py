"""`python benchmarks/gpu_check.py [--tiny] [--json-out FILE]`: deit_lastblock at real size on one GPU, in one command.

Made to finish in under 8 minutes on one H100 or H200. In one process it measures, then reports
as a table and as JSON:

1. the card's bf16 matrix-multiply peak (8192^3 products, CUDA events, median of 10 after 3 warm-ups);
2. `deit_lastblock` at real size: DeiT-B distilled from its published config (the fixture in
   tests/fixtures/hub, else DeiTConfig with the published values), random weights
   (`model.weights=none`), on CIFAR-10-shaped data (`cifar_shaped.py`: 50,000 + 10,000 PNGs, 32x32,
   upscaled to 224), bf16, batch 256 (halved until it fits), 10 epochs, through
   `python -m hf_tl.train`: images/s of the feature-cache build and of training, each as model-FLOPs
   utilisation against the measured peak, and the wall time of the whole run;
3. the same model trained as users do today: `plain_trainer.py` (transformers' Trainer over the same
   frozen model, with `run_image_classification.py`'s per-image torchvision transforms), bf16, the
   same batch and loader workers, for `--baseline-epochs` (1) epoch(s); its training images/s, and
   the ratio of hf_tl's to it, measured in the same run.

Model FLOPs are counted by torch.utils.flop_counter on one real forward and one real training step
(matrix products, convolutions and attention; what autograd actually runs for the frozen model):
the cache build's work per image is the forward of the frozen part, hf_tl's training step the rest,
the plain Trainer's step the whole forward plus the same backward.

`--tiny` runs the same code on the CPU at a tiny size (a 2-block DeiT, 64 + 32 images, 2 epochs,
fp32, the matmul peak in fp32), so it is known to work before any GPU time is spent.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from cifar_shaped import cifar_shaped
from runs import REPO, Measured, hf_tl_run, machine, plain_trainer_run

FIXTURE = REPO / "tests" / "fixtures" / "hub" / "facebook" / "deit-base-distilled-patch16-224"
DEIT_BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
DEIT_TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
FULL = {"train": 50_000, "eval": 10_000, "epochs": 10, "batch_size": 256, "image": 224, "matmul": 8192}
TINY = {"train": 64, "eval": 32, "epochs": 2, "batch_size": 8, "image": 32, "matmul": 512}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny run on the CPU, to know the script works")
    parser.add_argument("--data", type=Path, help="folder for the dataset (default: inside the work folder)")
    parser.add_argument("--workdir", type=Path, help="run folders and logs (default: a temporary folder)")
    parser.add_argument("--baseline-epochs", type=float, default=1.0, help="epochs of the plain Trainer run")
    parser.add_argument("--json-out", type=Path, help="also write the JSON report here")
    args = parser.parse_args()
    size = TINY if args.tiny else FULL
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    if not args.tiny and device.type != "cuda":
        sys.exit("gpu_check: no CUDA device here; --tiny runs the check on the CPU at a tiny size.")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hf_tl-gpu-check-") as tmp:
        work = args.workdir or Path(tmp)
        report = check(size, device, work, args)
    report["check_wall_seconds"] = round(time.perf_counter() - started, 1)
    text = json.dumps(report, indent=1)
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(text + "\n")
    print(text)
    print(summary(report))


def check(size: dict, device: torch.device, work: Path, args: argparse.Namespace) -> dict:
    report: dict = {"machine": machine(), "device": device_name(device), "torch": torch.__version__, "size": size}
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    peak = matmul_peak(device, size["matmul"], dtype)
    report["matmul_peak_tflops"] = float(f"{peak / 1e12:.4g}")
    report["matmul_dtype"] = str(dtype).removeprefix("torch.")
    say(f"matmul peak: {report['matmul_peak_tflops']} TFLOP/s ({report['matmul_dtype']})")
    data = cifar_shaped(args.data or work / "data", size["train"], size["eval"])
    model = deit(work / "deit", args.tiny)
    report["model"] = str(model)
    flops = model_flops(model, size["image"], device)
    report["gflops_per_image"] = {k: round(v / 1e9, 4) for k, v in flops.items()}
    precision = "bf16" if device.type == "cuda" else "fp32"
    workers = min(8, (os.cpu_count() or 2) // 2) if device.type == "cuda" else 0
    hf, batch = fitting(lambda b: hf_tl(model, data, size, b, precision, work), size["batch_size"])
    report["hf_tl"] = hf_tl_figures(hf, batch, flops, peak, size)
    plain, plain_batch = fitting(lambda b: plain_trainer(model, data, b, precision, workers, args, work), batch)
    report["plain_trainer"] = plain_figures(plain, plain_batch, flops, peak)
    report["ratio_training_images_per_second"] = round(
        report["hf_tl"]["training_images_per_second"] / report["plain_trainer"]["training_images_per_second"], 2
    )
    return report


def matmul_peak(device: torch.device, n: int, dtype: torch.dtype) -> float:
    """FLOP/s of an n x n x n product on random data: the median of 10 timed products after 3 warm-ups."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    times = []
    for i in range(13):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            a @ b
            end.record()
            torch.cuda.synchronize()
            seconds = start.elapsed_time(end) / 1000
        else:
            t = time.perf_counter()
            a @ b
            seconds = time.perf_counter() - t
        if i >= 3:
            times.append(seconds)
    return 2 * n**3 / statistics.median(times)


def deit(folder: Path, tiny: bool) -> Path:
    """DeiT-B distilled's published config (the test fixture) or DeiTConfig with its values; tiny: 2 blocks of 32."""
    if not tiny and (FIXTURE / "config.json").exists():
        return FIXTURE
    from transformers import DeiTConfig, DeiTImageProcessor

    image = 32 if tiny else 224
    config = DeiTConfig(
        **(DEIT_TINY if tiny else DEIT_BASE),
        image_size=image,
        patch_size=8 if tiny else 16,
        layer_norm_eps=1e-12,
        architectures=["DeiTForImageClassificationWithTeacher"],
    )
    config.save_pretrained(folder)
    crop = {"height": image, "width": image}
    size = crop if tiny else {"height": 256, "width": 256}
    DeiTImageProcessor(size=size, crop_size=crop, resample=3).save_pretrained(folder)
    return folder


def model_flops(model_dir: Path, image: int, device: torch.device) -> dict[str, float]:
    """Per image: the whole forward, the frozen part's forward (what the cache computes once), a training step
    of the plain Trainer (whole forward, backward of what trains), and hf_tl's step on cached inputs."""
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import AutoConfig, DeiTForImageClassificationWithTeacher

    from hf_tl.config.recipe import StrategySection
    from hf_tl.strategies.freezing import apply_strategy

    config = AutoConfig.from_pretrained(model_dir, num_labels=10)
    model, summary = apply_strategy(DeiTForImageClassificationWithTeacher(config), StrategySection(kind="last_block"))
    model.to(device)
    pixels = torch.randn(2, 3, image, image, device=device)
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as forward:
        model(pixel_values=pixels)
    prefix = type(model).__name__
    counts = forward.get_flop_counts()
    trained_forward = sum(sum(counts.get(f"{prefix}.{m}", {}).values()) for m in summary.trainable_modules)
    model.train()
    with FlopCounterMode(display=False) as step:
        model(pixel_values=pixels).logits.float().sum().backward()
    whole, frozen = forward.get_total_flops() / 2, (forward.get_total_flops() - trained_forward) / 2
    return {"forward": whole, "frozen_forward": frozen, "plain_step": step.get_total_flops() / 2,
            "cached_step": step.get_total_flops() / 2 - frozen}  # fmt: skip


def fitting(run, batch: int) -> tuple[Measured, int]:
    """Run at `batch`; on CUDA running out of memory, again at half the batch."""
    while True:
        try:
            return run(batch), batch
        except RuntimeError as e:
            if "out of memory" not in str(e) or batch == 1:
                raise
            say(f"batch {batch} does not fit; trying {batch // 2}")
            batch //= 2


def hf_tl(model: Path, data: Path, size: dict, batch: int, precision: str, work: Path) -> Measured:
    say(f"hf_tl: deit_lastblock, batch {batch}, {size['epochs']} epochs ...")
    run_dir = work / f"hf_tl-{batch}"
    overrides = [
        "recipe=deit_lastblock",
        f"model.name={model}",
        "model.weights=none",
        f"data.dataset={data}",
        "data.eval_split=test",
        f"training.epochs={size['epochs']}",
        f"training.batch_size={batch}",
        f"training.precision={precision}",
    ]
    env = {"HF_HOME": str(work / "hf-home"), "HF_TL_CACHE": str(work / "hf-home" / "features")}
    return hf_tl_run("hf_tl", overrides, run_dir, env)


def hf_tl_figures(run: Measured, batch: int, flops: dict, peak: float, size: dict) -> dict:
    metrics = json.loads((Path(run.extra["run_dir"]) / "metrics.json").read_text())
    cache = metrics["feature_cache"]
    epochs = metrics["timings"]["train_seconds_per_epoch"]
    train_rate = metrics["num_train_examples"] / statistics.median(epochs)
    figures = {
        "batch_size": batch,
        "epochs": len(epochs),
        "wall_seconds_end_to_end": round(run.wall_seconds, 1),
        "phases": run.phases,
        "training_images_per_second": round(train_rate, 1),
        "training_mfu": round(flops["cached_step"] * train_rate / peak, 4),
        "train_seconds_per_epoch": epochs,
        "eval_accuracy": metrics["eval"]["accuracy"],
        "feature_cache": cache,
        "peak_rss_mib": round(run.peak_rss_mib),
    }
    if cache.get("used") and cache.get("build_seconds"):
        images = cache["views"] * cache["cached_train_images"] + size["eval"]
        rate = images / cache["build_seconds"]
        figures["cache_build_images_per_second"] = round(rate, 1)
        figures["cache_build_mfu"] = round(flops["frozen_forward"] * rate / peak, 4)
    return figures


def plain_trainer(model, data, batch, precision, workers, args, work: Path) -> Measured:
    say(f"plain Trainer: batch {batch}, {args.baseline_epochs:g} epoch(s), {workers} loader workers ...")
    flags = [
        f"--model={model}", f"--data={data}", "--eval-split=test", "--strategy=last_block",
        f"--epochs={args.baseline_epochs}", f"--batch-size={batch}", "--lr=1e-4", "--seed=42", f"--workers={workers}",
        *(["--bf16"] if precision == "bf16" else []), "--no-pretrained",
    ]  # fmt: skip
    env = {"HF_HOME": str(work / "hf-plain")}
    return plain_trainer_run(work / f"plain-{batch}", work / f"plain-{batch}.log", env, *flags)


def plain_figures(run: Measured, batch: int, flops: dict, peak: float) -> dict:
    timings = json.loads((Path(run.extra["output"]) / "timings.json").read_text())
    epochs = timings["train_seconds_per_epoch"]
    rate = timings["train_images"] / statistics.median(epochs)
    return {
        "batch_size": batch,
        "epochs": len(epochs),
        "wall_seconds_end_to_end": round(run.wall_seconds, 1),
        "phases": timings["phases"],
        "training_images_per_second": round(rate, 1),
        "training_mfu": round(flops["plain_step"] * rate / peak, 4),
        "train_seconds_per_epoch": epochs,
        "eval_accuracy": timings["eval_accuracy"],
        "trainable_parameters": timings["trainable_parameters"],
        "peak_rss_mib": round(run.peak_rss_mib),
    }


def summary(report: dict) -> str:
    hf, plain = report["hf_tl"], report["plain_trainer"]
    rows = [
        ("device", report["device"]),
        (f"matmul peak ({report['matmul_dtype']}), TFLOP/s", report["matmul_peak_tflops"]),
        ("hf_tl batch", hf["batch_size"]),
        ("hf_tl cache build, images/s", hf.get("cache_build_images_per_second", "-")),
        ("hf_tl cache build, MFU", hf.get("cache_build_mfu", "-")),
        ("hf_tl training, images/s", hf["training_images_per_second"]),
        ("hf_tl training, MFU", hf["training_mfu"]),
        (f"hf_tl {hf['epochs']} epochs end to end, s", hf["wall_seconds_end_to_end"]),
        ("plain Trainer training, images/s", plain["training_images_per_second"]),
        ("plain Trainer training, MFU", plain["training_mfu"]),
        (f"plain Trainer {plain['epochs']} epoch(s) end to end, s", plain["wall_seconds_end_to_end"]),
        ("training images/s, hf_tl / plain Trainer", report["ratio_training_images_per_second"]),
        ("whole check, s", report.get("check_wall_seconds", "-")),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"


def say(message: str) -> None:
    print(f"gpu_check: {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
