"""One compile step of textual gradient descent against DSPy's own optimizers, on the
same two-predictor program, data and model: calls, tokens and scores per optimizer.

- ``tgd``: :class:`afnio_langchain.dspy.TextualGradientDescent`, one step over the whole
  trainset (``batch_size=len(trainset)``, ``max_steps=1``), gated on the valset.
- ``copro``: ``dspy.COPRO`` in its instruction-only form, ``breadth=2, depth=1`` (one
  proposal per predictor, each scored on the trainset).
- ``gepa``: ``dspy.GEPA`` with a budget of one reflective iteration (seed scored on the
  valset, one minibatch of ``len(trainset)``, one proposal, its minibatch score and
  its valset score).

Every model call goes through this package's model clients (the DSPy program runs on
:func:`afnio_langchain.dspy.as_dspy_lm`), so all three are counted the same way, by
purpose: ``forward`` (the program's own calls), ``backward`` (our gradients),
``optimizer`` (our rewrites, COPRO's proposal model, GEPA's reflection model).

Offline (default) the models are scripted fakes: this runs the plumbing only, and its
"tokens" are words counted by the fake. Against an OpenAI-compatible endpoint::

    AFNIO_OPENAI_BASE_URL=http://localhost:8000/v1 AFNIO_MODEL=my-model \\
        [AFNIO_OPENAI_API_KEY=...] python benchmarks/dspy_compare.py [--json out.json]

Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import dspy

from afnio_langchain import get_usage
from afnio_langchain.dspy import TextualGradientDescent, as_dspy_lm, chat_adapter_reply
from afnio_langchain.models import as_model_client
from afnio_langchain.testing import ScriptedChatModel

CAPITALS = {
    "France": "Paris",
    "Japan": "Tokyo",
    "Italy": "Rome",
    "Canada": "Ottawa",
    "Australia": "Canberra",
    "Egypt": "Cairo",
    "Kenya": "Nairobi",
    "Peru": "Lima",
}
OPTIMIZERS = ("tgd", "copro", "gepa")


# -- the task -------------------------------------------------------------------------------


class CapitalProgram(dspy.Module):
    """Two predictors: recall facts about a country, then name its capital from them."""

    def __init__(self) -> None:
        super().__init__()
        self.recall = dspy.Predict("country -> facts")
        self.answer = dspy.Predict("country, facts -> capital")

    def forward(self, country: str) -> dspy.Prediction:
        facts = self.recall(country=country).facts
        return self.answer(country=country, facts=facts)


def datasets() -> tuple[list[dspy.Example], list[dspy.Example]]:
    examples = [
        dspy.Example(country=country, capital=capital).with_inputs("country")
        for country, capital in CAPITALS.items()
    ]
    return examples[:4], examples[4:]


def metric(
    gold: Any, pred: Any, trace: Any = None, pred_name: Any = None, pred_trace: Any = None
) -> Any:
    """GEPA-style: a score and feedback text (our optimizer and GEPA read the feedback)."""
    answer = str(pred.capital).strip()
    correct = answer.lower() == gold.capital.lower()
    feedback = (
        "Correct."
        if correct
        else f"Wrong: the capital of {gold.country} is {gold.capital}, the program answered {answer!r}."
    )
    return dspy.Prediction(score=float(correct), feedback=feedback)


def score_only(gold: Any, pred: Any, trace: Any = None) -> float:
    """COPRO takes a plain number."""
    return metric(gold, pred).score


# -- models -----------------------------------------------------------------------------------


@dataclass
class Models:
    """The models of one run: the program's LM, the proposal LM DSPy's optimizers use,
    and the model our optimizer asks for gradients and rewrites."""

    task_lm: Any
    proposal_lm: Any
    coach: Any
    offline: bool


def _objective(text: str) -> str:
    """The instructions part of a ChatAdapter system message."""
    return text.split("your objective is:", 1)[-1].split("[[ ## ", 1)[0].lower()


def _country(text: str) -> str:
    found = re.findall(r"\[\[ ## country ## \]\]\n(.+)", text)
    return found[-1].strip() if found else ""


def _facts(text: str) -> str:
    country = _country(text)
    if "capital" in _objective(text):
        return f"{country}'s capital city is {CAPITALS.get(country, 'unknown')}."
    return f"{country} is a country."


def _capital(text: str) -> str:
    country = _country(text)
    return CAPITALS.get(country, "unknown") if "capital city" in _objective(text) else country


def _proposal(text: str) -> str:
    """A proposal model's new instruction for the predictor its request is about."""
    if "produce the fields `facts`" in text:
        return "List key facts about the country, including the name of its capital city."
    return "Given the country and the facts, answer with the name of its capital city only."


