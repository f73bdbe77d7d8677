"""Atomic outputs that never replace what the command did not create.

A command checks its destination once, before any work (:func:`destination`): an output
that is, holds or lies inside one of its inputs is refused, ``--force`` or not; an existing
output is replaced only with ``overwrite`` and only if it is empty or an earlier output of
the same command (it holds that command's *marker* file, e.g. ``merge_report.json``).
The output is written into a temporary sibling folder (``.NAME.tmp-*``), which gets the
permissions a plain ``mkdir`` under the user's umask gives, and is renamed into place at the
end without replacing anything that appeared meanwhile (``renameat2(RENAME_NOREPLACE)``): two
jobs started together on one ``--out`` cannot silently overwrite each other. A failure,
Ctrl-C, SIGTERM or SIGHUP removes the temporary folder (the CLI turns the signals into
exceptions); only a hard kill can leave one behind.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from eigenmix.errors import InvalidInputError


class OutputError(InvalidInputError):
    """The destination cannot be written (it appeared meanwhile, or is not ours to replace)."""


@dataclass(frozen=True)
class Destination:
    """A checked output location.

    Attributes:
        path: where the output goes (absolute).
        overwrite: an earlier output of the same command may be replaced.
        marker: the file that identifies such an earlier output (None: any folder may be
            replaced, for library callers that ask for it).
        folder: the output is a folder (else a file).
    """

    path: Path
    overwrite: bool = False
    marker: str | None = None
    folder: bool = True


def _is_under(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def destination(
    out: Path | str, *, overwrite: bool = False, inputs: Iterable[Path | str] = (), marker: str | None = None, folder: bool = True
) -> Destination:
    """Check an output location before any work; one :class:`OutputError` line if it cannot be used.

    Args:
        out: the output folder (or file).
        overwrite: replace an earlier output of this command (``--force``).
        inputs: every path the command reads; ``out`` may not be or hold one, nor (a folder
            output) lie inside one.
        marker: a file every output of this command holds; what ``overwrite`` may replace.
        folder: ``out`` is a folder (else a file).
    """
    given = Path(out)
    path = given.resolve()
    if not folder and path.is_dir():
        raise OutputError(f"{given}: is a folder; give a file name")
    for item in inputs:
        source = Path(item).resolve()
        if _is_under(source, path):
            what = "is" if source == path else "holds"
            raise OutputError(f"{given}: {what} an input of this command ({item}); choose another output, --force or not")
        if folder and source.is_dir() and _is_under(path, source):
            raise OutputError(f"{given}: lies inside an input of this command ({item}); choose another output")
    if _is_under(Path.cwd(), path):
        raise OutputError(f"{given}: is the working folder or holds it; choose a new folder for the output")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise OutputError(f"{given}: already exists (pass --force, or overwrite=True, to replace an earlier output of this command)")
    dest = Destination(path, overwrite, marker, folder)
    if path.exists() or path.is_symlink():
        _check_replaceable(given, dest)
    return dest


def _check_replaceable(given: Path, dest: Destination) -> None:
    path, marker = dest.path, dest.marker
    if not dest.folder:
        if path.is_dir():
            raise OutputError(f"{given}: is a folder; give a file name")
        return
    if not path.is_dir() or path.is_symlink():
        raise OutputError(f"{given}: exists and is not a folder")
    if marker is not None and any(path.iterdir()) and not (path / marker).is_file():
        raise OutputError(f"{given}: is not an earlier output of this command (it has no {marker}); eigenmix replaces only its own outputs")


def _umask() -> int:
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def rename_noreplace(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst``, failing with :class:`FileExistsError` if ``dst`` exists,
    atomically where the system has ``renameat2`` (Linux), else check-then-rename."""
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is not None:
        at_fdcwd, rename_noreplace_flag = -100, 1
        if renameat2(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), rename_noreplace_flag) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.ENOSYS, errno.EINVAL):  # EINVAL: a filesystem without the flag
            raise FileExistsError(code, os.strerror(code), str(dst)) if code == errno.EEXIST else OSError(code, os.strerror(code), str(dst))
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
    os.rename(src, dst)


def _publish(tmp: Path, dest: Destination) -> None:
    """Rename ``tmp`` to ``dest.path``; an earlier output of the command is moved aside first
    (and removed once the new one is in place)."""
    path, old = dest.path, None
    if dest.overwrite and (path.exists() or path.is_symlink()):
        _check_replaceable(path, dest)  # still ours to replace
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent)) / path.name
        os.rename(path, old)
    try:
        rename_noreplace(tmp, path)
    except FileExistsError:
        kept = "" if old is None else f"; the earlier output is kept at {old}"
        raise OutputError(f"{path}: appeared while this command ran (another job?); nothing was replaced{kept}") from None
    if old is not None:
        shutil.rmtree(old.parent, ignore_errors=True)


def _as_destination(dest: Destination | Path | str, overwrite: bool, marker: str | None, folder: bool = True) -> Destination:
    return dest if isinstance(dest, Destination) else destination(dest, overwrite=overwrite, marker=marker, folder=folder)


@contextmanager
def atomic_dir(dest: Destination | Path | str, *, overwrite: bool = False, marker: str | None = None) -> Iterator[Path]:
    """Yield a temporary folder beside the destination that becomes it when the block
    succeeds (a path is checked here by :func:`destination`, without inputs)."""
    target = _as_destination(dest, overwrite, marker)
    target.path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.path.name}.tmp-", dir=target.path.parent))
    try:
        tmp.chmod(0o777 & ~_umask())
        yield tmp
        _publish(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def atomic_file(dest: Destination | Path | str, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary file beside the destination that becomes it when the block succeeds."""
    target = _as_destination(dest, overwrite, None, folder=False)
    target.path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{target.path.name}.tmp-", dir=target.path.parent)
    os.close(handle)
    tmp = Path(name)
    try:
        tmp.chmod(0o666 & ~_umask())
        yield tmp
        if target.overwrite and target.path.exists():
            os.replace(tmp, target.path)
        else:
            _publish(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
