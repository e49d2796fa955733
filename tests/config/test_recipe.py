"""Recipes: the shipped files, typed overrides, every error path, the recipe CLIs, round-trips and assets."""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path

import pytest
from conftest import run_cli
from omegaconf import OmegaConf

import hf_tl
from hf_tl.config.catalog import copy_recipe, describe
from hf_tl.config.recipe import (
    SECTIONS,
    Recipe,
    available_recipes,
    find_recipe,
    load_recipe,
    parse_args,
    recipe_from_argv,
    to_yaml,
)
from hf_tl.config.resources import asset_path
from hf_tl.errors import RecipeError

REQUIRED_RECIPES = {
    "quickstart",
    "deit_lastblock",
    "vit_b16_full",
    "vit_b16_linear",
    "swin_b_lastblock",
    "convnext_b_lora",
    "resnet50_lastblock",
    "cait_s24_lastblock",
    "densenet201_lastblock",
    "vit_b16_lora",
    "swin_b_linear",
    "resnet50_full",
}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
MINIMAL = "model:\n  name: org/model\ndata:\n  dataset: ./images\n"


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _error(name: str, overrides: list[str] = ()) -> str:
    """The message of the RecipeError that loading raises; every RecipeError exits with status 2."""
    with pytest.raises(RecipeError) as info:
        load_recipe(name, list(overrides))
    assert info.value.exit_code == 2
    return str(info.value)


def _comment_block(path: Path) -> list[str]:
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    return lines


# --- the shipped recipes -------------------------------------------------------------------------


def test_available_recipes_include_the_documented_ones():
    names = available_recipes()
    assert REQUIRED_RECIPES <= set(names)
    assert names == sorted(names)


@pytest.mark.parametrize("name", available_recipes())
def test_every_shipped_recipe_loads_typed(name):
    recipe = load_recipe(name)
    assert isinstance(recipe, Recipe)
    assert recipe.name == name
    assert recipe.model.name and recipe.data.dataset
    assert isinstance(recipe.training.lr, float) and recipe.training.lr > 0
    assert isinstance(recipe.training.batch_size, int)
    assert recipe.strategy.kind in ("full", "linear_probe", "last_block", "lora")


@pytest.mark.parametrize("name", available_recipes())
def test_recipe_begins_with_its_launch_commands_and_they_work(name):
    path = find_recipe(name)
    assert path.read_text().startswith("#"), f"{path} must begin with a comment block"
    block = _comment_block(path)
    command = f"accelerate launch -m hf_tl.train recipe={name}"
    launches = [line for line in block if line.startswith(command)]
    assert command in launches, f"{path}: the comment block lacks the plain `{command}`"
    with_overrides = [line[len(command) :].split() for line in launches if line != command]
    assert with_overrides, f"{path}: the comment block lacks a launch line with a key=value override"
    for overrides in with_overrides:
        assert overrides and all(re.fullmatch(r"[a-z_]+\.[a-z_]+=\S+", o) for o in overrides), overrides
        # The documented overrides must be valid and take effect.
        recipe = recipe_from_argv([f"recipe={name}", *overrides])
        for override in overrides:
            key = override.split("=", 1)[0]
            section, field_name = key.split(".")
            got = getattr(getattr(recipe, section), field_name)
            assert got == OmegaConf.select(OmegaConf.from_dotlist([override]), key), (override, got)


@pytest.mark.parametrize("name", sorted(set(available_recipes()) - {"quickstart"}))
def test_non_quickstart_recipes_name_a_hub_model(name):
    recipe = load_recipe(name)
    assert HUB_ID.fullmatch(recipe.model.name), recipe.model.name
    assert not Path(recipe.model.name).exists()


def test_describe_is_the_first_comment_line():
    assert describe("quickstart").startswith("Quickstart: fine-tune the last block of a tiny ViT")
    for name in available_recipes():
        assert describe(name) == _comment_block(find_recipe(name))[0]


# --- typed dotted overrides ----------------------------------------------------------------------


