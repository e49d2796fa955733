"""One fine-tuning run, start to finish: `run(recipe)`, which `hf-tl train` calls.

Thin on purpose: each step is owned by its module (recipe, data, backbones, strategies,
metrics, run folder); this file only wires them to transformers' Trainer.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from pathlib import Path

import torch
from transformers import EarlyStoppingCallback, TrainerCallback, set_seed
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import get_last_checkpoint

from hf_tl import progress
from hf_tl.config.recipe import Recipe, check_resume, check_steps_train, resume_path, sets_trainer_keys, warmup_steps
from hf_tl.data.augment import Augment, batch_mixup
from hf_tl.data.datasets import Splits, collate_images, image_transform, load_splits, resizing_for
from hf_tl.data.processors import processor_for
from hf_tl.errors import HfTlError, RecipeError, forget_warnings, is_main_process, warn
from hf_tl.hub.card import write_run_card
from hf_tl.hub.transfer import check_can_push, push_run
from hf_tl.models.loading import load_backbone
from hf_tl.runs import folder as rundir
from hf_tl.runs.environment import device_info, library_versions, process_state
from hf_tl.strategies.freezing import Summary, apply_strategy
from hf_tl.training import phases
from hf_tl.training.arguments import check_trainer_keys, training_arguments
from hf_tl.training.cache import features as feature_cache
from hf_tl.training.export import save_final_model
from hf_tl.training.losses import ClassificationLoss
from hf_tl.training.metrics import compute_metrics, full_metrics, named_per_class
from hf_tl.training.timing import EpochTimer, best_checkpoint_note
from hf_tl.training.touched import train_metrics_dataset
from hf_tl.training.trainer import (
    SAVE_ERRORS,
    HfTlTrainer,
    checkpoint_damage,
    has_checkpoint,
    resume_command,
    set_aside_damaged_checkpoints,
    use_channels_last,
)


def build_trainer(recipe: Recipe, run_dir: Path) -> tuple[HfTlTrainer, Splits, Summary, EpochTimer]:
    with process_state().main_process_first(), phases.timed("load"):  # one rank writes the datasets cache
        splits = load_splits(recipe.data, recipe.training.seed)
    if recipe.model.num_labels not in (None, len(splits.labels)):
        raise HfTlError(
            f"model.num_labels={recipe.model.num_labels} but the dataset has {len(splits.labels)} classes; "
            "drop model.num_labels (it is only for `hf-tl params`)."
        )
    with phases.timed("model"):
        model, base_processor = load_backbone(recipe.model, splits.labels)
    channels_last = use_channels_last(recipe, model)  # before a peft wrapper renames the modules
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    resizing = resizing_for(base_processor, recipe.data, splits, channels_last)
    if resizing.chosen_by == "auto" and is_main_process():
        print(f"hf_tl: data.resize=auto chose {resizing.resize}: {resizing.reason}", flush=True)
    preprocess = resizing.preprocess
    # Checkpoints and model/ carry a processor that does what evaluation here does, not the base model's.
    processor = processor_for(dataclasses.replace(preprocess, channels_last=False), base_processor, model.config)
    model, summary = apply_strategy(model, recipe.strategy)
    images = image_transform(splits.image_column, splits.label_column)  # uint8 at native size; resized on device
    timer = EpochTimer()
    callbacks = [timer]
    if recipe.training.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(recipe.training.early_stopping_patience))
    trainer = HfTlTrainer(
        model=model,
        args=training_arguments(recipe, run_dir / rundir.CHECKPOINTS_DIR),
        data_collator=collate_images,
        train_dataset=splits.train.with_transform(images),
        eval_dataset=splits.eval.with_transform(images),
        processing_class=processor,
        compute_loss_func=ClassificationLoss(recipe.training.label_smoothing),
        compute_metrics=compute_metrics,
        callbacks=callbacks,
        preprocess=preprocess,
        augment=Augment(recipe.data.augment, preprocess),
        mixup=batch_mixup(recipe.training, len(splits.labels)),
        recipe_training=recipe.training,
    )
    trainer.use_feature_cache(feature_cache.prepare(trainer.feature_source(), recipe, splits))
    trainer.resizing = resizing  # metrics.json's `preprocessing`
    return trainer, splits, summary, timer


def evaluate_split(trainer: HfTlTrainer, dataset, labels: list[str], prefix: str) -> dict:
    """Full metrics on one split, the per-class accuracy, precision and recall named by label."""
    with phases.timed(f"{prefix}_metrics"):
        output = trainer.predict(dataset, metric_key_prefix=prefix)
    full = named_per_class(full_metrics(output.predictions, output.label_ids), labels)
    full["loss"] = output.metrics.get(f"{prefix}_loss")
    return full


def resume_point(recipe: Recipe, checkpoints: Path) -> str | None:
    """The last complete checkpoint to continue from (`training.resume=auto`), announced on the main process.

    Damaged checkpoints are moved aside and named in the same line; with none left usable, training starts over.
    A checkpoint given by path (`training.resume=PATH`) is where a new run starts; once the run has checkpoints of
    its own (it was interrupted, and the same command runs again), it continues from those. Damaged, it stops.
    """
    state = process_state()
    given = resume_path(recipe.training)
    if given and not has_checkpoint(checkpoints):
        damage = checkpoint_damage(given) if given.is_dir() else "no such folder"
        if damage:
            raise HfTlError(
                f"training.resume={given} cannot resume: {damage}. Give another checkpoint, or training.resume=auto."
            )
        if state.is_main_process:
            print(f"hf_tl: resuming from {given} (training.resume)", flush=True)
        return str(given)
    if recipe.training.resume == "never":
        state.wait_for_everyone()
        if state.is_main_process:
            shutil.rmtree(checkpoints, ignore_errors=True)
        state.wait_for_everyone()
        return None
    damaged = set_aside_damaged_checkpoints(checkpoints) if state.is_main_process and checkpoints.is_dir() else []
    state.wait_for_everyone()  # every rank then finds the same checkpoint
    checkpoint = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None
    if state.is_main_process and (checkpoint or damaged):
        then = f"resuming from {checkpoint} (training.resume=never starts over)"
        if not checkpoint:
            then = "no usable checkpoint is left, so training starts over"
        print(f"hf_tl: {'; '.join([*damaged, then])}", flush=True)
    return checkpoint


def checkpoint_step(checkpoint: Path | str | None) -> int | None:
    """The optimizer step a checkpoint was saved at (its trainer_state.json), or None when it cannot be read."""
    try:
        return json.loads((Path(checkpoint) / TRAINER_STATE_NAME).read_text())["global_step"] if checkpoint else None
    except (OSError, ValueError, KeyError, TypeError):
        return None  # a damaged checkpoint is named where the run resumes


def misfit(error: BaseException, recipe: Recipe, checkpoint: str | None, step: int) -> bool:
    """Whether a run stopped loading a checkpoint given by path: the optimizer's or the model's state of another
    recipe (transformers raises ValueError or RuntimeError) before the first step past the checkpoint's."""
    given = resume_path(recipe.training)
    if not isinstance(error, (ValueError, RuntimeError)) or given is None or checkpoint != str(given):
        return False
    return step <= (checkpoint_step(checkpoint) or 0)


