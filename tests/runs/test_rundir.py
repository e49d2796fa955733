"""The run folder: hf_tl deletes only what it wrote, replaces an old run only once the new one has saved
something, checks output.dir before any work, and lets a failed run be corrected and run again.

Real tiny runs (a ViT on digits) in process, and one in a subprocess killed with SIGKILL.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import outcome_of, run_cli

from hf_tl.config.recipe import load_recipe
from hf_tl.errors import HfTlError
from hf_tl.runs import folder as rundir
from hf_tl.train import main
from hf_tl.training.run import run
from hf_tl.training.trainer import HfTlTrainer


def overrides(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [
        f"model.name={model}",
        f"data.dataset={data}",
        "strategy.kind=linear_probe",
        "training.epochs=1",
        "training.batch_size=16",
        f"output.dir={out}",
        *extra,
    ]


def tiny(model: Path, data: Path, out: Path, *extra: str):
    return load_recipe("quickstart", overrides(model, data, out, *extra))


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` (hidden ones too) and a hash of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def cli_exit(argv: list[str], capsys) -> tuple[int, str, str]:
    """`python -m hf_tl.train ARGV` in this process: exit status, stdout, stderr."""
    return outcome_of(main, argv, capsys)


def user_folder(folder: Path) -> Path:
    (folder / "sub").mkdir(parents=True)
    (folder / "thesis.tex").write_text("\\section{Results}\n")
    (folder / "sub" / "data.csv").write_text("a,b\n1,2\n")
    return folder


@pytest.fixture(scope="module")
def finished(tiny_vit, digits_dir, tmp_path_factory) -> Path:
    """A finished run, copied by the tests that change it."""
    return run(tiny(tiny_vit, digits_dir, tmp_path_factory.mktemp("finished") / "run"))


def copy_of(run_dir: Path, where: Path) -> Path:
    import shutil

    shutil.copytree(run_dir, where)
    return where


# -- nothing hf_tl did not write is ever deleted -------------------------------------------------------------------


@pytest.mark.parametrize("overwrite", ["true", "false"])
def test_a_folder_of_other_files_is_refused_and_left_whole(overwrite, tiny_vit, digits_dir, tmp_path, capsys):
    folder = user_folder(tmp_path / "mine")
    before = snapshot(folder)
    code, _, err = cli_exit(
        ["recipe=quickstart", *overrides(tiny_vit, digits_dir, folder, f"output.overwrite={overwrite}")], capsys
    )
    assert code == 1
    assert err.startswith(f"error: output.dir={folder} is not empty (sub, thesis.tex) and holds no hf_tl run")
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert snapshot(folder) == before and sorted(p.name for p in folder.iterdir()) == ["sub", "thesis.tex"]


def test_output_dir_dot_with_overwrite_never_deletes_the_working_directory(
    tiny_vit, digits_dir, tmp_path, monkeypatch, capsys
):
    folder = user_folder(tmp_path / "project")
    (folder / "README.md").write_text("my project\n")  # a name a run also writes: still not hf_tl's
    before = snapshot(folder)
    monkeypatch.chdir(folder)
    code, _, err = cli_exit(
        ["recipe=quickstart", *overrides(tiny_vit, digits_dir, Path("."), "output.overwrite=true")], capsys
    )
    assert code == 1 and "error: output.dir=. is not empty" in err
    assert snapshot(folder) == before


def test_overwrite_replaces_only_the_runs_own_files(finished, tiny_vit, digits_dir, tmp_path, capsys):
    run_dir = copy_of(finished, tmp_path / "run")
    (run_dir / "notes.txt").write_text("why I ran this\n")
    (run_dir / "evals").mkdir()
    (run_dir / "evals" / "eval.json").write_text("{}\n")
    run(tiny(tiny_vit, digits_dir, run_dir, "strategy.kind=last_block", "output.overwrite=true"))
    assert "is set aside in" in capsys.readouterr().out
    assert (run_dir / "notes.txt").read_text() == "why I ran this\n" and (run_dir / "evals" / "eval.json").exists()
    assert json.loads((run_dir / "metrics.json").read_text())["parameters"]["kind"] == "last_block"
    assert not (run_dir / rundir.REPLACED_DIR).exists()  # removed at the new run's first checkpoint


def test_a_mistyped_dataset_with_overwrite_leaves_the_finished_run_whole(finished, tiny_vit, tmp_path):
    run_dir = copy_of(finished, tmp_path / "run")
    before = snapshot(run_dir)
    with pytest.raises(HfTlError):
        run(tiny(tiny_vit, tmp_path / "no-such-dataset", run_dir, "output.overwrite=true"))
    assert snapshot(run_dir) == before
    assert sorted(os.listdir(run_dir)) == sorted(os.listdir(finished))


def fail_in_the_first_step(monkeypatch) -> None:
    """A crash in training before the first checkpoint (what an out-of-memory error in step 1 does)."""

    def training_step(self, *args, **kwargs):
        raise RuntimeError("CUDA out of memory (simulated in the first step)")

    monkeypatch.setattr(HfTlTrainer, "training_step", training_step)


def test_a_replacing_run_that_fails_before_its_first_checkpoint_puts_the_old_run_back(
    finished, tiny_vit, digits_dir, tmp_path, monkeypatch, capsys
):
    run_dir = copy_of(finished, tmp_path / "run")
    before = snapshot(run_dir)
    fail_in_the_first_step(monkeypatch)
    with pytest.raises(RuntimeError, match="simulated"):
        run(tiny(tiny_vit, digits_dir, run_dir, "strategy.kind=last_block", "output.overwrite=true"))
    assert "the run this one replaces is back" in capsys.readouterr().out
    assert snapshot(run_dir) == before
    assert sorted(os.listdir(run_dir)) == sorted(os.listdir(finished))


def test_the_states_a_kill_can_leave_while_replacing_are_sorted_out(finished, tmp_path):
    """Each step of set-aside and put-back, cut short, is recovered to a whole old run."""
    for cut in range(len(os.listdir(finished)) + 1):
        run_dir = copy_of(finished, tmp_path / f"cut-{cut}")
        before = snapshot(run_dir)
        aside = run_dir / rundir.REPLACED_DIR
        aside.mkdir()
        for name in sorted(os.listdir(run_dir))[:cut]:  # killed while moving the entries aside
            if name != rundir.REPLACED_DIR:
                os.replace(run_dir / name, aside / name)
        rundir.recover_replaced(run_dir)
        assert snapshot(run_dir) == before and not aside.exists()
    run_dir = copy_of(finished, tmp_path / "moved")
    rundir.set_aside(run_dir)  # moved, then the new run wrote its recipe and an empty checkpoints/
    (run_dir / "recipe.yaml").write_text((finished / "recipe.yaml").read_text().replace("linear_probe", "full"))
    (run_dir / "checkpoints").mkdir()
    rundir.recover_replaced(run_dir)
    assert snapshot(run_dir) == snapshot(finished)
    run_dir = copy_of(finished, tmp_path / "discarding")  # the new run's results, and the old run half deleted
    (run_dir / rundir.DISCARDED_DIR / "model").mkdir(parents=True)
    (run_dir / rundir.DISCARDED_DIR / "model" / "config.json").write_text("{}")
    rundir.recover_replaced(run_dir)
    assert snapshot(run_dir) == snapshot(finished) and not (run_dir / rundir.DISCARDED_DIR).exists()


@pytest.mark.slow
def test_sigkill_while_replacing_then_rerun_sorts_it_out(finished, tiny_vit, digits_dir, tmp_path, capsys):
    run_dir = copy_of(finished, tmp_path / "run")
    before = snapshot(run_dir)
    # Full fine-tuning in batches of 4: an epoch (40 steps) long enough to be killed in before its checkpoint.
    replacing = overrides(tiny_vit, digits_dir, run_dir, "strategy.kind=full", "training.batch_size=4")
    command = [sys.executable, "-m", "hf_tl.train", "recipe=quickstart", *replacing]

    def start_and_kill_after(line_start: str) -> str:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        process = subprocess.Popen(
            [*command, "output.overwrite=true"], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        for line in process.stdout:
            if line.startswith(line_start):
                process.kill()
                process.wait()
                return line
        pytest.fail(f"the run ended (status {process.wait()}) before printing {line_start!r}")

    start_and_kill_after(f"hf_tl: {tiny_vit} | strategy full")  # set aside, recipe written, before any step
    assert (run_dir / rundir.REPLACED_DIR).is_dir() and not rundir.has_produced(run_dir)

    run(tiny(tiny_vit, digits_dir, run_dir))  # the old command: the old run is put back, and is complete
    out = capsys.readouterr().out
    assert "stopped before its first checkpoint; the previous run is back in place" in out
    assert "this run is complete already" in out
    assert snapshot(run_dir) == before

    start_and_kill_after("hf_tl: first checkpoint saved")  # now the new run has something: the old goes
    assert not (run_dir / rundir.REPLACED_DIR).exists() and rundir.has_produced(run_dir)
    resumed = run_cli(*command)  # the new command, without overwrite: resumes the new run
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout
    assert json.loads((run_dir / "metrics.json").read_text())["parameters"]["kind"] == "full"


# -- output.dir is checked before any work --------------------------------------------------------------------------


def unwritable(case: str, tmp_path: Path) -> tuple[Path, str]:
    """An output.dir hf_tl cannot write, and what the error says about it."""
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder\n")
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    read_only.chmod(0o555)
    return {
        "a-file": (a_file, "is a file, not a folder"),
        "under-a-file": (a_file / "run", "is a file, not a folder"),
        "proc": (Path("/proc/hf_tl-run"), "cannot be created"),
        "sys": (Path("/sys/hf_tl-run"), "cannot be created"),
        "read-only": (read_only / "run", "cannot be created (Permission denied"),
    }[case]


@pytest.mark.parametrize("case", ["a-file", "under-a-file", "proc", "sys", "read-only"])
def test_an_output_dir_that_cannot_be_written_is_named_before_any_work(case, tiny_vit, tmp_path, capsys):
    if case == "read-only" and os.geteuid() == 0:
        pytest.skip("root writes into a chmod 555 folder (os.access says yes too); /proc and /sys refuse even root")
    folder, message = unwritable(case, tmp_path)
    # The dataset does not exist either: the error names output.dir, so it came before the data were read.
    argv = ["recipe=quickstart", *overrides(tiny_vit, tmp_path / "no-such-dataset", folder)]
    code, _, err = cli_exit(argv, capsys)
    assert code == 1, err
    assert err.startswith(f"error: output.dir={folder}") and message in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_an_output_dir_inside_the_installed_package_is_refused(tiny_vit, digits_dir, capsys):
    folder = rundir.PACKAGE_DIR / "assets" / "run"
    code, _, err = cli_exit(["recipe=quickstart", *overrides(tiny_vit, digits_dir, folder)], capsys)
    assert code == 2 and "inside the installed hf_tl package" in err
    assert not folder.exists()


# -- a failed run can be corrected and run again --------------------------------------------------------------------


def test_a_run_that_failed_before_training_takes_the_corrected_command(tiny_vit, digits_dir, tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(HfTlError):
        run(tiny(tiny_vit, tmp_path / "digts", out))  # a typo in the dataset path
    assert not out.exists()  # nothing was left behind to get in the corrected run's way
    run(tiny(tiny_vit, digits_dir, out))
    assert (out / "metrics.json").exists()


def test_a_run_that_saved_nothing_takes_a_different_recipe(tiny_vit, digits_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    with monkeypatch.context() as patched:
        fail_in_the_first_step(patched)
        with pytest.raises(RuntimeError):
            run(tiny(tiny_vit, digits_dir, out, "training.lr=10"))
    assert (out / "recipe.yaml").exists() and not rundir.has_produced(out)  # failed in training, saved nothing
    run(tiny(tiny_vit, digits_dir, out, "training.lr=0.002"))
    assert "held a run of another recipe that saved nothing" in capsys.readouterr().out
    assert load_recipe(str(out / "recipe.yaml")).training.lr == 0.002
    assert (out / "metrics.json").exists()


def test_a_different_recipe_on_a_run_with_results_is_still_refused(finished, tiny_vit, digits_dir, tmp_path):
    run_dir = copy_of(finished, tmp_path / "run")
    before = snapshot(run_dir)
    with pytest.raises(HfTlError, match="different recipe.*output.overwrite=true") as refused:
        run(tiny(tiny_vit, digits_dir, run_dir, "training.lr=0.1"))
    assert snapshot(run_dir) == before
    assert re.search(r"recipe\.yaml: training\.lr=[\d.e-]+ \(now 0\.1\)\)", str(refused.value))  # which key differs


def test_the_same_command_on_a_finished_run_says_so_and_does_nothing(finished, tiny_vit, digits_dir, tmp_path, capsys):
    run_dir = copy_of(finished, tmp_path / "run")
    stamps = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")}
    accuracy = json.loads((run_dir / "metrics.json").read_text())["eval"]["accuracy"]
    code, out, err = cli_exit(["recipe=quickstart", *overrides(tiny_vit, digits_dir, run_dir)], capsys)
    assert code == 0, err
    assert f"hf_tl: this run is complete already ({run_dir / 'metrics.json'}, eval accuracy {accuracy:.4f})" in out
    assert "output.overwrite=true trains it again" in out
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")} == stamps  # not one file written


def test_a_tracker_added_to_the_same_command_finds_the_same_run(finished, tiny_vit, digits_dir, tmp_path, capsys):
    """training.report_to changes where the logs also go, not the run: the finished run is found, not refused."""
    run_dir = copy_of(finished, tmp_path / "run")
    command = ["recipe=quickstart", *overrides(tiny_vit, digits_dir, run_dir), "training.report_to=[tensorboard]"]
    code, out, err = cli_exit(command, capsys)
    assert code == 0, err
    assert "hf_tl: this run is complete already" in out


def test_a_run_stopped_after_its_metrics_is_finished_by_the_same_command(finished, tiny_vit, digits_dir, tmp_path):
    run_dir = copy_of(finished, tmp_path / "run")
    (run_dir / "README.md").unlink()  # killed between metrics.json and the card
    (run_dir / "checkpoints" / "checkpoint-10").mkdir(parents=True)
    run(tiny(tiny_vit, digits_dir, run_dir))
    assert (run_dir / "README.md").is_file() and (run_dir / "metrics.json").read_bytes() == (
        finished / "metrics.json"
    ).read_bytes()
    assert not (run_dir / "checkpoints").exists()