def test_overrides_are_typed():
    recipe = recipe_from_argv(
        [
            "recipe=quickstart",
            "training.lr=3e-4",
            "training.batch_size=8",
            "data.augment=none",
            "strategy.kind=lora",
            "strategy.target_modules=[q_proj,v_proj]",
            "training.scheduler=reduce_lr_on_plateau",  # the scheduler that takes a factor
            "training.scheduler_kwargs={factor: 0.6}",
        ]
    )
    assert recipe.training.lr == 0.0003 and type(recipe.training.lr) is float
    assert recipe.training.batch_size == 8 and type(recipe.training.batch_size) is int
    assert recipe.data.augment == "none"
    assert recipe.strategy.kind == "lora"
    assert recipe.strategy.target_modules == ["q_proj", "v_proj"] and type(recipe.strategy.target_modules) is list
    assert recipe.training.scheduler_kwargs == {"factor": 0.6} and type(recipe.training.scheduler_kwargs) is dict
    # Keys not overridden keep the recipe's values.
    assert recipe.training.epochs == 20.0 and recipe.data.val_fraction == 0.2 and recipe.training.seed == 0


def test_int_given_for_float_is_converted():
    recipe = load_recipe("quickstart", ["training.epochs=2", "training.lr=1"])
    assert recipe.training.epochs == 2.0 and type(recipe.training.epochs) is float
    assert recipe.training.lr == 1.0 and type(recipe.training.lr) is float


def test_optional_key_accepts_null():
    recipe = load_recipe("quickstart", ["training.eval_batch_size=16", "data.eval_split=null"])
    assert recipe.training.eval_batch_size == 16
    assert recipe.data.eval_split is None


def test_parse_args_splits_recipe_from_overrides():
    assert parse_args(["training.lr=1", "recipe=quickstart", "data.augment=none"]) == (
        "quickstart",
        ["training.lr=1", "data.augment=none"],
    )
    assert parse_args(["+recipe=deit_lastblock"]) == ("deit_lastblock", [])


def test_hub_push_with_repo_id_is_accepted():
    recipe = load_recipe("quickstart", ["hub.push=true", "hub.repo_id=me/digits"])
    assert recipe.hub.push is True and recipe.hub.repo_id == "me/digits"


# --- recipe=path/to/file.yaml ----------------------------------------------------------------------


def test_recipe_from_a_yaml_path(tmp_path):
    path = _write(tmp_path / "mine" / "my_run.yaml", MINIMAL + "training:\n  lr: 1.0e-2\n  epochs: 2\n")
    recipe = recipe_from_argv([f"recipe={path}", "training.batch_size=4"])
    assert recipe.name == "my_run"
    assert recipe.model.name == "org/model"
    assert recipe.data.dataset == "./images"
    assert recipe.training.lr == 0.01 and recipe.training.epochs == 2.0 and recipe.training.batch_size == 4
    # Everything unset keeps the dataclass defaults.
    assert recipe.strategy == Recipe().strategy
    assert recipe.hub == Recipe().hub


def test_recipe_from_a_path_relative_to_cwd(tmp_path, monkeypatch):
    _write(tmp_path / "sub" / "rel.yml", MINIMAL + "strategy:\n  kind: linear_probe\n")
    monkeypatch.chdir(tmp_path)
    recipe = recipe_from_argv(["recipe=sub/rel.yml"])
    assert recipe.name == "rel"
    assert recipe.strategy.kind == "linear_probe"


def test_missing_yaml_path_is_a_recipe_error(tmp_path):
    message = _error(str(tmp_path / "absent.yaml"))
    assert f"recipe file '{tmp_path / 'absent.yaml'}' does not exist" in message


# --- error paths -------------------------------------------------------------------------------------


def test_unknown_recipe_name_lists_known_and_suggests():
    message = _error("quikstart")
    assert "unknown recipe 'quikstart'" in message
    assert "Did you mean 'quickstart'?" in message
    for name in available_recipes():
        assert name in message
    assert "hf-tl recipes list" in message


def test_unknown_key_suggests_and_lists_valid_keys():
    message = _error("quickstart", ["training.lrr=1"])
    assert "unknown recipe key 'training.lrr'" in message
    assert "Did you mean 'training.lr'?" in message
    assert "valid keys in 'training'" in message
    for f in dataclasses.fields(SECTIONS["training"]):
        assert f"training.{f.name}" in message


