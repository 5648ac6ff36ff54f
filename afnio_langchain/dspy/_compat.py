"""Importing DSPy for the DSPy face of the package, with one clear error when it is missing."""

from __future__ import annotations

import importlib
from types import ModuleType

INSTALL_HINT = "pip install 'afnio-langchain[dspy]'"


def require_dspy(feature: str) -> ModuleType:
    """Return the ``dspy`` module, or raise an ImportError that says how to install it.

    Args:
        feature: What needs DSPy, for the message (``"TextualGradientDescent"``).

    Raises:
        ImportError: DSPy is not installed (or cannot be imported), or is older than
            3.4 (the engine API, ``dspy.lm15``, is used throughout).
    """
    try:
        dspy = importlib.import_module("dspy")
    except ImportError as exc:
        raise ImportError(f"{feature} needs DSPy (dspy-ai): {INSTALL_HINT}") from exc
    try:
        importlib.import_module("dspy.lm15")
    except ImportError as exc:
        version = getattr(dspy, "__version__", "unknown")
        raise ImportError(
            f"{feature} needs DSPy 3.4 or later (found {version}): "
            f"pip install -U 'afnio-langchain[dspy]'"
        ) from exc
    return dspy


__all__ = ["INSTALL_HINT", "require_dspy"]
