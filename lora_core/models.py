"""Loading and building base models: one entry point for every source a user has.

``load_base`` accepts

* ``"tiny-random"``: the tiny SD-architecture model with random weights (smoke profile),
* ``"toy:base"``: the tiny model pretrained by this project and shipped in ``models/tiny-sd``,
* a local diffusers folder (``model_index.json`` inside),
* a single-file ``.safetensors`` checkpoint in the A1111/kohya (LDM) layout, with
  ``config=`` naming a diffusers folder or hub id that describes its architecture (SD v1.5's hub
  id when none is given),
* a hub id such as ``"stable-diffusion-v1-5/stable-diffusion-v1-5"``.

Pickle checkpoints (``.ckpt``, ``.bin``, ``.pt``, ``.pth``) are refused: unpickling can run
arbitrary code.

>>> base = load_base("tiny-random", seed=0)
>>> base.unet.config.sample_size, base.vae_scale_factor, len(base.tokenizer) > 256
(8, 4, True)
>>> pipe = base.pipeline()
>>> type(pipe).__name__
'StableDiffusionPipeline'
"""
from __future__ import annotations

import copy
import hashlib
import os
import tempfile
import weakref
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from lora_core.paths import REPO_ROOT

TOY_BASE_DIR = REPO_ROOT / "models" / "tiny-sd"
# The random model's tokenizer, written once and shipped: the BPE trainer breaks ties differently
# in every process, so a rebuilt one would change every content-keyed cache (its README says more)
RANDOM_TOKENIZER_DIR = REPO_ROOT / "models" / "tiny-random-tokenizer"
SD15_HUB_ID = "stable-diffusion-v1-5/stable-diffusion-v1-5"  # what a single-file checkpoint named alone is read as
PICKLE_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth", ".pkl")

# The tiny SD architecture: the same classes as SD v1.5, scaled down. 32 px images,
# a VAE with downsampling factor 4 (latents 4x8x8), a UNet with cross-attention, a CLIP
# text encoder. Sizes follow the measurements in ../shared/ENVIRONMENT.md.
TINY_RESOLUTION = 32
TINY_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, sample_size=TINY_RESOLUTION,
    down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(32, 64, 64), layers_per_block=1, norm_num_groups=32,
)
TINY_UNET = dict(
    sample_size=TINY_RESOLUTION // 4, in_channels=4, out_channels=4, layers_per_block=2,
    # (64, 96, 128): 7.0 M parameters, so UNet + text encoder + VAE fit the 20 MB budget in fp16
    block_out_channels=(64, 96, 128), norm_num_groups=32, cross_attention_dim=128,
    attention_head_dim=8,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
)
TINY_TEXT_ENCODER = dict(
    hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
    max_position_embeddings=77, projection_dim=128, hidden_act="quick_gelu",
)
# Stable Diffusion v1's noise schedule.
SD_SCHEDULER = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    steps_offset=1, clip_sample=False, prediction_type="epsilon",
)


@dataclass
class BaseModel:
    """The standard Stable Diffusion components, plus where they came from."""

    tokenizer: object
    text_encoder: torch.nn.Module
    vae: torch.nn.Module
    unet: torch.nn.Module
    noise_scheduler: object
    source: str
    random_weights: bool = False

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def resolution(self) -> int:
        return self.unet.config.sample_size * self.vae_scale_factor

    def pipeline(self, scheduler=None):
        """A ``StableDiffusionPipeline`` sharing these modules (no copies), safety checker off."""
        from diffusers import DDIMScheduler, StableDiffusionPipeline

        scheduler = scheduler or DDIMScheduler.from_config(self.noise_scheduler.config, set_alpha_to_one=False)
        pipe = StableDiffusionPipeline(
            vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer, unet=self.unet,
            scheduler=scheduler, safety_checker=None, feature_extractor=None,
            requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def __reduce__(self):
        """Pickled as each network's class, configuration and weights, and rebuilt from them:
        pickled whole, the transformers text encoder returns no hidden states in another process
        (its output hooks live in the process that made it)."""
        networks = {name: (type(module), module.config, module.state_dict())
                    for name, module in (("text_encoder", self.text_encoder), ("vae", self.vae), ("unet", self.unet))}
        return _rebuilt_base, (self.tokenizer, networks, self.noise_scheduler, self.source, self.random_weights)

    def __deepcopy__(self, memo: dict) -> BaseModel:
        """Field by field, each network deep-copied where it is (not rebuilt as pickling does)."""
        return BaseModel(*(copy.deepcopy(getattr(self, field.name), memo) for field in fields(self)))

    def save(self, folder: str | Path) -> Path:
        """Save in the diffusers folder layout (safetensors), atomically."""
        folder = Path(folder)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent if folder.parent.exists() else None))
        self.pipeline(scheduler=self.noise_scheduler).save_pretrained(tmp, safe_serialization=True)
        if folder.exists():
            import shutil
            shutil.rmtree(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, folder)
        return folder


