"""Write a file so that it is never seen half-written, and a failed write leaves nothing behind."""

from __future__ import annotations

import os
from pathlib import Path


class WriteError(OSError):
    """A file could not be written (read-only folder, full disk, ...); the message names the file."""


def write_error(path: Path, err: OSError) -> WriteError:
    reason = err.strerror or str(err) or type(err).__name__
    return WriteError(f"{path}: cannot write ({reason}); check that the folder is writable and the disk has space")


def make_dirs(path: str | Path) -> Path:
    """``mkdir -p path``, failing with a :class:`WriteError` naming it."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise write_error(path, err) from None
    return path


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write ``data`` (text as UTF-8) to a temporary file beside ``path``, then move it into place.

    Readers see the old file or the new one, never a partial one. On any failure the temporary file
    is removed and a :class:`WriteError` naming ``path`` is raised.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    payload = data.encode() if isinstance(data, str) else bytes(data)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        try:
            view = memoryview(payload)
            while view:  # os.write may write less than asked
                view = view[os.write(fd, view):]
            os.fsync(fd)  # the data is on disk before the rename makes it visible
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as err:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass  # e.g. the folder is read-only: then the temporary file was never created
        raise write_error(path, err) from None
    except BaseException:  # Ctrl-C mid-write: no temporary file left behind either
        tmp.unlink(missing_ok=True)
        raise
