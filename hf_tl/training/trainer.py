"""transformers' Trainer, configured from a recipe, with checkpoints it can read back."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import zipfile
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from safetensors import SafetensorError, safe_open
from torch import nn
from transformers import PreTrainedModel, PrinterCallback, Trainer, TrainerCallback
from transformers.integrations import TensorBoardCallback
from transformers.trainer import DEFAULT_PROGRESS_CALLBACK, OPTIMIZER_NAME, SCHEDULER_NAME, TRAINER_STATE_NAME
from transformers.trainer_callback import ExportableState
from transformers.trainer_pt_utils import nested_gather
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint, rotate_checkpoints

from hf_tl import device, progress
from hf_tl.config.recipe import Recipe, TrainingSection
from hf_tl.data.augment import Augment, BatchMixup
from hf_tl.data.preprocess import Preprocess, draw_flips
from hf_tl.errors import HfTlError
from hf_tl.runs.folder import CHECKPOINTS_DIR, LOGS_DIR, RECIPE_FILE, disk_full, sync_tree
from hf_tl.training.cache.features import FeatureCache, Source
from hf_tl.training.export import without_aliases
from hf_tl.training.optimizer import describe, param_groups
from hf_tl.training.timing import ProgressReport
from hf_tl.training.touched import training_rows

STAGING_DIR = ".saving"  # checkpoints are written here, then renamed into place
# What a save raises on a full or failing disk: OSError, safetensors' own error, torch.save's RuntimeError.
SAVE_ERRORS = (OSError, SafetensorError, RuntimeError)


class LossTally(TrainerCallback, ExportableState):
    """The Trainer's running loss sums, carried in each checkpoint so a resumed run logs what an uninterrupted one does.

    transformers keeps them on the Trainer (`_tr_loss`, `_total_loss_scalar`, `_globalstep_last_logged`),
    saves none of them and zeroes them at the start of every `train()` call, resume included. A checkpoint
    that fell between two logging steps then lost the loss of the steps since the last log, and
    `train_loss` averaged only the steps after the resume. HfTlTrainer fills this before each save and
    puts the sums back when it resumes.
    """

    def __init__(self) -> None:
        self.unlogged_loss: float | None = None  # summed over the steps since the last log (mean over processes)
        self.logged_loss: float | None = None  # summed over every step logged so far
        self.last_logged_step: int | None = None

    def state(self) -> dict:
        attributes = ("unlogged_loss", "logged_loss", "last_logged_step")
        return {"args": {}, "attributes": {name: getattr(self, name) for name in attributes}}


class _RestoreLossSumsAtTrainBegin(TrainerCallback):
    """Puts the loss sums back where train() begins, just after transformers zeroed them: every resume passes here.

    Not at the first epoch: resumed from the final checkpoint (a run stopped in its last evaluation or its
    final save), train() runs no epoch and goes straight to `train_loss`. Not an ExportableState, so the
    Trainer keeps this very object (and its trainer) when it rebuilds the stateful callbacks on resume.
    """

    def __init__(self, trainer: HfTlTrainer) -> None:
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs) -> None:
        self.trainer._restore_loss_sums()


class HfTlTrainer(Trainer):
    """transformers' Trainer, with checkpoints that are complete or absent, under current key names.

    Each checkpoint is written into a staging folder and renamed into place only when every
    file is there, so a crash or a full disk while saving never leaves a half checkpoint
    that resume would pick up. transformers 5 saves checkpoints under the pre-v5 names by
    default, then reloads the best one (and resumes) with a plain `load_state_dict`, which
    matches none of the renamed keys and silently keeps the wrong weights; these keep the
    model's current names. The final model is still saved in the default, widely loadable format.
    Each checkpoint also carries the running loss sums (`LossTally`), so a resumed run logs every loss,
    and `train_loss`, as the uninterrupted run does.
    """

    _staging: str | None = None
    _loss_sums_restored = False

    def __init__(
        self,
        *args: Any,
        preprocess: Preprocess,
        augment: Augment,
        mixup: BatchMixup | None = None,
        recipe_training: TrainingSection | None = None,  # its layer_decay and head_lr
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.add_callback(LossTally())
        self.add_callback(_RestoreLossSumsAtTrainBegin(self))
        for printer in (DEFAULT_PROGRESS_CALLBACK, PrinterCallback):  # nested bars, a dict per log
            self.remove_callback(printer)
        self.add_callback(ProgressReport(self))
        _log_trackers_into_run_folder(self)
        self.preprocess = preprocess
        self.augment, self.mixup = augment, mixup  # training only: evaluation runs preprocess alone
        self.loss = self.compute_loss_func  # hf_tl's ClassificationLoss: told below whether the model trains
        if self.loss is not None:
            self.compute_loss_func = self._loss_in_mode
        self.recipe_training = recipe_training
        self.features: FeatureCache | None = None  # set by use_feature_cache when the cache is on

    def _loss_in_mode(self, outputs, labels, num_items_in_batch=None):
        """The Trainer calls its loss alike in training and evaluation; hf_tl's smooths labels only in training."""
        return self.loss(outputs, labels, num_items_in_batch, training=self.model.training)

    def feature_source(self) -> Source:
        """What the feature cache needs of this run: the model, its preprocessing, the arguments, the rows drawn."""
        drawn = partial(training_rows, self)  # asked only where the cache may be used
        return Source(self.model, self.preprocess, self.args, self.accelerator.num_processes, drawn)

    def use_feature_cache(self, cache: FeatureCache | None) -> None:
        """Train and evaluate on the cache's rows instead of the images; None (the cache is off) changes nothing."""
        self.features = cache
        if cache is not None:
            self.train_dataset, self.eval_dataset = cache.train_dataset, cache.eval_dataset
            self.data_collator = cache.collator

    def _prepare_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """On the device: uint8 images become pixel values (augmented, and mixed with their labels, while training),
        or cached rows become the entry's inputs (the cache holds only what flip and none give)."""
        inputs = super()._prepare_inputs(inputs)
        training = self.model.training
        if "images" in inputs:
            if self.features:  # a forward that raised may have left cached inputs behind
                self.features.reset()
            images = inputs.pop("images")
            pixels = self.augment(images) if training else self.preprocess(images)
            if training and self.mixup is not None:
                pixels, inputs["labels"] = self.mixup(pixels, inputs["labels"])
            return {"pixel_values": pixels, **inputs}
        if "cache_row" in inputs:
            labels = inputs["labels"]
            flips = draw_flips(len(labels)).to(labels.device) if training and self.augment.kind == "flip" else None
            return self.features.inputs_for(inputs, flips)
        return inputs

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """transformers' optimizer, over layer-wise groups when training.layer_decay or training.head_lr is set."""
        t = self.recipe_training
        if self.optimizer is not None or t is None or (t.layer_decay is None and t.head_lr is None):
            return super().create_optimizer(model)
        opt_model = self.model if model is None else model
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        groups = param_groups(
            self.accelerator.unwrap_model(opt_model),
            self.args.learning_rate,
            self.args.weight_decay,
            t.layer_decay,
            t.head_lr,
        )
        if self.is_world_process_zero():
            print(describe(groups, t.layer_decay, t.head_lr), flush=True)
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    def _get_output_dir(self, trial) -> str:
        return self._staging or super()._get_output_dir(trial)

    def _restore_loss_sums(self) -> None:
        """transformers has just zeroed them; a resumed run takes them back from its checkpoint's trainer state."""
        self._loss_sums_restored = False
        saved = self.state.stateful_callbacks.get(LossTally.__name__, {}).get("attributes", {})
        if saved.get("last_logged_step") is None:
            return  # a fresh run, or a checkpoint written before hf_tl saved the sums
        self._tr_loss = torch.tensor(saved["unlogged_loss"], device=self.args.device)  # float32, as transformers'
        self._total_loss_scalar = saved["logged_loss"]
        self._globalstep_last_logged = saved["last_logged_step"]
        self._loss_sums_restored = True

    def _record_loss_sums(self) -> None:
        """Into the tally the checkpoint's trainer state carries; a collective (every rank saves), as logging is."""
        tally = next(cb for cb in self.callback_handler.callbacks if isinstance(cb, LossTally))
        tally.unlogged_loss = nested_gather(self._tr_loss, self.args.parallel_mode).mean().item()
        tally.logged_loss = self._total_loss_scalar
        tally.last_logged_step = self._globalstep_last_logged
        self.state.stateful_callbacks.setdefault(LossTally.__name__, {})  # absent in a checkpoint older than it

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "train_loss" in logs and self._loss_sums_restored:
            # transformers divides by the steps of this train() call; the restored sums cover the whole run
            logs["train_loss"] = self._total_loss_scalar / self.state.global_step
        super().log(logs, start_time)

    def _save_checkpoint(self, model, trial) -> None:
        self._record_loss_sums()
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

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        state_dict = self.model.state_dict() if state_dict is None else state_dict  # what transformers does
        with progress.transformers_bars_off():  # no "Writing model shards" bar at every checkpoint
            super()._save(output_dir, without_aliases(state_dict))  # a timm model's shared modules (export.py)

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
    # run_dir is the run folder's checkpoints/; with no checkpoint there is nothing to resume: the run starts over.
    # No full stop after a command: pasted along, it would change the folder.
    then = f"resume with {resume_command(run_dir.parent)}" if last else "run the same command again."
    if disk_full(error, run_dir):
        return HfTlError(
            f"could not save a checkpoint in {run_dir}: the disk is full. {kept}. Free some space, then {then}"
        )
    return HfTlError(f"could not save a checkpoint in {run_dir}: {error}. {kept}. Fix the cause, then {then}")


