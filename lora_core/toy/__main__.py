"""Command line: ``python -m lora_core.toy {build,pretrain-vae,pretrain-unet,pretrain-all,export,check}``."""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lora_core.toy", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    b = commands.add_parser("build", help="prepare data/ from the npm emoji packages (skips when up to date)")
    b.add_argument("--force", action="store_true", help="rebuild even when the manifest matches")
    b.add_argument("--verify", action="store_true", help="also check every file's sha256 against the manifest")
    from lora_core.toy import pretrain
    pretrain.add_commands(commands)
    args = parser.parse_args(argv)
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
    return pretrain.run_command(args)


if __name__ == "__main__":
    sys.exit(main())
