"""What `hf-tl select` writes: the candidates ranked, a plot of accuracy against compute, and a study to fine-tune
the best of them.

    ranking.csv   one row per candidate in rank order, every number unrounded; failed ones last, with the reason
    ranking.md    the same as a table a person reads
    ranking.png   linear-probe accuracy against forward GFLOPs per image, the Pareto front drawn as a step line;
                  with no finished candidate (or none with GFLOPs) the PNG says so instead of plotting nothing
    study.yaml    the top_k finished candidates x the dataset x {last_block, full}: `hf-tl sweep study=...`

A row is a dict: model, family, status ('ok' or 'failed'), reason, the three scores, the costs, feature_dim,
num_train, num_eval, and any fine-tuned accuracies (keys ending in `_accuracy`). Every file is written through a
temporary file and a rename, so a crash never leaves half of one. matplotlib is imported only to draw.
"""

from __future__ import annotations

import csv
import io
import math
import re
import shlex
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from hf_tl.errors import HfTlError, RecipeError
from hf_tl.runs.folder import write_text
from hf_tl.studies.study import TYPES

RANKING_CSV, RANKING_MD, RANKING_PNG, STUDY_FILE = "ranking.csv", "ranking.md", "ranking.png", "study.yaml"
SCORE_COLUMNS = ("probe_accuracy", "knn_accuracy", "logme")
COST_COLUMNS = ("params", "gflops", "images_per_second", "extract_seconds")
INFO_COLUMNS = ("feature_dim", "num_train", "num_eval")
OK = "ok"
# The study's strategies, at the learning rates of the shipped studies: malpure2021's last block, zhou2021's full.
STRATEGIES = (
    {
        "key": "last_block",
        "name": "last block",
        "recipe": {"strategy": {"kind": "last_block"}, "training": {"lr": 1e-4}},
    },
    {
        "key": "full",
        "name": "full fine-tuning",
        "recipe": {"strategy": {"kind": "full"}, "training": {"lr": 3e-5, "weight_decay": 0.05}},
    },
)
STUDY_BASE = {"training": {"epochs": 10, "batch_size": 64, "scheduler": "cosine", "warmup_ratio": 0.05}}  # zhou2021's
_KEY_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")


def ranked(rows: list[dict]) -> list[dict]:
    """Finished rows (status 'ok') by probe_accuracy descending (ties: logme, then fewer gflops), then failed rows
    in input order. A missing (or NaN) score or cost sorts after every known one."""
    finished = [r for r in rows if r.get("status") == OK]
    failed = [r for r in rows if r.get("status") != OK]
    return sorted(finished, key=_rank_key) + failed


def _rank_key(row: dict) -> tuple:
    probe, logme, gflops = (_number(row.get(k)) for k in ("probe_accuracy", "logme", "gflops"))
    return (probe is None, -(probe or 0.0), logme is None, -(logme or 0.0), gflops is None, gflops or 0.0)


def _number(value: Any) -> float | None:
    """A score as a float, None where it is missing or NaN."""
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the (gflops, accuracy) points no other point dominates (as cheap or cheaper and as accurate or
    more, strictly better in one), in order of increasing gflops: the cheapest way to each accuracy."""
    front = [
        i
        for i, (cost, accuracy) in enumerate(points)
        if not any(c <= cost and a >= accuracy and (c < cost or a > accuracy) for c, a in points)
    ]
    return sorted(front, key=lambda i: (points[i][0], points[i][1], i))


def fine_tuned_columns(rows: list[dict]) -> list[str]:
    """Accuracies beyond the scores (e.g. last_block_accuracy), in the order they first appear."""
    keys = [k for row in rows for k in row if k.endswith("_accuracy") and k not in SCORE_COLUMNS]
    return list(dict.fromkeys(keys))


def csv_columns(rows: list[dict]) -> list[str]:
    return [
        "rank",
        "model",
        "family",
        "status",
        *SCORE_COLUMNS,
        *fine_tuned_columns(rows),
        *COST_COLUMNS,
        *INFO_COLUMNS,
        "reason",
    ]


def write_ranking(rows: list[dict], folder: Path, title: str) -> list[Path]:
    """Writes folder/ranking.csv, ranking.md and ranking.png, each atomically; returns their paths."""
    folder = Path(folder)
    order = ranked(rows)
    paths = [folder / RANKING_CSV, folder / RANKING_MD, folder / RANKING_PNG]
    write_text(paths[0], ranking_csv(order))
    write_text(paths[1], ranking_markdown(order, title))
    write_plot(order, paths[2], title)
    return paths


def ranking_csv(order: list[dict]) -> str:
    """Rows already in rank order; numbers as Python writes them (unrounded), None as an empty cell."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=csv_columns(order), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for rank, row in _with_ranks(order):
        writer.writerow({k: "" if v is None else v for k, v in {**row, "rank": rank}.items()})
    return buffer.getvalue()