def resume_command(run_folder: Path, recipe: Recipe | None = None) -> str:
    """What resumes a run, pasted as written: its own command plus its folder, resuming on and overwriting off.

    The same command alone may not: the default output.dir is a new timestamped folder, training.resume=never
    deletes the checkpoints and output.overwrite=true sets them aside. Without the recipe, the one the run
    wrote into its folder says which of those it set (both are undone when that cannot be read).
    """
    resume, overwrite = (recipe.training.resume, recipe.output.overwrite) if recipe else _resume_settings(run_folder)
    overrides = [f"output.dir={shlex.quote(str(run_folder))}"]
    if resume == "never" or (resume != "auto" and has_checkpoint(run_folder / CHECKPOINTS_DIR)):
        overrides.append("training.resume=auto")  # a checkpoint given by path stays the start until the run has one
    if overwrite:
        overrides.append("output.overwrite=false")
    return f"the same command plus {' '.join(overrides)}"


def has_checkpoint(checkpoints: Path) -> bool:
    """Whether `checkpoints` holds a complete checkpoint to resume from."""
    return checkpoints.is_dir() and get_last_checkpoint(str(checkpoints)) is not None


def _resume_settings(run_folder: Path) -> tuple[str, bool]:
    """training.resume and output.overwrite as the run folder's recipe.yaml records them."""
    try:
        written = OmegaConf.load(run_folder / RECIPE_FILE)
        return OmegaConf.select(written, "training.resume"), bool(OmegaConf.select(written, "output.overwrite"))
    except Exception:  # unreadable or gone: undo both, which is right whatever they were
        return "never", True


