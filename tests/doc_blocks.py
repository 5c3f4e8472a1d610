"""Examples extracted from the documents, so the tests run them as written."""

from __future__ import annotations

__all__ = ["marked_block"]


def marked_block(text: str, marker: str) -> str:
    """The body of the fenced ``python`` block right after the ``marker`` line.

    Raises:
        ValueError: no marker, several, no ``python`` fence right after it, or an
            unclosed block.
    """
    lines = text.splitlines()
    marks = [i for i, line in enumerate(lines) if line.strip() == marker]
    if len(marks) != 1:
        raise ValueError(f"{len(marks)} lines {marker}; expected one")
    start = marks[0] + 1
    if start >= len(lines) or lines[start].strip() != "```python":
        raise ValueError(f"the line after {marker} must open a ```python block")
    for end in range(start + 1, len(lines)):
        if lines[end].strip() == "```":
            return "\n".join(lines[start + 1 : end]) + "\n"
    raise ValueError("the example block is never closed")
