"""`hf-tl eval model=<hub id|dir> dataset=<hub id|dir> split=test [key=value ...]`: evaluate any checkpoint.

What it does and writes: `hf_tl.inference.evaluate`.
"""

from __future__ import annotations

from hf_tl.cli.arguments import arguments_of, parse_key_values
from hf_tl.config.commands import EvalArgs
from hf_tl.errors import cli
from hf_tl.models.source import resolve_model


def parse_args(argv: list[str]) -> EvalArgs:
    """`key=value` arguments onto EvalArgs; a run folder stands for its model/."""
    args: EvalArgs = parse_key_values(EvalArgs, argv)
    args.model = resolve_model(args.model)
    return args


@cli
def main(argv: list[str] | None = None) -> None:
    args = arguments_of(__doc__, EvalArgs, argv)
    if args is None:
        return
    args.model = resolve_model(args.model)
    from hf_tl.inference.evaluate import evaluate

    evaluate(args)
