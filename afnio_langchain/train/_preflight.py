"""What ``fit`` checks before any model call, where the chain shows it: that feedback
will have a model to write it.

Without one, it would surface only after paid calls (the baseline's evaluations, then
``max_failed_steps`` steps whose backward passes all fail). Where the chain does not
show it (a function that builds its own steps), nothing is refused here and the run's
own errors still apply.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from afnio_langchain.autodiff import Variable, get_backward_model
from afnio_langchain.train._loading import llm_steps

NO_BACKWARD_MODEL = (
    "no model is set to write the feedback (the textual gradients) that trains the "
    "prompts, so every step's backward pass would fail after the forward calls were "
    "paid for: pass backward_model=chat_model to fit or Trainer, call "
    "afnio_langchain.set_backward_model(chat_model) (or run fit inside "
    "afnio_langchain.use_backward_model(chat_model)), or give the chain's steps one "
    "(make_trainable(chain, backward_model=...), ChatCompletionRunnable(..., "
    "backward_model=...)); on the command line, --backward-model or --model"
)


def backward_model_problem(chain: Any, params: Sequence[Variable], backward_model: Any) -> str | None:
    """Why no backward pass of ``chain`` can find a model, or None when one can (or the
    chain does not show it).

    Refused only when no model is in force (``backward_model``, a scoped or process
    default) and every trained parameter sits in an LLM step the chain's graph shows,
    none of which has a backward model of its own.

    Example:
        >>> from afnio_langchain import ChatCompletionRunnable, Variable
        >>> from afnio_langchain.testing import ScriptedChatModel
        >>> from afnio_langchain.train._preflight import backward_model_problem
        >>> model = ScriptedChatModel(forward="4")
        >>> system = Variable("Answer.", role="system prompt", requires_grad=True)
        >>> step = ChatCompletionRunnable(model=model, messages=[("system", system), ("user", "{q}")])
        >>> backward_model_problem(step, [system], None)[:40]
        'no model is set to write the feedback (t'
        >>> backward_model_problem(step, [system], model) is None
        True
    """
    if backward_model is not None or get_backward_model() is not None:
        return None
    steps = llm_steps(chain) or []
    trained = {id(p) for p in params}
    holders = [s for s in steps if trained & {id(p) for p in s.parameters()}]
    if not holders or any(getattr(s, "backward_model", None) is not None for s in holders):
        return None
    held = {id(p) for s in holders for p in s.parameters()}
    if not trained <= held:  # some parameter is trained through something we cannot see
        return None
    return NO_BACKWARD_MODEL
