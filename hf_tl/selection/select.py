"""What `hf-tl select` does: rank candidate backbones on a dataset by their frozen features, in minutes.

For each candidate, one after another: its pre-head features over the training and validation images
(`hf_tl.selection.extract`, through the feature store a `linear_probe` run uses), three scores on them
(`hf_tl.selection.scores`: linear-probe and k-NN validation accuracy, LogME) and its costs. Each candidate's
row is written to OUT/candidates/ as soon as it is done, so a killed `select` resumes where it stopped: a rerun
with the same settings skips finished candidates and tries failed ones again. A candidate that fails (it cannot
load, its input does not fit, out of memory) gets a row with the reason, and the ranking goes on.

    OUT/ranking.csv, ranking.md   one row per candidate, every score and cost, ranked by probe accuracy
    OUT/ranking.png               probe accuracy against GFLOPs per image, the Pareto front drawn
    OUT/study.yaml                the top_k as a study: `hf-tl sweep study=OUT/study.yaml` runs it as written
    OUT/sweep/, OUT/report/       with finetune=true: that sweep, its report, and the fine-tuned accuracies
                                  beside the quick scores in the ranking
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shlex
import time
from pathlib import Path

import torch

from hf_tl.config.commands import SelectArgs, SweepArgs
from hf_tl.config.recipe import DataSection
from hf_tl.data.datasets import load_splits
from hf_tl.device import default_device, no_accelerator
from hf_tl.errors import HfTlError, RecipeError, brief, scrub
from hf_tl.progress import library_bars
from hf_tl.runs.folder import METRICS_FILE, check_writable, write_json
from hf_tl.runs.paths import slug
from hf_tl.selection import ranking
from hf_tl.selection.extract import extract, free_memory
from hf_tl.selection.ranking import located
from hf_tl.selection.recipe import data_section
from hf_tl.selection.scores import score_all
from hf_tl.selection.zoo import Candidate, candidates_for
from hf_tl.studies.report import build_report
from hf_tl.studies.study import load_study
from hf_tl.studies.sweep import RUN_DIR, cell_dir, progress, run_sweep

CANDIDATES_DIR = "candidates"
SWEEP_DIR, REPORT_DIR = "sweep", "report"
OUTPUT_FILES = (ranking.RANKING_CSV, ranking.RANKING_MD, ranking.RANKING_PNG, ranking.STUDY_FILE)
SETTINGS = (  # what a finished candidate's row depends on: a rerun with other values scores it again
    "dataset",
    "config_name",
    "eval_split",
    "val_fraction",
    "image_column",
    "label_column",
    "max_train_samples",
    "max_eval_samples",
    "precision",
    "seed",
    "on_bad_image",
)


def output_folder(args: SelectArgs) -> Path:
    return Path(args.out) if args.out else Path("selections") / dataset_key(args.dataset)


def dataset_key(dataset: str) -> str:
    """A local folder by its own name, a Hub id as owner--name: the default folder and the study's key."""
    path = Path(dataset).expanduser()
    return slug(path.resolve().name if path.exists() else dataset)


def run_select(args: SelectArgs, overrides: list[str] = ()) -> Path:
    """Score every candidate not finished already, then write the ranking, its plot and the top-k study.
    `overrides` (training.*) go to the fine-tunings: finetune=true's, and the sweep command printed."""
    with library_bars():  # datasets' and the Hub's bars only where hf_tl's would show
        candidates = candidates_for(args.models, args.zoo)
        load_splits(data_section(args), args.seed)  # a missing dataset or column fails once, before any model loads
        folder = output_folder(args)
        check_writable(folder, "out", "selections/mine")
        if args.precision != "fp32" and no_accelerator():
            print(f"select: precision={args.precision} changes nothing on a CPU: features are computed in fp32 there")
        try:
            return write_outputs(score_all_candidates(candidates, args, folder), folder, args, list(overrides))
        except KeyboardInterrupt:
            kept = folder / CANDIDATES_DIR
            print(f"select: interrupted; finished candidates are kept in {kept}: run the same command again to go on")
            raise


