"""Tests of the ``e2ee`` command line (e2ee/cli.py, e2ee/__main__.py).

Entry points are faked: ``e2ee.cli.entry_points`` is replaced by a function
returning real :class:`importlib.metadata.EntryPoint` objects that point into a
module planted in ``sys.modules``, so the tests never depend on which commands
happen to be installed (``e2ee example`` included).
"""

from __future__ import annotations

import argparse
import importlib
import runpy
import sys
import types
from importlib.metadata import EntryPoint, PackageNotFoundError

import pytest

from e2ee import cli
from e2ee.errors import DecodeError, E2EEError

FAKE_MODULE = "_e2ee_test_fake_commands"


class Greet:
    """A working command: prints a greeting and exits with ``--code``."""

    name = "greet"
    help = "say hello"

    def configure(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("who")
        parser.add_argument("--code", type=int, default=0)

    def run(self, args: argparse.Namespace) -> int:
        print(f"hello {args.who}")
        return int(args.code)


class Raises:
    """A command whose ``run`` raises whatever it was built with."""

    help = "fails"

    def __init__(self, name: str, exc: BaseException) -> None:
        self.name = name
        self.exc = exc

    def configure(self, parser: argparse.ArgumentParser) -> None:
        pass

    def run(self, args: argparse.Namespace) -> int:
        raise self.exc


@pytest.fixture
def fake_module(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    module = types.ModuleType(FAKE_MODULE)
    module.greet = Greet()  # type: ignore[attr-defined]
    module.decode_fails = Raises("decode-fails", DecodeError("bad envelope: truncated"))  # type: ignore[attr-defined]
    module.bare_error = Raises("bare-error", E2EEError())  # type: ignore[attr-defined]
    module.interrupted = Raises("interrupted", KeyboardInterrupt())  # type: ignore[attr-defined]
    module.oops = Raises("oops", ValueError("boom"))  # type: ignore[attr-defined]
    module.not_a_command = object()  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, FAKE_MODULE, module)
    return module


def install(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    """Make ``e2ee.cli.entry_points`` return one entry point per ``name=value``."""
    eps = [EntryPoint(name, value, cli.COMMAND_GROUP) for name, value in values.items()]

    def fake_entry_points(*, group: str) -> list[EntryPoint]:
        assert group == cli.COMMAND_GROUP
        return eps

    monkeypatch.setattr(cli, "entry_points", fake_entry_points)


@pytest.fixture
def commands(monkeypatch: pytest.MonkeyPatch, fake_module: types.ModuleType) -> None:
    """A working command, one that fails to import, and four whose run raises."""
    install(
        monkeypatch,
        greet=f"{FAKE_MODULE}:greet",
        broken="_e2ee_test_no_such_module:command",
        decode_fails=f"{FAKE_MODULE}:decode_fails",
        bare_error=f"{FAKE_MODULE}:bare_error",
        interrupted=f"{FAKE_MODULE}:interrupted",
        oops=f"{FAKE_MODULE}:oops",
    )


@pytest.mark.usefixtures("commands")
def test_working_command_runs_and_its_exit_code_is_returned(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["greet", "world"]) == 0
    assert cli.main(["greet", "there", "--code", "7"]) == 7
    out, err = capsys.readouterr()
    assert out == "hello world\nhello there\n"
    # the broken entry point is named in a one-line warning, and did not stop the others
    warnings = err.splitlines()
    assert len(warnings) == 2
    for line in warnings:
        assert line.startswith("e2ee: warning: cannot load command 'broken'")
        assert "_e2ee_test_no_such_module:command" in line
        assert "ModuleNotFoundError" in line


@pytest.mark.usefixtures("commands")
def test_help_lists_commands_sorted(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "say hello" in out
    assert out.index("bare-error") < out.index("decode-fails") < out.index("greet")
    assert "broken" not in out


@pytest.mark.usefixtures("commands")
def test_e2ee_error_is_one_line_without_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["decode-fails"]) == cli.EXIT_ERROR == 1
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == "e2ee: error: bad envelope: truncated"
    assert "Traceback" not in err


@pytest.mark.usefixtures("commands")
def test_e2ee_error_without_message_names_its_class(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bare-error"]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == "e2ee: error: E2EEError"


@pytest.mark.usefixtures("commands")
def test_keyboard_interrupt_returns_130(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["interrupted"]) == cli.EXIT_INTERRUPTED == 130
    assert capsys.readouterr().err.splitlines()[-1] == "e2ee: interrupted"


def test_keyboard_interrupt_while_loading_returns_130(monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*, group: str) -> list[EntryPoint]:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "entry_points", interrupted)
    assert cli.main([]) == 130


@pytest.mark.usefixtures("commands")
def test_other_exceptions_keep_their_traceback() -> None:
    # Only E2EEError is a user-facing error: a bug anywhere else is not hidden.
    with pytest.raises(ValueError, match="boom"):
        cli.main(["oops"])


@pytest.mark.usefixtures("commands")
def test_no_subcommand_prints_help_and_returns_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == cli.EXIT_USAGE == 2
    err = capsys.readouterr().err
    assert "usage: e2ee" in err
    assert "greet" in err


@pytest.mark.usefixtures("commands")
def test_usage_error_returns_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["no-such-command"]) == 2
    assert cli.main(["greet"]) == 2  # missing positional argument
    assert "invalid choice" in capsys.readouterr().err


def test_version_prints_the_distribution_version(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    install(monkeypatch)
    seen: list[str] = []

    def fake_version(dist: str) -> str:
        seen.append(dist)
        return "9.8.7"

    monkeypatch.setattr(cli, "version", fake_version)
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out == "e2ee 9.8.7\n"
    assert seen == ["e2ee"]


def test_version_when_not_installed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    install(monkeypatch)

    def missing(dist: str) -> str:
        raise PackageNotFoundError(dist)

    monkeypatch.setattr(cli, "version", missing)
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("e2ee unknown")


def test_non_command_and_duplicate_names_are_skipped_with_a_warning(
    monkeypatch: pytest.MonkeyPatch,
    fake_module: types.ModuleType,
    capsys: pytest.CaptureFixture[str],
) -> None:
    install(
        monkeypatch,
        a_greet=f"{FAKE_MODULE}:greet",
        b_greet_again=f"{FAKE_MODULE}:greet",
        thing=f"{FAKE_MODULE}:not_a_command",
    )
    assert cli.main(["greet", "x"]) == 0
    out, err = capsys.readouterr()
    assert out == "hello x\n"
    assert err.splitlines() == [
        "e2ee: warning: command 'b_greet_again' (_e2ee_test_fake_commands:greet) "
        "repeats the name 'greet'; ignored",
        "e2ee: warning: command 'thing' (_e2ee_test_fake_commands:not_a_command) "
        "is not an e2ee.cli.Command; ignored",
    ]


def test_warning_is_one_line_even_for_multiline_errors(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    class MultiLine:
        name = "multi"
        value = "somewhere:multi"

        def load(self) -> object:
            raise ImportError("first line\nsecond line")

    assert cli.load_commands([MultiLine()]) == []  # type: ignore[list-item]
    assert capsys.readouterr().err == (
        "e2ee: warning: cannot load command 'multi' (somewhere:multi): "
        "ImportError: first line second line\n"
    )


def test_command_protocol_is_runtime_checkable() -> None:
    assert isinstance(Greet(), cli.Command)
    assert not isinstance(object(), cli.Command)


@pytest.mark.parametrize(("code", "expected"), [(None, 0), (0, 0), (2, 2), ("message", 2)])
def test_exit_code_of_system_exit(code: object, expected: int) -> None:
    assert cli._exit_code(code) == expected


@pytest.mark.usefixtures("commands")
def test_python_dash_m(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "argv", ["e2ee", "greet", "module", "--code", "3"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("e2ee", run_name="__main__")
    assert exit_info.value.code == 3
    assert capsys.readouterr().out == "hello module\n"


def test_importing_dunder_main_runs_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "e2ee.__main__", raising=False)
    module = importlib.import_module("e2ee.__main__")
    assert module.main is cli.main
