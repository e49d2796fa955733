"""End-to-end tiny runs: every strategy trains, writes a complete run folder, and reloads with plain transformers."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from conftest import collate, exit_status_of, make_transform, run_cli
from transformers import AutoImageProcessor, AutoModelForImageClassification

from hf_tl.config.recipe import load_recipe
from hf_tl.data.datasets import load_splits
from hf_tl.training.run import run

EXPECTED_TRAINABLE = {
    ("vit", "full"): [""],
    ("vit", "linear_probe"): ["classifier"],
    ("vit", "last_block"): ["vit.layers.2", "vit.layernorm", "classifier"],
    ("deit", "last_block"): ["deit.layers.2", "deit.layernorm", "cls_classifier", "distillation_classifier"],
}


def tiny_recipe(model_dir, data_dir, out_dir, kind, *extra):
    return load_recipe(
        "quickstart",
        [
            f"model.name={model_dir}",
            f"data.dataset={data_dir}",
            f"strategy.kind={kind}",
            "training.epochs=2",
            "training.batch_size=16",
            f"output.dir={out_dir}",
            *extra,
        ],
    )


def in_fresh_python(model_dir, expression: str, **load_kwargs) -> list[str]:
    """Load `model_dir` as `m` in a new interpreter; print `expression` and whether hf_tl was ever imported."""
    code = (
        "import sys, torch; from transformers import AutoModelForImageClassification as A;"
        f"m = A.from_pretrained({str(model_dir)!r}, **{load_kwargs!r}).eval();"
        f"print({expression}, 'hf_tl' in sys.modules)"
    )
    result = run_cli(sys.executable, "-c", code)
    assert result.returncode == 0, result.stderr
    return result.stdout.replace(",", " ").replace("(", " ").replace(")", " ").replace("'", " ").split()


def accuracy_with_plain_transformers(recipe, model_dir, **load_kwargs) -> float:
    """Evaluate the saved model as any transformers user would load it."""
    model = AutoModelForImageClassification.from_pretrained(model_dir, **load_kwargs).eval()
    processor = AutoImageProcessor.from_pretrained(model_dir)
    splits = load_splits(recipe.data, recipe.training.seed)
    transform = make_transform(processor, recipe.data, False, splits.image_column, splits.label_column)
    batch = collate([splits.eval.with_transform(transform)[i] for i in range(len(splits.eval))])
    with torch.no_grad():
        predicted = model(pixel_values=batch["pixel_values"]).logits.argmax(-1)
    return (predicted == batch["labels"]).sum().item() / len(predicted)


@pytest.mark.parametrize(("family", "kind"), sorted(EXPECTED_TRAINABLE))
def test_tiny_run_per_strategy(family, kind, tiny_vit, tiny_deit, digits_dir, tmp_path):
    source = tiny_vit if family == "vit" else tiny_deit
    recipe = tiny_recipe(source, digits_dir, tmp_path / "run", kind)
    run_dir = run(recipe)

    assert sorted(p.name for p in run_dir.iterdir()) == [
        "README.md",
        "log_history.json",
        "metrics.json",
        "model",
        "recipe.yaml",
        "training_curves.png",
    ]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["parameters"]["trainable_modules"] == EXPECTED_TRAINABLE[(family, kind)]
    assert (
        metrics["parameters"]["trainable"]
        == metrics["parameters"]["trainable_backbone"] + metrics["parameters"]["trainable_head"]
    )
    for split in ("eval", "train"):
        assert set(metrics[split]) >= {"accuracy", "macro_f1", "per_class_accuracy", "loss", "num_examples"}
        assert 0.0 <= metrics[split]["accuracy"] <= 1.0
    assert metrics["eval"]["num_examples"] == metrics["num_eval_examples"] == 40
    assert metrics["train"]["num_examples"] == metrics["num_train_examples"] == 160
    assert set(metrics["eval"]["per_class_accuracy"]) == {f"digit_{c}" for c in range(5)}
    assert len(metrics["timings"]["train_seconds_per_epoch"]) == 2
    assert len(metrics["timings"]["eval_seconds_per_epoch"]) == 2
    assert metrics["device"]["type"] == "cpu" and metrics["device"]["num_processes"] == 1
    assert metrics["versions"]["transformers"] and metrics["versions"]["torch"]
    history = json.loads((run_dir / "log_history.json").read_text())
    assert [h["epoch"] for h in history if "eval_accuracy" in h] == [1.0, 2.0]

    model_dir = run_dir / "model"
    assert (model_dir / "model.safetensors").exists() and not list(model_dir.glob("*.bin"))
    reloaded = AutoModelForImageClassification.from_pretrained(model_dir)
    assert reloaded.config.id2label == {i: f"digit_{i}" for i in range(5)}
    assert accuracy_with_plain_transformers(recipe, model_dir) == pytest.approx(metrics["eval"]["accuracy"], abs=1e-9)

    # Parameters outside the trained modules are bit-identical to the pretrained backbone.
    before = AutoModelForImageClassification.from_pretrained(source).state_dict()
    after = reloaded.state_dict()
    trained = EXPECTED_TRAINABLE[(family, kind)]
    changed = {n for n in before if n in after and not torch.equal(before[n], after[n])}
    frozen = {n for n in before if not any(t == "" or n.startswith(f"{t}.") for t in trained)}
    assert not changed & frozen
    if kind != "linear_probe":
        assert any(n.startswith(trained[0]) for n in changed), "the trained block did not change"


def test_deit_distilled_trains_both_heads_and_predicts_with_their_mean(tiny_deit, digits_dir, tmp_path):
    run_dir = run(tiny_recipe(tiny_deit, digits_dir, tmp_path / "run", "last_block"))
    model = AutoModelForImageClassification.from_pretrained(run_dir / "model").eval()
    fresh = AutoModelForImageClassification.from_pretrained(tiny_deit)
    assert type(model).__name__ == "DeiTForImageClassificationWithTeacher"
    assert model.cls_classifier.weight.shape == model.distillation_classifier.weight.shape == (5, 32)
    out = model(pixel_values=torch.randn(2, 3, 16, 16))
    assert torch.allclose(out.logits, (out.cls_logits + out.distillation_logits) / 2)
    assert not torch.equal(model.cls_classifier.weight, model.distillation_classifier.weight)
    assert fresh.deit.layers[2].mlp.fc1.weight.shape == model.deit.layers[2].mlp.fc1.weight.shape


def test_lora_run_saves_merged_model_and_adapter(tiny_vit, digits_dir, tmp_path):
    from peft import PeftModel

    run_dir = run(tiny_recipe(tiny_vit, digits_dir, tmp_path / "run", "lora"))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # LoRA r=8 on q_proj and v_proj of 3 blocks of width 32: 3 * 2 * (32*8 + 8*32) parameters.
    assert metrics["parameters"]["trainable_backbone"] == 3 * 2 * (32 * 8 + 8 * 32)
    merged = AutoModelForImageClassification.from_pretrained(run_dir / "model").eval()
    base = AutoModelForImageClassification.from_pretrained(
        tiny_vit,
        num_labels=5,
        id2label=merged.config.id2label,
        label2id=merged.config.label2id,
        ignore_mismatched_sizes=True,
    )
    adapted = PeftModel.from_pretrained(base, run_dir / "adapter").eval()
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(merged(pixel_values=x).logits, adapted(pixel_values=x).logits, atol=1e-5)
    assert accuracy_with_plain_transformers(
        tiny_recipe(tiny_vit, digits_dir, tmp_path / "unused", "lora"), run_dir / "model"
    ) == pytest.approx(metrics["eval"]["accuracy"], abs=1e-9)


def test_checkpoint_loads_without_hf_tl(tiny_vit, digits_dir, tmp_path):
    run_dir = run(tiny_recipe(tiny_vit, digits_dir, tmp_path / "run", "linear_probe", "training.epochs=1"))
    printed = in_fresh_python(run_dir / "model", "m(pixel_values=torch.zeros(1, 3, 16, 16)).logits.shape[-1]")
    assert printed == ["5", "False"]


def test_same_recipe_same_seed_gives_identical_metrics(tiny_vit, digits_dir, tmp_path):
    first = run(tiny_recipe(tiny_vit, digits_dir, tmp_path / "a", "last_block"))
    second = run(tiny_recipe(tiny_vit, digits_dir, tmp_path / "b", "last_block"))
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (first, second))
    assert a["eval"] == b["eval"] and a["train"] == b["train"]


def test_existing_run_folder_of_another_recipe_is_refused(tiny_vit, digits_dir, tmp_path):
    from hf_tl.errors import HfTlError

    run_dir = run(tiny_recipe(tiny_vit, digits_dir, tmp_path / "run", "linear_probe", "training.epochs=1"))
    recipe_text = (run_dir / "recipe.yaml").read_text()
    with pytest.raises(HfTlError, match="different recipe.*output.overwrite=true"):
        run(tiny_recipe(tiny_vit, digits_dir, run_dir, "full", "training.epochs=1"))
    assert (run_dir / "recipe.yaml").read_text() == recipe_text


def test_mlp_head_checkpoint_loads_with_its_own_code_and_never_silently_as_linear(tiny_vit, digits_dir, tmp_path):
    recipe = tiny_recipe(tiny_vit, digits_dir, tmp_path / "run", "last_block", "model.head=mlp")
    run_dir = run(recipe)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["parameters"]["trainable_head"] == (32 * 256 + 256) + (256 * 5 + 5)
    model_dir = run_dir / "model"
    printed = in_fresh_python(
        model_dir, "type(m.classifier).__name__, m.classifier[-1].out_features", trust_remote_code=True
    )
    assert printed == ["Sequential", "5", "False"]
    with pytest.raises(ValueError, match="custom code"):
        AutoModelForImageClassification.from_pretrained(model_dir, trust_remote_code=False)
    accuracy = accuracy_with_plain_transformers(recipe, model_dir, trust_remote_code=True)
    assert accuracy == pytest.approx(metrics["eval"]["accuracy"], abs=1e-9)


def test_weights_none_builds_from_the_config_alone(tiny_vit, digits_dir, tmp_path):
    run_dir = run(
        tiny_recipe(tiny_vit, digits_dir, tmp_path / "run", "linear_probe", "model.weights=none", "training.epochs=1")
    )
    pretrained = AutoModelForImageClassification.from_pretrained(tiny_vit).state_dict()
    built = AutoModelForImageClassification.from_pretrained(run_dir / "model").state_dict()
    backbone = [n for n in pretrained if not n.startswith("classifier")]
    assert all(built[n].shape == pretrained[n].shape for n in backbone)
    assert not any(torch.equal(built[n], pretrained[n]) for n in backbone if n.endswith("q_proj.weight"))


def test_early_stopping_stops_when_accuracy_stops_improving(tiny_vit, digits_dir, tmp_path):
    recipe = tiny_recipe(
        tiny_vit,
        digits_dir,
        tmp_path / "run",
        "linear_probe",
        "training.epochs=6",
        "training.lr=0",
        "training.early_stopping_patience=1",
    )
    metrics = json.loads((run(recipe) / "metrics.json").read_text())
    assert metrics["epochs_completed"] == 2.0  # epoch 2 did not beat epoch 1 with a learning rate of 0
    assert len(metrics["timings"]["train_seconds_per_epoch"]) == 2


def test_training_section_reaches_the_trainer(tmp_path):
    from hf_tl.training.arguments import training_arguments

    recipe = load_recipe(
        "quickstart",
        [
            "training.precision=bf16",
            "training.grad_accum=4",
            "training.scheduler=cosine",
            "training.warmup_ratio=0.1",
            "training.weight_decay=0.05",
            "training.seed=7",
            "training.eval_batch_size=64",
            "training.optimizer=sgd",
        ],
    )
    args = training_arguments(recipe, tmp_path)
    assert args.bf16 and not args.fp16
    assert args.gradient_accumulation_steps == 4
    assert args.lr_scheduler_type.value == "cosine"
    assert args.warmup_steps == 0.1 and args.weight_decay == 0.05
    assert args.seed == args.data_seed == 7
    assert args.per_device_eval_batch_size == 64 and args.per_device_train_batch_size == 32
    assert args.optim.value == "sgd"
    assert args.report_to == [] or args.report_to == "none"
    assert args.remove_unused_columns is False and args.load_best_model_at_end
    assert args.metric_for_best_model == "accuracy" and not args.disable_tqdm


def test_bf16_run_on_cpu(tiny_vit, digits_dir, tmp_path):
    run_dir = run(
        tiny_recipe(
            tiny_vit, digits_dir, tmp_path / "run", "last_block", "training.precision=bf16", "training.epochs=1"
        )
    )
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0.0 <= metrics["eval"]["accuracy"] <= 1.0


@pytest.mark.parametrize("kind", ["linear_probe", "last_block", "lora"])
def test_resnet_keeps_its_flatten_head_and_frozen_batchnorm_statistics(kind, tiny_resnet, digits_dir, tmp_path):
    recipe = tiny_recipe(tiny_resnet, digits_dir, tmp_path / "run", kind, "training.epochs=1")
    run_dir = run(recipe)
    reloaded = AutoModelForImageClassification.from_pretrained(run_dir / "model")
    assert isinstance(reloaded.classifier[0], torch.nn.Flatten) and reloaded.classifier[1].out_features == 5
    assert accuracy_with_plain_transformers(recipe, run_dir / "model") == pytest.approx(
        json.loads((run_dir / "metrics.json").read_text())["eval"]["accuracy"], abs=1e-9
    )
    before = AutoModelForImageClassification.from_pretrained(tiny_resnet).state_dict()
    after = reloaded.state_dict()
    stem = [n for n in before if n.startswith("resnet.embedder.")]
    assert any("running_mean" in n for n in stem)
    if kind == "lora":  # merged LoRA moves the convolutions, and the BatchNorms train in modules_to_save
        return
    assert all(torch.equal(before[n], after[n]) for n in stem), "a frozen parameter or BatchNorm statistic changed"


def test_gradient_accumulation_gives_the_step_of_the_whole_batch(tiny_deit, digits_dir, tmp_path):
    """The loss is normalised by the Trainer's item count: 2 x 8 accumulated equals one batch of 16."""
    common = ("training.max_steps=1", "data.augment=none", "training.warmup_ratio=0", "training.lr=1e-2")
    whole = run(tiny_recipe(tiny_deit, digits_dir, tmp_path / "a", "last_block", *common, "training.batch_size=16"))
    accumulated = run(
        tiny_recipe(
            tiny_deit,
            digits_dir,
            tmp_path / "b",
            "last_block",
            *common,
            "training.batch_size=8",
            "training.grad_accum=2",
        )
    )
    a = AutoModelForImageClassification.from_pretrained(whole / "model").state_dict()
    b = AutoModelForImageClassification.from_pretrained(accumulated / "model").state_dict()
    fresh = AutoModelForImageClassification.from_pretrained(tiny_deit).state_dict()
    moved = [n for n in a if n.startswith("deit.layers.2.") and not torch.equal(a[n], fresh[n])]
    assert moved
    assert all(torch.allclose(a[n], b[n], atol=1e-6) for n in a)


