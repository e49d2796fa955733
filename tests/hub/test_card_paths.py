"""A card that would be pushed names local data and checkpoints by their folders' names, never by a path of the
machine that trained; a Hub dataset's pinned revision is named beside it."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard

from hf_tl.config.recipe import load_recipe
from hf_tl.config.resources import PACKAGE_DIR
from hf_tl.hub.card import recorded_results, render_card
from hf_tl.training.run import run


@pytest.fixture(scope="module")
def shipped_run(tmp_path_factory) -> Path:
    """The quickstart on the digits folder and backbone shipped in the package, both named by absolute paths."""
    run_dir = tmp_path_factory.mktemp("card-paths") / "run"
    recipe = load_recipe("quickstart", ["training.max_steps=2", f"output.dir={run_dir}"])
    assert Path(recipe.data.dataset).is_absolute() and Path(recipe.model.name).is_absolute()
    return run(recipe)


def test_the_card_of_a_run_on_a_local_folder_holds_no_path(shipped_run):
    text = (shipped_run / "README.md").read_text()
    recipe = yaml.safe_load((shipped_run / "recipe.yaml").read_text())
    for path in (recipe["data"]["dataset"], recipe["model"]["name"], str(PACKAGE_DIR), str(shipped_run)):
        assert path not in text
    assert str(Path.home()) not in text and tempfile.gettempdir() not in text
    card = ModelCard(text)
    assert card.data.datasets is None  # not on the Hub
    assert {(r.dataset_type, r.dataset_name) for r in card.data.eval_results} == {("digits-5-9", "digits-5-9")}
    assert {r["local"] for r in recorded_results(card)} == {True}
    assert "fine-tuned with hf_tl on the local dataset digits-5-9 (a local folder) (5 classes" in card.text
    assert "The local checkpoint backbone (a local folder), fine-tuned" in card.text
    assert "| `data.resize` | auto: direct |" in card.text  # what data.resize=auto chose for the 8x8 digits
    assert "| `data.augment` | flip |" in card.text


def test_a_hub_datasets_revision_is_on_the_card(shipped_run, tmp_path):
    """The same run folder, as if its data had come from the Hub at a pinned revision."""
    folder = tmp_path / "run"
    folder.mkdir()
    for name in ("metrics.json", "recipe.yaml", "log_history.json"):
        (folder / name).write_text((shipped_run / name).read_text())
    metrics = json.loads((folder / "metrics.json").read_text())
    metrics["dataset"] = "alice/digits"
    (folder / "metrics.json").write_text(json.dumps(metrics))
    recipe = yaml.safe_load((folder / "recipe.yaml").read_text())
    recipe["data"].update(dataset="alice/digits", revision="0123abc")
    (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe))

    card = ModelCard(str(render_card(folder)))
    assert card.data.datasets == ["alice/digits"]
    assert {(r.dataset_type, r.dataset_revision) for r in card.data.eval_results} == {("alice/digits", "0123abc")}
    assert {r["local"] for r in recorded_results(card)} == {False}
    assert "[alice/digits](https://huggingface.co/datasets/alice/digits) (revision 0123abc)" in card.text