def test_unknown_key_in_a_yaml_file(tmp_path):
    path = _write(tmp_path / "typo.yaml", "model:\n  name: org/model\n  nme: x\ndata:\n  dataset: ./images\n")
    message = _error(str(path))
    assert "unknown recipe key 'model.nme'" in message
    assert "Did you mean 'model.name'?" in message


def test_unknown_section_suggests_and_lists_sections():
    message = _error("quickstart", ["trainig.lr=1"])
    assert "unknown recipe key 'trainig'" in message
    assert "Did you mean 'training'?" in message
    assert "valid keys: model, strategy, data, training, hub, output" in message


@pytest.mark.parametrize(
    "override, key, shown, expected",
    [
        ("training.lr=fast", "training.lr", "'fast'", "float"),
        ("training.batch_size=1.5", "training.batch_size", "1.5", "int"),
        ("training.compile=maybe", "training.compile", "'maybe'", "bool"),
        ("training.eval_batch_size=many", "training.eval_batch_size", "'many'", "int (or null)"),
    ],
)
def test_wrong_type_names_key_value_and_type(override, key, shown, expected):
    message = _error("quickstart", [override])
    assert message == f"recipe key '{key}' got {shown}, which is not a valid {expected}."


@pytest.mark.parametrize(
    "override, key, value, expected",
    [
        ("training.scheduler_kwargs=3", "training.scheduler_kwargs", "3", "dict"),
        ("strategy.target_modules=3", "strategy.target_modules", "3", "list"),
    ],
)
def test_wrong_type_for_a_container_key_names_the_whole_type(override, key, value, expected):
    message = _error("quickstart", [override])
    assert f"recipe key '{key}' got {value}" in message
    assert expected in message
    assert message.count("[") == message.count("]"), f"garbled type name in: {message}"


@pytest.mark.parametrize("section", ["model", "training"])
def test_section_given_a_scalar_names_the_section(section, tmp_path):
    # On the command line ...
    message = _error("quickstart", [f"{section}=3"])
    assert f"'{section}'" in message and "3" in message, message
    assert "None" not in message, message
    # ... and in a recipe file.
    path = _write(tmp_path / "scalar.yaml", f"{section}: 3\n")
    message = _error(str(path))
    assert f"'{section}'" in message and "3" in message, message
    assert "None" not in message, message


def test_value_outside_choices_lists_them_and_suggests():
    message = _error("quickstart", ["strategy.kind=lastblock"])
    assert message == (
        "recipe key 'strategy.kind' got 'lastblock', which is not one of: "
        "full, linear_probe, last_block, last_k, lora, bitfit, custom. Did you mean 'last_block'?"
    )


def test_precision_outside_choices_lists_them():
    message = _error("quickstart", ["training.precision=fp8"])
    assert message.startswith("recipe key 'training.precision' got 'fp8', which is not one of: fp32, bf16, fp16.")


@pytest.mark.parametrize(
    "override, expected",
    [
        ("training.batch_size=0", "recipe key 'training.batch_size' got 0; it must be at least 1."),
        ("training.lr=-0.1", "recipe key 'training.lr' got -0.1; it must be at least 0.0."),
        ("strategy.r=0", "recipe key 'strategy.r' got 0; it must be at least 1."),
        (
            "training.layer_decay=0",
            "recipe key 'training.layer_decay' got 0.0; it must be above 0 and at most 1 (0.65 to 0.75 is usual), "
            "or null for none.",
        ),
        (
            "training.layer_decay=1.5",
            "recipe key 'training.layer_decay' got 1.5; it must be above 0 and at most 1 (0.65 to 0.75 is usual), "
            "or null for none.",
        ),
        ("training.head_lr=-1e-3", "recipe key 'training.head_lr' got -0.001; it must be at least 0.0."),
        (
            "data.val_fraction=1.5",
            "recipe key 'data.val_fraction' got 1.5; it must lie strictly between 0 and 1.",
        ),
        (
            "data.val_fraction=0",
            "recipe key 'data.val_fraction' got 0.0; it must lie strictly between 0 and 1.",
        ),
        (
            "data.image_mean=[0.5,0.5]",
            "recipe key 'data.image_mean' got [0.5, 0.5]; it must be three numbers, one per RGB channel.",
        ),
        (
            "data.image_std=[0.5,0,0.5]",
            "recipe key 'data.image_std' got [0.5, 0.0, 0.5]; it must be three positive numbers, one per RGB channel.",
        ),
    ],
)
def test_value_below_minimum(override, expected):
    assert _error("quickstart", [override]) == expected


