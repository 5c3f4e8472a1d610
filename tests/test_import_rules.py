"""The import rules of the packages, checked on their syntax trees (DESIGN 3; CONVENTIONS 1, 2, 6).

Every ``.py`` file of ``e2ee/``, ``server/`` and ``client_sdk/`` is parsed with
:mod:`ast`; every import in it (``import``, ``from ... import``, relative imports
resolved against the file's package, and ``importlib.import_module`` or
``__import__`` with a literal name) is checked against :data:`RULES`. A failure
lists ``file:line`` for each violation.

Each rule is first shown to catch a planted violation, so the check over the real
tree cannot pass vacuously.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("e2ee", "server", "client_sdk")

# --- the rules -------------------------------------------------------------------------

# CONVENTIONS 1: the core is sans-I/O and synchronous, with no clock and no randomness
# of its own (time comes in as ``now_ms``, randomness as ``rng``). ``os`` is banned
# whole (no ``os.urandom``); ``time`` and ``datetime`` everywhere in e2ee/, the CLI too.
E2EE_NO_IO = frozenset(
    {
        # standard library: event loops, sockets, TLS, HTTP, databases, threads, processes
        "asyncio",
        "socket",
        "socketserver",
        "select",
        "selectors",
        "ssl",
        "http",
        "urllib",
        "sqlite3",
        "threading",
        "multiprocessing",
        "concurrent",
        "subprocess",
        # clocks and ambient randomness
        "time",
        "datetime",
        "random",
        "os",
        # third-party I/O: the relay's and the SDK's stacks
        "websockets",
        "starlette",
        "sqlalchemy",
        "redis",
        "httpx",
        "requests",
        "aiohttp",
        "uvicorn",
        "aiosqlite",
        "asyncpg",
        "psycopg",
        "psycopg2",
    }
)


def _in(*prefixes: str) -> Callable[[PurePosixPath], bool]:
    """A predicate: the path lies under one of the given repo-relative directories."""
    return lambda path: any(path.is_relative_to(prefix) for prefix in prefixes)


@dataclass(frozen=True)
class Rule:
    """Files matching ``applies_to`` must not import ``banned`` (or a submodule of one)."""

    id: str
    reason: str
    banned: frozenset[str]
    applies_to: Callable[[PurePosixPath], bool]

    def bans(self, module: str) -> str | None:
        """The banned name ``module`` falls under, or ``None``."""
        for name in self.banned:
            if module == name or module.startswith(name + "."):
                return name
        return None


RULES: tuple[Rule, ...] = (
    Rule(
        "e2ee-sans-io",
        "e2ee/ is sans-I/O: no I/O, clocks or randomness of its own (CONVENTIONS 1, DESIGN 3)",
        E2EE_NO_IO,
        _in("e2ee"),
    ),
    Rule(
        "e2ee-standalone",
        "e2ee/ imports neither server nor client_sdk (CONVENTIONS 2, DESIGN 3)",
        frozenset({"server", "client_sdk"}),
        _in("e2ee"),
    ),
    Rule(
        "crypto-via-primitives",
        "only e2ee/primitives.py imports nacl or cryptography (CONVENTIONS 6)",
        frozenset({"nacl", "cryptography"}),
        lambda path: _in(*PACKAGES)(path) and path != PurePosixPath("e2ee/primitives.py"),
    ),
    Rule(
        "server-not-sdk",
        "server/ never imports client_sdk (DESIGN 3)",
        frozenset({"client_sdk"}),
        _in("server"),
    ),
    Rule(
        "sdk-not-server",
        "client_sdk/ never imports server, except its simulation harness client_sdk/testing/ "
        "(DESIGN 3)",
        frozenset({"server"}),
        lambda path: _in("client_sdk")(path) and not _in("client_sdk/testing")(path),
    ),
    Rule(
        "packages-not-tests",
        "the installable packages never import the test suite or the benchmarks; the "
        "harness apps use lives in client_sdk/testing/ (issue 5)",
        frozenset({"tests", "bench"}),
        _in(*PACKAGES),
    ),
    Rule(
        "relay-no-session-code",
        "the relay never touches ratchet or session code (CONVENTIONS 2)",
        frozenset({"e2ee.ratchet", "e2ee.x3dh", "e2ee.session"}),
        _in("server"),
    ),
)

# --- the checker -----------------------------------------------------------------------


@dataclass(frozen=True)
class Imported:
    """One module name an import statement brings in, absolute, with its line."""

    module: str
    line: int


@dataclass(frozen=True)
class Violation:
    """A rule broken at ``path:line``."""

    path: PurePosixPath
    line: int
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: [{self.rule}] {self.message}"


def _package_of(path: PurePosixPath) -> list[str]:
    """The package a repo-relative file belongs to, as parts.

    ``e2ee/ratchet/chain.py`` and ``e2ee/ratchet/__init__.py`` both give
    ``["e2ee", "ratchet"]``: relative imports in either resolve against it.
    """
    return list(path.parts[:-1])


def _resolve(node: ast.ImportFrom, package: list[str]) -> str | None:
    """The absolute module of a ``from`` import; ``None`` if it climbs above the top."""
    if node.level == 0:
        return node.module
    if node.level > len(package):
        return None
    base = package[: len(package) - node.level + 1]
    return ".".join([*base, node.module] if node.module else base)


def _dynamic_import(node: ast.Call) -> str | None:
    """The literal module name of ``importlib.import_module("x")`` or ``__import__("x")``."""
    func = node.func
    named = (isinstance(func, ast.Name) and func.id in {"__import__", "import_module"}) or (
        isinstance(func, ast.Attribute) and func.attr == "import_module"
    )
    if named and node.args:
        first = node.args[0]
        if isinstance(first, ast.Constant) and isinstance(first.value, str):
            return first.value
    return None


def imports_of(source: str, path: PurePosixPath) -> Iterator[Imported | Violation]:
    """Every module the source imports, absolute; a violation for an unresolvable one.

    ``from a import b`` yields both ``a`` and ``a.b`` (``b`` may be a submodule).
    """
    package = _package_of(path)
    for node in ast.walk(ast.parse(source, filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Imported(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            module = _resolve(node, package)
            if module is None:
                yield Violation(
                    path,
                    node.lineno,
                    "relative-import",
                    f"relative import of level {node.level} climbs above the top package",
                )
                continue
            yield Imported(module, node.lineno)
            for alias in node.names:
                if alias.name != "*":
                    yield Imported(f"{module}.{alias.name}", node.lineno)
        elif isinstance(node, ast.Call) and (name := _dynamic_import(node)):
            yield Imported(name, node.lineno)


def check_source(source: str, path: PurePosixPath) -> list[Violation]:
    """Check one file's source, given its repo-relative path, against every rule."""
    violations: dict[tuple[int, str], Violation] = {}
    for item in imports_of(source, path):
        if isinstance(item, Violation):
            violations[(item.line, item.rule)] = item
            continue
        for rule in RULES:
            if rule.applies_to(path) and (banned := rule.bans(item.module)):
                violations.setdefault(
                    (item.line, rule.id),
                    Violation(path, item.line, rule.id, f"imports {banned}: {rule.reason}"),
                )
    return sorted(violations.values(), key=lambda v: (v.line, v.rule))


