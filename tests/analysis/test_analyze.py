"""Layer-by-layer CKA on real (tiny) models: layer choice per family, agreement with the models' own hidden states,
the command line's files, and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_FAMILIES, run_cli

from hf_tl.analysis.cka import cka
from hf_tl.analysis.compare import Backbone, layer_cka
from hf_tl.analysis.layers import choose_taps
from hf_tl.analysis.tokens import features
from hf_tl.cli.analyze import main
from hf_tl.config.recipe import DataSection, ModelSection
from hf_tl.data.datasets import input_size, preprocess_for
from hf_tl.models.families import layout
from hf_tl.models.loading import load_model, load_processor

PNG = b"\x89PNG\r\n\x1a\n"


def backbone(path, label: str = "model_a") -> Backbone:
    source = ModelSection(name=str(path))
    model, processor = load_model(source).eval(), load_processor(source)
    return Backbone(
        f"{label}={path}", model, preprocess_for(processor, DataSection(dataset="-")), input_size(processor)
    )


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 12, 12), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def run(*args: str) -> dict:
    main(["cka", *args])
    out = next(a.split("=", 1)[1] for a in args if a.startswith("out="))
    return json.loads((Path(out) / "cka.json").read_text())


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_every_family_gives_embedding_blocks_and_pre_head_and_a_self_similarity(tiny_family, family):
    model = backbone(tiny_family(family))
    found = layer_cka([model], [images(8), images(8, seed=1)], "blocks", "flatten", torch.device("cpu"))
    names = [t.name for t in found.taps_a]
    assert names[0] == "embedding" and names[-1] == "pre-head"
    assert len(names) == len(layout(model.model).blocks) + 2
    assert found.matrix.shape == (len(names), len(names)) and found.examples == 16 and found.minibatches == 2
    np.testing.assert_allclose(np.diag(found.matrix), 1.0, rtol=1e-9)
    np.testing.assert_allclose(found.matrix, found.matrix.T, rtol=1e-9)


def test_cnn_blocks_are_named_by_stage_and_transformer_blocks_by_depth(tiny_family):
    resnet = [t.name for t in choose_taps(backbone(tiny_family("resnet")).model, "blocks")]
    assert resnet == ["embedding", "stage 1 block 1", "stage 2 block 1", "stage 2 block 2", "pre-head"]
    deit = choose_taps(backbone(tiny_family("deit")).model, "blocks")
    assert [t.name for t in deit] == ["embedding", "block 1", "block 2", "block 3", "pre-head"]
    assert deit[-1].modules == ("cls_classifier", "distillation_classifier")  # both tokens the heads see


@pytest.mark.parametrize("tokens", ["flatten", "cls", "mean"])
def test_one_minibatch_of_every_image_equals_cka_of_the_models_own_hidden_states(tiny_vit, tiny_resnet, tokens):
    vit, resnet = backbone(tiny_vit), backbone(tiny_resnet, "model_b")
    batch = images(12)
    found = layer_cka([vit, resnet], [batch], "blocks", "mean" if tokens == "cls" else tokens, torch.device("cpu"))
    if tokens == "cls":  # the ResNet has no class token: compare the ViT with itself
        found = layer_cka([vit], [batch], "blocks", tokens, torch.device("cpu"))
    with torch.inference_mode():
        vit_out = vit.model(pixel_values=vit.preprocess(batch), output_hidden_states=True)
        resnet_out = resnet.model(pixel_values=resnet.preprocess(batch), output_hidden_states=True)
        head_input = vit.model.vit.layernorm(vit_out.hidden_states[-1])[:, 0]  # the normed class token
        pooled = resnet.model.resnet.pooler(resnet_out.hidden_states[-1])
    reduce = {"flatten": lambda h: h.flatten(1), "cls": lambda h: h[:, 0], "mean": lambda h: h.mean(1)}[tokens]
    # The ViT's hidden states are the embedding and each block's output; then what its head sees.
    vit_layers = [reduce(h) for h in vit_out.hidden_states] + [head_input]
    if tokens == "cls":
        expected = [[cka(x, y) for y in vit_layers] for x in vit_layers]
        np.testing.assert_allclose(found.matrix, expected, rtol=1e-6)
        return
    # The ResNet's are the embedding and each stage's output (= its last block's), then the pooled features.
    spatial = (lambda h: h.flatten(1)) if tokens == "flatten" else (lambda h: h.mean((2, 3)))
    resnet_layers = [spatial(h) for h in resnet_out.hidden_states] + [pooled.flatten(1)]
    columns = [0, 1, 3, 4]  # embedding, stage 1 block 1, stage 2 block 2 (end of stage 2), pre-head
    expected = [[cka(x, y) for y in resnet_layers] for x in vit_layers]
    np.testing.assert_allclose(found.matrix[:, columns], expected, rtol=1e-6)


def test_layers_all_adds_sublayers_in_the_order_they_run(tiny_family):
    names = [t.name for t in layer_cka([backbone(tiny_family("vit"))], [images(6)], "all", "mean", "cpu").taps_a]
    assert names[:6] == [
        "embedding",
        "block 1 layernorm_before",
        "block 1 attention",
        "block 1 layernorm_after",
        "block 1 mlp",
        "block 1",
    ]
    assert names[-2:] == ["final norm", "pre-head"]


def test_mean_of_a_channels_last_map_averages_positions_not_channels():
    x = torch.randn(2, 3, 5, 7)  # (B, H, W, C)
    torch.testing.assert_close(features(x, "mean", channels_last=True), x.mean((1, 2)))
    torch.testing.assert_close(features(x, "mean", channels_last=False), x.mean((2, 3)))


def test_cli_writes_the_matrix_its_layer_names_and_the_heatmap(tiny_vit, tiny_resnet, digits_dir, tmp_path):
    out = tmp_path / "vit-resnet"
    result = run(
        f"model_a={tiny_vit}", f"model_b={tiny_resnet}", f"dataset={digits_dir}", "batch_size=64", f"out={out}"
    )
    matrix = np.load(out / "cka.npy")
    assert matrix.shape == (5, 5)
    assert result["layers_a"] == ["embedding", "block 1", "block 2", "block 3", "pre-head"]
    assert result["layers_b"] == ["embedding", "stage 1 block 1", "stage 2 block 1", "stage 2 block 2", "pre-head"]
    assert result["modules_a"][0] == "input of vit.layers.0" and result["modules_b"][-1] == "input of classifier"
    np.testing.assert_allclose(result["cka"], matrix, atol=1e-6)
    assert result["num_examples"] == 200 and result["minibatches"] == 4 and result["split"] == "train"
    assert "unbiased HSIC" in result["estimator"]
    assert (out / "cka.png").read_bytes()[:8] == PNG


def test_model_b_defaults_to_model_a_for_a_self_similarity(tiny_vit, digits_dir, tmp_path):
    result = run(f"model_a={tiny_vit}", f"dataset={digits_dir}", "num_examples=40", "batch_size=20", f"out={tmp_path}")
    matrix = np.array(result["cka"])
    assert result["model_b"] == result["model_a"] and result["layers_a"] == result["layers_b"]
    np.testing.assert_allclose(np.diag(matrix), 1.0, atol=1e-6)
    np.testing.assert_allclose(matrix, matrix.T, atol=1e-6)


def test_cli_takes_timm_and_swin_models_with_all_layers(tiny_family, digits_dir, tmp_path):
    result = run(
        f"model_a={tiny_family('swin')}",
        f"model_b={tiny_family('densenet')}",
        f"dataset={digits_dir}",
        "num_examples=16",
        "batch_size=8",
        "layers=all",
        "tokens=mean",
        f"out={tmp_path}",
    )
    assert "block 1 mlp" in result["layers_a"] and "stage 1 block 1 conv1" in result["layers_b"]
    assert np.array(result["cka"]).shape == (len(result["layers_a"]), len(result["layers_b"]))
    assert (tmp_path / "cka.png").exists()


def test_a_last_minibatch_too_small_for_the_unbiased_estimator_is_left_out(tiny_vit, digits_dir, tmp_path):
    result = run(f"model_a={tiny_vit}", f"dataset={digits_dir}", "num_examples=11", "batch_size=4", f"out={tmp_path}")
    assert result["num_examples"] == 8 and result["minibatches"] == 2  # 4 + 4; the last 3 are left out


def test_tokens_cls_on_a_model_without_a_class_token_is_refused_and_nothing_is_overwritten(
    tiny_vit, tiny_resnet, digits_dir, tmp_path, capsys
):
    run(f"model_a={tiny_vit}", f"dataset={digits_dir}", "num_examples=8", "batch_size=8", f"out={tmp_path}")
    before = {name: (tmp_path / name).read_bytes() for name in ("cka.npy", "cka.json", "cka.png")}
    with pytest.raises(SystemExit) as exit_:
        main(
            [
                "cka",
                f"model_a={tiny_vit}",
                f"model_b={tiny_resnet}",
                f"dataset={digits_dir}",
                "tokens=cls",
                f"out={tmp_path}",
            ]
        )
    assert exit_.value.code == 1
    message = capsys.readouterr().err
    assert f"tokens=cls: model_b={tiny_resnet} (resnet) has no class token" in message
    assert "tokens=mean or tokens=flatten" in message
    assert {name: (tmp_path / name).read_bytes() for name in before} == before


@pytest.mark.parametrize(
    "args, expected",
    [
        (["layers=stages"], "key 'layers' got 'stages', which is not one of: blocks, all."),
        (["tokens=avg"], "key 'tokens' got 'avg', which is not one of: flatten, cls, mean."),
        (["batch_size=3"], "key 'batch_size' got 3; it must be at least 4."),
        (["num_exmples=5"], "unknown key 'num_exmples'. Did you mean 'num_examples'?"),
    ],
)
def test_bad_options_name_the_value_and_the_choices(args, expected, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        main(["cka", "model_a=x", "dataset=y", *args])
    assert exit_.value.code == 2
    assert expected in capsys.readouterr().err


def test_a_command_is_required(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["ckaa", "model_a=x"])
    assert exit_.value.code == 2
    assert "start with a command: cka or attention-distance. Did you mean 'cka'?" in capsys.readouterr().err


@pytest.mark.slow
def test_command_line_as_a_user_runs_it(tiny_family, digits_dir, tmp_path):
    out = tmp_path / "out"
    done = run_cli(
        "python",
        "-m",
        "hf_tl.analyze",
        "cka",
        f"model_a={tiny_family('convnext')}",
        f"model_b={tiny_family('cait')}",
        f"dataset={digits_dir}",
        "num_examples=32",
        "batch_size=16",
        f"out={out}",
    )
    assert done.returncode == 0, done.stderr
    assert "CKA of 5 x 6 layers on 32 images" in done.stdout
    assert sorted(p.name for p in out.iterdir()) == ["cka.json", "cka.npy", "cka.png"]
