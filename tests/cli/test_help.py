"""Every command answers --help (and -h) with its usage and keys, exit 0, and does nothing else: no file
written in the working directory, in HF_HOME or in the installed package, no model loaded, no data read."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from conftest import run_cli

import hf_tl
from hf_tl.cli.main import COMMANDS as SUBCOMMANDS
from hf_tl.cli.main import main
from hf_tl.config.resources import recipe_dir

PACKAGE = Path(hf_tl.__file__).resolve().parent
COMMANDS = {  # the arguments after `hf-tl`, and a line the usage must hold
    "train": (["train"], "training.epochs=float"),
    "params": (["params"], "--json"),
    "eval": (["eval"], "model=str"),
    "analyze": (["analyze"], "attention-distance keys:"),
    "analyze cka": (["analyze", "cka"], "model_a=str"),
    "analyze attention-distance": (["analyze", "attention-distance"], "num_examples=int"),
    "select": (["select"], "zoo=str"),
    "sweep": (["sweep"], "study=str"),
    "report": (["report"], "layout=str"),
    "push": (["push"], "repo_id=str"),
    "download": (["download"], "revision=str"),
    "recipes": (["recipes"], "copy keys:"),
    "recipes copy": (["recipes", "copy"], "dest=str"),
    "quickstart": (["quickstart"], "out=str"),
}
HEAVY = ("torch", "transformers", "datasets", "peft", "accelerate", "matplotlib", "timm", "numpy")


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
    texts: dict[str, set[str]] = {"hf-tl": set(), "alias": set()}
    for flag in ("--help", "-h"):
        for launcher in ("hf-tl", "alias"):  # `python -m hf_tl SUB`, and the old `python -m hf_tl.SUB`
            words = ["hf_tl", *module_and_args] if launcher == "hf-tl" else [f"hf_tl.{module_and_args[0]}"]
            words += [] if launcher == "hf-tl" else module_and_args[1:]
            result = run_cli(sys.executable, "-m", *words, flag, cwd=cwd, timeout=300, **env)
            assert result.returncode == 0, result.stderr[-3000:]
            assert result.stdout.startswith("usage: hf-tl ") and expected in result.stdout, result.stdout
            assert "Traceback" not in result.stderr and "error" not in result.stderr.lower(), result.stderr
            texts[launcher].add(result.stdout)
    (text,) = texts["hf-tl"]  # one text for --help and -h
    (alias,) = texts["alias"]
    if name == "train":  # `python -m hf_tl.train` runs in its process: the same keys, without the launch flags
        assert "--nproc" in text and "--nproc" not in alias and set(alias.splitlines()) <= set(text.splitlines())
    else:
        assert alias == text
    assert files_under(cwd) == [] and files_under(hf_home) == []
    assert listing(PACKAGE) == package and listing(recipe_dir()) == recipes


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_of_every_command_lists_keys_from_the_dataclasses_that_check_them(name, tmp_path, monkeypatch, capsys):
    """In this process: the same text, each key with its type, default, choices and help, and nothing run."""
    module_and_args, expected = COMMANDS[name]
    monkeypatch.chdir(tmp_path)
    main([*module_and_args, "--help"])  # returns: no SystemExit, no error
    out = capsys.readouterr().out
    assert out.startswith(f"usage: hf-tl {module_and_args[0]}") and expected in out, out
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


def test_hf_tl_help_lists_every_command_on_one_line(capsys):
    main(["--help"])
    out = capsys.readouterr().out
    assert out.startswith("usage: hf-tl COMMAND")
    for name in SUBCOMMANDS:
        (line,) = [line for line in out.splitlines() if line.startswith(f"  {name} ")]
        assert len(line.split(maxsplit=1)[1]) > 10  # its one-line summary
    assert set(SUBCOMMANDS) == {args[0] for args, _ in COMMANDS.values()}  # this file tests every command's help


def test_an_unknown_command_is_one_line_with_did_you_mean(capsys):
    from conftest import exit_status_of

    code, err = exit_status_of(main, ["evl", "model=x"], capsys)
    assert code == 2 and err.splitlines() == ["error: unknown command 'evl'. Did you mean 'eval'?", err.splitlines()[1]]
    assert "commands: train, eval," in err


def test_help_and_a_mistyped_key_import_nothing_heavy():
    """`hf-tl SUB --help`, a typo and an output folder that cannot be written are answered before torch,
    transformers, datasets, ... are imported."""
    probe = (
        "import sys, json, contextlib, io\n"
        "from hf_tl.cli.main import main\n"
        "calls = [['--help'], *[[n, '--help'] for n in sys.argv[1:]], ['train', 'recipe=quickstart', 'training.lrr=1'],"
        " ['eval', 'modle=x'], ['push', '--repo-id', 'a/b'], ['select', 'dataset=x', 'zoo=nope'],"
        " ['train', 'recipe=quickstart', 'output.dir=/proc/x']]\n"
        "codes = []\n"
        "for argv in calls:\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
        "        try:\n"
        "            main(argv); codes.append(0)\n"
        "        except SystemExit as e:\n"
        "            codes.append(e.code)\n"
        f"print(json.dumps([codes, [m for m in {HEAVY!r} if m in sys.modules]]))\n"
    )
    result = run_cli(sys.executable, "-c", probe, *SUBCOMMANDS)
    codes, heavy = json.loads(result.stdout)
    expected = [0] * (len(SUBCOMMANDS) + 1) + [2, 2, 2, 2, 1]
    assert codes == expected and heavy == [], (codes, heavy, result.stderr[-2000:])


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["push", "runs/x", "--repo-id", "a/b"],
            "error: '--repo-id': hf-tl takes key=value arguments; write repo_id=VALUE.",
        ),
        (
            ["download", "a/b", "--revision=v1"],
            "error: '--revision=v1': hf-tl takes key=value arguments; write revision=VALUE.",
        ),
        (["report", "runs/x", "--out", "r"], "error: '--out': hf-tl takes key=value arguments; write out=VALUE."),
        (
            ["recipes", "shwo", "quickstart"],
            "error: got 'shwo'; start with a command: list, show or copy. Did you mean 'show'?",
        ),
        (
            ["push", "runs/x", "runs/y", "repo_id=a/b"],
            "error: argument 'runs/y' is not of the form key=value; keys: run, repo_id, private",
        ),
        (
            ["download", "repo_id=c/d", "a/b"],
            "error: repo_id is given twice, as 'a/b' and as 'repo_id=c/d'; give it once.",
        ),
        (
            ["push", "${oc.env:HOME}", "repo_id=a/b"],
            "error: argument '${oc.env:HOME}': interpolations are not allowed.",
        ),
        (["quickstart", "${x}"], "error: argument '${x}': interpolations are not allowed."),
    ],
)
def test_one_grammar_for_every_command(argv, message, capsys):
    """Flags of the old argparse commands get the key=value spelling; bare words fill the positional keys only."""
    from conftest import exit_status_of

    code, err = exit_status_of(main, argv, capsys)
    assert code == 2 and err.splitlines()[0] == message, err


def test_a_command_that_prints_data_prints_it_as_json_with_json(capsys):
    from conftest import exit_status_of

    main(["recipes", "list", "--json"])
    listed = json.loads(capsys.readouterr().out)
    (quickstart,) = [r for r in listed if r["name"] == "quickstart"]
    assert quickstart["description"] and Path(quickstart["path"]).is_file()
    code, err = exit_status_of(main, ["recipes", "show", "quickstart", "--json"], capsys)
    assert code == 2 and err.startswith("error: unknown option '--json'.")  # show prints a file, not data
