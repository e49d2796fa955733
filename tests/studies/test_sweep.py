"""A miniature study end to end, as a user runs it: sweep, kill it mid-cell, run it again, report.

Tiny real-family models (ViT, ResNet) on scikit-learn's digits, 2 x 2 cells, real subprocesses.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from statistics import mean

import pytest
from conftest import run_cli, saved_digits

from hf_tl.errors import HfTlError
from hf_tl.studies.report import build_report

pytestmark = pytest.mark.slow

EPOCHS = 2
STEPS_PER_EPOCH = 12  # 60 digits, 20% held out: 48 training images in batches of 4
LOG_EPOCH = re.compile(r"^epoch ([\d.]+)/")  # the line hf_tl prints once an epoch's checkpoint is saved
STUDY = """\
# A miniature study for the tests.
#   python -m hf_tl.sweep study={path}
title: Miniature study
paper: the tests
layout: zhou
base:
  data: {{val_fraction: 0.2, num_workers: 0}}
  training: {{epochs: {epochs}, batch_size: 4, lr: 2.0e-3, logging_steps: 2}}
datasets:
  - {{key: digits, name: Digits, dataset: {data}}}
strategies:
  - {{key: linear, name: linear probe, recipe: {{strategy: {{kind: linear_probe}}}}}}
  - {{key: full, name: full, recipe: {{strategy: {{kind: full}}}}}}
backbones:
{backbones}
"""


def write_study(folder: Path, data: Path, backbones: dict[str, tuple[str, Path]], epochs: int = EPOCHS) -> Path:
    path = folder / "study.yaml"
    lines = "\n".join(
        f"  - {{key: {key}, name: Tiny {key}, type: {kind}, model: {model}}}"
        for key, (kind, model) in backbones.items()
    )
    path.write_text(STUDY.format(path=path, data=data, epochs=epochs, backbones=lines))
    return path


def sweep_command(study: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "hf_tl.sweep", f"study={study}", f"out={out}", *extra]


@pytest.fixture(scope="module")
def swept(tmp_path_factory, tiny_family) -> dict:
    """Sweep 4 cells; SIGKILL the whole process group in the first cell's second epoch; run it again."""
    root = tmp_path_factory.mktemp("sweep")
    data = saved_digits(root, per_class=12)
    study = write_study(
        root, data, {"vit": ("transformer", tiny_family("vit")), "resnet": ("CNN", tiny_family("resnet"))}
    )
    out = root / "out"
    command = sweep_command(study, out)
    process = subprocess.Popen(
        command,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: the kill takes the sweep and its cell together
    )
    for line in process.stdout:
        found = LOG_EPOCH.search(line)
        if found and 1.0 <= float(found.group(1)) < 2.0:
            break
    else:
        pytest.fail(f"the sweep ended (status {process.wait()}) before its first cell reached epoch 1-2")
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    killed = {
        "state": json.loads((out / "sweep.json").read_text()),
        "checkpoints": sorted(p.name for p in (out / "cells/vit__digits__linear/run/checkpoints").iterdir()),
        "metrics": (out / "cells/vit__digits__linear/run/metrics.json").exists(),
    }
    resumed = run_cli(*command)
    again = run_cli(*command)
    return {"out": out, "study": study, "killed": killed, "resumed": resumed, "again": again, "command": command}


def test_the_kill_left_the_first_cell_half_done(swept):
    killed = swept["killed"]
    assert killed["state"]["cells"]["vit__digits__linear"]["status"] == "running"
    assert killed["checkpoints"] == [f"checkpoint-{STEPS_PER_EPOCH}"]
    assert not killed["metrics"]


