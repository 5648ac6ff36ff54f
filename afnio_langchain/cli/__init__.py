"""The ``afnio-langchain`` command line (also ``python -m afnio_langchain``).

- ``optimize``: train the prompts of a chain on a dataset with a metric, writing a
  checkpoint after every step and a report at the end.
- ``evaluate``: score a chain (optionally with trained prompts) on a dataset.
- ``export``: write a run's trained prompts into the chain's own LangChain prompt
  templates (LangChain's serialization, loadable without this package).
- ``demo``: optimize the system prompt of a small shipped pipeline on a shipped
  dataset, with the local model by default (offline).

Every check that can fail (arguments, data rows against the chain's template fields,
keys, servers, the chain, the metric, the output folder) runs before any model call
and before anything is written; such an error is one line and exit status 2.

Modules: ``_parser`` (the arguments), ``_setup`` (the checks and steps the commands
share), ``_commands`` (optimize, evaluate, demo), ``_export`` (export), ``_render`` (what is printed), ``_main``
(dispatch, errors and exit statuses).

Example:
    >>> from afnio_langchain.cli import build_parser
    >>> build_parser().parse_args(["demo", "--model", "scripted"]).model
    'scripted'
"""

from afnio_langchain.cli._main import main
from afnio_langchain.cli._parser import build_parser

__all__ = ["build_parser", "main"]
