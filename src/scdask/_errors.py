"""The one exception type for bad input: what is wrong, and how to fix it, in one line."""

from __future__ import annotations

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
