"""Every failure is one `error:` line that names its cause and its fix, with the right exit status, and no token.

First the one exit path itself (`errors.cli`): what it prints for a user's error, for an unexpected exception, for
Ctrl-C, and that log records and warnings leave it scrubbed. Then each case that once printed a traceback, or a
message about something else, run through the real command's `main`: exit status 2 for an argument or recipe
mistake, 1 for anything else, and where the cause can be known before any work, nothing done before it is said.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import pytest
import torch
from conftest import TINY_VIT, digits, exit_status_of, run_cli, save_vit
from datasets import DatasetDict, Features, Image, Value

import hf_tl
from hf_tl import train
from hf_tl.cli import analyze, recipes, report, sweep
from hf_tl.cli import eval as evaluation
from hf_tl.config.recipe import load_recipe, to_yaml
from hf_tl.config.resources import asset_path
from hf_tl.errors import HfTlError, cli, scrub
from hf_tl.studies.study import load_study

SECRET = "not-token-shaped-secret-42"  # hidden because it is HF_TOKEN, not because of its shape
TOKEN_SHAPED = "hf_AbCdEfGh1234567890AbCdEfGh12345678"  # hf_ and 34 letters or digits, as a real one
NAMES = [f"digit_{i}" for i in range(5)]


def the_error(err: str) -> str:
    """The one `error:` line (with its indented continuation lines), checked to be the only one, untraced."""
    assert "Traceback" not in err, err
    assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1, err
    return err[err.index("error:") :]


def vit_with_labels(path: Path, names: list[str]) -> Path:
    """A tiny ViT whose classes are `names`, as a checkpoint anyone could have saved."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    id2label = dict(enumerate(names))
    config = ViTConfig(**TINY_VIT, id2label=id2label, label2id={v: k for k, v in id2label.items()})
    ViTForImageClassification(config).save_pretrained(path)
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def digit_vit(tmp_path_factory) -> Path:
    return vit_with_labels(tmp_path_factory.mktemp("digit-vit") / "vit", NAMES)


# --- the one exit path ----------------------------------------------------------------------------------------


def test_the_error_line_is_scrubbed_of_the_token(monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", SECRET)

    @cli
    def main(argv):
        raise HfTlError(f"the server said: Bearer {SECRET}; also {TOKEN_SHAPED} elsewhere")

    code, err = exit_status_of(main, [], capsys)
    assert code == 1
    assert err == "error: the server said: Bearer ***; also hf_*** elsewhere\n"


def test_names_that_begin_with_hf_are_not_taken_for_tokens():
    names = "output.dir=runs/hf_experiments2 model.name=user/hf_convnext_tiny"
    assert scrub(names) == names


def test_the_login_caches_tokens_are_scrubbed_too(monkeypatch, tmp_path):
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "token").write_text("cached-login-secret\n")
    (tmp_path / "stored_tokens").write_text("[work]\nhf_token = stored-other-secret\n")
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "token"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "stored_tokens"))
    assert scrub("sent cached-login-secret, then stored-other-secret") == "sent ***, then ***"


