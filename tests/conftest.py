"""Suite-wide pytest configuration: Hypothesis profile and seed, and the skip policy.

Environment variables (``.ci/run`` sets all three):

``HYPOTHESIS_PROFILE``
    ``dev`` (default) or ``ci``; see ``hypothesis_profiles.py``.
``E2EE_HYPOTHESIS_SEED``
    An integer. When set, every Hypothesis test runs with this seed (as if
    ``--hypothesis-seed`` had been given), so a CI run can be reproduced; CI
    derives it from the commit. The pytest header prints it.
``E2EE_REQUIRE_SERVICES``
    ``1`` turns every skip into a failure: a test (or a whole module) that skips
    because PostgreSQL, Redis or an optional package is missing fails instead,
    with the skip reason. CI sets it so a missing service cannot pass silently.
"""

from __future__ import annotations

import os
from collections.abc import Generator

import pytest

from . import hypothesis_profiles

SEED_ENV = "E2EE_HYPOTHESIS_SEED"
REQUIRE_SERVICES_ENV = "E2EE_REQUIRE_SERVICES"

_REQUIRE_SERVICES_KEY = pytest.StashKey[bool]()
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})


def _require_services() -> bool:
    """Whether ``E2EE_REQUIRE_SERVICES`` asks for skips to fail."""
    value = os.environ.get(REQUIRE_SERVICES_ENV, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise pytest.UsageError(f"{REQUIRE_SERVICES_ENV}={value!r}: expected 1 or 0")


def _env_seed() -> int | None:
    """The integer in ``E2EE_HYPOTHESIS_SEED``, or ``None`` when it is unset or empty."""
    value = os.environ.get(SEED_ENV, "").strip()
    if not value:
        return None
    try:
        return int(value, 0)
    except ValueError:
        raise pytest.UsageError(f"{SEED_ENV}={value!r} is not an integer") from None


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """Pass ``E2EE_HYPOTHESIS_SEED`` to Hypothesis's pytest plugin as ``--hypothesis-seed``.

    Runs before the plugin's own ``pytest_configure``, which reads the option. A
    seed given explicitly on the command line wins over the environment. Also
    fixes the skip policy for the session: both variables are read once, here,
    so a test that changes the environment cannot change them mid-run.
    """
    config.stash[_REQUIRE_SERVICES_KEY] = _require_services()
    seed = _env_seed()
    if seed is not None and config.getoption("hypothesis_seed", default=None) is None:
        config.option.hypothesis_seed = str(seed)


def pytest_report_header(config: pytest.Config) -> list[str]:
    """Print the Hypothesis profile, the seed (and how to reproduce the run), the skip policy."""
    seed = config.getoption("hypothesis_seed", default=None)
    profile = hypothesis_profiles.PROFILE
    if seed is None:
        seed_line = f"hypothesis seed: random (set {SEED_ENV}=N to pin it)"
    else:
        seed_line = (
            f"hypothesis seed: {seed} (reproduce with {SEED_ENV}={seed} "
            f"{hypothesis_profiles.PROFILE_ENV}={profile})"
        )
    policy = (
        f"skips are failures ({REQUIRE_SERVICES_ENV}=1)"
        if config.stash[_REQUIRE_SERVICES_KEY]
        else f"skips allowed (set {REQUIRE_SERVICES_ENV}=1 to fail them)"
    )
    profile_line = f"hypothesis profile: {profile} (from {hypothesis_profiles.PROFILE_ENV})"
    return [profile_line, seed_line, policy]


def _forbid_skip(report: pytest.TestReport | pytest.CollectReport) -> None:
    """Turn a skipped ``report`` into a failure carrying the skip reason."""
    if not report.skipped or hasattr(report, "wasxfail"):  # xfail is not a skip
        return
    longrepr = report.longrepr
    if isinstance(longrepr, tuple):  # (path, 1-based line, "Skipped: reason")
        path, lineno, reason = longrepr
        where = f" at {path}:{lineno}"
    else:
        where, reason = "", str(longrepr)
    report.outcome = "failed"
    report.longrepr = f"{reason} (skips are failures: {REQUIRE_SERVICES_ENV}=1){where}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Fail a test that skips (marker, ``pytest.skip``, ``importorskip``) under the policy."""
    report = yield
    if item.config.stash[_REQUIRE_SERVICES_KEY]:
        _forbid_skip(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    """Fail a module that skips at import (module-level ``importorskip`` or skip)."""
    report = yield
    if collector.config.stash[_REQUIRE_SERVICES_KEY]:
        _forbid_skip(report)
    return report
