"""What a block's stored values say about it: non-finite, negative, not whole numbers."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

__all__ = ["stored_values", "value_problems"]


def stored_values(block) -> np.ndarray:
    """The values a block stores, as one 1-D array (no copy where it can be avoided).

    Sparse blocks give their stored entries (implicit zeros are left out: a zero is a
    finite, non-negative whole number), dense blocks every value.

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp
    >>> stored_values(sp.csr_array(np.array([[0, 2.5], [1, 0]]))).tolist()
    [2.5, 1.0]
    """
    if sp.issparse(block):
        return np.asarray(block.data)
    if not isinstance(block, np.ndarray) and hasattr(block, "get"):  # cupy
        block = block.get()
    return np.asarray(block).ravel()


def value_problems(block) -> np.ndarray:
    """Counts of the block's values that are NaN or infinite, negative, and not whole numbers.

    The three counts do not overlap: a NaN is counted as non-finite only, a negative
    fraction as negative only.

    Returns
    -------
    numpy.ndarray
        ``int64[3]``: non-finite, negative, fractional.

    Examples
    --------
    >>> import numpy as np
    >>> value_problems(np.array([[np.nan, -1.0], [0.5, 3.0]])).tolist()
    [1, 1, 1]
    """
    values = stored_values(block)
    if values.dtype.kind in "ub":
        return np.zeros(3, dtype=np.int64)
    if values.dtype.kind == "i":
        return np.array([0, np.count_nonzero(values < 0), 0], dtype=np.int64)
    finite = np.isfinite(values)
    negative = finite & (values < 0)
    fractional = finite & ~negative & (values != np.floor(values))
    return np.array(
        [
            values.size - np.count_nonzero(finite),
            np.count_nonzero(negative),
            np.count_nonzero(fractional),
        ],
        dtype=np.int64,
    )
