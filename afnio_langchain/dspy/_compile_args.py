"""The arguments DSPy's instruction optimizers take in ``compile``, read for
``TextualGradientDescent``: honoured where this optimizer has the same thing, refused
with the reason where it has none.

- COPRO: ``compile(student, *, trainset, eval_kwargs=None)``: ``eval_kwargs`` are
  ``dspy.Evaluate`` options (:mod:`afnio_langchain.dspy._evaluation`).
- GEPA: ``compile(student, *, trainset, teacher=None, valset=None)``.
- MIPROv2: the above and ``num_trials`` (candidates validated: at most that many
  steps), ``seed``, ``provide_traceback``, ``max_bootstrapped_demos`` and
  ``max_labeled_demos`` (0 only: no demos are bootstrapped), ``minibatch`` (False
  only: every candidate is validated on the whole valset), the proposer switches
  that describe what TGD always does (``program_aware_proposer``,
  ``data_aware_proposer``: True) or never does (``tip_aware_proposer``,
  ``fewshot_aware_proposer``: False), and ``requires_permission_to_run`` (deprecated
  in MIPROv2; not True).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_NO_DEMOS = (
    "TextualGradientDescent learns instructions from feedback and bootstraps no demos; pass 0 "
    "(or optimize demos with dspy.BootstrapFewShot or dspy.MIPROv2)"
)
_FULL_VALIDATION = (
    "TextualGradientDescent validates every candidate on the whole valset (its gate compares "
    "whole-valset scores); MIPROv2's minibatch scoring has no counterpart here: pass "
    "minibatch=False or leave it out"
)
_ALWAYS = {
    "program_aware_proposer": (
        True,
        "the TGD proposals always see the program's own calls (the feedback flows back through them)",
    ),
    "data_aware_proposer": (True, "the TGD proposals always come from feedback on training examples"),
    "tip_aware_proposer": (False, "TGD proposals use no random tips"),
    "fewshot_aware_proposer": (False, "no demos are bootstrapped, so there are none to show"),
}


@dataclass(frozen=True)
class CompileOptions:
    """What the compile arguments change: the seed, the step limit, tracebacks."""

    seed: int | None = None
    max_steps: int | None = None
    provide_traceback: bool | None = None


def compile_options(kwargs: Mapping[str, Any]) -> CompileOptions:
    """Read DSPy's other ``compile`` arguments (module docstring).

    Raises:
        TypeError: An argument no DSPy instruction optimizer takes, or of the wrong type.
        ValueError: An argument this optimizer cannot honour (the message says why).
    """
    options: dict[str, Any] = {}
    for name, value in kwargs.items():
        if name == "seed":
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise TypeError(f"seed must be an int, got {type(value).__name__}")
            options["seed"] = value
        elif name == "num_trials":
            if value is not None:
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise ValueError(f"num_trials must be a positive int, got {value!r}")
                options["max_steps"] = value
        elif name == "provide_traceback":
            if value is not None and not isinstance(value, bool):
                raise TypeError(f"provide_traceback must be a bool, got {type(value).__name__}")
            options["provide_traceback"] = value
        elif name in ("max_bootstrapped_demos", "max_labeled_demos"):
            if value not in (None, 0):
                raise ValueError(f"{name}={value!r}: {_NO_DEMOS}")
        elif name == "minibatch":
            if value:
                raise ValueError(f"minibatch=True: {_FULL_VALIDATION}")
        elif name in ("minibatch_size", "minibatch_full_eval_steps"):
            raise ValueError(f"{name}: {_FULL_VALIDATION}")
        elif name == "view_data_batch_size":
            raise ValueError(
                "view_data_batch_size: MIPROv2's dataset summary has no counterpart; the TGD "
                "proposals see the feedback of the failing examples themselves"
            )
        elif name in _ALWAYS:
            always, why = _ALWAYS[name]
            if bool(value) is not always:
                raise ValueError(f"{name}={value!r} cannot be honoured: {why}")
        elif name == "requires_permission_to_run":
            if value:
                raise ValueError(
                    "requires_permission_to_run=True: there is no confirmation step (MIPROv2 "
                    "removed it too)"
                )
        else:
            raise TypeError(
                f"TextualGradientDescent.compile got an unknown argument {name!r}; it takes "
                "trainset, valset, teacher (None), eval_kwargs (dspy.Evaluate options) and "
                "MIPROv2's num_trials, seed, provide_traceback, max_bootstrapped_demos=0, "
                "max_labeled_demos=0, minibatch=False"
            )
    return CompileOptions(**options)


__all__ = ["CompileOptions", "compile_options"]
