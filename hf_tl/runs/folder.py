"""The run folder: where it is, what it holds, and writing into it without half-written files.

hf_tl only ever removes what it wrote itself: the entries named in `RUN_ENTRIES` (and their hidden
temporaries), in a folder whose `recipe.yaml` is a run's. It never removes the folder itself, nor
anything else in it, and it refuses a folder that holds other files but no run.

A run that replaces another (`output.overwrite=true`) first moves the old run's entries aside into
`REPLACED_DIR`, and deletes them only once the new run has saved its first checkpoint. A failure
before that puts them back; after a SIGKILL, the next run in the folder sorts it out the same way
(`recover_replaced`).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from hf_tl.config.recipe import SECTIONS, Recipe, resume_path, to_yaml, upgrade_written
from hf_tl.config.resources import PACKAGE_DIR
from hf_tl.errors import HfTlError, RecipeError
from hf_tl.runs.environment import process_state

RECIPE_FILE = "recipe.yaml"
METRICS_FILE = "metrics.json"
LOG_HISTORY_FILE = "log_history.json"
CHECKPOINTS_DIR = "checkpoints"
MODEL_DIR = "model"  # the final model, merged: loads with plain from_pretrained
ADAPTER_DIR = "adapter"  # LoRA runs: the peft adapter
CARD_FILE = "README.md"  # the model card
CURVES_FILE = "training_curves.png"
LOGS_DIR = "logs"  # the trackers' local files (training.report_to): tensorboard's event files
# Everything a run writes at the top of its folder. Hidden temporaries are named after these: `.NAME.*`
# (written_atomically's files, replaced_atomically's `.NAME.partial` and `.NAME.previous`).
RUN_ENTRIES = (
    RECIPE_FILE,
    METRICS_FILE,
    LOG_HISTORY_FILE,
    CHECKPOINTS_DIR,
    MODEL_DIR,
    ADAPTER_DIR,
    CARD_FILE,
    CURVES_FILE,
    LOGS_DIR,
)
REPLACED_DIR = ".replaced-run"  # the previous run, moved aside while a new one replaces it
MOVED_MARK = ".moved"  # in REPLACED_DIR: every entry was moved aside, so the new run may begin writing
DISCARDED_DIR = f"{REPLACED_DIR}.discarded"  # REPLACED_DIR renamed before it is deleted: never put back
_CHECKPOINT = re.compile(r"^checkpoint-\d+$")
LOW_DISK_BYTES = 64 * 2**20  # less free than this after a failed write: the disk is full


def resolve_run_dir(recipe: Recipe) -> Path:
    """`output.dir`, or runs/<recipe>-<timestamp> with one timestamp agreed by every process."""
    if recipe.output.dir:
        return Path(recipe.output.dir)
    stamp = [time.strftime("%Y%m%d-%H%M%S")]
    if process_state().num_processes > 1:
        _broadcast(stamp)
    return Path("runs") / f"{recipe.name}-{stamp[0]}"


def _broadcast(values: list) -> None:
    """The main process's values to every process (accelerate, imported only when there are several)."""
    from accelerate.utils import broadcast_object_list

    broadcast_object_list(values)


@dataclass
class Plan:
    """What the folder holds and what this run will do with it, decided before any work.

    action: 'start' (empty or new folder), 'continue' (this recipe, unfinished: resume from a checkpoint if
    there is one), 'complete' (this recipe, finished: nothing to do), 'retake' (another recipe that saved
    nothing: its entries are removed), 'replace' (output.overwrite=true on a run that saved something: its
    entries are moved aside, then deleted at the new run's first checkpoint).
    """

    action: str
    note: str = ""  # one line to print when the plan is carried out
    found: tuple[str, ...] | None = None  # the folder's entries when planned; None: it did not exist


