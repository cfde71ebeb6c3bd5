"""``MODEL_CARD.md`` and the loss-curve figure of the shipped tiny base, from the run's own records."""
from __future__ import annotations

import json
from pathlib import Path

from lora_core.io import atomic_path, atomic_write_text
from lora_core.toy.pretrain import PretrainConfig, lr_lambda, read_log

LOSS_FIGURE = "loss_curves.png"


def exported_rows(out_dir: Path, phase: str, last_step: int) -> list[dict]:
    """Log rows of ``phase`` up to the exported checkpoint's step (training may have gone on)."""
    return [r for r in read_log(out_dir / f"{phase}_loss.jsonl") if r["step"] <= last_step]


def plot_losses(out_dir: Path, path: Path, last_steps: dict[str, int]) -> None:
    """Training loss (mean of each log window) and fixed-noise EMA loss of both phases."""
    import matplotlib

    matplotlib.use("Agg")  # a script, not a notebook: no display
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, phase, title in ((axes[0], "vae", "VAE: L1 + MSE (+ KL)"),
                             (axes[1], "unet", "UNet + text encoder: min-SNR eps MSE")):
        rows = exported_rows(out_dir, phase, last_steps[phase])
        ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], lw=0.8, label="train (window mean)")
        evals = [r for r in rows if "eval_loss_ema" in r]
        label = "EMA, held-out MSE [0,1] px" if phase == "vae" else "EMA, fixed noise, plain MSE"
        ax.plot([r["step"] for r in evals], [r["eval_loss_ema"] for r in evals], "o-", ms=2, label=label)
        ax.set(title=title, xlabel="step", yscale="log")
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)


def _decay_text(cfg: PretrainConfig) -> str:
    """The UNet's lr schedule after warmup, in words."""
    if cfg.unet_end_step is None:
        return ", then constant"
    return f", constant to step {cfg.unet_decay_start:,}, then linear to 0 at step {cfg.unet_end_step:,}"


def _stopped_text(cfg: PretrainConfig, step: int) -> str:
    """Where an export taken before the end of training stood in its schedule."""
    if cfg.unet_end_step is None:
        return "intermediate (training was still running)"
    lr = lr_lambda(cfg.warmup_steps, cfg.unet_decay_start, cfg.unet_decay_steps)(step)
    return (f"stopped at step {step:,} during the lr decay, at {lr:.0%} of the peak lr (the schedule ends at "
            f"step {cfg.unet_end_step:,}); the checkpoint resumes exactly")


def _last(rows: list[dict], key: str):
    values = [r[key] for r in rows if key in r]
    return values[-1] if values else float("nan")


# Judged by eye from the check's sample grid and the book's setup page; revise with each export.
DRAWS = """Judged on the grid above and the book's setup page at UNet step 6,968. It draws what is
large and simple at 32 px: faces and their expressions, people and their clothes, flags (colours
and layout, not emblems), round or square symbols, and simple objects with one clear silhouette
(a book, a bus, a joystick), in each subject's own colours. Fine structure comes out blurred or
wrong: thin tools (a clamp, a pen), weather symbols and small parts become rough shapes of the
right colour, text and ideographs smudges. Style adapters therefore act on colour, outline and
texture more visibly than on shape."""


def write_model_card(model_dir: Path, out_dir: Path) -> Path:
    """Write ``MODEL_CARD.md`` (+ loss figure) from ``export_info.json``, logs and ``checks.json``."""
    info = json.loads((model_dir / "export_info.json").read_text())
    checks_path = model_dir / "checks.json"
    checks = json.loads(checks_path.read_text()) if checks_path.exists() else None
    plot_losses(out_dir, model_dir / LOSS_FIGURE, {"vae": info["vae_steps"], "unet": info["unet_steps"]})
    losses = {phase: exported_rows(out_dir, phase, info[f"{phase}_steps"]) for phase in ("vae", "unet")}
    config = PretrainConfig.from_dict(info["config"])  # older exports lack newer keys: their defaults apply
    text = (_summary_section(info, config) + _data_section(info) + _training_section(info, config, losses)
            + f"\n![loss curves]({LOSS_FIGURE})\n\n" + vae_finetune_section(info)
            + f"{CHECKS_HEADING}{_checks_text(checks)}{DRAWS_HEADING}\n{DRAWS}\n\n" + LICENCE)
    return atomic_write_text(model_dir / "MODEL_CARD.md", text)


VAE_FINETUNE_HEADING = "## Phase 3: the VAE fine-tuned on every vendor"


