"""Atomic output folders: write into a temporary sibling, rename into place on success.

A failed or interrupted job leaves nothing at the destination (the temporary folder is
removed on error; a hard kill can leave only a hidden ``.NAME.tmp-*`` sibling).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from eigenmix.errors import InvalidInputError


def check_destination(out: Path, *, overwrite: bool) -> None:
    """Fail early, before any work, if ``out`` exists and may not be replaced."""
    if out.exists() and not overwrite:
        raise InvalidInputError(f"{out}: already exists (pass --force, or overwrite=True, to replace it)")
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"{out}: exists and is not a folder")


@contextmanager
def atomic_dir(out: Path | str, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder that becomes ``out`` when the block succeeds."""
    out = Path(out)
    check_destination(out, overwrite=overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        out.rename(old / out.name)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)
