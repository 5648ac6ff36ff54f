"""The benchmark task, shared by both libraries: the stage prompts of the pipeline, the
data and the deterministic evaluation (so the two pipelines differ only in the library
that runs them)."""

from __future__ import annotations

import random

FIRST_USER_TEMPLATE = "Question: {question}"
LATER_USER_TEMPLATE = "Draft answer:\n{draft}"

_STAGE_PROMPTS = (
    "You solve short arithmetic word problems. Work step by step and give the total.",
    "You check a draft solution for arithmetic mistakes and fix any you find.",
    "You rewrite a checked solution as a short final answer with the number first.",
)


def stage_prompt(stage: int) -> str:
    """The initial system prompt of stage ``stage`` (0-based), for any depth."""
    if stage < len(_STAGE_PROMPTS):
        return _STAGE_PROMPTS[stage]
    return f"You are review stage {stage + 1}: improve the clarity of the draft answer."


def stage_role(stage: int) -> str:
    """The role (TextGrad: role description) of stage ``stage``'s system prompt."""
    return f"system prompt of stage {stage + 1} of the answer pipeline"


def output_role(stage: int) -> str:
    """The role of stage ``stage``'s reply."""
    return f"answer written by stage {stage + 1}"


def user_template(stage: int) -> str:
    """The user message template of stage ``stage``: the question, then the draft."""
    return FIRST_USER_TEMPLATE if stage == 0 else LATER_USER_TEMPLATE


def dataset(size: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """``size`` word problems and their answers (the fake model never gets them right,
    so every item sends feedback back: the worst case for a training step)."""
    rng = random.Random(seed)
    questions, answers = [], []
    for i in range(size):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        questions.append(
            f"Problem {i}: a shop sells {a} apples in the morning and {b} in the afternoon. "
            "How many apples does it sell in total?"
        )
        answers.append(str(a + b))
    return questions, answers


def evaluate(prediction: str, target: str) -> tuple[float, str]:
    """Score 1 when the prediction is exactly the target, else 0 with feedback."""
    if prediction.strip() == target:
        return 1.0, "Correct."
    return 0.0, (
        f"The final answer must be exactly {target}, a bare number, but the pipeline "
        f"answered with {len(prediction.split())} words of text."
    )