def test_an_unexpected_exception_is_one_scrubbed_line(monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.delenv("HF_TL_DEBUG", raising=False)

    @cli
    def main(argv):
        raise RuntimeError(f"the server answered\n\n  Bearer {SECRET}\n")

    code, err = exit_status_of(main, [], capsys)
    assert code == 1
    assert the_error(err) == (
        "error: unexpected RuntimeError: the server answered Bearer ***\n"
        "  This is a bug in hf_tl or a library it uses; HF_TL_DEBUG=1 shows the traceback.\n"
    )
    monkeypatch.setenv("HF_TL_DEBUG", "1")
    code, err = exit_status_of(main, [], capsys)
    assert code == 1 and "Traceback (most recent call last)" in err and 'raise RuntimeError(f"the server' in err
    assert SECRET not in err and err.count("Bearer ***") == 2  # in the traceback, and on the error line
    assert err.splitlines()[-2] == "error: unexpected RuntimeError: the server answered Bearer ***"


def test_an_unexpected_message_that_runs_on_is_cut(monkeypatch, capsys):
    monkeypatch.delenv("HF_TL_DEBUG", raising=False)

    @cli
    def main(argv):
        raise RuntimeError("shared tensors " + ", ".join(f"'block{i}.weight'" for i in range(1000)))

    code, err = exit_status_of(main, [], capsys)
    first = the_error(err).splitlines()[0]
    assert code == 1 and first.startswith("error: unexpected RuntimeError: shared tensors 'block0.weight'")
    assert len(first) < 600 and first.endswith("characters more)")


def test_ctrl_c_is_one_line(capsys):
    @cli
    def main(argv):
        raise KeyboardInterrupt

    assert exit_status_of(main, [], capsys) == (1, "error: interrupted.\n")


SCRIPT = """
import logging, os, warnings
from transformers.utils import logging as transformers_logging
from hf_tl.errors import cli

token = os.environ["HF_TOKEN"]

@cli
def main():
    transformers_logging.get_logger("transformers.modeling_utils").warning("the server said Bearer %s", token)
    warnings.warn(f"a warning quoting Bearer {token}")
    try:
        raise ValueError(f"Bearer {token} refused")
    except ValueError:
        logging.getLogger("some.library").exception("a failed request")
    raise OSError(f"the end: Bearer {token}")

main()
"""


@pytest.mark.slow
def test_log_records_warnings_and_tracebacks_leave_a_real_process_scrubbed():
    result = run_cli(sys.executable, "-c", SCRIPT, HF_TOKEN=SECRET)
    assert result.returncode == 1
    assert SECRET not in result.stdout + result.stderr
    err = result.stderr
    assert "the server said Bearer ***" in err  # transformers' own handler
    assert "a warning quoting Bearer ***" in err  # warnings.showwarning
    assert "a failed request" in err and "ValueError: Bearer *** refused" in err  # a logged traceback
    assert err.splitlines()[-2] == "error: unexpected OSError: the end: Bearer ***"


# --- tracebacks that are now one line ---------------------------------------------------------------------------


def truncated(model: Path) -> Path:
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return model


def test_a_truncated_safetensors_file_is_named_by_train_and_eval(digits_splits_dir, tmp_path, capsys):
    model = truncated(save_vit(tmp_path / "vit"))
    data = [f"data.dataset={digits_splits_dir}", "data.eval_split=test"]
    code, err = exit_status_of(
        train.main, ["recipe=quickstart", f"model.name={model}", *data, f"output.dir={tmp_path / 'run'}"], capsys
    )
    expected = f"error: could not load model '{model}': its weights cannot be read"
    assert code == 1 and the_error(err).startswith(expected), err
    assert "damaged or incomplete" in err and "copy or download the checkpoint again" in err
    argv = [f"model={model}", f"dataset={digits_splits_dir}", "split=test", f"output={tmp_path / 'eval'}"]
    code, err = exit_status_of(evaluation.main, argv, capsys)
    assert code == 1 and the_error(err).startswith(expected), err
    assert not (tmp_path / "eval").exists()


def test_scheduler_arguments_are_checked_before_any_work(tmp_path, capsys):
    # Neither the model nor the dataset exists: the scheduler's error comes first, so nothing was read.
    out = tmp_path / "run"
    argv = ["recipe=quickstart", f"model.name={tmp_path / 'm'}", f"data.dataset={tmp_path / 'd'}", f"output.dir={out}"]
    plateau = "training.scheduler=reduce_lr_on_plateau"
    code, err = exit_status_of(train.main, [*argv, plateau, "training.scheduler_kwargs={fctor: 0.6}"], capsys)
    assert code == 2 and not out.exists()
    assert the_error(err).startswith(
        "error: recipe key 'training.scheduler_kwargs' has 'fctor', which training.scheduler=reduce_lr_on_plateau "
        "does not take. Did you mean 'factor'? It takes: mode, factor, patience,"
    )
    code, err = exit_status_of(train.main, [*argv, plateau, "training.scheduler_kwargs={factor: 1.5}"], capsys)
    assert code == 2 and "Factor should be < 1.0" in the_error(err)
    code, err = exit_status_of(
        train.main, [*argv, "training.scheduler=constant", "training.scheduler_kwargs={factor: 0.5}"], capsys
    )
    assert code == 2 and "training.scheduler=constant does not take. It takes none." in the_error(err)
    code, err = exit_status_of(train.main, [*argv, "training.scheduler=cosine_with_min_lr"], capsys)
    assert code == 2 and "One of min_lr or min_lr_rate should be set" in the_error(err)
    good = load_recipe("quickstart", [plateau, "training.scheduler_kwargs={factor: 0.6, min_lr: 1.0e-7}"])
    assert good.training.scheduler_kwargs == {"factor": 0.6, "min_lr": 1e-7}


@pytest.mark.parametrize(
    ("device", "said"),
    [
        ("nonsense", "device='nonsense' is not a device: give cpu, cuda, cuda:1, mps, ..."),
        ("cuda:99", "device='cuda:99': this machine has "),
        pytest.param(
            "cuda",
            "device='cuda': this machine has no cuda device.",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU"),
        ),
    ],
)
def test_a_device_this_machine_lacks_is_refused_before_any_work(device, said, tiny_vit, tmp_path, capsys):
    missing = tmp_path / "no-data"  # read after the device check, or the error would name it
    code, err = exit_status_of(evaluation.main, [f"model={tiny_vit}", f"dataset={missing}", f"device={device}"], capsys)
    assert code == 2 and the_error(err).startswith(f"error: {said}"), err
    argv = ["attention-distance", f"model={tiny_vit}", f"dataset={missing}", f"device={device}"]
    code, err = exit_status_of(analyze.main, argv, capsys)
    assert code == 2 and the_error(err).startswith(f"error: {said}"), err


def test_a_damaged_metrics_json_is_named_by_the_report(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text('{"model": "x", "eval": {"accu')
    code, err = exit_status_of(report.main, [str(run), f"out={tmp_path / 'report'}"], capsys)
    assert code == 1 and the_error(err).startswith(f"error: {run / 'metrics.json'} cannot be read ("), err
    assert "it is damaged" in err and "leave this folder out of the report" in err
    (run / "metrics.json").write_text("{}\n")
    code, err = exit_status_of(report.main, [str(run), f"out={tmp_path / 'report'}"], capsys)
    assert code == 1 and the_error(err).startswith(f"error: {run / 'metrics.json'} has no 'model'"), err
    assert not (tmp_path / "report" / "report.md").exists()


STUDY = """\
title: Assets
paper: the tests
datasets:
  - {key: digits, dataset: "${hf_tl.asset:quickstart/digits-5-9}"}
strategies:
  - {key: linear, recipe: {strategy: {kind: linear_probe}}}
backbones:
  - {key: quick, type: transformer, model: "${hf_tl.asset:BACKBONE}"}
"""


def test_a_study_may_name_shipped_assets(tmp_path, capsys):
    study = tmp_path / "assets.yaml"
    study.write_text(STUDY.replace("BACKBONE", "quickstart/backbone"))
    (cell,) = load_study(str(study)).cells
    assert cell.backbone.model == str(asset_path("quickstart/backbone"))
    assert cell.dataset.dataset == str(asset_path("quickstart/digits-5-9"))
    code, err = exit_status_of(sweep.main, [f"study={study}", f"out={tmp_path / 'sweep'}", "dry_run=true"], capsys)
    assert code == 0, err
    written = tmp_path / "sweep" / "cells" / "quick__digits__linear" / "quick__digits__linear.yaml"
    assert load_recipe(str(written)).model.name == str(asset_path("quickstart/backbone"))
    study.write_text(STUDY.replace("BACKBONE", "no/such/asset"))
    code, err = exit_status_of(sweep.main, [f"study={study}", f"out={tmp_path / 'sweep2'}", "dry_run=true"], capsys)
    assert code == 2 and the_error(err).startswith("error: asset 'no/such/asset' does not exist under"), err


def test_recipes_copy_never_writes_over_or_through_anything(tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    code, err = exit_status_of(recipes.main, ["copy", "quickstart", str(notes)], capsys)
    assert code == 1 and the_error(err) == (
        f"error: DEST={notes}: {notes} exists and is not a folder. Give a folder to write into (new, or existing).\n"
    )
    code, err = exit_status_of(recipes.main, ["copy", "quickstart", str(notes / "sub")], capsys)
    assert code == 1 and f"{notes} exists and is not a folder" in the_error(err)
    assert notes.read_text() == "my notes\n"

    dangling = tmp_path / "dangling.yaml"
    dangling.symlink_to(tmp_path / "elsewhere.yaml")
    code, err = exit_status_of(recipes.main, ["copy", "quickstart", str(dangling)], capsys)
    assert code == 1 and the_error(err).startswith(f"error: {dangling} is a symbolic link;"), err
    assert not (tmp_path / "elsewhere.yaml").exists()  # nothing written through the link

    mine = tmp_path / "mine.yaml"
    mine.write_text("# my recipe\n")
    (tmp_path / "link.yaml").symlink_to(mine)
    code, err = exit_status_of(recipes.main, ["copy", "quickstart", str(tmp_path / "link.yaml")], capsys)
    assert code == 1 and "is a symbolic link" in the_error(err)
    assert mine.read_text() == "# my recipe\n"


def test_output_paths_that_are_files_are_refused_before_any_work(tiny_vit, tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.write_text("someone's file\n")
    missing = tmp_path / "no-data"  # read after the output check, or the error would name it
    refused = f"{taken} exists and is not a folder. Give a folder to write into (new, or existing)."
    runs = {
        "eval": (evaluation.main, [f"model={tiny_vit}", f"dataset={missing}", f"output={taken}"]),
        "cka": (analyze.main, ["cka", f"model_a={tiny_vit}", f"dataset={missing}", f"out={taken}"]),
        "distance": (analyze.main, ["attention-distance", f"model={tiny_vit}", f"dataset={missing}", f"out={taken}/x"]),
        "report": (report.main, [str(tmp_path), f"out={taken}"]),
        "copy": (recipes.main, ["copy", "quickstart", str(taken)]),
    }
    for name, (main, argv) in runs.items():
        code, err = exit_status_of(main, argv, capsys)
        assert code == 1 and the_error(err).rstrip().endswith(refused), (name, err)
    assert taken.read_text() == "someone's file\n"


# --- messages that named something else ------------------------------------------------------------------------


def test_a_missing_model_directory_is_said_to_be_missing(digits_splits_dir, tmp_path, capsys):
    model = tmp_path / "checkpoints" / "vit"
    said = f"error: could not load model '{model}': the directory {model} does not exist."
    argv = [f"model={model}", f"dataset={digits_splits_dir}", "split=test"]
    code, err = exit_status_of(evaluation.main, argv, capsys)
    assert code == 1 and the_error(err).startswith(said), err
    argv = ["recipe=quickstart", f"model.name={model}", f"data.dataset={digits_splits_dir}", "data.eval_split=test"]
    code, err = exit_status_of(train.main, [*argv, f"output.dir={tmp_path / 'run'}"], capsys)
    assert code == 1 and the_error(err).startswith(said), err


@pytest.mark.slow
def test_eval_of_a_run_that_did_not_finish_says_how_to_finish_it(tiny_vit, digits_splits_dir, tmp_path, capsys):
    """A run folder with its recipe and no model/, as a run stopped before its end leaves it. The command the
    error prints is run as pasted; then the same eval works."""
    run = tmp_path / "run"
    overrides = [f"model.name={tiny_vit}", f"data.dataset={digits_splits_dir}", "data.eval_split=test"]
    overrides += ["training.epochs=1", "training.batch_size=16", f"output.dir={run}"]
    run.mkdir()
    (run / "recipe.yaml").write_text(to_yaml(load_recipe("quickstart", overrides)))
    argv = [f"model={run}", f"dataset={digits_splits_dir}", "split=test", f"output={tmp_path / 'eval'}"]
    code, err = exit_status_of(evaluation.main, argv, capsys)
    message = the_error(err)
    assert code == 1 and message.startswith(
        f"error: could not load model '{run}': it is an hf_tl run folder that holds no trained model (model/ is "
        "missing), so its run did not finish. Finish it with `"
    ), err
    command = message.split("`")[1]
    assert command.startswith("python -m hf_tl.train ")
    finished = run_cli(*shlex.split(command), cwd=tmp_path)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert exit_status_of(evaluation.main, argv, capsys)[0] == 0


def image_folder(root: Path, classes: dict[str, int]) -> Path:
    """An image folder of real digits: root/train/CLASS/N.png ('' puts the images in root/train itself)."""
    images = iter(digits(per_class=20)["image"])
    for name, count in classes.items():
        folder = root / "train" / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            next(images).save(folder / f"{i}.png")
    return root


@pytest.mark.parametrize("classes", [{"cat": 12}, {"": 12}], ids=["one class folder", "no class folders"])
def test_an_image_folder_of_one_class_has_fewer_than_two_classes(classes, tiny_vit, tmp_path, capsys):
    data = image_folder(tmp_path / "images", classes)
    argv = ["recipe=quickstart", f"model.name={tiny_vit}", f"data.dataset={data}"]
    code, err = exit_status_of(train.main, [*argv, f"output.dir={tmp_path / 'run'}"], capsys)
    name = next(iter(classes)) or "train"
    assert code == 1 and the_error(err) == (
        f"error: column 'label' has 1 class(es): ['{name}']; classification needs at least 2. An image folder has "
        "one class per subfolder: put each class's images in a folder of its own.\n"
    )


def test_a_folder_without_images_says_so(tiny_vit, tmp_path, capsys):
    for name in ("cat", "dog"):
        (tmp_path / "data" / "train" / name).mkdir(parents=True)
        (tmp_path / "data" / "train" / name / "README.txt").write_text("pictures to come\n")
    argv = ["recipe=quickstart", f"model.name={tiny_vit}", f"data.dataset={tmp_path / 'data'}"]
    code, err = exit_status_of(train.main, [*argv, f"output.dir={tmp_path / 'run'}"], capsys)
    assert code == 1 and the_error(err).startswith(
        f"error: no images found in '{tmp_path / 'data'}': datasets read its files as text data."
    ), err


def saved(path: Path, **splits) -> Path:
    DatasetDict(splits).save_to_disk(str(path))
    return path


def test_an_empty_split_is_named(digit_vit, tmp_path, capsys):
    full = digits(per_class=10)
    empty = full.select([])
    both = saved(tmp_path / "empty-test", train=full, test=empty)
    argv = ["recipe=quickstart", f"model.name={digit_vit}", f"output.dir={tmp_path / 'run'}"]
    code, err = exit_status_of(train.main, [*argv, f"data.dataset={both}", "data.eval_split=test"], capsys)
    assert code == 1 and the_error(err).startswith(
        f"error: data.eval_split='test' is an empty split of '{both}': it holds no examples."
    ), err
    assert "Splits: train (50 examples), test (0 examples)" in err
    no_train = saved(tmp_path / "empty-train", train=empty)
    code, err = exit_status_of(train.main, [*argv, f"data.dataset={no_train}"], capsys)
    assert code == 1 and the_error(err).startswith("error: data.train_split='train' is an empty split of"), err
    code, err = exit_status_of(evaluation.main, [f"model={digit_vit}", f"dataset={both}", "split=test"], capsys)
    assert code == 1 and "is empty" in the_error(err) and "list index" not in err, err


LABEL_COLUMNS = {
    "label, strings": ("label", Value("string"), lambda i: f"digit_{i}"),
    "label, floats": ("label", Value("float32"), float),
    "labels, strings": ("labels", Value("string"), lambda i: f"digit_{i}"),
    "class, integers": ("class", Value("int64"), int),
}


@pytest.mark.parametrize("kind", LABEL_COLUMNS)
def test_a_label_column_is_found_by_its_name_in_train_and_eval(kind, tmp_path, capsys):
    column, feature, value = LABEL_COLUMNS[kind]
    source = digits(per_class=10)
    data = source.remove_columns("label").add_column(column, [value(i) for i in source["label"]])
    data = data.cast(Features({"image": Image(), column: feature}))
    path = saved(tmp_path / "data", train=data, test=data)
    names = [str(value(i)) for i in range(5)]

    from hf_tl.config.recipe import DataSection
    from hf_tl.data.datasets import load_splits

    splits = load_splits(DataSection(dataset=str(path), eval_split="test"), seed=0)
    assert (splits.label_column, splits.labels) == (column, names)
    model = vit_with_labels(tmp_path / "vit", names)
    argv = [f"model={model}", f"dataset={path}", "split=test", f"output={tmp_path / 'eval'}", "device=cpu"]
    code, err = exit_status_of(evaluation.main, argv, capsys)
    assert code == 0, err
    assert os.path.isfile(tmp_path / "eval" / "eval.json")


def test_output_into_a_closed_pipe_ends_quietly():
    """`python -m hf_tl.train --help | head -1`: the reader leaving is no error of the user's, nor a traceback."""
    process = subprocess.Popen(
        [sys.executable, "-m", "hf_tl.train", "--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    process.stdout.close()  # before the command writes anything
    stderr = process.stderr.read().decode()
    process.wait(timeout=120)
    assert "Traceback" not in stderr and "error" not in stderr, stderr


def test_a_warning_is_one_scrubbed_line_said_once_per_command(capsys, caplog):
    from hf_tl.errors import warn

    token = "hf_" + "a1B2" * 9

    @cli
    def command() -> None:
        for _ in range(3):  # a model and its processor meet the same check
            warn(f"trust_remote_code=true for org/model (token {token})")

    for _ in range(2):
        command()
        assert capsys.readouterr().err == "warning: trust_remote_code=true for org/model (token hf_***)\n"
    assert "trust_remote_code=true" in caplog.text  # a logger's record too: log capture sees it


def test_hf_tl_warns_only_through_warn():
    """No module prints its own `warning:` line or logs a warning of its own: one format, one scrub, one dedupe."""
    import ast

    offenders = []
    for path in sorted(Path(hf_tl.__file__).parent.rglob("*.py")):
        if path.name == "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            call = node if isinstance(node, ast.Call) else None
            name = getattr(call.func, "attr", None) if call else None
            text = ast.unparse(call) if call else ""
            if name in ("warning", "warn") and "logger" in text or (name is None and "'warning: " in text):
                offenders.append(f"{path.name}:{node.lineno}: {text[:80]}")
    assert offenders == []


def test_only_the_main_process_of_a_launch_warns(capsys, monkeypatch):
    """Under torchrun or accelerate launch every process runs the same checks: one warning, not one per rank."""
    from hf_tl.errors import warn

    monkeypatch.setenv("RANK", "1")
    warn("allow_pickle=true: org/model may load pickle weights")
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("RANK", "0")
    warn("allow_pickle=true: org/model may load pickle weights")
    assert capsys.readouterr().err == "warning: allow_pickle=true: org/model may load pickle weights\n"
