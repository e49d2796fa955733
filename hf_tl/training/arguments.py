"""The Trainer's arguments from a recipe, and `training.report_to` / `training.optimizer` / `training.args` checked
against transformers itself before any work.

The recipe's own keys set most TrainingArguments fields; `training.args.KEY=VALUE` reaches every other field
(`gradient_checkpointing`, `max_grad_norm`, `eval_strategy=steps`, ...). The fields hf_tl owns are refused with
the reason and the recipe key that sets them (`OWNED_ARGUMENTS`). Checked only when one of those keys is set:
it imports transformers, which a recipe without them does not need before the run.
"""

from __future__ import annotations

import dataclasses
import typing
import warnings
from pathlib import Path
from types import UnionType
from typing import Any

from transformers import Trainer, TrainingArguments

from hf_tl import device
from hf_tl.config.recipe import OPTIMIZERS, SECTIONS, Recipe, TrainingSection, did_you_mean
from hf_tl.errors import RecipeError
from hf_tl.runs.folder import CHECKPOINTS_DIR


def training_arguments(recipe: Recipe, checkpoints_dir: Path) -> TrainingArguments:
    """hf_tl's arguments from the recipe's keys, with training.args (checked by `check_trainer_keys`) over them."""
    t = recipe.training
    workers = device.loader_workers(recipe.data.num_workers)
    given = with_strategy_names(t.args)
    own = dict(
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
        load_best_model_at_end=True,
        save_total_limit=2,
        logging_steps=t.logging_steps,
        report_to=list(t.report_to) or "none",
        remove_unused_columns=False,  # the Trainer would otherwise drop the image column
        label_names=["labels"],  # DeiT-with-teacher's forward takes no labels, so the Trainer cannot infer them
        dataloader_num_workers=workers,
        dataloader_persistent_workers=workers > 0,
        dataloader_pin_memory=device.pin_memory(),
        torch_compile=t.compile,
        use_cpu=device.no_accelerator(),
        disable_tqdm=False,  # HfTlTrainer replaces the Trainer's bars (and dicts) with hf_tl's ProgressReport
        restore_callback_states_from_checkpoint=True,  # epoch timings and early-stopping patience survive a resume
    )
    return TrainingArguments(**{**own, **_evaluation_schedule(given, t.logging_steps), **given})


# The strategy fields that take "no", which YAML reads as False when it is written unquoted.
_INTERVAL_FIELDS = ("eval_strategy", "save_strategy", "logging_strategy")


def with_strategy_names(args: dict[str, Any]) -> dict[str, Any]:
    """training.args with an unquoted `no` (False to YAML and OmegaConf) back to the strategy name "no"."""
    return {key: "no" if key in _INTERVAL_FIELDS and value is False else value for key, value in args.items()}


def _evaluation_schedule(given: dict[str, Any], logging_steps: int) -> dict[str, Any]:
    """Evaluate, and keep the best model by accuracy, every epoch unless training.args says otherwise.

    load_best_model_at_end needs a checkpoint at each evaluation, so saves follow the evaluations unless
    save_strategy is given (the Trainer evaluates every logging_steps when eval_steps is unset).
    """
    evaluation = str(given.get("eval_strategy", "epoch"))
    schedule = {
        "eval_strategy": evaluation,
        "save_strategy": evaluation,
        "metric_for_best_model": "accuracy",
        "greater_is_better": True,
    }
    if evaluation == "steps" and "save_steps" not in given:
        schedule["save_steps"] = given.get("eval_steps") or logging_steps
    return schedule


