"""`hf-tl train` through Accelerate's launcher, as `tune run` wraps torchrun: the user's accelerate config,
`--nproc N`, and every `accelerate launch` flag, with hf_tl's exit status and its one error line.

`accelerate launch` itself turns a child's exit status 2 into 1, adds a `CalledProcessError` traceback,
and warns about its defaults on every run without a config; here the defaults are given explicitly, the
child's status is returned, and the child's own `error:` line is all that is said.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
from collections.abc import Sequence
from typing import NoReturn

from hf_tl.errors import RecipeError

NPROC = "--nproc"
LAUNCHED_ENV = ("LOCAL_RANK", "ACCELERATE_USE_CPU")  # torchrun and accelerate launch set these: never launch again
LAUNCH_HELP = (
    "Launch flags, anywhere among the keys: --nproc N starts N processes on this machine (gloo ranks on a CPU); "
    "any `accelerate launch` flag passes through (--mixed_precision bf16, --config_file F, --num_machines 2, "
    "--use_fsdp, ...). With no flag and no accelerate config, the run is this process; with an accelerate config "
    "(`accelerate config`), it starts as that config says."
)


def split_launch_flags(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """`--flag [value]` words for the launcher, and the recipe's `key=value` words. A recipe word always holds
    `=`, so a word after a flag that holds none is that flag's value."""
    flags: list[str] = []
    rest: list[str] = []
    words = list(argv)
    while words:
        word = words.pop(0)
        if not word.startswith("-"):
            rest.append(word)
            continue
        name, eq, value = word.partition("=")
        if "." in name:  # --training.epochs=2: a recipe key written as a flag
            raise RecipeError(f"'{word}': recipe keys are key=value; write {name.lstrip('-')}=VALUE.")
        if not eq and words and "=" not in words[0] and not words[0].startswith("-"):
            value, eq = words.pop(0), "="
        if name == NPROC:
            flags += ["--num_processes", _process_count(value)]
            continue
        flags += [name, value] if eq else [name]
    return flags, rest


def _process_count(value: str) -> str:
    if not value.isdigit() or int(value) < 1:
        raise RecipeError(f"{NPROC} {value or '(nothing)'}: give a number of processes, 1 or more, e.g. --nproc 2.")
    return value


def wants_launcher(flags: Sequence[str]) -> bool:
    """Launch when asked to, or when the user has an accelerate config; never from inside a launched process."""
    if any(os.environ.get(name) for name in LAUNCHED_ENV):
        if flags:
            raise RecipeError(
                f"launch flags ({' '.join(flags)}) given inside a process that is already launched "
                f"({', '.join(n for n in LAUNCHED_ENV if os.environ.get(n))} is set): give them to the launcher "
                "that started this one, or run hf-tl train outside it."
            )
        return False
    return bool(flags) or os.path.isfile(_default_config_file())


def _default_config_file() -> str:
    from accelerate.commands.config import default_config_file

    return default_config_file


def launch(flags: Sequence[str], overrides: Sequence[str]) -> int:
    """Run `python -m hf_tl.train OVERRIDES` as Accelerate would, and return its exit status."""
    from accelerate.commands.launch import launch_command
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    args = _launch_arguments(flags, overrides)
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # the child says what went wrong
    try:
        launch_command(args)
    except subprocess.CalledProcessError as e:
        return _status(e.returncode)
    except ChildFailedError as e:
        return _status(e.get_first_failure()[1].exitcode)  # torch's own pick of the root cause
    except SignalException as e:  # Ctrl-C or a scheduler's SIGTERM while the processes ran
        return 128 + int(e.sigval)
    except FileNotFoundError as e:  # --config_file naming no file
        raise RecipeError(f"launch flags: {e.filename or e}: no such file.") from None
    except ValueError as e:  # accelerate's own check of the flags (e.g. --multi_gpu with one process)
        raise RecipeError(f"launch flags: {e}") from None
    return 0


def _launch_arguments(flags: Sequence[str], overrides: Sequence[str]) -> argparse.Namespace:
    """accelerate's own parse of the flags (dashed spellings and abbreviations included), then, without an
    accelerate config, its defaults set where the user gave nothing, so that it does not warn of them."""
    from accelerate.commands.launch import launch_command_parser

    parser = launch_command_parser()
    parser.error = _refuse  # type: ignore[method-assign]  # one error line, not accelerate's usage text
    quiet = [f for f in flags if f not in ("--quiet", "-q")]  # --quiet makes accelerate exit 1 on any failure
    args, unknown = parser.parse_known_args([*quiet, "--module", "hf_tl.train", *overrides])
    if unknown:
        raise RecipeError(f"unknown launch flag(s) {' '.join(unknown)}; `accelerate launch --help` lists them.")
    if args.cpu and (args.num_processes or 1) > 1:
        raise RecipeError(
            "--cpu with several processes starts one (accelerate); on a machine without a GPU, --nproc N alone "
            "runs N gloo ranks."
        )
    if args.config_file is None and not os.path.isfile(_default_config_file()):
        _set_defaults(args)
    return args


def _set_defaults(args: argparse.Namespace) -> None:
    distributed = args.multi_gpu or args.use_fsdp or args.use_deepspeed or args.use_megatron_lm or args.tpu
    if args.num_processes is None and not distributed:  # distributed without a count: accelerate counts the GPUs
        args.num_processes = 1
    for name, value in (("num_machines", 1), ("mixed_precision", "no"), ("dynamo_backend", "no")):
        if getattr(args, name) is None:
            setattr(args, name, value)
    if (args.num_processes or 1) > 1 and not distributed:
        args.multi_gpu = True  # several processes on one machine: data parallel (gloo ranks without a GPU)


def _refuse(message: str) -> NoReturn:
    raise RecipeError(f"launch flags: {message}.")


def _status(code: int) -> int:
    """A child killed by a signal has a negative code: exit 1, as for any failure hf_tl did not name."""
    return code if code > 0 else 1
