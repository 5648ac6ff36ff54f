"""``ChatCompletion``: an LLM call as a differentiable operation."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from typing import Any

from afnio_langchain._aio import gather_all, run_sync
from afnio_langchain.autodiff.backward_model import resolve_backward_model
from afnio_langchain.autodiff.conversation import (
    Conversation,
    build_conversation,
    gradients_for_slots,
)
from afnio_langchain.autodiff.function import Function, FunctionCtx
from afnio_langchain.autodiff.prompts import chat_backward_messages
from afnio_langchain.autodiff.variable import Variable
from afnio_langchain.models import Message, as_model_client
from afnio_langchain.models.structured import request_fields

DEFAULT_OUTPUT_ROLE = "assistant response"

TextSink = Callable[[str], None]
_STREAM_SINK: contextvars.ContextVar[TextSink | None] = contextvars.ContextVar(
    "afnio_stream_sink", default=None
)


@contextlib.contextmanager
def stream_text_to(sink: TextSink) -> Iterator[None]:
    """Inside the block, a single (non-minibatch) ChatCompletion forward streams its
    reply's text chunks to ``sink`` as they arrive; the output Variable is still built
    once, at the end. Used by the Runnable face for ``stream``/``astream``."""
    token = _STREAM_SINK.set(sink)
    try:
        yield
    finally:
        _STREAM_SINK.reset(token)


async def _complete_all(
    client: Any, conversation: Conversation, completion_args: dict[str, Any]
) -> list[str]:
    sink = _STREAM_SINK.get()
    if sink is not None and not conversation.batched and hasattr(client, "astream"):
        chunks = []
        async for chunk in client.astream(conversation.items[0], purpose="forward", **completion_args):
            chunks.append(chunk)
            sink(chunk)
        return ["".join(chunks)]
    replies = await gather_all(
        [client.acomplete(item, purpose="forward", **completion_args) for item in conversation.items]
    )
    return [reply.text for reply in replies]


def _is_openai_client(obj: Any) -> bool:
    """An ``openai.OpenAI``/``AsyncOpenAI`` client, which needs ``model=`` to name its model."""
    return type(obj).__module__.startswith("openai") and hasattr(obj, "chat")


class ChatCompletion(Function):
    """A chat completion whose messages and inputs receive textual gradients.

    ``messages`` is a list of ``{"role": ..., "content": [Variable, ...]}`` dicts whose
    content may hold ``{name}`` fields, filled from ``inputs`` (strings, Variables, or
    lists of them). List inputs (or Variables holding lists) make a minibatch: one
    concurrent model call per item, and the output's ``data`` is the list of replies.
    Backward makes one model call per output item with feedback, asking for one
    gradient per Variable in ``messages`` and ``inputs`` that requires grad.

    Reserved keyword arguments (not sent to the model): ``backward_model`` (the model
    writing gradients; default: :func:`set_backward_model`) and ``output_role``. With an
    ``openai.OpenAI``/``AsyncOpenAI`` client, ``model="NAME"`` names the model (also used
    for an openai ``backward_model``).
    Everything else in ``completion_args`` (``temperature``, ``max_tokens``...) is
    passed to the model.

    Example:
        >>> from afnio_langchain import Variable, set_backward_model
        >>> from afnio_langchain.autodiff import ChatCompletion
        >>> from afnio_langchain.testing import ScriptedChatModel
        >>> model = ScriptedChatModel(forward="CIAO", feedback="Ask for capital letters.")
        >>> set_backward_model(model)
        >>> system = Variable("You are a helpful assistant.", role="system instruction",
        ...                   requires_grad=True)
        >>> user = Variable("Translate 'Hello' to {language}.", role="user query")
        >>> messages = [{"role": "system", "content": [system]},
        ...             {"role": "user", "content": [user]}]
        >>> response = ChatCompletion.apply(model, messages,
        ...                                 inputs={"language": Variable("Italian")})
        >>> response.data
        'CIAO'
        >>> response.backward("Use only capital letters.")
        >>> system.grad[0].data
        'Ask for capital letters.'
        >>> set_backward_model(None)
    """

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        forward_model_client: Any,
        messages: list[dict[str, Any]],
        inputs: dict[str, Any] | None = None,
        **completion_args: Any,
    ) -> Variable:
        return run_sync(
            lambda: ChatCompletion.aforward(
                ctx, forward_model_client, messages, inputs, **completion_args
            )
        )

    @staticmethod
    async def aforward(
        ctx: FunctionCtx,
        forward_model_client: Any,
        messages: list[dict[str, Any]],
        inputs: dict[str, Any] | None = None,
        **completion_args: Any,
    ) -> Variable:
        backward_model = completion_args.pop("backward_model", None)
        output_role = completion_args.pop("output_role", DEFAULT_OUTPUT_ROLE)
        model_name = completion_args.pop("model", None) if _is_openai_client(forward_model_client) else None
        client = as_model_client(forward_model_client, model_name)
        if model_name is not None and _is_openai_client(backward_model):
            backward_model = as_model_client(backward_model, model_name)
        conversation = build_conversation(messages, inputs)
        texts = await _complete_all(client, conversation, completion_args)
        ctx.conversation = conversation
        ctx.responses = texts
        ctx.backward_model = backward_model
        ctx.output_role = output_role
        return Variable(texts if conversation.batched else texts[0], role=output_role)

    @staticmethod
    def backward(ctx: FunctionCtx, grad_output: Variable) -> tuple:
        return run_sync(lambda: ChatCompletion.abackward(ctx, grad_output))

    @staticmethod
    async def abackward(ctx: FunctionCtx, grad_output: Variable) -> tuple:
        conversation = ctx.conversation

        def request(i: int, variables: list[tuple[str, str, str]], feedback: str) -> list:
            return chat_backward_messages(
                conversation.items[i], ctx.responses[i], ctx.output_role, feedback, variables
            )

        return await item_gradients(
            ctx, conversation, [str(t) for t in grad_output.items()], request, "ChatCompletion"
        )


async def item_gradients(
    ctx: FunctionCtx,
    conversation: Conversation,
    feedback: list[str],
    make_request: Callable[[int, list[tuple[str, str, str]], str], list[Message]],
    op_name: str,
) -> tuple:
    """The backward of a chat-shaped op: one model call per item that has feedback,
    asking for one gradient per slot feeding that item that needs grad."""
    slots = conversation.slots
    needs = ctx.needs_input_grad
    if not any(needs):
        return tuple(None for _ in slots)
    client = resolve_backward_model(ctx.backward_model, f"{op_name}Backward0")

    async def one_item(i: int) -> dict[int, str] | None:
        wanted = [j for j, slot in enumerate(slots) if needs[j] and slot.feeds(i)]
        if not wanted or not feedback[i].strip():
            return None  # nothing to differentiate, or nothing to fix in this item
        keys = {j: f"var_{n + 1}" for n, j in enumerate(wanted)}
        roles = {j: slots[j].variable.role or "text" for j in wanted}
        fields = await request_fields(
            client,
            make_request(i, [(keys[j], roles[j], slots[j].value(i)) for j in wanted], feedback[i]),
            {keys[j]: f"feedback on the {roles[j]}" for j in wanted},
            purpose="backward",
            where=f"{op_name}Backward0 (item {i})",
            schema_name="gradients",
        )
        return {j: fields[keys[j]] for j in wanted}

    per_item = await gather_all([one_item(i) for i in range(conversation.size)])
    return tuple(gradients_for_slots(slots, needs, per_item))
