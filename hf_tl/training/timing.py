"""Per-epoch wall-clock timings, recorded as a Trainer callback, and the progress a person reads from them."""

from __future__ import annotations

import math
import time

from transformers import Trainer, TrainerCallback, TrainerState, TrainingArguments
from transformers.trainer_callback import ExportableState
from transformers.trainer_utils import IntervalStrategy

from hf_tl import progress


class EpochTimer(TrainerCallback, ExportableState):
    """Training seconds per epoch (evaluation excluded) and the seconds of each evaluation during training.

    Under eval_strategy=steps evaluations (and their checkpoint saves) fall inside an epoch: the clock skips them, so
    an epoch's training seconds mean the same under either strategy. Each evaluation is kept with its step and epoch.
    Its lists travel in each checkpoint's trainer state, so a resumed run reports every epoch.
    On resume the Trainer rebuilds this callback from that state: find it with `of(trainer)`.
    """

    def __init__(self) -> None:
        self.train_seconds: list[float] = []
        self.evaluations: list[dict] = []  # {"step", "epoch", "seconds"} of each evaluation during training
        self._start = 0.0
        self._skipped = 0.0  # seconds of this epoch spent evaluating and saving
        self._last_step_end = 0.0
        self._in_epoch = False
        self._in_training = False

    def on_epoch_begin(self, args, state, control, **kwargs):
        self._start = self._last_step_end = time.perf_counter()
        self._skipped = 0.0
        self._in_epoch = self._in_training = True

    def on_step_end(self, args, state, control, **kwargs):
        self._last_step_end = time.perf_counter()

    def on_epoch_end(self, args, state, control, **kwargs):
        self.train_seconds.append(round(time.perf_counter() - self._start - self._skipped, 3))
        self._in_epoch = False

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self._skip_since_step()
        if self._in_training and metrics and "eval_runtime" in metrics:
            self.evaluations.append(
                {"step": state.global_step, "epoch": round(state.epoch, 4), "seconds": metrics["eval_runtime"]}
            )

    def on_save(self, args, state, control, **kwargs):
        self._skip_since_step()

    def on_train_end(self, args, state, control, **kwargs):
        self._in_training = False

    def _skip_since_step(self) -> None:
        """An evaluation or save inside an epoch (eval_strategy=steps): its seconds are not training."""
        if self._in_epoch:
            now = time.perf_counter()
            self._skipped += now - self._last_step_end
            self._last_step_end = now

    def state(self) -> dict:
        return {"args": {}, "attributes": {"train_seconds": self.train_seconds, "evaluations": self.evaluations}}

    @staticmethod
    def of(trainer) -> EpochTimer:
        return next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, EpochTimer))

    def to_dict(self) -> dict:
        """metrics.json's timings. `eval_seconds_per_epoch`: the evaluation seconds of each epoch that evaluated (one
        evaluation each under eval_strategy=epoch, their sum under steps); `eval_seconds`: each evaluation's own."""
        return {
            "train_seconds_per_epoch": self.train_seconds,
            "eval_seconds_per_epoch": eval_seconds_per_epoch(self.evaluations),
            "eval_seconds": self.evaluations,
        }


def eval_seconds_per_epoch(evaluations: list[dict]) -> list[float]:
    """The evaluation seconds of each epoch, in order; an evaluation at epoch 0.5 or 1.0 falls in the first."""
    per_epoch: dict[int, float] = {}
    for evaluation in evaluations:
        epoch = math.ceil(evaluation["epoch"])
        per_epoch[epoch] = per_epoch.get(epoch, 0.0) + evaluation["seconds"]
    return [round(seconds, 4) for seconds in per_epoch.values()]


