"""Tiny 10x Genomics files (Cell Ranger .h5 and mtx folders, Space Ranger folders) for examples.

Written the way Cell Ranger and Space Ranger lay them out, from an in-memory AnnData of
counts, so that the readers in :mod:`scdask.io` can be shown and tested on files nobody has
to download. Not a general 10x writer: everything is held in memory.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Literal

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

__all__ = ["tiny_counts", "write_10x_h5", "write_10x_mtx", "write_visium"]


def tiny_counts(n_cells: int = 6, n_genes: int = 5, *, seed: int = 0) -> ad.AnnData:
    """A small AnnData of integer counts with the var columns a 10x file carries.

    ``var`` has ``gene_ids`` and ``feature_types`` (the last feature is an antibody);
    ``obs_names`` look like barcodes.

    Examples
    --------
    >>> a = tiny_counts(4, 3)
    >>> a.shape, list(a.var["feature_types"])
    ((4, 3), ['Gene Expression', 'Gene Expression', 'Antibody Capture'])
    """
    rng = np.random.default_rng(seed)
    x = sp.random(n_cells, n_genes, density=0.5, format="csr", random_state=rng, dtype=np.float64)
    x.data = np.ceil(x.data * 9).astype(np.float32)
    var = pd.DataFrame(
        {
            "gene_ids": [f"ENSG{i:011d}" for i in range(n_genes)],
            "feature_types": ["Gene Expression"] * (n_genes - 1) + ["Antibody Capture"],
        },
        index=[f"GENE{i}" for i in range(n_genes)],
    )
    bases = np.array(list("ACGT"))
    obs = pd.DataFrame(
        index=["".join(rng.choice(bases, 16)) + "-1" for _ in range(n_cells)],
    )
    return ad.AnnData(x.astype(np.float32), obs=obs, var=var)


def _features(adata: ad.AnnData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = adata.n_vars
    ids = adata.var["gene_ids"] if "gene_ids" in adata.var else [f"ENSG{i:011d}" for i in range(n)]
    types = adata.var.get("feature_types", pd.Series(["Gene Expression"] * n))
    return np.asarray(ids, str), np.asarray(adata.var_names, str), np.asarray(types, str)


def _counts_csc(adata: ad.AnnData) -> sp.csc_array:
    """Cells x genes counts as genes x cells CSC (= cells x genes CSR), int32 values."""
    x = sp.csr_array(adata.X)
    x.sort_indices()
    return sp.csc_array((x.data.astype(np.int32), x.indices, x.indptr), shape=x.shape[::-1])


def write_10x_h5(
    adata: ad.AnnData,
    path: str | os.PathLike,
    *,
    genome: str = "GRCh38",
    library_id: str = "sample",
) -> Path:
    """Write counts as a Cell Ranger v3+ ``filtered_feature_bc_matrix.h5``.

    Group ``matrix`` holds the features x barcodes matrix in CSC (``data`` int32,
    ``indices``/``indptr`` int64, ``shape`` int32), ``barcodes`` and ``features/{id, name,
    feature_type, genome, _all_tag_keys}`` as fixed-length byte strings, gzip-compressed;
    the root carries ``library_ids``, ``chemistry_description``, ``software_version``,
    ``filetype`` and ``version`` as Cell Ranger writes them.

    Examples
    --------
    >>> import tempfile, h5py
    >>> p = write_10x_h5(tiny_counts(), tempfile.mkdtemp() + "/f.h5")
    >>> sorted(h5py.File(p)["matrix"])
    ['barcodes', 'data', 'features', 'indices', 'indptr', 'shape']
    """
    path = Path(path)
    m = _counts_csc(adata)
    ids, names, types = _features(adata)
    kw = {"compression": "gzip", "shuffle": True}
    with h5py.File(path, "w") as f:
        g = f.create_group("matrix")
        g.create_dataset("barcodes", data=np.asarray(adata.obs_names, "S"), **kw)
        g.create_dataset("data", data=m.data, **kw)
        g.create_dataset("indices", data=m.indices.astype(np.int64), **kw)
        g.create_dataset("indptr", data=m.indptr.astype(np.int64), **kw)
        g.create_dataset("shape", data=np.array(m.shape, np.int32), **kw)
        feats = g.create_group("features")
        feats.create_dataset("_all_tag_keys", data=np.array([b"genome"]))
        feats.create_dataset("feature_type", data=types.astype("S"), **kw)
        feats.create_dataset("genome", data=np.full(len(ids), genome).astype("S"), **kw)
        feats.create_dataset("id", data=ids.astype("S"), **kw)
        feats.create_dataset("name", data=names.astype("S"), **kw)
        f.attrs["chemistry_description"] = np.bytes_("Visium V1 Slide")
        f.attrs["filetype"] = np.bytes_("matrix")
        f.attrs["library_ids"] = np.array([library_id.encode()])
        f.attrs["original_gem_groups"] = np.array([1])
        f.attrs["software_version"] = np.bytes_("spaceranger-2.1.0")
        f.attrs["version"] = 2
    return path


def _mtx_lines(adata: ad.AnnData, order: Literal["sorted", "shuffled"], seed: int) -> list[str]:
    m = sp.coo_array(_counts_csc(adata))  # genes x cells, entries sorted by cell then gene
    rows, cols, vals = m.row, m.col, m.data
    if order == "shuffled":
        perm = np.random.default_rng(seed).permutation(len(vals))
        rows, cols, vals = rows[perm], cols[perm], vals[perm]
    head = [
        "%%MatrixMarket matrix coordinate integer general",
        '%metadata_json: {"software_version": "cellranger-7.1.0", "format_version": 2}',
        f"{m.shape[0]} {m.shape[1]} {len(vals)}",
    ]
    return head + [f"{r + 1} {c + 1} {v}" for r, c, v in zip(rows, cols, vals, strict=True)]


def write_10x_mtx(
    adata: ad.AnnData,
    folder: str | os.PathLike,
    *,
    compress: bool = True,
    order: Literal["sorted", "shuffled"] = "sorted",
    seed: int = 0,
) -> Path:
    """Write counts as a Cell Ranger v3+ ``filtered_feature_bc_matrix/`` folder.

    ``matrix.mtx.gz`` (genes x cells, coordinate integer, entries sorted by cell as Cell
    Ranger writes them, or shuffled), ``features.tsv.gz`` (id, name, type) and
    ``barcodes.tsv.gz``; plain names without ``.gz`` when ``compress`` is false.

    Examples
    --------
    >>> import tempfile
    >>> d = write_10x_mtx(tiny_counts(), tempfile.mkdtemp() + "/mtx")
    >>> sorted(p.name for p in d.iterdir())
    ['barcodes.tsv.gz', 'features.tsv.gz', 'matrix.mtx.gz']
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ids, names, types = _features(adata)
    texts = {
        "matrix.mtx": "\n".join(_mtx_lines(adata, order, seed)) + "\n",
        "features.tsv": "".join(
            f"{i}\t{n}\t{t}\n" for i, n, t in zip(ids, names, types, strict=True)
        ),
        "barcodes.tsv": "".join(f"{b}\n" for b in adata.obs_names),
    }
    for name, text in texts.items():
        if compress:
            with gzip.open(folder / f"{name}.gz", "wt") as f:
                f.write(text)
        else:
            (folder / name).write_text(text)
    return folder