def test_layer_decay_of_one_and_head_lr_are_accepted():
    training = load_recipe("quickstart", ["training.layer_decay=1", "training.head_lr=1e-3"]).training
    assert (training.layer_decay, training.head_lr) == (1.0, 1e-3)


@pytest.mark.parametrize("body", ["data:\n  dataset: ./images\n", "", "model:\n  head: mlp\ndata:\n  dataset: x\n"])
def test_required_key_missing(tmp_path, body):
    message = _error(str(_write(tmp_path / "nomodel.yaml", body)))
    assert "recipe key 'model.name' is required" in message
    assert "Hub id or local directory" in message
    assert "model.name=..." in message


def test_required_data_key_missing_can_be_given_on_the_command_line(tmp_path):
    path = _write(tmp_path / "nodata.yaml", "model:\n  name: org/model\n")
    assert "recipe key 'data.dataset' is required" in _error(str(path))
    assert load_recipe(str(path), ["data.dataset=./elsewhere"]).data.dataset == "./elsewhere"


def test_argument_without_equals():
    with pytest.raises(RecipeError) as info:
        parse_args(["recipe=quickstart", "training.lr"])
    assert info.value.exit_code == 2
    assert "argument 'training.lr' is not of the form key=value" in str(info.value)


def test_no_recipe_given_lists_known_recipes():
    with pytest.raises(RecipeError) as info:
        recipe_from_argv(["training.lr=1"])
    assert info.value.exit_code == 2
    message = str(info.value)
    assert "no recipe given: start with recipe=NAME" in message
    for name in available_recipes():
        assert name in message


def test_hub_push_without_repo_id():
    assert _error("quickstart", ["hub.push=true"]) == "hub.push=true needs hub.repo_id=user/name."


@pytest.mark.parametrize(
    "body, key, value",
    [
        ("model:\n  name: ${oc.env:HF_TOKEN}\ndata:\n  dataset: x\n", "model.name", "${oc.env:HF_TOKEN}"),
        ("model:\n  name: a/b\ndata:\n  dataset: ${model.name}\n", "data.dataset", "${model.name}"),
        (
            "model:\n  name: a/b\ndata:\n  dataset: x\ntraining:\n  scheduler_kwargs:\n    t: ${oc.env:HF_TOKEN}\n",
            "training.scheduler_kwargs.t",
            "${oc.env:HF_TOKEN}",
        ),
    ],
)
def test_interpolation_in_a_recipe_file_is_refused(tmp_path, monkeypatch, body, key, value):
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    message = _error(str(_write(tmp_path / "interp.yaml", body)))
    assert f"recipe key '{key}': interpolation '{value}' is not allowed" in message
    assert "hf_secret" not in message


@pytest.mark.parametrize("token", ["hf_secret", None])
def test_interpolation_inside_a_list_in_a_recipe_file_is_refused(tmp_path, monkeypatch, token):
    if token:
        monkeypatch.setenv("HF_TOKEN", token)
    else:
        monkeypatch.delenv("HF_TOKEN", raising=False)
    body = "model:\n  name: a/b\ndata:\n  dataset: x\nstrategy:\n  target_modules: [q_proj, '${oc.env:HF_TOKEN}']\n"
    message = _error(str(_write(tmp_path / "listinterp.yaml", body)))
    assert "strategy.target_modules" in message
    assert "interpolation '${oc.env:HF_TOKEN}' is not allowed" in message


@pytest.mark.parametrize("override", ["model.name=${oc.env:HF_TOKEN}", "training.scheduler_kwargs={a: ${x}}"])
def test_interpolation_on_the_command_line_is_refused(override):
    message = _error("quickstart", [override])
    assert message == f"override '{override}': interpolations are not allowed on the command line."


def test_yaml_that_is_not_a_mapping(tmp_path):
    path = _write(tmp_path / "list.yaml", "- model\n- data\n")
    message = _error(str(path))
    assert message == f"recipe '{path}' must be a mapping of sections (model, strategy, data, ...)."


