"""What `hf-tl report` does: the comparison table.

Reads each run folder's metrics.json (a sweep folder's cells, found through its sweep.json, or run
folders given directly) and writes, into out=:

    report.md    the table: Malpure et al.'s columns (one row per run), or Zhou et al.'s backbone x
                 dataset grid of linear probe vs full fine-tuning; notes on where a run differs from
                 the paper; the runs not finished; the devices the numbers were measured on
    report.csv   one row per run, every number unrounded (accuracies in %)
    accuracy_vs_parameters.png, accuracy_<dataset>.png

The paper's columns come from the study's figures file (recorded in sweep.json); plain run folders
have none. The table is printed too.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from statistics import mean

from hf_tl.errors import HfTlError, RecipeError, brief
from hf_tl.hub import plots
from hf_tl.runs.folder import METRICS_FILE, write_text, written_atomically
from hf_tl.runs.paths import check_output_folder
from hf_tl.studies.study import figure_for
from hf_tl.studies.sweep import STATE_FILE

REPORT_FILE = "report.md"
CSV_FILE = "report.csv"
SCATTER_FILE = "accuracy_vs_parameters.png"
# What the report reads from each run's metrics.json.
REQUIRED_METRICS = (
    ("model",),
    ("dataset",),
    ("parameters", "kind"),
    ("parameters", "trainable"),
    ("eval", "accuracy"),
    ("train", "accuracy"),
)
MALPURE_COLUMNS = (
    "Model",
    "Type",
    "Trainable parameters",
    "Validation accuracy (paper)",
    "Validation accuracy (this run)",
    "Train accuracy",
    "Training time per epoch",
    "Validation time per epoch",
)


@dataclass
class Row:
    """One run (or one study cell not finished yet). Accuracies in %, times in seconds per epoch."""

    model: str
    type: str
    dataset: str
    strategy: str
    status: str
    trainable_parameters: int | None = None
    paper_trainable_parameters: int | None = None
    val_accuracy: float | None = None
    paper_val_accuracy: float | None = None
    train_accuracy: float | None = None
    train_seconds_per_epoch: float | None = None
    eval_seconds_per_epoch: float | None = None
    run_dir: str = ""
    device: str = ""
    notes: tuple[str, ...] = ()


@dataclass
class Source:
    """What the paths given hold: rows, and the studies they come from."""

    rows: list[Row]
    studies: list[dict]


def collect(paths: list[Path]) -> Source:
    rows, studies = [], []
    for path in paths:
        if (path / STATE_FILE).is_file():
            state = read_json(path / STATE_FILE, "run the same `hf-tl sweep` command again to rewrite it")
            if not isinstance(state.get("study"), dict) or not isinstance(state.get("cells"), dict):
                raise HfTlError(
                    f"{path / STATE_FILE} lacks the study or its cells: it was edited or damaged. Run the same "
                    "`hf-tl sweep` command again to rewrite it."
                )
            studies.append(state["study"])
            rows += sweep_rows(path, state)
        elif (path / METRICS_FILE).is_file():
            rows.append(run_row(path))
        elif children := sorted(p for p in path.glob(f"*/{METRICS_FILE}")) if path.is_dir() else []:
            rows += [run_row(p.parent) for p in children]
        else:
            raise HfTlError(
                f"{path} is neither a sweep folder ({STATE_FILE}) nor a run folder ({METRICS_FILE}), "
                "nor a folder of run folders. Give the folder `hf-tl sweep` or `hf-tl train` wrote."
            )
    return Source(rows, studies)


def sweep_rows(root: Path, state: dict) -> list[Row]:
    """The sweep's cells in the study's order: backbone, then dataset, then strategy."""
    study = state["study"]
    order = {
        part: [e["key"] for e in study[section]]
        for part, section in (("backbone", "backbones"), ("dataset", "datasets"), ("strategy", "strategies"))
    }
    cells = sorted(
        state["cells"].values(),
        key=lambda c: tuple(_index(order[p], c[p]) for p in ("backbone", "dataset", "strategy")),
    )
    return [cell_row(root, study, cell) for cell in cells]


def _index(keys: list[str], key: str) -> int:
    return keys.index(key) if key in keys else len(keys)


def cell_row(root: Path, study: dict, cell: dict) -> Row:
    backbone = _entry(study["backbones"], cell["backbone"])
    dataset = _entry(study["datasets"], cell["dataset"])
    strategy = _entry(study["strategies"], cell["strategy"])
    figure = figure_for(study.get("figure_rows", []), cell["backbone"], cell["dataset"], cell["strategy"])
    run_dir = root / cell["run_dir"]
    notes = [backbone.get("note"), figure.get("note")]
    if backbone.get("paper_name") and backbone["paper_name"] != (backbone.get("name") or backbone["key"]):
        notes.insert(0, f"The paper's {backbone['paper_name']}.")
    row = Row(
        model=backbone.get("name") or backbone["key"],
        type=backbone.get("type") or "",
        dataset=dataset.get("name") or dataset["key"],
        strategy=strategy.get("name") or strategy["key"],
        status=cell["status"],
        paper_trainable_parameters=figure.get("paper_trainable_parameters"),
        paper_val_accuracy=figure.get("paper_val_accuracy"),
        run_dir=str(run_dir),
        notes=tuple(n for n in notes if n),
    )
    if (run_dir / METRICS_FILE).is_file():
        _fill_from_metrics(row, read_metrics(run_dir))
        row.status = "done"
    return row


def _entry(entries: list[dict], key: str) -> dict:
    return next((e for e in entries if e["key"] == key), {"key": key})


def run_row(run_dir: Path) -> Row:
    metrics = read_metrics(run_dir)
    row = Row(
        model=metrics["model"],
        type="",
        dataset=metrics["dataset"],
        strategy=metrics["parameters"]["kind"],
        status="done",
        run_dir=str(run_dir),
    )
    _fill_from_metrics(row, metrics)
    return row


def read_metrics(run_dir: Path) -> dict:
    """A run's metrics.json, checked to hold what the report reads."""
    path = run_dir / METRICS_FILE
    fix = "leave this folder out of the report, or train the run again into a new output.dir"
    metrics = read_json(path, fix)
    for keys in REQUIRED_METRICS:
        value = metrics
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        if value is None:
            raise HfTlError(
                f"{path} has no '{'.'.join(keys)}': it is not the metrics.json of a finished hf_tl run, or it was "
                f"edited or damaged. Restore it from a copy, or {fix}."
            )
    return metrics


