"""Errors a user can fix: the command line prints their message, not a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from typing import Any


class HfTlError(Exception):
    """A problem in the user's input, with a message that says how to fix it."""

    exit_code = 1


class RecipeError(HfTlError):
    """A recipe, key or value that is not valid. Exits with status 2, like a usage error."""

    exit_code = 2


class DataError(HfTlError):
    """A dataset that cannot be used as given."""


def cli(main: Callable[..., Any]) -> Callable[..., Any]:
    """Run a command-line entry point, turning HfTlError into a message and an exit status."""

    @wraps(main)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return main(*args, **kwargs)
        except HfTlError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(e.exit_code)

    return run
