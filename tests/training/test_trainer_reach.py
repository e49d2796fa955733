"""The Trainer's reach: trackers (training.report_to), any TrainingArguments field (training.args) and
resuming from a checkpoint given by path (training.resume=PATH) reach the Trainer and the run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import exit_status_of

from hf_tl.config.recipe import load_recipe
from hf_tl.errors import HfTlError, RecipeError
from hf_tl.training import run as run_module
from hf_tl.training.arguments import training_arguments
from hf_tl.training.run import build_trainer, resume_point, run
from hf_tl.training.trainer import HfTlTrainer, resume_command

STEPS_PER_EPOCH = 10  # 160 training images (val_fraction 0.2 of 200) in batches of 16


def tiny(model_dir: Path, data_dir: Path, out: Path, *extra: str):
    return load_recipe(
        "quickstart",
        [
            f"model.name={model_dir}",
            f"data.dataset={data_dir}",
            "training.epochs=2",
            "training.batch_size=16",
            "training.warmup_ratio=0",
            f"output.dir={out}",
            *extra,
        ],
    )


def evaluations(history: list[dict]) -> list[tuple]:
    return [(h["step"], h["eval_loss"], h["eval_accuracy"]) for h in history if "eval_accuracy" in h]


def arguments(*extra: str):
    return training_arguments(load_recipe("quickstart", list(extra)), Path("checkpoints"))


def test_saves_follow_the_evaluations_unless_given():
    default = arguments()
    assert (default.eval_strategy, default.save_strategy) == ("epoch", "epoch")
    steps = arguments("training.args.eval_strategy=steps", "training.args.eval_steps=5")
    assert (steps.save_strategy, steps.eval_steps, steps.save_steps) == ("steps", 5, 5)
    unset = arguments("training.args.eval_strategy=steps", "training.logging_steps=4")  # evaluates every log
    assert (unset.eval_steps, unset.save_steps) == (4, 4)
    given = arguments("training.args={eval_strategy: steps, eval_steps: 5, save_steps: 10}")
    assert given.save_steps == 10


def test_training_args_reach_the_arguments_and_the_best_model_is_kept_by_accuracy():
    args = arguments("training.args.max_grad_norm=0.5")
    assert args.max_grad_norm == 0.5
    assert (args.load_best_model_at_end, args.metric_for_best_model, args.greater_is_better) == (True, "accuracy", True)
    assert arguments("training.report_to=[tensorboard]").report_to == ["tensorboard"]
    assert arguments().report_to in ([], "none", ["none"])


def test_an_unquoted_no_reaches_a_strategy_as_no():
    assert arguments("training.args.logging_strategy=no").logging_strategy == "no"  # YAML reads it as False


def test_an_owned_key_exits_2_naming_the_key_to_set(tmp_path, capsys):
    from hf_tl.train import main

    argv = ["recipe=quickstart", f"data.dataset={tmp_path / 'none'}", f"output.dir={tmp_path / 'run'}"]
    code, err = exit_status_of(main, [*argv, "training.args.output_dir=/tmp/elsewhere"], capsys)
    assert code == 2, err
    assert "recipe key 'training.args.output_dir' is refused: hf_tl sets it from output.dir" in err
    assert not (tmp_path / "run").exists()
    code, err = exit_status_of(main, [*argv, "training.args.eval_strategy=no"], capsys)
    assert code == 2, err
    assert "recipe key 'training.args.eval_strategy' got 'no', but hf_tl keeps the checkpoint with the best" in err


def test_gradient_checkpointing_reaches_the_trainer_and_the_model(tiny_vit, digits_dir, tmp_path):
    recipe = tiny(
        tiny_vit,
        digits_dir,
        tmp_path,
        "strategy.kind=full",
        "training.max_steps=1",
        "training.args.gradient_checkpointing=true",
    )
    trainer, *_ = build_trainer(recipe, tmp_path)
    assert trainer.args.gradient_checkpointing is trainer.args.activation_checkpointing is True  # its v5 name
    trainer.train()
    assert trainer.model.is_activation_checkpointing


def test_a_damaged_checkpoint_given_by_path_is_named(tmp_path):
    checkpoint = tmp_path / "checkpoint-10"
    checkpoint.mkdir()
    (checkpoint / "trainer_state.json").write_text("{}")
    recipe = load_recipe("quickstart", [f"training.resume={checkpoint}"])
    with pytest.raises(HfTlError, match=rf"training.resume={checkpoint} cannot resume: optimizer.pt, .* missing"):
        resume_point(recipe, tmp_path / "run" / "checkpoints")


@pytest.fixture(scope="module")
def tracked_steps_run(tiny_vit, digits_dir, tmp_path_factory) -> Path:
    """A run that logs to TensorBoard and evaluates (and saves) every 5 steps."""
    out = tmp_path_factory.mktemp("tracked") / "run"
    extra = ("training.report_to=[tensorboard]", "training.args.eval_strategy=steps", "training.args.eval_steps=5")
    return run(tiny(tiny_vit, digits_dir, out, *extra))


def test_tensorboard_writes_its_events_into_the_run_folder(tracked_steps_run):
    pytest.importorskip("tensorboard")
    events = list((tracked_steps_run / "logs").rglob("events.out.tfevents.*"))
    assert events and all(e.stat().st_size > 0 for e in events)
    assert not (tracked_steps_run / "checkpoints").exists()  # removed at the end; the events are not in it
    assert (tracked_steps_run / "metrics.json").is_file()


def test_a_run_evaluating_every_few_steps_finishes_with_its_table(tracked_steps_run):
    metrics = json.loads((tracked_steps_run / "metrics.json").read_text())
    assert metrics["eval"]["accuracy"] is not None
    history = json.loads((tracked_steps_run / "log_history.json").read_text())
    assert [step for step, *_ in evaluations(history)] == [5, 10, 15, 20]


def test_resume_from_a_checkpoint_given_by_path_continues_from_its_step(
    tiny_vit, digits_dir, tmp_path, monkeypatch, capsys
):
    first = tmp_path / "first"

    def model_not_written(*args, **kwargs):
        raise OSError("the model is not written: the checkpoints stay")

    with monkeypatch.context() as patched:  # the first run stops after training: its checkpoints are kept
        patched.setattr(run_module, "save_final_model", model_not_written)
        with pytest.raises(HfTlError, match="could not write the trained model"):
            run(tiny(tiny_vit, digits_dir, first))
    given = first / "checkpoints" / f"checkpoint-{STEPS_PER_EPOCH}"
    uninterrupted = json.loads(
        (first / "checkpoints" / f"checkpoint-{2 * STEPS_PER_EPOCH}" / "trainer_state.json").read_text()
    )

    steps = []
    real_step = HfTlTrainer.training_step

    def counted(self, *args, **kwargs):
        steps.append(self.state.global_step)
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(HfTlTrainer, "training_step", counted)
    second = run(tiny(tiny_vit, digits_dir, tmp_path / "second", f"training.resume={given}"))
    assert f"hf_tl: resuming from {given} (training.resume)" in capsys.readouterr().out
    assert steps == list(range(STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH))  # only the second epoch's steps ran
    history = json.loads((second / "log_history.json").read_text())
    # the first epoch's evaluation came with the checkpoint; the second is the uninterrupted run's
    assert evaluations(history) == evaluations(uninterrupted["log_history"])
    assert (second / "metrics.json").is_file()


def test_the_resume_hint_keeps_a_checkpoint_given_by_path_until_the_run_has_its_own(tmp_path):
    checkpoint = tmp_path / "other" / "checkpoint-10"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text("{}")
    recipe = load_recipe("quickstart", [f"training.resume={checkpoint}"])
    run_dir = tmp_path / "run"
    assert resume_command(run_dir, recipe) == f"the same command plus output.dir={run_dir}"
    (run_dir / "checkpoints" / "checkpoint-20").mkdir(parents=True)
    assert resume_command(run_dir, recipe) == f"the same command plus output.dir={run_dir} training.resume=auto"


@pytest.fixture(scope="module")
def kept_checkpoints(tiny_vit, digits_dir, tmp_path_factory) -> Path:
    """A run's checkpoints/ (checkpoint-10 and -20), kept: the run stopped before writing its model."""
    first = tmp_path_factory.mktemp("kept") / "first"

    def model_not_written(*args, **kwargs):
        raise OSError("the model is not written: the checkpoints stay")

    with pytest.MonkeyPatch.context() as patched:
        patched.setattr(run_module, "save_final_model", model_not_written)
        with pytest.raises(HfTlError, match="could not write the trained model"):
            run(tiny(tiny_vit, digits_dir, first))
    return first / "checkpoints"


