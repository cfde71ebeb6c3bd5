"""Image grids over prompts, seeds, adapters, weights, samplers, steps, CFG, clip skip, negatives.

One call sweeps the Cartesian product of whatever is given as a list; every image ("cell") gets its
own ``torch.Generator`` seeded from the cell's seed alone, so any cell regenerates alone and
identically. Results come back as images plus a tidy table (one row per image); saved PNGs carry
A1111's ``parameters`` text chunk and a JSON chunk with the exact settings.

>>> from lora_core.models import load_base
>>> base = load_base("tiny-random", seed=0)
>>> grid = generate_grid(base, prompts=["a red heart", "a cat face"], seeds=[1, 2], steps=2,
...                      guidance_scales=3.0)
>>> grid.table[["prompt", "seed", "sampler", "adapter", "weight"]].values.tolist()[:2]
[['a red heart', 1, 'DDIM', 'none', 1.0], ['a red heart', 2, 'DDIM', 'none', 1.0]]
>>> again = generate_cells(base, [grid.cells[3]])
>>> again.images[0].tobytes() == grid.images[3].tobytes()
True
"""
from __future__ import annotations

import contextlib
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import pandas as pd
import torch

from lora_core import blend
from lora_core.config import Config, option
from lora_core.io import atomic_path, atomic_write_text
from lora_core.profiling import phase

# A1111 sampler name -> diffusers scheduler class and the options that make it that sampler.
SAMPLERS: dict[str, tuple[str, dict[str, Any]]] = {
    "DDIM": ("DDIMScheduler", {"set_alpha_to_one": False}),
    "Euler": ("EulerDiscreteScheduler", {}),
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "DPM++ 2M Karras": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2,
                                                        "use_karras_sigmas": True}),
    "UniPC": ("UniPCMultistepScheduler", {}),
    "PNDM": ("PNDMScheduler", {"skip_prk_steps": True}),
}
PNG_JSON_KEY = "lora_style_lab"
NO_ADAPTER = "none"


def make_scheduler(sampler: str, scheduler_config: Mapping[str, Any]):
    """A fresh diffusers scheduler for an A1111 sampler name, from the base's training schedule.

    >>> from lora_core.models import SD_SCHEDULER
    >>> type(make_scheduler("Euler a", SD_SCHEDULER)).__name__
    'EulerAncestralDiscreteScheduler'
    """
    import diffusers

    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; valid samplers: {', '.join(SAMPLERS)}")
    class_name, options = SAMPLERS[sampler]
    return getattr(diffusers, class_name).from_config(dict(scheduler_config), **options)


@dataclass(frozen=True)
class Cell(Config):
    """Everything that determines one image."""

    prompt: str = option("", "text prompt")
    negative_prompt: str = option("", "negative prompt ('' = none)")
    seed: int = option(0, "seed of this image's own torch.Generator")
    sampler: str = option("DDIM", f"A1111 sampler name: {', '.join(SAMPLERS)}")
    steps: int = option(30, "denoising steps")
    guidance_scale: float = option(7.5, "classifier-free guidance scale (A1111 'CFG scale')")
    clip_skip: int = option(1, "A1111/kohya convention: 1 = last CLIP layer, 2 = penultimate, ...")
    adapters: tuple = option((), "(adapter name or .safetensors path, weight) pairs; () = base model")
    adapter: str = option(NO_ADAPTER, "label of the adapter set, for tables and plots")
    weight: float = option(1.0, "multiplier on every adapter weight")
    width: int = option(0, "image width in pixels (0 = the base model's resolution)")
    height: int = option(0, "image height in pixels (0 = the base model's resolution)")

    def __post_init__(self):
        if self.sampler not in SAMPLERS:
            raise ValueError(f"Cell.sampler {self.sampler!r}: valid samplers are {', '.join(SAMPLERS)}")
        if self.clip_skip < 1:
            raise ValueError(f"Cell.clip_skip {self.clip_skip}: must be >= 1 (1 = no skip, A1111 convention)")
        if self.steps < 1:
            raise ValueError(f"Cell.steps {self.steps}: must be >= 1")

    def adapter_weights(self) -> dict[str, float]:
        return {name: w * self.weight for name, w in self.adapters}


