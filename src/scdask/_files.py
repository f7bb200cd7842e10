"""Files that appear complete or not at all: every writer in scdask goes through here."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

__all__ = ["INCOMPLETE", "MANIFEST", "atomic_target"]

#: Written first into an output folder and removed last: its files are not a finished result.
INCOMPLETE = "INCOMPLETE"
#: Written last into an output folder: the finished files it holds, with sizes.
MANIFEST = "manifest.json"


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _sibling(path: Path, tag: str) -> Path:
    return path.with_name(f".{path.name}.scdask-{tag}-{uuid.uuid4().hex[:12]}")


@contextlib.contextmanager
def atomic_target(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; move it onto ``path`` only if the block succeeds.

    On any exception (``KeyboardInterrupt`` included) the temporary is removed and
    ``path`` is left as it was. A directory (zarr store) replaces ``path`` by two
    renames: the old store is moved aside, the new one moved in, the old one removed.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> out = Path(tempfile.mkdtemp()) / "a.txt"
    >>> from scdask._files import atomic_target
    >>> with atomic_target(out) as tmp:
    ...     _ = tmp.write_text("done")
    >>> out.read_text()
    'done'
    """
    path = Path(path)
    tmp = _sibling(path, "tmp")
    try:
        yield tmp
        if tmp.is_file() and not path.is_dir():
            os.replace(tmp, path)
            return
        old = _sibling(path, "old") if path.exists() or path.is_symlink() else None
        if old is not None:
            os.replace(path, old)
        try:
            os.replace(tmp, path)
        except BaseException:
            if old is not None:
                os.replace(old, path)
            raise
        if old is not None:
            _remove(old)
    except BaseException:
        _remove(tmp)
        raise
