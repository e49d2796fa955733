"""How every command ends on an error: one `error: ...` line and an exit status, never a token.

Errors a user can fix are `HfTlError`s: their message says what to do. Anything else is reported on
the same one line as unexpected, with its traceback only when HF_TL_DEBUG=1 asks for it. Whatever
leaves a command through `cli` (that line, a traceback, a warning, a log record of transformers or
huggingface_hub) is scrubbed of the Hugging Face token first: huggingface_hub quotes the server's
answer in its exceptions, and a server or proxy that echoes the Authorization header puts the token
into that text.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from pathlib import Path
from typing import Any, NoReturn

DEBUG_ENV = "HF_TL_DEBUG"
UNEXPECTED_CHARS = 500  # an unexpected message is cut here; HF_TL_DEBUG=1 shows all of it
TOKEN_ENVS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
# A user access token is "hf_" and 34 letters or digits; a shorter run is a name (runs/hf_experiments2), left alone.
TOKEN_LIKE = re.compile(r"hf_[A-Za-z0-9]{30,}")
MIN_SECRET = 6  # shorter values are no real token; replacing them would mangle the message instead
_looking_up = threading.local()


class HfTlError(Exception):
    """A problem in the user's input, with a message that says how to fix it."""

    exit_code = 1


class RecipeError(HfTlError):
    """A recipe, key or value that is not valid. Exits with status 2, like a usage error."""

    exit_code = 2


class DataError(HfTlError):
    """A dataset that cannot be used as given."""


def cli(main: Callable[..., Any]) -> Callable[..., Any]:
    """Run a command-line entry point: an error becomes one scrubbed `error: ...` line and an exit status."""

    @wraps(main)
    def run(*args: Any, **kwargs: Any) -> Any:
        forget_warnings()  # each command says its warnings once
        with scrubbed_logs_and_warnings():
            try:
                return main(*args, **kwargs)
            except HfTlError as e:
                fail(str(e), e.exit_code)
            except KeyboardInterrupt:
                fail("interrupted.", 1)
            except BrokenPipeError:  # the reader went away (`hf-tl train --help | head`): nothing left to say
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's own advice for SIGPIPE
                sys.exit(1)
            except Exception as e:  # a bug, or a library's error hf_tl does not know yet: one line all the same
                if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
                    sys.stderr.write(scrub("".join(traceback.format_exception(e))))
                fail(unexpected(e), 1)

    return run


class _WarningLine(logging.Handler):
    """`warning: ...` on whatever stderr is now (a test's capture included), one line per record."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(f"warning: {scrub(record.getMessage())}", file=sys.stderr, flush=True)
        except Exception:
            self.handleError(record)


WARNINGS = logging.getLogger("hf_tl.warnings")  # a logger, so that callers' log capture sees the warnings too
WARNINGS.addHandler(_WarningLine())
WARNINGS.setLevel(logging.WARNING)
_warned: set[str] = set()


def warn(message: str) -> None:
    """hf_tl's one way to warn: a `warning: ...` line on stderr, scrubbed, said once per process however often
    the code that finds it runs (a model and its processor load through the same checks)."""
    if message not in _warned and is_main_process():  # once, not once per process of a launch
        _warned.add(message)
        WARNINGS.warning(message)


def is_main_process() -> bool:
    """Rank 0, or no distributed launch: torchrun and accelerate set RANK in every process they start. Read from
    the environment, so that warnings and bars (`hf_tl.progress`) ask it without importing accelerate."""
    return os.environ.get("RANK", "0") == "0"


def forget_warnings() -> None:
    """A new command, or a new run in the same process: its warnings are said again."""
    _warned.clear()


def fail(message: str, exit_code: int) -> NoReturn:
    print(f"error: {scrub(message)}", file=sys.stderr, flush=True)
    sys.exit(exit_code)


def unexpected(error: BaseException) -> str:
    """An exception hf_tl did not expect: its type and message on one line, and how to see the traceback."""
    message = brief(error, lines=None)
    if len(message) > UNEXPECTED_CHARS:  # a library may list thousands of names in one message
        message = f"{message[:UNEXPECTED_CHARS]} ... ({len(message) - UNEXPECTED_CHARS:,} characters more)"
    return (
        f"unexpected {type(error).__name__}: {message}\n"
        f"  This is a bug in hf_tl or a library it uses; {DEBUG_ENV}=1 shows the traceback."
    )


def brief(error: BaseException, lines: int | None = 3) -> str:
    """An exception's message on one line: its first `lines` non-blank lines (a server's answer may run on)."""
    kept = [line.strip() for line in str(error).splitlines() if line.strip()]
    return " ".join(kept[:lines]) or type(error).__name__


def scrub(text: str, token: str | None = None) -> str:
    """`text` without `token`, the token this process would send to the Hub, or anything shaped like one."""
    for secret in sorted({token, *secret_tokens()} - {None}, key=len, reverse=True):
        if len(secret) >= MIN_SECRET:
            text = text.replace(secret, "***")
    return TOKEN_LIKE.sub("hf_***", text)


def secret_tokens() -> set[str]:
    """HF_TOKEN (and its old name), the login cache's token and the stored ones: what huggingface_hub would send.
    Read as stored, never through `get_token()`, which may exchange or refresh a token over the network."""
    found = {os.environ.get(name, "") for name in TOKEN_ENVS}
    if not getattr(_looking_up, "active", False):  # reading may log, and a log record is scrubbed in turn
        _looking_up.active = True
        try:
            found |= _stored_tokens()
        finally:
            _looking_up.active = False
    return {token.strip() for token in found} - {""}


def _stored_tokens() -> set[str]:
    from huggingface_hub import constants
    from huggingface_hub.utils import get_stored_tokens

    found = set()
    try:
        found.add(Path(constants.HF_TOKEN_PATH).read_text())
    except OSError:  # not logged in
        pass
    try:
        found.update(get_stored_tokens().values())
    except Exception:  # no stored tokens, or a file huggingface_hub cannot parse either
        pass
    return found


@contextmanager
def scrubbed_logs_and_warnings() -> Iterator[None]:
    """Every log record and warning made meanwhile is scrubbed before any handler or stream sees it."""
    make_record, format_warning = logging.getLogRecordFactory(), warnings.formatwarning

    def scrubbed_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        return _scrub_record(make_record(*args, **kwargs))

    def scrubbed_warning(*args: Any, **kwargs: Any) -> str:
        return scrub(format_warning(*args, **kwargs))

    logging.setLogRecordFactory(scrubbed_record)
    warnings.formatwarning = scrubbed_warning
    try:
        yield
    finally:
        logging.setLogRecordFactory(make_record)
        warnings.formatwarning = format_warning


def _scrub_record(record: logging.LogRecord) -> logging.LogRecord:
    """The record, its message, traceback and stack made safe; untouched when they hold nothing to hide."""
    try:
        message = record.getMessage()
    except Exception:  # a malformed record: logging reports it as it would have
        return record
    if scrub(message) != message:
        record.msg, record.args = scrub(message), None
    if record.exc_info and record.exc_info[1] is not None:
        text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        if scrub(text) != text:
            record.exc_text = scrub(text)  # what Formatter prints instead of formatting exc_info itself
    if record.stack_info:
        record.stack_info = scrub(record.stack_info)
    return record
