"""Image-classification metrics as an `evaluate` module loaded from its path, so it works offline.

`evaluate.load("accuracy")` fetches its script from the Hub; this one ships in the package.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "Accuracy, top-5 accuracy (more than 5 classes), macro-F1 and per-class accuracy from logits."
_KWARGS = """
Args:
    predictions: logits, one row of class scores per example.
    references: the true class ids.
Returns:
    accuracy, top5_accuracy (when there are more than 5 classes), macro_f1, per_class_accuracy, num_examples.
"""


class Classification(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("float32")), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references):
        logits = np.asarray(predictions, dtype=np.float64)
        refs = np.asarray(references)
        num_classes = logits.shape[1]
        predicted = logits.argmax(axis=1)
        counts = np.zeros((num_classes, num_classes), dtype=np.int64)
        np.add.at(counts, (refs, predicted), 1)
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
            "per_class_accuracy": [float(r) if s else None for r, s in zip(recall, present, strict=True)],
            "num_examples": int(len(refs)),
        }
        if num_classes > 5:
            top5 = np.argsort(-logits, axis=1)[:, :5]
            result["top5_accuracy"] = float((top5 == refs[:, None]).any(axis=1).mean())
        return result
