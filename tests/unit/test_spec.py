from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from gallop.spec import DatasetSpec, Task, load_spec
from tests.conftest import SHIPPED_SPEC


def test_shipped_race_spec_loads() -> None:
    spec = load_spec(SHIPPED_SPEC)
    assert spec.task is Task.RANKING
    assert (spec.group, spec.entity, spec.time, spec.target) == (
        "race_id",
        "horse_id",
        "race_time",
        "position",
    )


def test_json_and_yaml_specs_are_the_same_spec(tmp_path: Path) -> None:
    yaml_spec = load_spec(SHIPPED_SPEC)
    json_path = tmp_path / "spec.json"
    json_path.write_text(json.dumps(yaml_spec.model_dump(mode="json")))
    assert load_spec(json_path).spec_hash == yaml_spec.spec_hash


@pytest.mark.parametrize(
    ("fields", "complaint"),
    [
        ({"task": "ranking", "target": "y", "target_order": "ascending"}, "needs 'group'"),
        ({"task": "ranking", "target": "y", "group": "g"}, "needs 'target_order'"),
        ({"task": "binary", "target": "y", "target_order": "ascending"}, "only applies"),
        ({"task": "binary", "target": "y", "entity": "y"}, "two roles"),
        ({"task": "binary", "target": "y", "features": ["y"]}, "may not include"),
        ({"task": "binary", "target": "y", "features": ["a"], "categorical": ["a"]}, "both"),
        ({"task": "binary", "target": "y", "colour": "red"}, "Extra inputs"),
        ({"task": "classification", "target": "y"}, "ranking"),
    ],
)
def test_inconsistent_specs_are_refused_with_the_reason(fields: dict, complaint: str) -> None:
    with pytest.raises(ValidationError, match=complaint):
        DatasetSpec.model_validate({"name": "x", **fields})


def test_names_are_safe_for_s3_keys() -> None:
    with pytest.raises(ValidationError, match="pattern"):
        DatasetSpec(name="../etc", task=Task.BINARY, target="y")


def test_a_spec_file_that_is_not_a_mapping_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(ValueError, match="mapping"):
        load_spec(path)
