"""A real CLIP BPE tokenizer trained on this project's captions.

The tiny base model uses the same tokenizer class as Stable Diffusion (``CLIPTokenizer``),
with a byte-pair vocabulary learned here by the ``tokenizers`` library. Every one of CLIP's
256 byte symbols is in the vocabulary (alone and as a word end), so any text tokenizes
without unknown tokens; reserved trigger words are whole tokens. Textual-inversion
placeholders are added later with ``tokenizer.add_tokens``, as on Stable Diffusion.

>>> import tempfile
>>> folder = build_clip_tokenizer(["a red heart", "a cat face"], tempfile.mkdtemp(),
...                               reserved_words=("sks",))
>>> tok = load_clip_tokenizer(folder)
>>> tok.tokenize("a sks cat")
['a</w>', 'sks</w>', 'cat</w>']
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from lora_core.io import atomic_write_text

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's (GPT-2's) reversible byte -> printable unicode map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def build_clip_tokenizer(texts: Iterable[str], folder: str | Path, vocab_size: int = 2048,
                         reserved_words: tuple[str, ...] = (), model_max_length: int = 77) -> Path:
    """Learn BPE merges on ``texts`` and save ``vocab.json``/``merges.txt`` for CLIPTokenizer.

    ``reserved_words`` (trigger words) become single tokens. Returns the folder.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers, normalizers

    byte_symbols = list(_bytes_to_unicode().values())
    tokenizer = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, end_of_word_suffix="</w>",
                                  initial_alphabet=byte_symbols, show_progress=False,
                                  special_tokens=[])
    words = list(texts) + [" ".join(reserved_words)] * 50
    tokenizer.train_from_iterator(words, trainer=trainer)
    model = json.loads(tokenizer.to_str())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]

    # CLIP's layout: bytes, bytes + "</w>", merged symbols in merge order, then specials.
    vocab: list[str] = byte_symbols + [s + "</w>" for s in byte_symbols]
    for merge in merges:
        symbol = merge.replace(" ", "")
        if symbol not in vocab:
            vocab.append(symbol)
    vocab += [BOS, EOS]
    folder = Path(folder)
    atomic_write_text(folder / "vocab.json", json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    atomic_write_text(folder / "merges.txt", "#version: 0.2\n" + "\n".join(merges) + "\n")
    atomic_write_text(folder / "special_tokens_map.json", json.dumps(
        {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}))
    atomic_write_text(folder / "tokenizer_config.json", json.dumps(
        {"tokenizer_class": "CLIPTokenizer", "model_max_length": model_max_length, "bos_token": BOS,
         "eos_token": EOS, "unk_token": EOS, "pad_token": EOS, "do_lower_case": True}))
    # Check with the real tokenizer, not the vocabulary: CLIP's pre-tokenizer splits digits and
    # punctuation off, so "flt3d" is in the vocabulary yet never reaches it as one piece.
    tokenizer = load_clip_tokenizer(folder)
    for word in reserved_words:
        pieces = tokenizer.tokenize(word)
        if pieces != [word + "</w>"]:
            raise ValueError(f"reserved word {word!r} tokenizes as {pieces}, not one token: use "
                             "lowercase letters only, or raise vocab_size")
    return folder


def load_clip_tokenizer(folder: str | Path):
    """``CLIPTokenizer.from_pretrained(folder)``, checked against the saved vocabulary.

    transformers 5 can silently build a 2-token tokenizer when files are passed the wrong
    way; this asserts the loaded size equals the vocabulary file's: ``vocab.json``, or the
    vocabulary inside ``tokenizer.json`` where a pipeline saved only that (``models/tiny-sd``).
    """
    from transformers import CLIPTokenizer

    folder = Path(folder)
    tokenizer = CLIPTokenizer.from_pretrained(str(folder))
    if (folder / "vocab.json").is_file():
        expected = len(json.loads((folder / "vocab.json").read_text()))
    else:
        expected = len(json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"])
    if len(tokenizer) < expected:
        raise RuntimeError(f"{folder}: CLIPTokenizer loaded {len(tokenizer)} tokens, its saved vocabulary has {expected}")
    return tokenizer
