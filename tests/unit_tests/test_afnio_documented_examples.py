"""afnio 0.3.7's documented examples, run against this package with only the imports
changed.

Adapted from afnio 0.3.7 (https://github.com/Tellurio-AI/afnio, PyPI ``afnio==0.3.7``,
AGPL-3.0): the docstring examples of ``afnio/autodiff/lm_ops.py``, ``basic_ops.py``,
``evaluator.py``, ``cognitive/functional.py``, ``cognitive/modules/chat_completion.py``
and ``optim/optimizer.py``, and the local assertions of ``tests/tellurio/
test_variable_sync.py`` (the server round trips dropped: there is no server). Each
test names its source. The inputs and the documented outputs are afnio's; the OpenAI
client (which only ever produced the documented replies) is replaced by
``ScriptedChatModel`` scripted with those replies, and ``afnio.set_backward_model_client
("openai/gpt-4o")`` by the same call given that model.

Where this package's documented behaviour differs on purpose, the test asserts ours
and says so with ``DIFFERENCE:``; docs/afnio.md lists every one.
"""

from __future__ import annotations

import json

import pytest

import afnio_langchain as afnio
import afnio_langchain.cognitive as cog
import afnio_langchain.cognitive.functional as F
from afnio_langchain import Variable, set_backward_model_client
from afnio_langchain.autodiff import (
    Add,
    ChatCompletion,
    DeterministicEvaluator,
    ExactMatchEvaluator,
    LMJudgeEvaluator,
    Split,
    Sum,
)
from afnio_langchain.testing import ScriptedChatModel

TRANSLATION_FEEDBACK = "The system instruction should enforce the use of capital letters only."
REASSESS = "Reassess the criteria that led to the initial prediction of 'green'."
COMBINED = "Here is the combined feedback we got for this specific {} and other variables: "


@pytest.fixture(autouse=True)
def no_backward_model_left_behind():
    yield
    afnio.set_backward_model(None)


@pytest.fixture
def model_client():
    """What the documented OpenAI client answered: 'Ciao' for Italian, 'Hola' otherwise."""
    model = ScriptedChatModel(
        forward=lambda request: "Ciao" if "Italian" in request else "Hola",
        feedback=TRANSLATION_FEEDBACK,
    )
    set_backward_model_client(model)
    return model


def translation_messages():
    system = Variable("You are a helpful assistant.", role="system instruction", requires_grad=True)
    user = Variable("Translate 'Hello' to {language}.", role="user query")
    return system, [{"role": "system", "content": [system]}, {"role": "user", "content": [user]}]


# --------------------------------------------------------------------------- lm_ops.py


def test_lm_ops_chat_completion_scalar(model_client):
    """afnio/autodiff/lm_ops.py, ChatCompletion, "Example with scalar inputs"."""
    system, messages = translation_messages()
    inputs = {"language": Variable("Italian", role="language")}
    response = ChatCompletion.apply(model_client, messages, inputs=inputs, temperature=0.7)
    assert response.data == "Ciao"
    feedback = Variable("Use only capital letters.", role="feedback")
    response.backward(feedback)
    assert system.grad[0].data == TRANSLATION_FEEDBACK


def test_lm_ops_chat_completion_batched(model_client):
    """afnio/autodiff/lm_ops.py, ChatCompletion, "Example with batched inputs"."""
    _, messages = translation_messages()
    inputs = {"language": [Variable("Italian", role="language"), Variable("Spanish", role="language")]}
    response = ChatCompletion.apply(model_client, messages, inputs=inputs, temperature=0.7)
    assert response.data == ["Ciao", "Hola"]


# --------------------------------------------------------------------------- basic_ops.py


def test_basic_ops_add_scalar():
    """afnio/autodiff/basic_ops.py, Add, "Example with scalar inputs"."""
    x = Variable(data="abc", role="first input", requires_grad=True)
    y = Variable(data="def", role="second input", requires_grad=False)
    result = Add.apply(x, y)
    assert result.data == "abcdef"
    assert result.role == "first input and second input"
    assert result.requires_grad is True
    g = Variable(data="MY_FEEDBACK", role="add gradient")
    result.backward(g)
    assert x.grad[0].data == COMBINED.format("first input") + "MY_FEEDBACK"
    assert x.grad[0].role == "feedback to first input"