def test_overwrite_empties_the_folder(tiny_vit, digits_dir, tmp_path):
    run_dir = run(tiny_recipe(tiny_vit, digits_dir, tmp_path / "run", "lora", "training.epochs=1"))
    assert (run_dir / "adapter").exists()
    run(tiny_recipe(tiny_vit, digits_dir, run_dir, "linear_probe", "training.epochs=1", "output.overwrite=true"))
    assert not (run_dir / "adapter").exists()
    assert json.loads((run_dir / "metrics.json").read_text())["parameters"]["kind"] == "linear_probe"


def test_num_labels_that_contradict_the_dataset_are_refused(tiny_vit, digits_dir, tmp_path):
    from hf_tl.errors import HfTlError

    with pytest.raises(HfTlError, match="model.num_labels=3 but the dataset has 5 classes"):
        run(tiny_recipe(tiny_vit, digits_dir, tmp_path / "run", "full", "model.num_labels=3"))


def exit_status(argv: list[str], capsys) -> tuple[int, str]:
    """`python -m hf_tl.train ARGV` in this process: the exit status and what it printed on stderr."""
    from hf_tl.train import main

    return exit_status_of(main, argv, capsys)


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("training.epochs=0", "recipe key 'training.epochs' got 0: nothing would train"),
        ("training.max_steps=0", "recipe key 'training.max_steps' got 0: nothing would train"),
        ("training.max_steps=1", "that step is the warm-up's first, at learning rate 0"),  # warmup_ratio 0.05
    ],
)
def test_a_run_that_would_train_nothing_is_refused_before_any_work(override, named, tiny_vit, tmp_path, capsys):
    out = tmp_path / "run"
    # The dataset does not exist: the recipe error comes first, so no data was read and nothing written.
    argv = ["recipe=quickstart", f"model.name={tiny_vit}", f"data.dataset={tmp_path / 'none'}", f"output.dir={out}"]
    code, err = exit_status([*argv, override], capsys)
    assert code == 2 and err.startswith("error: ") and named in err, err
    assert not out.exists()


