"""Soak: thousands of training steps against a faulty provider, with nothing lost.

A two-stage pipeline (a planner ``ChatCompletion`` feeding a writer ``ChatCompletion``,
each with a trainable system prompt) is trained for ``--steps`` steps of forward,
backward and one ``TGD`` step, through the real ``openai.AsyncOpenAI`` client and
through LangChain's ``ChatOpenAI`` (``--client``; both by default), against the
loopback OpenAI-compatible server. About ``--fault-rate`` of all requests fail, with
a seeded mix of the faults real providers produce: HTTP 429 (with and without
``retry-after``), 500, 502, 503, connection resets, read timeouts, truncated bodies,
malformed bodies, empty ``choices``, and, on gradient and proposal requests, replies that
are valid HTTP but empty, cut-off JSON or JSON with the wrong keys.

Every reply is derived from the request, so after each step the exact expected state
is known: each prompt's gradient must be the one text written for this step about the
prompt's current revision (nothing lost, duplicated, stale or corrupted), and each
prompt must hold the revision proposed for this step. A step whose phase fails after
the client's retries is re-run from that phase (a failed backward commits nothing and
keeps its graph; a failed optimizer step changes nothing), and its invariants are
checked first.

    python benchmarks/soak.py [--steps 2000] [--fault-rate 0.05] [--seed 0]
                              [--client openai|chatopenai|both]

Prints the figures of each client and, last, one JSON line. Exits with status 1 if
anything was lost or corrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import openai
from langchain_openai import ChatOpenAI

from afnio_langchain import Variable, track_usage
from afnio_langchain.autodiff import BackwardError, ChatCompletion
from afnio_langchain.models import (
    BaseModelClient,
    LangChainChatModelClient,
    OpenAIClient,
    RetryPolicy,
    required_keys_in,
)
from afnio_langchain.optim import TGD
from afnio_langchain.optim._prompts import PROPOSAL_KEY
from afnio_langchain.testing import Fault, OpenAICompatServer

MODEL = "fake-model"
CLIENTS = ("openai", "chatopenai")
CLIENT_TIMEOUT = 0.5
MAX_ATTEMPTS = 6
"""Tries per model call (the client's retry policy), the first included."""
MAX_PHASE_ATTEMPTS = 8
TRANSPORT_FAULTS = {
    "429": Fault.rate_limit(),
    "429 retry-after": Fault.rate_limit(retry_after=0.01),
    "500": Fault.http(500),
    "502": Fault.http(502),
    "503": Fault.http(503),
    "reset": Fault.reset(),
    "read timeout": Fault.timeout(CLIENT_TIMEOUT + 0.3),
    "truncated body": Fault.truncated(),
    "malformed body": Fault.malformed(),
    "empty choices": Fault.empty_choices(),
}
CONTENT_FAULTS = ("empty reply", "cut-off JSON", "wrong JSON keys")

_ROLE_OF_KEY = re.compile(r'<VARIABLE key="(var_\d+)" role="([^"]*)">')
_REVISION = re.compile(r"You are the (planner|writer)\. Revision (\d+)\.")
_STEP = re.compile(r"\b(?:question|plan) (\d+)\b")
_FEEDBACK_STEP = re.compile(r"\b(planner|writer) feedback (\d+)\b")


def prompt_value(who: str, revision: int) -> str:
    return f"You are the {who}. Revision {revision}."


def fault_name(fault: Fault) -> str:
    for name, known in TRANSPORT_FAULTS.items():
        if known == fault:
            return name
    return fault.kind


class SoakResponder:
    """Answers every call of the pipeline from the request alone, and injects the
    content faults (valid HTTP, unusable JSON) into gradient and proposal requests."""

    def __init__(self, rate: float, seed: int) -> None:
        self.rate = rate
        self.rng = random.Random(seed + 1)
        self.lock = threading.Lock()
        self.faults: Counter[str] = Counter()
        self.reasks = 0

    def __call__(self, body: dict[str, Any]) -> str:
        messages = body["messages"]
        first_user = next(m["content"] for m in messages if m["role"] == "user")
        keys = required_keys_in(messages[-1]["content"])
        if keys is None:
            return self.forward(messages[0]["content"], first_user)
        with self.lock:
            if len(messages) > 2:
                self.reasks += 1
            fault = self.rng.random() < self.rate
            kind = self.rng.choice(CONTENT_FAULTS) if fault else ""
            if fault:
                self.faults[kind] += 1
        reply = self.optimizer(first_user) if keys == [PROPOSAL_KEY] else self.backward(first_user, keys)
        if kind == "empty reply":
            return ""
        if kind == "cut-off JSON":
            return reply[: len(reply) // 2]
        if kind == "wrong JSON keys":
            return json.dumps({"answer": "unrelated", "notes": reply})
        return reply

    @staticmethod
    def forward(system: str, user: str) -> str:
        who, revision = _REVISION.search(system).groups()  # type: ignore[union-attr]
        step = _STEP.search(user).group(1)  # type: ignore[union-attr]
        return f"{'plan' if who == 'planner' else 'answer'} {step} [rev {revision}]"

    @staticmethod
    def backward(text: str, keys: list[str]) -> str:
        conversation = text.split("</CONVERSATION>", 1)[0]
        who, revision = _REVISION.search(conversation).groups()  # type: ignore[union-attr]
        step = _STEP.search(conversation).group(1)  # type: ignore[union-attr]
        roles = dict(_ROLE_OF_KEY.findall(text))
        out = {}
        for key in keys:
            if roles[key] == f"{who} prompt":
                out[key] = f"{who} feedback {step} [rev {revision}]"
            else:  # the plan, fed to the writer
                out[key] = f"plan feedback {step}"
        return json.dumps(out)

    @staticmethod
    def optimizer(text: str) -> str:
        who, step = _FEEDBACK_STEP.search(text).groups()  # type: ignore[union-attr]
        return json.dumps({PROPOSAL_KEY: prompt_value(who, int(step) + 1)})


@dataclass
class Figures:
    steps: int = 0
    completed: int = 0
    lost_steps: int = 0
    lost_gradients: int = 0
    corrupted_gradients: int = 0
    corrupted_prompts: int = 0
    corrupted_outputs: int = 0
    inconsistent_after_failure: int = 0
    phase_failures: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)

    def problem(self, counter: str, text: str) -> None:
        setattr(self, counter, getattr(self, counter) + 1)
        if len(self.problems) < 20:
            self.problems.append(text)


class Pipeline:
    def __init__(self, model: BaseModelClient) -> None:
        self.model = model
        self.planner = Variable(prompt_value("planner", 0), role="planner prompt", requires_grad=True)
        self.writer = Variable(prompt_value("writer", 0), role="writer prompt", requires_grad=True)
        self.params = [self.planner, self.writer]
        self.optimizer = TGD(self.params, model=model)

    async def forward(self, step: int) -> tuple[Variable, Variable]:
        plan = await ChatCompletion.aapply(
            self.model,
            [{"role": "system", "content": [self.planner]}, {"role": "user", "content": "{q}"}],
            inputs={"q": f"question {step}"},
            backward_model=self.model,
            output_role="plan",
        )
        answer = await ChatCompletion.aapply(
            self.model,
            [{"role": "system", "content": [self.writer]}, {"role": "user", "content": "Plan: {p}"}],
            inputs={"p": plan},
            backward_model=self.model,
            output_role="answer",
        )
        return plan, answer


async def run_step(pipe: Pipeline, step: int, figures: Figures) -> bool:
    """One training step, each phase re-run until it succeeds; True when completed."""
    revision = step  # every earlier step moved each prompt one revision on
    want_plan, want_answer = f"plan {step} [rev {revision}]", f"answer {step} [rev {revision}]"
    want_grads = {
        "planner": [f"planner feedback {step} [rev {revision}]"],
        "writer": [f"writer feedback {step} [rev {revision}]"],
    }

    def grads() -> dict[str, list[str]]:
        return {"planner": [str(g.data) for g in pipe.planner.grad],
                "writer": [str(g.data) for g in pipe.writer.grad]}

    def values() -> list[Any]:
        return [p.data for p in pipe.params]

    outputs = None
    for _ in range(MAX_PHASE_ATTEMPTS):
        try:
            outputs = await pipe.forward(step)
            break
        except Exception as exc:  # noqa: BLE001 - every failure is counted and checked
            figures.phase_failures[f"forward: {type(exc).__name__}"] += 1
    if outputs is None:
        figures.problem("lost_steps", f"step {step}: forward never succeeded")
        return False
    plan, answer = outputs
    if (plan.data, answer.data) != (want_plan, want_answer):
        figures.problem("corrupted_outputs", f"step {step}: outputs {plan.data!r}, {answer.data!r}")

    for attempt in range(MAX_PHASE_ATTEMPTS + 1):
        if attempt == MAX_PHASE_ATTEMPTS:
            figures.problem("lost_steps", f"step {step}: backward never succeeded")
            return False
        try:
            await answer.abackward(f"Step {step}: the answer misses a detail.")
            break
        except BackwardError as exc:
            figures.phase_failures[f"backward: {type(exc.__cause__).__name__}"] += 1
            if grads() != {"planner": [], "writer": []}:
                figures.problem(
                    "inconsistent_after_failure", f"step {step}: partial gradients {grads()}"
                )
    got = grads()
    for who, texts in got.items():
        if len(texts) != 1:
            figures.problem("lost_gradients", f"step {step}: {who} has {len(texts)} gradients")
        elif texts != want_grads[who]:
            figures.problem("corrupted_gradients", f"step {step}: {who} gradient {texts[0]!r}")

    pending = set(range(len(pipe.params)))
    for attempt in range(MAX_PHASE_ATTEMPTS + 1):
        if attempt == MAX_PHASE_ATTEMPTS:
            figures.problem("lost_steps", f"step {step}: optimizer step never succeeded")
            return False
        before = values()
        try:
            await pipe.optimizer.astep()
        except Exception as exc:  # noqa: BLE001
            figures.phase_failures[f"optimizer: {type(exc).__name__}"] += 1
            if values() != before:
                figures.problem(
                    "inconsistent_after_failure", f"step {step}: a failed step changed values"
                )
            continue
        for result in pipe.optimizer.last_step:
            if result.status == "updated":
                pipe.params[result.index].grad = []  # done: the retry leaves it alone
                pending.discard(result.index)
            elif result.status == "rejected":
                figures.phase_failures["optimizer: rejected proposal"] += 1
                if pipe.params[result.index].data != before[result.index]:
                    figures.problem(
                        "inconsistent_after_failure", f"step {step}: a rejection changed a value"
                    )
        if not pending:
            break
    for p, who in zip(pipe.params, ("planner", "writer")):
        if p.data != prompt_value(who, revision + 1):
            figures.problem("corrupted_prompts", f"step {step}: {who} prompt is {p.data!r}")
    pipe.optimizer.zero_grad()
    return True


def make_client(kind: str, base_url: str, retry: RetryPolicy) -> tuple[BaseModelClient, Any]:
    """The package's client for ``kind`` and the object to close after the run."""
    if kind == "openai":
        raw = openai.AsyncOpenAI(base_url=base_url, api_key="sk-soak", timeout=CLIENT_TIMEOUT)
        return OpenAIClient(raw, model=MODEL, retry=retry), raw
    chat = ChatOpenAI(base_url=base_url, api_key="sk-soak", model=MODEL, timeout=CLIENT_TIMEOUT)
    return LangChainChatModelClient(chat, retry=retry), None


async def soak(
    steps: int,
    fault_rate: float,
    seed: int,
    progress: bool,
    max_attempts: int = MAX_ATTEMPTS,
    client: str = "openai",
) -> dict[str, Any]:
    # Transport faults hit any request; content faults only gradient and proposal
    # requests (forward replies are data: no content of theirs is "invalid").
    share = len(TRANSPORT_FAULTS) / (len(TRANSPORT_FAULTS) + len(CONTENT_FAULTS))
    transport_rate = fault_rate * share
    content_rate = fault_rate * (1 - share) / (1 - transport_rate)
    responder = SoakResponder(content_rate, seed)
    figures = Figures(steps=steps)
    began = time.perf_counter()
    with OpenAICompatServer(responder) as server, track_usage() as usage:
        server.fault_rate(transport_rate, list(TRANSPORT_FAULTS.values()), seed=seed)
        retry = RetryPolicy(max_attempts=max_attempts, initial_wait=0.002, max_wait=0.05)
        model, to_close = make_client(client, server.base_url, retry)
        pipe = Pipeline(model)
        for step in range(steps):
            if await run_step(pipe, step, figures):
                figures.completed += 1
            if progress and (step + 1) % 100 == 0:
                elapsed = time.perf_counter() - began
                print(
                    f"  {client}: {step + 1}/{steps} steps, {elapsed:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
        served = Counter(fault_name(f) for f in server.served_faults)
        requests = server.request_count
        if to_close is not None:
            await to_close.close()
    totals = usage.total()
    faults = {**dict(served), **dict(responder.faults)}
    fault_total = sum(faults.values())
    return {
        "benchmark": "soak",
        "client": client,
        "steps": steps,
        "steps_completed": figures.completed,
        "seconds": round(time.perf_counter() - began, 1),
        "requests": requests,
        "fault_rate_requested": fault_rate,
        "fault_rate_observed": round(fault_total / max(requests, 1), 4),
        "faults_seen": fault_total,
        "faults_by_kind": dict(sorted(faults.items())),
        "retries": totals.retries,
        "json_reasks": responder.reasks,
        "calls": totals.calls,
        "phase_failures": dict(sorted(figures.phase_failures.items())),
        "lost_steps": figures.lost_steps,
        "lost_gradients": figures.lost_gradients,
        "corrupted_gradients": figures.corrupted_gradients,
        "corrupted_prompts": figures.corrupted_prompts,
        "corrupted_outputs": figures.corrupted_outputs,
        "inconsistent_after_failure": figures.inconsistent_after_failure,
        "problems": figures.problems,
        "seed": seed,
        "max_attempts": max_attempts,
    }


FIGURES = (
    "lost_steps",
    "lost_gradients",
    "corrupted_gradients",
    "corrupted_prompts",
    "corrupted_outputs",
    "inconsistent_after_failure",
)


def clean(result: dict[str, Any]) -> bool:
    """Whether every run in ``result`` completed every step and lost nothing."""
    return all(
        run["steps_completed"] == run["steps"] and not any(run[k] for k in FIGURES)
        for run in result["runs"]
    )


def show(run: dict[str, Any]) -> None:
    print(f"client               {run['client']}")
    print(f"steps completed      {run['steps_completed']} of {run['steps']}")
    print(f"time                 {run['seconds']} s, {run['requests']} requests")
    print(f"faults seen          {run['faults_seen']} ({run['fault_rate_observed']:.1%} of requests)")
    for kind, count in run["faults_by_kind"].items():
        print(f"  {kind:<19}{count}")
    print(f"retries              {run['retries']} (HTTP), {run['json_reasks']} (JSON re-asks)")
    print(f"phase re-runs        {sum(run['phase_failures'].values())}")
    for kind, count in run["phase_failures"].items():
        print(f"  {kind:<40}{count}")
    print(f"lost steps           {run['lost_steps']}")
    print(f"lost gradients       {run['lost_gradients']}")
    print(f"corrupted gradients  {run['corrupted_gradients']}")
    print(f"corrupted prompts    {run['corrupted_prompts']}")
    print(f"corrupted outputs    {run['corrupted_outputs']}")
    print(f"partial state after a failure  {run['inconsistent_after_failure']}")
    for problem in run["problems"]:
        print(f"  ! {problem}")
    print()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2000, help="training steps (default 2000)")
    parser.add_argument("--fault-rate", type=float, default=0.05, help="share of failing requests")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--max-attempts", type=int, default=MAX_ATTEMPTS, help="tries per model call"
    )
    parser.add_argument(
        "--client", choices=[*CLIENTS, "both"], default="both", help="client path (default both)"
    )
    parser.add_argument("--quiet", action="store_true", help="print only the JSON line")
    args = parser.parse_args(argv)
    if args.steps < 1 or not 0 <= args.fault_rate < 1:
        parser.error("--steps must be >= 1 and --fault-rate in [0, 1)")
    clients = CLIENTS if args.client == "both" else (args.client,)
    runs = [
        asyncio.run(
            soak(args.steps, args.fault_rate, args.seed, not args.quiet, args.max_attempts, kind)
        )
        for kind in clients
    ]
    result = {"benchmark": "soak", "runs": runs}
    if not args.quiet:
        for run in runs:
            show(run)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    sys.exit(0 if clean(main()) else 1)
