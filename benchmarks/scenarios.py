"""The measured scenarios: one training step of this package's pipeline and of
TextGrad's, against the same server, with the figures every report row carries (wall
time, critical-path bound, ratio, calls and tokens per purpose)."""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any

from benchmarks import pipeline_ours, pipeline_textgrad, task
from benchmarks.bound import critical_path_bound
from benchmarks.responder import usage_by_purpose
from benchmarks.server_process import ServerProcess


@dataclass(frozen=True)
class StepConfig:
    """One step configuration of this package's pipeline."""

    minibatch: int
    limit: int
    depth: int = 3
    mode: str = "pipelined"
    client: str = "openai"

    def label(self) -> str:
        return (
            f"{self.client}/{self.mode} minibatch={self.minibatch} "
            f"limit={self.limit} depth={self.depth}"
        )


def log(message: str) -> None:
    """Progress, on stderr (stdout ends with the summary line)."""
    print(message, file=sys.stderr, flush=True)


def _row(records: list[Any], wall_s: float, bound: dict[str, Any] | None) -> dict[str, Any]:
    row: dict[str, Any] = {"wall_s": round(wall_s, 4), "usage": usage_by_purpose(records)}
    if bound is not None:
        row["bound_s"] = bound["seconds"]
        row["ratio"] = round(wall_s / bound["seconds"], 4)
        row["bound_phases"] = bound["phases"]
    return row


def _bounded_row(
    server: ServerProcess, records: list[Any], wall_s: float, depth: int, limit: int
) -> dict[str, Any]:
    """A step's row against the bound of its calls at the server's latency."""
    bound = critical_path_bound(
        records,
        depth=depth,
        limit=limit,
        latency=server.latency,
        per_token_latency=server.per_token_latency,
    )
    return _row(records, wall_s, bound)


def summarize(config: dict[str, Any], runs: list[dict[str, Any]]) -> dict[str, Any]:
    """A configuration's result: its runs and their medians (and best ratio)."""
    out = dict(config)
    out["runs"] = runs
    out["wall_s"] = round(statistics.median(r["wall_s"] for r in runs), 4)
    if "ratio" in runs[0]:
        out["bound_s"] = runs[0]["bound_s"]
        out["ratio"] = round(statistics.median(r["ratio"] for r in runs), 4)
        out["best_ratio"] = round(min(r["ratio"] for r in runs), 4)
    if "client_cpu_s" in runs[0]:
        out["client_cpu_s"] = round(statistics.median(r["client_cpu_s"] for r in runs), 4)
    out["usage"] = runs[-1]["usage"]
    out["calls_per_step"] = runs[-1]["usage"]["total"]["calls"]
    return out


