"""`hf-tl train`'s launch flags: which words go to Accelerate's launcher, and what it is told by default."""

from __future__ import annotations

import pytest

from hf_tl.cli import launch
from hf_tl.errors import RecipeError


def test_launch_flags_and_their_values_are_told_from_recipe_keys():
    argv = ["--nproc", "2", "recipe=quickstart", "--mixed_precision", "bf16", "--use_fsdp", "training.lr=1e-3"]
    flags, rest = launch.split_launch_flags(argv)
    assert flags == ["--num_processes", "2", "--mixed_precision", "bf16", "--use_fsdp"]
    assert rest == ["recipe=quickstart", "training.lr=1e-3"]
    assert launch.split_launch_flags(["--nproc=3", "--config_file=a.yaml", "recipe=q"]) == (
        ["--num_processes", "3", "--config_file", "a.yaml"],
        ["recipe=q"],
    )


@pytest.mark.parametrize("value", ["two", "0", ""])
def test_nproc_must_be_a_count(value):
    with pytest.raises(RecipeError, match=r"--nproc .*give a number of processes, 1 or more, e\.g\. --nproc 2"):
        launch.split_launch_flags([f"--nproc={value}", "recipe=q"])


def test_without_a_config_accelerate_is_told_its_defaults_so_it_does_not_warn(tmp_path, monkeypatch):
    monkeypatch.setattr(launch, "_default_config_file", lambda: str(tmp_path / "none.yaml"))
    assert launch._explicit_defaults(["--num_processes", "2"]) == [
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--multi_gpu",
    ]  # fmt: skip
    assert launch._explicit_defaults([]) == [
        "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
    ]  # fmt: skip
    assert launch._explicit_defaults(["--config_file", "mine.yaml"]) == []  # the user's config says


def test_launching_is_for_flags_or_a_config_and_never_from_inside_a_launched_process(tmp_path, monkeypatch):
    monkeypatch.setattr(launch, "_default_config_file", lambda: str(tmp_path / "none.yaml"))
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    assert launch.wants_launcher([]) is False and launch.wants_launcher(["--num_processes", "2"]) is True
    (tmp_path / "none.yaml").write_text("num_processes: 2\n")
    assert launch.wants_launcher([]) is True  # the user's accelerate config
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert launch.wants_launcher(["--num_processes", "2"]) is False
