"""What hf_tl's `key=value` commands share: typed arguments, the default device, folder names for outputs.

`hf_tl.eval`, `hf_tl.analyze` and `hf_tl.sweep` describe their arguments as dataclasses of
`recipe.option` fields and read them here, so a bad key or value gets the same clear message
everywhere: the key, the value, and what is allowed.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from omegaconf import OmegaConf, errors

from hf_tl.errors import HfTlError, RecipeError
from hf_tl.recipe import SECTIONS, available_recipes, check_options, did_you_mean, type_name
from hf_tl.rundir import MODEL_DIR, RECIPE_FILE

CONFIG_FILE = "config.json"


def parse_key_values(schema: type, argv: list[str]) -> Any:
    """`key=value` arguments onto a dataclass, with errors that name the key, the value and what is allowed."""
    fields = dataclasses.fields(schema)
    valid = [f.name for f in fields]
    for arg in argv:
        key = arg.split("=", 1)[0]
        if "=" not in arg:
            raise RecipeError(f"argument '{arg}' is not of the form key=value; keys: {', '.join(valid)}")
        if key not in valid:
            raise RecipeError(f"unknown key '{key}'.{did_you_mean(key, valid)}\n  valid keys: {', '.join(valid)}")
        if "${" in arg:
            raise RecipeError(f"argument '{arg}': interpolations are not allowed.")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.from_dotlist(list(argv)))
    except errors.ValidationError as e:
        expected = type_name(next(f.type for f in fields if f.name == e.full_key))
        raise RecipeError(f"key '{e.full_key}' got {e.value!r}, which is not a valid {expected}.") from None
    for f in fields:
        if OmegaConf.is_missing(merged, f.name):
            raise RecipeError(f"'{f.name}=' is required: {f.metadata['help']}")
    args = OmegaConf.to_object(merged)
    check_options(args, what="key")
    return args


HELP_FLAGS = ("-h", "--help")


def wants_help(argv: Sequence[str]) -> bool:
    """`--help` or `-h` anywhere: the command prints its usage and does nothing else."""
    return any(arg in HELP_FLAGS for arg in argv)


def command_help(doc: str, groups: Sequence[tuple[str, type, str]], extra: str = "") -> str:
    """A key=value command's --help: usage and purpose from its docstring's first paragraph (`usage`: what it
    does), then each key of the dataclasses that check them (`groups`: heading, dataclass, key prefix)."""
    first = " ".join(doc.strip().split("\n\n")[0].split())
    usage, _, purpose = first.partition("`: ")
    parts = [f"usage: {usage.strip('`')}", purpose]
    if extra:
        parts.append("\n".join(wrapped for line in extra.splitlines() for wrapped in _wrap(line)))
    for heading, schema, prefix in groups:
        parts.append(f"{heading}:\n" + "\n".join(_key_help(f, prefix) for f in dataclasses.fields(schema)))
    return "\n\n".join(parts)


def recipe_help(doc: str, extra: str = "") -> str:
    """--help of the commands that read a recipe (train, params): every recipe key, section by section."""
    recipe = (
        f"recipe=NAME  a shipped recipe ({', '.join(available_recipes())}) or a .yaml path; "
        "`python -m hf_tl.recipes show NAME` prints one. Any key below overrides it: section.key=value."
    )
    groups = [(f"{name} keys", section, f"{name}.") for name, section in SECTIONS.items()]
    return command_help(doc, groups, "\n".join([recipe, extra]) if extra else recipe)


def _key_help(f: dataclasses.Field, prefix: str) -> str:
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    facts = ["required" if default == "???" else f"default {_shown(default)}"]
    if f.metadata.get("choices"):
        facts.append(f"one of: {', '.join(map(str, f.metadata['choices']))}")
    if f.metadata.get("min") is not None:
        facts.append(f"at least {f.metadata['min']}")
    head = f"  {prefix}{f.name}={type_name(f.type)}"
    return "\n".join([head, *_wrap(f"{f.metadata.get('help', '')} ({'; '.join(facts)})", indent=6)])


def _shown(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if isinstance(value, str) and not value else str(value)


def _wrap(text: str, indent: int = 0) -> list[str]:
    return textwrap.wrap(text, width=100, initial_indent=" " * indent, subsequent_indent=" " * indent)


def resolve_model(model: str) -> str:
    """A run folder stands for its model/ (the checkpoint inside it); anything else is checked and passed on."""
    path = Path(model).expanduser()
    if path.is_dir() and not (path / CONFIG_FILE).exists() and (path / MODEL_DIR / CONFIG_FILE).exists():
        return str(path / MODEL_DIR)
    check_model_source(model)
    return model


def check_model_source(name: str) -> None:
    """A model named by a path must be a checkpoint folder; said before any work, and plainly, where transformers
    would take a missing folder for a malformed Hub id, or a run folder without a model for a broken config."""
    path = Path(name).expanduser()
    problem = f"could not load model '{name}'"
    if not path.exists():
        try:
            validate_repo_id(name)
        except HFValidationError:
            raise HfTlError(
                f"{problem}: the directory {path} does not exist. Give an existing checkpoint folder, a finished "
                "hf_tl run folder, or a Hub id (user/name)."
            ) from None
        return  # a Hub id: transformers resolves it
    if path.is_dir() and (path / CONFIG_FILE).exists():
        return
    if (path / RECIPE_FILE).is_file() and (path / MODEL_DIR / CONFIG_FILE).exists():
        raise HfTlError(f"{problem}: it is an hf_tl run folder; its trained model is {path / MODEL_DIR}: give that.")
    if (path / RECIPE_FILE).is_file():
        train = shlex.join(["python", "-m", "hf_tl.train", f"recipe={path / RECIPE_FILE}", f"output.dir={path}"])
        raise HfTlError(
            f"{problem}: it is an hf_tl run folder that holds no trained model ({MODEL_DIR}/ is missing), so its run "
            f"did not finish. Finish it with `{train}` (it continues from its last checkpoint, if any), then give "
            "this folder again."
        )
    what = "a folder with no config.json" if path.is_dir() else "a file"
    raise HfTlError(
        f"{problem}: it is {what}, not a checkpoint. Give the folder save_pretrained wrote (config.json and "
        "model.safetensors), a finished hf_tl run folder, or a Hub id (user/name)."
    )


def resolve_device(name: str | None) -> torch.device:
    """`device=` checked before any work: a device this machine has. Unset, the accelerator if there is one."""
    if not name:
        return default_device()
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise RecipeError(
            f"device='{name}' is not a device: give cpu, cuda, cuda:1, mps, ..., or leave device= out to use "
            f"{default_device()}."
        ) from None
    if device.type == "cpu":
        return device
    accelerator = default_device()
    count = torch.accelerator.device_count() if accelerator.type == device.type else 0
    if count == 0 or (device.index or 0) >= count:
        has = f"{count} {device.type} device(s), numbered from 0" if count else f"no {device.type} device"
        raise RecipeError(
            f"device='{name}': this machine has {has}. Leave device= out to use {accelerator}, or give device=cpu."
        )
    return device


def default_device() -> torch.device:
    """The accelerator when there is one, else the CPU."""
    return torch.accelerator.current_accelerator() if torch.accelerator.is_available() else torch.device("cpu")


def slug(text: str) -> str:
    """A Hub id or a path as a folder name: the default output folders are named after what they read."""
    path = Path(text).expanduser()
    if path.exists():
        parts = path.resolve().parts[-2:]
        text = "-".join(parts)
    return re.sub(r"[^\w.-]+", "-", text.replace("/", "--")).strip("-") or "x"
