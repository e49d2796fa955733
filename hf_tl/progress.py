"""Progress a person can read: one rule says whether bars are shown, one factory makes every hf_tl bar.

Bars are for a person at a terminal. As the HF libraries do, hf_tl shows none when
`HF_HUB_DISABLE_PROGRESS_BARS=1` or when stderr is not a terminal (a log file, a pipe, a CI job):
there a bar is only carriage returns and escape codes. `HF_TL_PROGRESS=1` forces them on,
`HF_TL_PROGRESS=0` off. Plain lines (epoch summaries, messages) are printed either way.
"""

from __future__ import annotations

import functools
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, ParamSpec, TextIO, TypeVar

import datasets
from huggingface_hub import constants as hub_constants
from huggingface_hub import utils as hub_utils
from tqdm.auto import tqdm
from transformers.utils import is_in_notebook
from transformers.utils import logging as transformers_logging

from hf_tl.errors import is_main_process

P = ParamSpec("P")
R = TypeVar("R")

FORCE_ENV = "HF_TL_PROGRESS"  # 1: bars even in a log file; 0: never
HUB_ENV = "HF_HUB_DISABLE_PROGRESS_BARS"


def bars_on(stream: TextIO | None = None) -> bool:
    """Whether bars are shown: HF_TL_PROGRESS decides if set, then HF_HUB_DISABLE_PROGRESS_BARS, then the terminal."""
    forced = os.environ.get(FORCE_ENV, "").strip()
    if forced:
        return forced.upper() in hub_constants.ENV_VARS_TRUE_VALUES
    if os.environ.get(HUB_ENV, "").strip().upper() in hub_constants.ENV_VARS_TRUE_VALUES:
        return False
    return _is_terminal(stream or sys.stderr) or is_in_notebook()  # a notebook's stderr is no tty, yet shows bars


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def bar(iterable: Iterable | None = None, **kwargs: Any) -> tqdm:
    """A tqdm bar on stderr, or a silent one (same calls, no output) when `bars_on()` says no."""
    kwargs.setdefault("file", sys.stderr)
    kwargs.setdefault("dynamic_ncols", True)
    shown = bars_on(kwargs["file"]) and is_main_process()  # N ranks' bars would overwrite one another
    return tqdm(iterable, disable=not shown, **kwargs)


def write(line: str) -> None:
    """A plain line on stdout that a bar on stderr does not overwrite (tqdm clears and redraws it)."""
    tqdm.write(line, file=sys.stdout)
    sys.stdout.flush()


@contextmanager
def transformers_bars_off() -> Iterator[None]:
    """transformers' own bars ("Loading weights", "Writing model shards") off; the Hub's download bars as they were.

    transformers' one documented switch turns the Hub's bars off too, so theirs is put back at once.
    """
    transformers_on = transformers_logging.is_progress_bar_enabled()
    hub_on = not hub_utils.are_progress_bars_disabled()
    _quietly(transformers_logging.disable_progress_bar)
    _set_hub_bars(hub_on)
    try:
        yield
    finally:
        if transformers_on:
            _quietly(transformers_logging.enable_progress_bar)
        _set_hub_bars(hub_on)


@contextmanager
def library_bars() -> Iterator[None]:
    """datasets', transformers' and the Hub's bars follow `bars_on()` for the block: off when hf_tl's are."""
    if bars_on():
        yield
        return
    datasets_on = datasets.is_progress_bar_enabled()
    _quietly(datasets.disable_progress_bars)
    try:
        with transformers_bars_off():  # puts the Hub's back as they were on the way out
            _set_hub_bars(False)
            yield
    finally:
        if datasets_on:
            datasets.enable_progress_bars()


def with_library_bars(command: Callable[P, R]) -> Callable[P, R]:
    """A command whose datasets, transformers and Hub bars follow hf_tl's (`library_bars`): none in a log file."""

    @functools.wraps(command)
    def wrapped(*args: P.args, **kwargs: P.kwargs) -> R:
        with library_bars():
            return command(*args, **kwargs)

    return wrapped


def _set_hub_bars(on: bool) -> None:
    if on != (not hub_utils.are_progress_bars_disabled()):
        _quietly(hub_utils.enable_progress_bars if on else hub_utils.disable_progress_bars)


def _quietly(switch: Callable[[], Any]) -> None:
    """A library's switch, without its warning that an environment variable overrides it (the variable wins)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        switch()
