"""Evaluations every few steps (training.args.eval_strategy=steps): each keeps its own step and epoch in metrics.json,
the card's table, the progress lines and the final line; an epoch's training seconds stay the epoch's."""

from __future__ import annotations

import contextlib
import io
import json
import re
from types import SimpleNamespace

import pytest
from transformers import TrainerState

from hf_tl.config.recipe import load_recipe
from hf_tl.hub.card import _evaluation_rows
from hf_tl.training import timing
from hf_tl.training.run import run
from hf_tl.training.timing import EpochTimer, best_checkpoint_note, eval_seconds_per_epoch, step_line

STEPS = [5, 10, 15, 20]  # 10 steps an epoch (160 training images in batches of 16), 2 epochs, eval_steps=5
STEP_LINE = re.compile(
    r"^step (\d+) \(epoch ([\d.]+)/2\): loss \d\.\d+, eval accuracy [01]\.\d{3}, macro_f1 [01]\.\d{3}$"
)


@pytest.fixture(scope="module")
def steps_run(tiny_vit, digits_dir, tmp_path_factory) -> SimpleNamespace:
    out = tmp_path_factory.mktemp("steps") / "run"
    recipe = load_recipe(
        "quickstart",
        [
            f"model.name={tiny_vit}",
            f"data.dataset={digits_dir}",
            "training.epochs=2",
            "training.batch_size=16",
            "training.warmup_ratio=0",
            "training.logging_steps=2",
            "training.args.eval_strategy=steps",
            "training.args.eval_steps=5",
            f"output.dir={out}",
        ],
    )
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        run_dir = run(recipe)
    return SimpleNamespace(
        dir=run_dir,
        out=stdout.getvalue(),
        metrics=json.loads((run_dir / "metrics.json").read_text()),
        history=json.loads((run_dir / "log_history.json").read_text()),
    )


def table(card: str, heading: str) -> list[list[str]]:
    lines = card.split(f"### {heading}\n\n", 1)[1].split("\n\n", 1)[0].splitlines()
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def test_metrics_json_keeps_epochs_and_evaluations_apart(steps_run):
    timings = steps_run.metrics["timings"]
    assert len(timings["train_seconds_per_epoch"]) == 2
    evaluations = timings["eval_seconds"]
    assert [(e["step"], e["epoch"]) for e in evaluations] == [(5, 0.5), (10, 1.0), (15, 1.5), (20, 2.0)]
    runtimes = [h["eval_runtime"] for h in steps_run.history if "eval_runtime" in h]
    assert [e["seconds"] for e in evaluations] == runtimes
    first, second = (sum(runtimes[i : i + 2]) for i in (0, 2))
    assert timings["eval_seconds_per_epoch"] == pytest.approx([first, second], abs=1e-4)
    # the clock skips the evaluations (and their saves) inside an epoch: training alone is left
    assert sum(timings["train_seconds_per_epoch"]) < timings["train_wall_seconds"] - sum(runtimes)


def test_the_card_has_a_row_per_evaluation(steps_run):
    card = (steps_run.dir / "README.md").read_text()
    assert "### Per epoch" not in card
    header, rule, *rows = table(card, "Per evaluation")
    assert header == ["step", "epoch", "training loss", "validation loss", "validation accuracy"]
    evaluations = [h for h in steps_run.history if "eval_accuracy" in h]
    assert [row[:2] for row in rows] == [["5", "0.5"], ["10", "1"], ["15", "1.5"], ["20", "2"]]
    assert [row[3:] for row in rows] == [[f"{h['eval_loss']:.4f}", f"{h['eval_accuracy']:.4f}"] for h in evaluations]
    last_losses = [[h["loss"] for h in steps_run.history if "loss" in h and h["step"] <= s][-1] for s in STEPS]
    assert [row[2] for row in rows] == [f"{loss:.4f}" for loss in last_losses]


def test_progress_says_the_step_of_each_evaluation_and_the_final_line_the_best_checkpoint(steps_run):
    lines = [m.groups() for m in map(STEP_LINE.match, steps_run.out.splitlines()) if m]
    assert lines == [("5", "0.5"), ("10", "1"), ("15", "1.5"), ("20", "2")]
    assert not re.search(r"^epoch \d", steps_run.out, re.MULTILINE)
    accuracies = [h["eval_accuracy"] for h in steps_run.history if "eval_accuracy" in h]
    best = STEPS[accuracies.index(max(accuracies))]  # the first of equals: a later one is no improvement
    note = "" if best == STEPS[-1] else f" (best checkpoint, step {best})"
    assert f"hf_tl: eval accuracy {steps_run.metrics['eval']['accuracy']:.4f}{note}" in steps_run.out


