"""data.augment replaces data.hflip; the label-smoothing and mixing keys are checked like every other."""

from __future__ import annotations

import pytest

from hf_tl.config.recipe import find_recipe, load_recipe
from hf_tl.errors import RecipeError

RENAMED = "data.hflip is replaced by data.augment: data.augment=flip (hflip true) or data.augment=none (hflip false)"


def error(name: str, overrides: list[str]) -> str:
    with pytest.raises(RecipeError) as e:
        load_recipe(name, overrides)
    return str(e.value)


@pytest.mark.parametrize("value", ["true", "false"])
def test_hflip_given_as_an_override_says_what_replaces_it(value):
    assert error("quickstart", [f"data.hflip={value}"]).startswith(RENAMED)


@pytest.mark.parametrize(("hflip", "augment"), [("true", "flip"), ("false", "none")])
def test_a_recipe_file_of_an_earlier_hf_tl_reads_as_it_ran(hflip, augment, tmp_path, capsys):
    """A run folder's recipe.yaml written before data.augment (data.hflip, no data.resize) is read as that run
    trained: the flip it had, resized straight to the input; two warning lines say so."""
    text = find_recipe("quickstart").read_text().replace("data:\n", f"data:\n  hflip: {hflip}\n", 1)
    (tmp_path / "old.yaml").write_text(text)
    recipe = load_recipe(str(tmp_path / "old.yaml"))
    assert (recipe.data.augment, recipe.data.resize) == (augment, "direct")
    warned = capsys.readouterr().err.splitlines()
    assert warned == [
        f"warning: {tmp_path / 'old.yaml'}: data.hflip (an earlier hf_tl's key) read as data.augment={augment}",
        f"warning: {tmp_path / 'old.yaml'}: no data.resize (an earlier hf_tl's recipe): read as data.resize=direct, "
        "how it resized",
    ]


def test_augment_defaults_to_flip_and_takes_its_choices():
    assert load_recipe("quickstart").data.augment == "flip"
    for choice in ("none", "flip", "crop_flip", "trivialaugment"):
        assert load_recipe("quickstart", [f"data.augment={choice}"]).data.augment == choice
    message = error("quickstart", ["data.augment=crop"])
    assert "'data.augment' got 'crop'" in message and "crop_flip" in message


@pytest.mark.parametrize(
    ("override", "shown"),
    [
        ("training.label_smoothing=1", "must be below 1"),
        ("training.label_smoothing=-0.1", "must be at least 0"),
        ("training.mixup=-1", "must be at least 0"),
        ("training.cutmix=-0.5", "must be at least 0"),
    ],
)
def test_smoothing_and_alphas_are_checked(override, shown):
    assert shown in error("quickstart", [override])
