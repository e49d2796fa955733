"""Zoos: the shipped ones load, name real checkpoints, and match the studies; mistakes are answered clearly."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import hub_fixture_ids
from huggingface_hub.utils import HFValidationError, validate_repo_id

from hf_tl.config.resources import PACKAGE_DIR, asset_path
from hf_tl.errors import RecipeError
from hf_tl.selection.zoo import available_zoos, load_zoo
from hf_tl.studies.study import load_study

STUDY_ZOOS = ("malpure2021", "zhou2021")
# The families issue 17 asks imagenet_base to span, as hf_tl names them (config.model_type); timm's are `timm:ARCH`.
IMAGENET_BASE_FAMILIES = {"vit", "deit", "swin", "convnext", "resnet", "bit"}


def test_the_shipped_zoos_are_there():
    assert {"imagenet_base", *STUDY_ZOOS} <= set(available_zoos())


@pytest.mark.parametrize("name", available_zoos())
def test_every_shipped_zoo_loads_with_hub_ids_each_listed_once(name):
    zoo = load_zoo(name)
    assert zoo.name == name and zoo.description and zoo.candidates
    for candidate in zoo.candidates:
        assert candidate.family and candidate.note and "\n" not in candidate.note
        if Path(candidate.id).is_relative_to(PACKAGE_DIR / "assets"):  # a shipped backbone (the miniature zoo)
            assert Path(candidate.id).is_dir(), candidate.id
            continue
        try:
            validate_repo_id(candidate.id)
        except HFValidationError as e:
            pytest.fail(f"{name}: '{candidate.id}' is not a Hub id: {e}")
        assert candidate.id.count("/") == 1, candidate.id  # owner/name, not a bare name
        assert candidate.family and candidate.note and "\n" not in candidate.note
        assert candidate.family.startswith("timm:") == candidate.id.startswith("timm/"), candidate
    assert len(set(zoo.ids)) == len(zoo.ids)


@pytest.mark.parametrize("name", STUDY_ZOOS)
def test_a_study_zoo_is_exactly_the_study_backbones(name):
    backbones = load_study(name).spec.backbones
    assert load_zoo(name).ids == [b.model for b in backbones]


def test_imagenet_base_spans_the_families_the_issue_names():
    zoo = load_zoo("imagenet_base")
    families = {c.family for c in zoo.candidates}
    assert IMAGENET_BASE_FAMILIES <= families, IMAGENET_BASE_FAMILIES - families
    assert sum(f.startswith("timm:") for f in families) >= 3
    assert any(c.family == "deit" and "distilled" in c.id for c in zoo.candidates)
    assert 12 <= len(zoo.candidates) <= 20  # "about 15"


def test_zoo_checkpoints_held_as_fixtures_resolve_offline_with_their_family(real_size_hub):
    """Every zoo id whose published config tests/fixtures/hub holds resolves through transformers' own code with
    HF_HUB_OFFLINE set (conftest), and its `family` is what hf_tl's family_of names that config."""
    from transformers import AutoConfig

    held = set(hub_fixture_ids())
    checked = set()
    for name in available_zoos():
        for candidate in load_zoo(name).candidates:
            if candidate.id not in held:
                continue
            config = AutoConfig.from_pretrained(candidate.id, cache_dir=real_size_hub.home / "hub")
            family = f"timm:{config.architecture}" if config.model_type == "timm_wrapper" else config.model_type
            assert candidate.family == family, (name, candidate.id, family)
            checked.add(candidate.id)
    study_ids = {i for name in STUDY_ZOOS for i in load_zoo(name).ids}
    assert study_ids <= checked  # every backbone of the studies is held as a fixture
    assert len(checked & set(load_zoo("imagenet_base").ids)) >= 8


GOOD_ENTRY = "  - {id: org/model-a, family: vit, note: one line.}\n"
BAD_ZOOS = {
    "unknown top-level key": ("description: d\nmodel:\n" + GOOD_ENTRY, "unknown key 'model'. Did you mean 'models'?"),
    "unknown entry key": ("description: d\nmodels:\n  - {id: a/b, family: vit, notes: x}\n", "'models[0].notes'"),
    "duplicate id": ("description: d\nmodels:\n" + GOOD_ENTRY * 2, "'org/model-a' is listed twice"),
    "not a mapping": ("- org/model-a\n- org/model-b\n", "must be a mapping"),
    "entry not a mapping": ("description: d\nmodels:\n  - org/model-a\n", "models[0] must be a mapping"),
    "no models": ("description: d\nmodels: []\n", "'models' must be a non-empty list"),
    "missing note": ("description: d\nmodels:\n  - {id: a/b, family: vit}\n", "'models[0].note' is required"),
    "missing description": ("models:\n" + GOOD_ENTRY, "'description' is required"),
    "two-line note": (
        "description: d\nmodels:\n  - id: a/b\n    family: vit\n    note: |\n      a\n      b\n",
        "one line",
    ),
    "interpolation": ("description: ${oc.env:HOME}\nmodels:\n" + GOOD_ENTRY, "not allowed"),
}


@pytest.mark.parametrize("case", sorted(BAD_ZOOS))
def test_a_bad_zoo_file_is_refused_naming_the_file(case, tmp_path):
    text, expected = BAD_ZOOS[case]
    path = tmp_path / "my_zoo.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError) as e:
        load_zoo(str(path))
    assert expected in str(e.value)
    assert str(path) in str(e.value)


def test_a_zoo_file_by_path_loads_and_expands_assets(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(
        "description: my two\nmodels:\n"
        "  - {id: org/model-a, family: vit, note: from the Hub.}\n"
        "  - {id: '${hf_tl.asset:quickstart/backbone}', family: vit, note: shipped with hf_tl.}\n"
    )
    zoo = load_zoo(str(path))
    assert zoo.name == "mine" and zoo.description == "my two"
    assert zoo.ids == ["org/model-a", str(asset_path("quickstart/backbone"))]


def test_an_unknown_zoo_name_gets_did_you_mean_and_the_shipped_list():
    with pytest.raises(RecipeError) as e:
        load_zoo("imagenet_bse")
    message = str(e.value)
    assert "unknown zoo 'imagenet_bse'" in message and "Did you mean 'imagenet_base'?" in message
    assert "known zoos: " + ", ".join(available_zoos()) in message
