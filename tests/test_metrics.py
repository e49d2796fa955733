"""The package's offline `evaluate` module agrees with scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, recall_score, top_k_accuracy_score
from transformers import EvalPrediction

from hf_tl.metrics import compute_metrics, load_metric


@pytest.mark.parametrize("num_classes", [3, 10])
def test_matches_sklearn(num_classes):
    rng = np.random.default_rng(num_classes)
    references = rng.integers(0, num_classes, 500)
    logits = rng.normal(size=(500, num_classes)) + 2.0 * np.eye(num_classes)[references]
    result = load_metric().compute(predictions=logits, references=references)
    predicted = logits.argmax(1)
    assert result["accuracy"] == pytest.approx(accuracy_score(references, predicted))
    assert result["macro_f1"] == pytest.approx(f1_score(references, predicted, average="macro"))
    assert result["per_class_accuracy"] == pytest.approx(list(recall_score(references, predicted, average=None)))
    assert result["num_examples"] == 500
    if num_classes > 5:
        expected = top_k_accuracy_score(references, logits, k=5, labels=range(num_classes))
        assert result["top5_accuracy"] == pytest.approx(expected)
    else:
        assert "top5_accuracy" not in result


def test_compute_metrics_takes_the_mean_logits_of_a_two_head_model():
    references = np.array([0, 1, 2, 1])
    mean = np.eye(3)[references]
    wrong = np.eye(3)[[1, 2, 0, 0]]
    result = compute_metrics(EvalPrediction(predictions=(mean, wrong, wrong), label_ids=references))
    assert result["accuracy"] == 1.0
    assert "per_class_accuracy" not in result


def test_loads_offline_from_a_path():
    import os

    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert load_metric().name == "classification"
