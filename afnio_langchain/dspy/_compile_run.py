"""One ``TextualGradientDescent.compile``: the student's baseline validation, the steps
over the epochs (each the package's one validation-gated step,
:func:`afnio_langchain.loop.training_step`, with a DSPy program as the face: its
minibatch runs, the graph of each failing run, and ``dspy.Evaluate`` for validation),
and the records and statistics they leave."""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING, Any

from afnio_langchain.autodiff import Variable, describe_error
from afnio_langchain.dspy import _prompts as prompts
from afnio_langchain.dspy._evaluation import (
    EvalSettings,
    EvaluationRun,
    ExampleRun,
    evaluate_program,
    run_examples,
)
from afnio_langchain.dspy._graph import build_graph
from afnio_langchain.dspy._stats import CandidateLog, CompileReport, StepRecord
from afnio_langchain.loop import (
    FeedbackPolicy,
    ScoredItem,
    StepOutcome,
    Validation,
    metric_name,
    training_step,
)
from afnio_langchain.optim import TGD

if TYPE_CHECKING:
    from afnio_langchain.dspy._teleprompter import TextualGradientDescent

logger = logging.getLogger("afnio_langchain.dspy._teleprompter")
"""The teleprompter's logger (DSPy users read an optimizer's logs under its module)."""


