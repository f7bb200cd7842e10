"""anndata's writers for our block types: the one place that touches anndata's private API.

anndata picks a writer by the exact type of what it writes (``type(x)``, or
``(DaskArray, type(x._meta))`` for Dask arrays), so a subclass of ``csr_matrix`` is not
found and a Dask array of our blocks falls through to the dense writer ("setting an array
element with a sequence"). :func:`register_anndata` gives our blocks the writers anndata
registered for ``csr_matrix``/``csc_matrix`` (in memory, and as the chunks of a Dask array
or of an anndata view of one): they only read ``data``, ``indices``, ``indptr``, ``shape``
and ``format``, which our blocks share with every scipy CSR/CSC. anndata has no public way
to do this; ``tests/ops/test_interop.py`` fails loudly if the registry changes shape.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import warnings

import scipy.sparse as sp

from scdask._ops._sparse import CSCBlock, CSRBlock, as_block

__all__ = ["register_anndata", "register_scanpy"]

_OURS = {sp.csr_matrix: CSRBlock, sp.csc_matrix: CSCBlock}


def _ours(src):
    """The key for our block of an anndata write key naming a scipy matrix, else None."""
    if isinstance(src, type):
        return _OURS.get(src)
    if isinstance(src, tuple) and len(src) >= 2 and src[1] in _OURS:
        return (src[0], _OURS[src[1]], *src[2:])
    return None


def register_anndata() -> bool:
    """Register the block types with anndata's writers (idempotent).

    Returns
    -------
    bool
        Whether anndata's registry had the expected shape (otherwise a warning says that
        anndata cannot write our blocks).
    """
    try:
        from anndata._io.specs.registry import _REGISTRY

        writers, specs = _REGISTRY.write, _REGISTRY.write_specs
        for (dest, src, modifiers), func in list(writers.items()):
            ours = _ours(src)
            if ours is not None:
                writers.setdefault((dest, ours, modifiers), func)
        for src, spec in list(specs.items()):
            ours = _ours(src)
            if ours is not None:
                specs.setdefault(ours, spec)
    except (ImportError, AttributeError, TypeError, ValueError) as err:  # pragma: no cover
        warnings.warn(
            f"scdask could not register its sparse blocks with anndata's writers ({err}); "
            "write with scdask.write_h5ad / write_zarr instead of AnnData.write_h5ad",
            RuntimeWarning,
            stacklevel=2,
        )
        return False
    return True


def register_scanpy() -> bool:
    """Keep our block type through scanpy < 1.12's row and column scaling (idempotent).

    scanpy 1.11's ``normalize_total`` scales each chunk with
    ``scanpy._utils.axis_mul_or_truediv``, which rebuilds a CSR chunk as a plain
    ``csr_matrix``: the Dask array then has our meta over scipy chunks, and later steps
    (``scale``, then ``pca``) fail on them. scanpy 1.12 works without this. Registered here
    for our blocks: scanpy's own function, its result wrapped back as a block. scanpy is not
    imported for it (importing scdask stays light): the registration is made now if scanpy
    is loaded, else when it is (an import hook for ``scanpy._utils`` alone).
    ``tests/ops/test_interop.py`` checks it.

    Returns
    -------
    bool
        Whether the registration was made or is waiting for scanpy's import.
    """
    from importlib.metadata import PackageNotFoundError, version

    try:
        from packaging.version import Version

        if Version(version("scanpy")) >= Version("1.12"):
            return False
    except (PackageNotFoundError, ImportError):
        return False
    module = sys.modules.get("scanpy._utils")
    if module is not None:
        _keep_blocks(module.axis_mul_or_truediv)
    elif not any(isinstance(f, _AfterScanpyUtils) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterScanpyUtils())
    return True


def _keep_blocks(axis_mul_or_truediv) -> None:
    scale = axis_mul_or_truediv.dispatch(sp.csr_matrix)

    def keep_block(x, *args, **kwargs):
        return as_block(scale(x, *args, **kwargs))

    for cls in (CSRBlock, CSCBlock):
        axis_mul_or_truediv.register(cls, keep_block)


class _AfterScanpyUtils(importlib.abc.MetaPathFinder):
    """Runs :func:`_keep_blocks` right after ``scanpy._utils`` is executed, then leaves."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "scanpy._utils":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is None or spec.loader is None:
            return spec
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            _keep_blocks(module.axis_mul_or_truediv)

        spec.loader.exec_module = exec_module
        return spec
