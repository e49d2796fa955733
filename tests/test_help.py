"""Every command answers --help (and -h) with its usage and keys, exit 0, and does nothing else: no file
written in the working directory, in HF_HOME or in the installed package, no model loaded, no data read."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import pytest
from conftest import run_cli

import hf_tl
from hf_tl.resources import recipe_dir

PACKAGE = Path(hf_tl.__file__).resolve().parent
COMMANDS = {  # the arguments after `python -m`, and a line the usage must hold
    "train": (["hf_tl.train"], "training.epochs=float"),
    "params": (["hf_tl.params"], "--json"),
    "eval": (["hf_tl.eval"], "model=str"),
    "analyze": (["hf_tl.analyze"], "attention-distance keys:"),
    "analyze cka": (["hf_tl.analyze", "cka"], "model_a=str"),
    "analyze attention-distance": (["hf_tl.analyze", "attention-distance"], "num_examples=int"),
    "sweep": (["hf_tl.sweep"], "study=str"),
    "report": (["hf_tl.report"], "--layout"),
    "push": (["hf_tl.push"], "--repo-id"),
    "download": (["hf_tl.download"], "--revision"),
    "recipes": (["hf_tl.recipes"], "list"),
    "recipes copy": (["hf_tl.recipes", "copy"], "dest"),
    "quickstart": (["hf_tl.quickstart"], "out=str"),
}
KEY_VALUE = ["train", "params", "eval", "analyze", "analyze cka", "sweep", "quickstart"]


def listing(folder: Path) -> dict[str, tuple[int, int] | None]:
    """Every file under `folder` with its size and modification time: the assets, recipes and cards a command
    could overwrite. Source files count by name only, so that editing the checkout beside the test is no failure."""
    return {
        str(p.relative_to(folder)): None if p.suffix == ".py" else (p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
        if "__pycache__" not in p.parts and p.is_file()
    }


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_prints_usage_and_writes_nothing(name, tmp_path):
    module_and_args, expected = COMMANDS[name]
    cwd, hf_home = tmp_path / "cwd", tmp_path / "hf-home"
    cwd.mkdir()
    hf_home.mkdir()
    package, recipes = listing(PACKAGE), listing(recipe_dir())
    env = {"HF_HOME": str(hf_home), "HF_DATASETS_CACHE": str(hf_home / "datasets"), "PYTHONDONTWRITEBYTECODE": "1"}
    for flag in ("--help", "-h") if name in KEY_VALUE else ("--help",):
        result = run_cli(sys.executable, "-m", *module_and_args, flag, cwd=cwd, timeout=300, **env)
        assert result.returncode == 0, result.stderr[-3000:]
        assert result.stdout.startswith("usage: ") and expected in result.stdout, result.stdout
        assert "Traceback" not in result.stderr and "error" not in result.stderr.lower(), result.stderr
    assert files_under(cwd) == [] and files_under(hf_home) == []
    assert listing(PACKAGE) == package and listing(recipe_dir()) == recipes


@pytest.mark.parametrize("name", KEY_VALUE)
def test_help_of_key_value_commands_lists_keys_from_the_dataclasses_that_check_them(
    name, tmp_path, monkeypatch, capsys
):
    """In this process: the same text, each key with its type, default, choices and help, and nothing run."""
    module_and_args, expected = COMMANDS[name]
    monkeypatch.chdir(tmp_path)
    main = importlib.import_module(module_and_args[0]).main
    main([*module_and_args[1:], "--help"])  # returns: no SystemExit, no error
    out = capsys.readouterr().out
    assert out.startswith("usage: ") and f"-m {module_and_args[0]} " in out.splitlines()[0] and expected in out
    text = " ".join(out.split())  # as read, whatever the line breaks
    assert os.listdir(tmp_path) == []
    if name in ("train", "params"):
        assert "  training.scheduler=str\n" in out and "(default linear; one of: linear, cosine," in text
        assert "  model.name=str\n" in out and "(required)" in out
        assert "recipe=NAME a shipped recipe (" in text and "quickstart" in text
    if name == "eval":
        assert "  batch_size=int\n      Images per forward pass. (default 64; at least 1)" in out
    if name == "sweep":
        assert "launcher=str" in out and "one of: python, accelerate" in text and "training.epochs=2" in text