def _with_ranks(order: list[dict]) -> list[tuple[int | None, dict]]:
    ranks = iter(range(1, len(order) + 1))
    return [(next(ranks) if row.get("status") == OK else None, row) for row in order]


def ranking_markdown(order: list[dict], title: str) -> str:
    tuned = fine_tuned_columns(order)
    failed = any(row.get("status") != OK for row in order)
    header = ["Rank", "Model", "Family", "Probe acc.", "k-NN acc.", "LogME", "Params", "GFLOPs", "Images/s"]
    header += ["Extract s", *(f"{c.removesuffix('_accuracy')} acc." for c in tuned), *(["Note"] if failed else [])]
    body = []
    for rank, row in _with_ranks(order):
        cells = [str(rank or ""), row.get("model", ""), row.get("family") or ""]
        cells += [_fixed(row.get(k)) for k in SCORE_COLUMNS]
        cells += [_count(row.get("params")), _gflops(row.get("gflops")), _rate(row.get("images_per_second"))]
        cells += [_fixed(row.get("extract_seconds"), 1), *(_fixed(row.get(c)) for c in tuned)]
        if failed:
            cells.append("" if rank else f"failed: {row.get('reason') or 'no reason given'}")
        body.append(cells)
    finished = len(order) - sum(rank is None for rank, _ in _with_ranks(order))
    lines = [
        f"# Backbone ranking: {_cell(title)}",
        "",
        f"{finished} of {len(order)} candidate(s) finished, ranked by linear-probe accuracy on frozen features "
        "(ties: LogME, then fewer GFLOPs). Accuracies are fractions of the evaluation images.",
        "",
        _table(header, body),
    ]
    return "\n".join(lines) + "\n"


def _table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(_cell(c) for c in cells) + " |" for cells in body])


def _cell(text: str) -> str:
    """One line, and a '|' in a model path or a reason cannot split the table's cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _fixed(value: Any, places: int = 3) -> str:
    number = _number(value)
    return "" if number is None else f"{number:.{places}f}"


def _count(value: int | None) -> str:
    """1.2M, 85.8M, 1.10B: parameter counts as papers give them."""
    if value is None:
        return ""
    for size, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if value >= size:
            return f"{value / size:.{2 if unit == 'B' else 1}f}{unit}"
    return str(value)


def _gflops(value: float | None) -> str:
    number = _number(value)
    if number is None:
        return ""
    return f"{number:.1f}" if number >= 1 else f"{number:.3g}"


def _rate(value: float | None) -> str:
    number = _number(value)
    if number is None:
        return ""
    return f"{number:.0f}" if number >= 100 else f"{number:.1f}"


def short_label(model: str) -> str:
    """A model's last path component: google/vit-base-patch16-224 is vit-base-patch16-224."""
    return str(model).rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1] or str(model)