def _rewrite(text: str) -> str:
    """Our optimizer model's rewrite, for the predictor its request is about."""
    return _proposal(text)


def offline_models() -> Models:
    """Scripted fakes: the program answers the country's name until its instructions ask
    for the capital city; every optimizer's proposal asks for it."""
    task = ScriptedChatModel(
        forward=chat_adapter_reply({"facts": _facts, "capital": _capital}), model_name="task-fake"
    )
    proposals = ScriptedChatModel(  # its calls are counted as "optimizer" calls
        optimizer=chat_adapter_reply(
            {
                "proposed_instruction": _proposal,  # COPRO
                "proposed_prefix_for_output_field": "Answer:",
                "new_instruction": _proposal,  # GEPA's reflection
            }
        ),
        model_name="proposal-fake",
    )
    coach = ScriptedChatModel(
        feedback="The instructions never ask for the capital city, so the program names the "
        "country; ask for the name of the capital city explicitly.",
        optimizer=_rewrite,
        model_name="coach-fake",
    )
    return Models(
        task_lm=as_dspy_lm(task),
        proposal_lm=as_dspy_lm(proposals, purpose="optimizer"),
        coach=coach,
        offline=True,
    )


def online_models(base_url: str, model: str, api_key: str) -> Models:
    """The same model behind an OpenAI-compatible endpoint for every role."""
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key)
    return Models(
        task_lm=as_dspy_lm(client, model_name=model, temperature=0.0),
        proposal_lm=as_dspy_lm(client, model_name=model, purpose="optimizer"),
        coach=as_model_client(client, model),
        offline=False,
    )


# -- runs -------------------------------------------------------------------------------------


@dataclass
class Row:
    """One optimizer's figures for one compile step."""

    optimizer: str
    score_before: float
    score_after: float
    calls: dict[str, int] = field(default_factory=dict)
    input_tokens: int = 0
    output_tokens: int = 0
    seconds: float = 0.0
    instructions: dict[str, str] = field(default_factory=dict)

    @property
    def total_calls(self) -> int:
        return sum(self.calls.values())


def _usage_pairs() -> dict[tuple[str, str], tuple[int, int, int]]:
    return {
        (p["model"], p["purpose"]): (p["calls"], p["input_tokens"], p["output_tokens"])
        for p in get_usage().as_dict()["pairs"]
    }


def _delta(before: dict, after: dict) -> tuple[dict[str, int], int, int]:
    """Calls by purpose and tokens spent between two snapshots of the process tracker
    (DSPy's optimizers run the program in worker threads of their own, so a scoped
    ``track_usage()`` would not see those calls)."""
    calls: dict[str, int] = {}
    tokens_in = tokens_out = 0
    for key, (c, i, o) in after.items():
        c0, i0, o0 = before.get(key, (0, 0, 0))
        if c - c0:
            calls[key[1]] = calls.get(key[1], 0) + c - c0
        tokens_in += i - i0
        tokens_out += o - o0
    return calls, tokens_in, tokens_out


def evaluate(program: Any, examples: list[dspy.Example], threads: int) -> float:
    result = dspy.Evaluate(
        devset=examples, metric=score_only, num_threads=threads, display_progress=False
    )(program)
    return float(result.score) / 100.0


