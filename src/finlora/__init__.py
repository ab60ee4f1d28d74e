"""finlora: fine-tune transformer encoders with LoRA to classify financial and legal text.

    from finlora import TrainConfig, train, Predictor

    result = train(TrainConfig(data="headlines.csv", output_dir="outputs/headlines"))
    print(result["test"]["macro_f1"])
    predictor = Predictor.load("outputs/headlines")
    print(predictor.predict(["Net loss widened to EUR 5.2 mn from EUR 1.1 mn."]))

Names are imported on first use, so `import finlora` stays cheap (no torch).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "TrainConfig": "finlora.config",
    "CompareConfig": "finlora.config",
    "ProfileConfig": "finlora.config",
    "FinloraError": "finlora.errors",
    "train": "finlora.api",
    "evaluate": "finlora.api",
    "Predictor": "finlora.predictor",
}
__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:
    from finlora.api import evaluate, train  # noqa: F401
    from finlora.config import CompareConfig, ProfileConfig, TrainConfig  # noqa: F401
    from finlora.errors import FinloraError  # noqa: F401
    from finlora.predictor import Predictor  # noqa: F401


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'finlora' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
