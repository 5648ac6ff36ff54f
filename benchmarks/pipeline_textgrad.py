"""The same pipeline, data and evaluation written with TextGrad, the way its prompt
optimization tutorial writes a training step: a loop over the minibatch, a loss per
item, ``tg.sum`` of the losses, ``backward()``, ``TGD.step()``.

TextGrad is a benchmark-only dependency (``benchmarks/requirements.txt``); nothing here
is imported unless it is installed. Its OpenAI engine reads ``OPENAI_API_KEY`` and
``OPENAI_BASE_URL`` (the ``openai`` client does), which :func:`textgrad_environment`
points at the loopback server. TextGrad also writes a JSON log line per call into
``TEXTGRAD_LOG_DIR`` and caches replies by prompt on disk under the user cache directory;
both go to temporary directories, with a fresh cache per engine and one engine per step,
so no step reads another's cache.

The evaluation is the same Python function as ours, wrapped in TextGrad's
``StringBasedFunction`` (its deterministic loss). TextGrad's backward through it costs
one model call per item (``tg.TextLoss``, an LLM judge, would add one forward call per
item on top).
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import importlib.util
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from benchmarks import task

MODEL_NAME = "gpt-4o-mini"
"""TextGrad picks its OpenAI engine from the model name; the server ignores it."""


def available() -> bool:
    """True when TextGrad is installed."""
    return importlib.util.find_spec("textgrad") is not None


_SCRATCH: str | None = None


def _scratch() -> str:
    """One temporary directory per process (TextGrad opens its log file at import)."""
    global _SCRATCH
    if _SCRATCH is None:
        _SCRATCH = tempfile.mkdtemp(prefix="textgrad-bench-")
        atexit.register(shutil.rmtree, _SCRATCH, True)
    return _SCRATCH


def keep_textgrad_local() -> None:
    """Unless already set: TextGrad's log (opened at import, ``./logs/`` by default) in
    this process's scratch directory, and litellm's model cost map read locally (no
    network fetch); for code that imports textgrad outside :func:`textgrad_environment`."""
    os.environ.setdefault("TEXTGRAD_LOG_DIR", os.path.join(_scratch(), "logs"))
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


@contextlib.contextmanager
def textgrad_environment(base_url: str) -> Iterator[str]:
    """Point TextGrad's engine at ``base_url`` and its log at a temporary directory
    (restoring the environment afterwards)."""
    keys = (
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "TEXTGRAD_LOG_DIR",
        "XDG_CACHE_HOME",
        "LITELLM_LOCAL_MODEL_COST_MAP",
    )
    saved = {key: os.environ.get(key) for key in keys}
    os.environ.update(
        OPENAI_API_KEY="bench-key",
        OPENAI_BASE_URL=base_url,
        TEXTGRAD_LOG_DIR=os.path.join(_scratch(), "logs"),
        LITELLM_LOCAL_MODEL_COST_MAP="True",  # textgrad imports litellm: no network fetch
    )
    try:
        yield _scratch()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def make_engine() -> Any:
    """TextGrad's OpenAI engine, with an empty disk cache of its own (call inside
    :func:`textgrad_environment`): its replies are cached by prompt, so an engine reused
    across steps over the same data would answer from the cache."""
    import textgrad as tg

    os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="cache-", dir=_scratch())
    return tg.get_engine(MODEL_NAME)


@dataclass
class TextGradPipeline:
    """The stages (``FormattedLLMCall`` with a trainable system prompt each), the loss
    and the optimizer."""

    engine: Any
    calls: list[Any]
    prompts: list[Any]
    loss: Any
    optimizer: Any


def make_pipeline(engine: Any, depth: int = 3) -> TextGradPipeline:
    """``depth`` stages with the same prompts and templates as ours."""
    import textgrad as tg
    from textgrad.autograd import FormattedLLMCall, StringBasedFunction

    prompts = [
        tg.Variable(task.stage_prompt(k), requires_grad=True, role_description=task.stage_role(k))
        for k in range(depth)
    ]
    calls = [
        FormattedLLMCall(
            engine=engine,
            format_string=task.user_template(k),
            fields={"question": None} if k == 0 else {"draft": None},
            system_prompt=prompts[k],
        )
        for k in range(depth)
    ]

    def evaluate(prediction: Any, target: Any) -> str:
        return task.evaluate(str(prediction.value), str(target.value))[1]

    loss = StringBasedFunction(evaluate, function_purpose="checks the answer against the target")
    optimizer = tg.TGD(parameters=prompts, engine=engine)
    return TextGradPipeline(engine, calls, prompts, loss, optimizer)


@dataclass
class TextGradStepResult:
    """Wall time of one TextGrad step, per phase."""

    wall_s: float
    forward_s: float
    backward_s: float
    optimizer_s: float
    cpu_s: float | None = None  # filled in by callers that measure it


def train_step(
    pipeline: TextGradPipeline,
    questions: list[str],
    answers: list[str],
    forward_threads: int = 0,
) -> TextGradStepResult:
    """One step, as TextGrad's tutorials write it: items forwarded one after another
    (or, with ``forward_threads``, in a thread pool, as TextGrad's evaluation helpers
    do), then one backward pass and one optimizer step, both sequential in TextGrad."""
    import textgrad as tg

    def forward(question: str, answer: str) -> Any:
        x = tg.Variable(question, requires_grad=False, role_description="question to answer")
        y = tg.Variable(answer, requires_grad=False, role_description="correct answer")
        reply = x
        for k, call in enumerate(pipeline.calls):
            field = "question" if k == 0 else "draft"
            reply = call({field: reply}, response_role_description=task.output_role(k))
        return pipeline.loss(
            inputs={"prediction": reply, "target": y},
            response_role_description="evaluation of the answer",
        )

    pipeline.optimizer.zero_grad()
    began = time.perf_counter()
    if forward_threads:
        with concurrent.futures.ThreadPoolExecutor(max_workers=forward_threads) as pool:
            losses = list(pool.map(forward, questions, answers))
    else:
        losses = [forward(question, answer) for question, answer in zip(questions, answers)]
    forwarded = time.perf_counter()
    tg.sum(losses).backward(pipeline.engine)
    backwarded = time.perf_counter()
    pipeline.optimizer.step()
    ended = time.perf_counter()
    return TextGradStepResult(
        wall_s=ended - began,
        forward_s=forwarded - began,
        backward_s=backwarded - forwarded,
        optimizer_s=ended - backwarded,
    )
