"""A model's drift reference: what its live inputs and scores are compared with.

Built once per model from the feature set it was trained on (its manifest's dataset,
data_version and feature_spec_hash name the set; gallop.features.parts reads its rows),
as a deterministic sample of whole groups of up to REFERENCE_ROWS rows: per feature the
sample's values, their decile edges and missing share, the categorical vocabularies, and
the model's own scores on the sample (its ONNX graph, as served). Whole groups, so that a
race's runners stand together as they do when served, and the sample's groups, so that
gallop.monitoring.drift can tell how much their likeness is worth. Stored beside
model.onnx (gallop.layout.monitor_reference_key) and read back on every later check:
one model, one reference, whatever the feature set's later life.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np

from gallop.layout import (
    FEATURES_FILE,
    MANIFEST_FILE,
    features_prefix,
    model_prefix,
    monitor_reference_key,
)
from gallop.manifests import ModelManifest, read_feature_manifest
from gallop.monitoring.drift import decile_edges, decile_of, design_effect
from gallop.storage import ObjectMissing, Store

if TYPE_CHECKING:
    import pandas as pd

    from gallop.metadata.models import RegisteredModel
    from gallop.serving.model import LoadedModel

REFERENCE_ROWS = 20_000
SAMPLE_SEED = 0  # fixed: a model's reference is the same whenever it is built
FORMAT = 1  # of the stored file; another is built again


class NoReference(LookupError):
    """The model has no training feature set to refer to (trained from a file with
    `gallop train --data`, or its feature set is gone)."""


@dataclass
class Reference:
    """A model's reference sample. values: float32 [m, f] in the model's feature order
    (NaN missing); groups: int64 [m] group codes (every row its own when the model has no
    group); scores: float64 [m], the model's on those rows."""

    model_id: str
    features: list[str]
    values: np.ndarray
    groups: np.ndarray
    scores: np.ndarray
    categorical: dict[str, list[str]]
    source: dict[str, Any] = field(default_factory=dict)  # what it was built from

    def __post_init__(self) -> None:
        m, f = self.values.shape
        if f != len(self.features) or len(self.groups) != m or len(self.scores) != m:
            raise ValueError(
                f"reference of {m} rows x {f} values, {len(self.features)} feature names, "
                f"{len(self.groups)} groups and {len(self.scores)} scores"
            )

    def __len__(self) -> int:
        return len(self.values)

    # What drift compares with, worked out once per loaded reference

    @cached_property
    def sorted_values(self) -> list[np.ndarray]:
        """Each feature's present values, sorted."""
        ordered = np.sort(self.values, axis=0)  # NaN last
        present = (~np.isnan(self.values)).sum(axis=0)
        return [ordered[: present[j], j].astype(np.float64) for j in range(len(self.features))]

    @cached_property
    def edges(self) -> list[np.ndarray]:
        return [decile_edges(values) for values in self.sorted_values]

    @cached_property
    def missing_share(self) -> np.ndarray:
        if not len(self):
            return np.zeros(len(self.features))
        return np.asarray(np.isnan(self.values).mean(axis=0), dtype=np.float64)

    @cached_property
    def design_effects(self) -> np.ndarray:
        effects = []
        for j, edges in enumerate(self.edges):
            column = self.values[:, j]
            present = ~np.isnan(column)
            effects.append(design_effect(decile_of(column[present], edges), self.groups[present]))
        return np.asarray(effects)

    @cached_property
    def sorted_scores(self) -> np.ndarray:
        return np.sort(self.scores[~np.isnan(self.scores)])

    @cached_property
    def score_design_effect(self) -> float:
        present = ~np.isnan(self.scores)
        edges = decile_edges(self.sorted_scores)
        return design_effect(decile_of(self.scores[present], edges), self.groups[present])

    # Stored as .npz: arrays, and the rest as one JSON text (no pickles)

    def to_bytes(self) -> bytes:
        meta = {
            "format": FORMAT,
            "model_id": self.model_id,
            "features": self.features,
            "categorical": self.categorical,
            "source": self.source,
        }
        out = io.BytesIO()
        np.savez_compressed(
            out,
            values=self.values,
            groups=self.groups,
            scores=self.scores,
            meta=np.array(json.dumps(meta)),
        )
        return out.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Reference:
        """ValueError for what this code did not write."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as stored:
                meta = json.loads(str(stored["meta"]))
                if meta.get("format") != FORMAT:
                    raise ValueError(f"reference format {meta.get('format')!r}, not {FORMAT}")
                return cls(
                    model_id=str(meta["model_id"]),
                    features=list(meta["features"]),
                    values=stored["values"].astype(np.float32, copy=False),
                    groups=stored["groups"].astype(np.int64, copy=False),
                    scores=stored["scores"].astype(np.float64, copy=False),
                    categorical={k: list(v) for k, v in meta["categorical"].items()},
                    source=dict(meta.get("source") or {}),
                )
        except (OSError, KeyError, TypeError, ValueError) as exc:  # JSONDecodeError too
            raise ValueError(f"not a drift reference: {type(exc).__name__}: {exc}") from None


def sample_groups(groups: np.ndarray, max_rows: int, seed: int = SAMPLE_SEED) -> np.ndarray:
    """Positions of a deterministic sample of whole groups: groups in a seeded random
    order, taken while they fit in max_rows (the first always), positions ascending."""
    if max_rows < 1:
        raise ValueError(f"a reference needs at least one row, not {max_rows}")
    if len(groups) <= max_rows:
        return np.arange(len(groups))
    _, codes, sizes = np.unique(groups, return_inverse=True, return_counts=True)
    order = np.random.default_rng(seed).permutation(len(sizes))
    fits = np.cumsum(sizes[order]) <= max_rows
    fits[0] = True
    taken = np.zeros(len(sizes), dtype=bool)
    taken[order[fits]] = True
    return np.flatnonzero(taken[codes.reshape(-1)])


def build_reference(
    frame: pd.DataFrame,
    model: LoadedModel,
    max_rows: int = REFERENCE_ROWS,
    source: dict[str, Any] | None = None,
) -> Reference:
    """The reference of `model` from rows of its feature set (a frame with its features
    and, for grouped tasks, its group column)."""
    missing = [name for name in model.features if name not in frame.columns]
    if missing:
        raise NoReference(f"the feature set lacks the model's features {missing[:5]}")
    group = model.group
    if group and group in frame.columns:
        _, groups = np.unique(frame[group].astype(str).to_numpy(), return_inverse=True)
        groups = groups.reshape(-1).astype(np.int64)
    else:
        groups = np.arange(len(frame), dtype=np.int64)
    rows = sample_groups(groups, max_rows)
    values = np.ascontiguousarray(frame[model.features].to_numpy(np.float32)[rows])
    scores = model.run(values)["score"].reshape(len(rows), -1)[:, 0].astype(np.float64)
    return Reference(
        model_id=model.model_id,
        features=list(model.features),
        values=values,
        groups=groups[rows],
        scores=scores,
        categorical={k: list(v) for k, v in (model.manifest.get("categorical") or {}).items()},
        source={**(source or {}), "feature_set_rows": len(frame), "sample_rows": len(rows)},
    )


def reference_for(
    model: RegisteredModel | ModelManifest,
    data_store: Store,
    artifacts_store: Store,
    max_rows: int = REFERENCE_ROWS,
) -> Reference:
    """The model's stored reference, or one built from its training feature set and
    stored beside model.onnx (NoReference when it has none)."""
    manifest, prefix, model_id = _model_files(model)
    key = monitor_reference_key(prefix)
    try:
        return Reference.from_bytes(artifacts_store.get_bytes(key))
    except ObjectMissing:
        pass
    except ValueError:  # an older format: built again below, and replaced
        pass
    frame, source = _training_rows(manifest, data_store)
    from gallop.serving.model import LoadedModel

    loaded = LoadedModel.from_files(model_id, lambda name: artifacts_store.get_bytes(prefix + name))
    reference = build_reference(frame, loaded, max_rows, source)
    artifacts_store.put_bytes(key, reference.to_bytes(), "application/octet-stream")
    return reference


def _model_files(model: RegisteredModel | ModelManifest) -> tuple[ModelManifest, str, str]:
    """(manifest, the model's prefix in the artifacts bucket, its model id)."""
    if isinstance(model, dict):
        run_id = model.get("run_id")
        if not run_id:
            raise NoReference("the model manifest names no run: it is not a registered model")
        from gallop.training.runs import model_id_for

        return model, model_prefix(run_id), model_id_for(run_id)
    prefix = model.onnx_key.rsplit("/", 1)[0] + "/"
    return model.manifest, prefix, model.model_id


def _training_rows(
    manifest: ModelManifest, data_store: Store
) -> tuple[pd.DataFrame, dict[str, Any]]:
    from gallop.features.parts import read_rows

    dataset, version = manifest.get("dataset"), manifest.get("data_version")
    spec_hash = manifest.get("feature_spec_hash")
    if not (dataset and version and spec_hash):
        raise NoReference(
            "the model was not trained on a dataset's feature set (no dataset, data_version "
            "or feature_spec_hash in its manifest): it has no drift reference"
        )
    prefix = features_prefix(dataset, version, spec_hash)
    try:
        features = read_feature_manifest(json.loads(data_store.get_bytes(prefix + MANIFEST_FILE)))
        data_key = (features.get("keys") or {}).get(FEATURES_FILE, prefix + FEATURES_FILE)
        frame = read_rows(data_store.get_bytes, features, data_key)
    except ObjectMissing as exc:
        raise NoReference(
            f"the feature set the model was trained on ({dataset} {version}) is gone: {exc}"
        ) from None
    source = {"dataset": dataset, "data_version": version, "feature_spec_hash": spec_hash}
    return frame, source
