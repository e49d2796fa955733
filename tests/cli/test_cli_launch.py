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


def test_without_a_config_accelerate_is_told_its_defaults_where_the_user_gave_none(tmp_path, monkeypatch):
    """accelerate's own parser reads the flags (dashed spellings too); its defaults fill only what is unset."""
    monkeypatch.setattr(launch, "_default_config_file", lambda: str(tmp_path / "none.yaml"))

    def parsed(*flags: str):
        a = launch._launch_arguments(list(flags), ["recipe=quickstart"])
        return a.num_processes, a.multi_gpu, a.mixed_precision, a.num_machines, a.dynamo_backend

    assert parsed() == (1, False, "no", 1, "no")
    assert parsed("--num_processes", "2") == (2, True, "no", 1, "no")  # several processes: data parallel
    assert parsed("--mixed-precision", "bf16", "--num-processes", "4") == (4, True, "bf16", 1, "no")
    assert parsed("--use_fsdp")[:2] == (None, False)  # FSDP without a count: accelerate counts the GPUs
    args = launch._launch_arguments(["--quiet"], ["recipe=quickstart", "training.epochs=1"])
    assert not args.quiet and args.module and args.training_script == "hf_tl.train"
    assert args.training_script_args == ["recipe=quickstart", "training.epochs=1"]


@pytest.mark.parametrize(
    "flags, message",
    [
        (
            ["--num_processes", "abc"],
            "launch flags: argument --num_processes/--num-processes: invalid int value: 'abc'.",
        ),
        (["--cpu", "--num_processes", "2"], "--cpu with several processes starts one (accelerate)"),
        (["--bogus"], "unknown launch flag(s) --bogus; `accelerate launch --help` lists them."),
    ],
)
def test_bad_launch_flags_are_one_line(flags, message, tmp_path, monkeypatch):
    monkeypatch.setattr(launch, "_default_config_file", lambda: str(tmp_path / "none.yaml"))
    with pytest.raises(RecipeError) as info:
        launch._launch_arguments(flags, ["recipe=quickstart"])
    assert str(info.value).startswith(message)


def test_a_recipe_key_written_as_a_flag_gets_the_key_value_spelling():
    with pytest.raises(
        RecipeError, match=r"'--training\.epochs=2': recipe keys are key=value; write training\.epochs="
    ):
        launch.split_launch_flags(["recipe=quickstart", "--training.epochs=2"])


def test_launching_is_for_flags_or_a_config_and_never_from_inside_a_launched_process(tmp_path, monkeypatch):
    monkeypatch.setattr(launch, "_default_config_file", lambda: str(tmp_path / "none.yaml"))
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    assert launch.wants_launcher([]) is False and launch.wants_launcher(["--num_processes", "2"]) is True
    (tmp_path / "none.yaml").write_text("num_processes: 2\n")
    assert launch.wants_launcher([]) is True  # the user's accelerate config
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert launch.wants_launcher([]) is False  # inside torchrun: run here
    with pytest.raises(RecipeError, match="given inside a process that is already launched"):
        launch.wants_launcher(["--num_processes", "2"])
