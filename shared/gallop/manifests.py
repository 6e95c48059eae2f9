"""The two manifests other code relies on, as types: a feature set's (written by the
features step beside features.parquet, read by training) and a model's (written by the
stack job beside model.onnx, read by serving, the registry, the API and the CLI).

Stored manifests are JSON, so the types describe what is read as much as what is
written: a key added later is NotRequired, and readers use .get() for it, so that the
manifests of models trained before it still load. Typing only: the predict path imports
this, so nothing heavier than the standard library. (No `from __future__ import
annotations`: TypedDict tells NotRequired keys apart only from evaluated annotations.)
"""

from collections.abc import Mapping
from typing import Any, NotRequired, TypedDict, cast


class FeatureManifest(TypedDict):
    """A feature set's manifest (gallop.features.build.feature_manifest builds it)."""

    dataset: str
    spec_hash: str
    features: list[str]  # the model's inputs, in order
    dtypes: dict[str, str]
    categorical: dict[str, list[str]]  # a categorical feature's value is its text's place
    rows: int
    identifiers: list[str]  # group, time and entity columns present
    task: str
    target_order: str | None
    group: str | None
    time: str | None
    target: str
    odds: str | None
    post_race: list[str]
    data_end: str | None  # ISO time of the last row, UTC
    entities: dict[str, int]
    reference: dict[str, Any]  # reference statistics per feature (drift)
    # Added when stored (gallop.features.service): where the set and its files are
    version_id: NotRequired[str]
    keys: NotRequired[dict[str, str]]
    # The features' files in order, each with its row count (an appended version's set is
    # its parent's parts plus its own; gallop.features.parts reads them), and how the set
    # was built: {"kind": "incremental" | "full", "parent_version_id", "reason"}
    parts: NotRequired[list[dict[str, Any]]]
    build: NotRequired[dict[str, Any]]


class BaseModelEntry(TypedDict):
    """One base model of the stacked graph."""

    model: str
    weight: float
    kind: str  # its family: "linear" is explained by its terms, the rest by TreeSHAP
    explain: str  # its explainer's file beside model.onnx
    fit: Any


class MetaEntry(TypedDict):
    """The meta-learner over the base models' margins."""

    bias: float
    calibration: dict[str, Any]
    chosen: str
    selection_loss: str
    selection: dict[str, float]
    weights: dict[str, float]  # every base model's, 0 for those left out of the graph


class ModelManifest(TypedDict):
    """A model's manifest (training_jobs.stack.manifest_of builds it)."""

    task: str
    features: list[str]
    categorical: dict[str, list[str]]
    onnx_input: str
    onnx_outputs: list[str]
    group: str | None
    identifiers: list[str]
    dataset: str | None
    target: str
    base_models: list[BaseModelEntry]
    meta: MetaEntry
    # Per model ("stack", each base); null where a metric has no value on the rows
    metrics: Mapping[str, Mapping[str, float | None]]
    # The stack against its best base on each metric, with the paired interval
    # (gallop.training.stacking.against_best_base); absent from models trained before it.
    against_best_base: NotRequired[dict[str, Any]]
    onnx_parity: dict[str, float]
    evaluated_on: str  # "test" | "out-of-fold"
    rows: dict[str, int]
    bagging: bool
    search: dict[str, Any]
    data_version: str | None
    run_id: str | None
    code_version: str | None
    feature_spec_hash: str | None
    explain: dict[str, str]
    betting: NotRequired[dict[str, Any] | None]
    top_features: NotRequired[list[dict[str, Any]]]


class NotAManifest(ValueError):
    pass


def base_metrics_key(index: int, kind: str) -> str:
    """The key of a base's held-out metrics in a model manifest: base_0_lambdarank (the
    index keeps two bases of one kind apart)."""
    return f"base_{index}_{kind}"


def kind_of_metrics_key(key: str) -> str:
    """The model a metrics key names: "stack", or a base's kind (base_3_position_regression
    -> position_regression)."""
    return key.split("_", 2)[-1] if key.startswith("base_") else key


def read_model_manifest(value: Any) -> ModelManifest:
    """A model manifest as loaded from JSON: NotAManifest for what the stack job cannot
    have written (not an object, or one without a task). Serving reads more of it, and
    refuses a manifest without what it needs (gallop.serving.model)."""
    missing = _missing(value, ("task",))
    if missing:
        raise NotAManifest(f"not a model manifest: no {', '.join(missing)}")
    return cast(ModelManifest, value)


def read_feature_manifest(value: Any) -> FeatureManifest:
    missing = _missing(value, ("task", "features", "target"))
    if missing:
        raise NotAManifest(f"not a feature set manifest: no {', '.join(missing)}")
    return cast(FeatureManifest, value)


def _missing(value: Any, keys: tuple[str, ...]) -> list[str]:
    if not isinstance(value, dict):
        return ["object"]
    return [key for key in keys if key not in value]
