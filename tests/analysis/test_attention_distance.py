"""Mean attention distance: the measure on hand-built attention, the hooks against transformers' own output, the CLI."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
from conftest import save_timm

from hf_tl.analysis.attention_distance import AttentionDistance, mean_distance, patch_distances
from hf_tl.cli.analyze import main
from hf_tl.config.recipe import ModelSection
from hf_tl.errors import HfTlError
from hf_tl.models.loading import load_model

GRID, PATCH = (3, 4), (8, 8)  # 3 rows and 4 columns of 8-pixel patches


def centres() -> list[tuple[float, float]]:
    return [(8 * r + 4, 8 * c + 4) for r in range(GRID[0]) for c in range(GRID[1])]


def test_patch_distances_are_distances_between_patch_centres_in_pixels():
    expected = [[math.dist(p, q) for q in centres()] for p in centres()]
    np.testing.assert_allclose(patch_distances(GRID, PATCH).numpy(), expected, rtol=1e-12)


def test_uniform_attention_gives_the_mean_pairwise_distance_of_the_grid():
    patches = GRID[0] * GRID[1]
    attention = torch.full((2, 3, patches, patches), 1 / patches)
    pairwise = np.mean([math.dist(p, q) for p, q in itertools.product(centres(), repeat=2)])
    np.testing.assert_allclose(mean_distance(attention, patch_distances(GRID, PATCH)).numpy(), pairwise, rtol=1e-6)


def test_attention_to_itself_is_at_distance_zero_and_to_a_neighbour_one_patch_away():
    patches = GRID[0] * GRID[1]
    itself = torch.eye(patches)[None, None]
    right = torch.zeros(patches, patches)  # each patch looks at the one to its right (the last column at its left)
    for r, c in itertools.product(range(GRID[0]), range(GRID[1])):
        right[r * GRID[1] + c, r * GRID[1] + (c + 1 if c + 1 < GRID[1] else c - 1)] = 1
    distances = patch_distances(GRID, PATCH)
    assert mean_distance(itself, distances).item() == pytest.approx(0.0)
    assert mean_distance(right[None, None], distances).item() == pytest.approx(8.0)


def test_class_tokens_are_dropped_and_the_patch_attention_renormalised():
    patches = GRID[0] * GRID[1]
    # One class token; half of every query's attention goes to it, half to the patch two columns away or back.
    attention = torch.zeros(1, 1, patches + 1, patches + 1)
    attention[..., :, 0] = 0.5
    for q in range(patches):
        c = q % GRID[1]
        attention[0, 0, q + 1, 1 + q + (2 if c + 2 < GRID[1] else -2)] = 0.5
    attention[0, 0, 0, :] = 1 / (patches + 1)  # the class token's own row is not a query that counts
    assert mean_distance(attention, patch_distances(GRID, PATCH)).item() == pytest.approx(16.0)


@pytest.mark.parametrize("family, prefix", [("vit", 1), ("deit", 2)])
def test_hooks_agree_with_the_attentions_transformers_returns(tiny_family, family, prefix):
    model = load_model(ModelSection(name=str(tiny_family(family)))).eval()
    pixels = torch.randn(5, 3, 16, 16)
    measure = AttentionDistance(model, (16, 16))  # switches the model to eager attention
    with measure.hooked(), torch.inference_mode():
        measure.add(pixels[:3])
        measure.add(pixels[3:])
    with torch.inference_mode():
        attentions = model(pixel_values=pixels, output_attentions=True).attentions
    distances = patch_distances((4, 4), (4, 4))
    expected = np.stack([mean_distance(a[:, :, prefix:, prefix:], distances).mean(0).numpy() for a in attentions])
    assert measure.result().shape == (3, 2)  # 3 layers x 2 heads
    np.testing.assert_allclose(measure.result(), expected, rtol=1e-6)
    assert measure.prefix_tokens == prefix


def test_cli_writes_one_distance_per_head_and_layer_and_the_scatter_plot(tiny_family, digits_dir, tmp_path):
    out = tmp_path / "deit"
    model, dataset = tiny_family("deit"), digits_dir
    main(["attention-distance", f"model={model}", f"dataset={dataset}", "num_examples=24", f"out={out}"])
    result = json.loads((out / "attention_distance.json").read_text())
    assert [layer["name"] for layer in result["layers"]] == ["block 1", "block 2", "block 3"]
    assert all(len(layer["mean_distance_px"]) == 2 for layer in result["layers"])
    assert result["prefix_tokens_dropped"] == 2 and result["patch_grid"] == [4, 4] and result["num_examples"] == 24
    grid = [(2 + 4 * r, 2 + 4 * c) for r in range(4) for c in range(4)]
    largest = max(math.dist(p, q) for p, q in itertools.product(grid, repeat=2))
    assert all(0 <= d <= largest for layer in result["layers"] for d in layer["mean_distance_px"])
    assert (out / "attention_distance.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_timm_vit_attention_is_read_through_its_unfused_path(tmp_path, digits_dir):
    shape = dict(img_size=32, patch_size=8, depth=2, embed_dim=16, num_heads=2)
    path = save_timm(tmp_path / "timm-vit", "vit_tiny_patch16_224", **shape)
    out = tmp_path / "out"
    main(["attention-distance", f"model={path}", f"dataset={digits_dir}", "num_examples=8", f"out={out}"])
    result = json.loads((out / "attention_distance.json").read_text())
    assert len(result["layers"]) == 2 and result["prefix_tokens_dropped"] == 1 and result["patch_grid"] == [4, 4]


@pytest.mark.parametrize("family, reason", [("resnet", "no attention"), ("swin", "windows"), ("cait", "talking-heads")])
def test_models_without_global_attention_are_refused(tiny_family, family, reason):
    model = load_model(ModelSection(name=str(tiny_family(family))))
    with pytest.raises(HfTlError, match=reason):
        AttentionDistance(model, (32, 32))


def test_cli_refuses_a_cnn_with_a_clear_message_and_writes_nothing(tiny_resnet, digits_dir, tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_:
        main(["attention-distance", f"model={tiny_resnet}", f"dataset={digits_dir}", f"out={out}"])
    assert exit_.value.code == 1
    message = capsys.readouterr().err
    assert "error: attention-distance needs a ViT-like model" in message
    assert "resnet model, which has no attention" in message
    assert not out.exists()
