"""Command line: ``python -m lora_core.toy {build,pretrain-vae,pretrain-unet,pretrain-all,export,check}``."""
from __future__ import annotations

import sys

from lora_core.cli import add_debug_option, command_parser, run_command
from lora_core.config import config_help


def main(argv: list[str] | None = None) -> int:
    parser = command_parser("python -m lora_core.toy", __doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    b = commands.add_parser("build", help="prepare data/ from the npm emoji packages (skips when up to date)")
    b.add_argument("--force", action="store_true", help="rebuild even when the manifest matches")
    b.add_argument("--verify", action="store_true", help="also check every file's sha256 against the manifest")
    from lora_core.toy import pretrain
    pretrain.add_commands(commands)
    keys = config_help(pretrain.PretrainConfig)
    for name, subcommand in commands.choices.items():
        add_debug_option(subcommand, subcommand=True)
        if name.startswith("pretrain-") or name == "export":
            subcommand.epilog = f"PretrainConfig keys of the --config JSON file (default, then help):\n{keys}"
            subcommand.formatter_class = parser.formatter_class
    return run_command(_run, parser, argv)


def _run(args) -> int:
    if args.command != "build":
        from lora_core.toy import pretrain
        return pretrain.run_command(args)
    from lora_core.toy.build import build, verify
    build(force=args.force)
    if args.verify:
        bad = verify()
        if bad:
            print(f"{len(bad)} files differ from the manifest, e.g. {bad[:3]}", file=sys.stderr)
            return 1
        print("all files match the manifest")
    return 0


if __name__ == "__main__":
    sys.exit(main())
