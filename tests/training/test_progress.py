"""Progress a person can read: a plain line per epoch on stdout, bars only at a terminal, none of transformers."""

from __future__ import annotations

import io
import json
import re
import sys

import pytest
from conftest import run_cli
from huggingface_hub.utils import are_progress_bars_disabled
from transformers.utils import logging as transformers_logging

from hf_tl import progress
from hf_tl.config.recipe import load_recipe
from hf_tl.training.timing import epoch_line

EPOCH_LINE = re.compile(r"epoch ([12])/2: loss \d+\.\d+, eval accuracy [01]\.\d{3}, macro_f1 [01]\.\d{3} \(\d+\.\d s\)")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("env", "stream", "shown"),
    [
        ({}, Terminal, True),
        ({}, io.StringIO, False),  # a log file or a pipe
        ({"HF_HUB_DISABLE_PROGRESS_BARS": "1"}, Terminal, False),
        ({"HF_TL_PROGRESS": "1"}, io.StringIO, True),
        ({"HF_TL_PROGRESS": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}, io.StringIO, True),
        ({"HF_TL_PROGRESS": "0"}, Terminal, False),
        ({"HF_TL_PROGRESS": ""}, Terminal, True),  # set but empty: as if unset
    ],
)
def test_bars_only_for_a_person_at_a_terminal(monkeypatch, env, stream, shown):
    for name in (progress.FORCE_ENV, progress.HUB_ENV):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert progress.bars_on(stream()) is shown
    out = stream()
    with progress.bar(total=2, desc="hf_tl: test", file=out) as bar:
        bar.update(2)
    assert ("hf_tl: test" in out.getvalue()) is shown
    assert ("\r" in out.getvalue()) is shown


def test_a_closed_stream_gets_no_bars(monkeypatch, tmp_path):
    monkeypatch.delenv(progress.FORCE_ENV, raising=False)
    closed = (tmp_path / "log").open("w")
    closed.close()  # its isatty() raises
    assert not progress.bars_on(closed)


def test_transformers_own_bars_off_and_the_hubs_as_they_were():
    transformers_before, hub_before = transformers_logging.is_progress_bar_enabled(), are_progress_bars_disabled()
    with progress.transformers_bars_off():
        assert not transformers_logging.is_progress_bar_enabled()  # "Loading weights", "Writing model shards"
        assert are_progress_bars_disabled() == hub_before  # a download's bar shows as it did
    assert transformers_logging.is_progress_bar_enabled() == transformers_before
    assert are_progress_bars_disabled() == hub_before


def test_epoch_line_reads_the_losses_logged_since_the_last_evaluation():
    history = [
        {"loss": 1.0, "epoch": 0.5},
        {"loss": 0.5, "epoch": 1.0},
        {"eval_loss": 0.6, "eval_accuracy": 0.75, "eval_macro_f1": 0.7, "epoch": 1.0},
        {"loss": 0.4, "epoch": 1.5},
        {"eval_loss": 0.5, "eval_accuracy": 0.8, "eval_macro_f1": 0.79, "epoch": 2.0},
    ]
    assert epoch_line(history, 1.0, 2, 2.14) == "epoch 1/2: loss 0.750, eval accuracy 0.750, macro_f1 0.700 (2.1 s)"
    assert epoch_line(history, 2.0, 2, None) == "epoch 2/2: loss 0.400, eval accuracy 0.800, macro_f1 0.790"
    assert epoch_line(history[2:3], 1.0, 2, 0.5) == "epoch 1/2: eval accuracy 0.750, macro_f1 0.700 (0.5 s)"


def train(tmp_path, *overrides: str, **env: str):
    result = run_cli(
        sys.executable, "-m", "hf_tl.train", "recipe=quickstart", "training.epochs=2", *overrides, cwd=tmp_path, **env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_a_run_into_a_log_file_prints_plain_lines_and_no_bars(tmp_path):
    result = train(tmp_path, HF_TL_PROGRESS="")  # stdout and stderr are pipes, not a terminal
    both = result.stdout + result.stderr
    assert "\r" not in both and "\x1b" not in both
    assert "Writing model shards" not in both and "Loading weights" not in both and "Checking" not in both
    assert "{'loss'" not in result.stdout and "{'eval_loss'" not in result.stdout  # the Trainer's dicts
    (run_dir,) = (tmp_path / "runs").iterdir()
    lines = result.stdout.splitlines()
    assert lines[0] == f"hf_tl: run folder runs/{run_dir.name}"
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert [EPOCH_LINE.fullmatch(line).group(1) for line in epochs] == ["1", "2"], epochs
    history = json.loads((run_dir / "log_history.json").read_text())
    assert [h["epoch"] for h in history if "eval_accuracy" in h] == [1.0, 2.0]
    assert any("loss" in h for h in history)  # every logged step is still recorded


@pytest.mark.slow
def test_eval_and_analyze_into_a_log_file_draw_no_bars_either(tmp_path):
    """The held-out split of a sliced training split is carved again (datasets flattens indices, with a bar)."""
    train(tmp_path, "data.train_split=train[:50%]", "output.dir=runs/half", HF_TL_PROGRESS="")
    digits = load_recipe("quickstart").data.dataset
    evaluate = ["eval", "model=runs/half", "split=validation", "output=evals/half"]
    analyze = ["analyze", "cka", "model_a=runs/half/model", f"dataset={digits}", "split=train", "num_examples=40"]
    for command in (evaluate, [*analyze, "out=analysis/half"]):
        result = run_cli(sys.executable, "-m", "hf_tl", *command, cwd=tmp_path, HF_TL_PROGRESS="")
        assert result.returncode == 0, (command, result.stderr[-3000:])
        both = result.stdout + result.stderr
        assert "\r" not in both and "%|" not in both, (command, both[-2000:])


@pytest.mark.slow
def test_forced_bars_are_one_per_phase_and_none_of_transformers(tmp_path):
    result = train(tmp_path, "data.max_train_samples=200", "training.logging_steps=3", HF_TL_PROGRESS="1")
    assert len(re.findall(r"hf_tl: training:\s+0%", result.stderr)) == 1  # one bar over both epochs
    assert len(re.findall(r"hf_tl: evaluating:\s+0%", result.stderr)) == 2  # the final eval and train metrics only
    assert "Writing model shards" not in result.stderr and "Loading weights" not in result.stderr
    assert "\r" not in result.stdout
    assert len([line for line in result.stdout.splitlines() if EPOCH_LINE.fullmatch(line)]) == 2


def test_only_the_main_process_draws_bars(monkeypatch):
    """N ranks' bars on one terminal would overwrite one another: rank 0 draws, the others stay silent."""
    monkeypatch.setenv("HF_TL_PROGRESS", "1")
    monkeypatch.setenv("RANK", "1")
    assert progress.bar(range(3)).disable is True
    monkeypatch.setenv("RANK", "0")
    assert progress.bar(range(3)).disable is False
