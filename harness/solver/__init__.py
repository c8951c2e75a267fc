"""The optimiser and its learning-rate schedule, shared by cell training and encoder pretraining.

- ``build``: ``param_groups`` (``train.param_groups``: the longest key a parameter's name contains
  gives its lr and decay multipliers; 1-d parameters undecayed by default), ``build_optimizer``
  (AdamW or SGD over those groups), ``lr_at`` and ``build_scheduler`` (poly decay with a linear
  warm-up: over the whole run, or MMSegmentation's LinearLR then PolyLR).
"""

from harness.solver.build import build_optimizer, build_scheduler, lr_at, param_groups

__all__ = ["build_optimizer", "build_scheduler", "lr_at", "param_groups"]