def test_invalid_yaml(tmp_path):
    path = _write(tmp_path / "broken.yaml", "model: [\n  name: x\n")
    message = _error(str(path))
    assert message.startswith(f"recipe '{path}' is not valid YAML:")
    assert "line" in message  # the parser's location of the problem


def test_asset_outside_the_assets_folder_is_refused(tmp_path):
    for relative in ("../recipe.py", "quickstart/no-such-thing"):
        path = _write(tmp_path / "asset.yaml", f"model:\n  name: ${{hf_tl.asset:{relative}}}\ndata:\n  dataset: x\n")
        assert f"asset '{relative}' does not exist under" in _error(str(path))


# --- the command lines ---------------------------------------------------------------------------------


@pytest.mark.parametrize("module", ["hf_tl.train", "hf_tl.cli.params"])
def test_cli_reports_a_bad_key_without_a_traceback(module, tmp_path):
    result = run_cli(sys.executable, "-m", module, "recipe=quickstart", "training.lrr=1", cwd=tmp_path, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "error: unknown recipe key 'training.lrr'. Did you mean 'training.lr'?" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()


def test_recipes_cli_list(tmp_path):
    result = run_cli(sys.executable, "-m", "hf_tl.recipes", "list", cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == len(available_recipes())
    for name, line in zip(available_recipes(), lines, strict=True):
        assert line.split()[0] == name
        assert line.endswith(describe(name)) and describe(name)


def test_recipes_cli_show(tmp_path):
    result = run_cli(sys.executable, "-m", "hf_tl.recipes", "show", "quickstart", cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == find_recipe("quickstart").read_text()


def test_recipes_cli_show_unknown(tmp_path):
    result = run_cli(sys.executable, "-m", "hf_tl.recipes", "show", "nosuch", cwd=tmp_path, timeout=60)
    assert result.returncode == 2
    assert "error: unknown recipe 'nosuch'" in result.stderr
    assert "Traceback" not in result.stderr


def test_recipes_cli_copy_then_load(tmp_path):
    dest = tmp_path / "my-recipes"
    dest.mkdir()
    result = run_cli(sys.executable, "-m", "hf_tl.recipes", "copy", "quickstart", str(dest), cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    copied = dest / "quickstart.yaml"
    assert copied.read_text() == find_recipe("quickstart").read_text()
    assert f"recipe={copied}" in result.stdout
    assert load_recipe(str(copied)) == load_recipe("quickstart")


def test_recipes_cli_copy_never_overwrites(tmp_path):
    existing = _write(tmp_path / "mine.yaml", "# my own edits\n")
    result = run_cli(
        sys.executable, "-m", "hf_tl.recipes", "copy", "quickstart", str(existing), cwd=tmp_path, timeout=60
    )
    assert result.returncode == 1
    assert f"error: {existing} already exists" in result.stderr
    assert "Traceback" not in result.stderr
    assert existing.read_text() == "# my own edits\n"


def test_copy_recipe_to_a_new_file_name(tmp_path):
    target = copy_recipe("deit_lastblock", str(tmp_path / "deit_cifar100.yaml"))
    assert target == tmp_path / "deit_cifar100.yaml"
    loaded = load_recipe(str(target))
    assert loaded.name == "deit_cifar100"
    assert dataclasses.replace(loaded, name="deit_lastblock") == load_recipe("deit_lastblock")


# --- round-trip and assets -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", available_recipes())
def test_resolved_recipe_round_trips_through_yaml(name, tmp_path):
    recipe = load_recipe(name)
    path = _write(tmp_path / "resolved.yaml", to_yaml(recipe))
    again = load_recipe(str(path))
    assert again.name == "resolved"
    assert dataclasses.replace(again, name=recipe.name) == recipe


def test_overridden_recipe_round_trips_through_yaml(tmp_path):
    recipe = load_recipe(
        "convnext_b_lora",
        [
            "strategy.target_modules=[q_proj,v_proj]",
            "training.scheduler=reduce_lr_on_plateau",
            "training.scheduler_kwargs={factor: 0.6}",
            "data.augment=none",
        ],
    )
    again = load_recipe(str(_write(tmp_path / "r.yaml", to_yaml(recipe))))
    assert dataclasses.replace(again, name=recipe.name) == recipe


def test_quickstart_assets_resolve_inside_the_package():
    raw = find_recipe("quickstart").read_text()
    assert "name: ${hf_tl.asset:quickstart/backbone}" in raw
    assert "dataset: ${hf_tl.asset:quickstart/digits-5-9}" in raw
    recipe = load_recipe("quickstart")
    assets = (Path(hf_tl.__file__).resolve().parent / "assets").resolve()
    for value in (recipe.model.name, recipe.data.dataset):
        path = Path(value)
        assert path.is_absolute() and path.is_dir(), value
        assert assets in path.parents, value
    assert Path(recipe.model.name) == asset_path("quickstart/backbone")
    assert (Path(recipe.model.name) / "config.json").is_file()
    assert list(Path(recipe.data.dataset).rglob("*.parquet"))


# --- the Trainer's reach: training.report_to, training.args, training.optimizer, training.resume=PATH ----------


def _checked_by_transformers(name: str, overrides: list[str]):
    """The recipe, with what is checked where a run starts (`hf-tl train`, `run`): the keys only transformers can
    check, and a checkpoint given by path."""
    from hf_tl.config.recipe import check_resume
    from hf_tl.training.arguments import check_trainer_keys

    recipe = load_recipe(name, overrides)
    check_resume(recipe.training)
    check_trainer_keys(recipe)
    return recipe


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "training.report_to=[tensorbord]",
            "recipe key 'training.report_to' has 'tensorbord', which is not one of transformers' trackers. "
            "Did you mean 'tensorboard'?",
        ),
        (
            "training.args.max_grad_nrom=0.5",
            "recipe key 'training.args.max_grad_nrom': TrainingArguments has no field 'max_grad_nrom'. "
            "Did you mean 'max_grad_norm'?",
        ),
        ("training.args.max_grad_norm=abc", "recipe key 'training.args.max_grad_norm' got 'abc', which is not a valid"),
        (
            "training.args.learning_rate=0.1",
            "recipe key 'training.args.learning_rate' is refused: hf_tl sets it from training.lr; set training.lr "
            "instead.",
        ),
        (
            "training.args.remove_unused_columns=true",
            "recipe key 'training.args.remove_unused_columns' is refused: hf_tl owns it (the Trainer would drop the "
            "image column).",
        ),
        ("training.args.eval_strategy=bogus", "with training.args={'eval_strategy': 'bogus'}: bogus is not a valid"),
        (
            "training.optimizer=rmsprp",
            "recipe key 'training.optimizer' got 'rmsprp', which is not one of transformers' optimizers. "
            "Did you mean 'rmsprop'?",
        ),
        ("training.resume=nevr", "recipe key 'training.resume' got 'nevr', which is no folder. Did you mean 'never'?"),
    ],
)
def test_trainer_keys_are_checked_against_transformers_own_lists(override, message):
    with pytest.raises(RecipeError) as error:
        _checked_by_transformers("quickstart", ["data.dataset=x", override])
    assert message in str(error.value)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (  # unquoted, `no` reaches the check as False
            ["training.args.eval_strategy=no"],
            "recipe key 'training.args.eval_strategy' got 'no', but hf_tl keeps the checkpoint with the best "
            "validation accuracy as model/, so it evaluates: leave it unset (epoch) or give "
            "training.args.eval_strategy=steps",
        ),
        (
            ["training.args.save_strategy=no"],
            "recipe key 'training.args.save_strategy' got 'no', but hf_tl keeps the best checkpoint and resumes",
        ),
        (
            ["training.args.save_strategy=best"],
            "recipe key 'training.args.save_strategy' got 'best', but hf_tl keeps the best checkpoint and resumes",
        ),
        (
            ["training.args.eval_steps=5"],
            "recipe key 'training.args.eval_steps' got 5, which transformers ignores with eval_strategy 'epoch': "
            "add training.args.eval_strategy=steps.",
        ),
        (
            ["training.args.save_steps=5"],
            "recipe key 'training.args.save_steps' got 5, which transformers ignores with save_strategy 'epoch': "
            "add training.args.eval_strategy=steps",
        ),
        (
            ["training.args.metric_for_best_model=loss"],
            "recipe key 'training.args.metric_for_best_model' is refused: hf_tl owns it (model/ is the checkpoint "
            "with the best validation accuracy).",
        ),
        (["training.args.load_best_model_at_end=false"], "'training.args.load_best_model_at_end' is refused"),
        (["training.args.greater_is_better=false"], "'training.args.greater_is_better' is refused"),
        (
            ["training.args.include_for_metrics=[inputs]"],
            "recipe key 'training.args.include_for_metrics' is refused: hf_tl owns it (its metrics take the whole "
            "evaluation's logits and labels at once",
        ),
        (["training.args.eval_do_concat_batches=false"], "'training.args.eval_do_concat_batches' is refused"),
        (
            ["training.optimizer=rmsprop", "strategy.kind=full", "training.layer_decay=0.75"],
            "recipe key 'training.layer_decay' got 0.75, which does not go with training.optimizer=rmsprop: hf_tl "
            "builds the layer-wise parameter groups and calls the optimizer class itself",
        ),
        (
            ["training.optimizer=rmsprop", "training.head_lr=0.001"],
            "recipe key 'training.head_lr' got 0.001, which does not go with training.optimizer=rmsprop",
        ),
    ],
)
def test_training_args_that_would_lose_the_best_checkpoint_or_be_ignored_are_refused(overrides, message):
    with pytest.raises(RecipeError) as error:
        _checked_by_transformers("quickstart", ["data.dataset=x", *overrides])
    assert message in str(error.value)