def check_steps_left(recipe: Recipe, schedule: dict) -> None:
    """A checkpoint given by path at or past this run's last optimizer step would train nothing: refused."""
    step = checkpoint_step(resume_path(recipe.training))
    if step is not None and step >= schedule["optimizer_steps"]:
        raise RecipeError(
            f"training.resume={recipe.training.resume} is at optimizer step {step}, and this run ends at step "
            f"{schedule['optimizer_steps']} (training.epochs={recipe.training.epochs:g}, "
            f"training.max_steps={recipe.training.max_steps}): nothing would train. Train for longer, or resume "
            "from an earlier checkpoint."
        )


def training_schedule(recipe: Recipe, num_train: int, processes: int) -> dict:
    """The optimizer steps and warm-up the Trainer will take, counted as it counts them, before any of them.

    A run whose only step would be the warm-up's first (at learning rate 0) is refused. A batch larger than
    the training set is not: every batch is then the whole set, one step per epoch, and a warning says so.
    """
    t = recipe.training
    used = min(t.batch_size, math.ceil(num_train / processes))
    batches = math.ceil(math.ceil(num_train / used) / processes)  # per process and epoch, as accelerate shards them
    per_epoch = math.ceil(batches / t.grad_accum)
    total = t.max_steps if t.max_steps > 0 else math.ceil(t.epochs * per_epoch)
    on = f" on {processes} processes" if processes > 1 else ""
    asked = f"training.batch_size={t.batch_size}" + (f" x grad_accum {t.grad_accum}" if t.grad_accum > 1 else "")
    check_steps_train(t, total, f"{num_train} training images, {asked}{on}, training.epochs={t.epochs:g}")
    step_batch = t.batch_size * t.grad_accum * processes
    warning = None
    if step_batch > num_train:
        warning = (
            f"a step's batch ({asked}{on}) is larger than the {num_train} training images: each epoch is one "
            f"optimizer step over all {num_train}"
            + (f" (batches clamped to {used})" if used < t.batch_size else "")
            + f", {total} step(s) in all"
        )
    return {
        "optimizer_steps": total,
        "warmup_steps": warmup_steps(t, total),
        "batch_size": t.batch_size,
        "batch_size_used": used,
        "grad_accum": t.grad_accum,
        "processes": processes,
        "warning": warning,
    }


