"""``segany`` entry point: a thin dispatcher over subcommand modules.

Each subcommand is a module ``segany.cli.<name>`` exposing ``HELP`` (one line), ``EXAMPLES`` (text
shown under ``--help``), ``add_arguments(parser)`` and ``run(args) -> int``. Subcommand modules import
torch and friends inside ``run`` so that ``segany --help`` answers instantly.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import os
import signal
import sys
import threading
from collections.abc import Iterator
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


class Terminated(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM (what ``timeout``, ``docker stop`` and job schedulers send),
    so that it unwinds like Ctrl-C: every ``finally`` and cleanup handler runs, temporary files go."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Handle SIGTERM like SIGINT while a command runs (main thread only; the old handler comes back)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _os_error_line(exc: OSError) -> str:
    """One line naming the path for an operating-system error that no command translated."""
    names = [str(f) for f in (exc.filename, exc.filename2) if f is not None]
    reason = exc.strerror or str(exc) or type(exc).__name__
    return f"{' -> '.join(names)}: {reason}" if names else reason


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        with _sigterm_as_interrupt():
            return int(args._run(args) or 0)
    except SeganyError as exc:
        print(f"segany {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Terminated:
        print(f"segany {args.command}: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print(f"segany {args.command}: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print(f"segany {args.command}: error: not enough memory for this input", file=sys.stderr)
        return 2
    except OSError as exc:  # read-only folder, disk full, ...: the environment, not a bug
        if os.environ.get("SEGANY_DEBUG"):
            raise
        print(f"segany {args.command}: error: {_os_error_line(exc)}", file=sys.stderr)
        return 2
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