def test_basic_ops_add_batched():
    """afnio/autodiff/basic_ops.py, Add, "Example with batched inputs"."""
    x = Variable(data=[1, 2, 3], role="first input", requires_grad=True)
    y = Variable(data=[4, 5, 6], role="second input", requires_grad=False)
    result = Add.apply(x, y)
    assert result.data == [5, 7, 9]
    assert result.role == "first input and second input"
    assert result.requires_grad is True


def test_basic_ops_sum_scalar():
    """afnio/autodiff/basic_ops.py, Sum, "Example with scalar inputs"."""
    x = Variable(data="abc", role="first input", requires_grad=True)
    y = Variable(data="def", role="second input", requires_grad=False)
    result = Sum.apply([x, y])
    assert result.data == "<ITEM>abc</ITEM><ITEM>def</ITEM>"
    assert result.role == "first input and second input"
    assert result.requires_grad is True
    g = Variable(data="MY_FEEDBACK", role="add gradient")
    result.backward(g)
    assert x.grad[0].data == COMBINED.format("first input") + "MY_FEEDBACK"
    assert x.grad[0].role == "feedback to first input"


def test_basic_ops_sum_batched():
    """afnio/autodiff/basic_ops.py, Sum, "Example with batched inputs"."""
    x = Variable(data=[1, 2, 3.5], role="first input", requires_grad=True)
    y = Variable(data=[4, 5, 6], role="second input", requires_grad=False)
    result = Sum.apply([x, y])
    assert result.data == [5, 7, 9.5]
    assert result.role == "first input and second input"
    assert result.requires_grad is True


def test_basic_ops_split_scalar():
    """afnio/autodiff/basic_ops.py, Split, "Example with scalar inputs"."""
    x = Variable(data="afnio is great!", role="sentence", requires_grad=True)
    result = Split.apply(x, sep=" ", maxsplit=1)
    assert [var.data for var in result] == ["afnio", "is great!"]
    assert result[0].role == "split part 0 of sentence"
    g_1 = Variable(data="MY_FIRST_FEEDBACK", role="gradient")
    g_2 = Variable(data="MY_SECOND_FEEDBACK", role="gradient")
    result[0].backward(g_1, retain_graph=True)
    result[1].backward(g_2)
    assert x.grad[0].data == COMBINED.format("sentence") + "<ITEM>MY_FIRST_FEEDBACK</ITEM><ITEM></ITEM>"
    assert x.grad[0].role == "feedback to sentence"
    assert x.grad[1].data == COMBINED.format("sentence") + "<ITEM></ITEM><ITEM>MY_SECOND_FEEDBACK</ITEM>"
    assert x.grad[1].role == "feedback to sentence"


def test_basic_ops_split_batched():
    """afnio/autodiff/basic_ops.py, Split, "Example with batched inputs"."""
    x = Variable(data=["afnio is great!", "Deep learning"], role="sentences", requires_grad=True)
    result = Split.apply(x, sep=" ", maxsplit=2)
    assert [var.data for var in result] == [["afnio", "Deep"], ["is", "learning"], ["great!", ""]]
    g = Variable(data="MY_FEEDBACK", role="gradient")
    result[1].backward(g)
    documented = COMBINED.format("sentences") + "<ITEM></ITEM><ITEM>MY_FEEDBACK</ITEM><ITEM></ITEM>"
    # DIFFERENCE: a minibatch's gradient holds one text per item (afnio: one text).
    assert x.grad[0].data == [documented, documented]
    assert x.grad[0].role == "feedback to sentences"


# --------------------------------------------------------------------------- evaluator.py


def exact_match_fn(p: str, t: str) -> int:
    return 1 if p == t else 0


SCALAR_EXPLANATION = (
    "The evaluation function, designed for 'exact match', compared the <DATA> field of the "
    "predicted variable ('green') with the <DATA> field of the target variable ('red'), "
    "resulting in a score: 0."
)
BATCHED_EXPLANATION = (
    "The evaluation function, designed for 'exact match', compared the <DATA> fields of the "
    "predicted variable and the target variable across all samples in the batch, generating "
    "individual scores for each pair. These scores were then aggregated using the reduction "
    "function 'summation', resulting in a final aggregated score: 1."
)


@pytest.fixture
def reassessing_backward_model():
    """What the documented backward model wrote for the 'green' prediction."""
    model = ScriptedChatModel(feedback=REASSESS)
    set_backward_model_client(model)
    return model