class RemoveReplacedRun(TrainerCallback):
    """The replacing run has saved its first checkpoint: the run it replaces, set aside until now, goes."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    def on_save(self, args, state, control, **kwargs) -> None:
        if state.is_world_process_zero and rundir.discard_replaced(self.run_dir):
            print(f"hf_tl: first checkpoint saved; the run it replaces is removed from {self.run_dir}", flush=True)


def finished_already(recipe: Recipe, run_dir: Path) -> Path:
    """The same recipe on a finished run: say so and train nothing (a push asked for still happens)."""
    state = process_state()
    if state.is_main_process:
        if not (run_dir / rundir.CARD_FILE).exists():  # stopped after metrics.json: finish what is left
            write_run_card(run_dir)
        shutil.rmtree(run_dir / rundir.CHECKPOINTS_DIR, ignore_errors=True)
        try:
            recorded = json.loads((run_dir / rundir.METRICS_FILE).read_text())["eval"]["accuracy"]
            accuracy = f", eval accuracy {recorded:.4f}"
        except (OSError, ValueError, KeyError, TypeError):
            accuracy = ""
        print(
            f"hf_tl: this run is complete already ({run_dir / rundir.METRICS_FILE}{accuracy}). "
            "Nothing to do; output.overwrite=true trains it again.",
            flush=True,
        )
    state.wait_for_everyone()
    if recipe.hub.push and state.is_main_process:
        push_run(run_dir, recipe.hub.repo_id, private=recipe.hub.private)
    return run_dir


def run(recipe: Recipe) -> Path:
    """One run. The order protects what is there: output.dir is checked first, then the data and the model
    load, and only then is the folder changed (an old run being replaced is set aside, not deleted).
    The HF libraries' bars follow hf_tl's (`hf_tl.progress`): none in a log file."""
    forget_warnings()  # a second run in one process (a notebook) warns again
    with progress.library_bars():
        return _run(recipe)


def _run(recipe: Recipe) -> Path:
    state = process_state()
    check_resume(recipe.training)
    if sets_trainer_keys(recipe.training):  # `hf-tl train` checked them before launching; a caller may not have
        check_trainer_keys(recipe)
    if recipe.hub.push:  # a push that cannot happen is found before the training, not after it
        check_can_push(recipe.hub.repo_id)
    run_dir = rundir.resolve_run_dir(recipe)
    plan = rundir.plan_run_dir(run_dir, recipe)
    if state.is_main_process:  # first, so a person knows where to look before the data and the cache are ready
        print(f"hf_tl: run folder {run_dir}", flush=True)
    if plan.action == "complete":
        return finished_already(recipe, run_dir)
    phases.reset()
    set_seed(recipe.training.seed)
    try:
        trainer, splits, summary, timer = build_trainer(recipe, run_dir)
        schedule = training_schedule(recipe, len(splits.train), state.num_processes)
        check_steps_left(recipe, schedule)
    except BaseException:
        rundir.undo_unprepared(run_dir, plan)
        raise
    rundir.prepare_run_dir(run_dir, recipe, plan)
    if plan.action == "replace":
        trainer.add_callback(RemoveReplacedRun(run_dir))
    if state.is_main_process:
        print(
            f"hf_tl: {recipe.model.name} | strategy {summary.kind}: {summary.trainable:,} of {summary.total:,} "
            f"parameters train | {len(splits.train)} train / {len(splits.eval)} eval images",
            flush=True,
        )
        if schedule["warning"]:
            warn(schedule["warning"])
    started = time.perf_counter()
    checkpoint = None
    try:
        checkpoint = resume_point(recipe, Path(trainer.args.output_dir))
        with phases.timed("training"):
            trainer.train(resume_from_checkpoint=checkpoint)
    except BaseException as e:
        restored = state.is_main_process and rundir.restore_replaced(run_dir)
        back = f"stopped before the first checkpoint; the run this one replaces is back in {run_dir}"
        if isinstance(e, KeyboardInterrupt):
            if restored:
                raise HfTlError(f"interrupted: {back}. The same command starts the replacement again.") from None
            raise HfTlError(
                f"interrupted. Completed epochs are checkpointed in {run_dir / rundir.CHECKPOINTS_DIR}; continue "
                f"with {resume_command(run_dir, recipe)}"
            ) from None
        if restored:
            print(f"hf_tl: {back}", flush=True)
        if misfit(e, recipe, checkpoint, trainer.state.global_step):
            raise HfTlError(
                f"the checkpoint {checkpoint} (training.resume) does not fit this run: {e}. It was saved by a run of "
                "another model, strategy or optimizer settings; resume from a checkpoint of this recipe, or train "
                "without training.resume."
            ) from None
        raise
    train_wall = time.perf_counter() - started
    timer = EpochTimer.of(trainer)  # on resume the Trainer rebuilt it from the checkpoint
    train_eval = train_metrics_dataset(trainer, splits)  # the images the run drew: all, unless it stopped early
    metrics = {
        "recipe": recipe.name,
        "model": recipe.model.name,
        "dataset": recipe.data.dataset,
        "eval_split": splits.eval_split,
        "num_train_examples": len(splits.train),
        "num_eval_examples": len(splits.eval),
        "skipped_images": splits.skipped_images,
        "resumed_from": recipe.training.resume if resume_path(recipe.training) else None,  # recipe.yaml says auto
        "eval": evaluate_split(trainer, trainer.eval_dataset, splits.labels, "eval"),
        "train": evaluate_split(trainer, train_eval, splits.labels, "train") if recipe.training.train_metrics else None,
        "parameters": summary.to_dict(),
        "timings": {**timer.to_dict(), "train_wall_seconds": round(train_wall, 3)},
        "feature_cache": trainer.features.report if trainer.features else feature_cache.off_report(recipe),
        "preprocessing": trainer.resizing.record(),
        "epochs_completed": trainer.state.epoch,
        "schedule": schedule,
        "device": device_info(),
        "versions": library_versions(),
    }
    if trainer.features:
        trainer.features.close()
    try:
        with phases.timed("save"), progress.transformers_bars_off():
            save_final_model(trainer, run_dir)
    except SAVE_ERRORS as e:
        full = rundir.disk_full(e, run_dir)
        cause, fix = ("the disk is full", "free some space") if full else (str(e), "fix the cause")
        raise HfTlError(
            f"could not write the trained model into {run_dir}: {cause}. The epoch checkpoints are kept in "
            f"{run_dir / rundir.CHECKPOINTS_DIR}; {fix}, then finish with {resume_command(run_dir, recipe)}"
        ) from None
    if state.is_main_process:
        rundir.write_json(run_dir / rundir.LOG_HISTORY_FILE, trainer.state.log_history)
        metrics["timings"]["phases"] = phases.seconds()
        rundir.write_json(run_dir / rundir.METRICS_FILE, metrics)
        with phases.timed("card"):
            write_run_card(run_dir)  # README.md (the model card) and the training curves: ready to push
        metrics["timings"]["phases"] = phases.seconds()  # once more, with the card's seconds
        rundir.write_json(run_dir / rundir.METRICS_FILE, metrics)
        shutil.rmtree(run_dir / rundir.CHECKPOINTS_DIR, ignore_errors=True)
        rundir.discard_replaced(run_dir)  # gone at the first checkpoint already; this catches a run without one
        trained = f", train accuracy {metrics['train']['accuracy']:.4f}" if metrics["train"] else ""
        # the best checkpoint's, named when the last evaluation line showed another
        accuracy = f"{metrics['eval']['accuracy']:.4f}{best_checkpoint_note(trainer.state, trainer.args)}"
        print(f"hf_tl: eval accuracy {accuracy}{trained}; results in {run_dir}", flush=True)
    state.wait_for_everyone()
    if recipe.hub.push and state.is_main_process:
        push_run(run_dir, recipe.hub.repo_id, private=recipe.hub.private)
    return run_dir
