"""Make an existing LangChain chain trainable, train its system prompt, export it back.

The chain is ordinary LangChain (``ChatPromptTemplate | chat model | StrOutputParser``)
and is not modified. ``make_trainable`` gives a copy whose system prompt is a trainable
Variable; a few TGD steps on a tiny support dataset teach it the refund policy; the
learned prompt is saved as JSON and exported to a plain LangChain chain for serving
(braces in the learned text survive the export).

Offline by default, with a scripted fake model (its "learned" rule is written by hand
in ``LEARNED_RULE``: the offline run shows the plumbing, and says so)::

    python examples/make_trainable_chain.py [--out prompts.json]

Against any OpenAI-compatible endpoint (through ``langchain_openai.ChatOpenAI``)::

    AFNIO_OPENAI_BASE_URL=https://api.openai.com/v1 AFNIO_MODEL=gpt-4o-mini \\
        OPENAI_API_KEY=... python examples/make_trainable_chain.py
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any

from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

from afnio_langchain import get_usage, make_trainable, set_backward_model
from afnio_langchain.optim import TGD

SYSTEM = "You are a support assistant for {product}. Answer in one sentence."
DATASET = [
    ("Can I get my money back?", "30 days"),
    ("I changed my mind about my order, what now?", "30 days"),
]
LEARNED_RULE = 'Refunds are accepted within 30 days; reply as {"answer": "..."}.'


def build_chain(model: Any) -> Any:
    """The existing chain, written as any LangChain user would."""
    prompt = ChatPromptTemplate.from_messages([("system", SYSTEM), ("human", "{question}")])
    return prompt | model | StrOutputParser()


def feedback_for(answer: str, expected: str) -> str | None:
    """The metric: None when the answer states the policy, else what is wrong."""
    if expected in answer:
        return None
    return f"The answer must state the refund window ({expected}) explicitly."


def scripted_model() -> Any:
    from afnio_langchain.testing import ScriptedChatModel

    def forward(request: str) -> str:
        if "30 days" in request:
            return '{"answer": "You can get a full refund within 30 days of purchase."}'
        return "Please contact our team about refunds."

    return ScriptedChatModel(
        forward=forward,
        feedback="The system prompt should state the 30-day refund policy.",
        optimizer=f"{SYSTEM} {LEARNED_RULE}",
    )


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


def accuracy(chain: Any, product: str) -> float:
    outputs = chain.batch([{"product": product, "question": q} for q, _ in DATASET])
    return sum(feedback_for(str(o), e) is None for o, (_, e) in zip(outputs, DATASET)) / len(
        DATASET
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="where to save the learned prompts (default: a temp dir)")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()

    model = chosen_model()
    offline = not os.environ.get("AFNIO_OPENAI_BASE_URL")
    scored_by = "scripted model" if offline else f"model {os.environ.get('AFNIO_MODEL', 'gpt-4o-mini')}"
    if offline:
        print(
            "OFFLINE: a scripted fake model. Its optimizer reply is the prompt written by hand "
            "in LEARNED_RULE, so the accuracies show the plumbing (feedback, a TGD step, save, "
            "export), not learning."
        )
    set_backward_model(model)
    chain = build_chain(model)
    trainable = make_trainable(chain)
    (system,) = trainable.parameters()
    print("trainable prompt:", repr(system.data))
    print(f"accuracy before ({scored_by}): {accuracy(trainable, 'Acme Shop'):.0%}")

    optimizer = TGD(trainable.parameters(), model=model)
    for epoch in range(args.epochs):
        optimizer.zero_grad()
        answers = trainable.batch([{"product": "Acme Shop", "question": q} for q, _ in DATASET])
        wrong = [(a, fb) for a, (_, e) in zip(answers, DATASET) if (fb := feedback_for(a.data, e))]
        print(f"epoch {epoch + 1}: {len(wrong)} of {len(DATASET)} answers need feedback")
        if not wrong:
            break
        for answer, feedback in wrong:
            answer.backward(feedback)
        optimizer.step()
    written_by = "hand-written in LEARNED_RULE, not learned" if offline else "learned"
    print(f"new prompt ({written_by}):", repr(system.data))

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp()) / "prompts.json"
    trainable.save(out)
    print("saved the prompts to", out)
    reloaded = make_trainable(build_chain(model)).load(out)
    print("reloaded prompt matches:", reloaded.parameters()[0].data == system.data)

    served = trainable.to_langchain()  # plain LangChain: prompt | model | StrOutputParser
    reply = served.invoke({"product": "Acme Shop", "question": DATASET[0][0]})
    print(f"served chain returns a str ({isinstance(reply, str)}): {reply}")
    print("served system prompt:", served.steps[0].messages[0].prompt.template)
    print(f"accuracy after ({scored_by}): {accuracy(served, 'Acme Shop'):.0%}")
    totals = get_usage().by_purpose()
    print("model calls:", ", ".join(f"{p}={c.calls}" for p, c in sorted(totals.items())))


if __name__ == "__main__":
    main()
