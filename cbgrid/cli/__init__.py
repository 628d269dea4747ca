"""The ``cbgrid`` command: thin subcommands over library calls.

Each command group lives in ``cbgrid/cli/<group>.py`` and exposes ``register(subparsers)``,
which adds its subparsers with ``func`` set to a callable taking the parsed arguments and
returning an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from cbgrid import __version__
from cbgrid.errors import CbgridError

_GROUPS = ("store", "acquire", "evaluate", "train", "upscale", "validate", "export")

log = logging.getLogger("cbgrid")


def build_parser() -> argparse.ArgumentParser:

    parser = argparse.ArgumentParser(
        prog="cbgrid",
        description="Zero-shot upscaling of carbon fluxes: CarbonBench store, models, scores, global maps.",
    )
    parser.add_argument("--version", action="version", version=f"cbgrid {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only, no progress bars")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in _GROUPS:
        importlib.import_module(f"cbgrid.cli.{group}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
    except KeyboardInterrupt:  # while the subcommands load: nothing was started
        print("cbgrid: interrupted before starting; nothing was written", file=sys.stderr)
        return 130
    args = parser.parse_args(argv)
    level = logging.WARNING if args.quiet else (logging.INFO if args.verbose < 2 else logging.DEBUG)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if args.quiet:
        os.environ["TQDM_DISABLE"] = "1"
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        log.error("interrupted; nothing partial was left under a final name")
        return 130
    except (CbgridError, OSError) as e:
        # A problem the user can fix (or the machine's: disk full, permissions): one clear line.
        if args.debug or args.verbose >= 2:
            raise
        print(f"cbgrid {args.command}: error: {one_line(e)}", file=sys.stderr)
        return 2


def one_line(e: BaseException) -> str:
    """The message of ``e`` on one line, with the file name an OSError carries."""
    if isinstance(e, OSError) and not isinstance(e, CbgridError) and e.filename is not None:
        text = f"{e.strerror or e}: {e.filename}"
    else:
        text = str(e) or type(e).__name__
    return " ".join(text.split())

if __name__ == "__main__":
    sys.exit(main())
