"""gallop: serverless tabular machine learning on AWS.

`gallop.Client` talks to a gallop API with DataFrames in and out; `gallop.load_model`
scores with a model folder on this machine. Both are imported on first use, so that
`import gallop` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Client", "__version__", "load_model"]

if TYPE_CHECKING:
    from gallop.sdk import Client, load_model


def __getattr__(name: str) -> Any:
    if name in ("Client", "load_model"):
        from gallop import sdk

        return getattr(sdk, name)
    raise AttributeError(f"module 'gallop' has no attribute {name!r}")