def vae_finetune_section(info: dict) -> str:
    """The card's section on phase 3 (``lora_core.toy.vae_finetune``), or "" before it ran."""
    phase = info.get("vae_finetune")
    if not phase:
        return ""
    cfg, vendors = phase["config"], phase["vendors"]
    rows = "\n".join(f"| {vendor} | {r['n']} | {r['psnr_db_before']:.1f} | {r['psnr_db_after']:.1f} |"
                     for vendor, r in vendors.items())
    anchor = vendors[cfg["anchor_vendor"]]
    return f"""{VAE_FINETUNE_HEADING}
Phase 1's VAE saw only Noto emoji: its round trip turned other vendors' flat colours muddy and thin
outlines into a blur, which capped every style adapter. Phase 3 trains encoder and decoder on
every vendor's images ({phase['steps']} steps of batch {cfg['batch_size']}, {phase['train_minutes']} min,
AdamW lr {cfg['lr']}, EMA {cfg['ema_decay']}; held-out subjects of every style and subject set
excluded) with phase 1's loss plus an anchor that keeps the {cfg['anchor_vendor']} posterior where
it was (mean x {cfg['anchor_weight']}, log-variance x {cfg['logvar_anchor_weight']}), so the UNet,
pretrained on those latents, stays valid: the {cfg['anchor_vendor']} latents moved by
{anchor['latent_relative_change']:.1e} of their mean square. The scaling factor is unchanged.

| vendor | held-out images | round-trip PSNR before (dB) | after (dB) |
|---|---|---|---|
{rows}

"""


def write_vae_finetune_section(model_dir: Path) -> Path:
    """Put phase 3's section into an existing ``MODEL_CARD.md`` (before its checks), replacing
    an older one: the card of phases 1-2 needs their checkpoints to rewrite, this section not."""
    info = json.loads((model_dir / "export_info.json").read_text())
    card = (model_dir / "MODEL_CARD.md").read_text()
    return atomic_write_text(model_dir / "MODEL_CARD.md",
                             splice_section(card, VAE_FINETUNE_HEADING, CHECKS_HEADING, vae_finetune_section(info)))


CHECKS_HEADING, DRAWS_HEADING = "## Checks\n", "\n\n## What it can and cannot draw"


def write_checks_section(model_dir: Path) -> Path:
    """Replace the card's checks with ``checks.json``'s: a re-check after phase 3 needs no
    pretraining logs (the whole card, :func:`write_model_card`, does)."""
    checks = json.loads((model_dir / "checks.json").read_text())
    card = (model_dir / "MODEL_CARD.md").read_text()
    return atomic_write_text(model_dir / "MODEL_CARD.md",
                             splice_section(card, CHECKS_HEADING, DRAWS_HEADING, CHECKS_HEADING + _checks_text(checks)))


def splice_section(card: str, heading: str, next_heading: str, section: str) -> str:
    r"""``card`` with its section from ``heading`` up to ``next_heading`` replaced by ``section``,
    or ``section`` inserted before ``next_heading`` when the card has no such section yet.

    >>> splice_section("intro\n## B\nold\n## C\n", "## B", "## C", "## B\nnew\n")
    'intro\n## B\nnew\n## C\n'
    >>> splice_section("intro\n## C\n", "## B", "## C", "## B\nnew\n")
    'intro\n## B\nnew\n## C\n'
    """
    end = card.index(next_heading)
    start = card.find(heading, 0, end)
    return card[:start if start >= 0 else end] + section + card[end:]


def _checks_text(checks: dict | None) -> str:
    """Checks 1 and 2 in words, or how to measure them."""
    if not checks:
        return "Not measured for this export yet: run `python -m lora_core.toy check`."
    return (
        f"1. **VAE reconstruction** on {checks['check1_vae_heldout_images']} Noto images held out of VAE "
        f"training: mean PSNR **{checks['check1_vae_psnr_db_mean']:.1f} dB** "
        f"(MSE {checks['check1_vae_mse_mean']:.4f} on [0, 1] pixels)"
        + (f", ST-LPIPS {checks['check1_vae_st_lpips_mean']:.3f}" if "check1_vae_st_lpips_mean" in checks else "")
        + ".\n"
        f"2. **The base draws its subjects**: {checks['check2_captions']} of its own captions, "
        f"{checks['check2_sampler']}, one seed each. Pixel MSE to the real image "
        f"**{checks['check2_generation_mse_mean']:.4f}**, VAE round trip of the same images "
        f"{checks['check2_vae_round_trip_mse_mean']:.4f}: ratio **{checks['check2_ratio']:.2f}** "
        f"(target <= {checks['check2_target_ratio']}"
        + (", set against phase 1's VAE: phase 3's round trip is closer to the real image, so generations as good "
           "as before make a larger ratio" if checks.get("vae_finetune_steps") else "")
        + f"). Against the real image of a *different* caption "
        f"the same generations score {checks['check2_mismatched_caption_mse_mean']:.4f}."
        + (f" The subject classifier (`models/metrics`, trained on real images) names the emoji category "
           f"of **{checks['check2_subject_category_accuracy_generated']:.0%}** of the generations and of "
           f"{checks['check2_subject_category_accuracy_real']:.0%} of the real images of the same captions; "
           f"always guessing the most common category scores "
           f"{checks['check2_subject_category_majority_baseline']:.0%}."
           if "check2_subject_category_accuracy_generated" in checks else "")
        + "\n\n"
        f"![real / VAE round trip / generated](samples.png)\n\n"
        f"Rows: real image, VAE round trip, generation from the caption (measured at UNet step "
        f"{checks['unet_steps']}).")