def test_a_run_resumed_from_a_path_keeps_a_recipe_that_reads_without_it(
    kept_checkpoints, tiny_vit, digits_dir, tmp_path
):
    """recipe.yaml records resume auto (the run resumes from its own checkpoints) and metrics.json where it began,
    so the folder still reads, evaluates and reproduces once that checkpoint is gone."""
    given = tmp_path / "copy" / "checkpoint-10"
    shutil.copytree(kept_checkpoints / "checkpoint-10", given)
    second = run(tiny(tiny_vit, digits_dir, tmp_path / "second", f"training.resume={given}"))
    shutil.rmtree(given)
    assert json.loads((second / "metrics.json").read_text())["resumed_from"] == str(given)
    assert load_recipe(str(second / "recipe.yaml")).training.resume == "auto"


def test_a_checkpoint_past_the_runs_last_step_is_refused(kept_checkpoints, tiny_vit, digits_dir, tmp_path, capsys):
    given = kept_checkpoints / "checkpoint-20"
    recipe = tiny(tiny_vit, digits_dir, tmp_path / "run", f"training.resume={given}", "training.max_steps=10")
    with pytest.raises(RecipeError) as refused:
        run(recipe)
    assert str(refused.value).startswith(
        f"training.resume={given} is at optimizer step 20, and this run ends at step 10 (training.epochs=2, "
        "training.max_steps=10): nothing would train."
    )


def test_a_checkpoint_of_another_recipe_is_named_not_a_crash(kept_checkpoints, tiny_vit, digits_dir, tmp_path):
    """The checkpoint's optimizer holds the last block's groups; a full fine-tuning has others."""
    given = kept_checkpoints / "checkpoint-10"
    recipe = tiny(tiny_vit, digits_dir, tmp_path / "run", f"training.resume={given}", "strategy.kind=full")
    with pytest.raises(HfTlError) as refused:
        run(recipe)
    assert str(refused.value).startswith(f"the checkpoint {given} (training.resume) does not fit this run: ")
    assert str(refused.value).endswith(
        "It was saved by a run of another model, strategy or optimizer settings; resume from a checkpoint of this "
        "recipe, or train without training.resume."
    )