DAMAGED_PREFIX = "damaged-"  # a damaged checkpoint-N is moved to damaged-checkpoint-N, a name nothing resumes from
_CHECKPOINT_NAME = re.compile(rf"{PREFIX_CHECKPOINT_DIR}-(\d+)")


def set_aside_damaged_checkpoints(checkpoints: Path) -> list[str]:
    """Move every damaged checkpoint out of resume's and rotation's way, newest first; says what each had.

    hf_tl's own saves cannot leave half a checkpoint (staging, sync, rename), but an interrupted copy of
    the run folder, a disk error or a hand can. transformers would then raise mid-load or, for a missing
    optimizer, scheduler or RNG state, silently resume without it.
    """
    found = [p for p in checkpoints.iterdir() if p.is_dir() and _CHECKPOINT_NAME.fullmatch(p.name)]
    notes = []
    for folder in sorted(found, key=lambda p: int(_CHECKPOINT_NAME.fullmatch(p.name).group(1)), reverse=True):
        damage = checkpoint_damage(folder)
        if damage:
            notes.append(f"{folder.name} is damaged ({damage}), moved to {_move_aside(folder).name}")
    return notes


def checkpoint_damage(folder: Path) -> str | None:
    """What keeps a checkpoint from resuming, read cheaply from each file's structure; None when it is whole.

    A truncated or cut file fails these: safetensors checks that its tensors fill the file exactly, a
    torch file (a zip) loses its central directory at the end, JSON does not parse.
    """
    names = {p.name for p in folder.iterdir()}
    required = {
        TRAINER_STATE_NAME: TRAINER_STATE_NAME in names,
        OPTIMIZER_NAME: OPTIMIZER_NAME in names,
        SCHEDULER_NAME: SCHEDULER_NAME in names,
        "model weights (*.safetensors)": any(n.endswith(".safetensors") for n in names),
        "the RNG state (rng_state*.pth)": any(n.startswith("rng_state") for n in names),
    }
    missing = [what for what, present in required.items() if not present]
    if missing:
        return f"{', '.join(missing)} missing"
    for name in sorted(names):
        problem = _file_damage(folder / name)
        if problem:
            return f"{name} is truncated or corrupt: {problem}"
    return None


