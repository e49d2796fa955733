"""Per-epoch wall-clock timings, recorded as a Trainer callback, and the progress a person reads from them."""

from __future__ import annotations

import time

from transformers import Trainer, TrainerCallback
from transformers.trainer_callback import ExportableState

from hf_tl import progress


class EpochTimer(TrainerCallback, ExportableState):
    """Training seconds per epoch (evaluation excluded) and evaluation seconds per epoch.

    Its lists travel in each checkpoint's trainer state, so a resumed run reports every epoch.
    On resume the Trainer rebuilds this callback from that state: find it with `of(trainer)`.
    """

    def __init__(self) -> None:
        self.train_seconds: list[float] = []
        self.eval_seconds: list[float] = []
        self._start = 0.0
        self._in_training = False

    def on_epoch_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()
        self._in_training = True

    def on_epoch_end(self, args, state, control, **kwargs):
        self.train_seconds.append(round(time.perf_counter() - self._start, 3))

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if self._in_training and metrics and "eval_runtime" in metrics:
            self.eval_seconds.append(metrics["eval_runtime"])

    def on_train_end(self, args, state, control, **kwargs):
        self._in_training = False

    def state(self) -> dict:
        return {"args": {}, "attributes": {"train_seconds": self.train_seconds, "eval_seconds": self.eval_seconds}}

    @staticmethod
    def of(trainer) -> EpochTimer:
        return next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, EpochTimer))

    def to_dict(self) -> dict:
        return {"train_seconds_per_epoch": self.train_seconds, "eval_seconds_per_epoch": self.eval_seconds}


class ProgressReport(TrainerCallback):
    """What a person reads of training, in place of the Trainer's dict per log and its nested evaluation bars.

    One bar over the training steps, one over each evaluation after training (none inside an epoch),
    both through `hf_tl.progress` (none in a log file); and one plain line per epoch on stdout, printed
    once the epoch's checkpoint is saved (so a process stopped after the line can resume from that epoch):
    `epoch 3/20: loss 0.726, eval accuracy 0.794, macro_f1 0.793 (2.1 s)`. Everything is read from the
    Trainer's state, so a resumed run reports as an uninterrupted one. Not an ExportableState: the
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
        if state.is_world_process_zero:
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
    parts = [f"loss {sum(losses) / len(losses):#.3g}"] if losses else []
    if "eval_accuracy" in evaluated:
        parts.append(f"eval accuracy {evaluated['eval_accuracy']:.3f}")
    if "eval_macro_f1" in evaluated:
        parts.append(f"macro_f1 {evaluated['eval_macro_f1']:.3f}")
    took = f" ({seconds:.1f} s)" if seconds is not None else ""
    return f"epoch {round(epoch, 2):g}/{epochs}: {', '.join(parts)}{took}"
