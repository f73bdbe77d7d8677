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
        marker: what identifies such an earlier output: a file it holds (folders), or a key
            of the JSON object it is (files); None: anything may be replaced, for library
            callers that ask for it.
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
        marker: what every output of this command holds (a file of a folder, a key of a JSON
            file); what ``overwrite`` may replace.
        folder: ``out`` is a folder (else a file).
    """
    if str(out).strip() == "":
        raise OutputError("the output path is empty")
    given = Path(out)
    path = given.expanduser().resolve()
    if not folder and path.is_dir():
        raise OutputError(f"{given}: is a folder; give a file name")
    for item in inputs:
        source = Path(item).expanduser().resolve()
        if _is_under(source, path):
            what = "is" if source == path else "holds"
            raise OutputError(f"{given}: {what} an input of this command ({item}); choose another output, --force or not")
        if source.is_dir() and _is_under(path, source):
            raise OutputError(f"{given}: lies inside an input of this command ({item}); choose another output")
    if _is_under(Path.cwd(), path):
        raise OutputError(f"{given}: is the working folder or holds it; choose a new folder for the output")
    ancestor = next(p for p in path.parents if p.exists() or p == p.parent)
    if not ancestor.is_dir():
        raise OutputError(f"{given}: {ancestor} is not a folder")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise OutputError(f"{given}: already exists (--force replaces an earlier output of this command)")
    dest = Destination(path, overwrite, marker, folder)
    if path.exists() or path.is_symlink():
        _check_replaceable(given, dest)
    return dest


def _check_replaceable(given: Path, dest: Destination) -> None:
    path, marker = dest.path, dest.marker
    if not dest.folder:
        if path.is_dir():
            raise OutputError(f"{given}: is a folder; give a file name")
        if path.is_symlink() or not path.is_file():
            raise OutputError(f"{given}: is not a regular file; eigenmix replaces only its own outputs")
        if marker is not None and not _json_with_key(path, marker):
            raise OutputError(f"{given}: is not an earlier output of this command; eigenmix replaces only its own outputs")
        return
    if not path.is_dir() or path.is_symlink():
        raise OutputError(f"{given}: exists and is not a folder")
    if marker is not None and any(path.iterdir()) and not (path / marker).is_file():
        raise OutputError(f"{given}: is not an earlier output of this command (it has no {marker}); eigenmix replaces only its own outputs")


def _json_with_key(path: Path, marker: str) -> bool:
    """Whether ``path`` is a (small) JSON object with ``marker``: ``"key=value"`` or ``"key"``."""
    import json

    key, _, value = marker.partition("=")
    if path.stat().st_size > 64 << 20:
        return False
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and key in data and (not value or data[key] == value)


def own_modes(folder: Path) -> None:
    """Give every file and folder under ``folder`` the mode a plain ``open`` / ``mkdir`` gives
    under the user's umask (some writers, safetensors among them, create files 0600)."""
    mask = _umask()
    for item in folder.rglob("*"):
        if not item.is_symlink():
            item.chmod((0o777 if item.is_dir() else 0o666) & ~mask)


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
    created = _make_parents(target.path.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.path.name}.tmp-", dir=target.path.parent))
    try:
        tmp.chmod(0o777 & ~_umask())
        yield tmp
        own_modes(tmp)
        _publish(tmp, target)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_empty(created)
        if isinstance(err, OSError) and not err.filename:  # a writer that did not say where
            raise OSError(err.errno, err.strerror or str(err), str(target.path)) from err
        raise


def _make_parents(folder: Path) -> list[Path]:
    """``mkdir -p``, returning the folders it created (deepest last)."""
    missing = [p for p in [folder, *folder.parents] if not p.exists()][::-1]
    folder.mkdir(parents=True, exist_ok=True)
    return missing


def _remove_empty(folders: list[Path]) -> None:
    for item in reversed(folders):
        try:
            item.rmdir()
        except OSError:
            break


@contextmanager
def atomic_file(dest: Destination | Path | str, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary file beside the destination that becomes it when the block succeeds."""
    target = _as_destination(dest, overwrite, None, folder=False)
    created = _make_parents(target.path.parent)
    handle, name = tempfile.mkstemp(prefix=f".{target.path.name}.tmp-", dir=target.path.parent)
    os.close(handle)
    tmp = Path(name)
    try:
        yield tmp
        tmp.chmod(0o666 & ~_umask())
        if target.overwrite and target.path.exists():
            _check_replaceable(target.path, target)  # still ours to replace
            os.replace(tmp, target.path)
        else:
            _publish(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        _remove_empty(created)
        raise
