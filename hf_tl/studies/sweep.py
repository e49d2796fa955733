"""What `hf-tl sweep` does: run every cell of a study, one after another.

Each cell is a subprocess (`python -m hf_tl.train`, or `accelerate launch` with launcher=accelerate), so
one cell's crash cannot take the sweep down: its failure is recorded and the sweep goes on. Every cell
has its own folder inside the sweep folder:

    SWEEP/sweep.json                 state of every cell (written atomically), and the study it ran
    SWEEP/cells/CELL/CELL.yaml       the cell's recipe (python -m hf_tl.train recipe=... runs it alone)
    SWEEP/cells/CELL/train.log       everything the cell printed, attempt after attempt
    SWEEP/cells/CELL/run/            its hf_tl run folder (metrics.json once finished)

Running the same command again skips finished cells (their metrics.json exists), retries failed ones,
and resumes a half-finished one from its last complete checkpoint (`hf-tl train`'s training.resume=auto).
Recipe overrides given on the command line apply to every cell; a different set of overrides gets its
own sweep folder, so no cell's results are mixed with those of another recipe. A folder in which no cell
has produced anything (no checkpoint, no result) takes the new study and overrides: a mistyped override
is corrected by running the corrected command.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from omegaconf import OmegaConf

from hf_tl.config.commands import SweepArgs
from hf_tl.config.recipe import load_recipe
from hf_tl.errors import HfTlError
from hf_tl.runs.folder import METRICS_FILE, check_writable, has_produced, write_json, write_text
from hf_tl.studies.study import Cell, Study, load_study, select_cells

STATE_FILE = "sweep.json"
LOG_FILE = "train.log"
RUN_DIR = "run"
LAUNCHERS = ("python", "accelerate")
# Overrides that do not change a cell's results: a sweep folder may be continued with or without them.
RESULT_NEUTRAL = ("training.resume", "training.report_to", "output.overwrite", "data.num_workers")
ERROR_LINES = 15


def result_overrides(overrides: list[str]) -> list[str]:
    """The overrides that change results, in a stable order: they name and guard the sweep folder."""
    return sorted(o for o in overrides if o.split("=", 1)[0] not in RESULT_NEUTRAL)


def sweep_dir(args: SweepArgs, study: Study, overrides: list[str]) -> Path:
    if args.out:
        return Path(args.out)
    changing = result_overrides(overrides)
    suffix = "-" + hashlib.sha256("\n".join(changing).encode()).hexdigest()[:8] if changing else ""
    return Path("runs") / "sweeps" / f"{study.name}{suffix}"


def cell_dir(root: Path, cell: Cell) -> Path:
    return root / "cells" / cell.id


def write_cell_recipe(root: Path, study: Study, cell: Cell) -> Path:
    """The cell's recipe as a file `hf-tl train` reads; refused if the folder holds another recipe for this cell."""
    path = cell_dir(root, cell) / f"{cell.id}.yaml"
    recipe = cell.recipe(study.spec.base)
    changed = path.exists() and OmegaConf.to_container(OmegaConf.load(path)) != recipe
    if changed and has_produced(cell_dir(root, cell) / RUN_DIR):
        raise HfTlError(
            f"{root} holds cell {cell.id} with a different recipe ({path}): the study changed since this sweep "
            "began. Continue it with the study it ran, or choose another folder with out=."
        )
    if changed:  # nothing of the old recipe to protect: the cell takes the new one
        print(f"sweep: cell {cell.id} had produced nothing with its old recipe; it takes the study's new one")
    header = (
        f"# {cell.backbone.name or cell.backbone.key} on {cell.dataset.name or cell.dataset.key}, "
        f"{cell.strategy.name or cell.strategy.key}: cell {cell.id} of study {study.name}.\n"
        f"#   python -m hf_tl.train recipe={path}\n"
        f"#   python -m hf_tl.sweep study={study.name} only={cell.id}\n"
    )
    if changed or not path.exists():
        write_text(path, header + OmegaConf.to_yaml(recipe))
    return path


