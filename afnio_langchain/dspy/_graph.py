"""A DSPy program run as an autodiff graph: one ``PredictorCall`` node per predictor call.

After a program ran on one example under DSPy's trace, :func:`build_graph` replays the
trace as graph nodes. Each node's inputs are the predictor's instructions Variable and
the input fields that came from an earlier predictor's outputs (matched by value: a
string passed on unchanged); its outputs are one Variable per output field. Feedback
on the program's final outputs then flows back through every step to the
instructions of every predictor that contributed, with the package's own backward
engine and gradient protocol (one JSON request per call that received feedback).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from afnio_langchain.dspy._compat import require_dspy

dspy = require_dspy("afnio_langchain.dspy._graph")

from afnio_langchain.autodiff import (
    Conversation,
    FunctionCtx,
    LLMFunction,
    Slot,
    Variable,
    VariableSpec,
    chat_backward_messages,
    enable_grad,
)
from afnio_langchain.dspy import _prompts as prompts
from afnio_langchain.models import Message

TraceEntry = tuple[Any, Mapping[str, Any], Any]
"""One entry of ``dspy.settings.trace``: ``(predictor, inputs, prediction)``."""


@dataclass
class CallRecord:
    """One predictor call, as the backward model is shown it.

    Attributes:
        name: The predictor's name in the program (``program.named_predictors()``).
        inputs: The input fields it received.
        outputs: The output fields it produced (in signature order).
        messages: The conversation DSPy's adapter sent for it (plain chat messages).
        response: Its outputs as the adapter formats an assistant reply.

    Example:
        >>> import dspy
        >>> from afnio_langchain.dspy._graph import record_call
        >>> qa = dspy.Predict("question -> answer")
        >>> record = record_call("qa", qa, {"question": "2+2?"}, dspy.Prediction(answer="4"))
        >>> record.name, record.inputs, record.outputs
        ('qa', {'question': '2+2?'}, {'answer': '4'})
        >>> [m["role"] for m in record.messages]
        ['system', 'user']
        >>> print(record.response)
        [[ ## answer ## ]]
        4
        ...
    """

    name: str
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    messages: list[Message]
    response: str


@dataclass
class ProgramGraph:
    """The graph of one program run.

    Attributes:
        calls: The predictor calls, in the order they ran.
        outputs: Per call, its output-field Variables (in signature order).
        roots: The output Variables the program's final prediction came from, each
            once; the metric's feedback is the gradient on each of them.
        ambiguous: Per traced copy of a predictor that could not be told apart (its
            signature equals that of several of the program's predictors), the names of
            those predictors; such a call is replayed with constant instructions.

    Example:
        >>> import dspy
        >>> from dspy.utils import DummyLM
        >>> from afnio_langchain import Variable
        >>> from afnio_langchain.dspy import build_graph
        >>> from afnio_langchain.testing import ScriptedChatModel
        >>> qa = dspy.Predict("question -> answer")
        >>> instructions = Variable(qa.signature.instructions, role="instructions", requires_grad=True)
        >>> coach = ScriptedChatModel(feedback="Check the sum.")
        >>> with dspy.context(lm=DummyLM([{"answer": "5"}]), trace=[]):
        ...     prediction = qa(question="2+2?")
        ...     graph = build_graph(dspy.settings.trace, prediction, {id(qa): instructions},
        ...                         {id(qa): "qa"}, backward_model=coach)
        >>> [call.name for call in graph.calls], [root.data for root in graph.roots]
        (['qa'], ['5'])
        >>> graph.roots[0].backward("Wrong: 2+2 is 4.")
        >>> instructions.grad[0].data
        'Check the sum.'
    """

    calls: list[CallRecord] = field(default_factory=list)
    outputs: list[tuple[Variable, ...]] = field(default_factory=list)
    roots: list[Variable] = field(default_factory=list)
    ambiguous: list[list[str]] = field(default_factory=list)


class PredictorCall(LLMFunction):
    """One recorded DSPy predictor call as a differentiable operation.

    ``forward`` does not call the model again: it turns the recorded outputs of the
    call into one Variable per output field. ``backward`` makes one backward-model call
    (the package's JSON gradient protocol) asking for feedback on every input that
    needs it: the predictor's instructions, and input fields that came from earlier
    predictors' outputs. The outputs' gradients are shown per field.

    Args (of ``apply``):
        instructions: The predictor's instructions Variable.
        inputs: Input field -> Variable (an earlier call's output) or plain value.
        record: The call, as :func:`record_call` describes it.
        backward_model: The model that writes the feedback (default: the process
            default of :func:`afnio_langchain.set_backward_model`).

    Example:
        >>> from afnio_langchain import Variable
        >>> from afnio_langchain.dspy._graph import CallRecord, PredictorCall
        >>> from afnio_langchain.testing import ScriptedChatModel
        >>> model = ScriptedChatModel(feedback="Say the unit of the answer.")
        >>> instructions = Variable("Answer the question.", role="instructions",
        ...                         requires_grad=True)
        >>> record = CallRecord("qa", {"question": "Boiling point of water?"},
        ...                     {"answer": "100"},
        ...                     [{"role": "user", "content": "Boiling point of water?"}],
        ...                     "100")
        >>> (answer,) = PredictorCall.apply(instructions, dict(record.inputs), record,
        ...                                 backward_model=model)
        >>> answer.data, answer.grad_fn.name()
        ('100', 'PredictorCallBackward0')
        >>> answer.backward("Missing the unit (degrees Celsius).")
        >>> instructions.grad[0].data
        'Say the unit of the answer.'
    """

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        instructions: Variable,
        inputs: dict[str, Any],
        record: CallRecord,
        backward_model: Any = None,
    ) -> tuple[Variable, ...]:
        if not isinstance(instructions, Variable):
            raise TypeError(f"instructions must be a Variable, got {type(instructions).__name__}")
        if not isinstance(record, CallRecord):
            raise TypeError(f"record must be a CallRecord, got {type(record).__name__}")
        slots = [Slot(instructions)] + [Slot(v) for v in inputs.values() if isinstance(v, Variable)]
        ctx.conversation = Conversation(items=[list(record.messages)], batched=False, slots=slots)
        ctx.record = record
        ctx.fields = list(record.outputs)
        ctx.backward_model = backward_model
        return tuple(
            Variable(
                value_text(value),
                role=prompts.OUTPUT_ROLE.format(field=name, predictor=record.name),
            )
            for name, value in record.outputs.items()
        )

    @staticmethod
    def item_feedback(ctx: FunctionCtx, *grad_outputs: Variable | None) -> list[str]:
        """The feedback on every output field of the call, as one text."""
        return [outputs_feedback(ctx.fields, grad_outputs)]

    @staticmethod
    def backward_messages(
        ctx: FunctionCtx, item: int, variables: Sequence[VariableSpec], feedback: str
    ) -> list[Message]:
        """The chat backward prompt over the conversation DSPy's adapter sent."""
        record: CallRecord = ctx.record
        role = prompts.RESPONSE_ROLE.format(predictor=record.name)
        return chat_backward_messages(record.messages, record.response, role, feedback, variables)


def outputs_feedback(fields: Sequence[str], grad_outputs: Sequence[Variable | None]) -> str:
    """The feedback a call's output fields received, one block per distinct text (fields
    that received the same text, like the final outputs given the metric's feedback,
    are named together)."""
    groups: dict[str, list[str]] = {}
    for name, gradient in zip(fields, grad_outputs):
        if gradient is None:
            continue
        text = "\n\n".join(str(t).strip() for t in gradient.items() if str(t).strip())
        if text:
            groups.setdefault(text, []).append(name)
    return "\n\n".join(
        prompts.FIELD_FEEDBACK.format(fields=", ".join(f"'{f}'" for f in names), feedback=text)
        for text, names in groups.items()
    )


def value_text(value: Any) -> str:
    """A field value as text (JSON for lists and dicts, ``str`` otherwise)."""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple, dict)):
        try:
            return json.dumps(value, ensure_ascii=False)
        except (TypeError, ValueError):
            return str(value)
    if hasattr(value, "model_dump_json"):  # pydantic outputs
        return value.model_dump_json()
    return str(value)


def _match_key(value: Any) -> str | None:
    text = value_text(value).strip()
    return text or None


def _plain_messages(messages: Sequence[Mapping[str, Any]]) -> list[Message]:
    out: list[Message] = []
    for m in messages:
        content = m.get("content", "")
        if not isinstance(content, str):  # multimodal blocks: keep their text
            content = "\n".join(
                str(block.get("text", "")) if isinstance(block, Mapping) else str(block)
                for block in content
            )
        role = m.get("role", "user")
        out.append(
            {
                "role": role if role in ("system", "user", "assistant") else "user",
                "content": content,
            }
        )
    return out


def record_call(
    name: str, predictor: Any, inputs: Mapping[str, Any], prediction: Any
) -> CallRecord:
    """Describe one traced call: its fields, and the conversation and reply as DSPy's
    current adapter renders them (a plain rendering if the adapter cannot)."""
    signature = predictor.signature
    outputs = {k: prediction[k] for k in signature.output_fields if k in prediction}
    adapter = dspy.settings.adapter or dspy.ChatAdapter()
    try:
        messages = _plain_messages(adapter.format(signature, list(predictor.demos), dict(inputs)))
        response = adapter.format_assistant_message_content(signature, outputs)
    except Exception:  # a custom adapter or field type the adapter cannot render alone
        fields = "\n".join(f"{k}: {value_text(v)}" for k, v in inputs.items())
        messages = [
            {"role": "system", "content": signature.instructions},
            {"role": "user", "content": fields},
        ]
        response = "\n".join(f"{k}: {value_text(v)}" for k, v in outputs.items())
    return CallRecord(name, dict(inputs), outputs, messages, response)


def build_graph(
    trace: Sequence[TraceEntry],
    prediction: Any,
    instructions: Mapping[int, Variable],
    names: Mapping[int, str],
    *,
    backward_model: Any = None,
    predictors: Sequence[Any] = (),
) -> ProgramGraph:
    """Replay one program run's DSPy trace as ``PredictorCall`` nodes.

    Args:
        trace: ``dspy.settings.trace`` after the run: ``(predictor, inputs, prediction)``.
        prediction: What the program returned.
        instructions: ``id(predictor)`` -> its trainable instructions Variable.
        names: ``id(predictor)`` -> its name in the program.
        backward_model: The model that writes the feedback.
        predictors: The program's predictors, to match traced copies of them with.

    A traced predictor that is not one of the program's is taken for a copy of the
    one predictor in ``predictors`` whose signature equals its own (as ``dspy.GEPA``
    matches trace entries): ``dspy.BestOfN`` and ``dspy.Refine`` run a deep copy of
    their module on every attempt. With no such predictor, or several, its
    instructions are a constant (several: the names are listed in ``ambiguous``).

    An input field whose value equals an earlier call's output field (the most recent
    one) is wired to that output's Variable. The roots are the output Variables whose
    values the final prediction holds; when none matches (the program post-processed
    its outputs), every output of the last call.
    """
    graph = ProgramGraph()
    produced: dict[str, Variable] = {}
    with enable_grad():
        for k, (predictor, inputs, pred) in enumerate(trace):
            key = id(predictor)
            if key not in instructions and predictors:
                same = [p for p in predictors if predictor.signature.equals(p.signature)]
                if len(same) == 1:
                    key = id(same[0])
                elif same:
                    graph.ambiguous.append([names.get(id(p), "?") for p in same])
            name = names.get(key) or prompts.UNNAMED_PREDICTOR.format(index=k)
            variable = instructions.get(key)
            if variable is None:  # not one of the program's predictors: not trained
                variable = Variable(
                    predictor.signature.instructions,
                    role=prompts.INSTRUCTIONS_ROLE.format(predictor=name),
                )
            record = record_call(name, predictor, inputs, pred)
            wired: dict[str, Any] = {}
            for field_name, value in record.inputs.items():
                key = _match_key(value)
                wired[field_name] = (
                    produced.get(key, value_text(value)) if key else value_text(value)
                )
            outputs = PredictorCall.apply(variable, wired, record, backward_model=backward_model)
            graph.calls.append(record)
            graph.outputs.append(outputs)
            for value, out in zip(record.outputs.values(), outputs):
                key = _match_key(value)
                if key:
                    produced[key] = out
    graph.roots = _roots(graph, prediction, produced)
    return graph


def _roots(
    graph: ProgramGraph, prediction: Any, produced: Mapping[str, Variable]
) -> list[Variable]:
    if not graph.outputs:
        return []
    roots: dict[int, Variable] = {}
    items = prediction.items() if hasattr(prediction, "items") else []
    for _, value in items:
        key = _match_key(value)
        found = produced.get(key) if key else None
        if found is not None:
            roots.setdefault(id(found), found)
    chosen = list(roots.values()) or list(graph.outputs[-1])
    return [v for v in chosen if v.requires_grad and v.grad_fn is not None]


__all__ = [
    "CallRecord",
    "PredictorCall",
    "ProgramGraph",
    "build_graph",
    "outputs_feedback",
    "record_call",
    "value_text",
]
