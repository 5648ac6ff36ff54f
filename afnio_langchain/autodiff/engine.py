"""The backward engine: order the graph, then propagate feedback concurrently.

1. Order: walk back from the roots, counting how many gradients each node awaits.
2. Propagate: a node's backward starts as soon as all its gradients are in;
   independent nodes (and the model calls inside them) run at the same time, under
   the concurrency limit of ``afnio_langchain.models.concurrency_limit``.
3. Commit: gradients reach leaves' ``grad`` only once the whole pass succeeded, so a
   failed pass leaves no gradient on some Variables and not on others.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Sequence

from afnio_langchain.autodiff.function import AccumulateGrad, GradientResult, Node
from afnio_langchain.autodiff.variable import Variable, make_gradient
from afnio_langchain.models.limits import concurrency_limit

RootGradient = Variable | str | Sequence[str] | None


class BackwardError(RuntimeError):
    """A node's backward failed; ``node`` names it. No gradient was committed."""

    def __init__(self, node: str, cause: BaseException) -> None:
        self.node = node
        super().__init__(f"backward of {node} failed: {type(cause).__name__}: {cause}")


async def run_backward(
    roots: Sequence[tuple[Variable, RootGradient]],
    retain_graph: bool = False,
    max_concurrency: int | None = None,
) -> None:
    """Propagate each root's feedback to every leaf that requires grad."""
    seeds: list[tuple[Node, int, Variable]] = []
    for variable, gradient in roots:
        if not variable.requires_grad or variable.grad_fn is None:
            raise RuntimeError(
                "backward() needs a Variable produced by a differentiable operation from "
                "inputs that require grad (this one does not require grad or has no grad_fn)"
            )
        seeds.append((variable.grad_fn, variable.output_nr, root_gradient(variable, gradient)))
    limit = concurrency_limit(max_concurrency) if max_concurrency else contextlib.nullcontext()
    with limit:
        staged = await _propagate(seeds)
    for variable, gradient in staged:  # commit only after every node succeeded
        variable.append_grad(gradient)
    if not retain_graph:
        for node in _reachable(node for node, _, _ in seeds):
            node.release()


def root_gradient(variable: Variable, gradient: RootGradient) -> Variable:
    """The feedback Variable a backward pass starts from, shaped like ``variable``."""
    if gradient is None:
        if not variable.is_evaluation:
            raise RuntimeError(
                "backward() needs feedback for this Variable: pass a str or a Variable, "
                "e.g. response.backward('Answer in one word.'); only evaluator outputs "
                "carry their own feedback"
            )
        return make_gradient(variable.data, variable)
    if isinstance(gradient, Variable):
        data = gradient.data
    elif isinstance(gradient, str) or (
        isinstance(gradient, Sequence) and all(isinstance(g, str) for g in gradient)
    ):
        data = gradient if isinstance(gradient, str) else list(gradient)
    else:
        raise TypeError(
            f"gradient must be a Variable, a str or a list of str, got {type(gradient).__name__}"
        )
    if variable.is_batched:
        n = len(variable.items())
        if not isinstance(data, list):
            data = [data] * n
        elif len(data) != n:
            raise ValueError(f"gradient has {len(data)} items, the Variable has {n}")
    elif isinstance(data, list):
        raise ValueError("a list gradient was given for a Variable holding a single text")
    if isinstance(gradient, Variable) and gradient.data == data:
        return gradient
    return make_gradient(data, variable)


def _reachable(roots) -> list[Node]:
    seen: dict[Node, None] = {}
    stack = list(roots)
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen[node] = None
        stack.extend(child for child, _ in node.next_functions if child is not None)
    return list(seen)


def merge_gradients(gradients: list[Variable]) -> Variable | None:
    """Several gradients reaching one non-leaf output become one (texts joined per item)."""
    if not gradients:
        return None
    if len(gradients) == 1:
        return gradients[0]
    first = gradients[0]
    if first.is_batched:
        columns = zip(*(g.items() for g in gradients))
        data = ["\n\n".join(str(t) for t in column if str(t)) for column in columns]
        return Variable(data, role=first.role)
    return Variable("\n\n".join(str(g.data) for g in gradients if str(g.data)), role=first.role)


async def _propagate(seeds: list[tuple[Node, int, Variable]]) -> list[tuple[Variable, Variable]]:
    # 1. Order: how many incoming edges each reachable node waits for.
    nodes = _reachable(node for node, _, _ in seeds)
    for node in nodes:
        if node.freed:
            node.ctx.check_not_freed()  # raises: this graph was already backpropagated
    waiting: dict[Node, int] = defaultdict(int)
    for node in nodes:
        for child, _ in node.next_functions:
            if child is not None:
                waiting[child] += 1
    inbox: dict[Node, list[list[Variable]]] = {n: [[] for _ in range(n.num_outputs)] for n in nodes}
    for node, output_nr, gradient in seeds:
        inbox[node][output_nr].append(gradient)

    # 2. Propagate: run every node whose gradients are all in, as they become ready.
    staged: list[tuple[Variable, Variable]] = []
    ready = [n for n in nodes if waiting[n] == 0]
    running: dict[asyncio.Task, Node] = {}
    try:
        while ready or running:
            for node in ready:
                running[asyncio.ensure_future(_run_node(node, inbox.pop(node), staged))] = node
            ready = []
            done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                node = running.pop(task)
                for (child, output_nr), result in zip(node.next_functions, task.result()):
                    if child is None:
                        continue
                    inbox[child][output_nr].extend(_as_list(result))
                    waiting[child] -= 1
                    if waiting[child] == 0:
                        ready.append(child)
    finally:
        for task in running:
            task.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)
    return staged


async def _run_node(
    node: Node, received: list[list[Variable]], staged: list[tuple[Variable, Variable]]
) -> list[GradientResult]:
    if isinstance(node, AccumulateGrad):
        staged.extend((node.variable, g) for g in received[0])
        return []
    for output_nr, variable in node.retained.items():
        staged.extend((variable, g) for g in received[output_nr])
    grad_outputs = tuple(merge_gradients(gs) for gs in received)
    if all(g is None for g in grad_outputs):
        return [None] * len(node.next_functions)
    try:
        return await node.run(grad_outputs)
    except asyncio.CancelledError:
        raise
    except BackwardError:
        raise
    except Exception as exc:
        raise BackwardError(node.name(), exc) from exc


def _as_list(result: GradientResult) -> list[Variable]:
    if result is None:
        return []
    return [g for g in result if g is not None] if isinstance(result, list) else [result]
