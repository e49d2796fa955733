"""Classification metrics from logits: one numpy function for the Trainer, `hf-tl eval` and the `evaluate` module.

They run from the installed package. Loading them through `evaluate.load` copied a module into
`HF_HOME` on every run, and a copy broken once (a full disk left it 0 bytes) broke every later
train and eval. `metric_modules/classification.py` stays as the `evaluate` interface
(`evaluate.load(str(MODULE))`) and calls `classification_metrics`, so both give the same numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from transformers import EvalPrediction

MODULE = Path(__file__).parent / "metric_modules" / "classification.py"
TOP_K = 5
PER_CLASS = ("per_class_accuracy", "per_class_precision", "per_class_recall")  # one value per class id, or None


def classification_metrics(logits, references) -> dict:
    """Accuracy, top-5 accuracy (more than 5 classes), macro-F1 and balanced accuracy (scikit-learn's), count,
    and per class: accuracy, precision and recall (the `PER_CLASS` lists).

    The predicted class is `argmax`'s: on equal scores the lower class id. Top-5 ranks the same way (see `top_k_hits`).
    A per-class value is None where it is undefined: recall (and accuracy) for a class absent from the references,
    precision for a class never predicted. Balanced accuracy is the mean recall over the classes present.
    """
    logits = np.asarray(logits, dtype=np.float64)  # exact for float32 and float16 logits
    refs = np.asarray(references, dtype=np.int64)
    num_classes = logits.shape[1]
    if refs.size and (refs.min() < 0 or refs.max() >= num_classes):
        raise ValueError(f"class ids must lie in [0, {num_classes}); got {refs.min()} to {refs.max()}")
    predicted = logits.argmax(axis=1)
    counts = confusion_counts(refs, predicted, num_classes)
    true_positive = np.diag(counts).astype(np.float64)
    support = counts.sum(axis=1)
    predicted_count = counts.sum(axis=0)
    precision = np.divide(true_positive, predicted_count, out=np.zeros(num_classes), where=predicted_count > 0)
    recall = np.divide(true_positive, support, out=np.zeros(num_classes), where=support > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros(num_classes), where=denominator > 0)
    present = support > 0
    seen = present | (predicted_count > 0)  # scikit-learn's macro average: labels in either
    result = {
        "accuracy": float((predicted == refs).mean()),
        "macro_f1": float(f1[seen].mean()),
        "balanced_accuracy": float(recall[present].mean()),
        "per_class_accuracy": defined_or_none(recall, present),
        "per_class_precision": defined_or_none(precision, predicted_count > 0),
        "per_class_recall": defined_or_none(recall, present),
        "num_examples": int(len(refs)),
    }
    if num_classes > TOP_K:
        result["top5_accuracy"] = float(top_k_hits(logits, refs, TOP_K).mean())
    return result


def defined_or_none(values: np.ndarray, defined: np.ndarray) -> list[float | None]:
    """Plain floats for JSON, None where the value is undefined (a 0/0), so it is not mistaken for a 0."""
    return [float(v) if d else None for v, d in zip(values, defined, strict=True)]


def named_per_class(result: dict, labels: list[str]) -> dict:
    """`result` with each per-class list keyed by label name, as metrics.json and eval.json record them."""
    named = dict(result)
    for key in PER_CLASS:
        named[key] = dict(zip(labels, result[key], strict=True))
    return named


def confusion_counts(references: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """counts[true, predicted]: one bincount over the flattened pairs (np.add.at is ~10x slower)."""
    flat = references.astype(np.int64) * num_classes + predicted
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def top_k_hits(logits: np.ndarray, references: np.ndarray, k: int) -> np.ndarray:
    """Whether each true class ranks among the first k, with no sort.

    The ranking is argmax's, so a correct top-1 is always a top-k hit: higher score first, the lower class id
    first among equal scores (a stable descending sort), NaN above every number (argmax returns a NaN's
    index). A class's rank is the count of classes ahead of it.
    """
    rows = np.arange(len(references))
    true = logits[rows, references][:, None]
    nan, true_nan = np.isnan(logits), np.isnan(true)
    above = np.where(true_nan, False, (logits > true) | nan)
    tied = np.where(true_nan, nan, logits == true)
    earlier = np.arange(logits.shape[1]) < references[:, None]
    return (above | (tied & earlier)).sum(axis=1) < k


def full_metrics(predictions, label_ids) -> dict:
    """Every metric, per-class accuracy included, from the Trainer's predictions."""
    if isinstance(predictions, tuple):  # DeiT with teacher also returns each head's logits: the first is their mean
        predictions = predictions[0]
    return classification_metrics(predictions, label_ids)


def compute_metrics(prediction: EvalPrediction) -> dict:
    """Scalar metrics for the Trainer's logs; the per-class lists go to metrics.json separately."""
    result = full_metrics(prediction.predictions, prediction.label_ids)
    return {key: value for key, value in result.items() if key not in PER_CLASS}
