"""Why a row scored what it did: the stacked score split exactly into one part per
feature plus a base value. The stack is linear in its base models' margins, and each
margin splits exactly (TreeSHAP for a LightGBM base, its own terms for a linear one), so
the parts are weight x base part, summed over the bases."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from gallop.manifests import BaseModelEntry
from gallop.models.linear import LinearModel
from gallop.models.offset import Offset
from gallop.serving.model import LoadedModel


class LinearExplainer:
    def __init__(self, model: LinearModel) -> None:
        self.model = model

    def contributions(self, features: np.ndarray) -> np.ndarray:
        """[n, features + 1]: each feature's term, then the bias (the base value)."""
        terms = self.model.contributions(features)
        return np.column_stack([terms, np.full(len(terms), self.model.bias)])


class OffsetExplainer:
    """Trees boosted from an offset: their TreeSHAP parts, and the offset's feature as its
    own part (the margin is the trees' plus its value)."""

    def __init__(self, trees: Any, offset: Offset) -> None:
        self.trees, self.offset = trees, offset

    def contributions(self, features: np.ndarray) -> np.ndarray:
        return self.offset.explained(self.trees.contributions(features), features)


def explainer_for(base: BaseModelEntry, payload: dict[str, Any]) -> Any:
    if base["kind"] == "linear":
        return LinearExplainer(LinearModel.from_dict(payload))
    from gallop.serving.treeshap import TreeExplainer

    trees = TreeExplainer(payload)
    offset = payload.get("offset")
    return OffsetExplainer(trees, Offset(**offset)) if offset else trees


def explainers(model: LoadedModel) -> list[Any]:
    """Per base model: TreeSHAP over its trees, or its linear terms (built once per model,
    from the JSON the stack job wrote beside it)."""

    def build() -> list[Any]:
        return [
            explainer_for(base, json.loads(model.read_file(base["explain"])))
            for base in model.manifest["base_models"]
        ]

    return model.once("explainers", build)


def stacked_contributions(model: LoadedModel, features: np.ndarray) -> np.ndarray:
    """[n, features + 1]: the stacked score's part per feature, then the base value."""
    weights = [float(base["weight"]) for base in model.manifest["base_models"]]
    total = np.zeros((len(features), len(model.features) + 1))
    for weight, explainer in zip(weights, explainers(model), strict=True):
        if weight:
            total += weight * explainer.contributions(features)
    total[:, -1] += float(model.manifest["meta"]["bias"])
    return total


def reason(feature: str, value: float | str | None, contribution: float) -> str:
    if value is None:
        shown = "missing"
    else:
        shown = f"= {value}" if isinstance(value, str) else f"= {value:.4g}"
    direction = "raised" if contribution >= 0 else "lowered"
    return f"{feature} {shown} {direction} the score by {abs(contribution):.2f}"


def shown_value(model: LoadedModel, position: int, value: float) -> float | str | None:
    """The value as the caller knows it: a category's text, not the code the model reads."""
    if np.isnan(value):
        return None
    if position in model.category_codes:
        return str(model.manifest["categorical"][model.features[position]][int(value)])
    return float(value)


def explanations(model: LoadedModel, features: np.ndarray, top_k: int) -> list[dict[str, Any]]:
    """Per row: the native stack's score (float64, the sum of its parts exactly; the graph's
    float32 score agrees within 1e-5, relative above 1), the base value, each feature's
    part and the top_k reasons."""
    parts = stacked_contributions(model, features)
    out = []
    for row, values, total in zip(
        parts, features.astype(np.float64), parts.sum(axis=1), strict=True
    ):
        order = np.argsort(-np.abs(row[:-1]), kind="stable")[:top_k]
        out.append(
            {
                "score": float(total),
                "base_value": float(row[-1]),
                "contributions": dict(zip(model.features, row[:-1].tolist(), strict=True)),
                "top": [
                    {
                        "feature": model.features[j],
                        "value": (shown := shown_value(model, j, values[j])),
                        "contribution": float(row[j]),
                        "reason": reason(model.features[j], shown, row[j]),
                    }
                    for j in order
                ],
            }
        )
    return out