def write_plot(order: list[dict], path: Path, title: str) -> Path:
    """Probe accuracy against GFLOPs (log axis), each finished model labelled, the Pareto front as a step line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hf_tl.hub.plots import plain, save_figure

    plotted = [r for r in order if r.get("status") == OK and _plottable(r)]
    fig, ax = plt.subplots(figsize=(8, 5.5), layout="constrained")
    if plotted:
        _draw_points(ax, plotted, plain)
    else:
        finished = any(r.get("status") == OK for r in order)
        message = "no finished candidate has both GFLOPs and a probe accuracy" if finished else "no candidate finished"
        ax.text(0.5, 0.5, f"{message}: nothing to plot", ha="center", va="center", transform=ax.transAxes)
        ax.set_xticks([])
        ax.set_yticks([])
    ax.set_xlabel("forward GFLOPs per image (log scale)")
    ax.set_ylabel("linear-probe accuracy (fraction of evaluation images)")
    ax.set_title(plain(f"{title}: accuracy vs. compute"), fontsize=10, wrap=True)
    return save_figure(fig, path)


def _plottable(row: dict) -> bool:
    gflops, probe = _number(row.get("gflops")), _number(row.get("probe_accuracy"))
    return gflops is not None and gflops > 0 and probe is not None


def _draw_points(ax, rows: list[dict], plain) -> None:
    points = [(float(r["gflops"]), float(r["probe_accuracy"])) for r in rows]
    front = pareto_front(points)
    ax.set_xscale("log")
    ax.scatter(*zip(*points, strict=True), color="tab:gray", s=30, zorder=2, label="candidate")
    best = [points[i] for i in front]
    ax.step(*zip(*best, strict=True), where="post", color="tab:red", linewidth=1.2, zorder=1)
    ax.scatter(*zip(*best, strict=True), color="tab:red", s=70, edgecolor="black", zorder=3, label="Pareto front")
    for row, (x, y) in zip(rows, points, strict=True):
        label = short_label(row.get("model", ""))
        family = str(row.get("family") or "")
        label = plain(label if family.lower() in label.lower() else f"{label} ({family})")
        ax.annotate(label, (x, y), xytext=(4, 4), textcoords="offset points", fontsize=8)
    ax.margins(x=0.2, y=0.12)  # room for the labels of the outermost points
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="best")


def write_study(rows: list[dict], folder: Path, dataset: dict, top_k: int) -> Path:
    """folder/study.yaml: a study of the top_k finished rows on `dataset`, strategies last_block and full, that
    `hf-tl sweep study=folder/study.yaml` runs as written."""
    if top_k < 1:
        raise RecipeError(f"top_k={top_k}: it must be at least 1 (how many of the best candidates to fine-tune).")
    finished = [r for r in ranked(rows) if r.get("status") == OK]
    if not finished:
        raise HfTlError(
            f"no candidate finished ({len(rows)} tried, all failed), so there is no study to write; "
            "see the reasons in ranking.md and fix them, or choose other candidates."
        )
    chosen = finished[:top_k]
    path = Path(folder) / STUDY_FILE
    study = {
        "title": f"The top {len(chosen)} backbones of hf-tl select on {dataset['name']}, last block and full",
        "paper": "None: the candidates hf-tl select ranked highest by linear-probe accuracy on frozen features.",
        "layout": "zhou",
        "base": STUDY_BASE,
        "datasets": [_dataset_entry(dataset)],
        "strategies": list(STRATEGIES),
        "backbones": _backbone_entries(chosen),
    }
    text = _study_header(path, len(chosen), len(finished), dataset["name"]) + _dump(study)
    write_text(path, text)
    return path


def _dataset_entry(dataset: dict) -> dict:
    entry = {"key": _key(dataset["key"]), "name": str(dataset["name"]), "dataset": located(dataset["dataset"])}
    return {**entry, "recipe": _plain(dataset.get("recipe") or {})}


def _backbone_entries(chosen: list[dict]) -> list[dict]:
    entries, keys = [], set()
    for rank, row in enumerate(chosen, start=1):
        model = located(row["model"])
        key = _unique_key(row["model"], keys)
        keys.add(key)
        entries.append(
            {
                "key": key,
                "name": short_label(row["model"]),
                "type": backbone_type(row),
                "model": model,
                "note": _scores_note(rank, row),
            }
        )
    return entries


def backbone_type(row: dict) -> str:
    """CNN or transformer, as `select` found on the loaded model (`hf_tl.models.families.convolutional`); a row
    without one counts as a transformer: the type only colours the sweep report."""
    return row["type"] if row.get("type") in TYPES else "transformer"


def _unique_key(model: str, taken: set[str]) -> str:
    """A study key from the model's last path component, else its whole id, else numbered: unique and valid."""
    for candidate in (_key(short_label(model)), _key(model)):
        if candidate not in taken:
            return candidate
    n = 2
    while f"{_key(model)}-{n}" in taken:
        n += 1
    return f"{_key(model)}-{n}"


