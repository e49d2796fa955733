"""Study files: the shipped ones load and every cell is a valid recipe; mistakes are answered clearly."""

from __future__ import annotations

import csv
import json
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import run_cli

from hf_tl.cli.sweep import parse_args
from hf_tl.config.recipe import load_recipe
from hf_tl.config.resources import study_dir
from hf_tl.errors import RecipeError
from hf_tl.studies.study import load_study, select_cells
from hf_tl.studies.sweep import run_sweep, write_cell_recipe

# Malpure et al. 2021, Table 1, as the issue quotes it: (trainable parameters, validation accuracy %).
MALPURE_TABLE_1 = {
    "ResNet152V2": (15_497_994, 83.583),
    "EfficientNetV2-L": (7_020_960, 90.130),
    "VGG-19": (9_573_130, 92.784),
    "NFNet-F6": (12_012_043, 94.350),
    "DenseNet201": (6_982_400, 94.757),
    "ViT-L/32 (IN-21k)": (12_863_242, 95.467),
    "Swin-B 224": (12_868_650, 93.580),
    "CoaT-Lite Small": (3_308_298, 94.100),
    "CaiT-S24": (1_877_130, 96.000),
    "DeiT-B distilled": (7_488_276, 96.450),
}


def available_studies() -> list[str]:
    """The names of the studies shipped with hf_tl."""
    return sorted(p.stem for p in study_dir().glob("*.yaml"))


def test_the_three_studies_ship():
    assert {"malpure2021", "malpure2021_repo", "zhou2021"} <= set(available_studies())


@pytest.mark.parametrize("name", ["malpure2021", "malpure2021_repo", "zhou2021"])
def test_every_cell_of_a_shipped_study_is_a_valid_recipe(name, tmp_path):
    args, overrides = parse_args([f"study={name}", f"out={tmp_path}", "dry_run=true"])
    root = run_sweep(args, overrides)
    study = load_study(name)
    recipes = sorted((root / "cells").glob("*/*.yaml"))
    assert len(recipes) == len(study.cells)
    for path in recipes:
        assert path.read_text().startswith("# ") and "python -m hf_tl.train recipe=" in path.read_text()
        recipe = load_recipe(str(path))
        cell = next(c for c in study.cells if c.id == path.stem)
        assert recipe.model.name == cell.backbone.model and recipe.data.dataset == cell.dataset.dataset


def test_malpure_settings_and_figures_are_the_papers():
    study = load_study("malpure2021")
    recipe = load_recipe(str(_dry_run_recipe(study, "deit_b_distilled")))
    assert (recipe.model.head, recipe.strategy.kind, recipe.data.interpolation, recipe.data.augment) == (
        "mlp",
        "last_block",
        "bilinear",
        "flip",
    )
    assert (recipe.training.lr, recipe.training.batch_size, recipe.training.epochs) == (1e-4, 512, 20)
    assert recipe.training.scheduler == "reduce_lr_on_plateau"
    assert recipe.training.scheduler_kwargs == {"factor": 0.6, "min_lr": 1e-7}
    by_paper_name = {b.paper_name: b.key for b in study.spec.backbones}
    assert set(by_paper_name) == set(MALPURE_TABLE_1)
    for paper_name, (count, accuracy) in MALPURE_TABLE_1.items():
        (row,) = [r for r in study.figures if r["backbone"] == by_paper_name[paper_name]]
        assert (row["paper_trainable_parameters"], row["paper_val_accuracy"]) == (count, accuracy)
    types = {b.key: b.type for b in study.spec.backbones}
    assert sum(t == "CNN" for t in types.values()) == 5


def test_malpure_repo_settings():
    study = load_study("malpure2021_repo")
    assert [r["paper_val_accuracy"] for r in study.figures] == [91.44, 96.44, 96.78]
    recipe = load_recipe(str(_dry_run_recipe(study, "cait_s24")))
    assert (recipe.model.head, recipe.data.augment, recipe.data.image_mean, recipe.data.image_std) == (
        "linear",
        "none",
        [0.5] * 3,
        [0.5] * 3,
    )
    assert (recipe.training.lr, recipe.training.batch_size, recipe.training.epochs) == (1e-4, 32, 10)
    assert (recipe.training.optimizer, recipe.training.weight_decay) == ("adamw_torch", 0.0)  # Adam


def test_zhou_crosses_five_in21k_backbones_with_linear_and_full():
    study = load_study("zhou2021")
    assert len(study.spec.backbones) == 5 and study.spec.layout == "zhou"
    kinds = {s.key: s.recipe["strategy"]["kind"] for s in study.spec.strategies}
    assert kinds == {"linear": "linear_probe", "full": "full"}
    assert {d.task for d in study.spec.datasets} == {"fine-grained", "scene", "open-domain"}
    assert len(study.cells) == 5 * len(study.spec.datasets) * 2


def _dry_run_recipe(study, backbone: str) -> Path:
    (cell,) = [c for c in study.cells if c.backbone.key == backbone]
    return write_cell_recipe(Path(tempfile.mkdtemp()), study, cell)


