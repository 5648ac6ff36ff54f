"""The public surface, pinned exactly for every package (as langchain-openai does): a name
added to or dropped from an ``__all__`` must be added or dropped here too.

The names DESIGN.md promises (docs/design.md) are among them; everything else lives in
private modules (a leading underscore), which test_layers.py keeps inside their package.
"""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import afnio_langchain

EXPECTED_ALL = {
    "afnio_langchain": [
        "AgentRunnable",
        "ChatCompletionRunnable",
        "Variable",
        "__version__",
        "concurrency_limit",
        "enable_grad",
        "get_backward_model",
        "get_usage",
        "is_grad_enabled",
        "make_trainable",
        "no_grad",
        "parameters",
        "set_backward_model",
        "set_grad_enabled",
        "track_usage",
        "use_backward_model",
    ],
    "afnio_langchain.models": [
        "LOCAL_INSTALL_HINT",
        "PURPOSES",
        "PURPOSE_METADATA_KEY",
        "BaseModelClient",
        "Completion",
        "InputTooLongError",
        "JsonSchema",
        "LangChainChatModelClient",
        "LocalModelServer",
        "MalformedReplyError",
        "Message",
        "ModelClient",
        "OpenAIClient",
        "RetryPolicy",
        "StructuredOutputError",
        "UsageCounts",
        "UsageTracker",
        "as_model_client",
        "call_slot",
        "concurrency_limit",
        "get_concurrency_limit",
        "get_usage",
        "is_openai_client",
        "is_transient",
        "json_instruction",
        "local_model_available",
        "message_text",
        "parse_json_object",
        "parse_score",
        "record_usage",
        "redact",
        "redact_value",
        "request_fields",
        "required_keys_in",
        "resolve_call_model",
        "status_code_of",
        "track_usage",
    ],
    "afnio_langchain.autodiff": [
        "DEFAULT_OUTPUT_ROLE",
        "PROMPT_TAGS",
        "AccumulateGrad",
        "Add",
        "BackwardError",
        "BackwardFailure",
        "BackwardReport",
        "ChatCompletion",
        "Conversation",
        "Data",
        "DeterministicEvaluator",
        "ExactMatchEvaluator",
        "Function",
        "FunctionCtx",
        "ItemFailureWarning",
        "LLMFunction",
        "LMJudgeEvaluator",
        "MinibatchError",
        "MissingInputError",
        "Node",
        "ParseJson",
        "Slot",
        "Split",
        "Sum",
        "TextTransform",
        "Variable",
        "VariableSpec",
        "build_conversation",
        "chat_backward_messages",
        "describe_error",
        "enable_grad",
        "failed_items",
        "fill",
        "format_conversation",
        "format_variables",
        "get_backward_model",
        "is_grad_enabled",
        "item_gradients",
        "neutralize",
        "no_grad",
        "placeholders",
        "run_backward",
        "set_backward_model",
        "set_grad_enabled",
        "stream_text_to",
        "tag_attribute",
        "use_backward_model",
        "validate_data",
    ],
    "afnio_langchain.optim": [
        "REJECTED",
        "SKIPPED",
        "TGD",
        "UPDATED",
        "Optimizer",
        "ParamStep",
        "StepReport",
    ],
    "afnio_langchain.loop": [
        "TARGET_KEYS",
        "Contains",
        "Example",
        "ExactMatch",
        "Metric",
        "MetricResult",
        "as_metric_result",
        "ascore",
        "contains",
        "default_feedback",
        "exact_match",
        "find_target",
        "is_async_metric",
        "metric_name",
        "normalize_text",
        "optional_reference",
        "prediction_text",
    ],
    "afnio_langchain.runnables": [
        "ChatCompletionRunnable",
        "TextFunction",
        "TrainableChain",
        "VariableJsonOutputParser",
        "VariableRunnable",
        "VariableSchema",
        "VariableStrOutputParser",
        "as_differentiable",
        "make_trainable",
        "parameters",
    ],
    "afnio_langchain.agents": [
        "AgentRunnable",
        "AgentStep",
        "AgentStepLimitError",
        "FinalAnswerMatch",
        "ModelCallRecord",
        "RunRecorder",
        "StepCount",
        "ToolCallMatch",
        "ToolCallRecord",
        "TrainableAgent",
        "TrainablePrompt",
        "TrainablePromptMiddleware",
        "TrainablePromptSource",
        "Trajectory",
        "TrajectoryJudge",
        "TrajectoryMetrics",
        "as_trajectory",
        "create_trainable_react_agent",
        "recording",
        "trajectory_of",
    ],
    "afnio_langchain.dspy": [
        "INSTALL_HINT",
        "AsyncModelClientEngine",
        "CompileReport",
        "MetricResult",
        "ModelClientEngine",
        "PredictorCall",
        "StepRecord",
        "TextualGradientDescent",
        "as_dspy_lm",
        "build_graph",
        "call_metric",
        "chat_adapter_reply",
        "require_dspy",
    ],
    "afnio_langchain.train": [
        "DEFAULT_PRICES",
        "GATES",
        "PLOT_PNG",
        "PROMPTS_JSON",
        "REPORT_JSON",
        "SUMMARY_MD",
        "ChainLoadError",
        "CheckpointError",
        "Contains",
        "CostReport",
        "Dataset",
        "DatasetError",
        "EvalResult",
        "ExactMatch",
        "ItemResult",
        "LMJudge",
        "Metric",
        "MetricResult",
        "ModelPool",
        "ModelSpecError",
        "ReportFiles",
        "TrainResult",
        "Trainer",
        "TrainingError",
        "TrainingState",
        "apply_prompts",
        "as_metric_result",
        "atomic_write_json",
        "check_prices",
        "contains",
        "estimate_cost",
        "evaluate",
        "exact_match",
        "fit",
        "import_object",
        "load_chain",
        "load_checkpoint",
        "load_dataset",
        "parse_model_spec",
        "require_key",
        "resolve_metric",
        "save_checkpoint",
        "split_dataset",
        "trainable_chain",
        "write_report",
    ],
    "afnio_langchain.testing": [
        "AgentTurnRequest",
        "Fault",
        "OpenAICompatServer",
        "ScriptedCall",
        "ScriptedChatModel",
        "ToolCallingChatModel",
        "count_tokens",
        "default_responder",
        "request_text",
    ],
    "afnio_langchain.testing.fixtures": ["openai_server"],
    "afnio_langchain.demo": [
        "CONSTRAINTS",
        "TARGET_KEY",
        "build_demo_chain",
        "label_metric",
        "load_demo_data",
    ],
}

