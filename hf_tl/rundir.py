"""The run folder: where it is, what it holds, and writing into it without half-written files."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from accelerate.utils import broadcast_object_list

from hf_tl.environment import process_state
from hf_tl.errors import HfTlError
from hf_tl.recipe import Recipe, to_yaml

RECIPE_FILE = "recipe.yaml"
METRICS_FILE = "metrics.json"
LOG_HISTORY_FILE = "log_history.json"
CHECKPOINTS_DIR = "checkpoints"


def resolve_run_dir(recipe: Recipe) -> Path:
    """`output.dir`, or runs/<recipe>-<timestamp> with one timestamp agreed by every process."""
    if recipe.output.dir:
        return Path(recipe.output.dir)
    stamp = [time.strftime("%Y%m%d-%H%M%S")]
    if process_state().num_processes > 1:
        broadcast_object_list(stamp)
    return Path("runs") / f"{recipe.name}-{stamp[0]}"


def prepare_run_dir(run_dir: Path, recipe: Recipe) -> None:
    """Write the resolved recipe. A folder of the same recipe is resumed; one of another is refused,
    unless `output.overwrite=true`, which empties it first."""
    state = process_state()
    text = to_yaml(recipe)
    existing = run_dir / RECIPE_FILE
    if (
        existing.exists()
        and not recipe.output.overwrite
        and _without_output(existing.read_text()) != _without_output(text)
    ):
        raise HfTlError(
            f"{run_dir} already holds a run of a different recipe ({existing}). "
            "Choose another output.dir, or set output.overwrite=true to replace it."
        )
    if state.is_main_process:
        if recipe.output.overwrite and run_dir.exists():
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text(existing, text)
    state.wait_for_everyone()


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def write_text(path: Path, text: str) -> None:
    """Write through a temporary file and rename, so a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _without_output(recipe_yaml: str) -> str:
    """Recipes compared for 'same run': the output section may differ."""
    head, sep, _ = recipe_yaml.partition("\noutput:")
    return head
