"""`hf-tl select` end to end on tiny real-family checkpoints and scikit-learn's digits, offline."""

from __future__ import annotations

import csv
import json
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY_VIT, exit_status_of, outcome_of, run_cli
from omegaconf import OmegaConf
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoModelForImageClassification

from hf_tl.cli.select import main
from hf_tl.selection.ranking import RANKING_CSV, RANKING_MD, RANKING_PNG, STUDY_FILE
from hf_tl.selection.select import CANDIDATES_DIR, sweep_folder
from hf_tl.studies.study import load_study


@pytest.fixture
def feature_cache(tmp_path, monkeypatch) -> Path:
    """A feature cache of this test's own, so no other test's stores are reused here."""
    folder = tmp_path / "features"
    monkeypatch.setenv("HF_TL_CACHE", str(folder))
    return folder


def select(argv: list[str], capsys) -> tuple[int, str, str]:
    """`hf-tl select` in this process: its exit status, stdout and stderr."""
    return outcome_of(main, argv, capsys)


def ranking_rows(folder: Path) -> list[dict]:
    with open(folder / RANKING_CSV, newline="") as f:
        return list(csv.DictReader(f))


def test_select_ranks_three_families_with_their_costs_and_writes_every_file(
    tiny_vit, tiny_resnet, tiny_deit, digits_dir, tmp_path, feature_cache, capsys
):
    out = tmp_path / "selection"
    models = f"models=[{tiny_vit},{tiny_resnet},{tiny_deit}]"
    argv = [f"dataset={digits_dir}", models, f"out={out}", "top_k=2", "training.epochs=1"]
    code, stdout, err = select(argv, capsys)
    assert code == 0, err
    for name in (RANKING_CSV, RANKING_MD, RANKING_PNG, STUDY_FILE):
        assert (out / name).is_file(), name
    rows = {row["model"]: row for row in ranking_rows(out)}
    assert set(rows) == {str(tiny_vit), str(tiny_resnet), str(tiny_deit)}
    assert {rows[m]["family"] for m in rows} == {"vit", "resnet", "deit"}
    assert all(row["status"] == "ok" for row in rows.values())
    assert sorted(int(row["rank"]) for row in rows.values()) == [1, 2, 3]
    assert int(rows[str(tiny_deit)]["feature_dim"]) == 2 * TINY_VIT["hidden_size"]  # both heads' tokens
    assert int(rows[str(tiny_vit)]["feature_dim"]) == TINY_VIT["hidden_size"]
    # 40 of each of 5 digits, a seeded tenth held out: what a training run on the same data sees
    assert {(int(r["num_train"]), int(r["num_eval"])) for r in rows.values()} == {(180, 20)}
    vit = AutoModelForImageClassification.from_pretrained(tiny_vit)
    assert (
        int(rows[str(tiny_vit)]["params"])
        == sum(p.numel() for p in vit.parameters())
        - sum(p.numel() for p in vit.classifier.parameters())
        + (TINY_VIT["hidden_size"] + 1) * 5
    )  # the head for the dataset's 5 classes
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        vit(pixel_values=torch.zeros(1, 3, 16, 16))
    assert float(rows[str(tiny_vit)]["gflops"]) == pytest.approx(counter.get_total_flops() / 1e9, rel=0.05)
    for row in rows.values():
        assert 0 <= float(row["probe_accuracy"]) <= 1 and 0 <= float(row["knn_accuracy"]) <= 1
        assert float(row["images_per_second"]) > 0 and float(row["extract_seconds"]) > 0
    study = load_study(str(out / STUDY_FILE))
    assert len(study.cells) == 4  # the top 2, each with last_block and full
    best_two = sorted(rows.values(), key=lambda r: int(r["rank"]))[:2]
    assert {c.backbone.model for c in study.cells} == {r["model"] for r in best_two}
    assert {c.strategy.key for c in study.cells} == {"last_block", "full"}
    assert "[3/3 done, 0 failed, 0 left]" in stdout
    sweep_dir = re.search(r"out=(\S+/sweep-[0-9a-f]{8}) ", stdout).group(1)  # the study's own folder
    sweep = f"hf-tl sweep study={out / STUDY_FILE} out={sweep_dir} training.epochs=1"  # the overrides too
    assert f"fine-tune the top 2 (or run select again with finetune=true): {sweep}" in stdout
    pasted = run_cli(*shlex.split(sweep.replace("hf-tl", f"{sys.executable} -m hf_tl", 1)), "dry_run=true")
    assert pasted.returncode == 0 and "4 cell recipe(s) written" in pasted.stdout, pasted.stderr[-2000:]


