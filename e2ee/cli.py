"""The ``e2ee`` console script (DESIGN 3): an argparse front end with plug-in subcommands.

This module is the command line, not protocol code. It knows no subcommand by
name: every one is an entry point of the group ``e2ee.commands`` that loads to an
object satisfying :class:`Command`. ``server`` and ``client_sdk`` register their
own commands there, so the protocol core never imports them (CONVENTIONS 2).

Exit codes: the command's own return value; ``1`` when it raises an
:class:`~e2ee.errors.E2EEError` (printed as ``e2ee: error: <message>``, without a
traceback); ``2`` for a usage error or no subcommand; ``130`` on Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from importlib.metadata import EntryPoint, PackageNotFoundError, entry_points, version
from typing import Final, Protocol, runtime_checkable

from .errors import E2EEError

__all__ = [
    "COMMAND_GROUP",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_USAGE",
    "Command",
    "build_parser",
    "load_commands",
    "main",
]

COMMAND_GROUP: Final = "e2ee.commands"
"""The entry-point group subcommands are registered in."""

EXIT_ERROR: Final = 1
"""A command failed with an :class:`~e2ee.errors.E2EEError`."""

EXIT_USAGE: Final = 2
"""Bad arguments, or no subcommand given (argparse's own code for usage errors)."""

EXIT_INTERRUPTED: Final = 130
"""Interrupted by Ctrl-C (128 + SIGINT, as a shell reports it)."""

_PROG: Final = "e2ee"
_DIST_NAME: Final = "e2ee"
_COMMAND_DEST: Final = "_e2ee_command"


@runtime_checkable
class Command(Protocol):
    """What an ``e2ee.commands`` entry point loads to: one subcommand.

    Attributes:
        name: the subcommand's name on the command line.
        help: a one-line description shown in ``e2ee --help``.
    """

    name: str
    help: str

    def configure(self, parser: argparse.ArgumentParser) -> None:
        """Add this command's arguments to its own subparser."""
        ...

    def run(self, args: argparse.Namespace) -> int:
        """Run the command with the parsed ``args``; return the process exit code.

        Raises:
            E2EEError: reported by :func:`main` as a one-line error, exit code 1.
        """
        ...


def _warn(message: str) -> None:
    """Print a one-line warning to standard error."""
    print(f"{_PROG}: warning: {' '.join(message.split())}", file=sys.stderr)


def _package_version() -> str:
    """The installed version of the ``e2ee`` distribution, or ``unknown``."""
    try:
        return version(_DIST_NAME)
    except PackageNotFoundError:
        return "unknown (package metadata not found)"


def load_commands(eps: Iterable[EntryPoint]) -> list[Command]:
    """Load each entry point to a :class:`Command`, skipping (with a warning) the broken ones.

    An entry point that fails to import, loads to something that is not a
    :class:`Command`, or repeats a command name already loaded prints one line
    to standard error naming it; the others still load. Commands come back
    sorted by name.
    """
    commands: dict[str, Command] = {}
    for ep in sorted(eps, key=lambda ep: (ep.name, ep.value)):
        try:
            loaded = ep.load()
        except Exception as exc:  # any import-time failure of a plug-in
            _warn(f"cannot load command {ep.name!r} ({ep.value}): {type(exc).__name__}: {exc}")
            continue
        if not isinstance(loaded, Command):
            _warn(f"command {ep.name!r} ({ep.value}) is not an e2ee.cli.Command; ignored")
            continue
        if loaded.name in commands:
            _warn(f"command {ep.name!r} ({ep.value}) repeats the name {loaded.name!r}; ignored")
            continue
        commands[loaded.name] = loaded
    return [commands[name] for name in sorted(commands)]


def build_parser(commands: Sequence[Command]) -> argparse.ArgumentParser:
    """Build the ``e2ee`` parser with ``--version`` and one subparser per command."""
    parser = argparse.ArgumentParser(
        prog=_PROG,
        description="End-to-end encrypted messaging: protocol core, relay and client SDK.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_package_version()}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for command in commands:
        subparser = subparsers.add_parser(command.name, help=command.help, description=command.help)
        command.configure(subparser)
        subparser.set_defaults(**{_COMMAND_DEST: command})
    return parser


def _exit_code(code: object) -> int:
    """The integer status of a :class:`SystemExit` raised by argparse."""
    if code is None:
        return 0
    return code if isinstance(code, int) else EXIT_USAGE


def main(argv: list[str] | None = None) -> int:
    """Run the ``e2ee`` command line on ``argv`` (default: ``sys.argv[1:]``).

    Loads every ``e2ee.commands`` entry point, parses the arguments and runs the
    chosen command. Returns the exit code instead of exiting, so it can be
    called from tests; the console script passes it to :func:`sys.exit`.
    """
    try:
        parser = build_parser(load_commands(entry_points(group=COMMAND_GROUP)))
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # --help, --version and usage errors
            return _exit_code(exc.code)
        command: Command | None = getattr(args, _COMMAND_DEST, None)
        if command is None:
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        try:
            return command.run(args)
        except E2EEError as exc:
            print(f"{_PROG}: error: {str(exc) or type(exc).__name__}", file=sys.stderr)
            return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"{_PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
