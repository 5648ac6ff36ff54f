"""A DSPy program optimized two ways, side by side: textual gradient descent
(``afnio_langchain.dspy.TextualGradientDescent``) and DSPy's own GEPA, with the same
program, data, metric and model.

The program runs on a LangChain chat model through ``as_dspy_lm`` (the same models a
LangChain app uses), and the metric is an ordinary GEPA-style DSPy metric returning a
score and feedback text, which both optimizers read.

Offline (default) the models are scripted fakes, so this shows the plumbing, not the
quality of either optimizer::

    python examples/dspy_side_by_side.py

Against any OpenAI-compatible endpoint (needs ``langchain-openai``)::

    AFNIO_OPENAI_BASE_URL=http://localhost:8000/v1 AFNIO_MODEL=my-model \\
        python examples/dspy_side_by_side.py

For call and token counts of one compile step against COPRO and GEPA, run
``python benchmarks/dspy_compare.py``.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from typing import Any

import dspy

from afnio_langchain import track_usage
from afnio_langchain.dspy import TextualGradientDescent, as_dspy_lm, chat_adapter_reply
from afnio_langchain.testing import ScriptedChatModel

CAPITALS = {
    "France": "Paris",
    "Japan": "Tokyo",
    "Italy": "Rome",
    "Canada": "Ottawa",
    "Egypt": "Cairo",
    "Kenya": "Nairobi",
}


class CapitalProgram(dspy.Module):
    """Recall facts about a country, then name its capital from them."""

    def __init__(self) -> None:
        super().__init__()
        self.recall = dspy.Predict("country -> facts")
        self.answer = dspy.Predict("country, facts -> capital")

    def forward(self, country: str) -> dspy.Prediction:
        facts = self.recall(country=country).facts
        return self.answer(country=country, facts=facts)


def metric(gold, pred, trace=None, pred_name=None, pred_trace=None) -> dspy.Prediction:
    """A GEPA-style metric: a score and feedback text."""
    correct = str(pred.capital).strip().lower() == gold.capital.lower()
    feedback = (
        "Correct."
        if correct
        else (f"Wrong: the capital of {gold.country} is {gold.capital}, not {pred.capital!r}.")
    )
    return dspy.Prediction(score=float(correct), feedback=feedback)


def scripted_models() -> tuple[Any, Any]:
    """Offline fakes: the program names the country until its instructions ask for the
    capital city; every proposal (ours or GEPA's) asks for it."""

    def objective(text: str) -> str:
        return text.split("your objective is:", 1)[-1].split("[[ ## ", 1)[0].lower()

    def country(text: str) -> str:
        return re.findall(r"\[\[ ## country ## \]\]\n(.+)", text)[-1].strip()

    def proposal(text: str) -> str:
        if "produce the fields `facts`" in text:
            return "List key facts about the country, including the name of its capital city."
        return "Given the country and the facts, answer with the name of its capital city only."

    chat = ScriptedChatModel(
        forward=chat_adapter_reply(
            {
                "facts": lambda t: f"{country(t)} is a country.",
                "capital": lambda t: (
                    CAPITALS[country(t)] if "capital city" in objective(t) else country(t)
                ),
            }
        ),
        feedback="The instructions never ask for the capital city; ask for it explicitly.",
        optimizer=lambda t: (
            chat_adapter_reply({"new_instruction": proposal})(t)
            if "new_instruction" in t
            else proposal(t)
        ),
    )
    return chat, chat


def endpoint_models(base_url: str, model: str) -> tuple[Any, Any]:
    from langchain_openai import ChatOpenAI

    api_key = os.environ.get("AFNIO_OPENAI_API_KEY") or os.environ.get("OPENAI_API_KEY") or "none"
    chat = ChatOpenAI(model=model, base_url=base_url, api_key=api_key, temperature=0)
    return chat, chat


def main() -> None:
    base_url, model = os.environ.get("AFNIO_OPENAI_BASE_URL"), os.environ.get("AFNIO_MODEL")
    scored_by = f" [{model}]" if base_url and model else " [scripted models]"
    if base_url and model:
        task_model, coach = endpoint_models(base_url, model)
        print(f"Endpoint run: {model} at {base_url}")
    else:
        task_model, coach = scripted_models()
        print(
            "OFFLINE: scripted fake models; this shows the plumbing, not optimizer quality "
            "(the scores are the fakes' and the instructions their scripted proposals)."
        )

    examples = [
        dspy.Example(country=c, capital=k).with_inputs("country") for c, k in CAPITALS.items()
    ]
    trainset, valset = examples[:3], examples[3:]
    evaluate = dspy.Evaluate(
        devset=valset, metric=lambda g, p, t=None: metric(g, p).score, display_progress=False
    )

    with dspy.context(lm=as_dspy_lm(task_model)):  # or dspy.configure(lm=...)
        ours = TextualGradientDescent(
            metric, backward_model=coach, batch_size=3, max_steps=1, track_stats=True
        )
        with track_usage() as ours_usage:
            ours_program = ours.compile(CapitalProgram(), trainset=trainset, valset=valset)

        gepa = dspy.GEPA(
            metric=metric,
            reflection_lm=as_dspy_lm(coach, purpose="optimizer"),
            max_metric_calls=2 * (len(trainset) + len(valset)),
            reflection_minibatch_size=len(trainset),
            use_merge=False,
            num_threads=1,
        )
        with track_usage() as gepa_usage, contextlib.redirect_stdout(io.StringIO()):
            gepa_program = gepa.compile(CapitalProgram(), trainset=trainset, valset=valset)

        print(f"\nstudent  val score {evaluate(CapitalProgram()).score:5.1f}%{scored_by}")
        for name, program, usage in (
            ("ours", ours_program, ours_usage),
            ("GEPA", gepa_program, gepa_usage),
        ):
            calls = {purpose: c.calls for purpose, c in usage.by_purpose().items()}
            print(f"{name:<8} val score {evaluate(program).score:5.1f}%{scored_by}  calls {calls}")
            for predictor_name, predictor in program.named_predictors():
                print(f"    {predictor_name:<7} {predictor.signature.instructions!r}")

        # DSPy's names for the statistics (COPRO, MIPROv2), on the returned program
        scores = [c["score"] for c in ours_program.candidate_programs]
        print(f"\nours: candidate_programs scores {scores}, total_calls {ours_program.total_calls}, "
              f"results_best {ours_program.results_best['answer']['max']}")


if __name__ == "__main__":
    main()