def test_a_schedule_by_steps_an_unlogged_run_and_layer_decay_with_the_five_optimizers_are_taken():
    steps = ["training.args.eval_strategy=steps", "training.args.eval_steps=5", "training.args.save_steps=10"]
    _checked_by_transformers("quickstart", ["data.dataset=x", *steps, "training.args.logging_strategy=no"])
    decay = ["strategy.kind=full", "training.layer_decay=0.75", "training.head_lr=0.001"]
    _checked_by_transformers("quickstart", ["data.dataset=x", *decay, "training.optimizer=sgd"])


def test_a_tracker_that_is_not_installed_says_what_installs_it(monkeypatch):
    from transformers.integrations import integration_utils

    monkeypatch.setattr(integration_utils, "is_tensorboard_available", lambda: False)
    with pytest.raises(RecipeError, match="has 'tensorboard', which is not installed here: pip install tensorboard"):
        _checked_by_transformers("quickstart", ["data.dataset=x", "training.report_to=[tensorboard]"])


def test_any_of_transformers_optimizers_is_taken_and_one_needing_a_package_says_which():
    assert (
        _checked_by_transformers("quickstart", ["data.dataset=x", "training.optimizer=rmsprop"]).training.optimizer
        == "rmsprop"
    )
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        with pytest.raises(RecipeError, match="'adamw_bnb_8bit', which needs a package: .*bitsandbytes"):
            _checked_by_transformers("quickstart", ["data.dataset=x", "training.optimizer=adamw_bnb_8bit"])


