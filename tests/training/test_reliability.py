"""Crashes, interrupts and full disks cost at most an epoch; bad input is answered; nothing unsafe is loaded.

The crash tests run the real command in a subprocess and kill it: mid-epoch with SIGKILL, while
it writes a checkpoint, and with Ctrl-C. Each then runs the same command again and compares the
final numbers with an uninterrupted run of the same seed.
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import digits, run_cli, save_vit, saved_digits

from hf_tl.config.recipe import load_recipe
from hf_tl.errors import HfTlError
from hf_tl.training.run import resume_point, run
from hf_tl.training.trainer import resume_command

EPOCHS = 3
STEPS_PER_EPOCH = 24  # 96 training images in batches of 4
LOGGING_STEPS = 5  # does not divide an epoch: each checkpoint falls between two logged losses
LOG_EPOCH = re.compile(r"^epoch ([\d.]+)/")  # the line hf_tl prints once an epoch's checkpoint is saved


@pytest.fixture(scope="module")
def crash_data(tmp_path_factory) -> Path:
    return saved_digits(tmp_path_factory.mktemp("crash-data"), per_class=24)


@pytest.fixture(scope="module")
def crash_model(tmp_path_factory) -> Path:
    return save_vit(tmp_path_factory.mktemp("crash-model") / "vit")


def train_command(model: Path, data: Path, out: Path) -> list[str]:
    return [
        sys.executable, "-m", "hf_tl.train", "recipe=quickstart", f"model.name={model}", f"data.dataset={data}",
        "strategy.kind=last_block", f"training.epochs={EPOCHS}", "training.batch_size=4",
        f"training.logging_steps={LOGGING_STEPS}",
        f"output.dir={out}",
    ]  # fmt: skip


def start(command: list[str], cwd: Path | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def pasted(message: str, after: str) -> list[str]:
    """The arguments a message says to add to the command (what follows `after`), split as a shell splits them."""
    assert after in message, message
    return shlex.split(message.split(after, 1)[1].splitlines()[0])


def wait_for_epoch_between(process: subprocess.Popen, low: float, high: float) -> None:
    """Read the run's log until it reports an epoch done (and checkpointed) with low <= epoch < high."""
    for line in process.stdout:
        found = LOG_EPOCH.search(line)
        if found and low <= float(found.group(1)) < high:
            return
    raise AssertionError(f"the run ended (status {process.wait()}) before reaching epoch {low}-{high}")


