"""Command line: ``python -m lora_core.user_study {build,analyse,power}``.

    build   --from FOLDER --out DIR     the kit (page, images, key) from FOLDER/{original,lora,ti}/<subject>.png
    analyse --kit DIR --answers FOLDER  the per-question table for the answer files in FOLDER
    power                               participants needed to tell 90/80/70/60% from chance
"""
from __future__ import annotations

import argparse
import sys

import pandas as pd


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lora_core.user_study", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="build the study kit from a folder of images")
    build.add_argument("--from", dest="source", required=True,
                       help="folder with original/, lora/ and ti/, each holding <subject>.png for the same subjects")
    build.add_argument("--out", required=True, help="the kit folder to write (an older kit there is replaced)")
    build.add_argument("--attention", type=int, default=2, help="attention-check sets to add (default 2)")
    analyse = commands.add_parser("analyse", help="analyse a folder of answer files")
    analyse.add_argument("--kit", required=True, help="the kit folder (its manifest.json is the key)")
    analyse.add_argument("--answers", required=True, help="folder of answers-<code>.json files")
    analyse.add_argument("--max-failed-checks", type=int, default=0,
                         help="attention answers a participant may get wrong and still count (default 0)")
    power = commands.add_parser("power", help="participants needed (exact binomial test)")
    power.add_argument("--chance", type=float, default=0.5, help="the rate under chance (default 0.5)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "build":
            from lora_core.user_study.kit import build_kit
            out = build_kit(args.source, args.out, n_attention=args.attention)
            print(f"kit written to {out} (open {out / 'index.html'}; manifest.json is the key)")
        elif args.command == "analyse":
            from lora_core.user_study.analysis import analyse_folder
            result = analyse_folder(args.answers, args.kit, max_failed_checks=args.max_failed_checks)
            print(result.summary())
            print(result.table.to_string(index=False))
        else:
            from lora_core.metrics.proportions import power_table
            print(power_table(chance=args.chance).to_string(index=False))
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    pd.set_option("display.width", 200)
    sys.exit(main())
