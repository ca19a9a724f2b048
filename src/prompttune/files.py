"""Files a reader never sees half-written: atomic file writes, JSON, and output directories built beside their
target and swapped in whole.

An output directory (an artifact, a training run) is written into a staging sibling ``.<name>.partial-<pid>-<id>``
and exchanged with the target in one ``renameat2(RENAME_EXCHANGE)`` call, so at every instant the target is the
complete old directory or the complete new one. Where the kernel or file system cannot exchange, the old
directory is first renamed to ``.<name>.old-<pid>-<id>`` and put back by the next writer if a crash came between
the two renames. Staging siblings of dead processes are removed by the next writer of the same target.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = ["atomic_write_bytes", "atomic_write_text", "write_json", "staged_directory", "replace_directory",
           "check_output_directory", "cached_directory"]


def _current_umask() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes, mode: int | None = None) -> Path:
    """Write ``data`` under a temporary name beside ``path``, fsync, rename over ``path`` (mode: 0o666 less umask)."""
    path = Path(path)
    mode = 0o666 & ~_current_umask() if mode is None else mode
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp_name, mode)
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def _json_default(obj: Any) -> Any:
    """Make numpy scalars/arrays, paths, sets and tuples JSON-serialisable."""
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (set, frozenset)):
        try:
            return sorted(obj)
        except TypeError:
            return list(obj)
    tolist = getattr(obj, "tolist", None)  # numpy arrays and scalars, torch tensors
    if callable(tolist):
        return tolist()
    item = getattr(obj, "item", None)
    if callable(item):
        return item()
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as pretty UTF-8 JSON (indent 2, trailing newline), atomically.

    numpy scalars/arrays, ``Path`` objects and sets are converted. NaN/Infinity are
    rejected (ValueError) because they are not valid JSON. Returns the path.
    """
    text = json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False, default=_json_default)
    return atomic_write_text(path, text + "\n")


# ---- whole directories ------------------------------------------------------------------------
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2); False where the system cannot."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _fsync_dir(d: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _siblings(target: Path, kind: str) -> list[tuple[Path, int]]:
    pat = re.compile(rf"^\.{re.escape(target.name)}\.{kind}-(\d+)-[0-9a-f]+$")
    if not target.parent.is_dir():
        return []
    return [(p, int(m.group(1))) for p in target.parent.iterdir() if (m := pat.match(p.name))]


def recover_directory(target: str | Path) -> None:
    """Undo what a crash left beside ``target``: put a renamed-away old directory back if the target is missing,
    and remove staging directories of processes that are gone."""
    target = Path(target)
    for p, pid in _siblings(target, "old"):
        if _pid_alive(pid) and pid != os.getpid():
            continue
        if not target.exists():
            os.rename(p, target)
        else:
            shutil.rmtree(p, ignore_errors=True)
    for p, pid in _siblings(target, "partial"):
        if not _pid_alive(pid):
            shutil.rmtree(p, ignore_errors=True)


def replace_directory(staged: str | Path, target: str | Path) -> None:
    """Put the complete directory ``staged`` at ``target`` in one step; the old target is removed after."""
    staged, target = Path(staged), Path(target)
    if not target.exists():
        os.rename(staged, target)
    elif _exchange(staged, target):
        shutil.rmtree(staged)  # now the old directory
    else:
        old = target.parent / f".{target.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        os.rename(target, old)
        os.rename(staged, target)
        shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(target.parent)


def cached_directory(target: str | Path, build: Callable[[Path], None], *, marker: str) -> Path:
    """A cache entry made once: ``target`` if its ``marker`` file is there, else ``build(staging)`` into a fresh
    directory beside it, renamed in whole. Whatever stops ``build`` (an error, Ctrl-C) removes the staging directory;
    a second process that finished first wins, and its entry is used."""
    target = Path(target)
    if (target / marker).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.partial-{os.getpid()}-"))
    try:
        build(tmp)
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / marker).exists():
            raise
    return target


def check_output_directory(target: str | Path, *, ours: Collection[str] | Callable[[Path], bool], overwrite: bool = False,
                           where: str = "output") -> Path:
    """Refuse an output directory that would destroy what is not ours: the working directory or one above it, a
    file, or a directory holding files prompttune did not write (unless ``overwrite``). ``ours``: the names
    prompttune writes, or a test of a path (for a name that is ours only with our content, such as a model card)."""
    raw = str(target)
    target = Path(target).expanduser()
    resolved = target.resolve()
    cwd = Path.cwd().resolve()
    if raw.strip() in ("", ".") or resolved == cwd or resolved in cwd.parents or resolved == Path.home().resolve():
        raise ConfigError(f"the output directory {raw!r} is {'the current directory' if resolved == cwd else 'a directory above the current one or your home'}; "
                          "an output directory is replaced whole when a run finishes", where=where,
                          fix="name a directory of its own, e.g. --output runs/mine")
    if target.exists() and not target.is_dir():
        raise ConfigError(f"the output path {raw!r} is a file, not a directory", where=where,
                          fix="name a directory (it is created), or move the file away")
    if target.is_dir() and not overwrite:
        foreign = sorted(p.name for p in target.iterdir() if not (ours(p) if callable(ours) else is_ours(p.name, ours)))
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise ConfigError(f"the output directory {raw!r} holds files prompttune did not write ({shown}); "
                              "it would be replaced whole", where=where,
                              fix="choose a new or empty directory, or pass --overwrite (config: overwrite: true) to replace it")
    return target


def is_ours(name: str, ours: Collection[str]) -> bool:
    """A name in ``ours``, or a hidden temporary file of one (``.name.…``, left by a write that was cut off)."""
    return name in ours or (name.startswith(".") and any(name[1:].startswith(f"{n}.") for n in ours))


@contextlib.contextmanager
def staged_directory(target: str | Path, *, ours: Collection[str] | Callable[[Path], bool], overwrite: bool = False,
                     where: str = "output") -> Iterator[Path]:
    """Yield an empty staging directory beside ``target``; when the block finishes, it replaces ``target`` whole.
    If the block raises (or the process dies), ``target`` is left exactly as it was."""
    recover_directory(target)
    target = check_output_directory(target, ours=ours, overwrite=overwrite, where=where)
    target.parent.mkdir(parents=True, exist_ok=True)
    stage = target.parent / f".{target.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    stage.mkdir()
    try:
        yield stage
        replace_directory(stage, target)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
