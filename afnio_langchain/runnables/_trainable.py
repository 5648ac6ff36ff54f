"""``make_trainable``: an existing LangChain chain, with trainable system prompts."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

from langchain_core.output_parsers import BaseOutputParser
from langchain_core.prompts import ChatPromptTemplate, PromptTemplate
from langchain_core.runnables import Runnable, RunnableConfig, RunnableSerializable
from langchain_core.runnables.base import (
    RunnableBindingBase,
    RunnableGenerator,
    RunnableLambda,
    RunnableSequence,
)
from langchain_core.runnables.branch import RunnableBranch
from langchain_core.runnables.configurable import (
    DynamicRunnable,
    RunnableConfigurableAlternatives,
)
from langchain_core.runnables.fallbacks import RunnableWithFallbacks
from langchain_core.runnables.graph import Graph
from langchain_core.runnables.utils import ConfigurableFieldSpec
from pydantic import ConfigDict

from afnio_langchain.autodiff import Variable
from afnio_langchain.loop import is_langgraph_graph
from afnio_langchain.runnables._chat import ChatCompletionRunnable
from afnio_langchain.runnables._children import replace_children
from afnio_langchain.runnables._convert import (
    PROMPT_TEMPLATES,
    TrainablePrompt,
    check_text_reply,
    convert_template,
    is_refusal_check,
    split_chat_model,
    trainable_step,
)
from afnio_langchain.runnables._parameters import parameters
from afnio_langchain.runnables._pipeline import sequence_of
from afnio_langchain.runnables._prompts_file import load_prompts, prompts_state, save_prompts
from afnio_langchain.runnables._routing import RoutingLambda, routed, routes_of
from afnio_langchain.runnables._text_functions import as_differentiable
from afnio_langchain.runnables._text_lambda import TextGenerator, TextLambda


class TrainableChain(RunnableSerializable[Any, Any]):
    """An existing chain whose prompt + chat model pairs run as differentiable steps.

    Made by :func:`make_trainable`. Running it returns what the original chain returned,
    as Variables connected to the graph: a ``Variable`` for a chain ending in a chat
    model or ``StrOutputParser``, a dict of Variables for a ``JsonOutputParser``.
    Call ``backward`` on the output, step an optimizer over :meth:`parameters`, then
    :meth:`to_langchain` for a plain chain to serve, or :meth:`save` the prompts.

    Attributes:
        bound: The converted, differentiable chain (what runs).
        original: The chain given to :func:`make_trainable` (left unchanged).
        prompts: One entry per converted prompt template, in the chain's order.

    Example:
        >>> from langchain_core.output_parsers import StrOutputParser
        >>> from langchain_core.prompts import ChatPromptTemplate
        >>> from afnio_langchain import make_trainable
        >>> from afnio_langchain.testing import ScriptedChatModel
        >>> template = ChatPromptTemplate.from_messages([("system", "Be brief."), ("human", "{q}")])
        >>> chain = make_trainable(template | ScriptedChatModel(forward="Paris") | StrOutputParser())
        >>> chain.invoke({"q": "Capital of France?"}).data
        'Paris'
        >>> saved = chain.state_dict()
        >>> chain.named_prompts()["prompt_0.message_0"].data = "Be verbose."
        >>> chain.load_state_dict(saved)
        >>> [p.data for p in chain.parameters()]
        ['Be brief.']
    """

    bound: Runnable
    original: Runnable
    prompts: list[TrainablePrompt]

    model_config = ConfigDict(arbitrary_types_allowed=True)

    @classmethod
    def is_lc_serializable(cls) -> bool:
        return False

    # -- training ---------------------------------------------------------------------
    def parameters(self) -> list[Variable]:
        """The trainable Variables, each once, in the order the chain runs them."""
        return parameters(self.bound)

    def named_prompts(self) -> dict[str, Variable]:
        """Stable key (``"prompt_0.message_0"``: template 0, message 0) -> Variable."""
        return {
            f"prompt_{k}.message_{index}": variable
            for k, prompt in enumerate(self.prompts)
            for index, variable in prompt.variables.items()
        }

    # -- export and persistence ---------------------------------------------------------
    def to_langchain(self) -> Runnable:
        """The original chain with the current prompt values baked into its templates:
        plain LangChain objects (the original models and parsers), returning what the
        original returned, with no dependency on the graph. Braces in learned text are
        escaped, so they reach the model as written."""
        exported = {id(p.template): p.export() for p in self.prompts}

        def swap(runnable: Any) -> Any:
            if id(runnable) in exported:
                return exported[id(runnable)]
            if type(runnable) is RunnableLambda:
                routes = routes_of(runnable, swap)
                return routed(runnable, routes) if routes else runnable
            return replace_children(runnable, swap)

        return swap(self.original)

    def state_dict(self) -> dict[str, Any]:
        """The prompt values as a JSON-ready dict: the prompts file's content
        (:func:`~afnio_langchain.runnables.prompts_state`, keyed by :meth:`named_prompts`)."""
        named = self.named_prompts()
        return prompts_state(list(named.values()), keys=list(named))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Set the prompt values from a prompts file's content (:meth:`state_dict`, or
        the ``prompts.json`` of ``afnio-langchain optimize`` for the same chain).

        Raises:
            PromptsFileError: Not a prompts file, a newer version, or prompts that do
                not match this chain's (by key, else by count and role).
        """
        named = self.named_prompts()
        load_prompts(list(named.values()), state, keys=list(named), source="saved prompts")

    def save(self, path: str | Path) -> None:
        """Write the prompt values to ``path``: the prompts file that ``load``,
        ``afnio-langchain evaluate --prompts`` and ``afnio_langchain.train.apply_prompts``
        read."""
        named = self.named_prompts()
        save_prompts(list(named.values()), path, keys=list(named))

    def load(self, path: str | Path) -> TrainableChain:
        """Read a prompts file (written by :meth:`save` or by ``afnio-langchain
        optimize`` for the same chain) into this chain; returns self.

        Raises:
            PromptsFileError: The file cannot be read, is of another kind, or does not
                match this chain's prompts.
        """
        named = self.named_prompts()
        load_prompts(list(named.values()), path, keys=list(named))
        return self

    # -- running: everything is the converted chain's -------------------------------------
    def get_input_schema(self, config: RunnableConfig | None = None) -> Any:
        return self.original.get_input_schema(config)

    def get_output_schema(self, config: RunnableConfig | None = None) -> Any:
        return self.bound.get_output_schema(config)

    @property
    def InputType(self) -> Any:  # noqa: N802
        return self.original.InputType

    @property
    def OutputType(self) -> Any:  # noqa: N802
        return self.bound.OutputType

    @property
    def config_specs(self) -> list[ConfigurableFieldSpec]:
        return self.bound.config_specs

    def get_graph(self, config: RunnableConfig | None = None) -> Graph:
        """The converted chain's graph: its prompts, trainable steps and parsers."""
        return self.bound.get_graph(config)

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        return self.bound.invoke(input, config, **kwargs)

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        return await self.bound.ainvoke(input, config, **kwargs)

    def batch(
        self,
        inputs: list[Any],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        return self.bound.batch(inputs, config, return_exceptions=return_exceptions, **kwargs)

    async def abatch(
        self,
        inputs: list[Any],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        return await self.bound.abatch(
            inputs, config, return_exceptions=return_exceptions, **kwargs
        )

    def stream(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Iterator[Any]:
        yield from self.bound.stream(input, config, **kwargs)

    async def astream(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[Any]:
        async for chunk in self.bound.astream(input, config, **kwargs):
            yield chunk

    def transform(
        self, input: Iterator[Any], config: RunnableConfig | None = None, **kwargs: Any
    ) -> Iterator[Any]:
        yield from self.bound.transform(input, config, **kwargs)

    async def atransform(
        self, input: AsyncIterator[Any], config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[Any]:
        async for chunk in self.bound.atransform(input, config, **kwargs):
            yield chunk


class _Converter:
    """One conversion pass over a chain (one TrainablePrompt per template object)."""

    def __init__(self, roles: Sequence[str], backward_model: Any) -> None:
        self.roles = roles
        self.backward_model = backward_model
        self.prompts: dict[int, TrainablePrompt] = {}
        self.routes: dict[int, dict[int, Runnable]] = {}  # id(function) -> its routes

    def prompt_for(self, template: ChatPromptTemplate | PromptTemplate) -> TrainablePrompt:
        # A template used twice trains one set of Variables.
        if id(template) not in self.prompts:
            self.prompts[id(template)] = convert_template(template, self.roles)
        return self.prompts[id(template)]

    def convert(self, runnable: Any) -> Any:
        if isinstance(runnable, RunnableSequence):
            return self.convert_sequence(runnable)
        if type(runnable) is RunnableLambda:
            return self.convert_function(runnable, after_step=False)
        converted = replace_children(runnable, self.convert)
        if isinstance(converted, RunnableBranch):
            return _with_text_conditions(converted)
        return converted

    def convert_function(self, function: RunnableLambda, *, after_step: bool) -> Runnable:
        """A function of the chain: a :class:`RoutingLambda` when it returns chains it
        closes over that hold prompt + model pairs; else, right after an LLM step, a
        :class:`TextLambda`; else the function as it is."""
        if id(function) not in self.routes:
            self.routes[id(function)] = {}  # a function closing over its own chain: no routes
            self.routes[id(function)] = routes_of(function, self.convert)
        routes = self.routes[id(function)]
        if routes:
            return RoutingLambda(bound=routed(function, routes, watch=True), routes=routes)
        return TextLambda(bound=function) if after_step else function

    def convert_pair(
        self, template: ChatPromptTemplate | PromptTemplate, model_step: Any
    ) -> Runnable | None:
        """The trainable step standing for ``template | model_step``; None when
        ``model_step`` is not a chat model. A model with fallbacks or configurable
        alternatives gives the same around one trainable step per model, all sharing
        the template's Variables (whichever model answers, feedback reaches them)."""
        known = id(template) in self.prompts
        pair = self._pair(template, model_step)
        if pair is None and not known:  # a fallback that is no chat model: nothing trains
            self.prompts.pop(id(template), None)
        return pair

    def _pair(
        self, template: ChatPromptTemplate | PromptTemplate, model_step: Any
    ) -> Runnable | None:
        split = split_chat_model(model_step)
        if split is not None:
            chat_model, kwargs, rewrap = split
            check_text_reply(kwargs)
            prompt = self.prompt_for(template)
            return rewrap(trainable_step(prompt, chat_model, kwargs, self.backward_model))
        if isinstance(model_step, RunnableWithFallbacks):
            options = [self._pair(template, m) for m in (model_step.runnable, *model_step.fallbacks)]
            if any(option is None for option in options):
                return None
            return model_step.model_copy(update={"runnable": options[0], "fallbacks": options[1:]})
        if isinstance(model_step, RunnableConfigurableAlternatives):
            default = self._pair(template, model_step.default)
            alternatives = {
                key: self._pair(template, alt) if isinstance(alt, Runnable) else None
                for key, alt in model_step.alternatives.items()
            }
            if default is None or any(alt is None for alt in alternatives.values()):
                return None
            return model_step.model_copy(update={"default": default, "alternatives": alternatives})
        if isinstance(model_step, DynamicRunnable) and split_chat_model(model_step.default):
            raise ValueError(
                "make_trainable: configurable_fields on the chat model after a prompt is not "
                "supported (its fields set the model's attributes, which a trainable step "
                "does not have); make the whole chain configurable, or pass the value as a "
                "call argument with model.bind(...)"
            )
        return None

    def convert_sequence(self, sequence: RunnableSequence) -> Any:
        steps, out, i = sequence.steps, [], 0
        while i < len(steps):
            step = steps[i]
            pair = None
            if isinstance(step, PROMPT_TEMPLATES) and i + 1 < len(steps):
                pair = self.convert_pair(step, steps[i + 1])
            if pair is not None:
                i += 2
            else:
                pair = self.convert(step)
                i += 1
                if pair is step or not _returns_reply(pair):  # (a step of the user's own
                    out.append(pair)  # keeps its output: what follows gets its Variable)
                    continue
                # (prompt | model).with_retry(), .with_fallbacks([...]), .with_config(...):
                # its output is the step's Variable, as for the pair itself.
            out.append(pair)
            if i < len(steps) and is_refusal_check(steps[i]):
                # Left out while training (the export keeps it): a refusal or a filtered
                # reply comes back as empty text, which the parser after it rejects.
                i += 1
                _check_parses_text(steps[i] if i < len(steps) else None)
            parsed = i < len(steps) and isinstance(steps[i], BaseOutputParser)
            if parsed:
                out.append(_differentiable_parser(steps[i]))
                i += 1
            # The functions right after the step get what they get in the original chain:
            # the model's message (no parser between) or the parser's text, the first of
            # them; others keep getting Variables (a + "\n" + b on two steps' outputs
            # stays in the graph, and a function can hand them to a step of its own).
            first = True
            while i < len(steps) and type(steps[i]) in (RunnableLambda, RunnableGenerator):
                if type(steps[i]) is RunnableGenerator:
                    out.append(TextGenerator(bound=steps[i], as_message=first and not parsed))
                else:
                    function = self.convert_function(steps[i], after_step=True)
                    if first and not parsed and isinstance(function, TextLambda):
                        function = function.model_copy(update={"as_message": True})
                    out.append(function)
                first = False
                i += 1
        if all(new is old for new, old in zip(out, steps)) and len(out) == len(steps):
            return sequence
        return out[0] if len(out) == 1 else sequence_of(out, sequence.name)


def _returns_reply(step: Any) -> bool:
    """Whether converted ``step`` returns a trainable step's reply Variable, as a pair
    does: a pair inside bindings (``with_retry``, ``with_config``), fallbacks or
    configurable alternatives, or a sequence ending in one."""
    if isinstance(step, ChatCompletionRunnable):
        return True
    if isinstance(step, RunnableBindingBase):
        return _returns_reply(step.bound)
    if isinstance(step, RunnableWithFallbacks):
        return all(_returns_reply(s) for s in (step.runnable, *step.fallbacks))
    if isinstance(step, RunnableConfigurableAlternatives):
        options = [step.default, *step.alternatives.values()]
        return all(isinstance(s, Runnable) and _returns_reply(s) for s in options)
    if isinstance(step, RunnableSequence):
        return _returns_reply(step.steps[-1])
    return False


def _with_text_conditions(branch: RunnableBranch) -> RunnableBranch:
    """``branch`` whose condition functions get text, as in the original chain
    (``lambda x: "math" in x["topic"].lower()``): a condition only picks the branch,
    so nothing it returns needs linking into the graph. The branches still get the
    Variables."""
    branches = [
        (TextLambda(bound=condition) if type(condition) is RunnableLambda else condition, step)
        for condition, step in branch.branches
    ]
    if all(new is old for (new, _), (old, _) in zip(branches, branch.branches)):
        return branch
    return branch.model_copy(update={"branches": branches})


def _check_parses_text(step: Any) -> None:
    """After langchain-openai's refusal check: refuse its parser of a pydantic schema,
    which reads the reply message's ``parsed`` field and returns a model object."""
    if step is not None and not isinstance(step, BaseOutputParser):
        raise ValueError(
            "make_trainable: with_structured_output(<pydantic model>, method='json_schema') "
            "through ChatOpenAI returns a pydantic object read from the reply message, which "
            "a trainable step (whose output is text) does not carry; pass the schema as a "
            "TypedDict or a JSON schema dict (its parser is a JsonOutputParser), or end the "
            "chain with a JsonOutputParser"
        )


def _differentiable_parser(parser: BaseOutputParser) -> Runnable:
    try:
        return as_differentiable(parser)
    except TypeError as exc:
        raise ValueError(f"make_trainable: the parser after an LLM step cannot run on Variables: {exc}") from None


def make_trainable(
    chain: Runnable,
    *,
    roles: Sequence[str] = ("system",),
    backward_model: Any = None,
) -> TrainableChain:
    """Make the prompts of an existing LangChain chain trainable.

    Finds each ``ChatPromptTemplate`` (or string ``PromptTemplate``, trained whole)
    directly followed by a chat model (possibly wrapped by ``bind``, ``with_config`` or
    ``with_retry``, or with fallbacks or configurable alternatives of its own), anywhere
    in sequences, parallels,
    ``RunnablePassthrough.assign``, bindings, fallbacks, branches and configurable
    runnables, and replaces the pair by a :class:`ChatCompletionRunnable`
    whose system messages are trainable Variables. The output parser right after the
    pair becomes its differentiable counterpart (``StrOutputParser``, JSON parsers, text
    parsers). Templates keep their own input variables; text an optimizer writes is
    inserted as a value, so braces in it never break templating. The original chain is
    not modified.

    Args:
        chain: The chain, e.g. ``ChatPromptTemplate | chat_model | StrOutputParser()``.
        roles: Which messages become trainable: ``"system"`` (default), ``"user"``,
            ``"assistant"``.
        backward_model: Model that writes the gradients (default: the process one).

    Raises:
        ValueError: No prompt + chat model pair with a message of ``roles`` was found,
            or a pair cannot be converted (chat-history placeholders, mustache/jinja2
            templates, a parser that does not return text, a model bound to tools,
            ``configurable_fields`` on the model); the message says which.

    Example:
        >>> from langchain_core.output_parsers import StrOutputParser
        >>> from langchain_core.prompts import ChatPromptTemplate
        >>> from afnio_langchain import make_trainable, set_backward_model
        >>> from afnio_langchain.testing import ScriptedChatModel
        >>> model = ScriptedChatModel(forward="Paris", feedback="Also name the country.")
        >>> set_backward_model(model)
        >>> prompt = ChatPromptTemplate.from_messages(
        ...     [("system", "Answer briefly. Reply as {{\\"answer\\": ...}}"), ("human", "{question}")])
        >>> chain = make_trainable(prompt | model | StrOutputParser())
        >>> answer = chain.invoke({"question": "Capital of France?"})
        >>> answer.backward("Too terse.")
        >>> [p.grad[0].data for p in chain.parameters()]
        ['Also name the country.']
        >>> chain.parameters()[0].data = 'Answer with the city and country. Use {"answer": ...}'
        >>> served = chain.to_langchain()
        >>> served.invoke({"question": "Capital of France?"})
        'Paris'
        >>> model.calls[-1].messages[0].content
        'Answer with the city and country. Use {"answer": ...}'
        >>> set_backward_model(None)
    """
    if not isinstance(chain, Runnable):
        raise TypeError(f"make_trainable takes a LangChain Runnable, got {type(chain).__name__}")
    unknown = set(roles) - {"system", "user", "assistant"}
    if isinstance(roles, str) or unknown:
        raise ValueError(f"roles must be a list of 'system', 'user', 'assistant'; got {roles!r}")
    converter = _Converter(tuple(roles), backward_model)
    bound = converter.convert(chain)
    prompts = list(converter.prompts.values())
    if not prompts:
        raise ValueError(
            "make_trainable found no prompt template (ChatPromptTemplate or PromptTemplate) "
            "directly followed by a chat model "
            "in this chain (looked inside sequences, parallels, assigns, bindings, fallbacks, "
            "branches and configurable runnables)"
            + (
                "; this is a LangGraph graph: for an agent, train its system prompt with "
                "afnio_langchain.agents (TrainablePromptMiddleware for create_agent, "
                "TrainablePrompt for create_react_agent, then TrainableAgent; see "
                "docs/agents.md); for a graph of your own, make_trainable the chains its "
                "nodes run and train their parameters()"
                if is_langgraph_graph(chain)
                else ""
            )
        )
    if not any(p.variables for p in prompts):
        raise ValueError(
            f"make_trainable found {len(prompts)} prompt template(s) but none has a message "
            f"of roles {list(roles)} to train (try roles=('system', 'user'))"
        )
    if len(prompts) > 1:
        for k, prompt in enumerate(prompts):
            prompt.label(step=k + 1)
    return TrainableChain(bound=bound, original=chain, prompts=prompts)
