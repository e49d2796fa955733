"""What `hf-tl select` writes: the ranking (csv, md, png) and a study of the best candidates that `hf-tl sweep` runs.

Hand-made rows, no models: the extraction and the scores are tested elsewhere.
"""

from __future__ import annotations

import csv
import sys

import pytest
from conftest import run_cli

from hf_tl.errors import HfTlError, RecipeError
from hf_tl.selection.ranking import (
    COST_COLUMNS,
    RANKING_CSV,
    RANKING_MD,
    RANKING_PNG,
    SCORE_COLUMNS,
    STUDY_FILE,
    backbone_type,
    pareto_front,
    ranked,
    write_ranking,
    write_study,
)
from hf_tl.studies.study import load_study

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def row(model: str, probe: float | None = None, logme: float | None = None, gflops: float | None = None, **extra):
    """A finished candidate unless status='failed' is given."""
    return {
        "model": model,
        "family": extra.pop("family", "vit"),
        "type": extra.pop("type", "transformer"),
        "status": "ok",
        "reason": None,
        "probe_accuracy": probe,
        "knn_accuracy": None if probe is None else probe - 0.05,
        "logme": logme,
        "params": 85_800_000,
        "gflops": gflops,
        "images_per_second": 312.5,
        "extract_seconds": 41.25,
        "feature_dim": 768,
        "num_train": 500,
        "num_eval": 200,
        **extra,
    }


def failed(model: str, reason: str) -> dict:
    return {**row(model), "status": "failed", "reason": reason, "params": None, "feature_dim": None}


ROWS = [
    failed("org/broken", "out of memory at batch size 64"),
    row("google/vit-base-patch16-224", probe=0.90, logme=1.2, gflops=17.6, family="vit"),
    row("microsoft/resnet-50", probe=0.90, logme=1.5, gflops=4.1, family="resnet", type="CNN"),
    row("timm/efficientnet_b0.ra_in1k", probe=0.85, logme=0.8, gflops=0.4, family="timm:efficientnet_b0", type="CNN"),
    failed("org/gated", "the repository is gated: accept its licence"),
    row("microsoft/swin-tiny-patch4-window7-224", probe=0.93, logme=1.0, gflops=4.5, family="swin"),
]
RANKED_MODELS = [
    "microsoft/swin-tiny-patch4-window7-224",
    "microsoft/resnet-50",  # ties with the ViT on probe accuracy, wins on LogME
    "google/vit-base-patch16-224",
    "timm/efficientnet_b0.ra_in1k",
    "org/broken",  # failed rows last, in input order
    "org/gated",
]
DATASET = {"key": "digits", "name": "Digits", "dataset": "/data/digits", "recipe": {"data": {"max_train_samples": 500}}}


def models(rows: list[dict]) -> list[str]:
    return [r["model"] for r in rows]


def test_ranked_orders_by_probe_then_logme_then_fewer_gflops_and_puts_failed_rows_last():
    assert models(ranked(ROWS)) == RANKED_MODELS
    same_scores = [row("a/costly", 0.8, 1.0, gflops=9.0), row("b/cheap", 0.8, 1.0, gflops=2.0)]
    assert models(ranked(same_scores)) == ["b/cheap", "a/costly"]
    unknown = [row("a/no-probe", None, 5.0, 1.0), row("b/no-logme", 0.7, None, 1.0), row("c/both", 0.7, 0.1, 1.0)]
    assert models(ranked(unknown)) == ["c/both", "b/no-logme", "a/no-probe"]


def test_pareto_front_keeps_only_undominated_points_in_order_of_cost():
    points = [(4.0, 0.90), (17.6, 0.90), (0.4, 0.85), (4.5, 0.93), (2.0, 0.80), (0.4, 0.85), (30.0, 0.95)]
    # (17.6, 0.90) loses to (4.0, 0.90); (2.0, 0.80) to (0.4, 0.85); equal points dominate neither other.
    assert pareto_front(points) == [2, 5, 0, 3, 6]
    assert pareto_front([(1.0, 0.5)]) == [0]
    assert pareto_front([(3.0, 0.5), (3.0, 0.7)]) == [1]
    assert pareto_front([]) == []


def test_ranking_csv_holds_every_column_and_reads_back(tmp_path):
    tuned = [{**r, "last_block_accuracy": 0.95} if r["model"] == "microsoft/resnet-50" else r for r in ROWS]
    paths = write_ranking(tuned, tmp_path / "out", "digits")
    assert paths == [tmp_path / "out" / name for name in (RANKING_CSV, RANKING_MD, RANKING_PNG)]
    with open(paths[0], newline="") as f:
        reader = csv.DictReader(f)
        lines = list(reader)
    header = reader.fieldnames
    assert header[:4] == ["rank", "model", "family", "status"] and header[-1] == "reason"
    assert header.index("last_block_accuracy") == header.index("logme") + 1
    assert set(SCORE_COLUMNS) | set(COST_COLUMNS) | {"feature_dim", "num_train", "num_eval"} <= set(header)
    assert [line["model"] for line in lines] == RANKED_MODELS
    assert [line["rank"] for line in lines] == ["1", "2", "3", "4", "", ""]
    by_model = {r["model"]: r for r in tuned}
    for line in lines:
        original = by_model[line["model"]]
        for column in header[1:]:
            value = original.get(column)
            if value is None:
                assert line[column] == "", (line["model"], column)
            elif isinstance(value, str):
                assert line[column] == value
            else:
                assert float(line[column]) == value, (line["model"], column)