def test_a_failed_candidate_gets_a_row_with_its_reason_and_the_ranking_goes_on(
    tiny_vit, digits_dir, tmp_path, feature_cache, capsys
):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "no_such_family"}')
    out = tmp_path / "selection"
    code, err = exit_status_of(main, [f"dataset={digits_dir}", f"models=[{broken},{tiny_vit}]", f"out={out}"], capsys)
    assert code == 0, err
    rows = {row["model"]: row for row in ranking_rows(out)}
    assert rows[str(tiny_vit)]["status"] == "ok" and rows[str(tiny_vit)]["rank"] == "1"
    assert rows[str(broken)]["status"] == "failed" and rows[str(broken)]["rank"] == ""
    assert "no_such_family" in rows[str(broken)]["reason"]
    assert "no_such_family" in (out / RANKING_MD).read_text()
    assert [c.backbone.model for c in load_study(str(out / STUDY_FILE)).cells] == [str(tiny_vit)] * 2


def test_a_later_linear_probe_run_reuses_the_features_select_stored(
    tiny_vit, digits_dir, tmp_path, feature_cache, capsys
):
    """The quickstart recipe holds out 0.2 of the training split with seed 0: select does too, so the stores match."""
    argv = [f"dataset={digits_dir}", f"models=[{tiny_vit}]", f"out={tmp_path / 's'}", "val_fraction=0.2", "seed=0"]
    code, err = exit_status_of(main, argv, capsys)
    assert code == 0, err
    assert len(list(feature_cache.glob("*/meta.json"))) == 1
    done = run_cli(
        sys.executable, "-m", "hf_tl.train", "recipe=quickstart", f"model.name={tiny_vit}",
        f"data.dataset={digits_dir}", "strategy.kind=linear_probe", "data.augment=none", "training.epochs=1",
        f"output.dir={tmp_path / 'run'}", HF_TL_CACHE=str(feature_cache),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "feature cache: reusing" in done.stdout + done.stderr
    assert len(list(feature_cache.glob("*/meta.json"))) == 1  # nothing new was built


@pytest.mark.parametrize(
    "argv, says",
    [
        (["models=[a,b]", "zoo=miniature"], "give models=[...] or zoo=NAME, not both"),
        ([], "no candidates: give models=[id1,id2,...]"),
        (["models=[a,a]"], "models lists a more than once"),
        (["zoo=no_such_zoo"], "no_such_zoo"),
        (["models=[a]", "top_k=0"], "top_k"),
        (["models=/some/folder"], "Use brackets: models=[/some/folder]"),
        (["models=[a]", "data.max_train_samples=5"], "unknown key 'data.max_train_samples'"),
        (["models=[a]", "training.lrr=1"], "training.lrr"),
        (["models=[a]", "training.epochs=-1"], "training.epochs"),
    ],
)
def test_bad_candidates_are_refused_before_any_work(argv, says, tmp_path, capsys):
    code, err = exit_status_of(main, ["dataset=x", f"out={tmp_path / 's'}", *argv], capsys)
    assert code == 2 and says in err and err.startswith("error:")
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    "argv, code, says",
    [
        (["val_fraction=1.5"], 2, "'data.val_fraction' got 1.5"),
        (["label_column=nope"], 1, "nope"),
        (["dataset=/no/such/folder"], 1, "/no/such/folder"),
    ],
)
def test_data_mistakes_stop_select_once_before_any_candidate(argv, code, says, tiny_vit, digits_dir, tmp_path, capsys):
    out = tmp_path / "s"
    status, stdout, err = select([f"dataset={digits_dir}", f"models=[{tiny_vit}]", f"out={out}", *argv], capsys)
    assert status == code and says in err, err
    assert err.startswith("error:") and err.count("error:") == 1 and "Traceback" not in err
    assert "extracting features" not in stdout and not (out / CANDIDATES_DIR).exists()


def test_two_folders_with_the_same_last_parts_are_two_candidates(
    tiny_vit, tiny_resnet, digits_dir, tmp_path, feature_cache, capsys
):
    first, second = tmp_path / "a" / "x" / "m", tmp_path / "b" / "x" / "m"
    shutil.copytree(tiny_vit, first)
    shutil.copytree(tiny_resnet, second)
    out = tmp_path / "s"
    argv = [f"dataset={digits_dir}", f"models=[{first},{second}]", f"out={out}"]
    code, stdout, err = select(argv, capsys)
    assert code == 0 and "skipped" not in stdout, err
    assert {r["model"]: r["family"] for r in ranking_rows(out)} == {str(first): "vit", str(second): "resnet"}
    (first / "config.json").touch()  # trained again in place: scored again; the other is skipped
    code, stdout, err = select(argv, capsys)
    assert code == 0 and f"{second}: probe" in stdout and stdout.count("(finished earlier: skipped)") == 1, stdout


