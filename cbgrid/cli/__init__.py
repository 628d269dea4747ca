"""The ``cbgrid`` command: thin subcommands over library calls.

Each command group lives in ``cbgrid/cli/<group>.py`` and exposes ``register(subparsers)``,
which adds its subparsers with ``func`` set to a callable taking the parsed arguments and
returning an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from cbgrid import __version__

_GROUPS = ("store", "acquire", "evaluate", "train", "upscale")

log = logging.getLogger("cbgrid")


def build_parser() -> argparse.ArgumentParser:

    parser = argparse.ArgumentParser(
        prog="cbgrid",
        description="Zero-shot upscaling of carbon fluxes: CarbonBench store, models, scores, global maps.",
    )
    parser.add_argument("--version", action="version", version=f"cbgrid {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only, no progress bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in _GROUPS:
        importlib.import_module(f"cbgrid.cli.{group}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING if args.quiet else (logging.INFO if args.verbose < 2 else logging.DEBUG)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if args.quiet:
        import os

        os.environ["TQDM_DISABLE"] = "1"
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        log.error("interrupted; nothing partial was left under a final name")
        return 130
    except (ValueError, FileNotFoundError, FileExistsError, KeyError) as e:
        # Bad input: one clear line, no traceback (use -vv to see it).
        if args.verbose >= 2:
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"cbgrid {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
