"""A run's data: the READY features of its dataset version, split into train and test.

The split holds out the last races by start time when the data has times and groups
(no look-ahead into the test), else a seeded random share of the groups (or of the
rows): the same run always gets the same split.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pandas as pd
from sqlalchemy import Engine

from gallop.features.parts import read_rows
from gallop.manifests import FeatureManifest, read_feature_manifest
from gallop.metadata import repo
from gallop.metadata.models import FeatureStatus, TrainingRun
from gallop.storage import Store
from gallop.training.runner import holdout_split


class FeaturesNotReady(LookupError):
    pass


@dataclass(frozen=True)
class RunData:
    train: pd.DataFrame
    test: pd.DataFrame
    manifest: FeatureManifest


def load_run_data(engine: Engine, data: Store, run: TrainingRun) -> RunData:
    dataset = repo.get_dataset(engine, run.config["dataset"])
    feature_set = repo.find_feature_set(engine, dataset, run.version_id, run.spec_hash)
    if feature_set is None or feature_set.status != FeatureStatus.READY.value:
        raise FeaturesNotReady(f"no READY features for version {run.version_id}")
    assert feature_set.data_key and feature_set.manifest_key  # READY rows always have both
    manifest = read_feature_manifest(json.loads(data.get_bytes(feature_set.manifest_key)))
    # An appended version's rows are in parts (its parent's, then its own): all of them,
    # in the one order a full build of the same data gives.
    frame = read_rows(data.get_bytes, manifest, feature_set.data_key)
    # The split the SageMaker jobs make themselves (holdout_split, same seed): one run,
    # the same test rows on either launcher.
    train, test = holdout_split(frame, manifest, run.config["test_share"])
    return RunData(train, test, manifest)
