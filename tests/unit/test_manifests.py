"""The manifests' types read what was stored before them: a key added later is optional."""

from __future__ import annotations

import pytest

from gallop.manifests import (
    ModelManifest,
    NotAManifest,
    read_feature_manifest,
    read_model_manifest,
)


def test_a_manifest_from_before_a_key_was_added_still_reads() -> None:
    # betting and top_features came after the first models were registered
    older = {"task": "ranking", "features": ["a"], "onnx_input": "features", "run_id": "r"}
    assert read_model_manifest(older)["task"] == "ranking"
    assert {"betting", "top_features"} <= ModelManifest.__optional_keys__
    assert "task" in ModelManifest.__required_keys__


@pytest.mark.parametrize("value", [None, [], "ranking", {"features": []}])
def test_what_training_cannot_have_written_is_not_a_manifest(value: object) -> None:
    with pytest.raises(NotAManifest):
        read_model_manifest(value)
    with pytest.raises(NotAManifest):
        read_feature_manifest(value)
