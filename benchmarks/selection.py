"""`hf-tl select` on the miniature zoo against fine-tuning the same backbones: do the quick scores rank them as
fine-tuning does, and at what fraction of its time?

The miniature zoo (recipes/zoos/miniature.yaml): tiny backbones of four families that hf_tl pretrained on digits
0-4. This ranks them on digits 5-9 (the quickstart's data, classes none of them has seen) with `hf-tl select`, then
fine-tunes every one with `last_block` and with `full` (`hf-tl sweep` on the study `select` wrote, top_k = all),
each command in its own process with a fresh feature cache. It prints both rankings, Kendall's tau between each
quick score and each fine-tuned accuracy, and the wall time of `select` against the fine-tunings'.

    python benchmarks/selection.py                       # the whole comparison, a table
    python benchmarks/selection.py --json                # one JSON object
    python benchmarks/selection.py --epochs 1 --zoo PATH # smaller: what the test suite runs

(Not benchmarks/select.py: a script's folder comes first on sys.path, and that name would hide the standard
library's `select`, which subprocess imports.)
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import tempfile
from pathlib import Path

from runs import REPO, run_measured
from scipy.stats import kendalltau

from hf_tl.config.resources import asset_path
from hf_tl.runs.folder import METRICS_FILE
from hf_tl.selection.ranking import RANKING_CSV, RANKING_PNG, SCORE_COLUMNS, STUDY_FILE
from hf_tl.selection.zoo import load_zoo
from hf_tl.studies.study import load_study
from hf_tl.studies.sweep import RUN_DIR, cell_dir

STRATEGIES = ("last_block", "full")
FINETUNE = ["training.batch_size=32", "training.lr=1e-3", "training.warmup_ratio=0.05", "training.scheduler=linear"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zoo", default="miniature", help="a shipped zoo or a zoo .yaml path")
    parser.add_argument("--dataset", default=str(asset_path("quickstart/digits-5-9")))
    parser.add_argument("--epochs", type=float, default=20, help="fine-tuning epochs (the quickstart's 20)")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="held out of the training split")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--figure", type=Path, default=None, help="copy select's ranking.png here")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="hf_tl-select-bench-"))
    report = measure(args, workdir)
    if args.figure:
        args.figure.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(workdir / "selection" / RANKING_PNG, args.figure)
    print(json.dumps(report, indent=1) if args.json else table(report))


def measure(args: argparse.Namespace, workdir: Path) -> dict:
    env = {"HF_TL_CACHE": str(workdir / "features")}  # nothing reused from earlier runs
    selection = workdir / "selection"
    candidates = zoo_size(args.zoo)
    select = run_measured(
        "select",
        ["-m", "hf_tl", "select", f"dataset={args.dataset}", f"zoo={args.zoo}", f"out={selection}",
         f"val_fraction={args.val_fraction}", f"top_k={candidates}"],
        workdir / "select.log", env,
    )  # fmt: skip
    rows = [r for r in read_csv(selection / RANKING_CSV) if r["status"] == "ok"]
    seconds = {"select": select.wall_seconds}
    for strategy in STRATEGIES:
        sweep = run_measured(
            strategy,
            ["-m", "hf_tl", "sweep", f"study={selection / STUDY_FILE}", f"only=strategy={strategy}",
             f"out={workdir / 'sweep'}", f"training.epochs={args.epochs}", *FINETUNE],
            workdir / f"sweep-{strategy}.log", env,
        )  # fmt: skip
        seconds[strategy] = sweep.wall_seconds
        add_finetuned(rows, selection / STUDY_FILE, workdir / "sweep", strategy)
    return {
        "zoo": args.zoo,
        "dataset": args.dataset,
        "epochs": args.epochs,
        "rows": rows,
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "time_ratio_vs_last_block": round(seconds["select"] / seconds["last_block"], 3),
        "time_ratio_vs_full": round(seconds["select"] / seconds["full"], 3),
        "kendall_tau": {score: {s: tau(rows, score, f"{s}_accuracy") for s in STRATEGIES} for score in SCORE_COLUMNS},
    }


def zoo_size(zoo: str) -> int:
    return len(load_zoo(zoo).candidates)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def add_finetuned(rows: list[dict], study: Path, sweep: Path, strategy: str) -> None:
    """Each row's validation accuracy after fine-tuning with `strategy`, from the sweep's run folders."""
    for cell in load_study(str(study)).cells:
        if cell.strategy.key != strategy:
            continue
        metrics = cell_dir(sweep, cell) / RUN_DIR / METRICS_FILE
        row = next(r for r in rows if r["model"] == cell.backbone.model)
        row[f"{strategy}_accuracy"] = json.loads(metrics.read_text())["eval"]["accuracy"]


def tau(rows: list[dict], score: str, finetuned: str) -> float | None:
    """Kendall's tau-b between a quick score and a fine-tuned accuracy over the finished candidates."""
    pairs = [(float(r[score]), float(r[finetuned])) for r in rows if r.get(finetuned) is not None]
    if len(pairs) < 2:
        return None
    scores, accuracies = zip(*pairs, strict=True)
    value = kendalltau(scores, accuracies).statistic
    return None if value != value else round(float(value), 3)  # NaN: one side constant


def table(report: dict) -> str:
    lines = [
        f"zoo {report['zoo']} on {report['dataset']}, fine-tuned {report['epochs']:g} epochs",
        "",
        f"{'model':<28} {'probe':>6} {'k-NN':>6} {'LogME':>7} {'GFLOPs':>9} {'last_block':>10} {'full':>6}",
    ]
    for row in report["rows"]:
        lines.append(
            f"{Path(row['model']).name:<28} {float(row['probe_accuracy']):6.3f} {float(row['knn_accuracy']):6.3f} "
            f"{float(row['logme']):7.3f} {float(row['gflops']):9.5f} {row['last_block_accuracy']:10.3f} "
            f"{row['full_accuracy']:6.3f}"
        )
    lines += ["", "Kendall's tau, quick score against fine-tuned accuracy:"]
    for score, taus in report["kendall_tau"].items():
        lines.append(f"  {score:<15} " + "  ".join(f"{s} {v if v is not None else 'n/a'}" for s, v in taus.items()))
    s = report["seconds"]
    lines += [
        "",
        f"wall time: select {s['select']} s; fine-tuning with last_block {s['last_block']} s, full {s['full']} s",
        f"select / last_block = {report['time_ratio_vs_last_block']}; select / full = {report['time_ratio_vs_full']}",
        f"(repository: {REPO})",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
