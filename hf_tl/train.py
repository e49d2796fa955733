"""`accelerate launch -m hf_tl.train recipe=NAME [key=value ...]`: one fine-tuning run, start to finish.

Thin on purpose: each step is owned by its module (recipe, data, backbones, strategies,
metrics, rundir); this file only wires them to transformers' Trainer.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import torch
from transformers import EarlyStoppingCallback, set_seed
from transformers.trainer_utils import get_last_checkpoint

from hf_tl import feature_cache, rundir
from hf_tl.backbones import load_backbone
from hf_tl.card import write_run_card
from hf_tl.data import Splits, collate_images, image_transform, load_splits, preprocess_for
from hf_tl.environment import device_info, library_versions, process_state
from hf_tl.errors import HfTlError, cli
from hf_tl.export import save_final_model
from hf_tl.hub import check_can_push, push_run
from hf_tl.losses import classification_loss
from hf_tl.metrics import compute_metrics, full_metrics
from hf_tl.recipe import Recipe, recipe_from_argv
from hf_tl.strategies import Summary, apply_strategy
from hf_tl.timing import EpochTimer
from hf_tl.trainer import SAVE_ERRORS, HfTlTrainer, disk_full, training_arguments, use_channels_last


def build_trainer(recipe: Recipe, run_dir: Path) -> tuple[HfTlTrainer, Splits, Summary, EpochTimer]:
    with process_state().main_process_first():  # one rank writes the datasets cache, the others read it
        splits = load_splits(recipe.data, recipe.training.seed)
    if recipe.model.num_labels not in (None, len(splits.labels)):
        raise HfTlError(
            f"model.num_labels={recipe.model.num_labels} but the dataset has {len(splits.labels)} classes; "
            "drop model.num_labels (it is only for hf_tl.params)."
        )
    model, processor = load_backbone(recipe.model, splits.labels)
    channels_last = use_channels_last(recipe, model)  # before a peft wrapper renames the modules
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
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
        compute_loss_func=classification_loss,
        compute_metrics=compute_metrics,
        callbacks=callbacks,
        preprocess=preprocess_for(processor, recipe.data, channels_last),
        hflip=recipe.data.hflip,
    )
    trainer.features = feature_cache.prepare(trainer, recipe, splits)
    return trainer, splits, summary, timer


def evaluate_split(trainer: HfTlTrainer, dataset, labels: list[str], prefix: str) -> dict:
    """Full metrics on one split, per-class accuracy named by label."""
    output = trainer.predict(dataset, metric_key_prefix=prefix)
    full = full_metrics(output.predictions, output.label_ids)
    full["per_class_accuracy"] = dict(zip(labels, full["per_class_accuracy"], strict=True))
    full["loss"] = output.metrics.get(f"{prefix}_loss")
    return full


def resume_point(recipe: Recipe, checkpoints: Path) -> str | None:
    """The last complete checkpoint to continue from (`training.resume=auto`), announced on the main process."""
    state = process_state()
    if recipe.training.resume == "never":
        state.wait_for_everyone()
        if state.is_main_process:
            shutil.rmtree(checkpoints, ignore_errors=True)
        state.wait_for_everyone()
        return None
    checkpoint = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None
    if checkpoint and state.is_main_process:
        print(f"hf_tl: resuming from {checkpoint} (training.resume=never starts over)", flush=True)
    return checkpoint


def run(recipe: Recipe) -> Path:
    state = process_state()
    if recipe.hub.push:  # a push that cannot happen is found before the training, not after it
        check_can_push(recipe.hub.repo_id)
    run_dir = rundir.resolve_run_dir(recipe)
    rundir.prepare_run_dir(run_dir, recipe)
    set_seed(recipe.training.seed)
    trainer, splits, summary, timer = build_trainer(recipe, run_dir)
    if state.is_main_process:
        print(
            f"hf_tl: {recipe.model.name} | strategy {summary.kind}: {summary.trainable:,} of {summary.total:,} "
            f"parameters train | {len(splits.train)} train / {len(splits.eval)} eval images | run folder {run_dir}",
            flush=True,
        )
    checkpoint = resume_point(recipe, Path(trainer.args.output_dir))
    started = time.perf_counter()
    try:
        trainer.train(resume_from_checkpoint=checkpoint)
    except KeyboardInterrupt:
        raise HfTlError(
            f"interrupted. Completed epochs are checkpointed in {run_dir / rundir.CHECKPOINTS_DIR}; continue with "
            f"the same command plus output.dir={run_dir}"
        ) from None
    train_wall = time.perf_counter() - started
    timer = EpochTimer.of(trainer)  # on resume the Trainer rebuilt it from the checkpoint
    if trainer.features:
        train_eval = trainer.features.train_eval_dataset()
    else:
        train_eval = splits.train.with_transform(image_transform(splits.image_column, splits.label_column))
    metrics = {
        "recipe": recipe.name,
        "model": recipe.model.name,
        "dataset": recipe.data.dataset,
        "eval_split": splits.eval_split,
        "num_train_examples": len(splits.train),
        "num_eval_examples": len(splits.eval),
        "skipped_images": splits.skipped_images,
        "eval": evaluate_split(trainer, trainer.eval_dataset, splits.labels, "eval"),
        "train": evaluate_split(trainer, train_eval, splits.labels, "train"),
        "parameters": summary.to_dict(),
        "timings": {**timer.to_dict(), "train_wall_seconds": round(train_wall, 3)},
        "feature_cache": trainer.features.report if trainer.features else {"used": False},
        "epochs_completed": trainer.state.epoch,
        "device": device_info(),
        "versions": library_versions(),
    }
    if trainer.features:
        trainer.features.close(trainer.model)
    try:
        save_final_model(trainer, run_dir)
    except SAVE_ERRORS as e:
        cause, fix = ("the disk is full", "free some space") if disk_full(e, run_dir) else (str(e), "fix the cause")
        raise HfTlError(
            f"could not write the trained model into {run_dir}: {cause}. The epoch checkpoints are kept in "
            f"{run_dir / rundir.CHECKPOINTS_DIR}; {fix} and run the same command again to finish."
        ) from None
    if state.is_main_process:
        rundir.write_json(run_dir / rundir.LOG_HISTORY_FILE, trainer.state.log_history)
        rundir.write_json(run_dir / rundir.METRICS_FILE, metrics)
        write_run_card(run_dir)  # README.md (the model card) and the training curves: ready to push
        shutil.rmtree(run_dir / rundir.CHECKPOINTS_DIR, ignore_errors=True)
        print(
            f"hf_tl: eval accuracy {metrics['eval']['accuracy']:.4f}, train accuracy "
            f"{metrics['train']['accuracy']:.4f}; results in {run_dir}",
            flush=True,
        )
    state.wait_for_everyone()
    if recipe.hub.push and state.is_main_process:
        push_run(run_dir, recipe.hub.repo_id, private=recipe.hub.private)
    return run_dir


@cli
def main(argv: list[str] | None = None) -> None:
    run(recipe_from_argv(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