def command(args: SweepArgs, recipe: Path, overrides: list[str], run_dir: Path) -> list[str]:
    train = ["-m", "hf_tl.train", f"recipe={recipe}", *overrides, f"output.dir={run_dir}"]
    if args.launcher == "accelerate":
        return [sys.executable, "-m", "accelerate.commands.launch", *shlex.split(args.launcher_args), *train]
    return [sys.executable, *train]


class State:
    """sweep.json: the study it runs, its overrides, and each cell's status, rewritten after every change."""

    def __init__(self, root: Path, study: Study, overrides: list[str]) -> None:
        self.path = root / STATE_FILE
        existing = _read_json(self.path)
        if existing and not _same_sweep(existing, root, study, overrides):
            print(
                f"sweep: {root} held a sweep of other settings in which no cell had produced anything; "
                "it takes this command's study and overrides",
                flush=True,
            )
            existing = None
        self.data = existing or {"study": study.to_dict(), "overrides": result_overrides(overrides), "cells": {}}
        self.data["study"] = study.to_dict()
        write_json(self.path, self.data)

    def cell(self, cell: Cell) -> dict:
        return self.data["cells"].setdefault(
            cell.id,
            {
                "backbone": cell.backbone.key,
                "dataset": cell.dataset.key,
                "strategy": cell.strategy.key,
                "run_dir": f"cells/{cell.id}/{RUN_DIR}",
                "log": f"cells/{cell.id}/{LOG_FILE}",
                "status": "pending",
                "attempts": 0,
            },
        )

    def update(self, cell: Cell, **values) -> None:
        self.cell(cell).update(values)
        write_json(self.path, self.data)


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def produced_anything(root: Path) -> bool:
    """Some cell of the sweep folder has a result or a checkpoint: a sweep with something to protect."""
    cells = root / "cells"
    return cells.is_dir() and any(has_produced(cell / RUN_DIR) for cell in cells.iterdir())


def _same_sweep(existing: dict, root: Path, study: Study, overrides: list[str]) -> bool:
    """The folder's sweep is this one; if not, False where no cell produced anything, else an error."""
    if existing["study"]["name"] == study.name and existing["overrides"] == result_overrides(overrides):
        return True
    if not produced_anything(root):
        return False
    if existing["study"]["name"] != study.name:
        raise HfTlError(
            f"{root} holds a sweep of study '{existing['study']['name']}', not '{study.name}'; choose another out=."
        )
    raise HfTlError(
        f"{root} holds a sweep run with the overrides {existing['overrides'] or '(none)'}; this command gives "
        f"{result_overrides(overrides) or '(none)'}. Give the same overrides to continue it, or drop out= to "
        "get a folder of its own for these."
    )


@contextmanager
def locked(root: Path) -> Iterator[None]:
    """One sweep at a time per folder: a second would run the same cells into the same run folders."""
    from filelock import FileLock, Timeout

    root.mkdir(parents=True, exist_ok=True)
    lock = FileLock(root / ".sweep.lock", timeout=0)  # fails at once where another sweep holds it
    try:
        held = lock.acquire()
    except Timeout:
        raise HfTlError(f"another sweep is running in {root}; wait for it, or choose another out=.") from None
    with held:  # released when the sweep ends
        yield


