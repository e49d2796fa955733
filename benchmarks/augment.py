"""What train-time augmentation does to accuracy on the digits miniature (the quickstart), side by side.

Each variant is the quickstart recipe (a tiny ViT pretrained by hf_tl on digits 0-4, fine-tuned on digits 5-9)
with one change, trained for each seed in its own process (`runs.run_measured`). It prints mean and spread of
the validation accuracy, the wall time, and whether the feature cache ran (random crops and mixing turn it off).
A tiny CPU run: it shows the keys working and their direction on 8x8 images, not what they do on photos.

    python benchmarks/augment.py                       # every variant, seeds 0 1 2
    python benchmarks/augment.py --variants none flip --seeds 0 --epochs 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from runs import run_measured

VARIANTS = {
    "none": ["data.augment=none"],
    "flip": ["data.augment=flip"],
    "crop_flip": ["data.augment=crop_flip"],
    "trivialaugment": ["data.augment=trivialaugment"],
    "flip + label_smoothing 0.1": ["data.augment=flip", "training.label_smoothing=0.1"],
    "flip + mixup 0.2": ["data.augment=flip", "training.mixup=0.2"],
    "crop_flip + mixup 0.2 + cutmix 1.0": ["data.augment=crop_flip", "training.mixup=0.2", "training.cutmix=1.0"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS), metavar="NAME")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=float, default=None, help="override the quickstart's 20 epochs")
    parser.add_argument("--strategy", default="last_block", help="strategy.kind for every variant")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="hf_tl-augment-"))
    rows = [measure(name, args, workdir) for name in args.variants]
    print(json.dumps(rows, indent=1) if args.json else table(rows, args))


def measure(name: str, args: argparse.Namespace, workdir: Path) -> dict:
    accuracies, seconds, cached = [], [], set()
    for seed in args.seeds:
        folder = workdir / f"{name.replace(' ', '_')}-seed{seed}"
        overrides = [*VARIANTS[name], f"strategy.kind={args.strategy}", f"training.seed={seed}"]
        overrides += [f"training.epochs={args.epochs:g}"] if args.epochs else []
        argv = ["-m", "hf_tl.train", "recipe=quickstart", *overrides, f"output.dir={folder}", "output.overwrite=true"]
        measured = run_measured(name, argv, workdir / "logs" / f"{folder.name}.log")
        metrics = json.loads((folder / "metrics.json").read_text())
        accuracies.append(metrics["eval"]["accuracy"])
        seconds.append(measured.wall_seconds)
        cached.add(bool(metrics["feature_cache"].get("used")))
    return {
        "variant": name,
        "overrides": VARIANTS[name],
        "accuracies": accuracies,
        "mean_accuracy": statistics.mean(accuracies),
        "spread": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
        "mean_wall_seconds": statistics.mean(seconds),
        "feature_cache": cached.pop() if len(cached) == 1 else "mixed",
    }


def table(rows: list[dict], args: argparse.Namespace) -> str:
    epochs = f"{args.epochs:g} epochs" if args.epochs else "the recipe's 20 epochs"
    lines = [
        f"quickstart (digits 5-9, strategy {args.strategy}, {epochs}), seeds {' '.join(map(str, args.seeds))}",
        "| variant | eval accuracy (mean ± sd) | wall s per run | feature cache |",
        "|---|---|---|---|",
    ]
    for row in rows:
        cache = {True: "on", False: "off"}.get(row["feature_cache"], row["feature_cache"])
        lines.append(
            f"| {row['variant']} | {row['mean_accuracy']:.3f} ± {row['spread']:.3f} | "
            f"{row['mean_wall_seconds']:.1f} | {cache} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
