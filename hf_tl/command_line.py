"""What hf_tl's `key=value` commands share: typed arguments, the default device, folder names for outputs.

`hf_tl.eval`, `hf_tl.analyze` and `hf_tl.sweep` describe their arguments as dataclasses of
`recipe.option` fields and read them here, so a bad key or value gets the same clear message
everywhere: the key, the value, and what is allowed.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf, errors

from hf_tl.errors import RecipeError
from hf_tl.recipe import check_options, did_you_mean, type_name
from hf_tl.rundir import MODEL_DIR


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


def resolve_model(model: str) -> str:
    """A run folder stands for its model/ (the checkpoint inside it); anything else is passed on as given."""
    path = Path(model).expanduser()
    if path.is_dir() and not (path / "config.json").exists() and (path / MODEL_DIR / "config.json").exists():
        return str(path / MODEL_DIR)
    return model


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
