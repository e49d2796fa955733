"""No command ever shows the Hugging Face token, even when the server echoes it back.

The threat: a Hub endpoint (or a proxy before it) that answers 401 with the Authorization header it
received. huggingface_hub quotes the server's answer in its exceptions, so the token reaches every
message built from them. Each command that loads a model runs here as a real subprocess, the token
planted in HF_TOKEN, against tests/fake_hub.py's server, which echoes the header in its 401 body and
X-Error-Message header. Each must fail with one `error:` line, no traceback, and no token anywhere:
not on stdout or stderr, not in any file it wrote.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from conftest import run_cli
from fake_hub import FakeHub

pytestmark = pytest.mark.slow

TOKEN = "hf_PLANTEDsecret0123456789abcdef"
REPO_ID = "alice/private-vit"
COMMANDS = ("train", "eval", "analyze cka", "analyze attention-distance", "params", "download", "push", "sweep")
STUDY = """\
title: One cell
paper: the tests
datasets:
  - {{key: digits, dataset: {data}}}
strategies:
  - {{key: linear, recipe: {{strategy: {{kind: linear_probe}}}}}}
backbones:
  - {{key: vit, type: transformer, model: {model}}}
"""


def run_folder(root: Path) -> Path:
    """The files `hf-tl push` requires of a finished run; their content does not matter before the Hub refuses."""
    for name in ("recipe.yaml", "metrics.json", "README.md", "training_curves.png", "model/config.json"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("{}\n")
    (root / "model" / "model.safetensors").write_bytes(b"not read before the push is refused")
    return root


def commands(data: Path, out: Path) -> dict[str, list[str]]:
    """Every command that loads a model, or sends the token to the Hub, pointed at the private repository."""
    study = out / "study.yaml"
    study.parent.mkdir(parents=True, exist_ok=True)
    study.write_text(STUDY.format(data=data, model=REPO_ID))
    train = [f"model.name={REPO_ID}", f"data.dataset={data}", "data.eval_split=test", f"output.dir={out / 'run'}"]
    return {
        "train": ["hf_tl.train", "recipe=quickstart", *train],
        "eval": ["hf_tl.eval", f"model={REPO_ID}", f"dataset={data}", "split=test", f"output={out / 'eval'}"],
        "analyze cka": ["hf_tl.analyze", "cka", f"model_a={REPO_ID}", f"dataset={data}", f"out={out / 'cka'}"],
        "analyze attention-distance": [
            "hf_tl.analyze", "attention-distance", f"model={REPO_ID}", f"dataset={data}", f"out={out / 'distance'}",
        ],
        "params": ["hf_tl.params", "recipe=quickstart", f"model.name={REPO_ID}"],
        "download": ["hf_tl.download", REPO_ID, f"dir={out / 'download'}"],
        "push": ["hf_tl.push", str(run_folder(out / "finished")), f"repo_id={REPO_ID}"],
        "sweep": ["hf_tl.sweep", f"study={study}", f"out={out / 'sweep'}"],
    }  # fmt: skip


def files_holding(folder: Path, text: str) -> list[str]:
    return [str(p) for p in folder.rglob("*") if p.is_file() and text.encode() in p.read_bytes()]


@pytest.mark.parametrize("name", COMMANDS)
def test_an_echoed_token_appears_nowhere(name, digits_splits_dir, tmp_path):
    out = tmp_path / "out"
    every = commands(digits_splits_dir, out)
    assert set(every) == set(COMMANDS)
    command = every[name]
    with FakeHub(TOKEN, refuse_token=True) as hub:
        result = run_cli(sys.executable, "-m", *command, HF_ENDPOINT=hub.url, HF_TOKEN=TOKEN, HF_HUB_OFFLINE="0")
    shown = result.stdout + result.stderr
    # The threat was real: the token was sent, and the server answered 401 with it.
    assert any(h.get("authorization") == f"Bearer {TOKEN}" for h in hub.headers_seen), shown[-2000:]
    assert any(status == 401 for _, _, status in hub.requests)
    assert result.returncode == 1, shown[-2000:]
    assert TOKEN not in shown
    assert "Traceback" not in shown
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-2000:]
    assert files_holding(tmp_path, TOKEN) == []
