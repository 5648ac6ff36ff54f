"""Train a multi-step LCEL pipeline end to end: retrieve -> draft -> critique -> final.

Three LLM steps, each with a trainable system prompt, composed with ordinary LCEL
(dict coercion, ``RunnablePassthrough.assign``, ``itemgetter``, a lambda retriever and
a differentiable ``TextFunction``). One ``backward()`` on the final answer puts
textual gradients on all three system prompts; one TGD step rewrites them.

Offline by default, with a scripted fake model::

    python examples/lcel_pipeline.py

Against any OpenAI-compatible endpoint (through ``langchain_openai.ChatOpenAI``)::

    AFNIO_OPENAI_BASE_URL=https://api.openai.com/v1 AFNIO_MODEL=gpt-4o-mini \\
        OPENAI_API_KEY=... python examples/lcel_pipeline.py
"""

from __future__ import annotations

import os
from operator import itemgetter
from typing import Any

from langchain_core.runnables import Runnable, RunnableLambda, RunnablePassthrough

from afnio_langchain import (
    ChatCompletionRunnable,
    Variable,
    get_usage,
    parameters,
    set_backward_model,
)
from afnio_langchain.optim import TGD
from afnio_langchain.runnables import TextFunction

NOTES = {
    "france": "France is a country in Western Europe. Its capital and largest city is Paris.",
    "japan": "Japan is an island country in East Asia. Its capital is Tokyo.",
}
QUESTION = "What is the capital of France?"
FEEDBACK = "The final answer must name both the city and the country, in one sentence."

PROMPTS = {
    "drafter": "You draft an answer to the question using only the notes.",
    "critic": "You point out what the draft gets wrong or leaves out.",
    "finalizer": "You write the final answer from the draft and the critique.",
}


def retrieve(question: str) -> str:
    """A toy retriever: the notes whose key appears in the question."""
    found = [text for key, text in NOTES.items() if key in question.lower()]
    return "\n".join(found) or "No notes found."


def strip_label(text: str) -> str:
    """Drop a leading "Final answer:" label, if the model wrote one."""
    head, sep, tail = text.partition("Final answer:")
    return (tail if sep else head).strip()


def build_pipeline(model: Any) -> tuple[Runnable, dict[str, Variable]]:
    """The pipeline and its trainable system prompts (name -> Variable)."""
    prompts = {
        name: Variable(text, role=f"{name} system prompt", requires_grad=True)
        for name, text in PROMPTS.items()
    }

    def llm(name: str, user_template: str) -> ChatCompletionRunnable:
        return ChatCompletionRunnable(
            model=model,
            messages=[("system", prompts[name]), ("user", user_template)],
            output_role=f"{name} output",
        ).with_config(run_name=name)

    pipeline = (
        {"question": RunnablePassthrough(), "notes": RunnableLambda(retrieve)}
        | RunnablePassthrough.assign(draft=llm("drafter", "Question: {question}\nNotes: {notes}"))
        | RunnablePassthrough.assign(
            critique=llm("critic", "Question: {question}\nDraft: {draft}")
        )
        | RunnablePassthrough.assign(
            answer=llm("finalizer", "Question: {question}\nDraft: {draft}\nCritique: {critique}")
        )
        | itemgetter("answer")
        | TextFunction(strip_label, description="removing the 'Final answer:' label")
    )
    return pipeline, prompts


def scripted_model() -> Any:
    """An offline fake that plays each step, writes feedback and proposes new prompts."""
    from afnio_langchain.testing import ScriptedChatModel

    def forward(request: str) -> str:
        if PROMPTS["drafter"] in request:
            return "Paris."
        if PROMPTS["critic"] in request:
            return "The draft does not say which country Paris is the capital of."
        return "Final answer: Paris."

    def feedback(request: str) -> str:
        for name, text in PROMPTS.items():
            if text in request:
                return f"The {name} should make sure the answer names the country as well."
        return "Name the country as well."

    def optimizer(request: str) -> str:
        for text in PROMPTS.values():
            if text in request:
                return text + " Always name both the city and the country."
        return "Always name both the city and the country."

    return ScriptedChatModel(forward=forward, feedback=feedback, optimizer=optimizer)


def chosen_model() -> Any:
    base_url = os.environ.get("AFNIO_OPENAI_BASE_URL")
    if not base_url:
        return scripted_model()
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(
        base_url=base_url,
        model=os.environ.get("AFNIO_MODEL", "gpt-4o-mini"),
        api_key=os.environ.get("OPENAI_API_KEY", "not-needed"),
        temperature=0,
    )


def main() -> None:
    model = chosen_model()
    if not os.environ.get("AFNIO_OPENAI_BASE_URL"):
        print(
            "OFFLINE: a scripted fake model. The answer, the gradients and the new prompts "
            "below are its scripted replies: this shows the plumbing, not learning."
        )
    set_backward_model(model)
    pipeline, prompts = build_pipeline(model)
    assert parameters(pipeline) == list(prompts.values())

    answer = pipeline.invoke(QUESTION)
    print("answer:", repr(answer.data))

    answer.backward(FEEDBACK)
    reached = [name for name, prompt in prompts.items() if prompt.grad]
    print(f"gradients reached {len(reached)} of {len(prompts)} system prompts: {', '.join(reached)}")
    for name, prompt in prompts.items():
        print(f"  {name}: {prompt.grad[0].data if prompt.grad else '(none)'}")

    optimizer = TGD(parameters(pipeline), model=model)
    optimizer.step()
    optimizer.zero_grad()
    for name, prompt in prompts.items():
        print(f"new {name} prompt: {prompt.data}")

    totals = get_usage().by_purpose()
    print("model calls:", ", ".join(f"{p}={c.calls}" for p, c in sorted(totals.items())))


if __name__ == "__main__":
    main()