def test_each_study_and_set_of_overrides_gets_its_own_sweep_folder(tmp_path):
    first, second = tmp_path / "a" / STUDY_FILE, tmp_path / "b" / STUDY_FILE
    for path, text in ((first, "title: top 1\n"), (second, "title: top 2\n")):
        path.parent.mkdir()
        path.write_text(text)
    assert sweep_folder(first, []).parent == first.parent and sweep_folder(first, []).name.startswith("sweep-")
    assert sweep_folder(first, []) == sweep_folder(first, [])
    assert sweep_folder(first, []).name != sweep_folder(second, []).name
    assert sweep_folder(first, []) != sweep_folder(first, ["training.epochs=2"])


def test_no_candidates_names_the_shipped_zoos(capsys):
    from hf_tl.selection.zoo import available_zoos

    _, err = exit_status_of(main, ["dataset=x"], capsys)
    assert all(zoo in err for zoo in available_zoos())


@pytest.mark.slow
def test_an_interrupted_select_resumes_and_skips_finished_candidates(tiny_vit, digits_dir, tmp_path, feature_cache):
    """Ctrl-C once the second candidate has begun. The second and third are ViTs at 128x128 (1,024 tokens), seconds
    each here, so the signal lands inside them (a signal sent on a timer raced a run of tiny models that ended)."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    out, slow = tmp_path / "selection", [tmp_path / "slow-1", tmp_path / "slow-2"]
    for folder in slow:
        config = ViTConfig(**{**TINY_VIT, "image_size": 128}, num_labels=3)
        ViTForImageClassification(config).save_pretrained(folder)
        ViTImageProcessor(size={"height": 128, "width": 128}).save_pretrained(folder)
    models = [str(tiny_vit), *map(str, slow)]
    argv = [sys.executable, "-m", "hf_tl", "select", f"dataset={digits_dir}", f"models=[{','.join(models)}]"]
    argv.append(f"out={out}")
    log_path = tmp_path / "interrupted.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 300
            while "(2 of 3): extracting" not in log_path.read_text():
                assert process.poll() is None and time.monotonic() < deadline, log_path.read_text()[-2000:]
                time.sleep(0.1)
            process.send_signal(signal.SIGINT)  # Ctrl-C
            assert process.wait(timeout=120) != 0
        finally:
            process.kill()
    said = log_path.read_text()
    assert "run the same command again to go on" in said and "Traceback" not in said, said[-2000:]
    first = [json.loads(p.read_text())["model"] for p in (out / CANDIDATES_DIR).glob("*.json")]
    assert str(tiny_vit) in first and len(first) < 3 and not (out / RANKING_CSV).exists()
    done = run_cli(*argv, HF_TL_CACHE=str(feature_cache))
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{tiny_vit}: probe" in done.stdout and done.stdout.count("(finished earlier: skipped)") == len(first)
    assert {row["model"] for row in ranking_rows(out)} == set(models)


@pytest.mark.slow
def test_finetune_runs_the_top_k_study_as_written_and_puts_its_accuracies_beside_the_scores(
    tiny_vit, tiny_resnet, tiny_deit, digits_dir, tmp_path, feature_cache, capsys, monkeypatch
):
    monkeypatch.chdir(tiny_vit.parent)  # one candidate by a relative path, as a user types it
    out = tmp_path / "selection"
    models = f"models=[{tiny_vit.name},{tiny_resnet},{tiny_deit}]"
    argv = [f"dataset={digits_dir}", models, f"out={out}", "top_k=2", "finetune=true", "training.epochs=2"]
    code, _, err = select(argv, capsys)
    assert code == 0, err
    rows = ranking_rows(out)
    for row in rows[:2]:
        for strategy in ("last_block", "full"):
            assert 0 <= float(row[f"{strategy}_accuracy"]) <= 1, row
    assert rows[2]["last_block_accuracy"] == rows[2]["full_accuracy"] == ""  # not in the top 2: not fine-tuned
    study = load_study(str(out / STUDY_FILE))
    assert study.cells[0].recipe(study.spec.base)["training"]["seed"] == 42  # select's split, a run's default seed
    runs = list(out.glob("sweep-*/**/metrics.json"))
    assert len(runs) == 4
    for metrics in runs:
        assert json.loads(metrics.read_text())["eval_split"] == "train[10% held out, seed 42]"
        assert OmegaConf.load(metrics.parent / "recipe.yaml").training.epochs == 2  # the override reached it
    assert (out / "report" / "report.md").is_file()
    assert "last_block" in (out / RANKING_MD).read_text()
