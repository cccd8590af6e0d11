"""Verification of a compression: reconstruction-error reports and plots, and the behaviour check that runs the
base model with each original and compressed adapter.

- :mod:`soppu.verify.report`: per adapter / per module relative errors and their summaries (JSON).
- :mod:`soppu.verify.plot`: the per-layer error plot (PNG, matplotlib on the Agg canvas).
- :mod:`soppu.verify.behaviour`: KL of next-token distributions and greedy agreement, with pass/fail thresholds.
"""

from soppu.verify.behaviour import (
    AdapterBehaviour,
    BehaviourReport,
    BehaviourThresholds,
    ProbeBehaviour,
    check_behaviour,
    next_token_kl,
)
from soppu.verify.plot import module_position, plot_errors
from soppu.verify.report import error_report, write_report

__all__ = [
    "AdapterBehaviour",
    "BehaviourReport",
    "BehaviourThresholds",
    "ProbeBehaviour",
    "check_behaviour",
    "error_report",
    "module_position",
    "next_token_kl",
    "plot_errors",
    "write_report",
]
