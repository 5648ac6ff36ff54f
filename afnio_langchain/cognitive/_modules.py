"""afnio's op modules: each wraps one ``autodiff`` op so that a :class:`Module` can hold
it as a sub-module (``self.chat = cog.ChatCompletion()``) and keep the arguments of
its last call as attributes, as afnio's do."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from afnio_langchain import autodiff
from afnio_langchain.autodiff import Variable
from afnio_langchain.cognitive._module import Module


class ChatCompletion(Module):
    """The ``ChatCompletion`` op as a module: ``self.chat(model, messages, inputs,
    **completion_args)`` inside a module's ``forward``. ``model`` is any model the op
    takes (a LangChain chat model, an ``openai`` client with ``model="NAME"`` among
    the completion arguments, a ``dspy.LM``...).

    Example:
        >>> from afnio_langchain import Variable, set_backward_model
        >>> from afnio_langchain import cognitive as cog
        >>> from afnio_langchain.testing import ScriptedChatModel
        >>> model = ScriptedChatModel(forward="Ciao", feedback="Ask for capital letters.")
        >>> set_backward_model(model)
        >>> class Assistant(cog.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.chat = cog.ChatCompletion()
        ...     def forward(self, fwd_model, messages, inputs, **completion_args):
        ...         return self.chat(fwd_model, messages, inputs, **completion_args)
        >>> system = Variable("You are a helpful assistant.", role="system instruction",
        ...                   requires_grad=True)
        >>> messages = [{"role": "system", "content": [system]},
        ...             {"role": "user", "content": [Variable("Translate 'Hello' to {language}.")]}]
        >>> response = Assistant()(model, messages, inputs={"language": "Italian"})
        >>> response.data
        'Ciao'
        >>> response.backward("Use only capital letters.")
        >>> system.grad[0].data
        'Ask for capital letters.'
        >>> set_backward_model(None)
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_model("forward_model_client", None)
        self.register_chat("messages", None)
        self.register_completion_config("completion_args", None)

    def forward(
        self,
        forward_model_client: Any,
        messages: Sequence[dict[str, Any]],
        inputs: dict[str, Any] | None = None,
        **completion_args: Any,
    ) -> Variable:
        self.forward_model_client = forward_model_client
        self.messages = messages
        self.completion_args = completion_args
        return autodiff.ChatCompletion.apply(forward_model_client, messages, inputs, **completion_args)


class Add(Module):
    """The ``Add`` op as a module: numbers add, text concatenates.

    Example:
        >>> from afnio_langchain import Variable
        >>> from afnio_langchain import cognitive as cog
        >>> result = cog.Add()(Variable("abc", role="input1"), Variable("def", role="input2"))
        >>> result.data, result.role
        ('abcdef', 'input1 and input2')
    """

    def forward(self, x: Variable, y: Variable) -> Variable:
        return autodiff.Add.apply(x, y)


class Sum(Module):
    """The ``Sum`` op as a module.

    Example:
        >>> from afnio_langchain import Variable
        >>> from afnio_langchain import cognitive as cog
        >>> cog.Sum()([Variable("abc"), Variable("def"), Variable("ghi")]).data
        '<ITEM>abc</ITEM><ITEM>def</ITEM><ITEM>ghi</ITEM>'
    """

    def forward(self, x: Sequence[Variable]) -> Variable:
        return autodiff.Sum.apply(x)


class Split(Module):
    """The ``Split`` op as a module (``sep`` and ``maxsplit`` of the last call are kept
    as non-persistent buffers: call arguments, not state).

    Example:
        >>> from afnio_langchain import Variable
        >>> from afnio_langchain import cognitive as cog
        >>> parts = cog.Split()(Variable("Afnio is great!", role="sentence"), " ", 1)
        >>> [p.data for p in parts], [p.role for p in parts]
        (['Afnio', 'is great!'], ['split part 0 of sentence', 'split part 1 of sentence'])
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("sep", None, persistent=False)
        self.register_buffer("maxsplit", None, persistent=False)

    def forward(
        self, x: Variable, sep: str | Variable | None = None, maxsplit: int | Variable = -1
    ) -> tuple[Variable, ...]:
        self.sep = sep if isinstance(sep, Variable) or sep is None else Variable(sep)
        self.maxsplit = maxsplit if isinstance(maxsplit, Variable) else Variable(maxsplit)
        return autodiff.Split.apply(x, sep, maxsplit)


def _as_buffer(value: Any) -> Variable | None:
    """A call argument kept as a (non-persistent) buffer, as afnio's modules keep them."""
    if value is None or isinstance(value, Variable):
        return value
    return Variable(int(value) if isinstance(value, bool) else value)


class DeterministicEvaluator(Module):
    """The ``DeterministicEvaluator`` op as a module.

    Example:
        >>> from afnio_langchain import Variable
        >>> from afnio_langchain import cognitive as cog
        >>> score, _ = cog.DeterministicEvaluator()(
        ...     Variable(["green", "blue"]), ["green", "red"], lambda p, t: int(p == t),
        ...     "exact match", None, sum, "summation")
        >>> score.data
        1
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_function("eval_fn", None)
        self.register_buffer("eval_fn_purpose", None, persistent=False)
        self.register_function("success_fn", None)
        self.register_function("reduction_fn", None)
        self.register_buffer("reduction_fn_purpose", None, persistent=False)

    def forward(
        self,
        prediction: Variable,
        target: Any,
        eval_fn: Callable[[Any, Any], Any],
        eval_fn_purpose: str | Variable | None = None,
        success_fn: Callable[[Any], bool] | None = None,
        reduction_fn: Callable[[list[Any]], Any] | None = None,
        reduction_fn_purpose: str | Variable | None = None,
    ) -> tuple[Variable, Variable]:
        self.eval_fn, self.success_fn, self.reduction_fn = eval_fn, success_fn, reduction_fn
        self.eval_fn_purpose = _as_buffer(eval_fn_purpose)
        self.reduction_fn_purpose = _as_buffer(reduction_fn_purpose)
        return autodiff.DeterministicEvaluator.apply(
            prediction, target, eval_fn, eval_fn_purpose, success_fn, reduction_fn, reduction_fn_purpose
        )


class ExactMatchEvaluator(Module):
    """The ``ExactMatchEvaluator`` op as a module (scores summed over a minibatch by
    default).

    Example:
        >>> from afnio_langchain import Variable
        >>> from afnio_langchain import cognitive as cog
        >>> cog.ExactMatchEvaluator()(Variable(["green", "blue"]), ["red", "blue"])[0].data
        1
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_function("reduction_fn", None)
        self.register_buffer("reduction_fn_purpose", None, persistent=False)

    def forward(
        self,
        prediction: Variable,
        target: Any,
        reduction_fn: Callable[[list[Any]], Any] | None = sum,
        reduction_fn_purpose: str | Variable | None = "summation",
    ) -> tuple[Variable, Variable]:
        self.reduction_fn = reduction_fn
        self.reduction_fn_purpose = _as_buffer(reduction_fn_purpose)
        return autodiff.ExactMatchEvaluator.apply(prediction, target, reduction_fn, reduction_fn_purpose)


class LMJudgeEvaluator(Module):
    """The ``LMJudgeEvaluator`` op as a module.

    Example:
        >>> from afnio_langchain import Variable
        >>> from afnio_langchain import cognitive as cog
        >>> from afnio_langchain.testing import ScriptedChatModel
        >>> judge = ScriptedChatModel(judge='{"score": 1, "explanation": "Accurate."}')
        >>> messages = [{"role": "user", "content": [Variable("Is {prediction} = {target}?")]}]
        >>> score, why = cog.LMJudgeEvaluator()(judge, messages, Variable("Ciao"), "Ciao")
        >>> score.data, why.data
        (1.0, 'Accurate.')
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_model("forward_model_client", None)
        self.register_chat("messages", None)
        self.register_function("success_fn", None)
        self.register_function("reduction_fn", None)
        self.register_buffer("reduction_fn_purpose", None, persistent=False)
        self.register_buffer("eval_mode", None, persistent=False)
        self.register_completion_config("completion_args", None)

    def forward(
        self,
        forward_model_client: Any,
        messages: Sequence[dict[str, Any]],
        prediction: Variable,
        target: Any = None,
        inputs: dict[str, Any] | None = None,
        success_fn: Callable[[Any], bool] | None = None,
        reduction_fn: Callable[[list[Any]], Any] | None = sum,
        reduction_fn_purpose: str | Variable | None = "summation",
        eval_mode: bool | Variable = True,
        **completion_args: Any,
    ) -> tuple[Variable, Variable]:
        self.forward_model_client, self.messages = forward_model_client, messages
        self.success_fn, self.reduction_fn = success_fn, reduction_fn
        self.reduction_fn_purpose = _as_buffer(reduction_fn_purpose)
        self.eval_mode = _as_buffer(eval_mode)
        self.completion_args = completion_args
        return autodiff.LMJudgeEvaluator.apply(
            forward_model_client, messages, prediction, target, inputs, success_fn, reduction_fn,
            reduction_fn_purpose, eval_mode, **completion_args,
        )