def run_cell(cmd: list[str], log: Path) -> int:
    """Run one cell, its output going to the console and appended to its log; the exit status."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "ab") as out:
        out.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')}: {shlex.join(cmd)}\n".encode())
        process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        try:
            while chunk := os.read(process.stdout.fileno(), 65536):  # chunks, not lines: progress bars use \r
                out.write(chunk)
                out.flush()
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
        finally:
            process.stdout.close()
            status = process.wait()
    return status


def last_lines(log: Path, n: int = ERROR_LINES) -> str:
    """The end of a log as a person would read it: each progress-bar line at its last state."""
    text = log.read_text(errors="replace") if log.exists() else ""
    lines = [line.rsplit("\r", 1)[-1] for line in text.split("\n")]
    return "\n".join([line for line in lines if line.strip()][-n:])


def progress(done: int, failed: int, left: int, durations: list[float]) -> str:
    """`[3/10 done, 1 failed, 6 left, ~12 min left]`; the estimate is the mean of this invocation's cells."""
    total = done + failed + left
    eta = ""
    if left and durations:
        eta = f", ~{_duration(left * sum(durations) / len(durations))} left"
    return f"[{done}/{total} done, {failed} failed, {left} left{eta}]"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def run_sweep(args: SweepArgs, overrides: list[str]) -> Path:
    study = load_study(args.study)
    cells = select_cells(study.cells, [t.strip() for t in (args.only or "").split(",") if t.strip()])
    root = sweep_dir(args, study, overrides)
    check_writable(root, "out", f"runs/sweeps/{study.name}")
    with locked(root):
        state = State(root, study, overrides)
        recipes = {cell.id: write_cell_recipe(root, study, cell) for cell in cells}
        for cell in cells:  # every recipe is checked before anything trains
            load_recipe(str(recipes[cell.id]), [*overrides, f"output.dir={cell_dir(root, cell) / RUN_DIR}"])
        if args.dry_run:
            for cell in cells:
                print(shlex.join(command(args, recipes[cell.id], overrides, cell_dir(root, cell) / RUN_DIR)))
            print(f"sweep: {len(cells)} cell recipe(s) written under {root / 'cells'}; nothing trained (dry_run=true)")
            return root
        _run_cells(args, overrides, root, state, cells, recipes)
    return root


def _run_cells(args, overrides, root: Path, state: State, cells: list[Cell], recipes: dict) -> None:
    finished = [c for c in cells if (cell_dir(root, c) / RUN_DIR / METRICS_FILE).exists()]
    for cell in finished:
        if state.cell(cell)["status"] != "done":
            state.update(cell, status="done")
    todo = [c for c in cells if c not in finished]
    print(
        f"sweep: study {state.data['study']['name']}, {len(cells)} cell(s) in {root}: "
        f"{len(finished)} finished already (skipped), {len(todo)} to run",
        flush=True,
    )
    done, failed, durations = len(finished), [], []
    for i, cell in enumerate(todo):
        run_dir = cell_dir(root, cell) / RUN_DIR
        log = cell_dir(root, cell) / LOG_FILE
        attempts = state.cell(cell)["attempts"] + 1
        previous = state.cell(cell)["status"]
        how = {"running": "resuming (it was interrupted)", "failed": "retrying (it failed before)"}.get(previous, "")
        print(f"sweep: cell {cell.id} {how or 'starting'}; log {log}", flush=True)
        state.update(cell, status="running", attempts=attempts, started=time.strftime("%Y-%m-%dT%H:%M:%S"))
        started = time.monotonic()
        try:
            status = run_cell(command(args, recipes[cell.id], overrides, run_dir), log)
        except KeyboardInterrupt:
            state.update(cell, status="interrupted", seconds=round(time.monotonic() - started, 1))
            raise HfTlError(
                f"sweep interrupted during cell {cell.id}. Finished cells are kept and its completed epochs are "
                "checkpointed: run the same command again to continue."
            ) from None
        seconds = round(time.monotonic() - started, 1)
        durations.append(seconds)
        if status == 0 and (run_dir / METRICS_FILE).exists():
            done += 1
            state.update(cell, status="done", seconds=seconds, returncode=0, error=None)
        else:
            failed.append(cell)
            state.update(cell, status="failed", seconds=seconds, returncode=status, error=last_lines(log))
            print(f"sweep: cell {cell.id} FAILED (exit status {status}); the end of {log}:", flush=True)
            print("  " + last_lines(log, 5).replace("\n", "\n  "), flush=True)
        print(f"sweep: {progress(done, len(failed), len(todo) - i - 1, durations)}", flush=True)
    if failed:
        raise HfTlError(
            f"{len(failed)} of {len(cells)} cell(s) failed: {', '.join(c.id for c in failed)}. Their logs are in "
            f"{root / 'cells'}/CELL/{LOG_FILE}; the same command retries them and keeps the finished ones."
        )
    print(f"sweep: all {len(cells)} cell(s) finished. Report: {shlex.join(['hf-tl', 'report', str(root)])}", flush=True)
