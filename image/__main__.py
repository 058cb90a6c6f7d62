"""`python3 -m image --out DIR [--format squashfs|ext4|dir] [--cache DIR]`: build the image."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .build import FORMATS, BuildError, build


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m image",
                                description="Build the RDR appliance root filesystem")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--format", choices=FORMATS, default="squashfs")
    p.add_argument("--cache", type=Path, help="download cache (default OUT/cache)")
    args = p.parse_args(argv)
    try:
        build(args.out.resolve(), args.format, args.cache.resolve() if args.cache else None)
    except BuildError as exc:
        print(f"image: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
