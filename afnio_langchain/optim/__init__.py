"""Optimizers: rewrite trainable Variables from their textual gradients.

``TGD`` is textual gradient descent; ``Optimizer`` is the base class (parameter
groups, per-parameter state, ``zero_grad``, ``step(closure)``, JSON state dicts).
Every step leaves a :class:`StepReport` in ``optimizer.last_step``.
"""

from afnio_langchain.optim._optimizer import (
    REJECTED,
    SKIPPED,
    UPDATED,
    Optimizer,
    OptimizerStepError,
    ParamStep,
    StepReport,
)
from afnio_langchain.optim._tgd import TGD

__all__ = [
    "REJECTED",
    "SKIPPED",
    "TGD",
    "UPDATED",
    "Optimizer",
    "OptimizerStepError",
    "ParamStep",
    "StepReport",
]
