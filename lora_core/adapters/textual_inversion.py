"""Textual inversion: learn new token embeddings; every network weight stays frozen.

As in diffusers' ``examples/textual_inversion/textual_inversion.py``: the placeholder token and
``num_vectors - 1`` extra tokens (``<tok>_1``, ``<tok>_2``, ...) are added to the tokenizer, the
embedding matrix grows, the new rows start as copies of the initializer token's embedding, and
after every optimizer step all other rows are put back bit for bit (the optimizer sees the whole
matrix, so weight decay and Adam would otherwise move them). Captions get the placeholder in
place of the trigger word, expanded to all its vectors like ``pipe.maybe_convert_prompt`` does.

The export, ``learned_embeds.safetensors`` = ``{placeholder: (num_vectors, dim)}``, is the
diffusers format: ``pipe.load_textual_inversion(path, token=placeholder)`` loads it. The same
tensor is also written A1111-style (``emb_params``, trigger = file name).

>>> opts = TextualInversionOptions(placeholder_token="<emo>", num_vectors=3, trigger_word="emoji")
>>> opts.placeholder_tokens
('<emo>', '<emo>_1', '<emo>_2')
>>> TextualInversionAdapter.caption_for(opts, "a cat emoji, emojis")
'a cat <emo> <emo>_1 <emo>_2, emojis'
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lora_core.adapters import Adapter, freeze, register
from lora_core.config import Config, option
from lora_core.formats.safetensors_file import save_safetensors

if TYPE_CHECKING:
    from lora_core.models import BaseModel

DIFFUSERS_FILE = "learned_embeds.safetensors"
STATE_KEY = "text_encoder.learned_embeds"


@dataclasses.dataclass(frozen=True)
class TextualInversionOptions(Config):
    placeholder_token: str = option("<lsl-style>", "the new token; must not already be in the vocabulary")
    initializer_token: str = option("emoji", "an existing word (exactly one token) the new vectors start from")
    num_vectors: int = option(1, "vectors per placeholder: <tok>, <tok>_1, ... (diffusers --num_vectors)")
    trigger_word: str = option("", "word in the captions that the placeholder replaces (whole words); "
                                   "'' appends the placeholder to every caption")

    def __post_init__(self):
        if not isinstance(self.num_vectors, int) or self.num_vectors < 1:
            raise ValueError(f"TextualInversionOptions: num_vectors must be a positive integer, got {self.num_vectors}")
        if not self.placeholder_token or any(c.isspace() for c in self.placeholder_token):
            raise ValueError("TextualInversionOptions: placeholder_token must be one non-empty word, "
                             f"got {self.placeholder_token!r}")

    @property
    def placeholder_tokens(self) -> tuple[str, ...]:
        return (self.placeholder_token,) + tuple(f"{self.placeholder_token}_{i}" for i in range(1, self.num_vectors))


def initializer_token_id(tokenizer, word: str) -> int:
    """The single token id of ``word``; a word the tokenizer splits is an error (as upstream)."""
    ids = tokenizer.encode(word, add_special_tokens=False)
    if len(ids) != 1:
        pieces = tokenizer.convert_ids_to_tokens(ids)
        raise ValueError(f"TextualInversionOptions.initializer_token {word!r} must be a single token, "
                         f"but the tokenizer splits it into {len(ids)}: {pieces}")
    return ids[0]


def check_placeholders_new(tokenizer, tokens: tuple[str, ...]) -> None:
    """Refuse placeholders the tokenizer already knows: as added tokens, or as a BPE word (CLIP
    lowercases text and marks word ends with ``</w>``, so ``sks`` is known as ``sks</w>``)."""
    vocab = tokenizer.get_vocab()
    taken = [t for t in tokens if {t, t.lower(), f"{t.lower()}</w>"} & vocab.keys()]
    if taken:
        raise ValueError(f"TextualInversionOptions.placeholder_token: {', '.join(taken)} already in the "
                         "tokenizer vocabulary; choose a new token such as '<my-style>'")


@register
class TextualInversionAdapter(Adapter):
    method = "textual_inversion"
    Options = TextualInversionOptions

    def __init__(self, config: Any):
        super().__init__(config)
        self.token_ids: list[int] = []
        self._original_rows: torch.Tensor | None = None  # the whole matrix before training
        self._frozen_rows: torch.Tensor | None = None    # bool mask: rows to restore each step

    @property
    def trains_text_encoder(self) -> bool:
        return True

    def check(self, base: "BaseModel") -> None:
        check_placeholders_new(base.tokenizer, self.options.placeholder_tokens)
        initializer_token_id(base.tokenizer, self.options.initializer_token)

    def attach(self, base: "BaseModel") -> None:
        self.check(base)
        freeze(base)
        tokens = self.options.placeholder_tokens
        init_id = initializer_token_id(base.tokenizer, self.options.initializer_token)
        added = base.tokenizer.add_tokens(list(tokens))
        if added != len(tokens):
            raise ValueError(f"tokenizer added {added} of the placeholder tokens {list(tokens)}")
        self.token_ids = base.tokenizer.convert_tokens_to_ids(list(tokens))
        base.text_encoder.to(torch.float32)  # gradients flow through all of it (upstream keeps it fp32 too)
        with torch.random.fork_rng(devices=[]):  # the new rows are drawn from the global RNG
            base.text_encoder.resize_token_embeddings(len(base.tokenizer), mean_resizing=False)
        weight = self.embedding(base).weight
        with torch.no_grad():
            weight[self.token_ids] = weight[init_id].clone()
        weight.requires_grad_(True)
        self._original_rows = weight.detach().clone()
        self._frozen_rows = torch.ones(weight.shape[0], dtype=torch.bool, device=weight.device)
        self._frozen_rows[self.token_ids] = False

    @staticmethod
    def embedding(base: "BaseModel") -> torch.nn.Embedding:
        return base.text_encoder.get_input_embeddings()

    def param_groups(self, base: "BaseModel") -> list[dict]:
        te_lr = self.config.text_encoder_learning_rate
        lr = self.config.learning_rate if te_lr is None else te_lr
        return [{"name": "text_encoder", "params": [self.embedding(base).weight], "lr": lr}]

    def trained_parameter_count(self, base: "BaseModel") -> int:
        """The new rows only (``num_vectors`` x width): the optimizer sees the whole embedding
        matrix, but every other row is put back after each step."""
        return len(self.token_ids) * self.embedding(base).weight.shape[1]

    @staticmethod
    def caption_for(options: TextualInversionOptions, caption: str) -> str:
        """``caption`` with the trigger word replaced by all placeholder vectors."""
        placeholder = " ".join(options.placeholder_tokens)
        if not options.trigger_word:
            return f"{caption}, {placeholder}" if caption else placeholder
        pattern = rf"(?<!\w){re.escape(options.trigger_word)}(?!\w)"
        replaced, count = re.subn(pattern, placeholder, caption)
        if count == 0:
            raise ValueError(f"TextualInversionOptions.trigger_word {options.trigger_word!r} is not in "
                             f"the caption {caption!r}; set trigger_word='' to append the placeholder")
        return replaced

    def caption(self, caption: str) -> str:
        return self.caption_for(self.options, caption)

    def after_optimizer_step(self, base: "BaseModel") -> None:
        weight = self.embedding(base).weight
        with torch.no_grad():
            weight[self._frozen_rows] = self._original_rows[self._frozen_rows]

    def learned_embeds(self, base: "BaseModel") -> torch.Tensor:
        """The trained vectors, ``(num_vectors, dim)``, CPU float32."""
        return self.embedding(base).weight[self.token_ids].detach().to("cpu", torch.float32).clone()

    def state_dict(self, base: "BaseModel") -> dict[str, torch.Tensor]:
        return {STATE_KEY: self.learned_embeds(base)}

    def load_state_dict(self, base: "BaseModel", state: dict[str, torch.Tensor]) -> None:
        if set(state) != {STATE_KEY}:
            raise ValueError(f"textual inversion state must hold exactly {STATE_KEY!r}, got {sorted(state)}")
        weight = self.embedding(base).weight
        if state[STATE_KEY].shape != (len(self.token_ids), weight.shape[1]):
            raise ValueError(f"textual inversion state has shape {tuple(state[STATE_KEY].shape)}, "
                             f"expected {(len(self.token_ids), weight.shape[1])}")
        with torch.no_grad():
            weight[self.token_ids] = state[STATE_KEY].to(weight.device, weight.dtype)

    def export(self, base: "BaseModel", folder: Path, metadata: dict[str, str]) -> dict[str, Path]:
        """``learned_embeds.safetensors`` (diffusers) and ``<token>.safetensors`` (A1111)."""
        folder = Path(folder)
        embeds = self.learned_embeds(base)
        own = {"lsl_placeholder_token": self.options.placeholder_token,
               "lsl_initializer_token": self.options.initializer_token,
               "lsl_num_vectors": str(self.options.num_vectors)}
        full_metadata = {**{k: str(v) for k, v in metadata.items()}, **own}
        a1111_name = re.sub(r"[^\w.-]+", "", self.options.placeholder_token) or "embedding"
        files = {"diffusers": (folder / DIFFUSERS_FILE, {self.options.placeholder_token: embeds}),
                 "a1111": (folder / f"{a1111_name}.safetensors", {"emb_params": embeds})}
        for path, tensors in files.values():
            save_safetensors(path, tensors, full_metadata)
        return {layout: path for layout, (path, _) in files.items()}
