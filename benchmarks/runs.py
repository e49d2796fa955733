"""Run a training command as a subprocess and read what it measured: wall time, peak RSS, hf_tl's phases.

Shared by the benchmarks: each run is its own process, so its imports, its peak memory (from
`wait4`) and its wall time are its own. hf_tl's phases come from the run's metrics.json
(`timings.phases`), measured inside hf_tl where each phase's work is done; `other` is the wall
time no phase holds (interpreter start, imports, argument parsing).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # this checkout's hf_tl, also where it is not installed (a lent GPU machine)
    sys.path.insert(1, str(REPO))
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@dataclass
class Measured:
    name: str
    wall_seconds: float
    cpu_seconds: float  # user + system: less disturbed than wall time on a busy machine
    peak_rss_mib: float
    phases: dict[str, float] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "wall_seconds": round(self.wall_seconds, 2),
            "cpu_seconds": round(self.cpu_seconds, 2),
            "peak_rss_mib": round(self.peak_rss_mib),
            "phases": self.phases,
            **self.extra,
        }


def run_measured(name: str, argv: list[str], log: Path, env: dict[str, str] | None = None) -> Measured:
    """Run `python argv...` from the repository root; raise with the log's tail if it fails."""
    environment = {**os.environ, **OFFLINE, **(env or {})}
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), environment.get("PYTHONPATH")]))
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, *argv], cwd=REPO, env=environment, stdout=out, stderr=out)
        _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"{name} failed with exit code {process.returncode}; the end of {log}:\n{tail}")
    return Measured(name, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024)


def hf_tl_run(name: str, overrides: list[str], run_dir: Path, env: dict[str, str] | None = None) -> Measured:
    """`python -m hf_tl.train ...` in a fresh `run_dir`, with the phases and the feature-cache report it recorded."""
    shutil.rmtree(run_dir, ignore_errors=True)  # else hf_tl would resume it, or report it complete
    measured = run_measured(
        name, ["-m", "hf_tl.train", *overrides, f"output.dir={run_dir}"], run_dir.with_suffix(".log"), env
    )
    metrics = json.loads((run_dir / "metrics.json").read_text())
    phases = dict(metrics["timings"].get("phases", {}))
    phases["other"] = round(measured.wall_seconds - sum(phases.values()), 3)
    measured.phases = phases
    train = metrics.get("train") or {}
    measured.extra = {
        "run_dir": str(run_dir),
        "eval_accuracy": metrics["eval"]["accuracy"],
        "train_accuracy": train.get("accuracy"),
        "feature_cache": metrics.get("feature_cache"),
    }
    return measured


def plain_trainer_run(output: Path, log: Path, env: dict[str, str], *flags: str) -> Measured:
    """`plain_trainer.py --output=OUTPUT FLAGS...`, with the phases and accuracy it wrote to timings.json."""
    argv = [str(Path(__file__).with_name("plain_trainer.py")), *flags, f"--output={output}"]
    measured = run_measured("plain Trainer", argv, log, env)
    reported = json.loads((output / "timings.json").read_text())
    measured.phases = dict(reported["phases"])
    measured.phases["other"] = round(measured.wall_seconds - sum(measured.phases.values()), 3)
    measured.extra = {"eval_accuracy": reported["eval_accuracy"], "output": str(output)}
    return measured


def table(rows: list[Measured], phase_order: list[str]) -> str:
    """Runs as columns, phases as rows, seconds; then wall time and peak RSS."""
    names = [r.name for r in rows]
    seen = [p for p in phase_order if any(p in r.phases for r in rows)]
    seen += sorted({p for r in rows for p in r.phases} - set(seen) - {"other"}) + ["other"]
    width = max(12, *(len(n) for n in names))
    lines = [f"{'phase (s)':<16}" + "".join(f"{n:>{width + 2}}" for n in names)]
    for phase in seen:
        cells = [f"{r.phases[phase]:.2f}" if phase in r.phases else "-" for r in rows]
        lines.append(f"{phase:<16}" + "".join(f"{c:>{width + 2}}" for c in cells))
    lines.append(f"{'wall':<16}" + "".join(f"{r.wall_seconds:>{width + 2}.2f}" for r in rows))
    lines.append(f"{'CPU (user+sys)':<16}" + "".join(f"{r.cpu_seconds:>{width + 2}.2f}" for r in rows))
    lines.append(f"{'peak RSS (MiB)':<16}" + "".join(f"{r.peak_rss_mib:>{width + 2}.0f}" for r in rows))
    return "\n".join(lines)


def machine() -> str:
    """The CPU, its cores, the memory and the load averages, for the record."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{model}, {os.cpu_count()} cores, {memory:.0f} GiB; load average {load}"