def test_rerun_resumes_the_killed_cell_and_finishes_every_cell(swept):
    resumed, out = swept["resumed"], swept["out"]
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "cell vit__digits__linear resuming (it was interrupted)" in resumed.stdout
    log = (out / "cells/vit__digits__linear/train.log").read_text()
    assert log.count("=== ") == 2  # two attempts, one log
    assert f"resuming from {out / 'cells/vit__digits__linear/run/checkpoints' / f'checkpoint-{STEPS_PER_EPOCH}'}" in log
    state = json.loads((out / "sweep.json").read_text())
    assert {c: s["status"] for c, s in state["cells"].items()} == {
        "vit__digits__linear": "done",
        "vit__digits__full": "done",
        "resnet__digits__linear": "done",
        "resnet__digits__full": "done",
    }
    assert state["cells"]["vit__digits__linear"]["attempts"] == 2
    for cell in state["cells"].values():
        metrics = json.loads((out / cell["run_dir"] / "metrics.json").read_text())
        assert metrics["epochs_completed"] == EPOCHS
        assert len(metrics["timings"]["train_seconds_per_epoch"]) == EPOCHS  # the resumed run reports every epoch


def test_progress_lines_count_cells_and_estimate_the_time_left(swept):
    lines = [line for line in swept["resumed"].stdout.splitlines() if line.startswith("sweep: [")]
    assert lines[0].startswith("sweep: [1/4 done, 0 failed, 3 left, ~") and lines[0].endswith(" left]")
    assert lines[-1] == "sweep: [4/4 done, 0 failed, 0 left]"


def test_each_cell_ran_its_own_recipe_in_its_own_folder(swept):
    out = swept["out"]
    for cell in json.loads((out / "sweep.json").read_text())["cells"].values():
        recipe = (out / cell["run_dir"] / "recipe.yaml").read_text()
        assert f"name: {cell['backbone']}__digits__{cell['strategy']}" in recipe
        assert f"/{cell['backbone']}\n" in recipe  # model.name: the tiny model of that family
        assert f"kind: {'linear_probe' if cell['strategy'] == 'linear' else 'full'}" in recipe


def test_a_third_run_skips_every_finished_cell(swept):
    again = swept["again"]
    assert again.returncode == 0, again.stderr[-2000:]
    assert "4 finished already (skipped), 0 to run" in again.stdout
    assert "hf_tl.training.run" not in again.stdout and "starting" not in again.stdout


@pytest.fixture(scope="module")
def report(swept) -> dict:
    result = run_cli(sys.executable, "-m", "hf_tl.report", str(swept["out"]))
    assert result.returncode == 0, result.stderr[-3000:]
    folder = swept["out"] / "report"
    rows = list(csv.DictReader((folder / "report.csv").open()))
    return {"stdout": result.stdout, "folder": folder, "rows": rows}


def test_report_numbers_are_those_of_the_run_folders(report):
    assert len(report["rows"]) == 4
    for row in report["rows"]:
        metrics = json.loads((Path(row["run_dir"]) / "metrics.json").read_text())
        assert float(row["val_accuracy"]) == pytest.approx(100 * metrics["eval"]["accuracy"], abs=1e-9)
        assert float(row["train_accuracy"]) == pytest.approx(100 * metrics["train"]["accuracy"], abs=1e-9)
        assert int(row["trainable_parameters"]) == metrics["parameters"]["trainable"]
        timings = metrics["timings"]
        assert float(row["train_seconds_per_epoch"]) == pytest.approx(mean(timings["train_seconds_per_epoch"]))
        assert float(row["eval_seconds_per_epoch"]) == pytest.approx(mean(timings["eval_seconds_per_epoch"]))
        assert row["paper_val_accuracy"] == ""  # the miniature study has no figures file


def test_report_grid_has_a_column_per_dataset_and_strategy(report):
    table = (report["folder"] / "report.md").read_text()
    assert table in report["stdout"]
    assert "| Backbone | Type | Digits: linear probe | Digits: full |" in table
    by_model = {}
    for row in report["rows"]:
        by_model.setdefault(row["model"], {})[row["strategy"]] = f"{float(row['val_accuracy']):.2f}"
    for model, values in by_model.items():
        kind = "transformer" if "vit" in model else "CNN"
        assert f"| {model} | {kind} | {values['linear probe']} | {values['full']} |" in table


