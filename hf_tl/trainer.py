"""transformers' Trainer, configured from a recipe, with checkpoints it can read back."""

from __future__ import annotations

import errno
import os
import shutil
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import SafetensorError
from torch import nn
from transformers import PreTrainedModel, Trainer, TrainingArguments
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint, rotate_checkpoints

from hf_tl.blocks import convolutional
from hf_tl.data import loader_workers
from hf_tl.environment import no_accelerator
from hf_tl.errors import HfTlError
from hf_tl.preprocess import Preprocess, draw_flips
from hf_tl.recipe import Recipe
from hf_tl.rundir import sync_tree

if TYPE_CHECKING:
    from hf_tl.feature_cache import FeatureCache

STAGING_DIR = ".saving"  # checkpoints are written here, then renamed into place
LOW_DISK_BYTES = 64 * 2**20
# What a save raises on a full or failing disk: OSError, safetensors' own error, torch.save's RuntimeError.
SAVE_ERRORS = (OSError, SafetensorError, RuntimeError)


class HfTlTrainer(Trainer):
    """transformers' Trainer, with checkpoints that are complete or absent, under current key names.

    Each checkpoint is written into a staging folder and renamed into place only when every
    file is there, so a crash or a full disk while saving never leaves a half checkpoint
    that resume would pick up. transformers 5 saves checkpoints under the pre-v5 names by
    default, then reloads the best one (and resumes) with a plain `load_state_dict`, which
    matches none of the renamed keys and silently keeps the wrong weights; these keep the
    model's current names. The final model is still saved in the default, widely loadable format.
    """

    _staging: str | None = None

    def __init__(self, *args: Any, preprocess: Preprocess, hflip: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.preprocess = preprocess
        self.hflip = hflip
        self.features: FeatureCache | None = None  # set by feature_cache.prepare when the cache is on

    def _prepare_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """On the device: uint8 images become pixel values, or cached rows become the entry's inputs."""
        inputs = super()._prepare_inputs(inputs)
        count = len(inputs["labels"])
        flips = draw_flips(count) if self.hflip and self.model.training else None
        if "images" in inputs:
            if self.features:  # a forward that raised may have left cached inputs behind
                self.features.split.feed.leaves = None
            return {"pixel_values": self.preprocess(inputs.pop("images"), flips), **inputs}
        if "cache_row" in inputs:
            return self.features.model_inputs(inputs, None if flips is None else flips.to(inputs["labels"].device))
        return inputs

    def _get_output_dir(self, trial) -> str:
        return self._staging or super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        run_dir = Path(super()._get_output_dir(trial))
        staging = run_dir / STAGING_DIR
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        self._staging = str(staging)
        try:
            super()._save_checkpoint(model, trial)
        except SAVE_ERRORS as e:
            raise _save_failed(e, run_dir, staging) from None
        finally:
            self._staging = None
        if self.state.best_model_checkpoint and Path(self.state.best_model_checkpoint).parent == staging:
            self.state.best_model_checkpoint = str(run_dir / name)
        self.accelerator.wait_for_everyone()  # every rank's files (RNG states) are in the staging folder
        if self.args.should_save:
            self.state.save_to_json(str(staging / name / TRAINER_STATE_NAME))
            sync_tree(staging / name)  # on disk before the rename, so a power cut cannot leave empty files
            shutil.rmtree(run_dir / name, ignore_errors=True)
            os.replace(staging / name, run_dir / name)
            sync_tree(run_dir, files=False)
            staging.rmdir()
            rotate_checkpoints(
                output_dir=str(run_dir),
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=False,
            )
        self.accelerator.wait_for_everyone()

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        model = self.accelerator.unwrap_model(self.model)
        if not _internal_call or not isinstance(model, PreTrainedModel):
            return super().save_model(output_dir, _internal_call)
        with _current_key_names(model):
            return super().save_model(output_dir, _internal_call)


def _save_failed(error: Exception, run_dir: Path, staging: Path) -> HfTlError:
    shutil.rmtree(staging, ignore_errors=True)
    last = get_last_checkpoint(str(run_dir)) if run_dir.is_dir() else None
    kept = f"The last complete checkpoint, {last}, is intact" if last else "No earlier checkpoint exists"
    if disk_full(error, run_dir):
        return HfTlError(
            f"could not save a checkpoint in {run_dir}: the disk is full. {kept}. "
            "Free some space, then run the same command again to resume."
        )
    return HfTlError(
        f"could not save a checkpoint in {run_dir}: {error}. {kept}. Fix the cause, then run the same command "
        "again to resume."
    )


def disk_full(error: Exception, folder: Path) -> bool:
    """safetensors and torch.save report a full disk in their own words; errno or the free space tell the rest."""
    if getattr(error, "errno", None) == errno.ENOSPC or any(w in str(error) for w in ("No space left", "StorageFull")):
        return True
    try:
        return shutil.disk_usage(folder).free < LOW_DISK_BYTES
    except OSError:
        return False


@contextmanager
def _current_key_names(model):
    model.save_pretrained = partial(type(model).save_pretrained, model, save_original_format=False)
    try:
        yield
    finally:
        del model.save_pretrained


def training_arguments(recipe: Recipe, checkpoints_dir: Path) -> TrainingArguments:
    t = recipe.training
    workers = loader_workers(recipe.data.num_workers)
    return TrainingArguments(
        output_dir=str(checkpoints_dir),
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.eval_batch_size or t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.lr,
        weight_decay=t.weight_decay,
        warmup_steps=t.warmup_ratio,
        lr_scheduler_type=t.scheduler,
        lr_scheduler_kwargs=dict(t.scheduler_kwargs),
        optim=t.optimizer,
        bf16=t.precision == "bf16",
        fp16=t.precision == "fp16",
        seed=t.seed,
        data_seed=t.seed,
        eval_strategy="epoch",
        save_strategy="epoch",
        load_best_model_at_end=True,
        metric_for_best_model="accuracy",
        greater_is_better=True,
        save_total_limit=2,
        logging_steps=t.logging_steps,
        report_to="none",
        remove_unused_columns=False,  # the Trainer would otherwise drop the image column
        label_names=["labels"],  # DeiT-with-teacher's forward takes no labels, so the Trainer cannot infer them
        dataloader_num_workers=workers,
        dataloader_persistent_workers=workers > 0,
        dataloader_pin_memory=not no_accelerator(),
        torch_compile=t.compile,
        use_cpu=no_accelerator(),
        disable_tqdm=False,
        restore_callback_states_from_checkpoint=True,  # epoch timings and early-stopping patience survive a resume
    )


def use_channels_last(recipe: Recipe, model: nn.Module) -> bool:
    """channels_last speeds up convolutions on GPUs; 'auto' uses it there, for convolutional networks."""
    choice = recipe.training.channels_last
    return choice == "true" or (choice == "auto" and not no_accelerator() and convolutional(model))
