"""`hf-tl quickstart out=DIR [zoo=true]`: rebuild the quickstart's data and backbone into the folder DIR.

With zoo=true, also the miniature zoo (a tiny ResNet, ConvNeXt and Swin beside the ViT) and DIR/zoo.yaml, which
`hf-tl select dataset=DIR/digits-5-9 zoo=DIR/zoo.yaml` ranks.

What it does and writes: `hf_tl.config.quickstart`.
"""

from __future__ import annotations

from pathlib import Path

from hf_tl.cli.arguments import arguments_of
from hf_tl.config.commands import QuickstartArgs
from hf_tl.errors import cli


@cli
def main(argv: list[str] | None = None) -> None:
    args = arguments_of(__doc__, QuickstartArgs, argv)
    if args is None:
        return
    out = Path(args.out)
    from hf_tl.config.quickstart import build, build_zoo

    build(out)
    if args.zoo:
        build_zoo(out)