def adapter_entry(entry) -> tuple[tuple[tuple[str, float], ...], str]:
    """Normalise one ``adapters=`` entry to ``(pairs, label)``.

    ``None`` is the base model; a string is an adapter name or a ``.safetensors`` file (weight 1);
    a mapping gives several adapters with their weights (an output-space blend).

    >>> adapter_entry({"ink": 0.5, "runs/moss.safetensors": 0.5})
    ((('ink', 0.5), ('runs/moss.safetensors', 0.5)), 'ink:0.5+moss:0.5')
    >>> adapter_entry(None)
    ((), 'none')
    """
    if entry is None:
        return (), NO_ADAPTER
    if isinstance(entry, (str, Path)):
        entry = {str(entry): 1.0}
    pairs = tuple((str(name), float(w)) for name, w in entry.items())
    if len(pairs) == 1 and pairs[0][1] == 1.0:
        return pairs, _short(pairs[0][0])
    return pairs, "+".join(f"{_short(name)}:{w:g}" for name, w in pairs)


def _short(name: str) -> str:
    return Path(name).stem if _is_file(name) else name


def _is_file(name: str) -> bool:
    return name.endswith(".safetensors")


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def grid_cells(*, prompts, seeds=0, adapters=None, weights=1.0, samplers="DDIM", steps=30,
               guidance_scales=7.5, clip_skips=1, negative_prompts="", resolution=0) -> list[Cell]:
    """The Cartesian product of the settings, in this nesting order (prompts outermost).

    Each argument is one value or a list. ``adapters`` entries: ``None`` (base), a name, a
    ``.safetensors`` path, or ``{name_or_path: weight}`` (a blend); ``weights`` multiply them.
    """
    axes = [_as_list(prompts), _as_list(negative_prompts), _as_list(adapters), _as_list(weights),
            _as_list(samplers), _as_list(steps), _as_list(guidance_scales), _as_list(clip_skips),
            _as_list(seeds)]
    cells = []
    for prompt, negative, entry, weight, sampler, n_steps, cfg, clip_skip, seed in itertools.product(*axes):
        pairs, label = adapter_entry(entry)
        cells.append(Cell(prompt=prompt, negative_prompt=negative, seed=int(seed), sampler=sampler,
                          steps=int(n_steps), guidance_scale=float(cfg), clip_skip=int(clip_skip),
                          adapters=pairs, adapter=label, weight=float(weight), width=resolution,
                          height=resolution))
    return cells


@dataclass
class Grid:
    """Generated images, the cells that made them, and where they came from."""

    images: list  # PIL images, one per cell
    cells: list[Cell]
    model: str

    @property
    def table(self) -> pd.DataFrame:
        """One row per image: every setting, adapters as a readable string."""
        rows = []
        for cell in self.cells:
            row = cell.to_dict()
            row["adapters"] = ", ".join(f"{name}:{w:g}" for name, w in cell.adapters)
            rows.append(row)
        return pd.DataFrame(rows)

    def save(self, folder: str | Path, stem: str = "cell") -> pd.DataFrame:
        """Write ``<stem>_0000.png``... with settings chunks, and ``grid.csv``; return the table."""
        folder = Path(folder)
        files = []
        for index, (image, cell) in enumerate(zip(self.images, self.cells)):
            path = folder / f"{stem}_{index:04d}.png"
            save_png(image, path, cell, self.model)
            files.append(path.name)
        table = self.table.assign(file=files)
        atomic_write_text(folder / "grid.csv", table.to_csv(index=False))
        return table