def score_all_candidates(candidates: list[Candidate], args: SelectArgs, folder: Path) -> list[dict]:
    """One row per candidate, in order: from an earlier run with the same settings, or scored now and kept."""
    rows: list[dict] = []
    durations: list[float] = []
    for i, candidate in enumerate(candidates):
        path = folder / CANDIDATES_DIR / row_file(candidate.id)
        settings = {**{key: getattr(args, key) for key in SETTINGS}, "model": fingerprint(candidate.id)}
        row = finished_row(path, settings)
        skipped = row is not None
        if row is None:
            print(f"select: {candidate.id} ({i + 1} of {len(candidates)}): extracting features", flush=True)
            started = time.perf_counter()
            row = score_candidate(candidate, args)
            write_json(path, {**row, "settings": settings})
            durations.append(time.perf_counter() - started)
        rows.append(row)
        failed = sum(r["status"] == "failed" for r in rows)
        counts = progress(len(rows) - failed, failed, len(candidates) - len(rows), durations)
        print(f"select: {described(row, skipped)} {counts}", flush=True)
    return rows


def row_file(model: str) -> str:
    """The candidate's file: readable, and distinct for two folders whose last parts are alike."""
    return f"{slug(model)}-{hashlib.sha256(located(model).encode()).hexdigest()[:8]}.json"


def fingerprint(model: str) -> dict:
    """The candidate as its result depends on it: the id, and for a local folder its files' sizes and times,
    so a checkpoint trained again in the same folder is scored again."""
    path = Path(model).expanduser()
    if not path.is_dir():
        return {"id": model}
    files = sorted(p for p in path.iterdir() if p.is_file())
    return {"id": located(model), "files": {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in files}}


def finished_row(path: Path, settings: dict) -> dict | None:
    """A candidate's row from an earlier run with the same settings, if it finished; else None (score it)."""
    try:
        row = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if row.pop("settings", None) != settings or row.get("status") != "ok":
        return None
    return row


def score_candidate(candidate: Candidate, args: SelectArgs) -> dict:
    """The candidate's scores and costs; a row with the reason where it fails, so the ranking goes on."""
    row = {"model": candidate.id, "family": candidate.family, "status": "ok", "reason": None}
    try:
        features = extract(candidate.id, args)
        tensors = (features.train, features.train_labels, features.eval, features.eval_labels)
        scores = score_all(*(t.to(default_device()) for t in tensors), seed=args.seed)  # fitted on the accelerator
    except KeyboardInterrupt:
        raise
    except Exception as error:  # noqa: BLE001 - any candidate may fail in its own way; the others go on
        reason = failure_reason(error, args)
    else:
        reason = None
    if reason is not None:
        free_memory()  # outside the handler: the traceback no longer holds the candidate's frames
        return {**row, "status": "failed", "reason": reason}
    family = features.costs.pop("family")
    return {**row, "family": candidate.family or family, **scores, **features.costs}


def failure_reason(error: BaseException, args: SelectArgs) -> str:
    """One line: hf_tl's own message as it is; out of memory with the fix; anything else with its type."""
    if isinstance(error, torch.OutOfMemoryError):
        return f"out of memory at batch_size={args.batch_size}; try a smaller batch_size"
    if isinstance(error, (HfTlError, RecipeError)):
        return scrub(brief(error))
    return scrub(f"{type(error).__name__}: {brief(error)}")


def described(row: dict, skipped: bool) -> str:
    if row["status"] != "ok":
        return f"{row['model']} failed: {row['reason']}"
    earlier = " (finished earlier: skipped)" if skipped else ""
    return (
        f"{row['model']}: probe {row['probe_accuracy']:.3f}, k-NN {row['knn_accuracy']:.3f}, "
        f"LogME {row['logme']:.3f}, {row['gflops']:.3g} GFLOPs/image{earlier}"
    )


