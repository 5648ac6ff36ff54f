"""Training: the fit loop, datasets, metrics, checkpoints, reports and model names.

>>> from afnio_langchain.train import Trainer, fit, load_dataset, exact_match
"""

from afnio_langchain.train.accounting import DEFAULT_PRICES, CostReport, estimate_cost
from afnio_langchain.train.checkpoint import (
    CheckpointError,
    TrainingState,
    load_checkpoint,
    save_checkpoint,
)
from afnio_langchain.train.data import Dataset, DatasetError, load_dataset, split_dataset
from afnio_langchain.train.evaluation import EvalResult, ItemResult, evaluate
from afnio_langchain.train.loading import ChainLoadError, load_chain
from afnio_langchain.train.metrics import (
    Contains,
    ExactMatch,
    LMJudge,
    Metric,
    MetricResult,
    as_metric_result,
    contains,
    exact_match,
    resolve_metric,
)
from afnio_langchain.train.model_specs import ModelPool, ModelSpecError, parse_model_spec
from afnio_langchain.train.report import ReportFiles, apply_prompts, write_report
from afnio_langchain.train.trainer import Trainer, TrainingError, TrainResult, fit

__all__ = [
    "DEFAULT_PRICES",
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
    "contains",
    "estimate_cost",
    "evaluate",
    "exact_match",
    "fit",
    "load_chain",
    "load_checkpoint",
    "load_dataset",
    "parse_model_spec",
    "resolve_metric",
    "save_checkpoint",
    "split_dataset",
    "write_report",
]
