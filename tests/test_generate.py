"""Grids: per-cell determinism, tidy tables, PNG chunks, untouched model state, adapters and samplers."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from lora_core import blend, generate, plots
from lora_core.generate import Cell, generate_cells, generate_grid, read_png_settings
from lora_core.models import load_base

FAST = dict(steps=2, guidance_scales=3.0)


@pytest.fixture(scope="module")
def base():
    model = load_base("tiny-random", seed=0)
    blend.add_random_adapter(model, "ink", rank=4, alpha=8, seed=1, std=0.2)
    blend.add_random_adapter(model, "moss", rank=4, alpha=4, seed=2, std=0.2)
    return model


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_grid_table_is_tidy_and_each_cell_regenerates_alone_identically(base):
    grid = generate_grid(base, prompts="a cat face", seeds=[3, 4],
                         adapters=[None, "ink", {"ink": 0.5, "moss": 0.5}], **FAST)
    table = grid.table
    assert len(table) == len(grid.images) == 6
    assert table.groupby(["prompt", "seed", "adapter"]).size().eq(1).all()
    assert list(table.adapter.unique()) == ["none", "ink", "ink:0.5+moss:0.5"]
    assert list(table.seed) == [3, 4] * 3
    assert {image.size for image in grid.images} == {(32, 32)}
    for index in (3, 5):  # an adapter and a blend, each alone in a fresh call
        alone = generate_cells(base, [grid.cells[index]])
        assert np.array_equal(pixels(alone.images[0]), pixels(grid.images[index]))
    # seeds and adapters change the image; the seed depends on the cell, not its position
    assert not np.array_equal(pixels(grid.images[0]), pixels(grid.images[1]))
    assert not np.array_equal(pixels(grid.images[0]), pixels(grid.images[2]))
    reordered = generate_cells(base, [grid.cells[3], grid.cells[0]])
    assert np.array_equal(pixels(reordered.images[1]), pixels(grid.images[0]))


def test_batched_cells_match_single_cells_up_to_rounding(base):
    cells = generate.grid_cells(prompts=["a red heart", "a cat face"], seeds=1, adapters="ink", **FAST)
    single = generate_cells(base, cells, batch_size=1)
    batched = generate_cells(base, cells, batch_size=4)
    for a, b in zip(single.images, batched.images):
        assert np.abs(pixels(a) - pixels(b)).max() <= 1


def test_weight_zero_is_the_base_and_weights_scale_the_adapter(base):
    cells = generate.grid_cells(prompts="a cat face", seeds=5, adapters="ink", weights=[0.0, 1.0], **FAST)
    grid = generate_cells(base, [*cells, Cell(prompt="a cat face", seed=5, steps=2, guidance_scale=3.0)])
    ink_0, ink_1, none = (pixels(image) for image in grid.images)
    assert np.array_equal(none, ink_0)
    assert not np.array_equal(none, ink_1)
    assert grid.cells[1].adapter_weights() == {"ink": 1.0} and grid.cells[0].adapter_weights() == {"ink": 0.0}


def test_generation_leaves_mode_dtype_adapters_and_global_rng_alone(base):
    base.unet.train()
    base.text_encoder.train()
    blend.set_adapter_weights(base, {"moss": 0.3})
    state = blend.adapter_state(base)
    torch.manual_seed(1234)
    rng = torch.get_rng_state()
    modes = [m.training for m in base.unet.modules()] + [m.training for m in base.text_encoder.modules()]
    dtypes = {p.dtype for p in base.unet.parameters()}
    try:
        generate_grid(base, prompts="a cat face", seeds=1, adapters=["ink", None], samplers="Euler a", **FAST)
        assert torch.equal(torch.get_rng_state(), rng)
        assert [m.training for m in base.unet.modules()] + [m.training for m in base.text_encoder.modules()] == modes
        assert {p.dtype for p in base.unet.parameters()} == dtypes
        assert blend.adapter_state(base) == state
    finally:
        base.unet.eval()
        base.text_encoder.eval()
        blend.set_adapter_weights(base, {})


def test_samplers_steps_cfg_and_clip_skip_are_swept(base):
    # 3 steps: at 2, DPM++ 2M takes two first-order steps, which is DDIM exactly
    cells = generate.grid_cells(prompts="a cat face", seeds=2, samplers=list(generate.SAMPLERS), steps=3,
                                guidance_scales=3.0)
    cells += generate.grid_cells(prompts="a cat face", seeds=2, steps=2, guidance_scales=[1.0, 3.0], clip_skips=[1, 2])
    grid = generate_cells(base, cells)
    distinct = {pixels(image).tobytes() for image in grid.images}
    assert len(distinct) == len(grid.images) == len(generate.SAMPLERS) + 4
    assert list(grid.table.sampler[:len(generate.SAMPLERS)]) == list(generate.SAMPLERS)
    with pytest.raises(ValueError, match="unknown sampler 'Euler A'; valid samplers: DDIM, Euler, Euler a"):
        generate.make_scheduler("Euler A", base.noise_scheduler.config)
    with pytest.raises(ValueError, match="Cell.clip_skip 0: must be >= 1"):
        Cell(prompt="x", clip_skip=0)


def test_clip_skip_one_is_the_text_encoders_own_output(base):
    pipe = base.pipeline()
    ids = base.tokenizer(["a cat face"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        own = base.text_encoder(ids)[0]
        assert torch.equal(generate.encode_prompts(pipe, ["a cat face"], clip_skip=1), own)
        assert not torch.allclose(generate.encode_prompts(pipe, ["a cat face"], clip_skip=2), own)


def test_png_chunks_round_trip(base, tmp_path):
    grid = generate_grid(base, prompts="a red heart", seeds=7, negative_prompts="blurry",
                         adapters={"ink": 0.75}, clip_skips=2, **FAST)
    table = grid.save(tmp_path)
    path = tmp_path / table.file[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cell_0000.png", "grid.csv"]
    cell, parameters = read_png_settings(path)
    assert cell == grid.cells[0]
    assert parameters == {"Prompt": "a red heart <lora:ink:0.75>", "Negative prompt": "blurry", "Steps": "2",
                          "Sampler": "DDIM", "CFG scale": "3", "Seed": "7", "Size": "32x32",
                          "Model": "tiny-random", "Clip skip": "2"}
    from PIL import Image
    with Image.open(path) as image:
        assert np.array_equal(pixels(image.convert("RGB")), pixels(grid.images[0]))
    assert np.array_equal(pixels(generate_cells(base, [cell]).images[0]), pixels(grid.images[0]))


def test_adapter_files_are_loaded_for_the_grid_and_unloaded_after(tmp_path):
    model = load_base("tiny-random", seed=0)
    keys = set(model.unet.state_dict())
    generator = torch.Generator().manual_seed(3)
    tensors = {}
    for name, module in model.unet.named_modules():
        if name.endswith(("attn1.to_q", "attn2.to_v")):
            kohya = "lora_unet_" + name.replace(".", "_")
            tensors[f"{kohya}.lora_down.weight"] = torch.randn(2, module.in_features, generator=generator) * 0.3
            tensors[f"{kohya}.lora_up.weight"] = torch.randn(module.out_features, 2, generator=generator) * 0.3
            tensors[f"{kohya}.alpha"] = torch.tensor(1.0)
    path = tmp_path / "epoch-0001.safetensors"
    save_file(tensors, str(path))
    grid = generate_grid(model, prompts="a cat face", seeds=1, adapters=[None, str(path)], **FAST)
    assert list(grid.table.adapter) == ["none", "epoch-0001"]
    assert not np.array_equal(pixels(grid.images[0]), pixels(grid.images[1]))
    assert blend.adapter_names(model) == [] and set(model.unet.state_dict()) == keys
    assert np.array_equal(pixels(generate_cells(model, [grid.cells[1]]).images[0]), pixels(grid.images[1]))


def test_textual_inversion_token_works_together_with_a_lora(base, tmp_path):
    embedding = torch.randn(1, 128, generator=torch.Generator().manual_seed(9)) * 5
    save_file({"emb_params": embedding}, str(tmp_path / "ink-style.safetensors"))
    blend.load_embedding(base, tmp_path / "ink-style.safetensors", token="<ink-style>")
    token_id = base.tokenizer.convert_tokens_to_ids("<ink-style>")
    assert torch.equal(base.text_encoder.get_input_embeddings().weight[token_id], embedding[0])
    grid = generate_grid(base, prompts=["a cat face", "a cat face <ink-style>"], seeds=1, adapters="ink", **FAST)
    assert not np.array_equal(pixels(grid.images[0]), pixels(grid.images[1]))
    with pytest.raises(ValueError, match="bad.pt: embeddings are read from .safetensors only"):
        blend.load_embedding(base, tmp_path / "bad.pt", token="<bad>")


def test_contact_sheet_labels_rows_and_columns(base):
    grid = generate_grid(base, prompts=["a cat face", "a red heart"], seeds=1, adapters="ink",
                         weights=[0.5, 1.0], **FAST)
    figure = plots.contact_sheet(grid.images, grid.table, rows="prompt", cols="weight")
    assert [ax.get_title() for ax in figure.axes[:2]] == ["weight = 0.5", "weight = 1"]
    assert [figure.axes[i].get_ylabel() for i in (0, 2)] == ["a cat face", "a red heart"]
    assert np.array_equal(figure.axes[3].images[0].get_array(), pixels(grid.images[3]))
    by_prompt = plots.contact_sheet(grid.images, grid.table, rows="weight", cols="prompt", cell_inches=0.9)
    assert [ax.get_title() for ax in by_prompt.axes[:2]] == ["a cat face", "a red heart"]  # text needs no name
    with pytest.raises(ValueError, match="several images for.*differ in \\['weight'"):
        plots.contact_sheet(grid.images, grid.table, rows="prompt", cols="seed")
