"""The Hub, both ways: push a run folder in one commit, download a published checkpoint.

- The token comes from HF_TOKEN or the login cache (huggingface_hub's own lookup). It is
  never written, logged or shown: messages are scrubbed (errors.scrub), here and again by `errors.cli`.
- Transient failures (connection errors, 408/429/5xx) are retried with exponential back-off.
  A push only reads the run folder (only a missing README.md or curve PNG is rendered into it
  first), so a failed push leaves it as it was and the same command can simply run again.
- `HF_ENDPOINT` is read when a client is made, not only when huggingface_hub is imported.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from huggingface_hub import CommitOperationAdd, HfApi, constants, snapshot_download
from huggingface_hub.errors import (
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import get_token, validate_repo_id

from hf_tl.errors import HfTlError, brief, scrub
from hf_tl.hub.card import CARD_FILE, render_card, write_card
from hf_tl.hub.plots import CURVES_FILE, training_curves
from hf_tl.runs.folder import ADAPTER_DIR, LOG_HISTORY_FILE, METRICS_FILE, MODEL_DIR, RECIPE_FILE

REQUIRED = (RECIPE_FILE, METRICS_FILE, f"{MODEL_DIR}/config.json", f"{MODEL_DIR}/model.safetensors")
TRANSIENT_STATUS = (408, 429, 500, 502, 503, 504)
TOKEN_HELP = (
    "Set HF_TOKEN to a token with write access (https://huggingface.co/settings/tokens) or run `hf auth login`."
)
_T = TypeVar("_T")


def endpoint() -> str:
    """HF_ENDPOINT as it is now (huggingface_hub reads it once, at import)."""
    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def push_run(run_dir: Path, repo_id: str, private: bool = False, *, retries: int = 5, backoff: float = 1.0) -> str:
    """Create the repository if needed and upload the run folder's model, recipe, metrics and card in one commit."""
    run_dir = Path(run_dir)
    check_run_folder(run_dir)
    command = shlex.join(["hf-tl", "push", str(run_dir), f"repo_id={repo_id}", *(["private=true"] if private else [])])
    again = f"The run folder {run_dir} is unchanged; push it again: {command}"
    token = check_can_push(repo_id, again)
    if not (run_dir / CURVES_FILE).exists():  # a folder from before cards existed: render what is missing
        training_curves(json.loads((run_dir / LOG_HISTORY_FILE).read_text()), run_dir / CURVES_FILE, title=run_dir.name)
    if not (run_dir / CARD_FILE).exists():
        write_card(run_dir)
    card = _card_for(run_dir, repo_id)
    files = upload_plan(run_dir)
    size = sum(p.stat().st_size for p in files.values())
    print(f"hf_tl: pushing {len(files)} files ({size / 1e6:.1f} MB) to {repo_id} at {endpoint()}", flush=True)
    api = HfApi(endpoint=endpoint(), token=token)

    def operations() -> list[CommitOperationAdd]:  # fresh objects per attempt: a commit marks them used
        ops = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path)) for name, path in files.items()]
        if card is not None:
            ops = [op for op in ops if op.path_in_repo != CARD_FILE]
            ops.append(CommitOperationAdd(path_in_repo=CARD_FILE, path_or_fileobj=card.encode()))
        return ops

    try:
        create = lambda: api.create_repo(repo_id, private=private, exist_ok=True)  # noqa: E731
        with_retries(create, "creating the repository", retries, backoff, token)
        commit = with_retries(
            lambda: api.create_commit(
                repo_id, operations=operations(), commit_message=f"hf_tl: upload run {run_dir.name}"
            ),
            "the commit",
            retries,
            backoff,
            token,
        )
    except Exception as e:
        raise _user_error(e, token, repo_id, again) from None
    print(f"hf_tl: pushed to {commit.commit_url}", flush=True)
    return commit.commit_url


def check_can_push(repo_id: str | None, again: str = "") -> str:
    """Everything a push needs that can be checked before it (and before training): the id, the Hub, a token."""
    check_repo_id(repo_id)
    if constants.is_offline_mode():
        raise HfTlError(f"HF_HUB_OFFLINE is set, so nothing can be pushed. Unset it. {again}".strip())
    token = get_token()
    if not token:
        raise HfTlError(f"no Hugging Face token found. {TOKEN_HELP} {again}".strip())
    return token


def upload_plan(run_dir: Path) -> dict[str, Path]:
    """Path in the repository -> local file: the model at the top (so `from_pretrained(repo_id)` loads it),
    the adapter under adapter/, and the recipe, metrics, log history, curves and card beside it."""
    files = {p.name: p for p in _visible_files(run_dir / MODEL_DIR)}
    if (run_dir / ADAPTER_DIR).is_dir():
        files |= {f"{ADAPTER_DIR}/{p.name}": p for p in _visible_files(run_dir / ADAPTER_DIR)}
    for name in (RECIPE_FILE, METRICS_FILE, LOG_HISTORY_FILE, CURVES_FILE, CARD_FILE):
        if (run_dir / name).is_file():
            files[name] = run_dir / name
    return files


