"""``LLMFunction``: the public base of differentiable ops whose backward asks an LLM
for feedback on their inputs (``ChatCompletion``, ``LMJudgeEvaluator``, the agent run,
the DSPy predictor call).

A new LLM op is one subclass: an ``aforward`` that makes its model calls and leaves on
``ctx`` which Variables fed which minibatch item (a :class:`Conversation`), and, when
the default backward request does not fit, a ``backward_messages`` that writes the
request for one item. The base's ``abackward`` does the rest: one concurrent backward
call per item that received feedback, one gradient per input Variable that needs one,
routed back to the Variables that fed that item.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from afnio_langchain.autodiff._backward_model import resolve_backward_model
from afnio_langchain.autodiff._conversation import Conversation, gradients_for_slots
from afnio_langchain.autodiff._function import Function, FunctionCtx
from afnio_langchain.autodiff._item_streams import GradientStream, ItemFeedback, publish_item
from afnio_langchain.autodiff._minibatch import (
    MinibatchError,
    gather_items,
    record_item_failures,
    tolerating_item_failures,
)
from afnio_langchain.autodiff._prompts import chat_backward_messages
from afnio_langchain.autodiff._variable import Variable
from afnio_langchain.models import Message, request_fields

DEFAULT_OUTPUT_ROLE = "assistant response"

VariableSpec = tuple[str, str, str]
"""One variable a backward request asks about: ``(key, role, value in this item)``."""


class LLMFunction(Function):
    """Base of ops whose gradients are written by a language model.

    Subclasses define ``aforward(ctx, ...)`` (or ``forward``) and set, on ``ctx``:

    - ``ctx.conversation``: a :class:`Conversation` (from :func:`build_conversation`, or
      built by hand), whose ``slots`` say which input Variable fed which item;
    - ``ctx.backward_model``: the model writing gradients (None: the process default
      of :func:`~afnio_langchain.set_backward_model`);
    - for the default :meth:`backward_messages`: ``ctx.responses`` (one reply text per
      item) and ``ctx.output_role``.

    They may override :meth:`backward_messages` (the request for one item) and
    :meth:`item_feedback` (the feedback text per item, from the output gradients).

    Example:
        >>> from afnio_langchain import Variable, set_backward_model
        >>> from afnio_langchain.autodiff import LLMFunction, build_conversation
        >>> from afnio_langchain.models import as_model_client
        >>> from afnio_langchain.testing import ScriptedChatModel
        >>> class Summarize(LLMFunction):
        ...     @staticmethod
        ...     async def aforward(ctx, model, text, backward_model=None):
        ...         conversation = build_conversation(
        ...             [{"role": "user", "content": ["Summarize in five words: {text}"]}],
        ...             inputs={"text": text})
        ...         reply = await as_model_client(model).acomplete(conversation.items[0])
        ...         ctx.conversation, ctx.responses = conversation, [reply.text]
        ...         ctx.output_role, ctx.backward_model = "summary", backward_model
        ...         return Variable(reply.text, role="summary")
        >>> model = ScriptedChatModel(forward="Cats sleep a lot.",
        ...                           feedback="Mention that cats are crepuscular.")
        >>> text = Variable("Cats sleep 15 hours a day and hunt at dusk.", role="article",
        ...                 requires_grad=True)
        >>> summary = Summarize.apply(model, text, backward_model=model)
        >>> summary.data, summary.grad_fn.name()
        ('Cats sleep a lot.', 'SummarizeBackward0')
        >>> summary.backward("Say when cats are active.")
        >>> text.grad[0].data
        'Mention that cats are crepuscular.'
    """

    @staticmethod
    def backward_messages(
        ctx: FunctionCtx, item: int, variables: Sequence[VariableSpec], feedback: str
    ) -> list[Message]:
        """The backward request for minibatch item ``item``: by default the chat backward
        prompt, showing the item's conversation, ``ctx.responses[item]`` and the feedback."""
        return chat_backward_messages(
            ctx.conversation.items[item],
            ctx.responses[item],
            getattr(ctx, "output_role", DEFAULT_OUTPUT_ROLE),
            feedback,
            variables,
        )

    @staticmethod
    def item_feedback(ctx: FunctionCtx, *grad_outputs: Variable | None) -> list[str]:
        """One feedback text per minibatch item (empty: no backward call for it).

        By default the items of the first output's gradient, one text for every item
        when the gradient holds one, and none for items listed in ``ctx.failed_items``.
        """
        n = ctx.conversation.size
        grad = grad_outputs[0] if grad_outputs else None
        texts = [] if grad is None else [str(t) for t in grad.items()]
        if len(texts) == 1 and n > 1:
            texts = texts * n
        texts += [""] * (n - len(texts))
        failed = getattr(ctx, "failed_items", frozenset())
        return ["" if i in failed else text for i, text in enumerate(texts[:n])]

    @classmethod
    async def abackward(cls, ctx: FunctionCtx, *grad_outputs: Variable | None) -> tuple:
        """One backward call per item with feedback, concurrently (see the class doc)."""
        streamed = grad_outputs[0] if len(grad_outputs) == 1 else None
        if isinstance(streamed, GradientStream):  # items arrive one by one (_item_streams)
            feedback: list[str] | ItemFeedback = streamed.feedback(
                getattr(ctx, "failed_items", frozenset())
            )
        else:
            feedback = cls.item_feedback(ctx, *grad_outputs)

        def request(i: int, variables: list[VariableSpec], text: str) -> list[Message]:
            return cls.backward_messages(ctx, i, variables, text)

        return await item_gradients(ctx, ctx.conversation, feedback, request, cls.__name__)


