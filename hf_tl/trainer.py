"""transformers' Trainer, configured from a recipe, with checkpoints it can read back."""

from __future__ import annotations

from contextlib import contextmanager
from functools import partial
from pathlib import Path

from transformers import PreTrainedModel, Trainer, TrainingArguments

from hf_tl.environment import no_accelerator
from hf_tl.recipe import Recipe


class HfTlTrainer(Trainer):
    """Saves its resume/best checkpoints under the model's current parameter names.

    transformers 5 saves checkpoints under the pre-v5 names by default, then reloads
    the best one (and resumes) with a plain `load_state_dict`, which matches none of
    the renamed keys and silently keeps the wrong weights. The final model is still
    saved in the default, widely loadable format.
    """

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        model = self.accelerator.unwrap_model(self.model)
        if not _internal_call or not isinstance(model, PreTrainedModel):
            return super().save_model(output_dir, _internal_call)
        with _current_key_names(model):
            return super().save_model(output_dir, _internal_call)


@contextmanager
def _current_key_names(model):
    model.save_pretrained = partial(type(model).save_pretrained, model, save_original_format=False)
    try:
        yield
    finally:
        del model.save_pretrained


def training_arguments(recipe: Recipe, checkpoints_dir: Path) -> TrainingArguments:
    t = recipe.training
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
        dataloader_num_workers=recipe.data.num_workers,
        dataloader_pin_memory=not no_accelerator(),
        use_cpu=no_accelerator(),
        disable_tqdm=False,
    )