def plan_run_dir(run_dir: Path, recipe: Recipe) -> Plan:
    """Check `output.dir` and decide what to do with it; one decision for every process, taken by the main one.

    Raises HfTlError (naming output.dir and the fix) for a file, a folder that cannot be written, a folder
    holding other files and no run, and a run of another recipe that saved something (without overwrite).
    """
    state = process_state()
    decision: list[Any] = [None]
    if state.is_main_process:
        try:
            decision[0] = _plan(Path(run_dir), recipe)
        except HfTlError as e:
            decision[0] = e
    if state.num_processes > 1:
        _broadcast(decision)
    if isinstance(decision[0], HfTlError):
        raise decision[0]
    return decision[0]


def _plan(run_dir: Path, recipe: Recipe) -> Plan:
    check_writable(run_dir, "output.dir", f"runs/{recipe.name}")
    recover_replaced(run_dir)
    found = tuple(sorted(os.listdir(run_dir))) if run_dir.is_dir() else None
    if not holds_run(run_dir):
        others = [name for name in found or () if not _leftover(run_dir / name)]
        if others:
            raise HfTlError(
                f"output.dir={run_dir} is not empty ({_listing(others)}) and holds no hf_tl run (no {RECIPE_FILE} "
                "of one), so hf_tl will not write into it. Choose a new or empty folder, e.g. "
                f"output.dir={run_dir / 'run'}."
            )
        return Plan("start", found=found)
    plan = _plan_for_run(run_dir, recipe)
    plan.found = found
    return plan


def _plan_for_run(run_dir: Path, recipe: Recipe) -> Plan:
    """The folder holds a run: resume it, call it complete, replace it, retake it, or refuse."""
    produced = has_produced(run_dir)
    differences = recipe_differences(
        _without_output((run_dir / RECIPE_FILE).read_text()), _without_output(to_yaml(recipe))
    )
    same = not differences
    if recipe.output.overwrite:
        if not produced:
            return Plan("retake")
        aside = run_dir / REPLACED_DIR
        return Plan(
            "replace",
            f"hf_tl: output.overwrite=true: the run in {run_dir} is set aside in {aside}, and "
            "removed when this one saves its first checkpoint (if this one fails first, it is put back)",
        )
    if same:
        return Plan("complete" if is_complete(run_dir) else "continue")
    if produced:
        raise HfTlError(
            f"{run_dir} already holds a run of a different recipe ({run_dir / RECIPE_FILE}: {differences}), with "
            "results or checkpoints. Choose another output.dir, or set output.overwrite=true to replace it."
        )
    return Plan(
        "retake",
        f"hf_tl: {run_dir} held a run of another recipe that saved nothing (no checkpoint, no result); "
        "it is replaced by this one",
    )


def prepare_run_dir(run_dir: Path, recipe: Recipe, plan: Plan) -> None:
    """Carry out the plan, once the data and the model have loaded, and write the resolved recipe."""
    state = process_state()
    if state.is_main_process:
        if plan.note:
            print(plan.note, flush=True)
        if plan.action == "replace":
            set_aside(run_dir)
        elif plan.action in ("retake", "start"):
            remove_run_entries(run_dir)  # a retaken run's files, or leftovers of a run that never began
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text(run_dir / RECIPE_FILE, to_yaml(as_written(recipe)))
    state.wait_for_everyone()


def as_written(recipe: Recipe) -> Recipe:
    """The recipe as its run folder keeps it: a checkpoint given by path (training.resume=PATH) is where this run
    began, recorded in metrics.json (`resumed_from`); the folder's recipe resumes from its own checkpoints, so that
    it reads, reproduces and resumes once that checkpoint is gone."""
    if resume_path(recipe.training) is None:
        return recipe
    return dataclasses.replace(recipe, training=dataclasses.replace(recipe.training, resume="auto"))


def undo_unprepared(run_dir: Path, plan: Plan) -> None:
    """A run that failed before `prepare_run_dir` leaves the folder as it found it: the empty checkpoints/
    the Trainer makes at once goes again, and so does the folder when there was none."""
    if not process_state().is_main_process or not run_dir.is_dir():
        return
    for name in sorted(set(os.listdir(run_dir)) - set(plan.found or ())):
        if _leftover(run_dir / name):
            _remove(run_dir / name)
    if plan.found is None and not any(run_dir.iterdir()):
        run_dir.rmdir()