HISTORY = [
    {"loss": 1.0, "step": 2, "epoch": 0.2},
    {"loss": 0.8, "step": 4, "epoch": 0.4},
    {"eval_loss": 0.7, "eval_accuracy": 0.75, "eval_macro_f1": 0.7, "step": 5, "epoch": 0.5},
    {"loss": 0.6, "step": 6, "epoch": 0.6},
    {"loss": 0.4, "step": 8, "epoch": 0.8},
    {"loss": 0.3, "step": 10, "epoch": 1.0},
    {"eval_loss": 0.5, "eval_accuracy": 0.7, "eval_macro_f1": 0.6, "step": 10, "epoch": 1.0},
]


def test_a_step_line_reads_the_losses_logged_since_the_previous_evaluation():
    assert step_line(HISTORY, 5, 0.5, 2) == "step 5 (epoch 0.5/2): loss 0.900, eval accuracy 0.750, macro_f1 0.700"
    assert step_line(HISTORY, 10, 1.0, 2) == "step 10 (epoch 1/2): loss 0.433, eval accuracy 0.700, macro_f1 0.600"


def test_the_best_checkpoint_is_named_only_when_it_is_not_the_last_evaluation():
    steps, epochs = SimpleNamespace(eval_strategy="steps"), SimpleNamespace(eval_strategy="epoch")
    state = TrainerState(log_history=HISTORY, best_global_step=5)
    assert best_checkpoint_note(state, steps) == " (best checkpoint, step 5)"
    assert best_checkpoint_note(state, epochs) == " (best checkpoint, epoch 0.5)"
    assert best_checkpoint_note(TrainerState(log_history=HISTORY, best_global_step=10), steps) == ""
    assert best_checkpoint_note(TrainerState(log_history=[]), steps) == ""


def test_evaluation_seconds_per_epoch_sum_the_epochs_evaluations():
    at = [(0.5, 0.25), (1.0, 0.5), (1.5, 1.0), (2.0, 2.0)]
    assert eval_seconds_per_epoch([{"step": 0, "epoch": e, "seconds": s} for e, s in at]) == [0.75, 3.0]
    assert eval_seconds_per_epoch([{"step": 0, "epoch": e, "seconds": s} for e, s in at[1::2]]) == [0.5, 2.0]


def test_an_epoch_recipe_keeps_the_epoch_table():
    timings = {"train_seconds_per_epoch": [2.5], "eval_seconds_per_epoch": [0.5]}
    history = [
        {"loss": 0.9, "step": 10, "epoch": 1.0},
        {"eval_loss": 0.5, "eval_accuracy": 0.7, "step": 10, "epoch": 1.0},
    ]
    recipe = {"training": {"args": {}}}
    rows = [
        {
            "epoch": "1",
            "train_seconds": "2.50",
            "eval_seconds": "0.50",
            "train_loss": "0.9000",
            "eval_loss": "0.5000",
            "eval_accuracy": "0.7000",
        }
    ]
    assert _evaluation_rows(recipe, timings, history) == rows


def test_the_epoch_clock_skips_an_evaluation_and_its_save_inside_the_epoch(monkeypatch):
    clock = iter([0.0, 1.0, 3.5, 4.0, 5.0, 6.0])  # epoch begins, step ends, evaluated, saved, step ends, epoch ends
    monkeypatch.setattr(timing.time, "perf_counter", lambda: next(clock))
    timer, state = EpochTimer(), TrainerState(global_step=5, epoch=0.5)
    timer.on_epoch_begin(None, state, None)
    timer.on_step_end(None, state, None)
    timer.on_evaluate(None, state, None, metrics={"eval_runtime": 2.4})
    timer.on_save(None, state, None)
    timer.on_step_end(None, state, None)
    timer.on_epoch_end(None, state, None)
    assert timer.train_seconds == [3.0]  # 6 seconds, less the 3 from the step's end to the save's
    assert timer.to_dict()["eval_seconds"] == [{"step": 5, "epoch": 0.5, "seconds": 2.4}]