class CompileRun:
    """One ``compile``: the baseline, the steps over the epochs, their bookkeeping."""

    def __init__(
        self,
        owner: TextualGradientDescent,
        program: Any,
        predictors: list[tuple[str, Any]],
        backward_model: Any,
        optimizer_model: Any,
        settings: EvalSettings,
    ) -> None:
        self.o = owner
        self.program = program
        self.predictors = predictors
        self.names = [name for name, _ in predictors]
        self.params = [
            Variable(
                p.signature.instructions,
                role=prompts.INSTRUCTIONS_ROLE.format(predictor=name),
                requires_grad=True,
            )
            for name, p in predictors
        ]
        self.variables = {id(p): var for (_, p), var in zip(predictors, self.params)}
        self.by_id = {id(p): name for name, p in predictors}
        self.warned_ambiguous = False
        self.backward_model = backward_model
        self.optimizer = TGD(
            self.params,
            model=optimizer_model,
            momentum=owner.momentum,
            constraints=owner.constraints,
            **owner.optimizer_args,
        )
        self.settings = settings
        self.feedback = FeedbackPolicy(metric_name(owner.metric), owner.skip_correct, owner.success_threshold)
        self.log = CandidateLog(self.names)
        self.steps: list[StepRecord] = []
        self.initial: EvaluationRun | None = None
        self.current: float | None = None
        self.program_calls = 0
        self.metric_calls = 0
        self.failed = 0

    def execute(self, trainset: list[Any], valset: list[Any], seed: int, max_steps: int | None) -> None:
        o = self.o
        if o.gate_policy.validates:
            self.initial = self._validate(valset)
            self.current = self.initial.score
            self.log.add(0, self.current, self.program, self.names, calls_so_far=self.metric_calls, accepted=True)
        order = list(range(len(trainset)))
        rng = random.Random(seed)
        for epoch in range(1, o.num_epochs + 1):
            rng.shuffle(order)
            for start in range(0, len(order), o.batch_size):
                if max_steps is not None and len(self.steps) >= max_steps:
                    return
                batch = [trainset[i] for i in order[start : start + o.batch_size]]
                self._step(epoch, batch, valset)

    def _step(self, epoch: int, batch: list[Any], valset: list[Any]) -> None:
        o = self.o
        number = len(self.steps) + 1
        validated: list[EvaluationRun] = []

        def minibatch() -> list[ScoredItem]:
            runs = self._run(batch)
            return [
                ScoredItem(
                    r.result,
                    r,
                    expected=o._expected(r.example),
                    error=None if r.error is None else describe_error(r.error),
                )
                for r in runs
            ]

        def roots(item: ScoredItem) -> list[Variable]:
            run: ExampleRun = item.prediction
            graph = build_graph(
                run.trace,
                run.prediction,
                self.variables,
                self.by_id,
                backward_model=self.backward_model,
                predictors=[p for _, p in self.predictors],
            )
            if graph.ambiguous and not self.warned_ambiguous:
                self.warned_ambiguous = True
                logger.warning(
                    "A traced predictor is not one of the program's (a copy, as dspy.BestOfN "
                    "and dspy.Refine make) and its signature equals that of several of them "
                    "(%s), so it is not known which one it copies: its instructions get no "
                    "feedback (give those predictors different instructions to train them)",
                    ", ".join(graph.ambiguous[0]),
                )
            return graph.roots

        def validate() -> Validation:
            validated.append(self._validate(valset))
            return Validation(validated[-1].score, len(validated[-1].errors))

        outcome = training_step(
            self.optimizer,
            minibatch,
            roots,
            feedback=self.feedback,
            gate=o.gate_policy,
            validate=validate,
            current=self.current,
            max_concurrency=o.max_concurrency,
        )
        self._write()  # the kept (or restored) instructions
        record = _record(number, epoch, outcome, [self.names[i] for i in outcome.updated])
        if validated:
            if outcome.kept:
                self.current = validated[0].score
            self.log.add(
                number,
                validated[0].score,
                self._candidate(outcome),
                record.updated,
                calls_so_far=self.metric_calls,
                accepted=bool(outcome.kept),
            )
        self.steps.append(record)
        _log_step(record)

    def _candidate(self, outcome: StepOutcome) -> Any:
        """The program as it was validated (the rewrite, even when it was rolled back)."""
        if outcome.kept or outcome.report is None:
            return self.program
        candidate = self.program.deepcopy()
        rewritten = {r.index: str(r.new_value) for r in outcome.report.updated}
        for k, (_, predictor) in enumerate(candidate.named_predictors()):
            if k in rewritten:
                predictor.signature = predictor.signature.with_instructions(rewritten[k])
        return candidate

    def _run(self, examples: list[Any]) -> list[ExampleRun]:
        self._write()
        runs = run_examples(self.program, examples, self.o.metric, self.settings)
        self.program_calls += sum(len(r.trace) for r in runs)
        self.metric_calls += len(runs)
        self.failed += sum(1 for r in runs if r.error is not None)
        return runs

    def _validate(self, valset: list[Any]) -> EvaluationRun:
        self._write()
        result = evaluate_program(self.program, valset, self.o.metric, self.settings)
        self.program_calls += result.program_calls
        self.metric_calls += len(valset)
        self.failed += len(result.errors)
        return result

    def _write(self) -> None:
        """Write the instructions Variables into the predictors' signatures."""
        for (_, predictor), var in zip(self.predictors, self.params):
            if predictor.signature.instructions != var.data:
                predictor.signature = predictor.signature.with_instructions(str(var.data))

    def report(self, usage: dict[str, Any]) -> CompileReport:
        return CompileReport(
            initial_score=None if self.initial is None else self.initial.score,
            best_score=self.current,
            steps=self.steps,
            instructions={name: p.signature.instructions for name, p in self.predictors},
            program_calls=self.program_calls,
            usage=usage,
            initial_errors=0 if self.initial is None else len(self.initial.errors),
            failed_examples=self.failed,
            total_calls=self.metric_calls,
        )


def _record(number: int, epoch: int, outcome: StepOutcome, updated: list[str]) -> StepRecord:
    validation = outcome.validation
    return StepRecord(
        step=number,
        epoch=epoch,
        batch_size=len(outcome.items),
        train_score=outcome.train_score,
        errors=outcome.errors,
        with_feedback=outcome.feedback_items,
        backward_errors=outcome.backward_errors,
        updated=updated,
        val_score=None if validation is None else validation.score,
        val_errors=0 if validation is None else validation.errors,
        accepted=outcome.kept,
        note="" if outcome.kept else outcome.decision,
    )


def _log_step(record: StepRecord) -> None:
    text = (
        f"Step {record.step} (epoch {record.epoch}): minibatch score {score_text(record.train_score)} "
        f"({record.errors} of {record.batch_size} failed), feedback on {record.with_feedback}"
    )
    if record.updated:
        text += f", rewrote {record.updated}, validation {score_text(record.val_score)}"
    text += ": kept" if record.accepted else f": {record.note}"
    (logger.warning if record.note.startswith("failed") else logger.info)(text)


def score_text(value: float | None) -> str:
    """A score for the logs (``-`` when there is none)."""
    return "-" if value is None else f"{value:.3f}"


__all__ = ["CompileRun", "score_text"]