def test_ranking_md_lists_every_model_with_readable_numbers_and_failures_last(tmp_path):
    tuned = [{**r, "full_accuracy": 0.9512} if r["status"] == "ok" else r for r in ROWS]
    md = write_ranking(tuned, tmp_path, "digits | 500 images")[1].read_text()
    assert md.startswith("# Backbone ranking: digits \\| 500 images\n")
    table = [line for line in md.splitlines() if line.startswith("| ")]
    assert "| Rank | Model | Family | Probe acc. | k-NN acc. | LogME | Params | GFLOPs | Images/s |" in table[0]
    assert "full acc." in table[0]
    assert [next(m for m in RANKED_MODELS if f"| {m} |" in line) for line in table[1:]] == RANKED_MODELS
    swin = table[1]
    assert "| 1 |" in swin and "| 0.930 |" in swin and "| 0.880 |" in swin and "| 1.000 |" in swin
    assert "| 85.8M |" in swin and "| 4.5 |" in swin and "| 312 |" in swin and "| 0.951 |" in swin
    assert "failed: out of memory at batch size 64" in table[5]
    assert "failed: the repository is gated: accept its licence" in table[6]


@pytest.mark.parametrize(
    "rows",
    [
        ROWS,
        [row("only/one", 0.5, 0.1, 3.0)],
        [row("a/same", 0.5, 0.1, 3.0), row("b/same", 0.6, 0.1, 3.0), row("c/same", 0.6, 0.1, 3.0)],
        [failed("a/x", "no memory"), failed("b/y", "no weights")],
        [row("a/unmeasured", 0.5, 0.1, None)],
        [],
    ],
    ids=["several", "one", "equal-gflops", "none-finished", "no-gflops", "empty"],
)
def test_ranking_png_is_written_for_any_number_of_finished_rows(tmp_path, rows):
    png = write_ranking(rows, tmp_path, "digits")[2]
    data = png.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == [RANKING_CSV, RANKING_MD, RANKING_PNG]  # no temporaries


def test_backbone_type_is_the_rows_own():
    assert backbone_type({"family": "resnet", "type": "CNN"}) == "CNN"
    assert backbone_type({"family": "resnet", "type": "transformer"}) == "transformer"
    assert backbone_type({"family": "resnet"}) == "transformer"  # none measured: it only colours the report


def test_write_study_is_a_study_of_the_top_k_in_rank_order(tmp_path):
    path = write_study(ROWS, tmp_path, DATASET, top_k=3)
    assert path == tmp_path / STUDY_FILE
    text = path.read_text()
    assert text.startswith("# ") and "hf-tl sweep study=" in text and "hf-tl report " in text
    study = load_study(str(path))
    assert len(study.cells) == 2 * 3
    assert [b.model for b in study.spec.backbones] == RANKED_MODELS[:3]
    assert [b.type for b in study.spec.backbones] == ["transformer", "CNN", "transformer"]
    assert [s.key for s in study.spec.strategies] == ["last_block", "full"]
    (dataset,) = study.spec.datasets
    assert (dataset.key, dataset.dataset, dataset.recipe) == ("digits", "/data/digits", DATASET["recipe"])
    recipe = study.cells[0].recipe(study.spec.base)
    assert recipe["model"]["name"] == RANKED_MODELS[0] and recipe["data"]["max_train_samples"] == 500
    assert recipe["strategy"]["kind"] == "last_block"


def test_write_study_takes_every_finished_row_when_top_k_is_larger_and_keeps_local_paths(tmp_path):
    odd = tmp_path / "models" / "1e-3"  # OmegaConf reads a bare 1e-3 as a float
    odd.mkdir(parents=True)
    same_name = tmp_path / "other" / "resnet-50"
    same_name.mkdir(parents=True)
    rows = [
        row("microsoft/resnet-50", 0.7, 1.0, 4.1, family="resnet"),
        row(str(odd), 0.9, 1.0, 1.0, family="timm:resnet18"),
        row(str(same_name) + "/", 0.8, 1.0, 4.1, family="resnet"),
        failed("org/broken", "no weights"),
    ]
    study = load_study(str(write_study(rows, tmp_path, {**DATASET, "recipe": {}}, top_k=10)))
    backbones = study.spec.backbones
    assert [b.model for b in backbones] == [str(odd), str(same_name), "microsoft/resnet-50"]
    assert len({b.key for b in backbones}) == 3 and len(study.cells) == 6


def test_write_study_refuses_when_no_candidate_finished(tmp_path):
    with pytest.raises(HfTlError, match="no candidate finished"):
        write_study([failed("a/x", "no memory")], tmp_path, DATASET, top_k=3)
    with pytest.raises(RecipeError, match="top_k=0"):
        write_study(ROWS, tmp_path, DATASET, top_k=0)
    assert not (tmp_path / STUDY_FILE).exists()


def test_the_written_study_sweeps_as_written(tmp_path):
    path = write_study(ROWS, tmp_path, DATASET, top_k=2)
    out = tmp_path / "sweep"
    result = run_cli(sys.executable, "-m", "hf_tl", "sweep", f"study={path}", f"out={out}", "dry_run=true")
    assert result.returncode == 0, result.stderr[-3000:]
    commands = [line for line in result.stdout.splitlines() if "-m hf_tl.train recipe=" in line]
    cells = [c.id for c in load_study(str(path)).cells]
    assert len(commands) == len(cells) == 4
    for cell, line in zip(cells, commands, strict=True):
        assert f"cells/{cell}/{cell}.yaml" in line and f"output.dir={out}/cells/{cell}/run" in line
    assert "4 cell recipe(s) written" in result.stdout
