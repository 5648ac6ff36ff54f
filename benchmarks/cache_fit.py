"""Model calls an LLM cache saves over a whole ``fit`` run with rollbacks.

The benchmark's 3-stage pipeline is trained with ``fit`` (``gate="improve"``) through
the ``openai`` client against the benchmark server, twice: without an LLM cache, then
with ``set_llm_cache(InMemoryCache())``. The fake model never answers correctly, so
every step is rolled back; the next step then proposes the same value again from the
same restored prompts, and its validation re-runs an unchanged prompt (as does each
epoch's training forward on the restored prompts). With the cache those forward calls
are answered without a model call. The figure is the difference in calls the server
answered; the package's own count of cache hits is reported beside it.
"""

from __future__ import annotations

from typing import Any

from afnio_langchain.loop import MetricResult
from afnio_langchain.models import track_usage
from benchmarks import pipeline_ours, task
from benchmarks.server_process import ServerProcess


def _metric(example: dict[str, str], prediction: Any) -> MetricResult:
    score, feedback = task.evaluate(str(prediction), example["answer"])
    return MetricResult(score=score, feedback=feedback)


def _run(server: ServerProcess, cached: bool, train: int, val: int, epochs: int) -> dict[str, Any]:
    from langchain_core.caches import InMemoryCache
    from langchain_core.globals import set_llm_cache

    from afnio_langchain.train import fit

    model = pipeline_ours.make_model("openai", server.base_url)
    chain, params = pipeline_ours.make_pipeline(model)
    questions, answers = task.dataset(train + val, seed=7)
    data = [{"question": q, "answer": a} for q, a in zip(questions, answers)]
    server.reset()
    set_llm_cache(InMemoryCache() if cached else None)
    try:
        with track_usage() as usage:
            result = fit(
                chain, data[:train], data[train:], metric=_metric,
                optimizer=pipeline_ours.make_optimizer(params, model), backward_model=model,
                batch_size=4, epochs=epochs, shuffle=False, gate="improve",
                evaluate_train=False, progress=False, max_concurrency=64,
            )
    finally:
        set_llm_cache(None)
    steps = result.history["steps"]
    total = usage.total()
    return {
        "server_calls": len(server.records()),
        "package_calls": total.calls,
        "cache_hits": total.cache_hits,
        "steps": len(steps),
        "rolled_back": sum(1 for s in steps if str(s.get("decision", "")).startswith("rolled")),
    }


def measure(server: ServerProcess, train: int = 8, val: int = 8, epochs: int = 2) -> dict[str, Any]:
    """Both runs (the server answers instantly meanwhile) and the calls saved."""
    latency, per_token = server.latency, server.per_token_latency
    server.configure(0.0, 0.0)
    try:
        without = _run(server, False, train, val, epochs)
        with_cache = _run(server, True, train, val, epochs)
    finally:
        server.configure(latency, per_token)
    return {
        "train": train,
        "val": val,
        "epochs": epochs,
        "without_cache": without,
        "with_cache": with_cache,
        "calls_saved": without["server_calls"] - with_cache["server_calls"],
    }