# TrainingArguments fields hf_tl sets itself, refused in training.args: field -> (why, the recipe key that sets it).
_HUB = "it pushes the finished run folder, not the Trainer's checkpoints"
_BEST = "model/ is the checkpoint with the best validation accuracy"
_WHOLE = "its metrics take the whole evaluation's logits and labels at once"
OWNED_ARGUMENTS: dict[str, tuple[str, str | None]] = {
    "output_dir": ("the checkpoints live in the run folder", "output.dir"),
    "num_train_epochs": ("", "training.epochs"),
    "max_steps": ("", "training.max_steps"),
    "per_device_train_batch_size": ("", "training.batch_size"),
    "per_device_eval_batch_size": ("", "training.eval_batch_size"),
    "gradient_accumulation_steps": ("", "training.grad_accum"),
    "learning_rate": ("", "training.lr"),
    "weight_decay": ("", "training.weight_decay"),
    "warmup_steps": ("", "training.warmup_ratio"),
    "lr_scheduler_type": ("", "training.scheduler"),
    "lr_scheduler_kwargs": ("", "training.scheduler_kwargs"),
    "optim": ("it takes any of transformers' optimizer names", "training.optimizer"),
    "bf16": ("", "training.precision"),
    "fp16": ("", "training.precision"),
    "seed": ("it also seeds the data split", "training.seed"),
    "data_seed": ("", "training.seed"),
    "logging_steps": ("", "training.logging_steps"),
    "report_to": ("", "training.report_to"),
    "torch_compile": ("", "training.compile"),
    "resume_from_checkpoint": ("", "training.resume"),
    "dataloader_num_workers": ("", "data.num_workers"),
    "label_smoothing_factor": (
        "it computes the loss itself, so the Trainer's label smoother never runs",
        "training.label_smoothing",
    ),
    "push_to_hub": (_HUB, "hub.push"),
    "hub_model_id": (_HUB, "hub.repo_id"),
    "hub_private_repo": (_HUB, "hub.private"),
    "hub_strategy": (_HUB, None),
    "hub_always_push": (_HUB, None),
    "hub_revision": (_HUB, None),
    "hub_token": (f"{_HUB}, with the token of `hf auth login` or HF_TOKEN", None),
    "remove_unused_columns": ("the Trainer would drop the image column", None),
    "label_names": ("DeiT-with-teacher's forward takes no labels, so the Trainer cannot infer them", None),
    "use_cpu": (
        "it trains on the accelerator when there is one; hide it (CUDA_VISIBLE_DEVICES=) to train on the CPU",
        None,
    ),
    "disable_tqdm": ("its own progress report replaces the Trainer's bars", None),
    "restore_callback_states_from_checkpoint": (
        "a resumed run needs its epoch timings and early-stopping patience back",
        None,
    ),
    "save_only_model": ("a checkpoint without optimizer, scheduler and RNG states cannot resume", None),
    "prediction_loss_only": ("its metrics and the choice of the best checkpoint need the predictions", None),
    "batch_eval_metrics": ("its metrics take the whole evaluation at once", None),
    "load_best_model_at_end": (_BEST, None),
    "metric_for_best_model": (_BEST, None),
    "greater_is_better": (_BEST, None),
    "include_for_metrics": (f"{_WHOLE}; the Trainer would read inputs its batches do not hold", None),
    "eval_do_concat_batches": (_WHOLE, None),
    "dataloader_drop_last": ("it counts the schedule recorded in metrics.json with every batch kept", None),
}
# training.report_to names: transformers' check that one is installed, and what installs it.
TRACKERS = {
    "azure_ml": ("is_azureml_available", "pip install azureml-core"),
    "clearml": ("is_clearml_available", "pip install clearml"),
    "codecarbon": ("is_codecarbon_available", "pip install codecarbon"),
    "comet_ml": ("is_comet_available", "pip install comet-ml"),
    "dagshub": ("is_dagshub_available", "pip install dagshub mlflow"),
    "dvclive": ("is_dvclive_available", "pip install dvclive"),
    "flyte": ("is_flytekit_available", "pip install flytekit"),
    "kubeflow": ("is_kubeflow_available", "it runs inside a Kubeflow TrainJob, which sets KUBEFLOW_TRAINER_SERVER_URL"),
    "mlflow": ("is_mlflow_available", "pip install mlflow (and leave DISABLE_MLFLOW_INTEGRATION unset)"),
    "neptune": ("is_neptune_available", "pip install neptune"),
    "swanlab": ("is_swanlab_available", "pip install swanlab"),
    "tensorboard": ("is_tensorboard_available", "pip install tensorboard"),
    "trackio": ("is_trackio_available", "pip install trackio"),
    "wandb": ("is_wandb_available", "pip install wandb"),
}


def check_trainer_keys(recipe: Recipe) -> None:
    """training.report_to, training.optimizer and training.args as the Trainer will take them, before any work.

    Names are checked against transformers' own lists (a did-you-mean for a typo), and the values by building
    the TrainingArguments the run will build: their own checks become RecipeErrors that name the keys.
    """
    t = recipe.training
    _check_trackers(t.report_to)
    _check_optimizer_name(t.optimizer)
    _check_optimizer_groups(t)
    given = with_strategy_names(t.args)
    for key, value in given.items():
        _check_argument(key, value)
    _check_schedule(given)
    try:
        with warnings.catch_warnings():  # the run itself warns (a deprecated name, ...); the check stays quiet
            warnings.simplefilter("ignore")
            args = training_arguments(recipe, Path(CHECKPOINTS_DIR))
    except (ValueError, TypeError) as e:
        shown = f" with training.args={given}" if given else ""
        raise RecipeError(f"the Trainer's arguments do not build{shown}: {e}") from None
    _check_optimizer_installed(t.optimizer, args)


def _check_trackers(names: list[str]) -> None:
    from transformers.integrations import integration_utils

    known = list(integration_utils.INTEGRATION_TO_CALLBACK)
    for name in names:
        if name not in known:
            raise RecipeError(
                f"recipe key 'training.report_to' has '{name}', which is not one of transformers' trackers."
                f"{did_you_mean(name, known)} Known: {', '.join(known)}; an empty list (the default) reports to none."
            )
        available, install = TRACKERS.get(name, (None, ""))
        if available and not getattr(integration_utils, available)():
            raise RecipeError(f"recipe key 'training.report_to' has '{name}', which is not installed here: {install}.")


