"""Every checkpoint the shipped recipes and studies name, at its real architecture and input size, offline.

The published configs under tests/fixtures/hub/ (SOURCES.md says where each value comes from) are laid out as an
HF cache (conftest.real_size_hub), so `model.name=<Hub id>` resolves through transformers' own code; the weights
are random (`model.weights=none`). Every command is the real CLI. Each training run prints its wall time and peak
memory; the module ends with a table of them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, load_from_disk
from PIL import Image as PILImage

from hf_tl.config.recipe import available_recipes, load_recipe
from hf_tl.studies.study import Cell, Study, figure_for, load_study
from hf_tl.studies.sweep import write_cell_recipe

pytestmark = pytest.mark.slow

STUDIES = ("malpure2021", "malpure2021_repo", "zhou2021")
CLASSES = ["airplane", "automobile", "bird", "cat"]
TIMEOUT = 3600
# Run last, biggest last: a failure of a small model shows before the big ones take their time.
BIGGEST = (
    "google/vit-large-patch16-224-in21k",
    "timm/tf_efficientnetv2_l.in1k",
    "timm/resnetv2_101x3_bit.goog_in21k",
    "timm/dm_nfnet_f6.dm_in1k",
    "timm/resnetv2_152x4_bit.goog_in21k",
)
# Full fine-tuning of BiT R-152x4 (936 M parameters) needs 15 GB for weights, gradients and Adam's two moments
# before any activation: over the 24 GB of the CI machine. Its linear probe runs at real size; BiT R-101x3 trains fully.
TOO_BIG_FOR_FULL = {
    "timm/resnetv2_152x4_bit.goog_in21k": "full fine-tuning of 936 M parameters needs 15 GB for weights, gradients "
    "and Adam's moments alone, over CI's 24 GB with the rest; its linear probe runs, and BiT R-101x3 trains fully"
}


@dataclass(frozen=True)
class Job:
    """A shipped recipe, or a study cell whose recipe file is written when the job runs."""

    id: str
    recipe: str
    model: str
    study: str | None = None
    cell: str | None = None
    skip: str = ""  # why this job does not run

    def recipe_argument(self, folder: Path) -> str:
        if self.study is None:
            return self.recipe
        study = load_study(self.study)
        (cell,) = [c for c in study.cells if c.id == self.cell]
        return str(write_cell_recipe(folder, study, cell))


def study_cells() -> list[tuple[Study, Cell]]:
    return [(study, cell) for name in STUDIES for study in [load_study(name)] for cell in study.cells]


def without_data(study: Study, cell: Cell) -> str:
    """A cell's recipe without its data section: cells equal in this count and train the same."""
    recipe = cell.recipe(study.spec.base)
    recipe.pop("data", None)
    return json.dumps(recipe, sort_keys=True)


def recipe_jobs() -> list[Job]:
    return [Job(f"recipe-{name}", name, load_recipe(name).model.name) for name in available_recipes()]


def count_jobs() -> list[Job]:
    """Every shipped recipe, and every study cell up to its dataset (params reads no data)."""
    jobs, seen = recipe_jobs(), set()
    for study, cell in study_cells():
        if (key := without_data(study, cell)) not in seen:
            seen.add(key)
            name = f"{cell.backbone.key}__{cell.strategy.key}"
            jobs.append(Job(f"{study.name}-{name}", "", cell.backbone.model, study.name, cell.id))
    return jobs


def training_jobs() -> list[Job]:
    """Every shipped recipe, and each distinct (backbone, strategy) of the studies once, biggest models last."""
    jobs, seen = recipe_jobs(), set()
    for study, cell in study_cells():
        if (cell.backbone.model, cell.strategy.key) in seen:
            continue
        seen.add((cell.backbone.model, cell.strategy.key))
        kind = cell.recipe(study.spec.base)["strategy"]["kind"]
        skip = TOO_BIG_FOR_FULL.get(cell.backbone.model, "") if kind == "full" else ""
        name = f"{study.name}-{cell.backbone.key}__{cell.strategy.key}"
        jobs.append(Job(name, "", cell.backbone.model, study.name, cell.id, skip=skip))
    return sorted(jobs, key=lambda job: BIGGEST.index(job.model) + 1 if job.model in BIGGEST else 0)


def training_params() -> list:
    return [
        pytest.param(job, id=job.id, marks=[pytest.mark.skip(job.skip)] if job.skip else []) for job in training_jobs()
    ]


@dataclass
class Measured:
    result: subprocess.CompletedProcess
    seconds: float
    cpu_seconds: float  # user + system: what the run costs on an idle machine, whatever else runs beside it
    peak_gb: float  # NaN where /proc is not there to read


