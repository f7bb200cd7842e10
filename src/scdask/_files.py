"""Files that appear complete or not at all: every writer in scdask goes through here."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

from scdask._errors import InputError

__all__ = ["INCOMPLETE", "MANIFEST", "atomic_target", "refuse_to_replace"]

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


def _relation(output: Path, source: Path, *, replaces_folder: bool) -> str | None:
    """How writing ``output`` would reach ``source``, in words, or ``None`` if it would not."""
    if not source.exists():
        return None
    out_real, src_real = output.resolve(), source.resolve()
    if output.exists() and os.path.samefile(output, source):
        if output.is_symlink():
            return "is a symbolic link to"
        if output.absolute() != source.absolute() and out_real != src_real:
            return "is a hard link to"
        return "is"
    if out_real != src_real and out_real.is_relative_to(src_real):
        return "lies inside"
    if replaces_folder and src_real.is_relative_to(out_real):
        return "is a folder holding"
    return None


def refuse_to_replace(
    outputs: Iterable[str | os.PathLike[str]],
    inputs: Iterable[str | os.PathLike[str]],
    *,
    replaces_folder: bool = True,
) -> None:
    """Raise :class:`scdask.InputError` if writing any of ``outputs`` would change an input.

    An output may not be an input, a hard or symbolic link to one, a path inside an input
    (a zarr store), or, when ``replaces_folder`` (a writer replaces the whole path), a
    folder that holds an input. Paths are compared after following links, so a link to a
    folder does not hide anything. Called before any work starts.

    Examples
    --------
    >>> import os, tempfile
    >>> d = tempfile.mkdtemp()
    >>> src = os.path.join(d, "in.h5ad")
    >>> _ = open(src, "w").write("counts")
    >>> os.symlink(src, os.path.join(d, "link.h5ad"))
    >>> refuse_to_replace([os.path.join(d, "link.h5ad")], [src])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    scdask._errors.InputError: refusing to write '...link.h5ad': it is a symbolic link to ...
    >>> refuse_to_replace([os.path.join(d, "out.h5ad")], [src])  # a new file is fine
    """
    for output in outputs:
        out = Path(output).expanduser()
        for source in inputs:
            src = Path(source).expanduser()
            relation = _relation(out, src, replaces_folder=replaces_folder)
            if relation is not None:
                raise InputError(
                    f"refusing to write {str(output)!r}: it {relation} the input "
                    f"{str(source)!r}, which would be changed or replaced; write to a new path"
                )