class ProgressReport(TrainerCallback):
    """What a person reads of training, in place of the Trainer's dict per log and its nested evaluation bars.

    One bar over the training steps, one over each evaluation after training (none inside an epoch),
    both through `hf_tl.progress` (none in a log file); and one plain line per epoch on stdout, printed
    once the epoch's checkpoint is saved (so a process stopped after the line can resume from that epoch):
    `epoch 3/20: loss 0.726, eval accuracy 0.794, macro_f1 0.793 (2.1 s)`; under eval_strategy=steps one per
    evaluation's checkpoint instead: `step 10 (epoch 0.5/2): loss 0.912, eval accuracy 0.750, ...`. Everything is
    read from the Trainer's state, so a resumed run reports as an uninterrupted one. Not an ExportableState: the
    Trainer keeps this very object (and its trainer) on resume.
    """

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.training_bar = None
        self.prediction_bar = None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.training_bar = progress.bar(total=state.max_steps, initial=state.global_step, desc="hf_tl: training")

    def on_step_end(self, args, state, control, **kwargs):
        if self.training_bar is not None:
            self.training_bar.update(state.global_step - self.training_bar.n)

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        if args.eval_strategy == IntervalStrategy.STEPS:
            progress.write(step_line(state.log_history, state.global_step, state.epoch, state.num_train_epochs))
        else:
            progress.write(epoch_line(state.log_history, state.epoch, state.num_train_epochs, self._seconds()))

    def on_train_end(self, args, state, control, **kwargs):
        if self.training_bar is not None:
            self.training_bar.close()
            self.training_bar = None

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
        if self.training_bar is not None or not state.is_world_process_zero:
            return  # an evaluation inside training: its result is in the epoch line
        if self.prediction_bar is None:
            total = len(eval_dataloader) if eval_dataloader is not None else None
            self.prediction_bar = progress.bar(total=total, desc="hf_tl: evaluating")
        self.prediction_bar.update(1)

    def on_evaluate(self, args, state, control, **kwargs):
        self._close_prediction_bar()

    def on_predict(self, args, state, control, **kwargs):
        self._close_prediction_bar()

    def _close_prediction_bar(self) -> None:
        if self.prediction_bar is not None:
            self.prediction_bar.close()
            self.prediction_bar = None

    def _seconds(self) -> float | None:
        timers = [cb for cb in self.trainer.callback_handler.callbacks if isinstance(cb, EpochTimer)]
        return timers[0].train_seconds[-1] if timers and timers[0].train_seconds else None


def epoch_line(history: list[dict], epoch: float, epochs: int, seconds: float | None) -> str:
    """The epoch's summary: the mean of the losses logged since the last evaluation (none when training.logging_steps
    is longer than the epoch), then this evaluation's metrics."""
    previous = max((h["epoch"] for h in history if "eval_loss" in h and h["epoch"] < epoch), default=0.0)
    losses = [h["loss"] for h in history if "loss" in h and previous < h["epoch"] <= epoch]
    evaluated = next((h for h in reversed(history) if "eval_loss" in h and h["epoch"] == epoch), {})
    took = f" ({seconds:.1f} s)" if seconds is not None else ""
    return f"epoch {round(epoch, 2):g}/{epochs}: {', '.join(_summary(losses, evaluated))}{took}"


def step_line(history: list[dict], step: int, epoch: float, epochs: int) -> str:
    """A step evaluation's summary (eval_strategy=steps), as `epoch_line` without the epoch's seconds: the mean of the
    losses logged since the previous evaluation, then this evaluation's metrics."""
    previous = max((h["step"] for h in history if "eval_loss" in h and h["step"] < step), default=0)
    losses = [h["loss"] for h in history if "loss" in h and previous < h["step"] <= step]
    evaluated = next((h for h in reversed(history) if "eval_loss" in h and h["step"] == step), {})
    return f"step {step} (epoch {round(epoch, 2):g}/{epochs}): {', '.join(_summary(losses, evaluated))}"


def _summary(losses: list[float], evaluated: dict) -> list[str]:
    parts = [f"loss {sum(losses) / len(losses):#.3g}"] if losses else []
    if "eval_accuracy" in evaluated:
        parts.append(f"eval accuracy {evaluated['eval_accuracy']:.3f}")
    if "eval_macro_f1" in evaluated:
        parts.append(f"macro_f1 {evaluated['eval_macro_f1']:.3f}")
    return parts


def best_checkpoint_note(state: TrainerState, args: TrainingArguments) -> str:
    """` (best checkpoint, step 15)` (`epoch 1` under eval_strategy=epoch) when the checkpoint the run keeps is not its
    last evaluation: the final accuracy is the best checkpoint's, not the last line's; empty otherwise."""
    evaluations = [h for h in state.log_history if "eval_loss" in h]
    best = next((h for h in evaluations if h["step"] == state.best_global_step), None)
    if best is None or best is evaluations[-1]:
        return ""
    at = (
        f"step {best['step']}" if args.eval_strategy == IntervalStrategy.STEPS else f"epoch {round(best['epoch'], 2):g}"
    )
    return f" (best checkpoint, {at})"
