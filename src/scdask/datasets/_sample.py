"""The real 559-cell sample that ships with scdask."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import anndata

__all__ = ["sample", "sample_path"]

_SAMPLE_FILE = "celltypist_sample_counts.h5ad"


def sample_path() -> Path:
    """Return the path of the bundled real sample ``.h5ad`` file.

    The file holds 559 human immune cells × 32,786 genes of real 10x UMI counts
    (CSR, float32 integers) from the celltypist 1.7.1 package (MIT licence), with
    coarse marker-gene labels in ``obs['cell_type']``. See ``datasets/data/PROVENANCE.md``.

    Returns
    -------
    pathlib.Path
        Absolute path of the installed file, suitable for lazy readers that open
        the file by path (for example inside Dask tasks).

    Examples
    --------
    >>> from scdask.datasets import sample_path
    >>> sample_path().name
    'celltypist_sample_counts.h5ad'
    >>> sample_path().is_file()
    True
    """
    return Path(str(files("scdask.datasets").joinpath("data", _SAMPLE_FILE)))


def sample() -> anndata.AnnData:
    """Load the bundled real sample into memory.

    Returns
    -------
    anndata.AnnData
        559 cells × 32,786 genes; ``X`` is a ``scipy.sparse.csr_matrix`` of float32
        integer UMI counts, ``var_names`` are gene symbols and ``obs['cell_type']``
        is one of ``B``, ``Myeloid``, ``NK``, ``Other``, ``T``.

    Examples
    --------
    >>> from scdask.datasets import sample
    >>> adata = sample()
    >>> adata.shape
    (559, 32786)
    >>> sorted(adata.obs["cell_type"].unique())
    ['B', 'Myeloid', 'NK', 'Other', 'T']
    """
    return anndata.read_h5ad(sample_path())