def test_one_step_that_is_all_warm_up_is_refused_before_the_folder_is_touched(tiny_vit, digits_dir, tmp_path, capsys):
    """12 training images in a batch of 32 for one epoch: one step, which warm-up runs at learning rate 0."""
    out = tmp_path / "run"
    argv = [
        "recipe=quickstart",
        f"model.name={tiny_vit}",
        f"data.dataset={digits_dir}",
        "data.max_train_samples=12",
        "training.batch_size=32",
        "training.epochs=1",
        f"output.dir={out}",
    ]
    code, err = exit_status(argv, capsys)
    assert code == 2, err
    assert "training would take 1 optimizer step (12 training images, training.batch_size=32" in err
    assert "training.warmup_ratio=0.05 that step is the warm-up's first" in err
    assert not out.exists()


def test_a_batch_larger_than_the_training_set_warns_and_metrics_record_what_ran(tiny_vit, digits_dir, tmp_path, capsys):
    recipe = tiny_recipe(
        tiny_vit, digits_dir, tmp_path / "run", "last_block", "data.max_train_samples=12", "training.batch_size=32"
    )
    metrics = json.loads((run(recipe) / "metrics.json").read_text())
    warning = (
        "warning: a step's batch (training.batch_size=32) is larger than the 12 training images: each epoch is one "
        "optimizer step over all 12 (batches clamped to 12), 2 step(s) in all"
    )
    assert warning in capsys.readouterr().err
    assert metrics["schedule"] == {
        "optimizer_steps": 2,
        "warmup_steps": 1,
        "batch_size": 32,
        "batch_size_used": 12,
        "grad_accum": 1,
        "processes": 1,
        "warning": warning.removeprefix("warning: "),
    }
    history = json.loads((tmp_path / "run" / "log_history.json").read_text())
    assert history[-1]["step"] == 2  # the Trainer took the steps counted


