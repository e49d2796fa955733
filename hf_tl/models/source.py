"""Where a model comes from: a checkpoint folder, a finished run folder, or a Hub id, checked before any work."""

from __future__ import annotations

import shlex
from pathlib import Path

from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from hf_tl.errors import HfTlError
from hf_tl.runs.folder import MODEL_DIR, RECIPE_FILE

CONFIG_FILE = "config.json"


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
