"""The DSPy face of afnio-langchain (needs the ``dspy`` extra).

- :class:`TextualGradientDescent`: a DSPy optimizer (``Teleprompter``) that trains the
  instructions of every predictor of a DSPy program with textual gradients.
- :func:`as_dspy_lm`, :class:`ModelClientEngine`: run a DSPy program on a LangChain chat
  model (or any model client of this package); :func:`carry_scopes` carries the
  package's usage scopes and concurrency limit into DSPy's worker threads.

Importing this package does not import DSPy; using one of its names does, and raises an
ImportError naming ``pip install 'afnio-langchain[dspy]'`` when DSPy is missing.
(A ``dspy.LM`` is accepted as a model everywhere in the package with no wrapper: see
:mod:`afnio_langchain.models._dspy_adapter`.)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from afnio_langchain.dspy._compat import INSTALL_HINT, require_dspy

if TYPE_CHECKING:
    from afnio_langchain.dspy._adapter_replies import chat_adapter_reply
    from afnio_langchain.dspy._graph import PredictorCall, build_graph
    from afnio_langchain.dspy._lm import (
        AsyncModelClientEngine,
        ModelClientEngine,
        as_dspy_lm,
        carry_scopes,
    )
    from afnio_langchain.dspy._metric import MetricResult, call_metric
    from afnio_langchain.dspy._stats import CompileReport, StepRecord
    from afnio_langchain.dspy._teleprompter import TextualGradientDescent

_LAZY = {
    "AsyncModelClientEngine": "afnio_langchain.dspy._lm",
    "ModelClientEngine": "afnio_langchain.dspy._lm",
    "as_dspy_lm": "afnio_langchain.dspy._lm",
    "carry_scopes": "afnio_langchain.dspy._lm",
    "PredictorCall": "afnio_langchain.dspy._graph",
    "build_graph": "afnio_langchain.dspy._graph",
    "MetricResult": "afnio_langchain.dspy._metric",
    "call_metric": "afnio_langchain.dspy._metric",
    "CompileReport": "afnio_langchain.dspy._stats",
    "StepRecord": "afnio_langchain.dspy._stats",
    "TextualGradientDescent": "afnio_langchain.dspy._teleprompter",
    "chat_adapter_reply": "afnio_langchain.dspy._adapter_replies",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'afnio_langchain.dspy' has no attribute {name!r}")
    require_dspy(f"afnio_langchain.dspy.{name}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = [
    "INSTALL_HINT",
    "AsyncModelClientEngine",
    "CompileReport",
    "MetricResult",
    "ModelClientEngine",
    "PredictorCall",
    "StepRecord",
    "TextualGradientDescent",
    "as_dspy_lm",
    "build_graph",
    "call_metric",
    "carry_scopes",
    "chat_adapter_reply",
    "require_dspy",
]