def holds_run(folder: Path) -> bool:
    """The folder's recipe.yaml is one hf_tl wrote: every section of a resolved recipe, and its name."""
    path = Path(folder) / RECIPE_FILE
    if not path.is_file():
        return False
    try:
        written = OmegaConf.load(path)
    except Exception:  # not YAML: someone else's file
        return False
    return OmegaConf.is_dict(written) and {*SECTIONS, "name"} <= set(written.keys())


def has_produced(folder: Path) -> bool:
    """A run has something to protect: a result (metrics, model, adapter) or a complete checkpoint."""
    folder = Path(folder)
    if any((folder / name).exists() for name in (METRICS_FILE, MODEL_DIR, ADAPTER_DIR)):
        return True
    checkpoints = folder / CHECKPOINTS_DIR
    return checkpoints.is_dir() and any(_CHECKPOINT.match(p.name) and p.is_dir() for p in checkpoints.iterdir())


def is_complete(folder: Path) -> bool:
    """A finished run: its metrics and its model are written (metrics.json comes after the model)."""
    return (Path(folder) / METRICS_FILE).is_file() and (Path(folder) / MODEL_DIR / "config.json").is_file()


def is_run_entry(name: str) -> bool:
    """A name hf_tl writes at the top of a run folder: a run entry, or a hidden temporary of one."""
    return name in RUN_ENTRIES or name.startswith(REPLACED_DIR) or any(name.startswith(f".{e}.") for e in RUN_ENTRIES)


def remove_run_entries(folder: Path) -> None:
    """Remove what a run wrote at the top of `folder`, and nothing else."""
    for name in sorted(os.listdir(folder)) if Path(folder).is_dir() else []:
        if is_run_entry(name) and not name.startswith(REPLACED_DIR):
            _remove(Path(folder) / name)


def set_aside(folder: Path) -> None:
    """Move the run's entries into REPLACED_DIR, then mark the move complete (a rename each: same file system)."""
    aside = folder / REPLACED_DIR
    aside.mkdir()
    for name in sorted(os.listdir(folder)):
        if not is_run_entry(name) or name.startswith(REPLACED_DIR):
            continue
        if _leftover(folder / name) and not name.startswith("."):  # an empty folder (the new Trainer's checkpoints/)
            (folder / name).rmdir()
        else:
            os.replace(folder / name, aside / name)
    (aside / MOVED_MARK).touch()
    sync_tree(aside, files=False)
    sync_tree(folder, files=False)


def discard_replaced(folder: Path) -> bool:
    """The new run has saved something: the old one, set aside, goes. True if there was one."""
    aside = Path(folder) / REPLACED_DIR
    if not aside.exists():
        return False
    os.replace(aside, Path(folder) / DISCARDED_DIR)  # at once: a kill while deleting cannot look like a set-aside run
    shutil.rmtree(Path(folder) / DISCARDED_DIR)
    return True


def restore_replaced(folder: Path) -> bool:
    """Put a run set aside back in place of the new run's entries. True if there was one.

    Steps in an order that a kill at any point leaves for `recover_replaced` to finish: the new run's
    entries go first, then the mark, then the old entries move back."""
    aside = Path(folder) / REPLACED_DIR
    if not aside.exists():
        return False
    if (aside / MOVED_MARK).exists():
        remove_run_entries(folder)
        (aside / MOVED_MARK).unlink()
    for entry in sorted(aside.iterdir()):
        target = Path(folder) / entry.name
        if target.exists() or target.is_symlink():  # a leftover of the new run (the move back had begun)
            _remove(target)
        os.replace(entry, target)
    aside.rmdir()
    sync_tree(folder, files=False)
    return True


def recover_replaced(folder: Path) -> None:
    """A replacement that was killed: keep the new run if it saved a checkpoint, else put the old one back."""
    shutil.rmtree(Path(folder) / DISCARDED_DIR, ignore_errors=True)
    aside = Path(folder) / REPLACED_DIR
    if not aside.is_dir():
        return
    if (aside / MOVED_MARK).exists() and has_produced(folder):
        discard_replaced(folder)
        what = "had saved a checkpoint; the previous run, set aside, is removed"
    else:
        restore_replaced(folder)
        what = "stopped before its first checkpoint; the previous run is back in place"
    print(f"hf_tl: {folder}: the run that was to replace the previous one {what}", flush=True)