def green_prediction(batched: bool) -> Variable:
    return Variable(
        data=["green", "blue"] if batched else "green", role="color prediction", requires_grad=True
    )


def test_evaluator_deterministic_scalar(reassessing_backward_model):
    """afnio/autodiff/evaluator.py, DeterministicEvaluator, "Example with scalar inputs"."""
    prediction = green_prediction(batched=False)
    target = "red"
    score, explanation = DeterministicEvaluator.apply(prediction, target, exact_match_fn, "exact match")
    assert score.data == 0
    assert explanation.data == SCALAR_EXPLANATION
    explanation.backward()
    assert prediction.grad[0].data == REASSESS


def test_evaluator_deterministic_batched(reassessing_backward_model):
    """afnio/autodiff/evaluator.py, DeterministicEvaluator, "Example with batched inputs"."""
    prediction = green_prediction(batched=True)
    target = ["red", "blue"]
    score, explanation = DeterministicEvaluator.apply(
        prediction, target, exact_match_fn, "exact match",
        reduction_fn=sum, reduction_fn_purpose="summation",
    )
    assert score.data == 1
    assert explanation.data == BATCHED_EXPLANATION
    explanation.backward()
    # DIFFERENCE: one text per item; the item scored correct ('blue') gets none and
    # costs no backward call.
    assert prediction.grad[0].data == [REASSESS, ""]
    assert len(reassessing_backward_model.calls_of("backward")) == 1


def test_evaluator_exact_match_scalar(reassessing_backward_model):
    """afnio/autodiff/evaluator.py, ExactMatchEvaluator, "Example with scalar inputs"
    (the documented ``target = "red",`` is a one-item tuple, kept as written)."""
    prediction = green_prediction(batched=False)
    target = ("red",)
    score, explanation = ExactMatchEvaluator.apply(prediction, target)
    assert score.data == 0
    assert explanation.data == SCALAR_EXPLANATION
    explanation.backward()
    assert prediction.grad[0].data == REASSESS


def test_evaluator_exact_match_batched(reassessing_backward_model):
    """afnio/autodiff/evaluator.py, ExactMatchEvaluator, "Example with batched inputs"."""
    prediction = green_prediction(batched=True)
    target = ["red", "blue"]
    score, explanation = ExactMatchEvaluator.apply(prediction, target)
    assert score.data == 1
    assert explanation.data == BATCHED_EXPLANATION
    explanation.backward()
    # DIFFERENCE: one text per item, none for the correct one.
    assert prediction.grad[0].data == [REASSESS, ""]


JUDGE_EXPLANATION = "The translated text is in Spanish, but the expected is in Italian."
JUDGE_BATCHED_EXPLANATION = (
    "The evaluation function, designed using an LM as the judge, compared the <DATA> fields of "
    "the predicted variable and the target variable across all samples in the batch. These "
    "scores were then aggregated using the reduction function 'summation', resulting in a "
    "final aggregated score: 1."
)
ITALIAN = "The translated text should be in Italian."


@pytest.fixture
def judge_model():
    """What the documented judge answered: false for 'Hola Mundo', true otherwise."""

    def verdict(request: str) -> str:
        if "Hola Mundo" in request:
            return json.dumps({"score": False, "explanation": JUDGE_EXPLANATION})
        return '{"score": true, "explanation": "The translation is accurate."}'

    model = ScriptedChatModel(judge=verdict, feedback=ITALIAN)
    set_backward_model_client(model)
    return model


def judge_messages():
    task = Variable("Evaluate if the translation is accurate.", role="evaluation task", requires_grad=True)
    format = Variable("Provide 'score' (true/false) and 'explanation' in JSON.", role="output format")
    user = Variable("<PREDICTION>{prediction}</PREDICTION><TARGET>{target}</TARGET>", role="user query")
    return [{"role": "system", "content": [task, format]}, {"role": "user", "content": [user]}]


def test_evaluator_lm_judge_scalar(judge_model):
    """afnio/autodiff/evaluator.py, LMJudgeEvaluator, "Example with scalar inputs"."""
    model = judge_model
    messages = judge_messages()
    prediction = Variable("Hola Mundo", role="translated text", requires_grad=True)
    target = Variable("Ciao Mondo", role="expected output")
    score, explanation = LMJudgeEvaluator.apply(model, messages, prediction, target, temperature=0.5)
    assert score.data == False  # noqa: E712 - the documented value (held as 0.0 here)
    assert explanation.data == JUDGE_EXPLANATION
    explanation.backward()
    assert prediction.grad[0].data == ITALIAN