def test_every_training_argument_hf_tl_owns_is_a_real_field_and_names_a_real_recipe_key():
    from transformers import TrainingArguments

    from hf_tl.training.arguments import OWNED_ARGUMENTS, _is_recipe_key

    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    assert set(OWNED_ARGUMENTS) <= fields, set(OWNED_ARGUMENTS) - fields
    assert all(_is_recipe_key(instead) for _, instead in OWNED_ARGUMENTS.values() if instead)


def test_resume_takes_a_checkpoint_folder_and_names_a_folder_that_is_not_one(tmp_path):
    checkpoint = tmp_path / "run" / "checkpoints" / "checkpoint-24"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text("{}")
    recipe = load_recipe("quickstart", ["data.dataset=x", f"training.resume={checkpoint}"])
    assert recipe.training.resume == str(checkpoint)
    assert load_recipe("quickstart", [f"training.resume={tmp_path / 'gone'}"])  # read anywhere; checked at a run
    with pytest.raises(RecipeError) as error:
        _checked_by_transformers("quickstart", ["data.dataset=x", f"training.resume={tmp_path / 'run'}"])
    assert str(error.value).startswith(
        f"recipe key 'training.resume' got '{tmp_path / 'run'}', which is not a checkpoint (no trainer_state.json). "
        f"Its checkpoints: {checkpoint}."
    )
