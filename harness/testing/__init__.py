"""Tools for authors of heads: ``check_classifier(factory)`` runs the classifier contract on small
random inputs and names each clause that fails (``segheads check-head MODULE:NAME`` prints it)."""

from harness.testing.classifier import (
    CHECK_NAMES,
    FAILED,
    NOT_APPLICABLE,
    PASSED,
    CheckOutcome,
    HeadCheck,
    check_classifier,
)

__all__ = ["CHECK_NAMES", "FAILED", "NOT_APPLICABLE", "PASSED", "CheckOutcome", "HeadCheck", "check_classifier"]
