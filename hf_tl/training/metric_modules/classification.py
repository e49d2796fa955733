"""Image-classification metrics as an `evaluate` module loaded from its path, so it works offline.

`evaluate.load("accuracy")` fetches its script from the Hub; this one ships in the package:
`evaluate.load(str(hf_tl.training.metrics.MODULE))`. The math is `hf_tl.training.metrics.classification_metrics`,
which hf_tl's own commands call directly, so both give the same numbers.
"""

import datasets
import evaluate

from hf_tl.training.metrics import classification_metrics

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
        return classification_metrics(predictions, references)
