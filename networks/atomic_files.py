"""Atomic file writes: a file a user keeps is never half-written.

The bytes land in a temporary file *in the same directory* (so the final ``os.replace`` is a
rename on one filesystem, atomic on POSIX and Windows), are flushed and fsync'ed, then renamed
over the target. A crash or Ctrl-C leaves either the old file or the new one, never a truncated
mix. Standard library only, so repository tools (tools/, bench/) use it too.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path``.

    For writers that insist on a file name (``matplotlib.savefig``, ``PIL.Image.save``).
    ``suffix`` defaults to the target's so format-by-extension writers still work.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # The temp name keeps the target's extension last: writers that pick the format from the
    # extension (savefig, Image.save) then still do the right thing.
    fd, tmp_name = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.stem}.tmp-", suffix=target.suffix if suffix is None else suffix
    )
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a saved result should look like any file
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _fsync_dir(target.parent)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not possible on every platform (e.g. Windows).
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str | os.PathLike, writer: Callable[[io.BufferedWriter], None]) -> Path:
    """Call ``writer(file_object)`` on a temporary file, then atomically move it to ``path``."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        writer(fh)
        fh.flush()
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda fh: fh.write(data))
