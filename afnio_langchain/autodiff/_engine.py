"""The backward engine: order the graph, then propagate feedback concurrently.

1. Order: walk back from the roots, counting how many gradients each node awaits.
2. Propagate: a node's backward starts as soon as all its gradients are in;
   independent nodes (and the model calls inside them) run at the same time, under
   the concurrency limit of ``afnio_langchain.models.concurrency_limit``. Between
   minibatch LLM nodes, gradients flow item by item (``_item_streams``): a stage's
   item starts once the next stage's same item has written its feedback.
3. Commit: gradients reach leaves' ``grad`` only once the whole pass succeeded, so a
   failed pass leaves no gradient on some Variables and not on others.

A best-effort pass (``best_effort=True``) instead lets the nodes and minibatch items
that failed drop out, commits every other gradient, and returns a
:class:`BackwardReport` naming exactly what failed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict, deque
from collections.abc import Sequence
from dataclasses import dataclass

from afnio_langchain.autodiff._function import AccumulateGrad, GradientResult, Node
from afnio_langchain.autodiff._item_streams import GradientStream, streamable_edges
from afnio_langchain.autodiff._minibatch import (
    MinibatchError,
    collect_item_failures,
    describe_error,
)
from afnio_langchain.autodiff._variable import Variable, make_gradient
from afnio_langchain.models import concurrency_limit, redact

RootGradient = Variable | str | Sequence[str] | None


class BackwardError(RuntimeError):
    """A node's backward failed; ``node`` names it. No gradient was committed.

    Attributes:
        node: The failing node's name (``"ChatCompletionBackward0"``).
        items: The minibatch items that failed (empty when the node failed as a whole).
    """

    def __init__(self, node: str, cause: BaseException) -> None:
        self.node = node
        self.items = cause.failed_items if isinstance(cause, MinibatchError) else []
        super().__init__(redact(f"backward of {node} failed: {type(cause).__name__}: {cause}"))


@dataclass(frozen=True)
class BackwardFailure:
    """One thing a best-effort backward pass could not do.

    Attributes:
        node: The node's name (``"ChatCompletionBackward0"``).
        item: The minibatch item whose gradient call failed, or None when the whole
            node failed (then none of its inputs got a gradient through it).
        error: The exception.

    Example:
        >>> from afnio_langchain import Variable
        >>> from afnio_langchain.autodiff import Function
        >>> class Fragile(Function):
        ...     @staticmethod
        ...     def forward(ctx, x):
        ...         return Variable(x.data + "!", role=x.role)
        ...     @staticmethod
        ...     def backward(ctx, grad_output):
        ...         raise TimeoutError("the backward model timed out")
        >>> x = Variable("hi", role="greeting", requires_grad=True)
        >>> report = Fragile.apply(x).backward("Too loud.", best_effort=True)
        >>> failure = report.failures[0]
        >>> failure.node, failure.item, failure.reason, x.grad
        ('FragileBackward0', None, 'TimeoutError: the backward model timed out', [])
    """

    node: str
    item: int | None
    error: BaseException

    @property
    def reason(self) -> str:
        """The error as ``"TypeName: message"`` (secrets masked)."""
        return describe_error(self.error)

    def __str__(self) -> str:
        where = self.node if self.item is None else f"{self.node} item {self.item}"
        return f"{where}: {self.reason}"


@dataclass(frozen=True)
class BackwardReport:
    """What a best-effort backward pass did: gradients committed and what failed.

    Example:
        >>> from afnio_langchain.autodiff import BackwardFailure, BackwardReport
        >>> report = BackwardReport(gradients=2, failures=(
        ...     BackwardFailure("ChatCompletionBackward0", 1, TimeoutError("slow")),))
        >>> report.ok, [str(f) for f in report.failures]
        (False, ['ChatCompletionBackward0 item 1: TimeoutError: slow'])
    """

    gradients: int = 0
    failures: tuple[BackwardFailure, ...] = ()

    @property
    def ok(self) -> bool:
        """True when nothing failed."""
        return not self.failures

    def to_dict(self) -> dict:
        """A JSON-ready summary."""
        return {
            "gradients": self.gradients,
            "failures": [
                {"node": f.node, "item": f.item, "error": f.reason} for f in self.failures
            ],
        }


async def run_backward(
    roots: Sequence[tuple[Variable, RootGradient]],
    retain_graph: bool = False,
    max_concurrency: int | None = None,
    best_effort: bool = False,
) -> BackwardReport | None:
    """Propagate each root's feedback to every leaf that requires grad.

    By default the pass is all or nothing: if any node fails, :class:`BackwardError`
    is raised and no gradient is committed (the graph is kept, so it can be retried).
    With ``best_effort=True`` failed nodes and items drop out, every other gradient is
    committed, and a :class:`BackwardReport` lists exactly what failed.
    """
    seeds: list[tuple[Node, int, Variable]] = []
    for variable, gradient in roots:
        if not variable.requires_grad or variable.grad_fn is None:
            raise RuntimeError(
                "backward() needs a Variable produced by a differentiable operation from "
                "inputs that require grad (this one does not require grad or has no grad_fn)"
            )
        seeds.append((variable.grad_fn, variable.output_nr, root_gradient(variable, gradient)))
    limit = concurrency_limit(max_concurrency) if max_concurrency else contextlib.nullcontext()
    failures: list[BackwardFailure] | None = [] if best_effort else None
    with limit:
        staged = await _propagate(seeds, failures)
    for variable, gradient in staged:  # commit only after every node succeeded
        variable.append_grad(gradient)
    if not retain_graph:
        for node in _reachable(node for node, _, _ in seeds):
            node.release()
    if failures is None:
        return None
    return BackwardReport(gradients=len(staged), failures=tuple(failures))


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


async def _propagate(
    seeds: list[tuple[Node, int, Variable]], failures: list[BackwardFailure] | None = None
) -> list[tuple[Variable, Variable]]:
    """Run the pass; with a ``failures`` list (best effort), a failing node is recorded
    there and treated as sending no gradient, instead of failing the pass."""
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
    running: dict[asyncio.Future, Node] = {}
    finished: deque[asyncio.Future] = deque()  # filled by done callbacks, in completion order
    wake = asyncio.Event()

    def on_done(task: asyncio.Future) -> None:
        finished.append(task)
        wake.set()

    streaming: set[Node] = set()  # producers started on a stream, before their consumer ended

    def deliver(node: Node, results: list[GradientResult]) -> None:
        opened: dict[int, GradientStream] = node.ctx.__dict__.pop("_item_streams", {})
        for j, ((child, output_nr), result) in enumerate(zip(node.next_functions, results)):
            if child is None:
                continue
            if j in opened:  # the producer already runs: it reads the rest from here
                opened[j].finish(result)
                waiting[child] -= 1
                continue
            inbox[child][output_nr].extend(_as_list(result))
            waiting[child] -= 1
            if waiting[child] == 0:
                ready.append(child)

    def start(node: Node, received: list[list[Variable]]) -> None:
        edges = [
            (j, child) for j, child in streamable_edges(node, waiting)
            if child not in streaming and not any(inbox[child])
        ]
        node.ctx._item_streams = {}  # filled below; a retried pass starts afresh
        task = asyncio.ensure_future(_run_node(node, received, staged, failures))
        task.add_done_callback(on_done)
        running[task] = node
        for j, child in edges:
            stream = GradientStream(child.ctx.conversation.size)
            node.ctx._item_streams[j] = stream  # the node publishes here; deliver finishes it
            streaming.add(child)
            inbox.pop(child)
            start(child, [[stream]])  # type: ignore[list-item]

    try:
        while ready or running:
            started = 0
            batch = ready[:]
            ready.clear()
            for node in batch:
                if isinstance(node, AccumulateGrad):  # no model call: no task
                    staged.extend((node.variable, g) for g in inbox.pop(node)[0])
                    continue
                if node in streaming:
                    continue  # started on a stream; its last feedback has just come
                if started:
                    await asyncio.sleep(0)  # let the last one send its request first
                start(node, inbox.pop(node))
                started += 1
            if not running:
                break
            while not finished:
                wake.clear()
                await wake.wait()
            while finished:
                task = finished.popleft()
                node = running.pop(task)
                error = task.exception()
                if failures is not None and isinstance(error, BackwardError):
                    failures.append(BackwardFailure(node.name(), None, error.__cause__))
                    deliver(node, [None] * len(node.next_functions))
                elif error is not None:
                    raise error
                else:
                    deliver(node, task.result())
    finally:
        for task in running:
            task.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)
    return staged


async def _run_node(
    node: Node,
    received: list[list[Variable]],
    staged: list[tuple[Variable, Variable]],
    failures: list[BackwardFailure] | None = None,
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
        if failures is None:
            return await node.run(grad_outputs)
        with collect_item_failures() as item_failures:  # best effort: items may drop out
            results = await node.run(grad_outputs)
        failures.extend(BackwardFailure(node.name(), i, exc) for i, exc in item_failures)
        return results
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