def test_report_plots_are_written(report):
    for name in ("accuracy_vs_parameters.png", "accuracy_Digits.png"):
        png = (report["folder"] / name).read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_malpure_layout_of_the_same_sweep(swept, tmp_path):
    table = build_report([swept["out"]], tmp_path, layout="malpure")
    assert table == (tmp_path / "report.md").read_text()
    assert (
        "| Model | Type | Strategy | Trainable parameters | Validation accuracy (paper) | Validation accuracy "
        "(this run) | Train accuracy | Training time per epoch | Validation time per epoch |"
    ) in table


def test_report_of_plain_run_folders_has_empty_paper_columns(swept, tmp_path):
    runs = [swept["out"] / "cells" / cell / "run" for cell in ("vit__digits__full", "resnet__digits__full")]
    build_report(runs, tmp_path)
    rows = list(csv.DictReader((tmp_path / "report.csv").open()))
    assert [r["strategy"] for r in rows] == ["full", "full"] and all(r["paper_val_accuracy"] == "" for r in rows)
    assert rows[0]["model"].endswith("vit")  # the run's model.name


def test_report_refuses_a_folder_without_runs(tmp_path):
    with pytest.raises(HfTlError, match="neither a sweep folder"):
        build_report([tmp_path], tmp_path / "report")


def test_a_failed_cell_is_recorded_the_sweep_goes_on_and_a_rerun_retries_it(tmp_path, tiny_family):
    data = saved_digits(tmp_path, per_class=6)
    backbones = {"missing": ("CNN", tmp_path / "no-such-model"), "vit": ("transformer", tiny_family("vit"))}
    study = write_study(tmp_path, data, backbones, epochs=1)
    command = sweep_command(study, tmp_path / "out", "only=strategy=linear")
    first = run_cli(*command)
    assert first.returncode == 1
    assert "1 of 2 cell(s) failed: missing__digits__linear" in first.stderr and "Traceback" not in first.stderr
    state = json.loads((tmp_path / "out/sweep.json").read_text())["cells"]
    assert state["missing__digits__linear"]["status"] == "failed"
    assert "could not load model" in state["missing__digits__linear"]["error"]
    assert state["vit__digits__linear"]["status"] == "done"  # the sweep went on after the failure
    assert "full" not in " ".join(state)  # only= kept the linear cells

    second = run_cli(*command)
    assert second.returncode == 1
    assert "1 finished already (skipped), 1 to run" in second.stdout
    assert "cell missing__digits__linear retrying (it failed before)" in second.stdout
    assert json.loads((tmp_path / "out/sweep.json").read_text())["cells"]["missing__digits__linear"]["attempts"] == 2


def test_a_sweep_folder_where_no_cell_produced_anything_takes_the_corrected_command(tmp_path, tiny_family):
    data = saved_digits(tmp_path, per_class=6)
    study = write_study(tmp_path, data, {"vit": ("transformer", tiny_family("vit"))}, epochs=1)
    out = tmp_path / "out"
    typo = run_cli(*sweep_command(study, out, "training.lr=2e-3x", "dry_run=true"))
    assert typo.returncode == 2 and "training.lr" in typo.stderr
    fixed = run_cli(*sweep_command(study, out, "training.lr=2e-3", "dry_run=true"))
    assert fixed.returncode == 0, fixed.stderr[-3000:]
    assert "in which no cell had produced anything; it takes this command's study and overrides" in fixed.stdout
    assert json.loads((out / "sweep.json").read_text())["overrides"] == ["training.lr=2e-3"]

    write_study(tmp_path, data, {"vit": ("transformer", tiny_family("vit"))}, epochs=3)  # the study is edited
    edited = run_cli(*sweep_command(study, out, "training.lr=2e-3", "dry_run=true"))
    assert edited.returncode == 0, edited.stderr[-3000:]
    assert "cell vit__digits__linear had produced nothing with its old recipe" in edited.stdout
    assert "epochs: 3" in (out / "cells" / "vit__digits__linear" / "vit__digits__linear.yaml").read_text()


def test_a_sweep_folder_with_results_still_refuses_other_overrides(swept):
    other = run_cli(*swept["command"], "training.lr=0.5", "dry_run=true")
    assert other.returncode == 1 and "holds a sweep run with the overrides (none)" in other.stderr