def generate_grid(base, *, prompts, seeds=0, adapters=None, weights=1.0, samplers="DDIM", steps=30,
                  guidance_scales=7.5, clip_skips=1, negative_prompts="", resolution=0,
                  batch_size: int = 1) -> Grid:
    """Generate every combination of the given settings (see :func:`grid_cells`)."""
    cells = grid_cells(prompts=prompts, seeds=seeds, adapters=adapters, weights=weights, samplers=samplers,
                       steps=steps, guidance_scales=guidance_scales, clip_skips=clip_skips,
                       negative_prompts=negative_prompts, resolution=resolution)
    return generate_cells(base, cells, batch_size=batch_size)


@phase("generation")
def generate_cells(base, cells: Sequence[Cell], batch_size: int = 1) -> Grid:
    """Generate one image per cell; the model's mode, dtype, adapters and the global RNG are kept.

    Cells that differ only in prompt, negative prompt and seed run together, up to ``batch_size``
    at once, each with its own generator. ``batch_size=1`` reproduces a cell bit for bit whatever
    grid it sits in; larger batches give the same images up to float rounding (on CPU about 1e-6,
    occasionally one 8-bit level), because matmuls round differently at another batch size.
    """
    images: list = [None] * len(cells)
    with preserved_state(base), _adapter_files(base, cells) as names:
        for indices in _batches(cells, batch_size):
            first = cells[indices[0]]
            blend.set_adapter_weights(base, {names[n]: w for n, w in first.adapter_weights().items()})
            pipe = base.pipeline(scheduler=make_scheduler(first.sampler, base.noise_scheduler.config))
            batch = [cells[i] for i in indices]
            prompt_embeds, negative_embeds = (
                encode_prompts(pipe, [getattr(c, field) for c in batch], first.clip_skip)
                for field in ("prompt", "negative_prompt"))
            output = pipe(
                prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_embeds,
                num_inference_steps=first.steps, guidance_scale=first.guidance_scale,
                height=first.height or base.resolution, width=first.width or base.resolution,
                generator=[torch.Generator("cpu").manual_seed(c.seed) for c in batch], output_type="pil")
            for i, image in zip(indices, output.images):
                images[i] = image
    return Grid(images, list(cells), base.source)


def encode_prompts(pipe, prompts: Sequence[str], clip_skip: int = 1) -> torch.Tensor:
    """CLIP embeddings with A1111's clip skip: ``final_layer_norm(hidden_states[-clip_skip])``.

    ``clip_skip=1`` is the text encoder's own output. (diffusers' ``clip_skip=`` argument reaches
    for ``text_encoder.text_model``, which transformers 5 no longer has.) Textual-inversion tokens
    with several vectors are expanded as the pipeline does.
    """
    tokenizer, text_encoder = pipe.tokenizer, pipe.text_encoder
    prompts = pipe.maybe_convert_prompt(list(prompts), tokenizer)
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids.to(text_encoder.device)
    hidden = text_encoder(ids, output_hidden_states=True).hidden_states[-clip_skip]
    final_norm = getattr(text_encoder, "text_model", text_encoder).final_layer_norm
    return final_norm(hidden).to(pipe.unet.dtype)


def _batches(cells: Sequence[Cell], batch_size: int) -> list[list[int]]:
    groups: dict[tuple, list[int]] = {}
    for index, cell in enumerate(cells):
        key = (cell.adapters, cell.weight, cell.sampler, cell.steps, cell.guidance_scale, cell.clip_skip,
               cell.width, cell.height)
        groups.setdefault(key, []).append(index)
    return [indices[i:i + batch_size] for indices in groups.values() for i in range(0, len(indices), batch_size)]


@contextlib.contextmanager
def _adapter_files(base, cells: Sequence[Cell]) -> Iterator[dict[str, str]]:
    """Load the adapter files the cells name (once each); yield name -> adapter name; unload after."""
    names = {name: name for cell in cells for name, _ in cell.adapters}
    files = [name for name in names if _is_file(name)]
    loaded = []
    try:
        for path in files:
            names[path] = blend.unique_adapter_name(base, Path(path).stem)
            blend.load_lora(base, path, names[path])
            loaded.append(names[path])
        yield names
    finally:
        blend.remove_adapters(base, loaded)


