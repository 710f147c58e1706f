"""Operator input files (forget-set examples, prompt batches, calibration probes) read as text.

One reader so that every command reports an unreadable file, or one that is not UTF-8 (a
spreadsheet export in Latin-1 or UTF-16), the same way: one line naming the file and the line
to fix, instead of a UnicodeDecodeError traceback.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class InputFileError(ValueError):
    """An input file cannot be read as UTF-8 text; the message names the file (and line)."""


def read_utf8_text(path: Path) -> str:
    """The whole file decoded as UTF-8, or :class:`InputFileError`."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InputFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise InputFileError(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            "save the file as UTF-8"
        ) from None


def json_lines(path: Path, error: type[ValueError] = InputFileError) -> Iterator[tuple[str, Any]]:
    """``(where, value)`` for every non-blank line of a JSONL file, ``where`` being ``name:line``
    for the caller's own messages; a line that is not JSON raises ``error`` naming it."""
    path = Path(path)
    for number, line in enumerate(read_utf8_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path.name}:{number}"
        try:
            yield where, json.loads(line)
        except json.JSONDecodeError as exc:
            raise error(f"{where}: not valid JSON ({exc.msg})") from None