def compile_once(name: str, models: Models, threads: int) -> Any:
    trainset, valset = datasets()
    student = CapitalProgram()
    if name == "tgd":
        optimizer = TextualGradientDescent(
            metric,
            backward_model=models.coach,
            batch_size=len(trainset),
            max_steps=1,
            num_threads=threads,
        )
        return optimizer.compile(student, trainset=trainset, valset=valset)
    if name == "copro":
        optimizer = dspy.COPRO(
            prompt_model=models.proposal_lm, metric=score_only, breadth=2, depth=1
        )
        with contextlib.redirect_stdout(io.StringIO()):  # COPRO prints the proposal model's history
            return optimizer.compile(
                student,
                trainset=trainset,
                eval_kwargs={"num_threads": threads, "display_progress": False},
            )
    if name == "gepa":
        budget = 2 * len(valset) + 2 * len(trainset)
        optimizer = dspy.GEPA(
            metric=metric,
            reflection_lm=models.proposal_lm,
            max_metric_calls=budget,
            reflection_minibatch_size=len(trainset),
            candidate_selection_strategy="current_best",
            use_merge=False,
            num_threads=threads,
            seed=0,
        )
        with contextlib.redirect_stdout(io.StringIO()):  # GEPA draws progress bars on stdout
            return optimizer.compile(student, trainset=trainset, valset=valset)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")


def run(name: str, models: Models, threads: int) -> Row:
    _, valset = datasets()
    with dspy.context(lm=models.task_lm):
        before_score = evaluate(CapitalProgram(), valset, threads)
        snapshot = _usage_pairs()
        began = time.perf_counter()
        optimized = compile_once(name, models, threads)
        seconds = time.perf_counter() - began
        calls, tokens_in, tokens_out = _delta(snapshot, _usage_pairs())
        after_score = evaluate(optimized, valset, threads)
    return Row(
        optimizer=name,
        score_before=before_score,
        score_after=after_score,
        calls=calls,
        input_tokens=tokens_in,
        output_tokens=tokens_out,
        seconds=round(seconds, 3),
        instructions={n: p.signature.instructions for n, p in optimized.named_predictors()},
    )


def table(rows: list[Row], offline: bool) -> str:
    unit = "words" if offline else "tokens"
    header = (
        f"{'optimizer':<9} {'val before':>10} {'val after':>9} {'forward':>7} {'backward':>8} "
        f"{'optimizer':>9} {'calls':>5} {'in ' + unit:>10} {'out ' + unit:>10} {'seconds':>8}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r.optimizer:<9} {r.score_before:>10.2f} {r.score_after:>9.2f} "
            f"{r.calls.get('forward', 0):>7} {r.calls.get('backward', 0):>8} "
            f"{r.calls.get('optimizer', 0):>9} {r.total_calls:>5} {r.input_tokens:>10} "
            f"{r.output_tokens:>10} {r.seconds:>8.2f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--optimizers", nargs="+", choices=OPTIMIZERS, default=list(OPTIMIZERS))
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    logging.getLogger("dspy").setLevel(logging.WARNING)
    logging.getLogger("gepa").setLevel(logging.WARNING)

    base_url, model = os.environ.get("AFNIO_OPENAI_BASE_URL"), os.environ.get("AFNIO_MODEL")
    if base_url and model:
        api_key = (
            os.environ.get("AFNIO_OPENAI_API_KEY") or os.environ.get("OPENAI_API_KEY") or "none"
        )
        models = online_models(base_url, model, api_key)
        print(f"Endpoint run: model {model!r} at {base_url}")
    else:
        models = offline_models()
        print(
            "OFFLINE PLUMBING RUN: scripted fake models (no LLM). The figures show how many "
            "calls each optimizer makes for one compile step, not how well it optimizes; "
            "'words' are counted by the fake. Set AFNIO_OPENAI_BASE_URL and AFNIO_MODEL to "
            "run against an endpoint."
        )
    trainset, valset = datasets()
    rows = [run(name, models, args.threads) for name in args.optimizers]
    print(f"\ntrainset {len(trainset)} examples, valset {len(valset)}, program: 2 predictors\n")
    print(table(rows, models.offline))
    for r in rows:
        print(f"\n{r.optimizer}: " + "; ".join(f"{k} -> {v!r}" for k, v in r.instructions.items()))
    result = {
        "offline": models.offline,
        "trainset": len(trainset),
        "valset": len(valset),
        "rows": [{**asdict(r), "total_calls": r.total_calls} for r in rows],
    }
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    print("\n" + json.dumps(result))
    return result


if __name__ == "__main__":
    main()