def read_json(path: Path, fix: str) -> dict:
    """A JSON file hf_tl wrote, or an error naming it and `fix`: a damaged file is not a bug of the report."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise HfTlError(
            f"{path} cannot be read ({brief(e)}): it is damaged. Restore it from a copy, or {fix}."
        ) from None
    if not isinstance(data, dict):
        raise HfTlError(f"{path} holds a {type(data).__name__}, not an object: it is damaged. Restore it, or {fix}.")
    return data


def _fill_from_metrics(row: Row, metrics: dict) -> None:
    """This run's numbers, exactly as its metrics.json holds them (accuracies scaled to %)."""
    row.trainable_parameters = metrics["parameters"]["trainable"]
    row.val_accuracy = 100 * metrics["eval"]["accuracy"]
    row.train_accuracy = 100 * metrics["train"]["accuracy"] if metrics["train"] else None  # train_metrics=false
    timings = metrics.get("timings", {})
    row.train_seconds_per_epoch = _mean(timings.get("train_seconds_per_epoch"))
    row.eval_seconds_per_epoch = _mean(timings.get("eval_seconds_per_epoch"))
    device = metrics.get("device", {})
    row.device = f"{device.get('name') or device.get('type', '?')} x{device.get('num_processes', 1)}"


def _mean(values: list[float] | None) -> float | None:
    return mean(values) if values else None


def choose_layout(source: Source, asked: str | None) -> str:
    if asked:
        return asked
    layouts = {s.get("layout", "malpure") for s in source.studies}
    if len(layouts) > 1:
        raise RecipeError(
            f"the sweeps given use different layouts ({', '.join(sorted(layouts))}); "
            "pick one with layout=malpure or layout=zhou."
        )
    return layouts.pop() if layouts else "malpure"


def markdown_table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(cells) + " |" for cells in body])


def _percent(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def _paper(value: float | int | None) -> str:
    return "" if value is None else f"{value:g}"


def _count(value: int | None) -> str:
    return "" if value is None else f"{value:,}"


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.1f} s"


def _outcome(row: Row) -> str:
    return _percent(row.val_accuracy) if row.val_accuracy is not None else f"({row.status})"


def malpure_table(rows: list[Row]) -> str:
    """Malpure et al.'s Table 1 columns; Dataset and Strategy columns only when the runs differ in them."""
    extra = [name for name, attr in (("Dataset", "dataset"), ("Strategy", "strategy")) if _varies(rows, attr)]
    header = list(MALPURE_COLUMNS[:2]) + extra + list(MALPURE_COLUMNS[2:])
    body = [
        [row.model, row.type]
        + [getattr(row, name.lower()) for name in extra]
        + [
            _count(row.trainable_parameters),
            _paper(row.paper_val_accuracy),
            _outcome(row),
            _percent(row.train_accuracy),
            _seconds(row.train_seconds_per_epoch),
            _seconds(row.eval_seconds_per_epoch),
        ]
        for row in rows
    ]
    return markdown_table(header, body)


def _varies(rows: list[Row], attr: str) -> bool:
    return len({getattr(r, attr) for r in rows}) > 1