def _summary_section(info: dict, config: PretrainConfig) -> str:
    """Title, what the model is, and its facts table."""
    params = info["parameters"]
    status = "finished" if info["unet_finished"] else _stopped_text(config, info["unet_steps"])
    return f"""# tiny-sd: a tiny Stable-Diffusion-architecture model pretrained on Noto emoji

The base model of the `tiny` profile of lora-style-lab. Same classes as Stable Diffusion v1.5
(`AutoencoderKL`, `CLIPTextModel` + `CLIPTokenizer`, `UNet2DConditionModel` with cross-attention,
SD v1's scaled-linear DDPM schedule, epsilon prediction), scaled down to 32x32 px images and
4x8x8 latents, so LoRA, textual inversion and DreamBooth run the code paths they run on SD v1.5.
It draws emoji in Google's Noto style from captions; it is a teaching and test model, not an image
generator anyone should use for anything else.

| | |
|---|---|
| parameters | UNet {params['unet'] / 1e6:.2f} M, text encoder {params['text_encoder'] / 1e6:.2f} M, VAE {params['vae'] / 1e6:.2f} M |
| weights | float16 safetensors, {info['weights_bytes'] / 1e6:.1f} MB (load in float32: `load_base("toy:base")`) |
| tokenizer | CLIP BPE, {info['tokenizer_size']} tokens, learned on the captions; style trigger words reserved as single tokens |
| VAE scaling factor | {info['scaling_factor']} (1 / std of latent samples over the training set) |
| export | {info['exported']}, {status} |

"""


def _data_section(info: dict) -> str:
    return f"""## Data
All {info['n_images']} Noto Color Emoji images of `emoji-datasource-google` 16.0.0 (every emoji
and skin-tone variant; Apache-2.0, Copyright Google Inc.), composited onto white and resized to
32 px (Lanczos). Captions from `emoji-datasource` 16.0.0 (MIT): name, skin tone, subcategory,
category, short names, e.g. `grinning face, face smiling, smileys and emotion, grinning`. Built by
`python -m lora_core.toy build`; sources and licences in the book's data page (`book/data.md`).
{round(info['config']['vae_heldout_fraction'] * 100)} % of the emoji (with their skin tones) are held out of VAE training
for check 1; the UNet sees every caption (style adapters are evaluated on unseen *styles*, not
unseen subjects).

"""


def _training_section(info: dict, config: PretrainConfig, losses: dict[str, list[dict]]) -> str:
    """Both phases' settings and final losses, the hardware, and how exactly a run resumes."""
    cfg = info["config"]
    return f"""## Training (`python -m lora_core.toy pretrain-all`, seed {cfg['seed']})
1. **VAE**: {info['vae_steps']} steps of batch {cfg['vae_batch_size']} ({info['vae_train_minutes']} min), AdamW lr
   {cfg['vae_lr']} (warmup {cfg['warmup_steps']} steps), L1 + MSE reconstruction + KL x {cfg['vae_kl_weight']}
   (SD's weighting), EMA {cfg['ema_decay']}. Final training loss {_last(losses['vae'], 'loss'):.4f};
   held-out MSE (EMA) {_last(losses['vae'], 'eval_loss_ema'):.4f}.
2. **UNet + text encoder** from scratch on cached VAE posteriors (mean and std; a fresh latent sample
   each step): {info['unet_steps']} steps of batch {cfg['unet_batch_size']} ({info['unet_train_minutes']} min),
   AdamW lr {cfg['unet_lr']} (warmup {cfg['warmup_steps']}{_decay_text(config)}), weight decay {cfg['weight_decay']}, gradient clip
   {cfg['grad_clip']}, {round(cfg['caption_dropout'] * 100)} % empty captions (classifier-free guidance),
   min-SNR-{cfg['snr_gamma']} weighting, EMA {cfg['ema_decay']} (the shipped weights). Final training loss
   {_last(losses['unet'], 'loss'):.4f}; fixed-noise EMA loss {_last(losses['unet'], 'eval_loss_ema'):.4f}.

Hardware: {info['hardware']}; torch {info['torch']}. Every step's batch, noise, timesteps and
caption dropout come from a generator seeded by (seed, phase, step), and checkpoints hold model,
EMA, optimizer and scheduler, so an interrupted run resumes to the same weights. One caveat: the
`tokenizers` BPE trainer breaks ties between equally frequent merges in a different order from
run to run (same merges, different order), so the tokenizer is built once, kept beside the
checkpoints and shipped with the weights; reproduce the weights from that tokenizer.
"""


LICENCE = """## Licence
Weights: Apache-2.0 (trained only on Noto Emoji, Apache-2.0, Copyright Google Inc.; captions from
emoji-data by Cal Henderson, MIT). Code: this repository, Apache-2.0.
"""
