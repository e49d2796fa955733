"""The run folder: where it is, what it holds, and writing into it without half-written files."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from accelerate.utils import broadcast_object_list
from omegaconf import OmegaConf

from hf_tl.environment import process_state
from hf_tl.errors import HfTlError
from hf_tl.recipe import Recipe, to_yaml

RECIPE_FILE = "recipe.yaml"
METRICS_FILE = "metrics.json"
LOG_HISTORY_FILE = "log_history.json"
CHECKPOINTS_DIR = "checkpoints"
MODEL_DIR = "model"  # the final model, merged: loads with plain from_pretrained
ADAPTER_DIR = "adapter"  # LoRA runs: the peft adapter


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
    with written_atomically(path) as tmp:
        tmp.write_text(text)


@contextmanager
def written_atomically(path: Path) -> Iterator[Path]:
    """A temporary file beside `path` to write; renamed onto `path` once written and synced, so a crash
    never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def replaced_atomically(target: Path) -> Iterator[Path]:
    """A hidden folder to fill; on success it replaces `target` by rename, so a crash leaves the old or the new."""
    partial = target.parent / f".{target.name}.partial"
    previous = target.parent / f".{target.name}.previous"
    if previous.exists():  # a crash between the two renames below: put the old folder back first
        if target.exists():
            shutil.rmtree(previous)
        else:
            os.replace(previous, target)
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    sync_tree(partial)
    if target.exists():
        os.replace(target, previous)
    os.replace(partial, target)
    sync_tree(target.parent, files=False)
    shutil.rmtree(previous, ignore_errors=True)


def sync_tree(folder: Path, files: bool = True) -> None:
    """fsync a folder's files (with `files`) and the folder itself, so a rename after it is durable."""
    if files:
        for path in Path(folder).rglob("*"):
            if path.is_file():
                with open(path, "rb") as f:
                    os.fsync(f.fileno())
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _without_output(recipe_yaml: str) -> dict:
    """Recipes compared for 'same run', defaults filled in (an older folder lacks newer keys); where the output
    goes, whether to resume and whether to push may differ."""
    written = OmegaConf.create(recipe_yaml)
    try:
        written = OmegaConf.merge(OmegaConf.structured(Recipe), written)
    except Exception:  # keys of another hf_tl version: compare as written
        pass
    recipe = OmegaConf.to_container(written)
    for section in ("name", "output", "hub"):
        recipe.pop(section, None)
    recipe.get("training", {}).pop("resume", None)
    return recipe