@contextlib.contextmanager
def preserved_state(base) -> Iterator[None]:
    """Run in eval mode; afterwards restore train/eval flags, adapter state and the global RNG."""
    modules = [base.unet, base.text_encoder, base.vae]
    training = [[m.training for m in module.modules()] for module in modules]
    dtypes = [{p.dtype for p in module.parameters()} for module in modules]
    adapters = blend.adapter_state(base)
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        for module in modules:
            module.eval()
        with torch.no_grad():
            yield
    finally:
        for module, flags in zip(modules, training):
            for submodule, flag in zip(module.modules(), flags):
                submodule.training = flag
        blend.restore_adapter_state(base, adapters)
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
        if [{p.dtype for p in module.parameters()} for module in modules] != dtypes:
            raise RuntimeError("generation changed a parameter dtype (a bug: please report it)")


# ---- PNG metadata ---------------------------------------------------------------------------------

def a1111_parameters(cell: Cell, model: str, width: int, height: int) -> str:
    """A1111's ``parameters`` text: prompt (with ``<lora:name:w>`` tags), negatives, settings line.

    >>> print(a1111_parameters(Cell(prompt="a cat", seed=1, adapters=(("ink", 0.5),), clip_skip=2), "tiny", 32, 32))
    a cat <lora:ink:0.5>
    Steps: 30, Sampler: DDIM, CFG scale: 7.5, Seed: 1, Size: 32x32, Model: tiny, Clip skip: 2
    """
    tags = "".join(f" <lora:{_short(name)}:{w:g}>" for name, w in cell.adapter_weights().items())
    lines = [cell.prompt + tags]
    if cell.negative_prompt:
        lines.append(f"Negative prompt: {cell.negative_prompt}")
    settings = [f"Steps: {cell.steps}", f"Sampler: {cell.sampler}", f"CFG scale: {cell.guidance_scale:g}",
                f"Seed: {cell.seed}", f"Size: {width}x{height}", f"Model: {model}"]
    if cell.clip_skip > 1:
        settings.append(f"Clip skip: {cell.clip_skip}")
    return "\n".join(lines + [", ".join(settings)])


# A1111's own pattern for the settings line (modules/infotext_utils.py).
_A1111_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def parse_a1111_parameters(text: str) -> dict[str, str]:
    """The inverse of :func:`a1111_parameters`: ``{"Prompt": ..., "Negative prompt": ..., "Steps": ...}``."""
    *prompt_lines, settings = text.strip("\n").split("\n")
    prompt, negative, in_negative = [], [], False
    for line in prompt_lines:
        if line.startswith("Negative prompt:"):
            in_negative, line = True, line[len("Negative prompt:"):].strip()
        (negative if in_negative else prompt).append(line)
    parsed = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}
    parsed.update({key.strip(): value.strip() for key, value in _A1111_PARAM.findall(settings)})
    return parsed


def save_png(image, path: str | Path, cell: Cell, model: str) -> Path:
    """Write ``image`` atomically with ``parameters`` (A1111) and ``lora_style_lab`` (JSON) chunks."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", a1111_parameters(cell, model, *image.size))
    info.add_text(PNG_JSON_KEY, json.dumps({"model": model, "cell": cell.to_dict()}, sort_keys=True))
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", pnginfo=info)
    return Path(path)


def read_png_settings(path: str | Path) -> tuple[Cell, dict[str, str]]:
    """The cell stored in a PNG written by :func:`save_png`, and its parsed A1111 parameters."""
    from PIL import Image

    with Image.open(path) as image:
        chunks = dict(image.text)
    if PNG_JSON_KEY not in chunks:
        raise ValueError(f"{path}: no {PNG_JSON_KEY!r} chunk (not written by lora_core.generate)")
    return Cell.from_dict(json.loads(chunks[PNG_JSON_KEY])["cell"]), parse_a1111_parameters(chunks["parameters"])
