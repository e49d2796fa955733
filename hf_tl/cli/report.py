"""`hf-tl report RUN_OR_SWEEP_DIR... [out=DIR] [layout=malpure|zhou]`: the comparison table.

What it does and writes: `hf_tl.studies.report`.
"""

from __future__ import annotations

from pathlib import Path

from hf_tl.cli.arguments import arguments_of
from hf_tl.config.commands import ReportArgs
from hf_tl.errors import RecipeError, cli


@cli
def main(argv: list[str] | None = None) -> None:
    args: ReportArgs | None = arguments_of(__doc__, ReportArgs, argv)
    if args is None:
        return
    if not args.paths:
        raise RecipeError("give at least one run or sweep folder: hf-tl report runs/sweeps/malpure2021")
    paths = [Path(p) for p in args.paths]
    out = Path(args.out) if args.out else (paths[0] / "report" if len(paths) == 1 else Path("report"))
    from hf_tl.studies.report import CSV_FILE, REPORT_FILE, build_report

    print(build_report(paths, out, args.layout))
    print(f"report written to {out}: {REPORT_FILE}, {CSV_FILE} and PNG plots")
