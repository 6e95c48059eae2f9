"""What the base and stack jobs read from their channels, split the same way in both.

The train channel holds the feature set; the held-out rows are the `test` channel when
there is one, else the latest `test_share` of the train channel's groups, else none
(the stack is then judged out of fold). Both jobs build their rows here, so the margins
one writes line up row for row with the rows the other reads. The final phase learns
from the held-out rows too: the model served wastes none of the user's rows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from gallop.layout import FEATURES_FILE, MANIFEST_FILE
from gallop.manifests import FeatureManifest, read_feature_manifest
from gallop.training.contract import Container, JobError
from gallop.training.rows import Rows, combined
from gallop.training.runner import holdout_split


@dataclass(frozen=True)
class JobData:
    manifest: FeatureManifest
    train: Rows  # what the evaluation phase learns from
    test: Rows | None  # held out: judged on, never learnt from before the final phase
    everything: Rows | None  # train and test together, for the final phase (None: no test)


def read_channel(channel: Path) -> tuple[pd.DataFrame, FeatureManifest]:
    manifest = read_feature_manifest(json.loads((channel / MANIFEST_FILE).read_text()))
    return pd.read_parquet(channel / FEATURES_FILE), manifest


def read_job_data(container: Container, test_share: Any) -> JobData:
    frame, manifest = read_channel(container.channel("train"))
    if frame.empty:
        raise JobError("the train channel's features are empty")
    held: pd.DataFrame | None = None
    if (container.base / "input" / "data" / "test").is_dir():
        held = read_channel(container.channel("test"))[0]
    elif test_share:
        if not (isinstance(test_share, float) and 0 < test_share < 1):
            raise JobError(f"hyperparameter test_share={test_share!r} is not valid")
        frame, held = holdout_split(frame, manifest, test_share)
    train = Rows.of(frame, manifest, training=True)
    if held is None:
        return JobData(manifest, train, None, None)
    return JobData(
        manifest,
        train,
        Rows.of(held, manifest, training=False),
        Rows.of(combined(frame, held), manifest, training=True),
    )
