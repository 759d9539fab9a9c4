"""Atomic file writes: a reader sees the previous file or the new one, never a mix.

Standard library only, so the embedded-broker script can use it before any virtualenv.

Example:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "state.json"
    >>> write_atomic(path, lambda out: out.write(b'{"ok": true}'))
    >>> path.read_bytes()
    b'{"ok": true}'

"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO


def write_atomic(path: Path, write: Callable[[IO[bytes]], object], mode: int = 0o644) -> None:
    """Write ``path`` through a temporary file: ``write(handle)``, fsync, then rename.

    The temporary file lives in the same directory (so the rename is atomic), is removed
    when anything fails (the previous file stays as it was), and the directory is fsynced
    after the rename so the new name survives a crash.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb", buffering=1 << 20) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)  # mkstemp's 0600 would hide the file from other users
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be fsynced
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
