"""The README's commands as a user types them: `accelerate launch`, one process and two."""

from __future__ import annotations

import json
import sys
import time

import pytest
from conftest import REPO, run_cli

pytestmark = pytest.mark.slow


def test_quickstart_runs_offline_under_two_minutes_and_transfers(tmp_path):
    started = time.perf_counter()
    result = run_cli("accelerate", "launch", "-m", "hf_tl.train", "recipe=quickstart", cwd=tmp_path)
    elapsed = time.perf_counter() - started
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert run_dir.name.startswith("quickstart-")
    assert {"recipe.yaml", "metrics.json", "log_history.json", "model"} <= {p.name for p in run_dir.iterdir()}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["eval"]["accuracy"] >= 0.90
    assert metrics["parameters"]["kind"] == "last_block"
    assert metrics["parameters"]["trainable"] < metrics["parameters"]["total"] / 3
    assert elapsed < 120, f"quickstart took {elapsed:.0f} s"


def test_two_processes_on_cpu_write_one_run_folder_covering_the_whole_eval_set(tmp_path):
    result = run_cli(
        "accelerate",
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "-m",
        "hf_tl.train",
        "recipe=quickstart",
        "training.epochs=2",
        "data.max_eval_samples=177",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs").iterdir()  # one folder: both ranks agreed on the timestamp
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["device"]["num_processes"] == 2
    assert metrics["device"]["distributed_type"] == "MULTI_CPU"
    # 177 is odd: each rank sees 89 and the gathered predictions drop the padding duplicate.
    assert metrics["num_eval_examples"] == metrics["eval"]["num_examples"] == 177
    assert metrics["train"]["num_examples"] == metrics["num_train_examples"]
    assert result.stdout.count("hf_tl: eval accuracy") == 1


HF_TL = (sys.executable, "-m", "hf_tl")  # what the `hf-tl` console script runs


def test_hf_tl_train_nproc_2_starts_two_gloo_ranks_without_accelerates_defaults_warning(tmp_path):
    """`hf-tl train --nproc 2` launches through Accelerate itself; with no accelerate config, nothing warns."""
    env = {"HF_HOME": str(tmp_path / "hf-home")}  # no accelerate config there
    result = run_cli(*HF_TL, "train", "--nproc", "2", "recipe=quickstart", "training.epochs=1", cwd=tmp_path, **env)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs").iterdir()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["device"]["num_processes"] == 2 and metrics["device"]["distributed_type"] == "MULTI_CPU"
    assert "were not passed to `accelerate launch`" not in result.stderr


def test_hf_tl_train_follows_the_users_accelerate_config_and_keeps_hf_tls_exit_status(tmp_path):
    """The config's two processes start; each fails on a recipe mistake only the run itself sees (more blocks than
    the model has): exit 2, hf_tl's `error:` line, no launcher traceback."""
    config = tmp_path / "hf-home" / "accelerate" / "default_config.yaml"
    config.parent.mkdir(parents=True)
    config.write_text(
        "compute_environment: LOCAL_MACHINE\ndistributed_type: MULTI_GPU\nnum_processes: 2\nnum_machines: 1\n"
        "machine_rank: 0\nmixed_precision: 'no'\nuse_cpu: false\ndynamo_config: {}\n"
    )
    env = {"HF_HOME": str(tmp_path / "hf-home")}
    too_many = ["strategy.kind=last_k", "strategy.blocks=99", f"output.dir={tmp_path / 'run'}"]
    result = run_cli(*HF_TL, "train", "recipe=quickstart", *too_many, cwd=tmp_path, **env)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr[-3000:]
    assert len(lines) == 2 and all(line.startswith("error: strategy.blocks=99") for line in lines), result.stderr
    assert "Traceback" not in result.stderr and "CalledProcessError" not in result.stderr


def test_a_non_editable_install_finds_recipes_and_assets_from_any_directory(tmp_path):
    built = run_cli(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        str(tmp_path / "dist"),
        str(REPO),
    )
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("hf_tl-*.whl")
    site = tmp_path / "site"
    installed = run_cli(sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel))
    assert installed.returncode == 0, installed.stderr[-3000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"PYTHONPATH": str(site)}
    where = run_cli(sys.executable, "-c", "import hf_tl; print(hf_tl.__file__)", cwd=elsewhere, **env)
    assert where.stdout.strip().startswith(str(site))
    listed = run_cli(sys.executable, "-m", "hf_tl.recipes", "list", cwd=elsewhere, **env)
    assert listed.returncode == 0 and "quickstart" in listed.stdout and "deit_lastblock" in listed.stdout
    counted = run_cli(sys.executable, "-m", "hf_tl.params", "recipe=quickstart", "--json", cwd=elsewhere, **env)
    assert counted.returncode == 0, counted.stderr[-3000:]
    assert json.loads(counted.stdout)["trainable_modules"] == ["vit.layers.3", "vit.layernorm", "classifier"]
    card = "from hf_tl.config.resources import model_card_template as t; print(t(), t().is_file())"
    template = run_cli(sys.executable, "-c", card, cwd=elsewhere, **env)
    assert template.returncode == 0, template.stderr[-3000:]
    assert template.stdout.startswith(str(site)) and template.stdout.split()[-1] == "True"  # the card template ships
    modules = "import hf_tl, pkgutil; print(*sorted(m.name for m in pkgutil.walk_packages(hf_tl.__path__, 'hf_tl.')))"
    shipped = run_cli(sys.executable, "-c", modules, cwd=elsewhere, **env)
    assert shipped.stdout.split() == run_cli(sys.executable, "-c", modules, cwd=REPO).stdout.split()  # every module
    from hf_tl.cli.main import COMMANDS

    for name in COMMANDS:  # every subcommand answers --help from the installed copy
        helped = run_cli(sys.executable, "-m", "hf_tl", name, "--help", cwd=elsewhere, **env)
        assert helped.returncode == 0 and helped.stdout.startswith(f"usage: hf-tl {name}"), helped.stderr[-3000:]
    run, data = elsewhere / "run", site / "hf_tl" / "assets" / "quickstart" / "digits-5-9"
    jobs = {
        "quickstart": ["train", "recipe=quickstart", "training.epochs=2", f"output.dir={run}"],
        "eval": ["eval", f"model={run}", "split=validation", f"output={elsewhere / 'eval'}"],
        "analyze cka": ["analyze", "cka", f"model_a={run}", f"dataset={data}", "num_examples=64", "batch_size=32"],
        "report": ["report", str(run), f"out={elsewhere / 'report'}"],
    }
    for name, words in jobs.items():
        done = run_cli(sys.executable, "-m", "hf_tl", *words, cwd=elsewhere, **env)
        assert done.returncode == 0, f"{name}: {done.stderr[-3000:]}"
    assert "held out" in json.loads((elsewhere / "eval" / "eval.json").read_text())["split"]  # the run's own
    assert (elsewhere / "report" / "report.md").is_file() and any((elsewhere / "analysis").rglob("cka.png"))


def test_quickstart_assets_rebuild(tmp_path):
    from datasets import load_dataset
    from transformers import AutoModelForImageClassification

    from hf_tl.config.quickstart import build

    build(tmp_path / "quickstart")
    backbone = AutoModelForImageClassification.from_pretrained(tmp_path / "quickstart" / "backbone")
    assert backbone.config.id2label == {i: str(i) for i in range(5)}  # pretrained on digits 0-4
    assert backbone.config.num_hidden_layers == 4 and backbone.config.image_size == 16
    finetune = load_dataset(str(tmp_path / "quickstart" / "digits-5-9"))["train"]
    assert finetune.features["label"].names == ["5", "6", "7", "8", "9"]
    assert len(finetune) == 896  # every 5-9 digit in scikit-learn's set
