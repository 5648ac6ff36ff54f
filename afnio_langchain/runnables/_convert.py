"""Converting between a LangChain prompt template (a ``ChatPromptTemplate``, or a string
``PromptTemplate``, which a chat model receives as one human message) + chat model pair
and a trainable :class:`ChatCompletionRunnable`, and back.

Learned text is always a value: in the trainable step, only the template's own input
variables are fields (anything else in braces stays literal), and on export every
brace that is not one of those variables is escaped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage
from langchain_core.prompts import (
    ChatPromptTemplate,
    FewShotChatMessagePromptTemplate,
    PromptTemplate,
)
from langchain_core.prompts.chat import (
    ChatMessagePromptTemplate,
    MessagesPlaceholder,
    SystemMessagePromptTemplate,
    _StringImageMessagePromptTemplate,
)
from langchain_core.runnables import Runnable, RunnableBinding
from langchain_core.runnables.base import RunnableBindingBase

from afnio_langchain.autodiff import Variable, escape_fields, from_fstring, to_fstring
from afnio_langchain.runnables._chat import ChatCompletionRunnable

_ROLE_OF_TYPE = {"system": "system", "human": "user", "ai": "assistant"}
_ROLES = {"system", "user", "assistant"}
ROLE_LABELS = {"system": "system prompt", "user": "user prompt", "assistant": "assistant message"}


@dataclass
class TrainablePrompt:
    """One converted prompt template: its trainable message Variables and what is
    needed to write it back as a LangChain template.

    Attributes:
        template: The original template: a ``ChatPromptTemplate``, or a string
            ``PromptTemplate`` (one human message, trained whole).
        variables: Message index -> the trainable Variable holding that message's text
            (in this package's template syntax).
        fields: Message index -> the input variables that message had (they stay fields).
        messages: The seed-form messages of the trainable step.
        defaults: String partial variables of the template (default inputs).
        partials: Message index -> partial variables of that message's own template.

    Example:
        >>> from langchain_core.prompts import ChatPromptTemplate
        >>> from afnio_langchain import make_trainable
        >>> from afnio_langchain.testing import ScriptedChatModel
        >>> template = ChatPromptTemplate.from_messages(
        ...     [("system", "Answer in {language}."), ("human", "{question}")])
        >>> prompt = make_trainable(template | ScriptedChatModel(forward="Parigi")).prompts[0]
        >>> prompt.fields, prompt.variables[0].role
        ({0: ['language']}, 'system prompt (a template: keep {language} as written)')
        >>> prompt.variables[0].data = "Answer in {language}, in one word {no braces}."
        >>> prompt.export().messages[0].prompt.template
        'Answer in {language}, in one word {{no braces}}.'
    """

    template: ChatPromptTemplate | PromptTemplate
    variables: dict[int, Variable] = field(default_factory=dict)
    fields: dict[int, list[str]] = field(default_factory=dict)
    messages: list[dict[str, Any]] = field(default_factory=list)
    defaults: dict[str, str] = field(default_factory=dict)
    partials: dict[int, dict[str, str]] = field(default_factory=dict)

    def label(self, step: int | None = None) -> None:
        """Set the roles of the trainable Variables: what they are, which LLM step they
        belong to (when the chain has several) and which fields they must keep."""
        for index, variable in self.variables.items():
            if isinstance(self.template, PromptTemplate):
                what = "prompt"
            else:  # by the template's own message: few-shot examples shift the positions
                what = ROLE_LABELS[_role_of(self.template.messages[index])]
            name = what + (f" of LLM step {step}" if step is not None else "")
            kept = self.fields[index]
            if kept:
                name += f" (a template: keep {', '.join('{' + f + '}' for f in kept)} as written)"
            variable.role = name

    @property
    def input_variables(self) -> list[str]:
        return [*self.template.input_variables, *self.defaults]

    def export(self) -> ChatPromptTemplate | PromptTemplate:
        """The original template with the current values of the trainable messages,
        every brace in learned text escaped except the message's own variables."""
        if isinstance(self.template, PromptTemplate):
            text = to_fstring(str(self.variables[0].data), self.fields[0])
            return self.template.model_copy(update={"template": text})
        messages: list[Any] = list(self.template.messages)
        for index, variable in self.variables.items():
            original = messages[index]
            text = to_fstring(str(variable.data), self.fields[index])
            partials = self.partials.get(index, {})
            prompt = PromptTemplate.from_template(text, partial_variables=partials)
            messages[index] = _message_template(_role_of(original), prompt)
        return self.template.model_copy(update={"messages": messages})


def _message_template(role: str, prompt: PromptTemplate) -> Any:
    from langchain_core.prompts.chat import AIMessagePromptTemplate, HumanMessagePromptTemplate

    kinds = {
        "system": SystemMessagePromptTemplate,
        "user": HumanMessagePromptTemplate,
        "assistant": AIMessagePromptTemplate,
    }
    return kinds[role](prompt=prompt)


def _role_of(message: Any) -> str:
    from langchain_core.prompts.chat import AIMessagePromptTemplate, HumanMessagePromptTemplate

    role: str | None = None
    if isinstance(message, BaseMessage):
        role = _ROLE_OF_TYPE.get(message.type)
    elif isinstance(message, SystemMessagePromptTemplate):
        role = "system"
    elif isinstance(message, HumanMessagePromptTemplate):
        role = "user"
    elif isinstance(message, AIMessagePromptTemplate):
        role = "assistant"
    elif isinstance(message, ChatMessagePromptTemplate):
        role = {"human": "user", "ai": "assistant", "developer": "system"}.get(
            message.role, message.role
        )
    if role not in _ROLES:
        raise ValueError(
            "make_trainable supports system, human and ai messages; got "
            f"{type(message).__name__}"
        )
    return role


def _template_text(message: Any, where: str) -> tuple[str, list[str], dict[str, Any]]:
    """A message template's text in this package's syntax, its fields and partials."""
    prompt = getattr(message, "prompt", None)
    if isinstance(message, _StringImageMessagePromptTemplate) and isinstance(prompt, list):
        if len(prompt) != 1 or not isinstance(prompt[0], PromptTemplate):
            raise ValueError(f"{where}: only text message templates can be made trainable")
        prompt = prompt[0]
    if not isinstance(prompt, PromptTemplate):
        raise ValueError(f"{where}: unsupported message template {type(message).__name__}")
    if prompt.template_format != "f-string":
        raise ValueError(
            f"{where}: {prompt.template_format} templates are not supported; make_trainable "
            "converts f-string templates (the ChatPromptTemplate default)"
        )
    return from_fstring(prompt.template), list(prompt.input_variables), dict(prompt.partial_variables)


PROMPT_TEMPLATES = (ChatPromptTemplate, PromptTemplate)
"""The prompt templates ``make_trainable`` converts when a chat model follows them."""


def convert_template(
    template: ChatPromptTemplate | PromptTemplate, roles: Sequence[str]
) -> TrainablePrompt:
    """Seed-form messages for a prompt template; messages of ``roles`` become trainable
    Variables (named by :meth:`TrainablePrompt.label`). A string ``PromptTemplate`` is
    one human message holding the whole prompt, instructions included: it is trainable
    when ``roles`` has ``"system"`` or ``"user"``. A ``FewShotChatMessagePromptTemplate``
    with fixed ``examples`` becomes its example messages, kept as written (they are
    data, not instructions; the template exports as it was).

    Raises:
        ValueError: The template holds something that cannot be trained: a
            ``MessagesPlaceholder``, a non-text message, a mustache/jinja2 template, a
            partial variable given as a function, or few-shot examples picked per input
            (an ``example_selector``).
    """
    if isinstance(template, PromptTemplate):
        return _convert_string_template(template, roles)
    converted = TrainablePrompt(template=template)
    for index, message in enumerate(template.messages):  # ("placeholder", ...) has a list partial
        if isinstance(message, MessagesPlaceholder):
            raise ValueError(
                f"make_trainable: message {index} of the prompt template is a "
                f"MessagesPlaceholder ({message.variable_name!r}, also written "
                '("placeholder", "{...}")); chat history placeholders are not supported in '
                "trainable steps"
            )
    for name, value in template.partial_variables.items():
        if not isinstance(value, str):
            raise ValueError(
                f"make_trainable: partial variable {name!r} of the prompt template is a "
                f"{type(value).__name__}; only string partials are supported"
            )
        converted.defaults[name] = value
    for index, message in enumerate(template.messages):
        where = f"make_trainable: message {index} of the prompt template"
        if isinstance(message, FewShotChatMessagePromptTemplate):
            converted.messages.extend(_fixed_examples(message, where))
            continue
        role = _role_of(message)
        if isinstance(message, BaseMessage):
            if not isinstance(message.content, str):
                raise ValueError(f"{where} has non-text content")
            text, fields, partials = escape_fields(message.content), [], {}
        else:
            text, fields, partials = _template_text(message, where)
        for name, value in partials.items():
            if not isinstance(value, str):
                raise ValueError(f"{where}: partial variable {name!r} must be a string")
            converted.defaults.setdefault(name, value)
        if role in roles:
            variable = Variable(text, requires_grad=True)
            converted.variables[index] = variable
            converted.fields[index] = fields + list(partials)
            converted.partials[index] = partials
            converted.messages.append({"role": role, "content": [variable]})
        else:
            converted.messages.append({"role": role, "content": [text]})
    converted.label()
    return converted


def _fixed_examples(few_shot: FewShotChatMessagePromptTemplate, where: str) -> list[dict]:
    """The seed-form messages of a few-shot template's fixed examples."""
    if few_shot.examples is None:
        raise ValueError(
            f"{where} is a FewShotChatMessagePromptTemplate with an example_selector: its "
            "examples are picked per input, which a trainable step cannot hold. Give it "
            "fixed examples (examples=[...]), or keep the selector outside the trained chain"
        )
    if few_shot.input_variables:
        raise ValueError(
            f"{where} is a FewShotChatMessagePromptTemplate that takes inputs "
            f"({', '.join(few_shot.input_variables)}); only examples fixed in the template "
            "can be part of a trainable step"
        )
    messages = []
    for example in few_shot.format_messages():
        if not isinstance(example.content, str):
            raise ValueError(f"{where}: a few-shot example message has non-text content")
        content = escape_fields(example.content)  # an example's braces are text, not fields
        messages.append({"role": _role_of(example), "content": [content]})
    return messages


def _convert_string_template(template: PromptTemplate, roles: Sequence[str]) -> TrainablePrompt:
    from langchain_core.prompts.chat import HumanMessagePromptTemplate

    as_chat = ChatPromptTemplate.from_messages([HumanMessagePromptTemplate(prompt=template)])
    trainable = ("user",) if {"system", "user"} & set(roles) else ()
    converted = convert_template(as_chat, trainable)
    converted.template = template
    converted.label()
    return converted


def split_chat_model(
    step: Any,
) -> tuple[BaseChatModel, dict[str, Any], Callable[[Runnable], Runnable]] | None:
    """``(chat model, bound call kwargs, rewrap)`` when ``step`` is a chat model, possibly
    inside ``bind``/``with_config``/``with_retry`` bindings; ``rewrap(runnable)`` puts
    ``runnable`` inside the same bindings (their config and retry settings, not their
    call kwargs, which the caller moves into the completion arguments). None otherwise."""
    if isinstance(step, BaseChatModel):
        return step, {}, lambda runnable: runnable
    if not isinstance(step, RunnableBindingBase):
        return None
    inner = split_chat_model(step.bound)
    if inner is None:
        return None
    model, kwargs, rewrap_inner = inner

    def rewrap(runnable: Runnable) -> Runnable:
        wrapped = rewrap_inner(runnable)
        if type(step).__name__ in ("RunnableBinding", "_ChatModelBinding"):
            if not step.config and not step.config_factories:
                return wrapped
            return RunnableBinding(
                bound=wrapped, config=step.config, config_factories=step.config_factories
            )
        return step.model_copy(
            update={
                "bound": wrapped,
                "kwargs": {},
                "custom_input_type": None,
                "custom_output_type": None,
            }
        )

    return model, {**kwargs, **step.kwargs}, rewrap


TOOL_KEYWORDS = ("tools", "functions")
"""Bound call keywords that make a chat model answer with tool calls (``bind_tools``,
``with_structured_output``'s default ``function_calling``)."""


def check_text_reply(kwargs: dict[str, Any]) -> None:
    """Refuse a model bound to tools: its reply is a tool call, not text, and a
    trainable step's output is the reply's text (the tool call would be lost).

    Raises:
        ValueError: Says what to use instead.
    """
    bound = [k for k in TOOL_KEYWORDS if kwargs.get(k)]
    if bound:
        raise ValueError(
            f"make_trainable: the chat model after a prompt is bound to {bound[0]} "
            "(bind_tools, or with_structured_output's default method='function_calling'): "
            "it answers with tool calls, not text, and a trainable step's output is text. "
            "For a tool-calling agent use TrainableAgent or TrainablePromptMiddleware "
            "(docs/agents.md); for structured output use "
            "with_structured_output(schema, method='json_schema') or a JsonOutputParser"
        )


def is_refusal_check(step: Any) -> bool:
    """Whether ``step`` is the check langchain-openai's ``with_structured_output`` puts
    between the model and its parser (``RunnableGenerator(_check_refusal)``): it reads
    the reply message's refusal and content filter, which a trainable step's text
    output does not carry."""
    transform = getattr(step, "_transform", None)
    return (
        type(step).__name__ == "RunnableGenerator"
        and getattr(transform, "__name__", "") == "_check_refusal"
        and getattr(transform, "__module__", "").startswith("langchain_openai")
    )


def trainable_step(
    prompt: TrainablePrompt,
    model: BaseChatModel,
    completion_args: dict[str, Any],
    backward_model: Any = None,
) -> ChatCompletionRunnable:
    """The ChatCompletionRunnable standing for ``prompt | model``: inputs formatted as
    the template would format them, only the template's variables as fields."""
    return ChatCompletionRunnable(
        model=model,
        messages=prompt.messages,
        inputs=dict(prompt.defaults),
        input_variables=prompt.input_variables,
        coerce_inputs=True,
        backward_model=backward_model,
        completion_args=completion_args,
    )
