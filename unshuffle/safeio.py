"""Atomic file writes: a reader sees the old file or the complete new one, never a half-written file.

Each write goes to a temporary file in the destination's folder (same file system, so the final
``os.replace`` is atomic), is flushed and fsynced, then replaces the destination. On any error the temporary
file is removed and the previous file, if any, is left untouched.

    atomic_write_text("out/answer.txt", "1,2,3\\n")
    atomic_write_bytes("out/blob.bin", b"...")
    with atomic_path("out/plot.png") as tmp:   # for files written by other libraries
        fig.savefig(tmp)                       # tmp keeps the ".png" suffix, so format inference works
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator, Union

PathLike = Union[str, "os.PathLike[str]"]

__all__ = ["atomic_write_text", "atomic_write_bytes", "atomic_path", "atomic_open"]


def _default_mode(dest: Path) -> int:
    """Permissions for the new file: the old file's, else what open() would give (0o666 minus umask)."""
    try:
        return dest.stat().st_mode & 0o7777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not possible on every platform/file system, hence best effort.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _mkstemp(dest: Path):
    # Hidden name in the same folder; keep the suffix so libraries that infer a format from it still work.
    return tempfile.mkstemp(prefix=f".{dest.stem}.", suffix=f".tmp{dest.suffix}", dir=dest.parent)


def _unlink_quietly(p: Path) -> None:
    try:
        p.unlink()
    except FileNotFoundError:
        pass


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; when the block ends normally, fsync it and move it onto
    ``path`` atomically. If the block raises (or never creates the file), the temporary file is removed,
    ``path`` is left as it was, and the exception propagates.

    Use for files written by other libraries (``fig.savefig(tmp)``, ``np.save(tmp, ...)``). The temporary
    name keeps ``path``'s suffix. The file must be closed by the time the block ends."""
    dest = Path(path)
    fd, tmp_name = _mkstemp(dest)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"{tmp}: nothing was written to the temporary file for {dest}")
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _default_mode(dest))
        os.replace(tmp, dest)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    _fsync_dir(dest.parent)


@contextlib.contextmanager
def atomic_open(path: PathLike, mode: str = "w", **kwargs) -> Iterator[IO]:
    """Open a temporary file for writing (``mode`` 'w', 'wb', 'wt' or 'x'/'xb' alike) and atomically put
    it in place of ``path`` when the block ends normally; on an exception nothing changes at ``path``.
    ``kwargs`` go to ``open`` (encoding, newline, ...)."""
    if not any(c in mode for c in "wx") or "+" in mode or "a" in mode:
        raise ValueError(f"atomic_open supports write modes only, not {mode!r}")
    mode = mode.replace("x", "w")
    with atomic_path(path) as tmp:
        with open(tmp, mode, **kwargs) as f:
            yield f


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, os.replace)."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: PathLike, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically (temporary file, fsync, os.replace). Newlines are written as
    given (no platform translation)."""
    with atomic_open(path, "w", encoding=encoding, newline="") as f:
        f.write(text)
