"""`python benchmarks/cli_startup.py [--repeat 7] [--json]`: how soon `hf-tl` answers, against importing torch.

Three commands, each in a fresh process, alternating, `--repeat` times: `hf-tl --help`, a mistyped key
(`hf-tl train recipe=quickstart training.lrr=1`, which must fail with exit 2 before any heavy import), and
`python -c "import torch"`, the floor of any command that imports torch first. Prints the median wall time
of each and their ratio to the torch import. Targets (issue 14): the typo under 1.5 s and `--help` under 1 s
on the 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from runs import machine

# The console script itself when it is installed beside this Python, else its equivalent `python -m hf_tl`.
_SCRIPT = shutil.which("hf-tl", path=str(Path(sys.executable).parent))
HF_TL = [_SCRIPT] if _SCRIPT else [sys.executable, "-m", "hf_tl"]
COMMANDS = {
    "help": [*HF_TL, "--help"],
    "typo": [*HF_TL, "train", "recipe=quickstart", "training.lrr=1"],
    "import_torch": [sys.executable, "-c", "import torch"],
}
EXPECTED_STATUS = {"help": 0, "typo": 2, "import_torch": 0}


def timed(command: list[str]) -> tuple[float, int]:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    return time.perf_counter() - start, done.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    seconds: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.repeat):
        for name, command in COMMANDS.items():
            wall, status = timed(command)
            if status != EXPECTED_STATUS[name]:
                sys.exit(f"{name}: exit {status}, expected {EXPECTED_STATUS[name]}")
            seconds[name].append(wall)
    median = {name: statistics.median(values) for name, values in seconds.items()}
    result = {
        "median_seconds": {name: round(value, 3) for name, value in median.items()},
        "help_vs_import_torch": round(median["help"] / median["import_torch"], 3),
        "typo_vs_import_torch": round(median["typo"] / median["import_torch"], 3),
        "repeat": args.repeat,
        "machine": machine(),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    for name, value in median.items():
        print(f"{name:<13} {value:6.3f} s  (median of {args.repeat}; {' '.join(' '.join(COMMANDS[name][1:]).split())})")
    print(f"hf-tl --help ÷ import torch: {result['help_vs_import_torch']:.3f}   (target: help under 1 s)")
    print(f"a typo ÷ import torch:       {result['typo_vs_import_torch']:.3f}   (target: typo under 1.5 s)")


if __name__ == "__main__":
    main()