def check_writable(folder: Path, key: str, example: str) -> None:
    """`folder` is (or can become) a folder hf_tl can write, outside the installed package; else an error
    naming `key`. Probed by writing, because os.access says yes to root on /proc and read-only mounts."""
    folder = Path(folder)
    check_outside_package(folder, key)
    if folder.exists() and not folder.is_dir():
        raise HfTlError(f"{key}={folder} is a file, not a folder. Choose a new or empty folder, e.g. {key}={example}.")
    created, doing = [], "created"
    try:
        for parent in [*reversed(folder.absolute().parents), folder.absolute()]:
            if not parent.exists():
                parent.mkdir()
                created.append(parent)
            elif not parent.is_dir():
                raise HfTlError(f"{key}={folder}: {parent} is a file, not a folder. Choose another {key}.")
        doing = "written"
        fd, probe = tempfile.mkstemp(dir=folder, prefix=f".{RECIPE_FILE}.")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise HfTlError(
            f"{key}={folder} cannot be {doing} ({e.strerror}: {e.filename}). Choose a folder you can write, "
            f"e.g. {key}={example}."
        ) from None
    finally:
        for made in reversed(created):  # the probe leaves nothing behind: the run makes the folder when it starts
            made.rmdir()


def check_outside_package(path: Path, key: str) -> None:
    """No command writes into the installed hf_tl package (its recipes, assets and code)."""
    resolved = Path(path).expanduser().resolve()
    if resolved == PACKAGE_DIR or PACKAGE_DIR in resolved.parents:
        raise RecipeError(
            f"{key}={path} lies inside the installed hf_tl package ({PACKAGE_DIR}), which hf_tl never writes. "
            "Choose a folder outside it."
        )


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
    check_outside_package(path, "the output")
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
    check_outside_package(target, "the output")
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


def disk_full(error: Exception, folder: Path) -> bool:
    """safetensors and torch.save report a full disk in their own words; errno or the free space tell the rest."""
    if getattr(error, "errno", None) == errno.ENOSPC or any(w in str(error) for w in ("No space left", "StorageFull")):
        return True
    try:
        return shutil.disk_usage(folder).free < LOW_DISK_BYTES
    except OSError:
        return False


def _leftover(path: Path) -> bool:
    """What a run that never wrote its recipe may leave: a hidden temporary, or an empty folder the Trainer
    made (checkpoints/). Anything else in a folder without a run is someone else's."""
    if not is_run_entry(path.name):
        return False
    if path.name.startswith("."):
        return True
    return path.is_dir() and not path.is_symlink() and not any(path.iterdir())


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _listing(names: list[str], shown: int = 4) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def recipe_differences(old: dict, new: dict, shown: int = 3) -> str:
    """The keys two recipes set differently, as `key=old (now new)`, the first `shown` of them; '' when equal."""
    before, after = _flat(old), _flat(new)
    keys = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    said = [f"{key}={before.get(key)} (now {after.get(key)})" for key in keys[:shown]]
    return ", ".join(said) + (f" and {len(keys) - shown} more" if len(keys) > shown else "")


def _flat(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _without_output(recipe_yaml: str) -> dict:
    """Recipes compared for 'same run', defaults filled in (an older folder lacks newer keys); where the output
    goes, whether to resume and whether to push may differ."""
    written = OmegaConf.create(recipe_yaml)
    upgrade_written(written)
    try:
        written = OmegaConf.merge(OmegaConf.structured(Recipe), written)
    except Exception:  # keys of another hf_tl version: compare as written
        pass
    recipe = OmegaConf.to_container(written)
    for section in ("name", "output", "hub"):
        recipe.pop(section, None)
    for key in ("resume", "report_to"):  # where the run continues from, and the trackers it also logs to
        recipe.get("training", {}).pop(key, None)
    return recipe