def _rebuilt_base(tokenizer, networks: dict[str, tuple], noise_scheduler, source: str,
                  random_weights: bool) -> BaseModel:
    """:meth:`BaseModel.__reduce__`'s inverse: every network built from its configuration (diffusers'
    ``from_config``, transformers' constructor) in eval mode, with its weights, their dtype and device."""
    built = {}
    for name, (network_class, config, weights) in networks.items():
        network = network_class.from_config(config) if hasattr(network_class, "from_config") else network_class(config)
        first = next(iter(weights.values()))
        if (network.device, network.dtype) != (first.device, first.dtype):
            network.to(first.device, first.dtype)
        network.load_state_dict(weights)
        built[name] = network.eval()
    return BaseModel(tokenizer, built["text_encoder"], built["vae"], built["unet"], noise_scheduler, source,
                     random_weights)


def _module_fingerprint(module: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


_BASE_FINGERPRINTS: dict[int, tuple[weakref.ref, str]] = {}


def base_fingerprint(base: BaseModel) -> str:
    """sha256 (64 hex) of the model's UNet, text encoder and VAE weights, memoised per object (a
    weak reference guards against a new object reusing a freed one's id). A model changed in place
    after its first fingerprint keeps the old one: copy it before adding embeddings or adapters.
    Training records it (a finished run is reused only on the same weights) and generation caches
    are keyed by it.

    >>> import copy
    >>> base = build_tiny_random(seed=0)
    >>> base_fingerprint(base) == base_fingerprint(copy.deepcopy(base)), len(base_fingerprint(base))
    (True, 64)
    >>> base_fingerprint(base) == base_fingerprint(build_tiny_random(seed=1))
    False
    """
    key = id(base)
    known = _BASE_FINGERPRINTS.get(key)
    if known is None or known[0]() is not base:
        parts = [_module_fingerprint(getattr(base, name)) for name in ("unet", "text_encoder", "vae")]
        _BASE_FINGERPRINTS[key] = (weakref.ref(base), hashlib.sha256("".join(parts).encode()).hexdigest())
    return _BASE_FINGERPRINTS[key][1]


def mark_applied(base: BaseModel, digest: str) -> str:
    """Fold ``digest`` (the content of a weights file applied to ``base`` in place) into
    :func:`base_fingerprint` of ``base``, and return the new fingerprint. For adapters that wrap
    modules' ``forward`` instead of adding weights to the modules (LyCORIS networks live outside
    the UNet's and text encoder's state dicts): without it an adapted copy fingerprints like its
    base, and generation caches keyed by the fingerprint hand back the base's images."""
    combined = hashlib.sha256(f"{base_fingerprint(base)}|{digest}".encode()).hexdigest()
    _BASE_FINGERPRINTS[id(base)] = (weakref.ref(base), combined)
    return combined


def build_tiny_random(seed: int = 0, tokenizer_dir: str | Path | None = None) -> BaseModel:
    """The tiny SD architecture with seeded random weights (labelled ``random_weights``) and the
    shipped tokenizer :data:`RANDOM_TOKENIZER_DIR` (or the one in ``tokenizer_dir``)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from lora_core.tokenizer import load_clip_tokenizer

    tokenizer = load_clip_tokenizer(tokenizer_dir or RANDOM_TOKENIZER_DIR)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **TINY_TEXT_ENCODER))
    vae = AutoencoderKL(**TINY_VAE)
    unet = UNet2DConditionModel(**TINY_UNET)
    return BaseModel(tokenizer, text_encoder.eval(), vae.eval(), unet.eval(),
                     DDPMScheduler(**SD_SCHEDULER), source="tiny-random", random_weights=True)


def load_base(source: str, *, config: str | Path | None = None, seed: int = 0,
              dtype: torch.dtype = torch.float32) -> BaseModel:
    """Load a base model from any supported source (see the module docstring)."""
    if source == "tiny-random":
        return build_tiny_random(seed)
    if source == "toy:base":
        if not (TOY_BASE_DIR / "model_index.json").exists():
            raise FileNotFoundError(f"the pretrained tiny base is missing at {TOY_BASE_DIR}: it is "
                                    "shipped in git (restore it with `git checkout -- models/tiny-sd`) "
                                    "or exported from pretraining with `python -m lora_core.toy export`")
        base = _load_pretrained(str(TOY_BASE_DIR), dtype, local=True)
        base.source = "toy:base"  # the portable name, as configs and run records spell it
        return base
    path = Path(source)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ValueError(
            f"{source}: refusing to load a pickle checkpoint ({path.suffix}); unpickling can run "
            "arbitrary code. Convert it once, in a sandbox you trust, to .safetensors (for example "
            "`safetensors.torch.save_file(torch.load(p, weights_only=True)['state_dict'], out)`) "
            "or download the .safetensors variant.")
    if path.suffix.lower() == ".safetensors":
        return _load_single_file(path, config, dtype)
    if path.exists():
        if not (path / "model_index.json").exists():
            raise FileNotFoundError(f"{source}: not a diffusers folder (no model_index.json)")
        return _load_pretrained(str(path), dtype, local=True)
    if _looks_like_a_path(source):
        raise FileNotFoundError(f"{source}: no such folder or file{_close_names(source)}. {ACCEPTED_SOURCES}")
    try:
        return _load_pretrained(source, dtype, local=False)
    except OSError as error:   # the hub's "not found" and "offline, not cached" errors are OSErrors
        reason = str(error).split(". ")[0].strip()
        raise FileNotFoundError(f"{source}: no such folder or file here{_close_names(source)}, and no hub "
                                f"model of that id could be loaded ({reason}). {ACCEPTED_SOURCES}") from error


ACCEPTED_SOURCES = ("load_base accepts: 'tiny-random' (random weights), 'toy:base' (models/tiny-sd), a "
                    "diffusers folder (with model_index.json), a single-file .safetensors checkpoint with "
                    "config=, or a hub id such as 'stable-diffusion-v1-5/stable-diffusion-v1-5' (cached, "
                    "or online without HF_HUB_OFFLINE=1)")


def _looks_like_a_path(source: str) -> bool:
    """A hub id is ``name`` or ``owner/name``; anything else, or an ``owner`` that is a folder here
    (``models/tiny-sdd``), is a local path that does not exist."""
    parts = source.replace("\\", "/").split("/")
    return (Path(source).is_absolute() or source.startswith((".", "~")) or len(parts) > 2
            or (len(parts) == 2 and any((root / parts[0]).is_dir() for root in (Path.cwd(), REPO_ROOT))))


def _close_names(source: str) -> str:
    """``" (did you mean models/tiny-sd?)"`` when a built-in source or an entry of the folder that
    ``source`` names is spelled alike, else ``""``."""
    import difflib

    parent = Path(source).parent
    entries = [str(parent / p.name) for p in parent.iterdir()] if parent.is_dir() else []
    close = difflib.get_close_matches(source, ["tiny-random", "toy:base", *entries], n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _components_from_pipeline(pipe, source: str) -> BaseModel:
    from diffusers import DDPMScheduler

    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    return BaseModel(pipe.tokenizer, pipe.text_encoder.eval(), pipe.vae.eval(), pipe.unet.eval(),
                     noise_scheduler, source=source)


def _check_tokenizer(base: BaseModel) -> BaseModel:
    vocab = base.text_encoder.get_input_embeddings().num_embeddings
    if len(base.tokenizer) < 256 or len(base.tokenizer) > vocab:
        raise RuntimeError(f"{base.source}: tokenizer has {len(base.tokenizer)} tokens but the text "
                           f"encoder has {vocab} embeddings (a known transformers trap)")
    return base


def _load_pretrained(source: str, dtype: torch.dtype, local: bool) -> BaseModel:
    from diffusers import StableDiffusionPipeline

    from lora_core.io import check_safetensors

    for weights in sorted(Path(source).rglob("*.safetensors")) if local else ():
        check_safetensors(weights)   # diffusers would say only "Unable to load weights from checkpoint file"
    pipe = StableDiffusionPipeline.from_pretrained(
        source, dtype=dtype, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        use_safetensors=True, local_files_only=local or os.environ.get("HF_HUB_OFFLINE") == "1")
    return _check_tokenizer(_components_from_pipeline(pipe, source))


def _load_single_file(path: Path, config: str | Path | None, dtype: torch.dtype) -> BaseModel:
    from diffusers import StableDiffusionPipeline

    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    from lora_core.formats import check_single_file

    # An A1111/kohya checkpoint named alone (a profile's base_model) is read as SD v1.5: its configs
    # and tokenizer come from SD v1.5's hub id (a few kB; the weights are the file's).
    config_given = config is not None
    config = config if config_given else SD15_HUB_ID
    try:
        check_single_file(path, config)  # a clear key/shape report instead of diffusers' meta-tensor error
    except OSError as error:  # the hub's "offline, not cached" and "not found" errors
        if config_given:
            raise
        raise ValueError(f"{path}: a single-file checkpoint needs config= (a diffusers folder or hub id with the "
                         "same architecture), because it stores weights, not configs; without it SD v1.5's "
                         f"({SD15_HUB_ID}) are read from the hub, which failed: {str(error).split('. ')[0]}") from error
    local = Path(str(config)).exists() or os.environ.get("HF_HUB_OFFLINE") == "1"
    # feature_extractor=None: SD v1.5's model_index.json names CLIPFeatureExtractor, which
    # transformers 5 no longer has (from_single_file fails on it); we never use it, nor the safety checker
    pipe = StableDiffusionPipeline.from_single_file(
        str(path), config=str(config), dtype=dtype, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False, local_files_only=local)
    return _check_tokenizer(_components_from_pipeline(pipe, str(path)))
