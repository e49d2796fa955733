"""Push a run folder to the Hub in one commit."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import HfApi

from hf_tl.rundir import CHECKPOINTS_DIR


def push_run(run_dir: Path, repo_id: str, private: bool = False) -> str:
    """Create the repository if needed and upload the run folder (resume checkpoints excluded)."""
    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    commit = api.upload_folder(
        repo_id=repo_id,
        folder_path=str(run_dir),
        ignore_patterns=[f"{CHECKPOINTS_DIR}/*", ".*"],
        commit_message=f"hf_tl: upload run {Path(run_dir).name}",
    )
    return commit.commit_url
