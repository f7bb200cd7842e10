"""The one exception type for bad input: what is wrong, and how to fix it, in one line."""

from __future__ import annotations

from scdask._compat import named_layers

__all__ = ["InputError"]


class InputError(ValueError):
    """Bad input: a value, file, column, option or configuration scdask cannot use as given.

    Its message names the problem and the fix in one line. It is a ``ValueError``, so code
    that catches ``ValueError`` keeps working. It is raised where the problem is seen: when a
    graph is built (a missing column, a wrong option) or inside the pass that reads the data
    (a NaN, a negative count), whichever scheduler runs that pass. The ``scdask`` command turns
    it into one line on stderr and exit code 2.

    Examples
    --------
    >>> import scdask
    >>> try:
    ...     scdask.activity.infer(scdask.datasets.sample(), level="tissue")
    ... except scdask.InputError as e:
    ...     print(e)
    level must be one of ('cell', 'pseudobulk', 'spot', 'bulk'), got 'tissue'
    """


def counts_fix(adata, *, layer: str | None = None, use_raw: bool | None = False) -> str:
    """How to point a counts-only step at the counts this AnnData holds, in a few words.

    ``layer``/``use_raw``: what the step read (a layer named like counts other than that
    one, or ``.raw`` when it was not read, is suggested).

    Examples
    --------
    >>> import anndata as ad, numpy as np
    >>> a = ad.AnnData(np.ones((2, 2)), layers={"counts": np.ones((2, 2))})
    >>> counts_fix(a)
    "point it at the counts: layer='counts'"
    """
    names = [k for k in named_layers(adata) if "count" in k.lower() and k != layer]
    if names:
        return f"point it at the counts: layer={names[0]!r}"
    if getattr(adata, "raw", None) is not None and not use_raw:
        return "point it at the counts: use_raw=True (if .raw holds counts)"
    return "pass the raw counts (the file before normalisation)"


def require_counts(problems, *, step: str, fix: str, matrix: str = "X") -> None:
    """Raise :class:`InputError` unless ``problems`` (from ``scdask._ops.value_problems``,
    summed over the blocks) says the matrix holds counts: finite, non-negative, whole.

    Examples
    --------
    >>> require_counts([0, 0, 3], step="recipe", fix="pass the raw counts")
    Traceback (most recent call last):
    ...
    scdask._errors.InputError: recipe needs counts, but X holds 3 values that are not whole ...
    """
    nonfinite, negative, fractional = (int(v) for v in problems)
    if nonfinite:
        raise InputError(
            f"{step} cannot use {matrix}: it holds {nonfinite:,} NaN or infinite values; "
            "replace them at the source or drop the cells that have them"
        )
    if negative:
        raise InputError(
            f"{step} needs counts, but {matrix} holds {negative:,} negative values "
            f"(scaled or corrected data?); {fix}"
        )
    if fractional:
        raise InputError(
            f"{step} needs counts, but {matrix} holds {fractional:,} values that are not whole "
            f"numbers (log-normalised data?); {fix}; corrected counts (e.g. ambient-removed) "
            "can be rounded first: adata.X = np.round(adata.X)"
        )
