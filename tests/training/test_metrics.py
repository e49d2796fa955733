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
import torch
from conftest import TINY_VIT, digits, run_cli
from datasets import DatasetDict
from evaluate.loading import evaluation_module_factory
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    f1_score,
    precision_recall_fscore_support,
    recall_score,
    top_k_accuracy_score,
)
from transformers import EvalPrediction
from transformers.trainer_utils import PredictionOutput

from hf_tl.cli.eval import parse_args
from hf_tl.inference.evaluate import evaluate as evaluate_checkpoint
from hf_tl.training.metrics import (
    MODULE,
    PER_CLASS,
    classification_metrics,
    compute_metrics,
    confusion_counts,
    full_metrics,
    named_per_class,
    top_k_hits,
)
from hf_tl.training.run import evaluate_split


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
    assert not set(PER_CLASS) & set(result)  # the Trainer logs scalars only
    assert result["balanced_accuracy"] == 1.0


def imbalanced_with_gaps(rows: int = 3000, seed: int = 0):
    """8 classes: class 0 is most of the references, 5 and 7 never occur in them, 6 and 7 are never predicted."""
    rng = np.random.default_rng(seed)
    references = np.where(rng.random(rows) < 0.7, 0, rng.integers(1, 7, rows))
    references[references == 5] = 4
    logits = rng.normal(size=(rows, 8)) + 1.5 * np.eye(8)[references]
    logits[:, 0] += 1.0  # a model leaning to the majority class: high accuracy, lower balanced accuracy
    logits[:, 6:] -= 100.0
    return logits.astype(np.float32), references


def with_nan(values: list) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values])


def test_balanced_accuracy_and_per_class_precision_recall_match_sklearn():
    logits, references = imbalanced_with_gaps()
    predicted = logits.argmax(1)
    assert 5 in predicted and 6 in references and not {5, 7} & set(references) and not {6, 7} & set(predicted)
    result = classification_metrics(logits, references)
    assert result["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(references, predicted))
    assert result["balanced_accuracy"] < result["accuracy"] - 0.1  # the imbalance shows
    precision, recall, _, _ = precision_recall_fscore_support(
        references, predicted, labels=range(8), average=None, zero_division=np.nan
    )
    np.testing.assert_allclose(with_nan(result["per_class_precision"]), precision)
    np.testing.assert_allclose(with_nan(result["per_class_recall"]), recall)
    assert [i for i, v in enumerate(result["per_class_precision"]) if v is None] == [6, 7]  # never predicted
    assert [i for i, v in enumerate(result["per_class_recall"]) if v is None] == [5, 7]  # absent from the references
    assert result["per_class_precision"][5] == 0.0 and result["per_class_recall"][6] == 0.0  # defined, and 0
    assert result["per_class_recall"] == result["per_class_accuracy"]


def test_named_per_class_keys_every_per_class_list_by_label():
    result = classification_metrics(*random_logits(3, rows=60))
    named = named_per_class(result, ["cat", "dog", "fox"])
    for key in PER_CLASS:
        assert named[key] == dict(zip(["cat", "dog", "fox"], result[key], strict=True)), key
    assert {k: v for k, v in named.items() if k not in PER_CLASS} == {
        k: v for k, v in result.items() if k not in PER_CLASS
    }
    assert isinstance(result["per_class_precision"], list)  # the input is left as it was


def test_metrics_json_names_per_class_precision_and_recall_by_label():
    """`evaluate_split` (metrics.json's `eval` and `train`), from what the Trainer's predict returns."""
    logits, references = imbalanced_with_gaps(rows=300)
    labels = [f"class_{i}" for i in range(8)]

    class Predicts:  # the one Trainer method evaluate_split calls
        def predict(self, dataset, metric_key_prefix):
            return PredictionOutput(logits, references, {f"{metric_key_prefix}_loss": 0.5})

    full = evaluate_split(Predicts(), None, labels, "eval")
    expected = classification_metrics(logits, references)
    for key in PER_CLASS:
        assert full[key] == dict(zip(labels, expected[key], strict=True)), key
    assert full["per_class_recall"]["class_5"] is None and full["per_class_precision"]["class_6"] is None
    assert full["loss"] == 0.5 and full["balanced_accuracy"] == expected["balanced_accuracy"]


def test_eval_json_names_per_class_precision_and_recall_by_label(tmp_path):
    """`hf-tl eval`: the model's label names key every per-class list, as they key per-class accuracy."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    names = [f"digit_{i}" for i in range(5)]
    torch.manual_seed(0)
    config = ViTConfig(
        **TINY_VIT, num_labels=5, id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)}
    )
    ViTForImageClassification(config).save_pretrained(tmp_path / "vit")
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(tmp_path / "vit")
    DatasetDict({"test": digits(per_class=8)}).save_to_disk(str(tmp_path / "data"))
    args = [f"model={tmp_path / 'vit'}", f"dataset={tmp_path / 'data'}", "split=test", f"output={tmp_path / 'out'}"]
    metrics = evaluate_checkpoint(parse_args(args))["metrics"]
    for key in PER_CLASS:
        assert list(metrics[key]) == names, key
    assert metrics["per_class_recall"] == metrics["per_class_accuracy"]
    saved = json.loads((tmp_path / "out" / "eval.json").read_text())["metrics"]
    assert saved["per_class_precision"] == metrics["per_class_precision"]


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
    assert scalars == {k: v for k, v in full.items() if k not in PER_CLASS}


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
