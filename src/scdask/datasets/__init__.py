"""Bundled real data and a realistic generator for atlases of any size.

:func:`sample` loads the real 559-cell sample that ships with scdask, :func:`sample_path`
gives its file, and :func:`synthetic` writes a synthetic atlas of any size fitted on it.
"""

from __future__ import annotations

from scdask.datasets._sample import sample, sample_path
from scdask.datasets._synthetic import synthetic

__all__ = ["sample", "sample_path", "synthetic"]
