"""`python -m hf_tl.push RUN_DIR --repo-id user/name [--private]`: publish a finished run folder in one commit.

The same as `hub.push=true hub.repo_id=user/name` at the end of a run, for a run that is over.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hf_tl.errors import cli
from hf_tl.hub import push_run


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m hf_tl.push",
        description="Upload a run folder's model, recipe, metrics, training curves and model card to the Hub "
        "in one commit. The token comes from HF_TOKEN or `hf auth login`.",
    )
    p.add_argument("run_dir", type=Path, help="the run folder a finished `hf_tl.train` run wrote (its output.dir)")
    p.add_argument("--repo-id", required=True, help="target repository, user/name; created if it does not exist")
    p.add_argument("--private", action="store_true", help="create the repository private")
    return p


@cli
def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    push_run(args.run_dir, args.repo_id, private=args.private)


if __name__ == "__main__":
    main()
