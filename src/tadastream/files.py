"""Files written whole or not at all: a temporary file beside the target, renamed onto it.

Audio, voices, subtitles and pictures are all written this way, so an interrupted or failed write
never leaves a half file where a reader (a player, a voice store, a caption loader) would find it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

__all__ = ["replacing", "temporary_beside", "write_atomic"]


def temporary_beside(target: str | os.PathLike[str]) -> Path:
    """A fresh hidden temporary name in ``target``'s folder (renaming it onto ``target`` is atomic)."""
    target = Path(target)
    return target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")


@contextlib.contextmanager
def replacing(target: str | os.PathLike[str]) -> Iterator[Path]:
    """A fresh temporary path beside ``target``: renamed onto it when the block succeeds, removed otherwise."""
    temp = temporary_beside(target)
    try:
        yield temp
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)


def write_atomic(target: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``target`` (synced to disk first); never clobbers a file of the temporary name."""
    with replacing(target) as temp:
        # O_EXCL: never write into someone else's file; mode 0o666 lets the umask decide permissions.
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    return Path(target)
