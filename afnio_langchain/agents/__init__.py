"""Agents: one home for tool-calling agents and their training.

- :class:`AgentRunnable`: the package's own tool-calling agent as a differentiable
  Runnable (its system prompt and tool descriptions are trainable Variables).
- :class:`TrainablePromptMiddleware`: makes an agent built with LangChain's
  ``create_agent`` trainable through one middleware (needs the ``agents`` extra).
- :class:`TrainablePrompt`, :func:`create_trainable_react_agent`: the same for
  LangGraph agents with a callable prompt (needs the ``agents`` extra).
- :class:`TrainableAgent`: wraps any such agent so its runs become graph nodes.
- Trajectories (:class:`Trajectory`, :func:`trajectory_of`) and the metrics over them
  (:class:`ToolCallMatch`, :class:`StepCount`, :class:`FinalAnswerMatch`,
  :class:`TrajectoryJudge`, :class:`TrajectoryMetrics`).

Importing this package needs only langchain-core; the names that need ``langchain``
or ``langgraph`` import them when first used, and say how to install them if missing.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from afnio_langchain.agents._metrics import (
    FinalAnswerMatch,
    StepCount,
    ToolCallMatch,
    TrajectoryJudge,
    TrajectoryMetrics,
    as_trajectory,
)
from afnio_langchain.agents._recording import (
    ModelCallRecord,
    RunRecorder,
    TrainablePromptSource,
    recording,
)
from afnio_langchain.agents._runnable import AgentRunnable, AgentStepLimitError, trajectory_of
from afnio_langchain.agents._trainable_agent import TrainableAgent
from afnio_langchain.agents._trajectory import AgentStep, ToolCallRecord, Trajectory

if TYPE_CHECKING:
    from afnio_langchain.agents._create_agent import TrainablePromptMiddleware
    from afnio_langchain.agents._langgraph import TrainablePrompt, create_trainable_react_agent

_LAZY = {
    "TrainablePromptMiddleware": "afnio_langchain.agents._create_agent",
    "TrainablePrompt": "afnio_langchain.agents._langgraph",
    "create_trainable_react_agent": "afnio_langchain.agents._langgraph",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'afnio_langchain.agents' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = [
    "AgentRunnable",
    "AgentStep",
    "AgentStepLimitError",
    "FinalAnswerMatch",
    "ModelCallRecord",
    "RunRecorder",
    "StepCount",
    "ToolCallMatch",
    "ToolCallRecord",
    "TrainableAgent",
    "TrainablePrompt",
    "TrainablePromptMiddleware",
    "TrainablePromptSource",
    "Trajectory",
    "TrajectoryJudge",
    "TrajectoryMetrics",
    "as_trajectory",
    "create_trainable_react_agent",
    "recording",
    "trajectory_of",
]
