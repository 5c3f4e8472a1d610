"""Tests of tests/conftest.py: the skip policy and the Hypothesis seed.

Each test copies the real ``conftest.py`` and ``hypothesis_profiles.py`` into a
package of a ``pytester`` directory and runs pytest there, in a subprocess, on a
small test file: so what is checked is the configuration CI actually uses, and
the global state it sets (Hypothesis's profile and seed) cannot leak into this
session.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

TESTS_DIR = Path(__file__).parent
REQUIRE = "E2EE_REQUIRE_SERVICES"
SEED = "E2EE_HYPOTHESIS_SEED"
PROFILE = "HYPOTHESIS_PROFILE"

SKIPPING_TESTS = """
import pytest

@pytest.mark.skip(reason="marker reason")
def test_marker():
    pass

@pytest.mark.skipif(True, reason="skipif reason")
def test_skipif():
    pass

def test_imperative():
    pytest.skip("imperative reason")

def test_importorskip():
    pytest.importorskip("e2ee_no_such_module_for_this_test")

@pytest.fixture
def service():
    pytest.skip("fixture reason")

def test_fixture(service):
    pass

@pytest.mark.xfail(reason="expected failure", strict=True)
def test_xfail():
    raise AssertionError

def test_passes():
    pass
"""

SKIP_REASONS = (
    "marker reason",
    "skipif reason",
    "imperative reason",
    "could not import 'e2ee_no_such_module_for_this_test'",
    "fixture reason",
)

MODULE_LEVEL_SKIP = """
import pytest

pytest.importorskip("e2ee_no_such_service_driver")

def test_needs_the_driver():
    pass
"""


# Not "tests", this session's own package; but a name starting with "test", so that
# pytest loads its conftest at start-up, as it does tests/conftest.py (pytest_configure
# and pytest_report_header only take effect in such initial conftests).
INNER_PACKAGE = "tests_copy"


@pytest.fixture
def suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A pytester directory with the project's conftest, and a neutral environment."""
    pytester.makeini(  # what pyproject.toml sets that matters for an inner run
        "[pytest]\nfilterwarnings = error\nasyncio_default_fixture_loop_scope = function\n"
    )
    package = pytester.mkpydir(INNER_PACKAGE)
    for name in ("conftest.py", "hypothesis_profiles.py"):
        (package / name).write_text((TESTS_DIR / name).read_text())
    for name in (REQUIRE, SEED):  # CI sets these for the outer run
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(PROFILE, "dev")
    return pytester


def add_tests(suite: pytest.Pytester, **files: str) -> None:
    """Write test modules into the suite's package, beside the copied conftest."""
    for name, source in files.items():
        (suite.path / INNER_PACKAGE / f"{name}.py").write_text(source)


def run(suite: pytest.Pytester, *args: str) -> pytest.RunResult:
    return suite.runpytest_subprocess("-p", "no:cacheprovider", *args)


def test_skips_are_skips_by_default(suite: pytest.Pytester) -> None:
    add_tests(suite, test_skipping=SKIPPING_TESTS)
    result = run(suite, "-rs")
    result.assert_outcomes(passed=1, skipped=5, xfailed=1)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["*skips allowed (set E2EE_REQUIRE_SERVICES=1 to fail them)*"])


@pytest.mark.parametrize("value", ["0", ""])
def test_policy_off_values(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv(REQUIRE, value)
    add_tests(suite, test_skipping=SKIPPING_TESTS)
    run(suite).assert_outcomes(passed=1, skipped=5, xfailed=1)


def test_require_services_turns_every_skip_into_a_failure(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(REQUIRE, "1")
    add_tests(suite, test_skipping=SKIPPING_TESTS)
    result = run(suite)
    # Skips in the test body fail it; skips in setup (markers, fixtures) are setup errors.
    # The xfail and the passing test are untouched.
    result.assert_outcomes(passed=1, failed=2, errors=3, skipped=0, xfailed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    for reason in SKIP_REASONS:
        suffix = "(skips are failures: E2EE_REQUIRE_SERVICES=1) at *test_skipping.py:*"
        result.stdout.fnmatch_lines([f"Skipped: {reason}* {suffix}"])
    result.stdout.fnmatch_lines(["skips are failures (E2EE_REQUIRE_SERVICES=1)"])  # the header


def test_module_level_skip_is_a_skip_by_default(suite: pytest.Pytester) -> None:
    add_tests(suite, test_module_skip=MODULE_LEVEL_SKIP, test_other="def test_ok():\n    pass\n")
    result = run(suite)
    result.assert_outcomes(passed=1, skipped=1)
    assert result.ret == pytest.ExitCode.OK


def test_module_level_skip_fails_collection_under_the_policy(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(REQUIRE, "1")
    add_tests(suite, test_module_skip=MODULE_LEVEL_SKIP)
    result = run(suite)
    result.assert_outcomes(errors=1, skipped=0)
    assert result.ret == pytest.ExitCode.INTERRUPTED  # "1 error during collection"
    result.stdout.fnmatch_lines(
        ["*could not import 'e2ee_no_such_service_driver'*(skips are failures*"]
    )


@pytest.mark.parametrize(("name", "value"), [(REQUIRE, "maybe"), (SEED, "abc")])
def test_malformed_environment_is_a_usage_error(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    add_tests(suite, test_ok="def test_ok():\n    pass\n")
    result = run(suite)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{name}={value!r}*"])


DRAWING_TEST = """
import os

from hypothesis import given, settings, strategies as st

@settings(database=None, max_examples=25)
@given(st.lists(st.integers(), min_size=3))
def test_draw(xs):
    with open(os.environ["E2EE_TEST_DRAWS"], "a") as out:
        out.write(f"{xs}\\n")
"""


def _draws(suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, seed: str, label: str) -> str:
    """Run DRAWING_TEST with E2EE_HYPOTHESIS_SEED=seed, check the header, return the draws."""
    draws = suite.path / f"draws-{label}.txt"
    monkeypatch.setenv(SEED, seed)
    monkeypatch.setenv(PROFILE, "ci")
    monkeypatch.setenv("E2EE_TEST_DRAWS", str(draws))
    result = run(suite)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "hypothesis profile: ci (from HYPOTHESIS_PROFILE)",
            f"hypothesis seed: {seed} "
            f"(reproduce with E2EE_HYPOTHESIS_SEED={seed} HYPOTHESIS_PROFILE=ci)",
        ]
    )
    return draws.read_text()


def test_seed_from_environment_makes_runs_reproducible(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_tests(suite, test_drawing=DRAWING_TEST)
    first = _draws(suite, monkeypatch, "305419896", "a")
    again = _draws(suite, monkeypatch, "305419896", "b")
    other = _draws(suite, monkeypatch, "2271560481", "c")
    assert first == again
    assert first != other


def test_explicit_seed_option_wins(suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    add_tests(suite, test_ok="def test_ok():\n    pass\n")
    monkeypatch.setenv(SEED, "1")
    result = run(suite, "--hypothesis-seed=77")
    result.stdout.fnmatch_lines(["hypothesis seed: 77 (reproduce with E2EE_HYPOTHESIS_SEED=77 *"])


def test_header_without_seed(suite: pytest.Pytester) -> None:
    add_tests(suite, test_ok="def test_ok():\n    pass\n")
    result = run(suite)
    result.stdout.fnmatch_lines(["hypothesis seed: random (set E2EE_HYPOTHESIS_SEED=N to pin it)"])