def _file_damage(path: Path) -> str | None:
    try:
        if path.suffix == ".json":
            json.loads(path.read_bytes())
        elif path.suffix == ".safetensors":
            with safe_open(path, framework="pt"):
                pass
        elif path.suffix in (".pt", ".pth", ".bin"):  # torch.save writes a zip archive
            zipfile.ZipFile(path).close()
    except (OSError, ValueError, SafetensorError, zipfile.BadZipFile) as e:
        return str(e)
    return None


def _move_aside(folder: Path) -> Path:
    """Kept for a look, under a name get_last_checkpoint and rotate_checkpoints ignore; removed with checkpoints/."""
    target = folder.with_name(DAMAGED_PREFIX + folder.name)
    copy = 1
    while target.exists():
        copy += 1
        target = folder.with_name(f"{DAMAGED_PREFIX}{folder.name}.{copy}")
    try:
        os.replace(folder, target)
    except OSError as e:
        raise HfTlError(
            f"{folder} is damaged and could not be moved aside ({e}); move or delete it, then run the same "
            "command again."
        ) from None
    return target


@contextmanager
def _current_key_names(model):
    model.save_pretrained = partial(type(model).save_pretrained, model, save_original_format=False)
    try:
        yield
    finally:
        del model.save_pretrained


def _log_trackers_into_run_folder(trainer: Trainer) -> None:
    """TensorBoard writes under output_dir, the run's checkpoints/ that goes at the end, unless told: into the run
    folder's logs/ instead (TENSORBOARD_LOGGING_DIR, when set, still decides)."""
    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, TensorBoardCallback) and callback.logging_dir is None:
            callback.logging_dir = str(Path(trainer.args.output_dir).parent / LOGS_DIR)


def use_channels_last(recipe: Recipe, model: nn.Module) -> bool:
    """The recipe's `training.channels_last`, decided by the device policy."""
    return device.use_channels_last(recipe.training.channels_last, model)
