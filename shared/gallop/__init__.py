"""gallop: serverless tabular machine learning on AWS."""

from __future__ import annotations

__version__ = "0.1.0"