def zhou_table(rows: list[Row]) -> str:
    """Backbones down, each dataset's strategies across: 'this run (paper)' accuracies in %."""
    datasets, strategies, models = _ordered(rows, "dataset"), _ordered(rows, "strategy"), _ordered(rows, "model")
    header = ["Backbone", "Type"] + [f"{d}: {s}" for d in datasets for s in strategies]
    body = []
    for model in models:
        own = [r for r in rows if r.model == model]
        line = [model, own[0].type]
        for dataset in datasets:
            for strategy in strategies:
                row = next((r for r in own if (r.dataset, r.strategy) == (dataset, strategy)), None)
                line.append(_zhou_cell(row))
        body.append(line)
    return markdown_table(header, body)


def _zhou_cell(row: Row | None) -> str:
    if row is None:
        return ""
    paper = f" (paper {_paper(row.paper_val_accuracy)})" if row.paper_val_accuracy is not None else ""
    return _outcome(row) + paper


def _ordered(rows: list[Row], attr: str) -> list[str]:
    return list(dict.fromkeys(getattr(r, attr) for r in rows))


def notes_section(rows: list[Row]) -> str:
    lines = []
    for row in rows:
        lines += [f"- **{row.model}**: {note}" for note in dict.fromkeys(row.notes)]
    unfinished = [r for r in rows if r.val_accuracy is None]
    if unfinished:
        lines.append("")
        lines.append("Not finished (re-run the sweep to continue them; each cell's train.log says why):")
        lines += [f"- {r.model} / {r.dataset} / {r.strategy}: {r.status} ({r.run_dir})" for r in unfinished]
    devices = sorted({r.device for r in rows if r.device})
    if devices:
        lines.append("")
        lines.append(f"Measured on: {', '.join(devices)} (device, processes), as each run's metrics.json records.")
    return "\n".join(lines).strip("\n")


def _unique_notes(rows: list[Row]) -> list[Row]:
    """Each note once: a backbone's note is not repeated for every dataset and strategy it ran."""
    seen: set[tuple[str, str]] = set()
    out = []
    for row in rows:
        fresh = tuple(n for n in row.notes if (row.model, n) not in seen)
        seen.update((row.model, n) for n in row.notes)
        out.append(Row(**{**asdict(row), "notes": fresh}))
    return out


def write_csv(rows: list[Row], path: Path) -> None:
    buffer = io.StringIO()
    names = [f.name for f in fields(Row) if f.name != "notes"]
    writer = csv.DictWriter(buffer, fieldnames=names, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(asdict(row) for row in rows)
    write_text(path, buffer.getvalue())


def write_plots(rows: list[Row], out: Path, title: str) -> list[Path]:
    done = [r for r in rows if r.val_accuracy is not None]
    varying = [attr for attr in ("dataset", "strategy") if _varies(done, attr)]
    points = [
        {
            "label": r.model + "".join(f", {getattr(r, attr)}" for attr in varying),
            "type": r.type,
            "parameters": r.trainable_parameters,
            "accuracy": r.val_accuracy,
            "paper_parameters": r.paper_trainable_parameters,
            "paper_accuracy": r.paper_val_accuracy,
        }
        for r in done
    ]
    written = [plots.accuracy_vs_parameters(points, out / SCATTER_FILE, title)]
    for dataset in _ordered(rows, "dataset"):
        own = [r for r in rows if r.dataset == dataset]
        models, strategies = _ordered(own, "model"), _ordered(own, "strategy")

        def values(strategy: str, attr: str, own=own, models=models) -> list[float | None]:
            pick = {r.model: getattr(r, attr) for r in own if r.strategy == strategy}
            return [pick.get(m) for m in models]

        written.append(
            plots.strategy_bars(
                models,
                {s: values(s, "val_accuracy") for s in strategies},
                out / f"accuracy_{_file_name(dataset)}.png",
                title=f"{dataset}: validation accuracy by backbone and strategy",
                paper={s: values(s, "paper_val_accuracy") for s in strategies},
            )
        )
    return written


def _file_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "dataset"


def build_report(paths: list[Path], out: Path, layout: str | None = None) -> str:
    """Write report.md, report.csv and the plots into `out`; return the Markdown."""
    check_output_folder(out, "out")
    source = collect(paths)
    if not source.rows:
        raise HfTlError(f"no runs found in {', '.join(map(str, paths))}.")
    layout = choose_layout(source, layout)
    rows = _unique_notes(source.rows)
    title = "; ".join(dict.fromkeys(s["title"] for s in source.studies)) or "hf_tl runs"
    papers = "\n".join(f"Paper figures: {s['paper']}" for s in source.studies if s.get("figure_rows"))
    table = malpure_table(rows) if layout == "malpure" else zhou_table(rows)
    legend = (
        "Accuracies in %, on each run's validation split; times are means over epochs."
        if layout == "malpure"
        else "Validation accuracy in % of this run, the paper's in brackets where the study's figures give it."
    )
    text = "\n\n".join(p for p in (f"# {title}", papers, legend, table, notes_section(rows)) if p) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    write_csv(source.rows, out / CSV_FILE)
    write_plots(source.rows, out, title)
    with written_atomically(out / REPORT_FILE) as tmp:  # last: a report.md means the whole report is written
        tmp.write_text(text)
    return text
