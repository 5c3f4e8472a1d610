"""The pytest-plugin examples of docs/simulation.md (issue 5): the marked blocks, run.

The fenced ``python`` block right after the line ``<!-- sim:plugin-example -->`` (and
the one after ``<!-- sim:malicious-example -->``) is extracted, written as an app's
test file beside the ``conftest.py`` line the document gives, and run with
``pytester`` in a pytest process of its own; it must pass.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.doc_blocks import marked_block

pytest_plugins = ["pytester"]

DOC = Path(__file__).resolve().parents[3] / "docs" / "simulation.md"
MARKER = "<!-- sim:plugin-example -->"
CONFTEST_LINE = 'pytest_plugins = ["client_sdk.testing.plugin"]'
INI = """\
[pytest]
asyncio_mode = strict
asyncio_default_fixture_loop_scope = function
filterwarnings = error
timeout = 120
"""


def test_the_section_is_there_and_names_the_conftest_line() -> None:
    text = DOC.read_text(encoding="utf-8")
    assert "## Testing your app with the pytest plugin" in text
    assert CONFTEST_LINE in text
    compile(marked_block(text, MARKER), "test_chat.py", "exec")


@pytest.mark.parametrize("marker", [MARKER, "<!-- sim:malicious-example -->"])
def test_the_documented_example_passes(pytester: pytest.Pytester, marker: str) -> None:
    pytester.makeini(INI)
    pytester.makeconftest(CONFTEST_LINE + "\n")
    pytester.makepyfile(test_chat=marked_block(DOC.read_text(encoding="utf-8"), marker))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=180)
    result.assert_outcomes(passed=1)
