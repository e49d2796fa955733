"""`python benchmarks/vs_trainer.py --data DIR [--repeat 2] [--json]`: hf_tl against a plain Trainer script.

The issue's job: a 2-epoch full fine-tune of a ViT-S/16 at 224x224 (random weights from its
config; no Hub) on 160 CIFAR-10-shaped training images (and 40 test images), batch 32. The same
job runs through `python -m hf_tl.train` and through `plain_trainer.py` (written as transformers'
`run_image_classification.py` does it), each in its own process, alternating, `--repeat` times.
hf_tl runs twice per round: as a user runs it (its defaults: the final pass over the training set
for the train-set metrics included) and with `training.train_metrics=false`, which does the work
the example script does. Prints each side's phases, wall and CPU seconds, and the ratios (best of
the repeats, the usual way to read timings on a shared machine).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from cifar_shaped import cifar_shaped
from runs import Measured, hf_tl_run, machine, plain_trainer_run, table

VIT_S = dict(
    hidden_size=384,
    num_hidden_layers=12,
    num_attention_heads=6,
    intermediate_size=1536,
    image_size=224,
    patch_size=16,
)
PHASES = ["load", "image_check", "model", "training", "eval_metrics", "train_metrics", "save", "card"]


def vit_s(folder: Path) -> Path:
    """ViT-S/16 from its config alone, saved with its image processor as a Hub checkpoint would be."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    if not (folder / "config.json").exists():
        torch.manual_seed(0)
        ViTForImageClassification(ViTConfig(**VIT_S, num_labels=10)).save_pretrained(folder)
        ViTImageProcessor(size={"height": 224, "width": 224}).save_pretrained(folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="folder to build (once) and keep the data in")
    parser.add_argument("--train", type=int, default=160)
    parser.add_argument("--eval", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument(
        "--threads", type=int, help="OMP_NUM_THREADS for every run (default: torch's own choice, all cores)"
    )
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    print(f"machine: {machine()}", flush=True)
    data = cifar_shaped(args.data, args.train, args.eval)
    model = vit_s(args.data / "vit-s16-224-random")
    with tempfile.TemporaryDirectory(prefix="hf_tl-vs-trainer-") as tmp:
        work = args.workdir or Path(tmp)
        rounds = [measure_round(data, model, work / f"round-{i}", args) for i in range(args.repeat)]
    best = {name: min((r[name] for r in rounds), key=lambda m: m.wall_seconds) for name in rounds[0]}
    report = {
        "machine": machine(),
        "job": f"full fine-tune, ViT-S/16 at 224, {args.train} train / {args.eval} test images, "
        f"{args.epochs} epochs, batch {args.batch_size}",
        "threads": args.threads,
        "rounds": [{name: m.to_dict() for name, m in r.items()} for r in rounds],
        "ratios": ratios(best),
    }
    if args.json:
        print(json.dumps(report, indent=1))
        return
    print(report["job"])
    print(table(list(best.values()), PHASES))
    for key, value in report["ratios"].items():
        print(f"{key}: {value}")


def measure_round(data: Path, model: Path, work: Path, args: argparse.Namespace) -> dict[str, Measured]:
    job = [
        "recipe=quickstart",
        f"model.name={model}",
        f"data.dataset={data}",
        "data.eval_split=test",
        "strategy.kind=full",
        f"training.epochs={args.epochs}",
        f"training.batch_size={args.batch_size}",
        "training.lr=5e-5",
        "training.warmup_ratio=0",
        "training.seed=42",
    ]
    env = {"HF_HOME": str(work / "hf-home")}  # each side starts from a fresh datasets cache
    threads = {"OMP_NUM_THREADS": str(args.threads)} if args.threads else {}
    env.update(threads)
    results = {}
    print("running hf_tl (defaults) ...", flush=True)
    results["hf_tl"] = hf_tl_run("hf_tl", job, work / "hf_tl", env)
    print("running hf_tl (training.train_metrics=false) ...", flush=True)
    results["hf_tl, no train metrics"] = hf_tl_run(
        "hf_tl, no train metrics", [*job, "training.train_metrics=false"], work / "hf_tl-no-train", env
    )
    print("running the plain Trainer script ...", flush=True)
    flags = [
        f"--model={model}", f"--data={data}", "--eval-split=test", "--strategy=full", f"--epochs={args.epochs}",
        f"--batch-size={args.batch_size}", "--lr=5e-5", "--seed=42",
    ]  # fmt: skip
    env = {"HF_HOME": str(work / "hf-home-plain"), **threads}
    plain = plain_trainer_run(work / "plain", work / "plain.log", env, *flags)
    results["plain Trainer"] = plain
    return results


def ratios(best: dict[str, Measured]) -> dict[str, float]:
    plain = best["plain Trainer"]
    out = {}
    for name in ("hf_tl", "hf_tl, no train metrics"):
        out[f"{name} / plain Trainer, wall"] = round(best[name].wall_seconds / plain.wall_seconds, 3)
        out[f"{name} / plain Trainer, CPU"] = round(best[name].cpu_seconds / plain.cpu_seconds, 3)
        out[f"{name} / plain Trainer, training phase"] = round(
            best[name].phases["training"] / plain.phases["training"], 3
        )
    return out


if __name__ == "__main__":
    main()