def test_evaluator_lm_judge_batched(judge_model):
    """afnio/autodiff/evaluator.py, LMJudgeEvaluator, "Example with batched inputs"."""
    model = judge_model
    messages = judge_messages()
    prediction = Variable(data=["Hola Mundo", "Salve a tutti"], role="translated text", requires_grad=True)
    target = ["Ciao Mondo", "Salve a tutti"]
    score, explanation = LMJudgeEvaluator.apply(
        model, messages, prediction, target, reduction_fn=sum, reduction_fn_purpose="summation"
    )
    assert score.data == 1
    assert explanation.data == JUDGE_BATCHED_EXPLANATION


# --------------------------------------------------------------------------- functional.py


def test_functional_add_scalar():
    """afnio/cognitive/functional.py, add, "Example with scalar inputs" (the doc reads
    ``x.grad.data``, an attribute a list does not have, in afnio too: ``x.grad[0]``)."""
    x = Variable(data="abc", role="first input", requires_grad=True)
    y = Variable(data="def", role="second input", requires_grad=False)
    result = F.add(x, y)
    assert (result.data, result.role, result.requires_grad) == ("abcdef", "first input and second input", True)
    result.backward(Variable(data="MY_FEEDBACK", role="add gradient"))
    assert x.grad[0].data == COMBINED.format("first input") + "MY_FEEDBACK"
    assert x.grad[0].role == "feedback to first input"


def test_functional_add_batched():
    """afnio/cognitive/functional.py, add, "Example with batched inputs"."""
    result = F.add(Variable(data=[1, 2, 3], role="first input", requires_grad=True),
                   Variable(data=[4, 5, 6], role="second input", requires_grad=False))
    assert (result.data, result.role, result.requires_grad) == ([5, 7, 9], "first input and second input", True)


def test_functional_sum_scalar():
    """afnio/cognitive/functional.py, sum, "Example with scalar inputs" (``x.grad[0]``
    as above)."""
    x = Variable(data="abc", role="first input", requires_grad=True)
    y = Variable(data="def", role="second input", requires_grad=False)
    result = F.sum([x, y])
    assert result.data == "<ITEM>abc</ITEM><ITEM>def</ITEM>"
    assert (result.role, result.requires_grad) == ("first input and second input", True)
    result.backward(Variable(data="MY_FEEDBACK", role="add gradient"))
    assert x.grad[0].data == COMBINED.format("first input") + "MY_FEEDBACK"
    assert x.grad[0].role == "feedback to first input"


def test_functional_sum_batched():
    """afnio/cognitive/functional.py, sum, "Example with batched inputs"."""
    result = F.sum([Variable(data=[1, 2, 3.5], role="first input", requires_grad=True),
                    Variable(data=[4, 5, 6], role="second input", requires_grad=False)])
    assert (result.data, result.role, result.requires_grad) == ([5, 7, 9.5], "first input and second input", True)


def test_functional_split_scalar():
    """afnio/cognitive/functional.py, split, "Example with scalar inputs"."""
    x = Variable(data="afnio is great!", role="sentence", requires_grad=True)
    result = F.split(x, sep=" ", maxsplit=1)
    assert [var.data for var in result] == ["afnio", "is great!"]
    assert result[0].role == "split part 0 of sentence"
    result[0].backward(Variable(data="MY_FIRST_FEEDBACK", role="gradient"), retain_graph=True)
    result[1].backward(Variable(data="MY_SECOND_FEEDBACK", role="gradient"))
    assert x.grad[0].data == COMBINED.format("sentence") + "<ITEM>MY_FIRST_FEEDBACK</ITEM><ITEM></ITEM>"
    assert x.grad[1].data == COMBINED.format("sentence") + "<ITEM></ITEM><ITEM>MY_SECOND_FEEDBACK</ITEM>"
    assert [g.role for g in x.grad] == ["feedback to sentence"] * 2


