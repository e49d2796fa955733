"""The miniature zoo: four tiny backbones of four families, shipped pretrained on digits 0-4 for `hf-tl select`,
each a plain transformers checkpoint that hf_tl's strategies train at 16x16; `build_zoo` rebuilds it outside
the installed package."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForImageClassification

from hf_tl.config.quickstart import BACKBONE_DIR, MINIATURE_ZOO, ZOO_DIR, ZOO_FILE, build_zoo
from hf_tl.config.recipe import StrategySection
from hf_tl.config.resources import PACKAGE_DIR, asset_path
from hf_tl.errors import HfTlError, RecipeError
from hf_tl.models.families import layout
from hf_tl.selection.zoo import load_zoo
from hf_tl.strategies.freezing import apply_strategy

FAMILIES = ["vit", "resnet", "convnext", "swin"]
CHECKPOINT_FILES = ["config.json", "model.safetensors", "preprocessor_config.json"]
DIGITS_0_4 = {i: str(i) for i in range(5)}


def parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def loaded(candidate_id: str) -> torch.nn.Module:
    return AutoModelForImageClassification.from_pretrained(candidate_id)


def test_the_shipped_zoo_is_four_families_of_four_sizes_pretrained_on_digits_0_to_4():
    zoo = load_zoo("miniature")
    assert [c.family for c in zoo.candidates] == FAMILIES
    sizes = []
    for candidate in zoo.candidates:
        model = loaded(candidate.id)
        assert model.config.model_type == candidate.family
        assert model.config.id2label == DIGITS_0_4
        assert sorted(p.name for p in Path(candidate.id).iterdir()) == CHECKPOINT_FILES  # no training_args.bin
        sizes.append(parameters(model))
        assert f"{sizes[-1]:,} parameters" in candidate.note  # the note says the size the checkpoint has
    assert len(set(sizes)) == 4 and min(sizes) < 50_000 and max(sizes) > 250_000, sizes


@pytest.mark.parametrize("name", sorted(MINIATURE_ZOO))
def test_last_block_trains_the_last_unit_of_each_zoo_member_at_16x16(name):
    model = loaded(str(asset_path(f"miniature/{name}")))
    last_unit = layout(model).units[-1]
    model, summary = apply_strategy(model, StrategySection(kind="last_block"))
    assert set(last_unit) <= set(summary.trainable_modules) and summary.trainable < summary.total
    loss = model(torch.randn(4, 3, 16, 16), labels=torch.tensor([0, 1, 2, 3])).loss
    loss.backward()
    trained = {n for n, p in model.named_parameters() if p.grad is not None}
    assert trained == {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(n.startswith(f"{last_unit[0]}.") for n in trained)


def test_build_zoo_refuses_the_installed_package_and_writes_nothing_there():
    before = sorted(p for p in (PACKAGE_DIR / "assets").rglob("*"))
    with pytest.raises(RecipeError, match="lies inside the installed hf_tl package"):
        build_zoo(PACKAGE_DIR / "assets" / "rebuilt")
    assert sorted(p for p in (PACKAGE_DIR / "assets").rglob("*")) == before


def test_build_zoo_needs_the_quickstart_vit_it_lists(tmp_path):
    with pytest.raises(HfTlError, match=re.escape(f"{tmp_path / BACKBONE_DIR} holds none: run `hf-tl quickstart out=")):
        build_zoo(tmp_path)
    assert not (tmp_path / ZOO_DIR).exists() and not (tmp_path / ZOO_FILE).exists()


@pytest.mark.slow
def test_build_zoo_rebuilds_the_three_and_writes_a_zoo_whose_ids_load(tmp_path, capsys):
    out = tmp_path / "x"
    shutil.copytree(asset_path("quickstart/backbone"), out / BACKBONE_DIR)  # as `hf-tl quickstart out=x` leaves it
    accuracies = build_zoo(out, epochs=2)
    assert sorted(accuracies) == sorted(MINIATURE_ZOO) and all(0 <= a <= 1 for a in accuracies.values())
    zoo = load_zoo(str(out / ZOO_FILE))
    expected = [out / BACKBONE_DIR, *(out / ZOO_DIR / name for name in MINIATURE_ZOO)]
    assert zoo.ids == [str(p.resolve()) for p in expected]
    assert [c.family for c in zoo.candidates] == FAMILIES
    for candidate in zoo.candidates:
        model = loaded(candidate.id)
        assert model.config.model_type == candidate.family and model.config.id2label == DIGITS_0_4
        assert sorted(p.name for p in Path(candidate.id).iterdir()) == CHECKPOINT_FILES
    assert f"hf-tl select dataset={out}/digits-5-9 zoo={out / ZOO_FILE}" in capsys.readouterr().err
