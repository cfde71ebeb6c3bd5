"""Generic pieces for training the learned metrics' heads, whatever images they learn from.

- :func:`vae_reconstruct`: what a VAE keeps of an image (encode to the latent mean, decode), so a
  head trained on reconstructions judges decoded generations on equal terms.
- :func:`extract_features` and :func:`encode_texts`: backbone features and sentence embeddings,
  cached on disk by content hash (a retrain costs only the head training).
- :func:`train_align_heads` and :func:`retrieval_report`: the InfoNCE loop of the alignment
  stand-in and its zero-shot retrieval accuracy.

The heads shipped in ``models/metrics`` are trained on the toy world by
:mod:`lora_core.toy.heads` (``python -m lora_core.toy train-heads``).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from lora_core.metrics.alignment import AlignHeads, info_nce_loss, retrieval_accuracy, sentence_encoder

Reconstruct = Callable[[torch.Tensor], torch.Tensor]   # uint8 (N, 3, R, R) -> uint8 (N, 3, R, R)


def vae_reconstruct(vae: torch.nn.Module, batch_size: int = 64,
                    generator: torch.Generator | None = None) -> Reconstruct:
    """Encode to the latent mean and decode: what the VAE keeps of an image (deterministic). With
    ``generator``, decode a latent sampled from the posterior instead (one draw per image)."""
    from lora_core.images import to_uint8

    @torch.no_grad()
    def reconstruct(images_uint8: torch.Tensor) -> torch.Tensor:
        out = []
        for start in range(0, len(images_uint8), batch_size):
            x = images_uint8[start:start + batch_size].float().div(127.5).sub(1.0)
            posterior = vae.encode(x).latent_dist
            latents = posterior.mode() if generator is None else posterior.sample(generator=generator)
            out.append(to_uint8(vae.decode(latents).sample))
        return torch.cat(out)
    return reconstruct


def extract_features(images: torch.Tensor, backbone: str, cache_dir: str | Path, chunk: int = 256) -> torch.Tensor:
    """``backbone`` features of ``images`` in chunks cached in ``cache_dir`` (an interrupted run
    resumes where it stopped)."""
    from lora_core.metrics.backbones import get_backbone
    from lora_core.metrics.cache import FeatureCache

    net, cache = get_backbone(backbone), FeatureCache(cache_dir)
    parts = []
    for start in range(0, len(images), chunk):
        parts.append(net.features(images[start:start + chunk], "images", cache=cache).float())
        print(f"  features {min(start + chunk, len(images))}/{len(images)}", flush=True)
    return torch.cat(parts)


def encode_texts(texts: list[str], cache_dir: str | Path) -> torch.Tensor:
    """MiniLM sentence embeddings, cached in ``cache_dir`` by the sha256 of the texts."""
    from safetensors.torch import save_file

    from lora_core.io import atomic_path, read_safetensors

    digest = hashlib.sha256(json.dumps(["all-MiniLM-L6-v2", texts]).encode()).hexdigest()
    path = Path(cache_dir) / f"minilm-texts-{digest[:32]}.safetensors"
    if path.is_file():
        return read_safetensors(path)[0]["embeddings"]
    embeddings = sentence_encoder().encode(texts).contiguous()
    with atomic_path(path) as tmp:
        save_file({"embeddings": embeddings}, str(tmp), metadata={"sha256": digest})
    return embeddings


def train_align_heads(text_features: dict[str, torch.Tensor], image_features: torch.Tensor,
                      image_subject: torch.Tensor, *, dim: int, steps: int, batch: int, lr: float,
                      weight_decay: float, seed: int) -> AlignHeads:
    """InfoNCE on batches of ``batch`` distinct subjects, one random image and one random text form
    each; ``steps`` AdamW steps into a ``dim``-sized joint space.

    ``text_features[form]`` is (n_subjects, 384) for each text form (caption, name);
    ``image_subject[i]`` is the subject row of image ``i``.
    """
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # nn.Linear initialisation
    heads = AlignHeads(text_features["caption"].shape[1], image_features.shape[1], dim)
    heads.image_mean.copy_(image_features.mean(0))
    heads.image_std.copy_(image_features.std(0).clamp_min(1e-6))
    n_subjects = len(text_features["caption"])
    counts = torch.bincount(image_subject, minlength=n_subjects)
    if int(counts.min()) == 0:
        raise ValueError(f"image_subject: subjects {torch.nonzero(counts == 0).flatten()[:5].tolist()} have no image")
    by_subject = torch.argsort(image_subject, stable=True)   # image rows grouped by subject
    first_row = torch.cumsum(counts, 0) - counts
    text_forms = torch.stack(list(text_features.values()))  # (forms, subjects, dim)
    optimizer = torch.optim.AdamW(heads.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(steps):
        subjects = torch.randperm(n_subjects, generator=generator)[:batch]
        offset = (torch.rand(len(subjects), generator=generator) * counts[subjects]).long()
        picks = by_subject[first_row[subjects] + offset]
        form = torch.randint(len(text_forms), (len(subjects),), generator=generator)
        texts = text_forms[form, subjects]
        loss = info_nce_loss(heads.embed_text(texts), heads.embed_image(image_features[picks]), heads.log_scale)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return heads.eval()


@torch.no_grad()
def retrieval_report(heads: AlignHeads, text_features: torch.Tensor, image_features: torch.Tensor,
                     image_subject: list[str], image_vendor: list[str], subjects: list[str]) -> dict:
    """Zero-shot retrieval among held-out subjects, one gallery per vendor, averaged over vendors."""
    text_emb = heads.embed_text(text_features)
    image_emb = heads.embed_image(image_features)
    per_vendor = {}
    for vendor in sorted(set(image_vendor)):
        rows = [i for i, v in enumerate(image_vendor) if v == vendor]
        labels = [image_subject[i] for i in rows]
        query_rows = [subjects.index(k) for k in labels]
        sim = (text_emb[query_rows] @ image_emb[rows].T).numpy()
        per_vendor[vendor] = {f"{direction}_top{k}": retrieval_accuracy(s, labels, labels, k)
                              for direction, s in (("text_to_image", sim), ("image_to_text", sim.T))
                              for k in (1, 5)}
    keys = next(iter(per_vendor.values())).keys()
    mean = {k: float(np.mean([r[k] for r in per_vendor.values()])) for k in keys}
    gallery = float(np.mean([sum(v == vendor for v in image_vendor) for vendor in per_vendor]))
    return {**mean, "chance_top1": 1 / gallery, "chance_top5": 5 / gallery, "gallery_size": gallery,
            "per_vendor": per_vendor}
