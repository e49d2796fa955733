"""`compute_metrics` for the Trainer, through the package's own offline `evaluate` module."""

from __future__ import annotations

from pathlib import Path

import evaluate
import numpy as np
from transformers import EvalPrediction

MODULE = Path(__file__).parent / "metric_modules" / "classification.py"


def load_metric() -> evaluate.EvaluationModule:
    return evaluate.load(str(MODULE))


def full_metrics(predictions, label_ids) -> dict:
    """Every metric, per-class accuracy included, from the Trainer's predictions."""
    if isinstance(predictions, tuple):  # DeiT with teacher also returns each head's logits: the first is their mean
        predictions = predictions[0]
    return load_metric().compute(predictions=np.asarray(predictions), references=label_ids)


def compute_metrics(prediction: EvalPrediction) -> dict:
    """Scalar metrics for the Trainer's logs; per-class accuracy goes to metrics.json separately."""
    result = full_metrics(prediction.predictions, prediction.label_ids)
    result.pop("per_class_accuracy")
    return result