def test_functional_split_batched():
    """afnio/cognitive/functional.py, split, "Example with batched inputs"."""
    x = Variable(data=["afnio is great!", "Deep learning"], role="sentences", requires_grad=True)
    result = F.split(x, sep=" ", maxsplit=2)
    assert [var.data for var in result] == [["afnio", "Deep"], ["is", "learning"], ["great!", ""]]
    result[1].backward(Variable(data="MY_FEEDBACK", role="gradient"))
    documented = COMBINED.format("sentences") + "<ITEM></ITEM><ITEM>MY_FEEDBACK</ITEM><ITEM></ITEM>"
    assert x.grad[0].data == [documented, documented]  # DIFFERENCE: one text per item
    assert x.grad[0].role == "feedback to sentences"


def test_functional_chat_completion_scalar(model_client):
    """afnio/cognitive/functional.py, chat_completion, "Example with scalar inputs" (the
    doc prints 'Ciao' and then 'Hola' for one Italian input: 'Ciao' is the reply)."""
    system, messages = translation_messages()
    response = F.chat_completion(model_client, messages, inputs={"language": Variable("Italian", role="language")},
                                 temperature=0.7)
    assert response.data == "Ciao"
    response.backward(Variable("Use only capital letters.", role="feedback"))
    assert system.grad[0].data == TRANSLATION_FEEDBACK


def test_functional_chat_completion_batched(model_client):
    """afnio/cognitive/functional.py, chat_completion, "Example with batched inputs"."""
    _, messages = translation_messages()
    inputs = {"language": [Variable("Italian", role="language"), Variable("Spanish", role="language")]}
    assert F.chat_completion(model_client, messages, inputs=inputs, temperature=0.7).data == ["Ciao", "Hola"]


def test_functional_lm_judge_scalar(judge_model):
    """afnio/cognitive/functional.py, lm_judge_evaluator, "Example with scalar inputs"."""
    prediction = Variable("Hola Mundo", role="translated text", requires_grad=True)
    target = Variable("Ciao Mondo", role="expected output")
    score, explanation = F.lm_judge_evaluator(judge_model, judge_messages(), prediction, target, temperature=0.5)
    assert score.data == False  # noqa: E712
    assert explanation.data == JUDGE_EXPLANATION
    explanation.backward()
    assert prediction.grad[0].data == ITALIAN


def test_functional_lm_judge_batched(judge_model):
    """afnio/cognitive/functional.py, lm_judge_evaluator, "Example with batched inputs"."""
    prediction = Variable(data=["Hola Mundo", "Salve a tutti"], role="translated text", requires_grad=True)
    target = ["Ciao Mondo", "Salve a tutti"]
    score, explanation = F.lm_judge_evaluator(
        judge_model, judge_messages(), prediction, target, reduction_fn=sum, reduction_fn_purpose="summation"
    )
    assert score.data == 1
    assert explanation.data == JUDGE_BATCHED_EXPLANATION
    explanation.backward()
    assert prediction.grad[0].data == [ITALIAN, ""]  # DIFFERENCE: one text per item
    assert len(judge_model.calls_of("backward")) == 1  # the accurate item costs no call


def test_functional_deterministic_scalar(reassessing_backward_model):
    """afnio/cognitive/functional.py, deterministic_evaluator, "Example with scalar inputs"."""
    prediction = green_prediction(batched=False)
    score, explanation = F.deterministic_evaluator(prediction, "red", exact_match_fn, "exact match")
    assert score.data == 0
    assert explanation.data == SCALAR_EXPLANATION
    explanation.backward()
    assert prediction.grad[0].data == REASSESS


def test_functional_deterministic_batched(reassessing_backward_model):
    """afnio/cognitive/functional.py, deterministic_evaluator, "Example with batched inputs"."""
    prediction = green_prediction(batched=True)
    score, explanation = F.deterministic_evaluator(
        prediction, ["red", "blue"], exact_match_fn, "exact match",
        reduction_fn=sum, reduction_fn_purpose="summation",
    )
    assert score.data == 1
    assert explanation.data == BATCHED_EXPLANATION
    explanation.backward()
    assert prediction.grad[0].data == [REASSESS, ""]  # DIFFERENCE: one text per item


def test_functional_exact_match_scalar(reassessing_backward_model):
    """afnio/cognitive/functional.py, exact_match_evaluator, "Example with scalar inputs"."""
    prediction = green_prediction(batched=False)
    target = ("red",)  # the documented `target = "red",`
    score, explanation = F.exact_match_evaluator(prediction, target)
    assert score.data == 0
    assert explanation.data == SCALAR_EXPLANATION
    explanation.backward()
    assert prediction.grad[0].data == REASSESS


