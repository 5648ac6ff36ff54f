"""Training: the fit loop, datasets, metrics, checkpoints, reports and model names.

>>> from afnio_langchain.train import Trainer, fit, load_dataset, exact_match
"""

from afnio_langchain.loop import (
    Contains,
    ExactMatch,
    Metric,
    MetricResult,
    as_metric_result,
    contains,
    exact_match,
)
from afnio_langchain.train._accounting import (
    DEFAULT_PRICES,
    CostReport,
    check_prices,
    estimate_cost,
)
from afnio_langchain.train._checkpoint import (
    CheckpointError,
    TrainingState,
    load_checkpoint,
    run_lock,
    save_checkpoint,
)
from afnio_langchain.train._data import Dataset, DatasetError, load_dataset, split_dataset
from afnio_langchain.train._evaluation import EvalResult, ItemResult, evaluate
from afnio_langchain.train._files import atomic_write_json
from afnio_langchain.train._loading import (
    ChainLoadError,
    chain_input_fields,
    count_llm_steps,
    import_object,
    load_chain,
    model_parameter,
    trainable_chain,
)
from afnio_langchain.train._metrics import LMJudge, resolve_metric
from afnio_langchain.train._model_specs import (
    ModelPool,
    ModelSpecError,
    parse_model_spec,
    require_key,
)
from afnio_langchain.train._report import (
    PLOT_PNG,
    PROMPTS_JSON,
    REPORT_JSON,
    SUMMARY_MD,
    ReportFiles,
    apply_prompts,
    example_errors,
    step_counts,
    write_report,
)
from afnio_langchain.train._scores import MetricScoreError
from afnio_langchain.train._trainer import GATES, Trainer, TrainingError, TrainResult, fit

__all__ = [
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
    "MetricScoreError",
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
    "chain_input_fields",
    "check_prices",
    "contains",
    "count_llm_steps",
    "estimate_cost",
    "evaluate",
    "example_errors",
    "exact_match",
    "fit",
    "import_object",
    "load_chain",
    "load_checkpoint",
    "load_dataset",
    "model_parameter",
    "parse_model_spec",
    "require_key",
    "resolve_metric",
    "run_lock",
    "save_checkpoint",
    "split_dataset",
    "step_counts",
    "trainable_chain",
    "write_report",
]
