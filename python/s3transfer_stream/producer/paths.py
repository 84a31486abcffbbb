"""Which files of an upload directory are sent, and their names on the wire."""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePath, PurePosixPath

__all__ = ["LOGS_SUBDIR", "is_eligible", "rel_path", "relative_location"]

#: Registry and log files of an upload directory live in this subdirectory; never uploaded.
LOGS_SUBDIR = "LOGS"


def relative_location(
    path: str | os.PathLike[str], root: str | os.PathLike[str] | None
) -> tuple[str, str]:
    """``(subdir_str, filename)`` of ``path`` for the wire format.

    ``subdir_str`` is the parent directory of ``path`` relative to ``root`` with POSIX
    separators, ``""`` when the file is directly in ``root`` or when ``root`` is None.
    Raises ValueError if ``path`` is not inside ``root``. Paths are compared as given
    (made absolute, not resolved), so a symlinked root works as the user sees it.
    """
    absolute = Path(os.path.abspath(path))
    if root is None:
        return "", absolute.name
    base = Path(os.path.abspath(root))
    try:
        relative = absolute.relative_to(base)
    except ValueError:
        raise ValueError(f"{path} is not inside {root}") from None
    if not relative.parts:
        raise ValueError(f"{path} is the root directory itself, not a file inside it")
    parent = PurePosixPath(*relative.parts[:-1]).as_posix()
    return ("" if parent == "." else parent), relative.name


def rel_path(subdir: str, filename: str) -> str:
    """The path a chunk message names, ``subdir/filename`` (``filename`` at top level)."""
    return f"{subdir}/{filename}" if subdir else filename


def is_eligible(rel_path: str | PurePath, upload_regex: re.Pattern[str] | None = None) -> bool:
    """True if the file at ``rel_path`` (relative to the upload directory) is uploaded.

    Never uploaded: anything under the top-level ``LOGS/`` directory (registry and log
    files), any path with a component starting with ``.`` (hidden files and
    directories, editors' temp files), and names ending in ``.log``. OpenMSIStream's
    default regex also skips every path containing "<any char>log" (``catalog.csv``,
    ``blog/a.dat``); this does not. ``upload_regex`` must then ``re.match`` the POSIX
    relative path.
    """
    text = rel_path.as_posix() if isinstance(rel_path, PurePath) else str(rel_path)
    parts = [part for part in text.split("/") if part not in ("", ".")]
    if not parts:
        return False
    if parts[0] == LOGS_SUBDIR or any(part.startswith(".") for part in parts):
        return False
    if parts[-1].lower().endswith(".log"):
        return False
    return upload_regex is None or upload_regex.match("/".join(parts)) is not None