DESIGN_CONTRACT = {
    "afnio_langchain": ["Variable", "no_grad", "ChatCompletionRunnable", "make_trainable"],
    "afnio_langchain.autodiff": ["Function", "ChatCompletion"],
    "afnio_langchain.optim": ["TGD"],
    "afnio_langchain.testing": ["ScriptedChatModel"],
}


def public_modules() -> list[str]:
    """Every module of the package whose dotted name has no private part."""
    names = ["afnio_langchain"]
    for info in pkgutil.walk_packages(afnio_langchain.__path__, prefix="afnio_langchain."):
        parts = info.name.split(".")
        if not any(p.startswith("_") for p in parts[1:]):
            names.append(info.name)
    return sorted(names)


@pytest.mark.parametrize("module_name", sorted(EXPECTED_ALL))
def test_all_is_pinned_exactly(module_name):
    module = importlib.import_module(module_name)
    assert sorted(module.__all__) == sorted(EXPECTED_ALL[module_name])
    for name in module.__all__:
        assert getattr(module, name) is not None, f"{module_name}.{name}"


def test_every_public_module_is_pinned():
    unpinned = [m for m in public_modules() if m not in EXPECTED_ALL and m != "afnio_langchain.cli"]
    assert not unpinned, f"public modules without a pinned __all__ here: {unpinned}"


def test_the_names_design_promises_are_public():
    for module_name, names in DESIGN_CONTRACT.items():
        assert set(names) <= set(EXPECTED_ALL[module_name]), module_name
