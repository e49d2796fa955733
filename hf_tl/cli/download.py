"""`hf-tl download REPO_ID [revision=R] [dir=D]`: fetch a published checkpoint and say how it was made.

Downloads from the Hub (or the local cache with HF_HUB_OFFLINE=1), then prints the metrics its model card
records (the model-index) and the recipe it was trained with (recipe.yaml), then how to evaluate it with
`hf-tl eval`.
"""

from __future__ import annotations

from pathlib import Path

from hf_tl.cli.arguments import arguments_of
from hf_tl.config.commands import DownloadArgs
from hf_tl.errors import cli


@cli
def main(argv: list[str] | None = None) -> None:
    args: DownloadArgs | None = arguments_of(__doc__, DownloadArgs, argv)
    if args is None:
        return
    from hf_tl.hub.download import describe, eval_command
    from hf_tl.hub.transfer import download

    path = download(args.repo_id, revision=args.revision, local_dir=Path(args.dir) if args.dir else None)
    print(f"downloaded {args.repo_id}{f'@{args.revision}' if args.revision else ''} to {path}")
    print(describe(path))
    print(f"evaluate it: {eval_command(path, args.revision)}")
