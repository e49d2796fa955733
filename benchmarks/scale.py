"""`python benchmarks/scale.py --data DIR [--train 50000 --eval 10000] [--json]`: hf_tl at CIFAR-10 scale, by phase.

Builds once, under DIR, a CIFAR-10-shaped dataset (`cifar_shaped.py`: 32x32 PNG images in the Hub's
parquet layout, columns `img`/`label` as `uoft-cs/cifar10` has them; synthetic pictures), then runs
the quickstart backbone (a 4-block ViT, `last_block`) on it for one epoch, each run its own
`python -m hf_tl.train` process:

- first: a fresh HF home (datasets cache, feature-cache folder), as a user's first run;
- again: the same command with the same HF home, as a rerun or a sweep's next cell;
- smoke: the same with `training.max_steps=1`.

For each run it prints the seconds of every phase, as hf_tl measured them itself (metrics.json
`timings.phases`: load, image check, model, cache probe, cache build, training, evaluation,
train-set metrics, save, card and plots; `other` is what no phase holds, mostly imports), the
wall time and the peak RSS. `--with-trainer` also runs `plain_trainer.py` (transformers' example
script's way: per-image torchvision transforms, Trainer) on the same job and prints the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from cifar_shaped import cifar_shaped
from runs import Measured, hf_tl_run, machine, plain_trainer_run, table

PHASES = [
    "load",
    "image_check",
    "model",
    "cache_probe",
    "cache_build",
    "training",
    "eval_metrics",
    "train_metrics",
    "save",
    "card",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="folder to build (once) and keep the dataset in")
    parser.add_argument("--train", type=int, default=50_000, help="training images (CIFAR-10: 50,000)")
    parser.add_argument("--eval", type=int, default=10_000, help="test images (CIFAR-10: 10,000)")
    parser.add_argument("--batch-size", type=int, default=32, help="training.batch_size (the quickstart's: 32)")
    parser.add_argument("--runs", default="first,again,smoke", help="which runs, comma-separated")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="an hf_tl override, repeatable")
    parser.add_argument("--with-trainer", action="store_true", help="also run plain_trainer.py on the same job")
    parser.add_argument(
        "--threads", type=int, help="OMP_NUM_THREADS for every run (default: torch's own choice, all cores)"
    )
    parser.add_argument("--workdir", type=Path, help="where run folders and logs go (default: a temporary folder)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args()
    print(f"machine: {machine()}", flush=True)
    started = time.perf_counter()
    data = cifar_shaped(args.data, args.train, args.eval)
    print(f"dataset: {data} ({time.perf_counter() - started:.1f} s)", flush=True)
    with tempfile.TemporaryDirectory(prefix="hf_tl-scale-") as tmp:
        work = args.workdir or Path(tmp)
        results = measure(data, work, args)
    report = {"machine": machine(), "train": args.train, "eval": args.eval, "threads": args.threads}
    report["runs"] = [r.to_dict() for r in results]
    if args.json:
        print(json.dumps(report, indent=1))
        return
    print(table(results, PHASES))
    for r in results:
        cache = r.extra.get("feature_cache") or {}
        keys = ("location", "reused", "probe", "cached_train_images", "kept_on_disk")
        print(f"{r.name}: feature cache " + ", ".join(f"{k}={cache.get(k)}" for k in keys if k in cache))
    trainer = next((r for r in results if r.name == "plain Trainer"), None)
    if trainer:
        first = next(r for r in results if r.name == "first")
        print(f"hf_tl first run / plain Trainer: {first.wall_seconds / trainer.wall_seconds:.3f}")


def measure(data: Path, work: Path, args: argparse.Namespace) -> list[Measured]:
    env = {"HF_HOME": str(work / "hf-home"), "HF_TL_CACHE": str(work / "hf-home" / "features")}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    job = [
        "recipe=quickstart",
        f"data.dataset={data}",
        "data.eval_split=test",
        "strategy.kind=last_block",
        "training.epochs=1",
        f"training.batch_size={args.batch_size}",
        *args.set,
    ]
    wanted = args.runs.split(",")
    results = []
    for name, extra in (("first", []), ("again", []), ("smoke", ["training.max_steps=1", "training.warmup_ratio=0"])):
        if name in wanted:
            print(f"running {name} ...", flush=True)
            results.append(hf_tl_run(name, job + extra, work / f"run-{name}", env))
    if args.with_trainer:
        print("running the plain Trainer script ...", flush=True)
        results.append(plain_trainer(data, work, args, env))
    return results


def plain_trainer(data: Path, work: Path, args: argparse.Namespace, env: dict[str, str]) -> Measured:
    from hf_tl.config.resources import asset_path

    flags = [
        f"--model={asset_path('quickstart/backbone')}", f"--data={data}", "--eval-split=test",
        "--strategy=last_block", "--epochs=1", f"--batch-size={args.batch_size}", "--lr=2e-3",
    ]  # fmt: skip
    env = {**env, "HF_HOME": str(work / "hf-2")}
    return plain_trainer_run(work / "plain-trainer", work / "plain-trainer.log", env, *flags)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
