"""Push, card and download against huggingface_hub's real client, with no network.

Uploads go through the real HfApi to tests/fake_hub.py's server on 127.0.0.1, which keeps what
arrives; downloads resolve through huggingface_hub's (and transformers') own code from an HF
cache laid out on disk, with HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

import json
import shlex
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
import yaml
from conftest import run_cli
from fake_hub import FakeHub, fill_hf_cache
from huggingface_hub import ModelCard
from PIL import Image

from hf_tl.config.recipe import load_recipe
from hf_tl.errors import HfTlError
from hf_tl.hub.card import render_card, write_card
from hf_tl.hub.transfer import is_transient, push_run, scrub, upload_plan
from hf_tl.training.run import run

TOKEN = "hf_FAKEtoken1234567890"
WRONG_TOKEN = "hf_WRONGtoken0987654321"
REPO_ID = "alice/tiny-digits"
MODEL_FILES = {"model.safetensors", "config.json", "preprocessor_config.json"}
RUN_FILES = {"recipe.yaml", "metrics.json", "log_history.json", "training_curves.png", "README.md"}


def train_args(model_dir, data_dir, out_dir, *extra) -> list[str]:
    return [
        "recipe=quickstart",
        f"model.name={model_dir}",
        f"data.dataset={data_dir}",
        "data.eval_split=test",
        "strategy.kind=last_block",
        "training.epochs=1",
        "training.batch_size=16",
        f"output.dir={out_dir}",
        *extra,
    ]


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def pushed(tiny_vit, digits_splits_dir, tmp_path_factory):
    """`accelerate launch`-free `python -m hf_tl.train ... hub.push=true`, token planted, against the fake Hub."""
    run_dir = tmp_path_factory.mktemp("pushed") / "run"
    with FakeHub(TOKEN) as hub:
        result = run_cli(
            sys.executable,
            "-m",
            "hf_tl.train",
            *train_args(tiny_vit, digits_splits_dir, run_dir, "hub.push=true", f"hub.repo_id={REPO_ID}"),
            HF_ENDPOINT=hub.url,
            HF_TOKEN=TOKEN,
            HF_HUB_OFFLINE="0",
        )
    assert result.returncode == 0, result.stderr[-3000:]
    return SimpleNamespace(result=result, run_dir=run_dir, hub=hub)


@pytest.fixture
def online(monkeypatch):
    """In this process: the Hub is the fake server (HF_ENDPOINT and huggingface_hub's import-time copy)."""

    def use(hub: FakeHub, token: str | None = TOKEN) -> None:
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", hub.url)
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        if token:
            monkeypatch.setenv("HF_TOKEN", token)

    return use


def test_a_run_with_hub_push_uploads_everything_in_one_commit(pushed):
    repo = pushed.hub.repos[REPO_ID]
    assert len(repo.commits) == 1 and not repo.private
    local = {**{n: (pushed.run_dir / "model" / n).read_bytes() for n in MODEL_FILES}}
    local |= {n: (pushed.run_dir / n).read_bytes() for n in RUN_FILES}
    assert repo.files == local  # byte for byte: weights, config, processor, recipe, metrics, history, curves, card
    assert Image.open(pushed.run_dir / "training_curves.png").format == "PNG"
    assert pushed.hub.unexpected == []
    assert pushed.hub.paths("POST") == [
        "/api/repos/create",
        "/api/validate-yaml",
        f"/api/models/{REPO_ID}/preupload/main",
        f"/api/models/{REPO_ID}/commit/main",
    ]
    assert f"hf_tl: pushed to {pushed.hub.url}/{REPO_ID}/commit/" in pushed.result.stdout


def test_the_card_parses_and_its_model_index_equals_metrics_json(pushed):
    metrics = json.loads((pushed.run_dir / "metrics.json").read_text())
    card = ModelCard(pushed.hub.repos[REPO_ID].files["README.md"].decode())
    data = card.data
    assert data.pipeline_tag == "image-classification" and data.library_name == "transformers"
    assert data.license == "unknown"  # the base model is a local folder with no card to take it from
    assert data.base_model is None and data.datasets is None  # local paths are not Hub ids
    assert set(data.tags) == {"hf_tl", "last_block", "vit"}
    assert data.model_name == "tiny-digits"
    results = {(r.metric_type, json.dumps(r.metric_args)): r for r in data.eval_results}
    assert set(results) == {("accuracy", "null"), ("f1", '{"average": "macro"}')}  # 5 classes: no top-5
    assert results[("accuracy", "null")].metric_value == metrics["eval"]["accuracy"]
    assert results[("f1", '{"average": "macro"}')].metric_value == metrics["eval"]["macro_f1"]
    for r in data.eval_results:
        assert (r.task_type, r.dataset_type, r.dataset_split) == ("image-classification", "saved", "test")
    body = card.text
    assert f"{metrics['parameters']['trainable']:,} of {metrics['parameters']['total']:,} parameters train" in body
    assert "`vit.layers.2`, `vit.layernorm`, `classifier`" in body
    assert "| `training.lr` | 0.002 |" in body
    seconds = metrics["timings"]["train_seconds_per_epoch"][0]
    assert f"| 1 | {seconds:.2f} |" in body
    for label, value in metrics["eval"]["per_class_accuracy"].items():
        assert f"| {label.replace('_', chr(92) + '_')} | {value:.4f} |" in body
    assert "![Training loss and validation accuracy per epoch](training_curves.png)" in body


def test_the_cards_command_reproduces_the_recipe(pushed):
    card = ModelCard((pushed.run_dir / "README.md").read_text())
    (command,) = [line for line in card.text.splitlines() if "-m hf_tl.train" in line]
    assert f"hf-tl download {REPO_ID} dir=tiny-digits" in card.text
    args = shlex.split(command)
    assert args[:4] == ["accelerate", "launch", "-m", "hf_tl.train"]
    assert args[4] == "recipe=tiny-digits/recipe.yaml"
    reproduced = load_recipe(str(pushed.run_dir / "recipe.yaml"), args[5:])
    original = load_recipe(str(pushed.run_dir / "recipe.yaml"))
    for section in ("model", "strategy", "data", "training"):
        assert getattr(reproduced, section) == getattr(original, section)
    assert reproduced.hub.push is False and reproduced.output.dir == "runs/tiny-digits-reproduced"


def test_a_planted_token_appears_nowhere(pushed):
    assert any(h.get("authorization") == f"Bearer {TOKEN}" for h in pushed.hub.headers_seen)  # it was used
    assert TOKEN not in pushed.result.stdout + pushed.result.stderr
    for name, content in folder_bytes(pushed.run_dir).items():
        assert TOKEN.encode() not in content, name
    for name, content in pushed.hub.repos[REPO_ID].files.items():
        assert TOKEN.encode() not in content, name


def test_download_from_the_cache_prints_card_and_recipe_then_eval_compares(pushed, digits_splits_dir, tmp_path):
    repo = pushed.hub.repos[REPO_ID]
    cache = tmp_path / "hf-home" / "hub"
    fill_hf_cache(cache, REPO_ID, repo.files, repo.commits[-1]["oid"])
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_CACHE": str(cache), "HF_TOKEN": ""}
    metrics = json.loads((pushed.run_dir / "metrics.json").read_text())

    downloaded = run_cli(sys.executable, "-m", "hf_tl.download", REPO_ID, cwd=tmp_path, **env)
    assert downloaded.returncode == 0, downloaded.stderr[-3000:]
    out = downloaded.stdout
    assert f"downloaded {REPO_ID} to {cache}/models--alice--tiny-digits/snapshots/" in out
    assert f"accuracy         {metrics['eval']['accuracy']:.4f}   (saved / test)" in out  # the folder's name
    assert f"macro_f1         {metrics['eval']['macro_f1']:.4f}" in out
    assert "  strategy:\n    kind: last_block" in out  # the recipe, as trained
    assert "hf_tl.eval model=" in out and " split=test" in out and "dataset=" not in out  # the recipe's dataset

    evaluated = run_cli(
        sys.executable,
        "-m",
        "hf_tl.eval",
        f"model={REPO_ID}",
        f"dataset={digits_splits_dir}",
        "split=test",
        f"output={tmp_path / 'eval'}",
        cwd=tmp_path,
        **env,
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert report["metrics"]["accuracy"] == pytest.approx(metrics["eval"]["accuracy"], abs=1e-9)
    compared = report["card"]["compared"]
    assert set(compared) == {"accuracy", "macro_f1"}
    assert compared["accuracy"]["card"] == metrics["eval"]["accuracy"]
    assert compared["accuracy"]["difference"] == pytest.approx(0.0, abs=1e-9)
    assert "beside its model card:" in evaluated.stdout
    accuracy = metrics["eval"]["accuracy"]
    assert f"accuracy           {accuracy:.4f} {accuracy:>10.4f}     +0.0000" in evaluated.stdout


def test_download_into_a_folder_offline(pushed, tmp_path, monkeypatch, capsys):
    from hf_tl.cli.download import main

    repo = pushed.hub.repos[REPO_ID]
    cache = tmp_path / "hub"
    fill_hf_cache(cache, REPO_ID, repo.files, repo.commits[-1]["oid"])
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    main([REPO_ID, f"dir={tmp_path / 'copy'}"])
    assert folder_bytes(tmp_path / "copy") == repo.files
    assert f"downloaded {REPO_ID} to {tmp_path / 'copy'}" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exited:
        main(["alice/not-there"])
    assert exited.value.code == 1
    assert "alice/not-there is not in the local cache" in capsys.readouterr().err


def test_a_failed_commit_is_retried(pushed, online, capsys):
    with FakeHub(TOKEN, fail_commits=1) as hub:
        online(hub)
        url = push_run(pushed.run_dir, "alice/retried", backoff=0.01)
    assert url.startswith(f"{hub.url}/alice/retried/commit/")
    assert [s for m, p, s in hub.requests if p.endswith("/commit/main")] == [503, 200]
    assert len(hub.repos["alice/retried"].commits) == 1
    assert set(hub.repos["alice/retried"].files) == MODEL_FILES | RUN_FILES
    err = capsys.readouterr().err
    assert "the commit failed" in err and "503" in err and "retry 1 of 5" in err


def test_a_push_that_keeps_failing_stops_and_leaves_the_folder_as_it_was(pushed, online, capsys):
    before = folder_bytes(pushed.run_dir)
    with FakeHub(TOKEN, fail_commits=100) as hub:
        online(hub)
        with pytest.raises(HfTlError) as error:
            push_run(pushed.run_dir, "alice/down", retries=2, backoff=0.01)
    message = str(error.value)
    assert "503" in message and f"hf-tl push {pushed.run_dir} repo_id=alice/down" in message
    assert [s for m, p, s in hub.requests if p.endswith("/commit/main")] == [503, 503, 503]
    assert capsys.readouterr().err.count("the commit failed") == 2
    assert folder_bytes(pushed.run_dir) == before
    assert hub.repos["alice/down"].files == {}


def test_a_refused_token_is_a_clear_error_and_the_same_command_then_works(pushed):
    before = folder_bytes(pushed.run_dir)
    command = (sys.executable, "-m", "hf_tl.push", str(pushed.run_dir), "repo_id=alice/again", "private=true")
    with FakeHub(TOKEN) as hub:
        refused = run_cli(*command, HF_ENDPOINT=hub.url, HF_TOKEN=WRONG_TOKEN, HF_HUB_OFFLINE="0")
        assert refused.returncode == 1
        assert "error: the Hub refused the token from HF_TOKEN (HTTP 401) for alice/again" in refused.stderr
        assert "https://huggingface.co/settings/tokens" in refused.stderr
        assert f"push it again: hf-tl push {pushed.run_dir} repo_id=alice/again" in refused.stderr
        assert "Traceback" not in refused.stderr
        assert WRONG_TOKEN not in refused.stdout + refused.stderr
        assert folder_bytes(pushed.run_dir) == before and "alice/again" not in hub.repos

        accepted = run_cli(*command, HF_ENDPOINT=hub.url, HF_TOKEN=TOKEN, HF_HUB_OFFLINE="0")
    assert accepted.returncode == 0, accepted.stderr[-3000:]
    assert hub.repos["alice/again"].private
    assert set(hub.repos["alice/again"].files) == MODEL_FILES | RUN_FILES
    assert TOKEN not in accepted.stdout + accepted.stderr
    assert folder_bytes(pushed.run_dir) == before


def test_a_push_that_fails_at_the_end_of_a_run_leaves_a_finished_run_folder(
    tiny_vit, digits_splits_dir, tmp_path, online
):
    recipe = load_recipe(
        "quickstart", train_args(tiny_vit, digits_splits_dir, tmp_path / "run", "hub.push=true", "hub.repo_id=a/b")[1:]
    )
    with FakeHub(TOKEN) as hub:
        online(hub, WRONG_TOKEN)
        with pytest.raises(HfTlError, match="refused the token"):
            run(recipe)
        run_dir = tmp_path / "run"
        assert {p.name for p in run_dir.iterdir()} == {"model"} | RUN_FILES  # complete, checkpoints removed
        online(hub, TOKEN)
        push_run(run_dir, "a/b")
    assert hub.repos["a/b"].files["metrics.json"] == (run_dir / "metrics.json").read_bytes()


def test_an_unedited_card_is_pushed_naming_the_target_and_an_edited_one_as_it_stands(pushed, online, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(pushed.run_dir, folder)
    with FakeHub(TOKEN) as hub:
        online(hub)
        push_run(folder, "bob/other")
        card = ModelCard(hub.repos["bob/other"].files["README.md"].decode())
        assert card.data.model_name == "other" and "hf-tl download bob/other" in card.text
        assert (folder / "README.md").read_bytes() == (pushed.run_dir / "README.md").read_bytes()  # untouched

        (folder / "README.md").write_text((folder / "README.md").read_text() + "\nNotes by hand.\n")
        push_run(folder, "bob/edited")
    assert hub.repos["bob/edited"].files["README.md"] == (folder / "README.md").read_bytes()


def test_names_from_data_cannot_break_the_card(pushed, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(pushed.run_dir, folder)
    metrics = json.loads((folder / "metrics.json").read_text())
    hostile = ["a|b", "<script>alert(1)</script>", "x\n---\nlicense: mit", "`code`", "$x^2$", "[link](http://e.x)"]
    metrics["dataset"] = "evil\n---\nlicense: mit\ntags: [pwned]"
    metrics["eval_split"] = "test | injected"
    metrics["eval"]["per_class_accuracy"] = {name: 0.5 for name in hostile}
    metrics["train"]["per_class_accuracy"] = {name: 0.25 for name in hostile}
    (folder / "metrics.json").write_text(json.dumps(metrics))

    card = ModelCard(str(render_card(folder)))
    assert card.data.license == "unknown" and set(card.data.tags) == {"hf_tl", "last_block", "vit"}
    assert {r.dataset_type for r in card.data.eval_results} == {metrics["dataset"]}  # kept exactly, as YAML
    assert {r.dataset_split for r in card.data.eval_results} == {"test | injected"}
    body = card.text
    assert "<script>" not in body and "\n---\n" not in body
    table = body.split("### Per-class accuracy")[1].split("##")[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and "0.5000" in line]
    assert len(rows) == len(hostile)
    for row in rows:  # three cells each: every '|' from the data is escaped
        assert row.replace("\\|", "").count("|") == 4, row
    assert "[link]" not in body and "`code`" not in body


def test_push_refuses_what_it_cannot_push_before_any_request(pushed, tmp_path, monkeypatch):
    with pytest.raises(HfTlError, match="not a finished hf_tl run: recipe.yaml, metrics.json"):
        push_run(tmp_path, "alice/x")
    with pytest.raises(HfTlError, match="must read 'user/name'"):
        push_run(pushed.run_dir, "no-slash")
    with pytest.raises(HfTlError, match="HF_HUB_OFFLINE is set"):  # the tests run offline
        push_run(pushed.run_dir, "alice/x")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(HfTlError, match="no Hugging Face token found. Set HF_TOKEN"):
        push_run(pushed.run_dir, "alice/x")


def test_upload_plan_puts_the_model_at_the_top_and_skips_checkpoints(pushed, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(pushed.run_dir, folder)
    (folder / "checkpoints" / "checkpoint-1").mkdir(parents=True)
    (folder / "checkpoints" / "checkpoint-1" / "optimizer.pt").write_bytes(b"x")
    (folder / "adapter").mkdir()
    (folder / "adapter" / "adapter_model.safetensors").write_bytes(b"y")
    plan = upload_plan(folder)
    assert set(plan) == MODEL_FILES | RUN_FILES | {"adapter/adapter_model.safetensors"}
    assert plan["config.json"] == folder / "model" / "config.json"


def test_scrub_and_transient_errors():
    from huggingface_hub.errors import HfHubHTTPError

    assert scrub(f"Bearer {TOKEN} failed", TOKEN) == "Bearer *** failed"
    assert scrub("token hf_abcdefghijklmnopqrstuvwxyz01234567 leaked", None) == "token hf_*** leaked"

    def http_error(status: int) -> HfHubHTTPError:
        return HfHubHTTPError("x", response=SimpleNamespace(status_code=status, headers={}, request=None))

    assert is_transient(http_error(503)) and is_transient(http_error(429))
    assert not is_transient(http_error(401)) and not is_transient(ValueError("no"))
    assert is_transient(ConnectionError("reset"))


def test_the_card_is_rewritten_from_the_folder_alone(pushed, tmp_path):
    folder = tmp_path / "moved"
    shutil.copytree(pushed.run_dir, folder)
    (folder / "README.md").unlink()
    write_card(folder)
    assert (folder / "README.md").read_text() == (pushed.run_dir / "README.md").read_text()


def push_held_out_run(model, data, run_dir, repo_id: str, *extra: str) -> SimpleNamespace:
    """Train a run validated on the part of train it held out (data has only a train split) and push it."""
    args = [a for a in train_args(model, data, run_dir) if a != "data.eval_split=test"]
    with FakeHub(TOKEN) as hub:
        result = run_cli(
            sys.executable, "-m", "hf_tl.train", *args, *extra, "data.val_fraction=0.2", "hub.push=true",
            f"hub.repo_id={repo_id}", HF_ENDPOINT=hub.url, HF_TOKEN=TOKEN, HF_HUB_OFFLINE="0",
        )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return SimpleNamespace(run_dir=run_dir, hub=hub, metrics=json.loads((run_dir / "metrics.json").read_text()))


@pytest.fixture(scope="module")
def pushed_held_out(tiny_vit, digits_dir, tmp_path_factory):
    return push_held_out_run(tiny_vit, digits_dir, tmp_path_factory.mktemp("pushed-held-out") / "run", "alice/held-out")


def test_the_printed_eval_command_of_a_held_out_run_works_when_pasted(pushed_held_out, tmp_path):
    """download prints an eval command; pasted, it evaluates the held-out split and agrees with the card."""
    metrics = pushed_held_out.metrics
    assert metrics["eval_split"] == "train[20% held out, seed 0]"  # the quickstart recipe's seed
    repo = pushed_held_out.hub.repos["alice/held-out"]
    cache = tmp_path / "hf-home" / "hub"
    fill_hf_cache(cache, "alice/held-out", repo.files, repo.commits[-1]["oid"])
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_CACHE": str(cache), "HF_TOKEN": ""}
    downloaded = run_cli(sys.executable, "-m", "hf_tl.download", "alice/held-out", cwd=tmp_path, **env)
    assert downloaded.returncode == 0, downloaded.stderr[-3000:]
    (printed,) = [line for line in downloaded.stdout.splitlines() if line.startswith("evaluate it: ")]
    command = shlex.split(printed.removeprefix("evaluate it: "))
    assert command[:3] == ["python", "-m", "hf_tl.eval"] and "split=validation" in command
    evaluated = run_cli(sys.executable, *command[1:], f"output={tmp_path / 'eval'}", cwd=tmp_path, **env)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert report["split"] == metrics["eval_split"]
    assert report["num_examples"] == metrics["num_eval_examples"]
    assert report["metrics"]["accuracy"] == metrics["eval"]["accuracy"]
    assert report["card"]["compared"]["accuracy"]["difference"] == 0.0


def test_eval_of_a_run_folder_takes_its_own_dataset_and_held_out_split(pushed_held_out, tmp_path):
    from hf_tl.cli.eval import parse_args
    from hf_tl.inference.evaluate import evaluate

    metrics = pushed_held_out.metrics
    report = evaluate(parse_args([f"model={pushed_held_out.run_dir}", "split=validation", f"output={tmp_path}"]))
    assert report["dataset"] == metrics["dataset"] and report["split"] == metrics["eval_split"]
    assert report["metrics"]["accuracy"] == metrics["eval"]["accuracy"]
    assert report["metrics"]["macro_f1"] == metrics["eval"]["macro_f1"]


def test_the_cards_eval_command_names_the_runs_split(pushed_held_out):
    card = ModelCard(pushed_held_out.hub.repos["alice/held-out"].files["README.md"].decode())
    (command,) = [line for line in card.text.splitlines() if "-m hf_tl.eval" in line]
    assert shlex.split(command) == ["python", "-m", "hf_tl.eval", "model=alice/held-out", "split=validation"]


def test_a_model_that_is_not_a_run_needs_a_dataset(tiny_vit, tmp_path):
    from hf_tl.cli.eval import parse_args
    from hf_tl.errors import RecipeError
    from hf_tl.inference.evaluate import evaluate

    with pytest.raises(RecipeError, match="'dataset=' is required: the model is not an hf_tl run"):
        evaluate(parse_args([f"model={tiny_vit}", f"output={tmp_path}"]))
    with pytest.raises(RecipeError, match="there is no folder runs/mistyped here, and as a Hub id it has no recipe"):
        evaluate(parse_args(["model=runs/mistyped", f"output={tmp_path}"]))  # offline in tests: no Hub either


@pytest.fixture(scope="module")
def pushed_mlp_head(tiny_vit, digits_dir, tmp_path_factory):
    """A run with an MLP head (its checkpoint ships the head's code), validated on the part of train it held out."""
    run_dir = tmp_path_factory.mktemp("pushed-mlp-head") / "run"
    return push_held_out_run(tiny_vit, digits_dir, run_dir, "alice/mlp-head", "model.head=mlp")


def test_the_printed_eval_command_of_a_revision_with_an_mlp_head_works_when_pasted(pushed_mlp_head, tmp_path):
    """Downloaded at a revision, a checkpoint whose head ships its own code: the printed command names both."""
    repo = pushed_mlp_head.hub.repos["alice/mlp-head"]
    assert "hf_tl_mlp_head.py" in repo.files and "auto_map" in json.loads(repo.files["config.json"])
    commit = repo.commits[-1]["oid"]
    cache = tmp_path / "hf-home" / "hub"
    fill_hf_cache(cache, "alice/mlp-head", repo.files, commit)
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_CACHE": str(cache), "HF_TOKEN": ""}
    downloaded = run_cli(
        sys.executable, "-m", "hf_tl.download", "alice/mlp-head", f"revision={commit}", cwd=tmp_path, **env
    )
    assert downloaded.returncode == 0, downloaded.stderr[-3000:]
    (printed,) = [line for line in downloaded.stdout.splitlines() if line.startswith("evaluate it: ")]
    command = shlex.split(printed.removeprefix("evaluate it: "))
    assert command[:3] == ["python", "-m", "hf_tl.eval"]
    assert {"split=validation", f"revision={commit}", "trust_remote_code=true"} <= set(command)
    evaluated = run_cli(sys.executable, *command[1:], f"output={tmp_path / 'eval'}", cwd=tmp_path, **env)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    metrics = pushed_mlp_head.metrics
    assert (report["revision"], report["split"]) == (commit, metrics["eval_split"])
    assert report["metrics"]["accuracy"] == metrics["eval"]["accuracy"]
    assert report["card"]["compared"]["accuracy"]["difference"] == 0.0


def test_the_eval_command_trusts_only_a_checkpoint_that_ships_code(tmp_path):
    from hf_tl.hub.download import eval_command

    for name, config in (("linear", {"hf_tl_mlp_heads": []}), ("mlp", {"hf_tl_mlp_heads": ["classifier"]})):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(config))
    assert "trust_remote_code" not in eval_command(tmp_path / "linear")
    assert shlex.split(eval_command(tmp_path / "mlp", "v 1"))[-2:] == ["revision=v 1", "trust_remote_code=true"]


def test_the_held_out_split_of_a_hub_dataset_run_is_carved_again_from_a_local_copy(pushed_held_out, tmp_path):
    """A run trained on a pinned Hub dataset (data.revision), evaluated on a local copy of it: the copy has no
    revision, so the run's is not passed on, and the run's held-out split is carved from the copy."""
    from hf_tl.cli.eval import parse_args
    from hf_tl.inference.evaluate import evaluate

    run_dir = tmp_path / "run"
    shutil.copytree(pushed_held_out.run_dir, run_dir)
    recipe = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    local_copy = recipe["data"]["dataset"]
    recipe["data"].update(dataset="alice/digits", revision="v1.0")  # as a run on the Hub dataset recorded it
    (run_dir / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    given = [f"model={run_dir}", f"dataset={local_copy}", "split=validation", f"output={tmp_path / 'eval'}"]
    report = evaluate(parse_args(given))
    assert report["split"] == pushed_held_out.metrics["eval_split"]
    assert report["metrics"]["accuracy"] == pushed_held_out.metrics["eval"]["accuracy"]
