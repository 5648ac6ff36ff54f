"""A trainable callable prompt for LangGraph agents.

LangGraph's prebuilt agent (``create_react_agent(model, tools, prompt=callable)``) calls
its prompt with the graph state before every model call and sends what it returns to
the model. :class:`TrainablePrompt` is such a callable: it puts the system prompt
Variable's current text in front of the state's messages. It works in any graph that
builds model input from state the same way.

Building the agent needs ``pip install 'afnio-langchain[agents]'`` (langgraph>=1.0);
:class:`TrainablePrompt` itself only needs langchain-core.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.messages import BaseMessage, SystemMessage

from afnio_langchain.agents._recording import TrainablePromptSource
from afnio_langchain.agents._trainable_agent import TrainableAgent, messages_of
from afnio_langchain.autodiff import Variable

INSTALL_HINT = "pip install 'afnio-langchain[agents]'"


class TrainablePrompt(TrainablePromptSource):
    """A LangGraph callable prompt whose system prompt is a trainable Variable.

    ``prompt(state)`` returns ``[SystemMessage(<current text>), *state["messages"]]``;
    the Variable is read once per model call and never enters graph state (the system
    message goes to the model only). Wrap the agent in
    :class:`~afnio_langchain.agents.TrainableAgent` (or use
    :func:`create_trainable_react_agent`) to get final answers as Variables connected to
    the prompt.

    Args:
        system_prompt: The system prompt Variable (``requires_grad=True`` to train it).

    Example:
        >>> from langchain_core.messages import HumanMessage
        >>> from afnio_langchain import Variable
        >>> from afnio_langchain.agents import TrainablePrompt
        >>> prompt = TrainablePrompt(Variable("Be brief.", requires_grad=True))
        >>> [m.content for m in prompt({"messages": [HumanMessage("hi")]})]
        ['Be brief.', 'hi']
    """

    def __init__(self, system_prompt: Variable) -> None:
        super().__init__(system_prompt)

    def __call__(self, state: Any) -> list[Any]:
        messages = messages_of(state, "the graph state given to TrainablePrompt")
        text = self.read_prompt([m for m in messages if isinstance(m, BaseMessage)])
        return [SystemMessage(text), *messages]


def create_trainable_react_agent(
    model: Any,
    tools: Sequence[Any],
    system_prompt: Variable,
    *,
    backward_model: Any = None,
    **kwargs: Any,
) -> TrainableAgent:
    """Build LangGraph's prebuilt ReAct agent with a :class:`TrainablePrompt` and wrap it
    in a :class:`~afnio_langchain.agents.TrainableAgent`.

    Args:
        model: A chat model with ``bind_tools``.
        tools: The agent's tools.
        system_prompt: The system prompt Variable.
        backward_model: Model that writes gradients (default: the process one).
        **kwargs: Passed to ``langgraph.prebuilt.create_react_agent`` (``checkpointer``...).

    Raises:
        ImportError: langgraph is not installed; says what to install.
    """
    try:
        import warnings

        from langgraph.prebuilt import create_react_agent
    except ImportError as exc:
        raise ImportError(
            f"create_trainable_react_agent needs langgraph>=1.0: {INSTALL_HINT}"
        ) from exc
    prompt = TrainablePrompt(system_prompt)
    with warnings.catch_warnings():
        # Deprecated in favour of langchain.agents.create_agent (see TrainablePromptMiddleware).
        warnings.simplefilter("ignore", DeprecationWarning)
        agent = create_react_agent(model, tools, prompt=prompt, **kwargs)
    return TrainableAgent(agent=agent, prompt=prompt, backward_model=backward_model)


__all__ = ["TrainablePrompt", "create_trainable_react_agent"]
