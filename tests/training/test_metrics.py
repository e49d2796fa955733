"""The metrics: one numpy function, equal to scikit-learn, and independent of what lies in HF_HOME.

`evaluate.load` of the package's module copies code into HF_HOME; a copy left 0 bytes by a full
disk once broke every later train and eval. The metrics now run from the package itself, and the
`evaluate` module is an interface over the same function.
"""

from __future__ import annotations

import json
import os
import sys

import evaluate
import numpy as np
import pytest
from conftest import run_cli
from evaluate.loading import evaluation_module_factory
from sklearn.metrics import accuracy_score, f1_score, recall_score, top_k_accuracy_score
from transformers import EvalPrediction

from hf_tl.training.metrics import (
    MODULE,
    classification_metrics,
    compute_metrics,
    confusion_counts,
    full_metrics,
    top_k_hits,
)


def random_logits(num_classes: int, rows: int = 500, seed: int = 0):
    rng = np.random.default_rng(seed)
    references = rng.integers(0, num_classes, rows)
    logits = rng.normal(size=(rows, num_classes)) + 2.0 * np.eye(num_classes)[references]
    return logits.astype(np.float32), references


def tied_logits(num_classes: int, rows: int = 2000, seed: int = 0):
    """Scores from a handful of values: most rows hold exact ties, also at the fifth place."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 3, (rows, num_classes)).astype(np.float32), rng.integers(0, num_classes, rows)


@pytest.mark.parametrize("num_classes", [3, 10])
def test_matches_sklearn(num_classes):
    logits, references = random_logits(num_classes, seed=num_classes)
    result = classification_metrics(logits, references)
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


def test_top5_ranks_as_argmax_does_also_on_ties():
    """Lower class id first among equal scores (a stable sort), so a correct top-1 is always a top-5 hit."""
    for num_classes in (6, 10, 40):  # numpy's default argsort is not stable past 16 columns
        logits, references = tied_logits(num_classes, seed=num_classes)
        stable = np.argsort(-logits, axis=1, kind="stable")[:, :5]
        hits = top_k_hits(logits.astype(np.float64), references, 5)
        np.testing.assert_array_equal(hits, (stable == references[:, None]).any(axis=1))
        assert hits[logits.argmax(axis=1) == references].all()
    # without ties it is the former argsort formula exactly
    logits, references = random_logits(1000, rows=3000)
    former = np.argsort(-logits.astype(np.float64), axis=1)[:, :5]
    np.testing.assert_array_equal(top_k_hits(logits, references, 5), (former == references[:, None]).any(axis=1))


def test_nan_scores_rank_first_as_argmax_ranks_them():
    """A diverged model is not credited with a top-5 hit it did not make, nor denied the one argmax counts."""
    logits = np.zeros((3, 8))
    logits[0, 7] = np.nan  # argmax picks 7: the true class 7 is a hit
    logits[1] = np.nan  # all NaN: argmax picks 0; ties by class id, so classes 0..4 are the top 5
    logits[2, :6] = np.nan  # six NaN scores outrank the true class 6
    references = np.array([7, 5, 6])
    np.testing.assert_array_equal(top_k_hits(logits, references, 5), [True, False, False])
    assert top_k_hits(logits, np.array([0, 4, 7]), 5).tolist() == [True, True, False]


def test_confusion_counts_are_the_pairs_counted():
    rng = np.random.default_rng(3)
    references, predicted = rng.integers(0, 7, 1000), rng.integers(0, 7, 1000)
    expected = np.zeros((7, 7), dtype=np.int64)
    np.add.at(expected, (references, predicted), 1)
    np.testing.assert_array_equal(confusion_counts(references, predicted, 7), expected)


def test_a_class_id_outside_the_logits_is_an_error():
    with pytest.raises(ValueError, match=r"class ids must lie in \[0, 3\); got 0 to 3"):
        classification_metrics(np.zeros((2, 3)), [0, 3])


def test_compute_metrics_takes_the_mean_logits_of_a_two_head_model():
    references = np.array([0, 1, 2, 1])
    mean = np.eye(3)[references]
    wrong = np.eye(3)[[1, 2, 0, 0]]
    result = compute_metrics(EvalPrediction(predictions=(mean, wrong, wrong), label_ids=references))
    assert result["accuracy"] == 1.0
    assert "per_class_accuracy" not in result


@pytest.mark.parametrize("data", [random_logits(3), random_logits(10), tied_logits(10), tied_logits(40)])
def test_the_evaluate_module_loads_offline_and_gives_the_same_numbers(data):
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    logits, references = data
    module = evaluate.load(str(MODULE))
    assert module.name == "classification"
    assert module.compute(predictions=logits, references=references) == full_metrics(logits, references)


METRICS_IN_A_FRESH_PROCESS = """
import json, sys
import numpy as np
from transformers import EvalPrediction
from hf_tl.training.metrics import compute_metrics, full_metrics
logits, references = np.array(json.loads(sys.argv[1]), dtype=np.float32), np.array(json.loads(sys.argv[2]))
print(json.dumps([full_metrics(logits, references), compute_metrics(EvalPrediction(logits, references))]))
"""


def test_metrics_compute_where_nothing_can_be_written_under_hf_home(tmp_path):
    """HF_HOME inside a regular file: no folder can be made there, as on a full or read-only disk (also as root)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    logits, references = random_logits(10, rows=50)
    done = run_cli(
        sys.executable,
        "-c",
        METRICS_IN_A_FRESH_PROCESS,
        json.dumps(logits.tolist()),
        json.dumps(references.tolist()),
        HF_HOME=str(blocker / "hf-home"),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    full, scalars = json.loads(done.stdout)
    assert full == full_metrics(logits, references)
    assert scalars == {k: v for k, v in full.items() if k != "per_class_accuracy"}


def plant_empty_module_copy(hf_home) -> None:
    """The state a full disk left: evaluate's copy of the module under HF_HOME, 0 bytes long."""
    modules = hf_home / "modules" / evaluate.config.MODULE_NAME_FOR_DYNAMIC_MODULES
    evaluation_module_factory(str(MODULE), dynamic_modules_path=str(modules))  # evaluate's own copy step
    (copy,) = modules.rglob(MODULE.name)
    copy.write_bytes(b"")


@pytest.mark.slow
def test_an_empty_module_copy_in_hf_home_breaks_neither_train_nor_eval(tiny_vit, digits_splits_dir, tmp_path):
    hf_home = tmp_path / "hf-home"
    plant_empty_module_copy(hf_home)
    broken = run_cli(sys.executable, "-c", f"import evaluate; evaluate.load({str(MODULE)!r})", HF_HOME=str(hf_home))
    assert "TypeError: 'NoneType' object is not callable" in broken.stderr  # the state is as broken as it was seen

    trained = run_cli(
        sys.executable, "-m", "hf_tl.train", "recipe=quickstart", f"model.name={tiny_vit}",
        f"data.dataset={digits_splits_dir}", "training.epochs=1", "training.batch_size=16",
        f"output.dir={tmp_path / 'run'}", HF_HOME=str(hf_home),
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert 0 <= json.loads((tmp_path / "run" / "metrics.json").read_text())["eval"]["accuracy"] <= 1

    evaluated = run_cli(
        sys.executable, "-m", "hf_tl.eval", f"model={tmp_path / 'run'}", f"dataset={digits_splits_dir}",
        "split=test", f"output={tmp_path / 'eval'}", HF_HOME=str(hf_home),
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert 0 <= json.loads((tmp_path / "eval" / "eval.json").read_text())["metrics"]["accuracy"] <= 1