def _check_optimizer_name(name: str) -> None:
    from transformers.training_args import OptimizerNames

    known = [o.value for o in OptimizerNames]
    if name not in known:
        raise RecipeError(
            f"recipe key 'training.optimizer' got '{name}', which is not one of transformers' optimizers."
            f"{did_you_mean(name, known)} Usual: {', '.join(OPTIMIZERS)}; all: {', '.join(known)}."
        )


def _check_optimizer_groups(t: TrainingSection) -> None:
    """layer_decay and head_lr hand hf_tl's parameter groups to the optimizer class itself
    (HfTlTrainer.create_optimizer), which skips transformers' own set-up of the optimizers beyond the five."""
    if t.optimizer in OPTIMIZERS:
        return
    for key in ("layer_decay", "head_lr"):
        value = getattr(t, key)
        if value is not None:
            raise RecipeError(
                f"recipe key 'training.{key}' got {value}, which does not go with training.optimizer={t.optimizer}: "
                "hf_tl builds the layer-wise parameter groups and calls the optimizer class itself, skipping "
                "transformers' own set-up of the optimizers beyond its five (GaLore, LOMO, 8-bit, schedule-free). "
                f"Use training.optimizer={' or '.join(OPTIMIZERS)}, or drop training.{key}."
            )


def _check_schedule(given: dict[str, Any]) -> None:
    """hf_tl keeps the checkpoint with the best validation accuracy and resumes from checkpoints, so it evaluates
    and saves; an eval_steps or save_steps that transformers would silently ignore is named."""
    evaluation = str(given.get("eval_strategy", "epoch"))
    save = str(given.get("save_strategy", evaluation))
    if evaluation == "no":
        raise RecipeError(
            "recipe key 'training.args.eval_strategy' got 'no', but hf_tl keeps the checkpoint with the best "
            "validation accuracy as model/, so it evaluates: leave it unset (epoch) or give "
            "training.args.eval_strategy=steps with training.args.eval_steps=N."
        )
    if save in ("no", "best"):
        raise RecipeError(
            f"recipe key 'training.args.save_strategy' got '{save}', but hf_tl keeps the best checkpoint and "
            "resumes from checkpoints, so it saves at every evaluation: leave training.args.save_strategy unset "
            "(it follows training.args.eval_strategy)."
        )
    if given.get("eval_steps") is not None and evaluation != "steps":
        raise RecipeError(
            f"recipe key 'training.args.eval_steps' got {given['eval_steps']!r}, which transformers ignores "
            f"with eval_strategy '{evaluation}': add training.args.eval_strategy=steps."
        )
    if given.get("save_steps") is not None and "steps" not in (evaluation, save):
        raise RecipeError(
            f"recipe key 'training.args.save_steps' got {given['save_steps']!r}, which transformers ignores "
            f"with save_strategy '{save}': add training.args.eval_strategy=steps (saves follow the evaluations)."
        )


def _check_optimizer_installed(name: str, args: TrainingArguments) -> None:
    """An optimizer from another package (bitsandbytes, schedulefree, ...) is found installed, or named."""
    if name in OPTIMIZERS:
        return
    try:
        Trainer.get_optimizer_cls_and_kwargs(args)
    except ImportError as e:
        raise RecipeError(f"recipe key 'training.optimizer' got '{name}', which needs a package: {e}") from None
    except (ValueError, TypeError):
        pass  # GaLore, Apollo, LOMO need the model; the run says what is missing


def _check_argument(key: str, value: Any) -> None:
    """One training.args key: a TrainingArguments field, not one hf_tl sets, of the field's simple type."""
    fields = {f.name for f in dataclasses.fields(TrainingArguments) if f.init}
    full = f"training.args.{key}"
    if key in OWNED_ARGUMENTS:
        why, instead = OWNED_ARGUMENTS[key]
        instead = instead if instead and _is_recipe_key(instead) else None
        said = f"hf_tl sets it from {instead}" if instead else "hf_tl owns it"
        said += f" ({why})" if why else ""
        fix = f"; set {instead} instead" if instead else ""
        raise RecipeError(f"recipe key '{full}' is refused: {said}{fix}.")
    if key not in fields:
        raise RecipeError(
            f"recipe key '{full}': TrainingArguments has no field '{key}'.{did_you_mean(key, sorted(fields))}"
        )
    expected = _simple_types(key)
    if expected and not (isinstance(value, expected) and not (isinstance(value, bool) and bool not in expected)):
        names = " or ".join("null" if kind is type(None) else kind.__name__ for kind in expected)
        raise RecipeError(f"recipe key '{full}' got {value!r}, which is not a valid {names}.")


def _simple_types(key: str) -> tuple[type, ...]:
    """The field's types when all are plain (bool, int, float, str, None), else () and TrainingArguments checks it."""
    hint = typing.get_type_hints(TrainingArguments)[key]
    kinds = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, UnionType) else (hint,)
    if not set(kinds) <= {bool, int, float, str, type(None)}:
        return ()
    return tuple({*kinds, int} if float in kinds else kinds)  # 1 is a valid float


def _is_recipe_key(key: str) -> bool:
    section, _, name = key.partition(".")
    return section in SECTIONS and name in {f.name for f in dataclasses.fields(SECTIONS[section])}