def test_a_timm_model_with_shared_modules_saves_whole_and_reloads_as_trained(digits_dir, tmp_path):
    """CoaT passes one position-encoding module to several blocks; transformers 5 refused to save that sharing
    (found at real size: the Malpure CoaT-Lite cell failed at its first checkpoint)."""
    from transformers import TimmWrapperConfig

    model = tmp_path / "coat"
    args = {"img_size": 32, "embed_dims": (16, 16, 16, 16), "serial_depths": (1, 1, 1, 2), "mlp_ratios": (2,) * 4}
    image = {"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bilinear"}
    TimmWrapperConfig(architecture="coat_lite_tiny", model_args=args, pretrained_cfg=image).save_pretrained(model)
    recipe = tiny_recipe(model, digits_dir, tmp_path / "run", "last_block", "model.weights=none", "training.epochs=1")
    run_dir = run(recipe)
    reloaded, info = AutoModelForImageClassification.from_pretrained(run_dir / "model", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    coat = reloaded.timm_model
    assert coat.crpe4.conv_list[0].weight is coat.serial_blocks4[1].factoratt_crpe.crpe.conv_list[0].weight  # shared
    recorded = json.loads((run_dir / "metrics.json").read_text())["eval"]["accuracy"]
    assert accuracy_with_plain_transformers(recipe, run_dir / "model") == pytest.approx(recorded, abs=1e-9)