def results(run_dir: Path) -> dict:
    """What must not depend on interruptions: final metrics, each epoch's evaluation, every logged loss."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    history = json.loads((run_dir / "log_history.json").read_text())
    per_epoch = [(h["epoch"], h["eval_loss"], h["eval_accuracy"]) for h in history if "eval_accuracy" in h]
    losses = [(h["step"], h["loss"], h["grad_norm"], h["learning_rate"]) for h in history if "loss" in h]
    train_loss = [h["train_loss"] for h in history if "train_loss" in h]
    return {
        "eval": metrics["eval"],
        "train": metrics["train"],
        "per_epoch": per_epoch,
        "losses": losses,
        "train_loss": train_loss,
    }


@pytest.fixture(scope="module")
def uninterrupted(crash_model, crash_data, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    finished = run_cli(*train_command(crash_model, crash_data, out))
    assert finished.returncode == 0, finished.stderr
    return results(out)


def test_same_seed_twice_gives_identical_metrics(uninterrupted, crash_model, crash_data, tmp_path):
    finished = run_cli(*train_command(crash_model, crash_data, tmp_path / "again"))
    assert finished.returncode == 0, finished.stderr
    assert results(tmp_path / "again") == uninterrupted
    assert len(uninterrupted["per_epoch"]) == EPOCHS
    assert len(uninterrupted["losses"]) == EPOCHS * STEPS_PER_EPOCH // LOGGING_STEPS
    assert len(uninterrupted["train_loss"]) == 1


def test_sigkill_mid_epoch_then_resume_matches_the_uninterrupted_run(uninterrupted, crash_model, crash_data, tmp_path):
    out = tmp_path / "run"
    command = train_command(crash_model, crash_data, out)
    process = start(command)
    wait_for_epoch_between(process, 1.0, 2.0)  # epoch 1 is checkpointed, epoch 2 half done
    process.kill()
    process.wait()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [f"checkpoint-{STEPS_PER_EPOCH}"]
    assert not (out / "metrics.json").exists()

    resumed = run_cli(*command)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from {out / 'checkpoints' / f'checkpoint-{STEPS_PER_EPOCH}'}" in resumed.stdout
    assert STEPS_PER_EPOCH % LOGGING_STEPS, "the checkpoint holds loss summed since the last log"
    assert results(out) == uninterrupted  # every logged loss and train_loss too, exactly
    timings = json.loads((out / "metrics.json").read_text())["timings"]
    assert len(timings["train_seconds_per_epoch"]) == len(timings["eval_seconds_per_epoch"]) == EPOCHS


def test_sigkill_while_saving_never_leaves_a_checkpoint_resume_would_pick(
    uninterrupted, crash_model, crash_data, tmp_path
):
    out = tmp_path / "run"
    staging = out / "checkpoints" / ".saving"
    command = train_command(crash_model, crash_data, out)
    for _attempt in range(5):
        process = start(command + ["output.overwrite=true"])
        wait_for_epoch_between(process, 1.0, 2.0)  # the second save is an epoch away
        deadline = time.monotonic() + 60
        while not saving(staging) and process.poll() is None and time.monotonic() < deadline:
            pass
        process.kill()
        process.wait()
        if saving(staging):
            break
    else:
        pytest.fail("never caught the run while it was saving")
    assert saving(staging), "killed inside a save: its partial files are in the staging folder"
    complete = sorted(p.name for p in (out / "checkpoints").glob("checkpoint-*"))
    assert complete == [f"checkpoint-{STEPS_PER_EPOCH}"]
    assert {"model.safetensors", "optimizer.pt", "trainer_state.json", "rng_state.pth"} <= {
        p.name for p in (out / "checkpoints" / complete[0]).iterdir()
    }

    resumed = run_cli(*command)
    assert resumed.returncode == 0, resumed.stderr
    assert results(out) == uninterrupted
    assert not staging.exists()


def saving(staging: Path) -> bool:
    """A checkpoint is being written: the staging folder exists and holds something."""
    try:
        return any(staging.iterdir())
    except FileNotFoundError:
        return False


@pytest.fixture(scope="module")
def two_checkpoints(crash_model, crash_data, tmp_path_factory) -> Path:
    """A run killed in its third epoch, put aside whole (checkpoint-24 and -48): `fresh_copy` brings it back."""
    out = tmp_path_factory.mktemp("two-checkpoints") / "run"
    process = start(train_command(crash_model, crash_data, out))
    wait_for_epoch_between(process, 2.0, 3.0)
    process.kill()
    process.wait()
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == [f"checkpoint-{STEPS_PER_EPOCH}", f"checkpoint-{2 * STEPS_PER_EPOCH}"]
    return out.rename(out.with_name("pristine"))


def fresh_copy(pristine: Path) -> Path:
    """The killed run back at its own path: its trainer states name checkpoints by absolute path."""
    out = pristine.with_name("run")
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(pristine, out)
    return out


def cut_in_half(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("damage", "what"),
    [
        (lambda c: cut_in_half(c / "model.safetensors"), "model.safetensors is truncated or corrupt"),
        (lambda c: cut_in_half(c / "optimizer.pt"), "optimizer.pt is truncated or corrupt"),
        (lambda c: (c / "trainer_state.json").unlink(), "trainer_state.json missing"),
    ],
    ids=["weights-truncated", "optimizer-truncated", "trainer-state-missing"],
)
def test_a_damaged_last_checkpoint_is_set_aside_and_the_one_before_resumes(
    damage, what, two_checkpoints, uninterrupted, crash_model, crash_data
):
    out = fresh_copy(two_checkpoints)
    damage(out / "checkpoints" / f"checkpoint-{2 * STEPS_PER_EPOCH}")
    resumed = run_cli(*train_command(crash_model, crash_data, out))
    assert resumed.returncode == 0, resumed.stderr
    assert "Traceback" not in resumed.stderr
    assert (
        f"hf_tl: checkpoint-48 is damaged ({what}" in resumed.stdout
        and f"moved to damaged-checkpoint-48; resuming from {out / 'checkpoints' / 'checkpoint-24'}" in resumed.stdout
    ), resumed.stdout
    assert results(out) == uninterrupted


@pytest.mark.slow
def test_a_damaged_checkpoint_is_never_picked_again_and_with_none_left_training_starts_over(
    two_checkpoints, crash_model, crash_data, capsys
):
    out = fresh_copy(two_checkpoints)
    checkpoints = out / "checkpoints"
    recipe = load_recipe("quickstart", train_command(crash_model, crash_data, out)[4:])
    cut_in_half(checkpoints / "checkpoint-48" / "optimizer.pt")
    for _again in range(2):
        assert resume_point(recipe, checkpoints) == str(checkpoints / "checkpoint-24")
    first, again = capsys.readouterr().out.splitlines()
    assert first.startswith("hf_tl: checkpoint-48 is damaged (optimizer.pt is truncated or corrupt: ")
    assert again.startswith("hf_tl: resuming from")
    assert (checkpoints / "damaged-checkpoint-48" / "optimizer.pt").is_file(), "kept, under a name resume ignores"

    (checkpoints / "checkpoint-24" / "trainer_state.json").unlink()
    assert resume_point(recipe, checkpoints) is None
    assert capsys.readouterr().out == (
        "hf_tl: checkpoint-24 is damaged (trainer_state.json missing), moved to damaged-checkpoint-24; "
        "no usable checkpoint is left, so training starts over\n"
    )


def test_ctrl_c_stops_cleanly_and_the_same_command_resumes(uninterrupted, crash_model, crash_data, tmp_path):
    out = tmp_path / "run"
    command = train_command(crash_model, crash_data, out)
    process = start(command)
    wait_for_epoch_between(process, 1.0, 2.0)
    process.send_signal(signal.SIGINT)
    tail = process.stdout.read()
    assert process.wait() == 1
    assert "interrupted" in tail and "the same command" in tail and "Traceback" not in tail
    assert f"continue with the same command plus output.dir={shlex.quote(str(out))}\n" in tail
    assert (out / "checkpoints" / f"checkpoint-{STEPS_PER_EPOCH}").is_dir()

    resumed = run_cli(*command)
    assert resumed.returncode == 0, resumed.stderr
    assert results(out) == uninterrupted


def test_ctrl_c_says_what_resumes_a_timestamped_run_with_resume_never(uninterrupted, crash_model, crash_data, tmp_path):
    """The same command alone would not: the default output.dir is a new folder each time, and
    training.resume=never deletes the checkpoints. What the message says to add, pasted, resumes the run."""
    command = [a for a in train_command(crash_model, crash_data, tmp_path) if not a.startswith("output.dir=")]
    command.append("training.resume=never")
    process = start(command, cwd=tmp_path)  # into tmp_path/runs/quickstart-<timestamp>
    wait_for_epoch_between(process, 1.0, 2.0)
    process.send_signal(signal.SIGINT)
    tail = process.stdout.read()
    assert process.wait() == 1
    (run_dir,) = (tmp_path / "runs").iterdir()
    added = pasted(tail[tail.rindex("error: interrupted") :], "continue with the same command plus ")
    assert added == [f"output.dir={run_dir.relative_to(tmp_path)}", "training.resume=auto"]

    resumed = run_cli(*command, *added, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from runs/" in resumed.stdout
    assert list((tmp_path / "runs").iterdir()) == [run_dir]
    assert results(run_dir) == uninterrupted


def test_resume_command_quotes_the_folder_and_undoes_what_would_discard_the_checkpoints(crash_data, tmp_path):
    folder = tmp_path / "my run"  # a space: quoted, or the pasted command splits the folder in two
    folder.mkdir()
    quoted = f"output.dir={shlex.quote(str(folder))}"
    assert shlex.split(quoted) == [f"output.dir={folder}"]
    both = f"the same command plus {quoted} training.resume=auto output.overwrite=false"
    assert resume_command(folder) == both  # no recipe.yaml to read: undo both, right whatever they were
    (folder / "recipe.yaml").write_text("training:\n  resume: never\noutput:\n  overwrite: true\n")
    assert resume_command(folder) == both
    (folder / "recipe.yaml").write_text("training:\n  resume: auto\noutput:\n  overwrite: false\n")
    assert resume_command(folder) == f"the same command plus {quoted}"
    recipe = load_recipe("quickstart", [f"data.dataset={crash_data}", "training.resume=never"])
    assert resume_command(folder, recipe) == f"the same command plus {quoted} training.resume=auto"


def test_resume_never_starts_over(uninterrupted, crash_model, crash_data, tmp_path):
    out = tmp_path / "run"
    command = train_command(crash_model, crash_data, out)
    process = start(command)
    wait_for_epoch_between(process, 1.0, 2.0)
    process.kill()
    process.wait()
    again = run_cli(*command, "training.resume=never")
    assert again.returncode == 0, again.stderr
    assert "resuming" not in again.stdout
    history = json.loads((out / "log_history.json").read_text())
    assert history[0]["epoch"] < 1.0  # logged from the first epoch on: it started over
    assert results(out) == uninterrupted


# What safetensors raises when the disk fills up under it (its Rust writer's io::Error, as it formats it).
DISK_FULL = 'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'


def fill_the_disk_when_writing(monkeypatch, where: str):
    """Make transformers' safetensors writer fail as on a full disk, for files whose path contains `where`."""
    import transformers.modeling_utils as modeling_utils
    from safetensors import SafetensorError

    real_save = modeling_utils.safe_save_file

    def save(tensors, filename, *args, **kwargs):
        if where in str(filename):
            raise SafetensorError(DISK_FULL)
        return real_save(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(modeling_utils, "safe_save_file", save)
    return lambda: monkeypatch.setattr(modeling_utils, "safe_save_file", real_save)


def test_full_disk_while_saving_keeps_the_last_checkpoint(crash_model, crash_data, tmp_path, monkeypatch):
    """The disk fills up during the second checkpoint: a clear error, and the first stays whole."""
    out = tmp_path / "run"
    space_freed = fill_the_disk_when_writing(monkeypatch, f"checkpoint-{2 * STEPS_PER_EPOCH}")
    recipe = load_recipe("quickstart", train_command(crash_model, crash_data, out)[4:])
    resume = re.escape(f"resume with the same command plus output.dir={shlex.quote(str(out))}")
    with pytest.raises(HfTlError, match=rf"the disk is full.*checkpoint-24, is intact.*{resume}$"):
        run(recipe)
    checkpoints = out / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == [f"checkpoint-{STEPS_PER_EPOCH}"]
    state = json.loads((checkpoints / f"checkpoint-{STEPS_PER_EPOCH}" / "trainer_state.json").read_text())
    assert state["global_step"] == STEPS_PER_EPOCH

    space_freed()
    run(recipe)
    assert (out / "metrics.json").exists() and not checkpoints.exists()


def test_full_disk_while_writing_the_model_keeps_the_checkpoints(crash_model, crash_data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    space_freed = fill_the_disk_when_writing(monkeypatch, ".model.partial")
    recipe = load_recipe("quickstart", train_command(crash_model, crash_data, out)[4:] + ["training.epochs=1"])
    finish = re.escape(f"finish with the same command plus output.dir={shlex.quote(str(out))}")
    with pytest.raises(HfTlError, match=rf"could not write the trained model.*disk is full.*{finish}$"):
        run(recipe)
    assert not (out / "model").exists() and not (out / ".model.partial").exists()
    assert (out / "checkpoints" / f"checkpoint-{STEPS_PER_EPOCH}").is_dir()

    space_freed()
    run(recipe)
    assert (out / "model" / "model.safetensors").exists() and (out / "metrics.json").exists()


def test_a_run_stopped_after_its_final_checkpoint_resumes_to_the_uninterrupted_numbers(
    uninterrupted, crash_model, crash_data, tmp_path, monkeypatch
):
    """Resumed from the last epoch's checkpoint, train() runs no epoch: the loss sums must come back all the same."""
    out = tmp_path / "run"
    command = train_command(crash_model, crash_data, out)
    fill_the_disk_when_writing(monkeypatch, ".model.partial")  # the run stops after its final checkpoint
    with pytest.raises(HfTlError, match="could not write the trained model") as failed:
        run(load_recipe("quickstart", command[4:]))
    last = out / "checkpoints" / f"checkpoint-{EPOCHS * STEPS_PER_EPOCH}"
    assert last.is_dir() and not (out / "metrics.json").exists()
    added = pasted(str(failed.value), "finish with the same command plus ")
    assert added == [f"output.dir={out}"]

    resumed = run_cli(*command, *added)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from {last}" in resumed.stdout
    assert results(out) == uninterrupted  # every logged loss and train_loss, exactly


# --- bad input ----------------------------------------------------------------------------------------


def image_folder_with_bad_files(root: Path) -> Path:
    """An image folder of two classes with one corrupt and one truncated file."""
    for label in ("cat", "dog"):
        folder = root / label
        folder.mkdir(parents=True)
        for i, image in enumerate(digits(per_class=6)["image"][:6]):
            image.convert("RGB").save(folder / f"{i}.png")
    (root / "cat" / "corrupt.png").write_bytes(b"this is not a png")
    whole = io.BytesIO()
    digits(per_class=1)["image"][0].convert("RGB").resize((64, 64)).save(whole, format="PNG")
    (root / "dog" / "truncated.png").write_bytes(whole.getvalue()[: len(whole.getvalue()) // 2])
    return root


def quick_train(model: Path, data: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return run_cli(
        sys.executable, "-m", "hf_tl.train", "recipe=quickstart", f"model.name={model}", f"data.dataset={data}",
        "training.epochs=1", "training.batch_size=8", f"output.dir={out}", *extra,
    )  # fmt: skip


def test_bad_images_are_named_before_training(crash_model, tmp_path):
    data = image_folder_with_bad_files(tmp_path / "images")
    failed = quick_train(crash_model, data, tmp_path / "run")
    assert failed.returncode == 1
    assert "2 of 14 images in split 'train' cannot be decoded" in failed.stderr
    assert "corrupt.png" in failed.stderr and "truncated.png" in failed.stderr
    assert "data.on_bad_image=skip" in failed.stderr and "Traceback" not in failed.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_bad_images_are_skipped_and_counted_when_asked(crash_model, tmp_path):
    data = image_folder_with_bad_files(tmp_path / "images")
    finished = quick_train(crash_model, data, tmp_path / "run", "data.on_bad_image=skip")
    assert finished.returncode == 0, finished.stderr
    assert "skipped 2 of 14 images in split 'train'" in finished.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["skipped_images"] == {"train": 2}
    assert metrics["num_train_examples"] + metrics["num_eval_examples"] == 12


def pickled_checkpoint(path: Path) -> Path:
    """A checkpoint laid out as older Hub repositories are: config.json and pytorch_model.bin."""
    from transformers import AutoModelForImageClassification

    save_vit(path / "source")
    model = AutoModelForImageClassification.from_pretrained(path / "source")
    model.config.save_pretrained(path / "pickled")
    (path / "source" / "preprocessor_config.json").rename(path / "pickled" / "preprocessor_config.json")
    torch.save(model.state_dict(), path / "pickled" / "pytorch_model.bin")
    return path / "pickled"


def test_pickle_weights_are_refused_unless_allowed(crash_data, tmp_path):
    model = pickled_checkpoint(tmp_path)
    refused = quick_train(model, crash_data, tmp_path / "run")
    assert refused.returncode == 1
    assert "only pickle ones (.bin)" in refused.stderr and "model.allow_pickle=true" in refused.stderr
    allowed = quick_train(model, crash_data, tmp_path / "allowed", "model.allow_pickle=true")
    assert allowed.returncode == 0, allowed.stderr
    assert "model.allow_pickle=true" in allowed.stderr  # the warning
    assert not list((tmp_path / "allowed").rglob("*.bin")), "hf_tl writes safetensors only"
    assert (tmp_path / "allowed" / "model" / "model.safetensors").exists()


def test_unreachable_hub_id_says_how_to_work_offline(crash_data, tmp_path):
    failed = quick_train(Path("some-org/not-cached-model"), crash_data, tmp_path / "run")
    assert failed.returncode == 1
    assert "Hub may be unreachable" in failed.stderr and "HF_HUB_OFFLINE=1" in failed.stderr
    assert "model.name=/path/to/checkpoint" in failed.stderr and "Traceback" not in failed.stderr


def test_remote_code_is_off_unless_asked_and_then_warned(crash_model, caplog):
    from hf_tl.config.recipe import ModelSection
    from hf_tl.models.loading import load_model

    assert ModelSection(name="x").trust_remote_code is False
    with caplog.at_level("WARNING"):
        load_model(ModelSection(name=str(crash_model), trust_remote_code=True))
    assert "trust_remote_code=true" in caplog.text


def test_recipes_are_data_and_never_build_python_objects(tmp_path):
    marker = tmp_path / "pwned"
    recipe = tmp_path / "evil.yaml"
    recipe.write_text(f'model:\n  name: !!python/object/apply:os.system ["touch {marker}"]\ndata:\n  dataset: x\n')
    failed = run_cli(sys.executable, "-m", "hf_tl.params", f"recipe={recipe}")
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    assert not marker.exists()


def test_eval_names_bad_images_or_skips_them(tmp_path):
    from conftest import TINY_VIT
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    model = tmp_path / "cat-dog-vit"
    config = ViTConfig(**TINY_VIT, id2label={0: "cat", 1: "dog"}, label2id={"cat": 0, "dog": 1})
    ViTForImageClassification(config).save_pretrained(model)
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(model)
    data = image_folder_with_bad_files(tmp_path / "images")
    command = [sys.executable, "-m", "hf_tl.eval", f"model={model}", f"dataset={data}", "split=train"]
    failed = run_cli(*command, f"output={tmp_path / 'refused'}")
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert "2 of 14 images in split 'train' cannot be decoded" in failed.stderr and "corrupt.png" in failed.stderr
    assert not (tmp_path / "refused").exists()
    skipped = run_cli(*command, "on_bad_image=skip", f"output={tmp_path / 'skipped'}")
    assert skipped.returncode == 0, skipped.stderr
    result = json.loads((tmp_path / "skipped" / "eval.json").read_text())
    assert result["skipped_images"] == 2 and result["num_examples"] == 12


def test_a_folder_without_weights_is_not_called_pickle(crash_data, tmp_path):
    from conftest import TINY_VIT
    from transformers import ViTConfig

    ViTConfig(**TINY_VIT).save_pretrained(tmp_path / "config-only")
    failed = quick_train(tmp_path / "config-only", crash_data, tmp_path / "run")
    assert failed.returncode == 1
    assert "could not load model" in failed.stderr and "pickle" not in failed.stderr