def package_files(root: Path) -> list[PurePosixPath]:
    """Every ``.py`` file of the packages under ``root``, repo-relative."""
    return sorted(
        PurePosixPath(file.relative_to(root).as_posix())
        for package in PACKAGES
        for file in (root / package).rglob("*.py")
        if "__pycache__" not in file.parts
    )


def check_tree(root: Path) -> list[Violation]:
    """Check every file of the packages under ``root``."""
    return [
        violation
        for path in package_files(root)
        for violation in check_source((root / path).read_text(encoding="utf-8"), path)
    ]


# --- the real tree ---------------------------------------------------------------------


def test_packages_follow_the_import_rules() -> None:
    violations = check_tree(REPO)
    assert not violations, "import rules broken:\n" + "\n".join(map(str, violations))


def test_the_walk_sees_the_real_packages_and_their_imports() -> None:
    files = package_files(REPO)
    for expected in ("e2ee/primitives.py", "e2ee/cli.py", "server/__init__.py"):
        assert PurePosixPath(expected) in files
    primitives = PurePosixPath("e2ee/primitives.py")
    seen = {
        item.module
        for item in imports_of((REPO / primitives).read_text(encoding="utf-8"), primitives)
        if isinstance(item, Imported)
    }
    # The one module allowed to import the crypto libraries does, and the checker sees it.
    assert {"nacl.bindings", "e2ee.errors"} <= seen
    assert any(module.startswith("cryptography") for module in seen)