def test_functional_exact_match_batched(reassessing_backward_model):
    """afnio/cognitive/functional.py, exact_match_evaluator, "Example with batched inputs"."""
    prediction = green_prediction(batched=True)
    score, explanation = F.exact_match_evaluator(prediction, ["red", "blue"])
    assert score.data == 1
    assert explanation.data == BATCHED_EXPLANATION
    explanation.backward()
    assert prediction.grad[0].data == [REASSESS, ""]  # DIFFERENCE: one text per item


# --------------------------------------------------------------------------- modules/chat_completion.py


def test_module_chat_completion_assistant(model_client):
    """afnio/cognitive/modules/chat_completion.py, ChatCompletion (the ``Assistant``
    module); ``OpenAI()`` is the scripted model, ``fwd_model_args`` kept as written."""
    fwd_model_client = model_client
    fwd_model_args = {"model": "gpt-4o", "temperature": 0.7}

    class Assistant(cog.Module):
        def __init__(self):
            super().__init__()
            self.chat = cog.ChatCompletion()

        def forward(self, fwd_model, messages, inputs, **completion_args):
            return self.chat(fwd_model, messages, inputs, **completion_args)

    system, messages = translation_messages()
    language = afnio.Variable("Italian", role="language")
    agent = Assistant()
    response = agent(fwd_model_client, messages, inputs={"language": language}, **fwd_model_args)
    assert response.data == "Ciao"
    response.backward(Variable("Use only capital letters.", role="feedback"))
    assert system.grad[0].data == TRANSLATION_FEEDBACK
    assert agent.chat.completion_args == fwd_model_args  # the module keeps its last call's arguments


# --------------------------------------------------------------------------- optim/optimizer.py


def test_optimizer_step_with_a_closure():
    """afnio/optim/optimizer.py, Optimizer.step, the closure example: the closure clears
    the gradients, runs the agent, computes and backpropagates the loss, and ``step``
    returns it."""
    model = ScriptedChatModel(forward="four", feedback="Ask for digits.", optimizer="Answer with digits.")
    set_backward_model_client(model)
    system = cog.Parameter("Answer.", role="system prompt")
    optimizer = afnio.optim.TGD([system], model_client=model, model="gpt-5", momentum=3, temperature=1.0)
    dataset = [(Variable("2+2?"), "4")]
    for input, target in dataset:

        def closure(input=input, target=target):  # afnio's closure, run at once by step()
            optimizer.clear_grad()
            output = ChatCompletion.apply(model, [{"role": "system", "content": [system]},
                                                  {"role": "user", "content": [input]}])
            loss = F.exact_match_evaluator(output, target)
            loss[1].backward()
            return loss

        loss = optimizer.step(closure)
    assert loss[0].data == 0
    assert system.data == "Answer with digits."


# --------------------------------------------------------------------------- tests/tellurio/test_variable_sync.py


@pytest.fixture
def variable():
    """test_variable_sync.py's ``variable`` fixture, with its initial-state assertions."""
    var = afnio.Variable(data="Tellurio", role="input variable", requires_grad=True)
    assert var.data == "Tellurio"
    assert var.role == "input variable"
    assert var.requires_grad is True
    assert var._retain_grad is False
    assert var._grad == []
    assert var._output_nr == 0
    assert var._grad_fn is None
    assert var.is_leaf is True
    assert var.variable_id is not None
    return var


@pytest.mark.parametrize("field,value", [("data", "Tellurio is great!"), ("role", "output"), ("requires_grad", False)])
def test_variable_set_field(variable, field, value):
    """test_set_field_triggers_notification (local part)."""
    setattr(variable, field, value)
    assert value == getattr(variable, field)


def test_variable_multiple_set_field_order(variable):
    """test_multiple_set_field_notification_order (local part)."""
    for val in [10, 20, 30, 40, 50]:
        variable.data = val
        assert val == variable.data


def test_variable_requires_grad_method(variable):
    """test_requires_grad_method_triggers_notification (local part)."""
    variable.requires_grad_(False)
    assert variable.requires_grad is False
    assert variable.is_leaf is True