def measured(*args: str, env: dict[str, str], timeout: int = TIMEOUT) -> Measured:
    """Run a command as conftest.run_cli does, with its wall time, CPU time and peak resident memory.

    The peak is the process's own high-water mark (VmHWM), read while it runs: a child's ru_maxrss would count the
    memory of this test process it was forked from.
    """
    bin_dir = Path(sys.executable).parent
    full_env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", **env}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        process = subprocess.Popen(list(args), env=full_env, stdout=out, stderr=err)
        peak_kb = 0.0
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            peak_kb = max(peak_kb, _high_water_kb(process.pid))
            if time.perf_counter() - started > timeout:
                process.kill()
            time.sleep(0.2)
        seconds = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        result = subprocess.CompletedProcess(args, process.returncode, out.read().decode(), err.read().decode())
    peak_gb = peak_kb / 2**20 if peak_kb else float("nan")
    return Measured(result, seconds, usage.ru_utime + usage.ru_stime, peak_gb)


def _high_water_kb(pid: int) -> float:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:  # not Linux, or the process just ended
        return 0.0
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def readme_malpure_rows() -> dict[str, bool]:
    """README's Malpure table: checkpoint -> whether README says hf_tl's count equals the paper's."""
    text = (REPO / "README.md").read_text()
    section = text.split("### Malpure et al. 2021: the checkpoints and the trainable-parameter counts", 1)[1]
    rows = re.findall(r"^\| [^|]+ \| `([^`]+)`[^|]* \|[^|]+\|[^|]+\| (equal|differs)", section, re.MULTILINE)
    return {checkpoint: verdict == "equal" for checkpoint, verdict in rows}


def test_readme_names_the_ten_malpure_checkpoints_and_eight_equal_counts():
    rows = readme_malpure_rows()
    assert set(rows) == {cell.backbone.model for cell in load_study("malpure2021").cells}
    assert sum(rows.values()) == 8


@pytest.mark.parametrize("job", count_jobs(), ids=lambda job: job.id)
def test_params_counts_every_shipped_recipe_and_study_cell(job, real_size_hub, tmp_path, timings):
    """`python -m hf_tl.params` on the real architecture; a study's counts are its figures file's, and the paper's
    where README says they are equal."""
    run = measured(
        sys.executable, "-m", "hf_tl.params", f"recipe={job.recipe_argument(tmp_path)}", "--json",
        env=real_size_hub.env, timeout=600,
    )  # fmt: skip
    timings.add_run(job.id, "params", run)
    assert run.result.returncode == 0, run.result.stderr
    counted = json.loads(run.result.stdout)
    assert 0 < counted["trainable"] <= counted["total"]
    assert counted["trainable"] == counted["trainable_backbone"] + counted["trainable_head"]
    if job.study is None:
        return
    study = load_study(job.study)
    (cell,) = [c for c in study.cells if c.id == job.cell]
    row = figure_for(study.figures, cell.backbone.key, cell.dataset.key, cell.strategy.key)
    if not row:  # the paper gives no figures for this cell
        return
    assert counted[row["counted_as"]] == row["hf_tl_trainable_parameters"]
    if job.study == "malpure2021" and readme_malpure_rows()[job.model]:
        assert counted[row["counted_as"]] == row["paper_trainable_parameters"]


@pytest.fixture(scope="module")
def cifar_shaped(tmp_path_factory) -> Path:
    """CIFAR-shaped images (32x32 RGB, columns img/label as uoft-cs/cifar10), saved with save_to_disk: train and
    validation hold one image of each of 4 classes, so eval's confusion matrix names each image's prediction."""
    rng = np.random.default_rng(0)
    features = Features({"img": Image(), "label": ClassLabel(names=CLASSES)})

    def split() -> Dataset:
        images = [PILImage.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in CLASSES]
        return Dataset.from_dict({"img": images, "label": list(range(len(CLASSES)))}, features=features)

    path = tmp_path_factory.mktemp("cifar-shaped") / "saved"
    DatasetDict({"train": split(), "validation": split()}).save_to_disk(str(path))
    return path


@dataclass
class Trained:
    job: Job
    folder: Path
    head: str
    measured: Measured

    def succeeded(self) -> Trained:
        result = self.measured.result  # a failed run fails every test of its job, and runs once
        assert result.returncode == 0, result.stderr[-5000:]
        return self


@dataclass
class Timings:
    rows: list[tuple[str, str, float, float, float]] = field(default_factory=list)

    def add(self, job: str, step: str, seconds: float, cpu_seconds: float, peak_gb: float = float("nan")) -> None:
        self.rows.append((job, step, seconds, cpu_seconds, peak_gb))
        print(f"{job}: {step} {seconds:.1f} s wall, {cpu_seconds:.1f} s CPU, peak {peak_gb:.2f} GB")

    def add_run(self, job: str, step: str, run: Measured) -> None:
        self.add(job, step, run.seconds, run.cpu_seconds, run.peak_gb)