# --- each rule catches a planted violation -------------------------------------------


def rules_broken(source: str, path: str) -> list[tuple[str, int]]:
    return [(v.rule, v.line) for v in check_source(source, PurePosixPath(path))]


@pytest.mark.parametrize("module", sorted(E2EE_NO_IO))
@pytest.mark.parametrize("form", ["import {m}", "import {m} as alias", "from {m} import thing"])
def test_e2ee_io_imports_are_caught(module: str, form: str) -> None:
    source = "import hashlib\n\n" + form.format(m=module) + "\n"
    assert rules_broken(source, "e2ee/ratchet/chain.py") == [("e2ee-sans-io", 3)]


@pytest.mark.parametrize(
    "source",
    [
        "from os import urandom",
        "import os.path",
        "from time import monotonic",
        "import http.client",
        "from urllib.parse import quote",
        "from concurrent.futures import ThreadPoolExecutor",
        "def f():\n    import time",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import asyncio",
        "import importlib\nsock = importlib.import_module('socket')",
        "rand = __import__('random')",
    ],
)
def test_e2ee_io_imports_in_any_form_are_caught(source: str) -> None:
    broken = rules_broken(source, "e2ee/x.py")
    assert [rule for rule, _ in broken] == ["e2ee-sans-io"]


def test_cli_gets_no_clock_either() -> None:
    assert rules_broken("import time\n", "e2ee/cli.py") == [("e2ee-sans-io", 1)]
    assert rules_broken("import os\n", "e2ee/__main__.py") == [("e2ee-sans-io", 1)]


@pytest.mark.parametrize(
    "source",
    ["import server", "from server.app import create_app", "import client_sdk.client"],
)
def test_e2ee_importing_server_or_sdk_is_caught(source: str) -> None:
    assert rules_broken(source, "e2ee/envelope.py") == [("e2ee-standalone", 1)]


@pytest.mark.parametrize(
    "path", ["e2ee/x3dh.py", "e2ee/ratchet/chain.py", "server/app.py", "client_sdk/client.py"]
)
@pytest.mark.parametrize(
    "source",
    [
        "import nacl.bindings",
        "from nacl.public import PrivateKey",
        "import cryptography",
        "from cryptography.hazmat.primitives.asymmetric import mlkem",
    ],
)
def test_crypto_outside_primitives_is_caught(path: str, source: str) -> None:
    assert rules_broken(source, path) == [("crypto-via-primitives", 1)]


def test_primitives_may_import_crypto() -> None:
    source = "import nacl.bindings\nfrom cryptography import x509\n"
    assert rules_broken(source, "e2ee/primitives.py") == []


@pytest.mark.parametrize("source", ["import client_sdk", "from client_sdk.store import X"])
def test_server_importing_sdk_is_caught(source: str) -> None:
    assert rules_broken(source, "server/relay/session.py") == [("server-not-sdk", 1)]


@pytest.mark.parametrize("path", ["client_sdk/client.py", "client_sdk/store/sql.py"])
@pytest.mark.parametrize("source", ["import server", "from server.app import create_app"])
def test_sdk_importing_server_is_caught(path: str, source: str) -> None:
    assert rules_broken(source, path) == [("sdk-not-server", 1)]


def test_sdk_testing_harness_may_start_a_relay() -> None:
    assert rules_broken("from server.app import create_app\n", "client_sdk/testing/sim.py") == []
    # but only under client_sdk/testing/, not a look-alike name
    assert rules_broken("import server\n", "client_sdk/testing_utils.py") == [("sdk-not-server", 1)]


@pytest.mark.parametrize(
    "path", ["client_sdk/testing/relay.py", "client_sdk/client.py", "server/app.py", "e2ee/x.py"]
)
@pytest.mark.parametrize(
    "source",
    ["from tests.server.relay_client import ORIGIN", "import tests", "from bench import run"],
)
def test_packages_importing_tests_or_bench_are_caught(path: str, source: str) -> None:
    assert rules_broken(source, path) == [("packages-not-tests", 1)]