def _visible_files(folder: Path) -> list[Path]:
    return [p for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")]


def check_repo_id(repo_id: str | None) -> None:
    if not repo_id or repo_id.count("/") != 1:
        raise HfTlError(f"repository id {repo_id!r} must read 'user/name' (or 'organisation/name').")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise HfTlError(f"repository id {repo_id!r} is not valid: {e}") from None


def check_run_folder(run_dir: Path) -> None:
    if not run_dir.is_dir():
        raise HfTlError(f"run folder {run_dir} does not exist.")
    missing = [name for name in REQUIRED if not (run_dir / name).is_file()]
    if missing:
        raise HfTlError(
            f"{run_dir} is not a finished hf_tl run: {', '.join(missing)} missing. "
            "Push the folder a completed `hf-tl train` run wrote (its output.dir)."
        )


def download(repo_id: str, revision: str | None = None, local_dir: Path | None = None) -> Path:
    """Fetch a published checkpoint (into the HF cache, or `local_dir`) and return its folder."""
    check_repo_id(repo_id)
    token = get_token()
    try:
        if local_dir is not None and constants.is_offline_mode():
            # Offline, snapshot_download(local_dir=...) looks only in local_dir: copy the cached snapshot there.
            cached = snapshot_download(repo_id, revision=revision, endpoint=endpoint(), token=token or None)
            shutil.copytree(cached, local_dir, dirs_exist_ok=True)
            return Path(local_dir)
        path = snapshot_download(
            repo_id, revision=revision, local_dir=local_dir, endpoint=endpoint(), token=token or None
        )
    except Exception as e:
        raise _user_error(e, token, f"{repo_id}@{revision}" if revision else repo_id, "", pushing=False) from None
    return Path(path)


def with_retries(call: Callable[[], _T], what: str, retries: int, backoff: float, token: str | None = None) -> _T:
    """`call()`, again after 1x, 2x, 4x ... `backoff` seconds while it fails for a reason that may pass."""
    for attempt in range(retries + 1):
        try:
            return call()
        except Exception as e:
            if attempt == retries or not is_transient(e):
                raise
            wait = min(backoff * 2**attempt, 30.0)
            print(
                f"hf_tl: {what} failed ({scrub(brief(e), token)}); retry {attempt + 1} of {retries} in {wait:g} s",
                file=sys.stderr,
                flush=True,
            )
            time.sleep(wait)
    raise AssertionError("unreachable")


def is_transient(error: Exception) -> bool:
    """Worth trying again: the connection failed or timed out, or the server was busy or broken (408/429/5xx)."""
    if isinstance(error, HfHubHTTPError) and error.response is not None:
        return error.response.status_code in TRANSIENT_STATUS
    names = {cls.__name__ for cls in type(error).__mro__}
    return bool(names & {"ConnectionError", "TimeoutError", "TimeoutException", "NetworkError", "RemoteProtocolError"})


def _card_for(run_dir: Path, repo_id: str) -> str | None:
    """README.md rendered for `repo_id` when the folder's is hf_tl's own, unedited, and names another repository
    (or none); None to upload README.md exactly as it stands. The folder keeps its own either way."""
    current = (run_dir / CARD_FILE).read_text()
    try:
        if current != str(render_card(run_dir)):
            return None  # edited by hand (or by another version): push it as it is
        wanted = str(render_card(run_dir, repo_id))
    except Exception:
        return None
    return wanted if wanted != current else None


def _user_error(error: Exception, token: str | None, repo_id: str, again: str, pushing: bool = True) -> Exception:
    """A message that says what went wrong and what to do, without the token."""
    status = getattr(getattr(error, "response", None), "status_code", None)
    detail = scrub(brief(error), token)
    if not pushing and status in (401, 403, 404):  # the Hub answers 401 to anonymous requests for unknown repos
        message = (
            f"repository {repo_id} was not found, or is private and "
            f"{'the token cannot see it' if token else 'no token was given'}. {TOKEN_HELP}"
        )
    elif status in (401, 403):
        source = "HF_TOKEN" if os.environ.get("HF_TOKEN") else "the login cache (`hf auth login`)"
        message = (
            f"the Hub refused the token from {source} (HTTP {status}) for {repo_id}: it is invalid, expired, or has "
            f"no write access to '{repo_id.split('/')[0]}'. {TOKEN_HELP}"
        )
    elif isinstance(error, RevisionNotFoundError):
        message = f"{repo_id} has no such revision: {detail}"
    elif isinstance(error, RepositoryNotFoundError):
        message = f"repository {repo_id} was not found, or is private and the token cannot see it. {TOKEN_HELP}"
    elif isinstance(error, (LocalEntryNotFoundError, OfflineModeIsEnabled)):
        message = (
            f"{repo_id} is not in the local cache and the Hub cannot be reached (HF_HUB_OFFLINE set, or no "
            f"network): {detail}"
        )
    elif isinstance(error, HfHubHTTPError) or is_transient(error):
        message = f"the Hub did not accept the request for {repo_id}: {detail}"
    elif isinstance(error, (OSError, ValueError)):
        message = f"{type(error).__name__}: {detail}"
    else:  # not a user error, but its message must not carry the token either
        return RuntimeError(scrub(f"{type(error).__name__}: {error}", token))
    return HfTlError(f"{message}\n  {again}" if again else message)
