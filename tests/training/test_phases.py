"""What a run costs, as metrics.json records it: seconds per phase, measured by hf_tl; and the fixed costs a user
can switch off (the pass over the training set for the train-set metrics)."""

from __future__ import annotations

import json
import time

import pytest

from hf_tl.config.recipe import load_recipe
from hf_tl.runs.folder import CARD_FILE, METRICS_FILE
from hf_tl.training import phases
from hf_tl.training.run import run

RUN_PHASES = ["load", "image_check", "model", "training", "eval_metrics", "train_metrics", "save", "card"]


def tiny_run(model_dir, data_dir, out, *overrides) -> tuple[dict, float]:
    recipe = load_recipe(
        "quickstart",
        [f"model.name={model_dir}", f"data.dataset={data_dir}", "training.epochs=1", "training.batch_size=16",
         f"output.dir={out}", *overrides],
    )  # fmt: skip
    started = time.perf_counter()
    run(recipe)
    return json.loads((out / METRICS_FILE).read_text()), time.perf_counter() - started


def test_phases_nest_and_count_each_second_once(monkeypatch):
    clock = iter([0.0, 1.0, 3.0, 4.0, 10.0, 11.0, 12.0])
    monkeypatch.setattr(phases.time, "perf_counter", lambda: next(clock))
    phases.reset()
    with phases.timed("load"):  # 0 .. 4, of which 1 .. 3 is the image check
        with phases.timed("image_check"):
            pass
    with phases.timed("training"):  # 10 .. 11
        pass
    with phases.timed("image_check"):  # 12 .. 13: a phase entered twice adds up
        monkeypatch.setattr(phases.time, "perf_counter", lambda: 13.0)
    assert phases.seconds() == {"load": 2.0, "image_check": 3.0, "training": 1.0}


def test_metrics_json_times_every_phase_of_a_run(tiny_vit, digits_dir, tmp_path):
    metrics, wall = tiny_run(tiny_vit, digits_dir, tmp_path, "strategy.kind=last_block")
    seconds = metrics["timings"]["phases"]
    assert list(seconds) == ["load", "image_check", "model", "cache_probe", "cache_build", *RUN_PHASES[3:]]
    assert all(value >= 0 for value in seconds.values())
    assert sum(seconds.values()) <= wall  # each second counted once
    assert seconds["training"] == pytest.approx(metrics["timings"]["train_wall_seconds"], abs=0.1)


def test_train_metrics_false_skips_the_pass_over_the_training_set(tiny_vit, digits_dir, tmp_path):
    metrics, _ = tiny_run(tiny_vit, digits_dir, tmp_path, "strategy.kind=full", "training.train_metrics=false")
    assert metrics["train"] is None and metrics["eval"]["accuracy"] is not None
    assert "train_metrics" not in metrics["timings"]["phases"]
    row = next(line for line in (tmp_path / CARD_FILE).read_text().splitlines() if line.startswith("| Accuracy |"))
    assert row.endswith("| - |")  # the card renders, its train column empty
