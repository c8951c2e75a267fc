"""Regression checks: finished cells against reference numbers (``jobs/reference/*.yaml``).

- ``reference``: ``load_reference`` (cases of ``select`` + ``[metric, value, tolerance]`` or bound
  expectations, ``NAME / CLASSIFIER`` ratios and ``NAME - CLASSIFIER`` differences).
- ``compare``: ``check`` (one ``CheckRow`` per expectation, ``failure`` None where it holds) and
  ``format_rows``, the diff ``segheads check`` prints before it exits 1 on a regression.
"""

from harness.check.compare import CheckRow, check, format_rows
from harness.check.reference import Expectation, Reference, ReferenceCase, load_reference

__all__ = ["CheckRow", "Expectation", "Reference", "ReferenceCase", "check", "format_rows", "load_reference"]