def test_sdk_testing_harness_may_import_the_sdk_and_the_core() -> None:
    source = "from client_sdk import Client\nfrom e2ee.relay_frames import Send\n"
    assert rules_broken(source, "client_sdk/testing/plugin.py") == []


@pytest.mark.parametrize(
    "source",
    [
        "from e2ee.ratchet import RatchetState",
        "from e2ee import ratchet",
        "import e2ee.x3dh",
        "from e2ee.session import Session",
    ],
)
def test_relay_importing_session_code_is_caught(source: str) -> None:
    assert rules_broken(source, "server/keys.py") == [("relay-no-session-code", 1)]


def test_relay_may_use_wire_formats_and_signatures() -> None:
    source = "from e2ee.envelope import parse\nfrom e2ee import prekeys, device_list, errors\n"
    assert rules_broken(source, "server/keys.py") == []


# --- what the rules allow, and relative imports ----------------------------------------


def test_sys_and_the_cli_modules_are_allowed_everywhere() -> None:
    source = "import argparse\nimport sys\nfrom importlib.metadata import entry_points\n"
    for path in ("e2ee/cli.py", "e2ee/__main__.py", "e2ee/ratchet.py", "server/cli.py"):
        assert rules_broken(source, path) == []


def test_relative_imports_resolve_to_the_package() -> None:
    # e2ee/time.py or client_sdk/server.py would be modules of their own package,
    # not the banned top-level ones.
    assert rules_broken("from . import time\nfrom .time import now\n", "e2ee/x.py") == []
    assert rules_broken("from .. import primitives\n", "e2ee/ratchet/chain.py") == []
    assert rules_broken("from . import server\n", "client_sdk/__init__.py") == []
    found = list(imports_of("from ..primitives import x25519\n", PurePosixPath("e2ee/sub/m.py")))
    assert found == [Imported("e2ee.primitives", 1), Imported("e2ee.primitives.x25519", 1)]


def test_relative_import_above_the_top_package_is_caught() -> None:
    source = "from .testing import harness\nfrom ..server import app\n"
    # from client_sdk/x.py, ".." climbs above client_sdk
    assert rules_broken(source, "client_sdk/x.py") == [("relative-import", 2)]
    # from client_sdk/testing/sub/x.py, "..." is client_sdk: fine; "...." is above
    assert rules_broken("from ... import server\n", "client_sdk/testing/sub/x.py") == []
    assert rules_broken("from .... import server\n", "client_sdk/testing/sub/x.py") == [
        ("relative-import", 1)
    ]


def test_check_tree_walks_nested_packages(tmp_path: Path) -> None:
    planted = {
        "e2ee/__init__.py": "",
        "e2ee/ratchet/__init__.py": "from .. import primitives\n",
        "e2ee/ratchet/chain.py": "import hashlib\nimport asyncio\n",
        "e2ee/primitives.py": "import nacl.bindings\n",
        "e2ee/__pycache__/stale.py": "import socket\n",
        "server/app.py": "import starlette\nfrom client_sdk import Client\n",
        "client_sdk/testing/sim.py": "import server.app\n",
        "client_sdk/store.py": "import server.db\n",
        "bench/run.py": "import time\nimport nacl\n",  # not a package of the rules
    }
    for name, source in planted.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(source)
    assert [(str(v.path), v.line, v.rule) for v in check_tree(tmp_path)] == [
        ("client_sdk/store.py", 1, "sdk-not-server"),
        ("e2ee/ratchet/chain.py", 2, "e2ee-sans-io"),
        ("server/app.py", 2, "server-not-sdk"),
    ]


def test_violation_message_names_file_line_and_reason() -> None:
    (violation,) = check_source("\n\nfrom os import urandom\n", PurePosixPath("e2ee/keys.py"))
    assert str(violation) == (
        "e2ee/keys.py:3: [e2ee-sans-io] imports os: e2ee/ is sans-I/O: "
        "no I/O, clocks or randomness of its own (CONVENTIONS 1, DESIGN 3)"
    )
