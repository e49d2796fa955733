"""Classification metrics at scale: hf_tl's numpy path against the `evaluate` round trip and a full argsort.

    python benchmarks/metrics.py [--examples 20000] [--classes 1000] [--repeat 3] [--json]

Seeded random float32 logits (the true class raised by 2, so accuracy is neither 0 nor 1) and class ids,
the same in every method:

- compute_metrics: `hf_tl.training.metrics.compute_metrics(EvalPrediction(...))`, what the Trainer calls
  (bincount confusion counts, top-5 without a sort).
- evaluate: `evaluate.load(str(hf_tl.training.metrics.MODULE)).compute(predictions=..., references=...)`, the path
  the package offered before: a load, then the logits through Arrow and back (the module computes with the
  same numpy function, so the difference is the round trip).
- former_argsort: the implementation before the numpy rewrite, written out below as the reference it is
  (`np.add.at` confusion counts, a full `argsort` of every row for top-5).

Each method runs in its own process (a fresh HF_HOME, offline): one warm-up call (for `evaluate`, the copy of the
module into HF_HOME), then `--repeat` timed calls, the median kept. Memory, per method, two ways: the peak
resident-set growth (`resource.getrusage(...).ru_maxrss` after the warm-up call less before it: everything the
process touched, Arrow's buffers included) and the peak of the Python allocators under `tracemalloc` over one
more call (numpy arrays and Python objects; not Arrow's own memory pool).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc

import numpy as np
from runs import OFFLINE, machine

METHODS = ("compute_metrics", "evaluate", "former_argsort")
SEED = 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=20000, help="rows of logits")
    parser.add_argument("--classes", type=int, default=1000, help="columns of logits (top-5 needs more than 5)")
    parser.add_argument("--repeat", type=int, default=3, help="timed calls per method after a warm-up; the median")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.examples, args.classes, args.repeat)))
        return
    with tempfile.TemporaryDirectory(prefix="hf_tl-metrics-bench-") as hf_home:
        results = {method: child(method, args, hf_home) for method in METHODS}
    agree(results)
    hf_tl = results["compute_metrics"]
    report = {
        "examples": args.examples,
        "classes": args.classes,
        "repeat": args.repeat,
        "methods": results,
        "evaluate_vs_compute_metrics": round(results["evaluate"]["seconds"] / hf_tl["seconds"], 2),
        "former_argsort_vs_compute_metrics": round(results["former_argsort"]["seconds"] / hf_tl["seconds"], 2),
        "machine": machine(),
    }
    print(json.dumps(report, indent=2) if args.json else table(report))


def child(method: str, args: argparse.Namespace, hf_home: str) -> dict:
    """One method in its own process, so its peak resident memory is its own."""
    command = [sys.executable, __file__, f"--child={method}", f"--examples={args.examples}"]
    command += [f"--classes={args.classes}", f"--repeat={args.repeat}"]
    env = {**os.environ, **OFFLINE, "HF_EVALUATE_OFFLINE": "1", "HF_HOME": hf_home}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.exit(f"{method} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def agree(results: dict) -> None:
    """The three give the same scalars: a speed comparison of different answers would mean nothing."""
    expected = results["compute_metrics"]["scalars"]
    for method, result in results.items():
        for key in ("accuracy", "macro_f1", "top5_accuracy", "num_examples"):
            if key in expected and abs(result["scalars"][key] - expected[key]) > 1e-12:
                sys.exit(f"{method} gives {key} {result['scalars'][key]}, compute_metrics {expected[key]}")


def measure(method: str, examples: int, classes: int, repeat: int) -> dict:
    call = method_call(method)
    logits, references = data(examples, classes)
    before = peak_rss_mib()
    result = call(logits, references)  # the warm-up: imports done lazily, evaluate's copy into HF_HOME
    rss_growth = peak_rss_mib() - before
    seconds = []
    for _ in range(repeat):
        started = time.perf_counter()
        call(logits, references)
        seconds.append(time.perf_counter() - started)
    tracemalloc.start()
    call(logits, references)
    traced_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {
        "seconds": round(statistics.median(seconds), 6),
        "all_seconds": [round(s, 6) for s in seconds],
        "peak_rss_growth_mib": round(rss_growth, 1),
        "tracemalloc_peak_mib": round(traced_peak / 2**20, 1),
        "scalars": {k: v for k, v in result.items() if not isinstance(v, list | dict)},
    }


def method_call(method: str):
    """The function a method times, its imports done here (not timed)."""
    if method == "compute_metrics":
        from transformers import EvalPrediction

        from hf_tl.training.metrics import compute_metrics

        return lambda logits, references: compute_metrics(EvalPrediction(predictions=logits, label_ids=references))
    if method == "evaluate":
        import evaluate

        from hf_tl.training.metrics import MODULE

        return lambda logits, references: evaluate.load(str(MODULE)).compute(predictions=logits, references=references)
    return former_argsort_metrics


def data(examples: int, classes: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(SEED)
    references = rng.integers(0, classes, examples)
    logits = rng.standard_normal((examples, classes), dtype=np.float32)
    logits[np.arange(examples), references] += 2.0
    return logits, references


def former_argsort_metrics(predictions, references) -> dict:
    """The reference: hf_tl's metrics before the numpy rewrite (commit 501554f's parent), as they were."""
    logits = np.asarray(predictions, dtype=np.float64)
    refs = np.asarray(references)
    num_classes = logits.shape[1]
    predicted = logits.argmax(axis=1)
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (refs, predicted), 1)
    true_positive = np.diag(counts).astype(np.float64)
    support = counts.sum(axis=1)
    predicted_count = counts.sum(axis=0)
    precision = np.divide(true_positive, predicted_count, out=np.zeros(num_classes), where=predicted_count > 0)
    recall = np.divide(true_positive, support, out=np.zeros(num_classes), where=support > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros(num_classes), where=denominator > 0)
    present = support > 0
    seen = present | (predicted_count > 0)
    result = {
        "accuracy": float((predicted == refs).mean()),
        "macro_f1": float(f1[seen].mean()),
        "per_class_accuracy": [float(r) if s else None for r, s in zip(recall, present, strict=True)],
        "num_examples": int(len(refs)),
    }
    if num_classes > 5:
        top5 = np.argsort(-logits, axis=1)[:, :5]
        result["top5_accuracy"] = float((top5 == refs[:, None]).any(axis=1).mean())
    return result


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def table(report: dict) -> str:
    lines = [
        f"{report['examples']} examples x {report['classes']} classes, float32 logits; median of {report['repeat']}",
        f"{'method':<16} {'seconds':>9} {'x hf_tl':>8} {'RSS growth MiB':>15} {'tracemalloc MiB':>16}",
    ]
    base = report["methods"]["compute_metrics"]["seconds"]
    for name, result in report["methods"].items():
        lines.append(
            f"{name:<16} {result['seconds']:>9.4f} {result['seconds'] / base:>8.2f} "
            f"{result['peak_rss_growth_mib']:>15.1f} {result['tracemalloc_peak_mib']:>16.1f}"
        )
    lines.append(f"evaluate ÷ compute_metrics: {report['evaluate_vs_compute_metrics']:.2f}")
    lines.append(f"former argsort ÷ compute_metrics: {report['former_argsort_vs_compute_metrics']:.2f}")
    lines.append(f"machine: {report['machine']}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