async def item_gradients(
    ctx: FunctionCtx,
    conversation: Conversation,
    feedback: list[str] | ItemFeedback,
    make_request: Callable[[int, list[tuple[str, str, str]], str], list[Message]],
    op_name: str,
) -> tuple:
    """The backward of a chat-shaped op: one model call per item that has feedback,
    asking for one gradient per slot feeding that item that needs grad.

    ``feedback`` holds one text per item (or, from the engine, item texts still
    arriving); each item's gradient texts are handed on as soon as its call returns
    (:func:`~afnio_langchain.autodiff._item_streams.publish_item`)."""
    slots = conversation.slots
    needs = ctx.needs_input_grad
    if not any(needs):
        return tuple(None for _ in slots)
    client = resolve_backward_model(ctx.backward_model, f"{op_name}Backward0")

    shared = [j for j, slot in enumerate(slots) if needs[j] and slot.item is None]
    own: dict[int, list[int]] = {}  # item -> the slots of Variables feeding that item only
    for j, slot in enumerate(slots):
        if needs[j] and slot.item is not None:
            own.setdefault(slot.item, []).append(j)

    async def one_item(i: int) -> dict[int, str] | None:
        texts = None
        try:
            texts = await item_texts(i)
        finally:
            publish_item(ctx, i, texts)
        return texts

    async def item_texts(i: int) -> dict[int, str] | None:
        wanted = sorted(shared + own[i]) if i in own else shared
        text = feedback[i] if isinstance(feedback, list) else await feedback.get(i)
        if not wanted or not text.strip():
            return None  # nothing to differentiate, or nothing to fix in this item
        keys = {j: f"var_{n + 1}" for n, j in enumerate(wanted)}
        roles = {j: slots[j].variable.role or "text" for j in wanted}
        fields = await request_fields(
            client,
            make_request(i, [(keys[j], roles[j], slots[j].value(i)) for j in wanted], text),
            {keys[j]: f"feedback on the {roles[j]}" for j in wanted},
            purpose="backward",
            where=f"{op_name}Backward0 (item {i})",
            schema_name="gradients",
        )
        return {j: fields[keys[j]] for j in wanted}

    if conversation.size == 1:  # one call: no task to start, no items to gather
        try:
            per_item, errors = [await one_item(0)], {}
        except Exception as exc:
            per_item, errors = [None], {0: exc}
    else:
        per_item, errors = await gather_items([one_item(i) for i in range(conversation.size)])
    if errors:
        if not conversation.batched:
            raise errors[0]  # a single call: the node itself failed
        if tolerating_item_failures():  # best-effort backward: the others' gradients stand
            record_item_failures(errors)
        else:
            raise MinibatchError(f"{op_name}Backward0", per_item, errors)
    return tuple(gradients_for_slots(slots, needs, per_item))
