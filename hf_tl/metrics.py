"""`compute_metrics` for the Trainer, through the package's own offline `evaluate` module."""

from __future__ import annotations

from pathlib import Path

import evaluate
import numpy as np
from transformers import EvalPrediction

MODULE = Path(__file__).parent / "metric_modules" / "classification.py"


def load_metric() -> evaluate.EvaluationModule:
    return evaluate.load(str(MODULE))


def compute_metrics(prediction: EvalPrediction) -> dict:
    """Scalar metrics for the Trainer's logs; per-class accuracy goes to metrics.json separately."""
    logits = prediction.predictions
    if isinstance(logits, tuple):  # DeiT with teacher also returns each head's logits: the first is their mean
        logits = logits[0]
    result = load_metric().compute(predictions=np.asarray(logits), references=prediction.label_ids)
    result.pop("per_class_accuracy")
    return result