def test_variable_set_output_nr(variable):
    """test_set_output_nr_triggers_notification (local part)."""
    variable.output_nr = 3
    assert variable.output_nr == 3


def test_variable_set_grad(variable):
    """test_set_grad_triggers_notification (local part)."""
    grad_1 = afnio.Variable(data="gradient", role="grad_1", requires_grad=False)
    grad_2 = afnio.Variable(data="gradient", role="grad_2", requires_grad=False)
    variable.grad = [grad_1, grad_2]
    assert variable.grad == [grad_1, grad_2]


def test_variable_append_grad(variable):
    """test_append_grad_triggers_notification (local part): the grad list is the same
    object after each append."""
    grad_list_id = id(variable.grad)
    grad_1 = afnio.Variable(data="gradient", role="grad_1", requires_grad=False)
    variable.append_grad(grad_1)
    assert len(variable.grad) == 1
    assert variable.grad[0].variable_id == grad_1.variable_id
    assert grad_list_id == id(variable.grad)
    grad_2 = afnio.Variable(data="gradient", role="grad_2", requires_grad=False)
    variable.append_grad(grad_2)
    assert len(variable.grad) == 2
    assert variable.grad[0].variable_id == grad_1.variable_id
    assert variable.grad[1].variable_id == grad_2.variable_id
    assert grad_list_id == id(variable.grad)


def test_variable_retain_grad_on_a_forced_non_leaf(variable):
    """test_retain_grad_method_triggers_notification (local part)."""
    variable.is_leaf = False  # the test forces the variable to be a non-leaf
    variable.retain_grad()
    assert variable._retain_grad is True


def test_variable_copy(variable):
    """test_copy_method_triggers_notifications (local part)."""
    src = afnio.Variable(data=123, role="copied", requires_grad=False)
    variable.copy_(src)
    assert variable.data == 123
    assert variable.role == "copied"
    assert variable.requires_grad is False


@pytest.mark.parametrize("a_requires_grad,b_requires_grad", [(True, False), (False, False), (True, True)])
def test_variable_add(a_requires_grad, b_requires_grad):
    """TestClientToServerVariableSync.test_variable_add."""
    a = afnio.Variable("foo", requires_grad=a_requires_grad)
    b = afnio.Variable("bar", requires_grad=b_requires_grad)
    c = a + b
    assert c.data == "foobar"
    assert c.requires_grad == (a_requires_grad or b_requires_grad)
    if a_requires_grad or b_requires_grad:
        assert c.grad_fn is not None
    else:
        assert c.grad_fn is None


@pytest.mark.parametrize("a_requires_grad,b_requires_grad", [(True, False), (False, False), (True, True)])
def test_variable_iadd(a_requires_grad, b_requires_grad):
    """TestClientToServerVariableSync.test_variable_iadd."""
    a = afnio.Variable("foo", requires_grad=a_requires_grad)
    b = afnio.Variable("bar", requires_grad=b_requires_grad)
    a_id_before = a.variable_id
    a_requires_grad_before = a.requires_grad
    a += b
    assert a.data == "foobar"
    assert a.requires_grad == (a_requires_grad_before or b_requires_grad)
    assert a.variable_id == a_id_before  # In-place, so same ID
    if a_requires_grad_before or b_requires_grad:
        assert a.grad_fn is not None
    else:
        assert a.grad_fn is None


# --------------------------------------------------------------------------- _variable.py, serialization.py


def test_variable_shape_docstring():
    """afnio/_variable.py, Variable.shape (the flat cases; nested lists are a
    DIFFERENCE: a Variable holds one value or a flat minibatch here)."""
    assert Variable(data="abc").shape == ()
    assert Variable(data=[1, 2, 3]).shape == (3,)
    with pytest.raises(TypeError):
        Variable(data=[[1, 2], [3, 4]])


def test_serialization_save_and_load(tmp_path):
    """afnio/serialization.py, save and load: to a file and to an io.BytesIO buffer."""
    import io

    x = afnio.Variable(data="You are a doctor.", role="system prompt")
    afnio.save(x, tmp_path / "variable.hf")
    buffer = io.BytesIO()
    afnio.save(x, buffer)
    buffer.seek(0)
    for loaded in (afnio.load(tmp_path / "variable.hf"), afnio.load(buffer)):
        assert (loaded.data, loaded.role, loaded.requires_grad) == (x.data, x.role, False)
