"""``segany`` entry point: a thin dispatcher over subcommand modules.

Each subcommand is a module ``segany.cli.<name>`` exposing ``HELP`` (one line), ``EXAMPLES`` (text
shown under ``--help``), ``add_arguments(parser)`` and ``run(args) -> int``. Subcommand modules import
torch and friends inside ``run`` so that ``segany --help`` answers instantly.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
from types import ModuleType

from segany.errors import SeganyError

# Order is the order shown in --help. A name whose module is absent is simply not offered.
COMMANDS = ["segment", "auto", "info", "eval", "train", "export", "annotate", "serve", "stats"]


def _modules() -> dict[str, ModuleType]:
    found = {}
    for name in COMMANDS:
        if importlib.util.find_spec(f"segany.cli.{name}") is not None:
            found[name] = importlib.import_module(f"segany.cli.{name}")
    return found


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error and exit status 2 (argparse's own convention)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    from segany import __version__

    parser = _Parser(
        prog="segany",
        description="Segment Anything: promptable segmentation, automatic masks, training and evaluation.",
        epilog="Run 'segany COMMAND --help' for a command's options and an example.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"segany {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, module in _modules().items():
        p = sub.add_parser(
            name,
            help=module.HELP,
            description=module.HELP,
            epilog=getattr(module, "EXAMPLES", None),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except SeganyError as exc:
        print(f"segany {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"segany {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: still one line, but say how to get the traceback
        if os.environ.get("SEGANY_DEBUG"):
            raise
        print(
            f"segany {args.command}: internal error: {type(exc).__name__}: {exc} "
            "(set SEGANY_DEBUG=1 for a traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
