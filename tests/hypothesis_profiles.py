"""Hypothesis profiles of the test suite, and the settings helpers tests use.

Importing this module registers two profiles and loads the one named by the
environment variable ``HYPOTHESIS_PROFILE`` (default ``dev``; ``.ci/run`` sets
``ci``). ``tests/conftest.py`` imports it first, so every test runs under the
loaded profile. Tests that need larger or longer runs take one of the helpers::

    from tests.hypothesis_profiles import STATEFUL_SETTINGS

    TestRatchet = RatchetMachine.TestCase
    TestRatchet.settings = STATEFUL_SETTINGS

- ``dev``: quick local runs (50 examples, no deadline).
- ``ci``: no deadline, random but reproducible (the seed comes from the commit,
  see ``conftest.py``), failing examples printed as reproduction blobs, 200
  examples as a base.

Select the profile with the environment variable, not with pytest's
``--hypothesis-profile`` option: the helpers below are computed when this module
is imported, before that option is read.
"""

from __future__ import annotations

import os
from typing import Final

from hypothesis import HealthCheck, settings

__all__ = ["DECODER_SETTINGS", "PROFILE", "PROFILES", "PROFILE_ENV", "STATEFUL_SETTINGS"]

PROFILE_ENV: Final = "HYPOTHESIS_PROFILE"
PROFILES: Final = ("dev", "ci")

settings.register_profile("dev", max_examples=50, deadline=None)
# Overrides Hypothesis's built-in "ci" profile, which derandomizes: ours keeps runs
# random across commits and pins them per commit with E2EE_HYPOTHESIS_SEED instead.
settings.register_profile("ci", deadline=None, derandomize=False, print_blob=True, max_examples=200)

PROFILE: Final = os.environ.get(PROFILE_ENV, "dev") or "dev"
if PROFILE not in PROFILES:
    raise RuntimeError(f"{PROFILE_ENV}={PROFILE!r}: expected one of {', '.join(PROFILES)}")
settings.load_profile(PROFILE)

_CI: Final = PROFILE == "ci"
_SLOW_INPUTS: Final = (HealthCheck.too_slow, HealthCheck.data_too_large)

STATEFUL_SETTINGS: Final = settings(
    max_examples=300 if _CI else 30,
    stateful_step_count=40 if _CI else 20,
    deadline=None,
    suppress_health_check=_SLOW_INPUTS,
)
"""For rule-based state machines (Alice and Bob send, drop, shuffle, tamper, restore)."""

DECODER_SETTINGS: Final = settings(
    max_examples=2000 if _CI else 200,
    deadline=None,
    suppress_health_check=_SLOW_INPUTS,
)
"""For "every parser fed arbitrary bytes accepts or raises its decode error" tests."""
