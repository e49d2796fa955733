"""Per-epoch wall-clock timings, recorded as a Trainer callback."""

from __future__ import annotations

import time

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState


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
