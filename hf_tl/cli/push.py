"""`hf-tl push RUN_DIR repo_id=user/name [private=true]`: publish a finished run folder in one commit.

The same as `hub.push=true hub.repo_id=user/name` at the end of a run, for a run that is over. The token
comes from HF_TOKEN or `hf auth login`.
"""

from __future__ import annotations

from pathlib import Path

from hf_tl.cli.arguments import arguments_of
from hf_tl.config.commands import PushArgs
from hf_tl.errors import cli


@cli
def main(argv: list[str] | None = None) -> None:
    args: PushArgs | None = arguments_of(__doc__, PushArgs, argv)
    if args is None:
        return
    from hf_tl.hub.transfer import push_run

    push_run(Path(args.run), args.repo_id, private=args.private)
