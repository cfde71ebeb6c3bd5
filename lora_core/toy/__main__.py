"""Command line: ``python -m lora_core.toy {build,pretrain-vae,pretrain-unet,pretrain-all,export,check,train-heads,
vae-finetune,export-vae}``."""
from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from pathlib import Path

from lora_core.cli import UserError, add_debug_option, command_parser, run_command
from lora_core.config import config_help
from lora_core.toy.heads import HeadsConfig
from lora_core.toy.pretrain import SCRATCH, PretrainConfig, load_checkpoint, pretrain_unet, pretrain_vae
from lora_core.toy.vae_finetune import VaeFinetuneConfig


def main(argv: list[str] | None = None) -> int:
    parser = command_parser("python -m lora_core.toy", __doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    b = commands.add_parser("build", help="prepare data/ from the npm emoji packages (skips when up to date)")
    b.add_argument("--force", action="store_true", help="rebuild even when the manifest matches")
    b.add_argument("--verify", action="store_true", help="also check every file's sha256 against the manifest")
    add_commands(commands)
    add_vae_finetune_commands(commands)
    pretrain_keys = config_help(PretrainConfig)
    heads_keys = config_help(HeadsConfig)
    vae_keys = config_help(VaeFinetuneConfig)
    for name, subcommand in commands.choices.items():
        add_debug_option(subcommand, subcommand=True)
        if name.startswith("pretrain-") or name == "export":
            subcommand.epilog = f"PretrainConfig keys of the --config JSON file (default, then help):\n{pretrain_keys}"
        elif name == "train-heads":
            subcommand.epilog = f"HeadsConfig keys for --set KEY=VALUE (default, then help):\n{heads_keys}"
        elif name in ("vae-finetune", "export-vae"):
            subcommand.epilog = f"VaeFinetuneConfig keys of the --config JSON file (default, then help):\n{vae_keys}"
        subcommand.formatter_class = parser.formatter_class
    return run_command(_run, parser, argv)


def _run(args) -> int:
    if args.command == "build":
        from lora_core.toy.build import build, verify
        build(force=args.force)
        if args.verify:
            bad = verify()
            if bad:
                print(f"{len(bad)} files differ from the manifest, e.g. {bad[:3]}", file=sys.stderr)
                return 1
            print("all files match the manifest")
        return 0
    return _run_model_command(args)


def add_commands(commands) -> None:
    for name, text in (("pretrain-vae", "phase 1: the VAE"), ("pretrain-unet", "phase 2: UNet + text encoder"),
                       ("pretrain-all", "phase 1 (unless done) then phase 2")):
        p = commands.add_parser(name, help=text)
        p.add_argument("--out", default=str(SCRATCH), help="checkpoint and log folder")
        p.add_argument("--config", help="JSON file of PretrainConfig overrides")
        p.add_argument("--vae-steps", type=int, help="VAE: stop at this many steps in total")
        p.add_argument("--vae-minutes", type=float, default=12.0, help="VAE: stop after this many minutes")
        p.add_argument("--steps", type=int, help="UNet: stop at this many steps in total")
        p.add_argument("--until", help="UNet: stop at this UTC time, e.g. '2026-11-24 02:55'")
        p.add_argument("--checkpoint-minutes", type=float, default=5.0)
    p = commands.add_parser("export", help="write models/tiny-sd (EMA weights) and MODEL_CARD.md")
    p.add_argument("--out", default=str(SCRATCH))
    p.add_argument("--config", help="JSON file of PretrainConfig overrides")
    p.add_argument("--model-dir", default=None, help="target folder (default models/tiny-sd)")
    p = commands.add_parser("check", help="measure checks 1 (VAE PSNR, ST-LPIPS) and 2 (generation MSE, "
                                          "subject accuracy)")
    p.add_argument("--model-dir", default=None)
    p.add_argument("--n", type=int, default=200, help="captions to generate for check 2")
    p.add_argument("--out", default=str(SCRATCH))
    p = commands.add_parser("train-heads", help="train the learned metrics' heads (alignment stand-in, subject "
                                                "and style classifiers) on the world into models/metrics")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="HeadsConfig overrides")
    p.add_argument("--vae", default="toy:base",
                   help="base model whose VAE reconstructs the style classifier's images ('none': real images)")


def _config(args) -> PretrainConfig:
    overrides = json.loads(Path(args.config).read_text()) if getattr(args, "config", None) else {}
    return PretrainConfig.from_dict(overrides)


def add_vae_finetune_commands(commands) -> None:
    from lora_core.toy import vae_finetune

    p = commands.add_parser("vae-finetune", help="phase 3: the VAE on every vendor, Noto latents anchored")
    p.add_argument("--out", default=str(vae_finetune.SCRATCH), help="checkpoint and log folder")
    p.add_argument("--config", help="JSON file of VaeFinetuneConfig overrides")
    p.add_argument("--steps", type=int, help="stop at this many steps in total")
    p.add_argument("--minutes", type=float, help="stop after this many more minutes")
    p.add_argument("--checkpoint-minutes", type=float, default=5.0)
    p = commands.add_parser("export-vae", help="write phase 3's EMA VAE into models/tiny-sd/vae and its card")
    p.add_argument("--out", default=str(vae_finetune.SCRATCH))
    p.add_argument("--config", help="JSON file of VaeFinetuneConfig overrides")
    p.add_argument("--model-dir", default=None, help="target folder (default models/tiny-sd)")


def _run_vae_finetune(args) -> int:
    from lora_core.toy import vae_finetune

    overrides = json.loads(Path(args.config).read_text()) if args.config else {}
    cfg = VaeFinetuneConfig.from_dict(overrides)
    if args.command == "export-vae":
        vae_finetune.export_vae(cfg, Path(args.out), args.model_dir)
        return 0
    if args.steps is None and args.minutes is None:
        raise UserError("vae-finetune needs --steps or --minutes")
    state = vae_finetune.finetune_vae(cfg, Path(args.out), args.steps, args.minutes, args.checkpoint_minutes)
    return 0 if state["step"] >= (args.steps or 0) else 1


def _run_model_command(args) -> int:
    if args.command in ("vae-finetune", "export-vae"):
        return _run_vae_finetune(args)
    if args.command == "train-heads":
        from lora_core.toy.heads import train_heads_command
        return train_heads_command(args.set, args.vae)
    out = Path(args.out)
    if args.command == "check":
        from lora_core.toy.check import run_checks
        run_checks(model_dir=args.model_dir, n_generate=args.n, out_dir=out)
        return 0
    cfg = _config(args)
    if args.command == "export":
        from lora_core.toy.export import export
        export(cfg, out, args.model_dir)
        return 0
    out.mkdir(parents=True, exist_ok=True)
    cfg.save_json(out / "config.json")
    vae_done = (out / "vae.pt").exists() and load_checkpoint(out / "vae.pt").get("done", False)
    if args.command == "pretrain-vae" or (args.command == "pretrain-all" and not vae_done):
        state = pretrain_vae(cfg, out, args.vae_steps, args.vae_minutes, args.checkpoint_minutes)
        if args.command == "pretrain-all" and not load_checkpoint(out / "vae.pt")["done"]:
            return 1  # interrupted by a signal
        del state
    if args.command in ("pretrain-unet", "pretrain-all"):
        until = (datetime.fromisoformat(args.until).replace(tzinfo=timezone.utc) if args.until else None)
        if until is None and args.steps is None and cfg.unet_end_step is None:
            raise UserError("pretrain-unet needs --steps, --until or a config with unet_decay_steps")
        pretrain_unet(cfg, out, args.steps, until, args.checkpoint_minutes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