def write_visium(
    adata: ad.AnnData,
    folder: str | os.PathLike,
    *,
    positions: Literal["csv", "list"] = "csv",
    counts: Literal["h5", "mtx"] = "h5",
    images: bool = True,
    n_extra_spots: int = 3,
    library_id: str = "sample",
    seed: int = 0,
) -> Path:
    """Write counts as a Space Ranger output folder.

    The filtered matrix (``filtered_feature_bc_matrix.h5``, or the mtx folder when
    ``counts="mtx"``), ``spatial/scalefactors_json.json``, hires and lowres PNGs, and the
    positions of every spot: ``spatial/tissue_positions.csv`` with a header (Space Ranger
    >= 2.0) or the header-less ``spatial/tissue_positions_list.csv`` (``positions="list"``).
    ``obs["in_tissue"]`` of ``adata`` is used when present (else every third spot is out
    of tissue); ``n_extra_spots`` spots that are not in the matrix are added to the
    positions, as the positions file covers the whole slide.

    Examples
    --------
    >>> import tempfile
    >>> d = write_visium(tiny_counts(), tempfile.mkdtemp() + "/visium")
    >>> sorted(p.name for p in (d / "spatial").iterdir())  # doctest: +NORMALIZE_WHITESPACE
    ['scalefactors_json.json', 'tissue_hires_image.png', 'tissue_lowres_image.png',
     'tissue_positions.csv']
    """
    folder = Path(folder)
    spatial = folder / "spatial"
    spatial.mkdir(parents=True, exist_ok=True)
    if counts == "h5":
        write_10x_h5(adata, folder / "filtered_feature_bc_matrix.h5", library_id=library_id)
    else:
        write_10x_mtx(adata, folder / "filtered_feature_bc_matrix")
    rng = np.random.default_rng(seed)
    n = adata.n_obs + n_extra_spots
    barcodes = [*adata.obs_names, *(f"EXTRA{i:011d}-1" for i in range(n_extra_spots))]
    if "in_tissue" in adata.obs:
        in_tissue = [*np.asarray(adata.obs["in_tissue"], int), *[0] * n_extra_spots]
    else:
        in_tissue = [int(i % 3 != 2) for i in range(n)]
    table = pd.DataFrame(
        {
            "barcode": barcodes,
            "in_tissue": in_tissue,
            "array_row": rng.integers(0, 78, n),
            "array_col": rng.integers(0, 128, n),
            "pxl_row_in_fullres": rng.integers(1000, 9000, n),
            "pxl_col_in_fullres": rng.integers(1000, 9000, n),
        }
    )
    if positions == "csv":
        table.to_csv(spatial / "tissue_positions.csv", index=False)
    else:
        table.to_csv(spatial / "tissue_positions_list.csv", index=False, header=False)
    scalefactors = {
        "spot_diameter_fullres": 89.4,
        "tissue_hires_scalef": 0.17,
        "fiducial_diameter_fullres": 144.4,
        "tissue_lowres_scalef": 0.051,
    }
    (spatial / "scalefactors_json.json").write_text(json.dumps(scalefactors))
    if images:
        import matplotlib.image

        for name, size in (("hires", 20), ("lowres", 8)):
            img = rng.random((size, size, 3))
            matplotlib.image.imsave(spatial / f"tissue_{name}_image.png", img)
    return folder