def write_outputs(rows: list[dict], folder: Path, args: SelectArgs, overrides: list[str]) -> Path:
    """The ranking files, the top-k study; with finetune=true, its sweep and the fine-tuned accuracies."""
    title = f"{dataset_key(args.dataset)}: {len(rows)} candidate(s)"
    ranking.write_ranking(rows, folder, title)
    if not any(row["status"] == "ok" for row in rows):
        raise HfTlError(f"no candidate finished; why each failed is in {folder / ranking.RANKING_MD}.")
    study = ranking.write_study(rows, folder, dataset_entry(args), args.top_k)
    sweep = sweep_folder(study, overrides)
    if args.finetune:
        rows = with_finetuned(rows, finetune(study, sweep, overrides))
        ranking.write_ranking(rows, folder, title)
    print((folder / ranking.RANKING_MD).read_text(), end="")
    written = [folder / name for name in OUTPUT_FILES] + ([sweep, folder / REPORT_DIR] if args.finetune else [])
    print(f"select: wrote {', '.join(map(str, written))}")
    if not args.finetune:
        top = min(args.top_k, sum(row["status"] == "ok" for row in rows))
        command = shlex.join(["hf-tl", "sweep", f"study={study}", f"out={sweep}", *overrides])
        print(f"fine-tune the top {top} (or run select again with finetune=true): {command}")
    return folder


def sweep_folder(study: Path, overrides: list[str]) -> Path:
    """The study's own sweep folder: another top_k or other overrides get another, so no report mixes them."""
    digest = hashlib.sha256("\n".join([study.read_text(), *overrides]).encode()).hexdigest()[:8]
    return study.parent / f"{SWEEP_DIR}-{digest}"


def dataset_entry(args: SelectArgs) -> dict:
    """The study's dataset: the same data and split `select` read (a local folder by its absolute path)."""
    path = Path(args.dataset).expanduser()
    dataset = str(path.resolve()) if path.exists() else args.dataset
    recipe: dict = {}
    data = changed(data_section(args), DataSection(dataset=args.dataset), skip=("dataset", "augment"))
    if data:
        recipe["data"] = data
    recipe["training"] = {"seed": args.seed}  # it carves the validation split: the sweep's is select's
    key = dataset_key(args.dataset)
    return {"key": key, "name": args.dataset if dataset == args.dataset else key, "dataset": dataset, "recipe": recipe}


def changed(section: object, default: object, skip: tuple[str, ...]) -> dict:
    """The fields of a recipe section that differ from the default section's."""
    return {
        f.name: getattr(section, f.name)
        for f in dataclasses.fields(section)
        if f.name not in skip and getattr(section, f.name) != getattr(default, f.name)
    }


def finetune(study: Path, sweep: Path, overrides: list[str]) -> Path:
    """Run the top-k study with `hf-tl sweep` into `sweep`, then `hf-tl report` on it beside the ranking."""
    run_sweep(SweepArgs(study=str(study), out=str(sweep)), overrides)
    print(build_report([sweep], study.parent / REPORT_DIR, None))
    return sweep


def with_finetuned(rows: list[dict], sweep: Path) -> list[dict]:
    """Each row with `<strategy>_accuracy` from the sweep's finished cells: fine-tuned beside the quick scores."""
    study = load_study(str(sweep.parent / ranking.STUDY_FILE))
    accuracy: dict[str, dict[str, float]] = {}
    for cell in study.cells:
        metrics = cell_dir(sweep, cell) / RUN_DIR / METRICS_FILE
        if metrics.exists():
            value = json.loads(metrics.read_text())["eval"]["accuracy"]
            accuracy.setdefault(cell.backbone.model, {})[f"{cell.strategy.key}_accuracy"] = value
    return [{**row, **accuracy.get(located(row["model"]), {})} for row in rows]