@pytest.fixture(scope="module")
def timings(request) -> Timings:
    """Wall time and peak memory of every command, printed as a table when the module ends."""
    table = Timings()
    yield table
    if not table.rows:
        return
    lines = ["", f"{'real-size runs':<64} {'wall s':>8} {'CPU s':>8} {'peak GB':>8}"]
    lines += [f"  {job:<53} {step:<9}{wall:8.1f} {cpu:8.1f} {peak:8.2f}" for job, step, wall, cpu, peak in table.rows]
    wall, cpu = (sum(row[i] for row in table.rows) for i in (2, 3))
    lines.append(f"  {'total':<62} {wall:8.1f} {cpu:8.1f}")
    lines.append("  (pipeline runs in this test process: its peak is not measured)")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled():  # shown whether the tests pass or not
        print("\n".join(lines), flush=True)


@pytest.fixture(scope="module", params=training_params())
def trained(request, real_size_hub, cifar_shaped, tmp_path_factory, timings):
    """A job's run folder after 1 step at batch 2, evaluation and saving.

    Module-scoped and parametrized, so pytest runs every test of one job before it trains the next, and the folder
    is deleted then: runs save float32 weights (3.7 GB for BiT-R152x4), and keeping every job's filled CI's disk.
    """
    job = request.param
    folder = tmp_path_factory.mktemp(job.id)
    recipe = job.recipe_argument(folder)
    run = measured(
        sys.executable, "-m", "hf_tl.train", f"recipe={recipe}", "model.weights=none",
        f"data.dataset={cifar_shaped}", "data.config_name=null", "data.eval_split=validation",
        "training.max_steps=1", "training.warmup_ratio=0", "training.batch_size=2",
        f"output.dir={folder / 'run'}",
        env=real_size_hub.env,
    )  # fmt: skip
    timings.add_run(job.id, "train", run)
    yield Trained(job, folder / "run", load_recipe(recipe).model.head, run)
    shutil.rmtree(folder, ignore_errors=True)


def test_one_step_at_real_size_evaluates_and_saves(trained):
    job, trained = trained.job, trained.succeeded()
    metrics = json.loads((trained.folder / "metrics.json").read_text())
    assert metrics["model"] == job.model
    assert metrics["num_train_examples"] == metrics["num_eval_examples"] == len(CLASSES)
    assert metrics["eval"]["num_examples"] == len(CLASSES)
    assert 2 <= metrics["train"]["num_examples"] <= len(CLASSES)  # a smoke run may score only what it trained on
    assert set(metrics["eval"]["per_class_accuracy"]) == set(CLASSES)
    history = json.loads((trained.folder / "log_history.json").read_text())
    assert max(h.get("step", 0) for h in history) == 1
    assert (trained.folder / "model" / "model.safetensors").exists()
    assert not list((trained.folder / "model").glob("*.bin"))


def test_saved_model_reloads_and_pipeline_predicts_what_hf_tl_eval_predicts(
    trained, real_size_hub, cifar_shaped, tmp_path, timings
):
    """pipeline("image-classification") loads it with plain from_pretrained (remote code only for the MLP head) and
    gives each validation image the top-1 label `python -m hf_tl.eval` gives."""
    from transformers import pipeline

    job, trained = trained.job, trained.succeeded()
    remote = trained.head == "mlp"
    started, cpu_before = time.perf_counter(), time.process_time()
    classifier = pipeline("image-classification", model=str(trained.folder / "model"), trust_remote_code=remote)
    assert classifier.model.config.architectures == [type(classifier.model).__name__]  # the class it was saved as
    assert classifier.model.config.id2label == dict(enumerate(CLASSES))
    images = load_from_disk(str(cifar_shaped))["validation"]["img"]
    piped = [classifier(image, top_k=1)[0]["label"] for image in images]
    del classifier
    timings.add(job.id, "pipeline", time.perf_counter() - started, time.process_time() - cpu_before)

    output = tmp_path / "eval"
    extra = ["trust_remote_code=true"] if remote else []
    run = measured(
        sys.executable, "-m", "hf_tl.eval", f"model={trained.folder}", f"dataset={cifar_shaped}",
        "split=validation", f"output={output}", "batch_size=2", *extra, env=real_size_hub.env,
    )  # fmt: skip
    timings.add_run(job.id, "eval", run)
    assert run.result.returncode == 0, run.result.stderr[-5000:]
    matrix = json.loads((output / "eval.json").read_text())["confusion_matrix"]
    evaluated = [CLASSES[int(np.argmax(row))] for row in matrix]  # row i: the one validation image of class i
    assert piped == evaluated


def test_the_jobs_cover_every_recipe_and_every_distinct_study_pair():
    jobs = training_jobs()
    assert {j.recipe for j in jobs if j.study is None} == set(available_recipes())
    pairs = {(cell.backbone.model, cell.strategy.key) for _, cell in study_cells()}
    ran = set()
    for job in jobs:
        if job.study:
            (cell,) = [c for c in load_study(job.study).cells if c.id == job.cell]
            ran.add((cell.backbone.model, cell.strategy.key))
    assert ran == pairs
    assert set(BIGGEST) <= {job.model for job in jobs}