def _key(text: str) -> str:
    """Letters, digits, '.', '-' and '_' only, starting with a letter or digit, no '__' (the cell separator)."""
    key = re.sub(r"_{2,}", "_", _KEY_CHARS.sub("_", str(text)))
    return key.lstrip("_.-") or "model"


def located(model: str) -> str:
    """A local folder as an absolute path, so the study runs from any directory; a Hub id as it is."""
    text = str(model)
    path = Path(text).expanduser()
    return str(path.resolve()) if path.exists() else text


def _plain(node: Any) -> Any:
    """Recipe overrides as plain dicts and lists (an OmegaConf node given in), for the YAML dumper."""
    return OmegaConf.to_container(node) if OmegaConf.is_config(node) else node


def _scores_note(rank: int, row: dict) -> str:
    known = [name for name in SCORE_COLUMNS if _number(row.get(name)) is not None]
    scores = ", ".join(f"{name} {_fixed(row.get(name))}" for name in known)
    return f"Rank {rank} of hf-tl select ({row.get('family') or 'family unknown'}): {scores or 'no scores'}."


def _study_header(path: Path, chosen: int, finished: int, dataset_name: str) -> str:
    study = shlex.quote(str(path.resolve()))
    on_one_line = " ".join(str(dataset_name).split())  # a comment ends at a line break
    return (
        f"# Written by hf-tl select: the top {chosen} of {finished} finished candidate(s) on {on_one_line},\n"
        f"# ranked by linear-probe accuracy on frozen features ({RANKING_MD} beside this file), each fine-tuned\n"
        "# two ways: the last block (lr 1e-4, as malpure2021) and fully (lr 3e-5, as zhou2021), settings made for\n"
        "# ImageNet-size backbones; give small or barely pretrained ones their own, e.g. for the miniature zoo\n"
        f"#   hf-tl sweep study={study} training.lr=1e-3 training.epochs=20   (select prints it with its out=)\n"
        "#   hf-tl report runs/sweeps/study   (the sweep's folder when no out= is given)\n"
    )


def _dump(data: dict) -> str:
    return yaml.dump(data, Dumper=_StudyDumper, sort_keys=False, allow_unicode=True, width=120)


class _StudyDumper(yaml.SafeDumper):
    """PyYAML's safe dumper, quoting every string that OmegaConf's loader would read as something else: it reads
    '1e-3' as a float where PyYAML's reads a string, so a model folder named like that would not come back.
    No anchors either: a person edits this file."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    if "${" in value:  # OmegaConf would read an interpolation, which read_mapping refuses
        raise HfTlError(f"'{value}' contains '${{', which a study file cannot hold; rename it (or move the folder).")
    read = OmegaConf.create(yaml.safe_dump({"v": value}, allow_unicode=True, width=1_000_000))["v"]
    reads_back = isinstance(read, str) and read == value
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=None if reads_back else '"')


_StudyDumper.add_representer(str, _represent_str)
