"""The ``ttfs`` command, also as ``python -m ttfs_core ...`` (e.g. under torchrun:
``torchrun --standalone --nproc-per-node 2 -m ttfs_core verify vgg_fashion``).

Arguments are parsed (`command.parse`: ``--help`` and usage errors answered) before torch and the converter are
imported (`cli.run`).
"""

from __future__ import annotations

import sys

from .command import parse


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if isinstance(args, int):
        return args
    from .cli import run  # torch: only once the arguments are known to be right

    return run(args)


if __name__ == "__main__":
    sys.exit(main())
