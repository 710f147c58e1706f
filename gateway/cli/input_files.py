"""Operator input files (forget-set examples, prompt batches, calibration probes) read as text.

One reader so that every command reports an unreadable file, or one that is not UTF-8 (a
spreadsheet export in Latin-1 or UTF-16), the same way: one line naming the file and the line
to fix, instead of a UnicodeDecodeError traceback.
"""

from __future__ import annotations

from pathlib import Path


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