class OursRunner:
    """Runs this package's steps; one model object per client, reused across steps
    (call :meth:`run` from one event loop for the whole session)."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self._models: dict[str, Any] = {}
        self._warm: set[tuple[str, int]] = set()

    def model(self, client: str) -> Any:
        if client not in self._models:
            self._models[client] = pipeline_ours.make_model(client, self.server.base_url)
        return self._models[client]

    async def _one(self, config: StepConfig, seed: int) -> tuple[pipeline_ours.StepResult, list]:
        model = self.model(config.client)
        chain, params = pipeline_ours.make_pipeline(model, config.depth)
        optimizer = pipeline_ours.make_optimizer(params, model)
        questions, answers = task.dataset(config.minibatch, seed=seed)
        self.server.reset()
        cpu = time.process_time()
        result = await pipeline_ours.train_step(
            chain, optimizer, questions, answers, limit=config.limit, mode=config.mode
        )
        result.cpu_s = time.process_time() - cpu  # this process only: the server is apart
        if result.updated != config.depth:
            raise RuntimeError(
                f"{config.label()}: {result.updated} of {config.depth} prompts updated"
            )
        return result, self.server.records()

    async def run(self, config: StepConfig, repeats: int) -> dict[str, Any]:
        """``repeats`` timed steps (after one untimed step per client and minibatch size,
        which opens the connections)."""
        return (await self.run_together([config], repeats))[0]

    async def run_together(
        self, configs: list[StepConfig], repeats: int
    ) -> list[dict[str, Any]]:
        """``repeats`` timed steps of each configuration, taken in turns (one step of
        each, then the next round): a stretch of minutes when the machine runs slower
        falls on every configuration alike, not on all the repeats of one of them."""
        for config in configs:
            if (config.client, config.minibatch) not in self._warm:
                await self._one(config, seed=10_000)
                self._warm.add((config.client, config.minibatch))
        runs: dict[StepConfig, list[dict[str, Any]]] = {config: [] for config in configs}
        for seed in range(repeats):
            for config in configs:
                runs[config].append(await self._measured(config, seed))
        out = []
        for config in configs:
            summary = summarize({"library": "afnio_langchain", **vars(config)}, runs[config])
            log(
                f"  ours {config.label()}: wall {summary['wall_s']:.3f} s, ratio "
                f"{summary['ratio']:.3f} (best {summary['best_ratio']:.3f}), "
                f"{summary['calls_per_step']} calls"
            )
            out.append(summary)
        return out

    async def _measured(self, config: StepConfig, seed: int) -> dict[str, Any]:
        """One timed step: its report row."""
        result, records = await self._one(config, seed)
        row = _bounded_row(self.server, records, result.wall_s, config.depth, config.limit)
        row.update(
            forward_backward_s=round(result.forward_backward_s, 4),
            optimizer_s=round(result.optimizer_s, 4),
            package_calls=result.usage["total"]["calls"],
            client_cpu_s=round(result.cpu_s, 4),
        )
        if result.forward_s is not None:
            row.update(forward_s=round(result.forward_s, 4), backward_s=round(result.backward_s, 4))
        if row["package_calls"] != row["usage"]["total"]["calls"]:
            raise RuntimeError(
                f"{config.label()}: the package counted {row['package_calls']} calls, "
                f"the server answered {row['usage']['total']['calls']}"
            )
        return row


class TextGradRunner:
    """Runs TextGrad's steps against the same server (call inside
    :func:`~benchmarks.pipeline_textgrad.textgrad_environment`)."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self._warm = False

    def _one(
        self, minibatch: int, seed: int, depth: int = 3, forward_threads: int = 0
    ) -> tuple[Any, list]:
        engine = pipeline_textgrad.make_engine()  # an empty reply cache for every step
        pipeline = pipeline_textgrad.make_pipeline(engine, depth)
        questions, answers = task.dataset(minibatch, seed=seed)
        self.server.reset()
        cpu = time.process_time()
        result = pipeline_textgrad.train_step(pipeline, questions, answers, forward_threads)
        result.cpu_s = time.process_time() - cpu
        if any(p.value == task.stage_prompt(k) for k, p in enumerate(pipeline.prompts)):
            raise RuntimeError("TextGrad's step left a prompt unchanged")
        return result, self.server.records()

    def run(
        self,
        minibatch: int,
        repeats: int = 1,
        depth: int = 3,
        forward_threads: int = 0,
        bound_limit: int = 64,
    ) -> dict[str, Any]:
        """``repeats`` timed steps (after one untimed single-item step). The bound is
        the same pipeline's, with ``bound_limit`` calls allowed at once."""
        if not self._warm:
            self._one(1, seed=10_000, depth=depth)
            self._warm = True
        runs = []
        for seed in range(repeats):
            result, records = self._one(minibatch, seed, depth, forward_threads)
            row = _bounded_row(self.server, records, result.wall_s, depth, bound_limit)
            row.update(
                forward_s=round(result.forward_s, 4),
                backward_s=round(result.backward_s, 4),
                optimizer_s=round(result.optimizer_s, 4),
                client_cpu_s=round(result.cpu_s, 4),
            )
            runs.append(row)
        mode = f"threaded forward ({forward_threads})" if forward_threads else "sequential"
        out = summarize(
            {
                "library": "textgrad",
                "minibatch": minibatch,
                "depth": depth,
                "limit": forward_threads or 1,
                "mode": mode,
                "client": "openai (sync)",
            },
            runs,
        )
        log(
            f"  textgrad {mode} minibatch={minibatch}: wall {out['wall_s']:.3f} s, "
            f"ratio {out['ratio']:.1f}, {out['calls_per_step']} calls"
        )
        return out
