"""The benchmarks run, at a tiny size on the CPU: so CI knows `scale.py` and `gpu_check.py --tiny` work before
anyone spends an hour of CPU or a lease of GPU time on them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO

BENCHMARKS = REPO / "benchmarks"


def benchmark(script: str, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args], cwd=BENCHMARKS, capture_output=True, text=True, timeout=1200
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def last_json(stdout: str) -> dict:
    return json.loads(stdout[stdout.index("\n{") + 1 : stdout.rindex("}") + 1])


@pytest.mark.slow
def test_scale_benchmark_reports_every_phase_of_each_run(tmp_path):
    result = benchmark(
        "scale.py", f"--data={tmp_path / 'data'}", "--train=40", "--eval=20", "--batch-size=8", "--with-trainer",
        f"--workdir={tmp_path / 'work'}", "--json",
    )  # fmt: skip
    report = last_json(result.stdout)
    runs = {r["name"]: r for r in report["runs"]}
    assert list(runs) == ["first", "again", "smoke", "plain Trainer"]
    for name in ("first", "again", "smoke"):
        phases = runs[name]["phases"]
        for phase in ("load", "image_check", "model", "cache_probe", "cache_build", "training", "eval_metrics"):
            assert phases[phase] >= 0, (name, phase)
        assert runs[name]["peak_rss_mib"] > 0 and runs[name]["wall_seconds"] > 0
    assert runs["smoke"]["feature_cache"]["cached_train_images"] == 8  # one step of 8
    assert runs["first"]["feature_cache"]["cached_train_images"] == 40
    assert runs["plain Trainer"]["phases"]["training"] > 0
    data = tmp_path / "data" / "cifar10-shaped-40-20-seed0"
    assert sorted(p.name for p in (data / "plain_text").iterdir()) == [
        "test-00000-of-00001.parquet",
        "train-00000-of-00001.parquet",
    ]


@pytest.mark.slow
def test_gpu_check_runs_tiny_on_the_cpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    result = benchmark("gpu_check.py", "--tiny", f"--workdir={tmp_path / 'work'}", f"--json-out={out}")
    report = json.loads(out.read_text())
    assert report["device"] == "CPU" and report["matmul_peak_tflops"] > 0
    hf, plain = report["hf_tl"], report["plain_trainer"]
    assert hf["feature_cache"]["used"] and hf["epochs"] == 2
    for key in ("cache_build_images_per_second", "cache_build_mfu", "training_images_per_second", "training_mfu"):
        assert hf[key] > 0, key
    assert plain["training_images_per_second"] > 0 and plain["trainable_parameters"] > 0
    assert report["ratio_training_images_per_second"] > 0
    assert "training images/s, hf_tl / plain Trainer" in result.stdout  # the table


def test_cli_startup_benchmark_times_help_and_a_typo_against_importing_torch():
    result = json.loads(benchmark("cli_startup.py", "--repeat=1", "--json").stdout)
    assert set(result["median_seconds"]) == {"help", "typo", "import_torch"}  # and each exited as it must
    assert result["help_vs_import_torch"] > 0 and result["typo_vs_import_torch"] > 0


@pytest.mark.slow
def test_metrics_benchmark_times_the_three_paths_at_a_tiny_size():
    result = benchmark("metrics.py", "--examples=200", "--classes=20", "--repeat=1", "--json")
    report = json.loads(result.stdout)
    assert list(report["methods"]) == ["compute_metrics", "evaluate", "former_argsort"]
    for name, method in report["methods"].items():
        assert method["seconds"] > 0 and method["tracemalloc_peak_mib"] > 0, name
        assert method["scalars"]["num_examples"] == 200 and "top5_accuracy" in method["scalars"], name
    assert report["evaluate_vs_compute_metrics"] > 0 and report["former_argsort_vs_compute_metrics"] > 0


@pytest.mark.slow
def test_augment_benchmark_trains_each_variant_and_says_whether_the_cache_ran(tmp_path):
    result = benchmark(
        "augment.py", "--variants", "flip", "crop_flip", "--seeds", "0", "--epochs=1", f"--workdir={tmp_path}", "--json"
    )
    flip, crop = json.loads(result.stdout)
    assert (flip["variant"], flip["feature_cache"]) == ("flip", True)  # flips are cached (both views)
    assert (crop["variant"], crop["feature_cache"]) == ("crop_flip", False)  # random crops cannot be
    assert 0 <= flip["mean_accuracy"] <= 1 and 0 <= crop["mean_accuracy"] <= 1


@pytest.mark.slow
def test_select_benchmark_ranks_fine_tunes_and_compares(tiny_vit, tiny_resnet, digits_dir, tmp_path):
    zoo = tmp_path / "zoo.yaml"
    zoo.write_text(
        "description: two tiny backbones\nmodels:\n"
        f"  - {{id: '{tiny_vit}', family: vit, note: tiny ViT}}\n"
        f"  - {{id: '{tiny_resnet}', family: resnet, note: tiny ResNet}}\n"
    )
    result = benchmark(
        "selection.py", f"--zoo={zoo}", f"--dataset={digits_dir}", "--epochs=1", f"--workdir={tmp_path / 'work'}",
        f"--figure={tmp_path / 'ranking.png'}", "--json",
    )  # fmt: skip
    report = json.loads(result.stdout)
    assert {row["model"] for row in report["rows"]} == {str(tiny_vit), str(tiny_resnet)}
    for row in report["rows"]:
        assert 0 <= row["last_block_accuracy"] <= 1 and 0 <= row["full_accuracy"] <= 1
    assert set(report["kendall_tau"]) == {"probe_accuracy", "knn_accuracy", "logme"}
    for taus in report["kendall_tau"].values():
        assert all(v is None or -1 <= v <= 1 for v in taus.values())
    seconds = report["seconds"]
    assert report["time_ratio_vs_last_block"] == pytest.approx(seconds["select"] / seconds["last_block"], rel=0.02)
    assert (tmp_path / "ranking.png").read_bytes()[:4] == b"\x89PNG"