def test_only_selects_by_part_and_glob():
    cells = load_study("zhou2021").cells
    assert {c.strategy.key for c in select_cells(cells, ["strategy=linear"])} == {"linear"}
    chosen = select_cells(cells, ["vit_*", "cub200"])
    assert {c.backbone.key for c in chosen} == {"vit_b16", "vit_l16"} and {c.dataset.key for c in chosen} == {"cub200"}
    assert len(select_cells(cells, ["backbone=swin_b", "backbone=vit_b16"])) == 2 * 2 * len(
        load_study("zhou2021").spec.datasets
    )


def test_only_with_an_unknown_name_lists_the_valid_ones():
    with pytest.raises(RecipeError) as error:
        select_cells(load_study("malpure2021").cells, ["deit_b_distiled"])
    message = str(error.value)
    assert "'deit_b_distiled' matches no" in message and "Did you mean 'deit_b_distilled'" in message
    assert "backbones: cait_s24, coat_lite_small" in message


def write_study(tmp_path, text: str, figures: str | None = None):
    path = tmp_path / "study.yaml"
    path.write_text(text)
    if figures is not None:
        (tmp_path / "figures.csv").write_text(figures)
    return path


MINIMAL = """
title: t
paper: p
backbones: [{key: a, model: m, type: CNN}]
datasets: [{key: d, dataset: x}]
strategies: [{key: s}]
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (MINIMAL.replace("type: CNN", "type: [1]"), "key 'type' in an entry of backbones got"),
        (MINIMAL.replace("type: CNN", "type: cnn"), "'backbones[0].type' got 'cnn', which is not one of: CNN"),
        (
            MINIMAL.replace("key: a,", "key: a, modle: m,"),
            "key 'modle' in an entry of backbones. Did you mean 'model'?",
        ),
        (MINIMAL.replace("paper: p", "paper: p\nlayout: grid"), "'layout' got 'grid'"),
        (MINIMAL.replace("datasets: [{key: d, dataset: x}]", "datasets: []"), "lists no datasets"),
        (MINIMAL.replace("key: s", "key: a__b"), "no '__'"),
        (MINIMAL.replace("[{key: s}]", "[{key: s}, {key: s}]"), "strategies key 's' appears twice"),
        (MINIMAL.replace("title: t\n", ""), "key 'title' is required"),
    ],
)
def test_a_bad_study_is_refused_with_the_key_and_what_is_allowed(tmp_path, text, expected):
    with pytest.raises(RecipeError, match="study") as error:
        load_study(str(write_study(tmp_path, text)))
    assert expected in str(error.value)


def test_figures_must_name_the_studys_cells(tmp_path):
    header = "backbone,dataset,strategy,paper_val_accuracy,paper_trainable_parameters,note\n"
    path = write_study(tmp_path, MINIMAL + "figures: figures.csv\n", header + "b,d,s,90.1,,\n")
    with pytest.raises(RecipeError, match="backbone 'b' is not in the study"):
        load_study(str(path))
    (tmp_path / "figures.csv").write_text(header + "a,d,s,ninety,,\n")
    with pytest.raises(RecipeError, match="paper_val_accuracy 'ninety' is not a number"):
        load_study(str(path))


def test_the_figures_files_have_the_same_columns():
    headers = {p.name: next(csv.reader(p.open())) for p in study_dir().glob("*.csv")}
    assert len(set(map(tuple, headers.values()))) == 1, headers


def test_cli_names_unknown_keys_and_studies():
    unknown_key = run_cli(sys.executable, "-m", "hf_tl.sweep", "study=malpure2021", "olny=vgg19")
    assert unknown_key.returncode == 2 and "Did you mean 'only'" in unknown_key.stderr
    unknown_study = run_cli(sys.executable, "-m", "hf_tl.sweep", "study=malpure")
    assert unknown_study.returncode == 2 and "malpure2021" in unknown_study.stderr
    assert "Traceback" not in unknown_key.stderr + unknown_study.stderr


def test_overrides_get_their_own_sweep_folder_and_a_folder_keeps_its_own(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    plain = run_sweep(*parse_args(["study=malpure2021_repo", "dry_run=true"]))
    shorter = run_sweep(*parse_args(["study=malpure2021_repo", "dry_run=true", "training.epochs=1"]))
    assert plain.name == "malpure2021_repo" and shorter.name.startswith("malpure2021_repo-") and plain != shorter
    assert "epochs: 10" in next((plain / "cells").glob("*/*.yaml")).read_text()
    # A folder where no cell produced anything holds nothing to protect: it takes corrected overrides (a folder
    # with results refuses them: test_sweep.py::test_a_sweep_folder_with_results_still_refuses_other_overrides).
    run_sweep(*parse_args(["study=malpure2021_repo", f"out={shorter}", "dry_run=true", "training.epochs=2"]))
    assert json.loads((shorter / "sweep.json").read_text())["overrides"] == ["training.epochs=2"]
    with pytest.raises(RecipeError, match="output.dir is the sweep's"):
        parse_args(["study=malpure2021_repo", "output.dir=x"])


def test_an_unknown_study_lists_the_known_studies():
    with pytest.raises(RecipeError) as info:
        load_study("malpure2012")
    message = str(info.value)
    assert message.startswith("unknown study 'malpure2012'. Did you mean 'malpure2021'?")
    assert "\n  known studies: malpure2021, malpure2021_repo, zhou2021\n" in message
