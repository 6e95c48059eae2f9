"""Reading and validating tables in memory: every problem is named precisely."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gallop.ingest.canonical import content_hash
from gallop.ingest.problems import UnreadableFile
from gallop.ingest.readers import read_table
from gallop.ingest.validate import validate
from gallop.spec import DatasetSpec, Task
from tests.bad_inputs import BAD_INPUTS, BadInput


@pytest.fixture(scope="module")
def good(races_csv: Path) -> bytes:
    return races_csv.read_bytes()


def problems_of(data: bytes, fmt: str, spec: DatasetSpec) -> list:
    try:
        frame = read_table(data, fmt)
    except UnreadableFile as exc:
        return [exc.problem]
    return validate(frame, spec).problems


@pytest.mark.parametrize(
    "bad", [b for b in BAD_INPUTS if b.code != "file_too_large"], ids=lambda b: b.id
)
def test_each_bad_input_is_named(bad: BadInput, good: bytes, races_spec: DatasetSpec) -> None:
    problems = problems_of(bad.make(good), bad.file_format, races_spec)
    matching = [p for p in problems if p.code == bad.code]
    assert matching, f"expected {bad.code}, got {[p.code for p in problems]}"
    assert bad.says in matching[0].message


def test_good_race_file_is_valid_with_float32_features(
    good: bytes, races_spec: DatasetSpec
) -> None:
    result = validate(read_table(good, "csv"), races_spec)
    assert result.ok, [p.message for p in result.problems]
    frame = result.canonical
    assert frame is not None
    for name in races_spec.features or []:
        assert frame[name].dtype == np.float32, name
    assert str(frame["race_time"].dtype) == "datetime64[us, UTC]"
    assert frame["position"].dtype == np.float64


def test_problem_rows_are_one_based_data_rows(good: bytes, races_spec: DatasetSpec) -> None:
    frame = pd.read_csv(io.BytesIO(good), dtype=str, keep_default_na=False)
    frame.loc[[3, 7], "weight_kg"] = ["heavy", "57,5"]
    problems = validate(frame, races_spec).problems
    (problem,) = [p for p in problems if p.code == "not_numeric"]
    assert problem.column == "weight_kg"
    assert problem.rows == [4, 8] and problem.row_count == 2
    assert problem.examples == ["heavy", "57,5"]


def test_formula_like_text_is_kept_verbatim(good: bytes, races_spec: DatasetSpec) -> None:
    frame = pd.read_csv(io.BytesIO(good), dtype=str, keep_default_na=False)
    payloads = ['=HYPERLINK("http://x.example","click")', "+SUM(1,2)", "-2+3", "@cmd"]
    frame.loc[:3, "course"] = payloads
    result = validate(frame, races_spec)
    assert result.ok
    assert result.canonical is not None
    assert set(payloads) <= set(result.canonical["course"].dropna())


def test_bom_parquet_and_jsonl_of_the_same_table_hash_alike(
    good: bytes, races_spec: DatasetSpec
) -> None:
    frame = pd.read_csv(io.BytesIO(good))
    parquet, jsonl = io.BytesIO(), io.StringIO()
    frame.to_parquet(parquet)
    frame.to_json(jsonl, orient="records", lines=True)
    shuffled = frame.sample(frac=1.0, random_state=1).to_csv(index=False).encode()
    variants = {
        "csv": (good, "csv"),
        "bom": (b"\xef\xbb\xbf" + good, "csv"),
        "shuffled": (shuffled, "csv"),
        "parquet": (parquet.getvalue(), "parquet"),
        "jsonl": (jsonl.getvalue().encode(), "jsonl"),
    }
    hashes = {}
    for name, (data, fmt) in variants.items():
        result = validate(read_table(data, fmt), races_spec)
        assert result.ok, (name, [p.message for p in result.problems])
        assert result.canonical is not None
        hashes[name] = content_hash(result.canonical, races_spec)
    assert len(set(hashes.values())) == 1, hashes


def test_nan_in_a_feature_means_missing_and_is_allowed(
    good: bytes, races_spec: DatasetSpec
) -> None:
    frame = pd.read_csv(io.BytesIO(good), dtype=str, keep_default_na=False)
    frame.loc[0, "weight_kg"] = ""
    frame.loc[1, "age"] = "NaN"
    result = validate(frame, races_spec)
    assert result.ok
    assert result.canonical is not None
    assert int(result.canonical["weight_kg"].isna().sum()) == 1
    assert int(result.canonical["age"].isna().sum()) == 1


def test_default_features_are_the_other_numeric_columns() -> None:
    spec = DatasetSpec(name="plain", task=Task.BINARY, target="clicked", categorical=["country"])
    frame = pd.DataFrame(
        {
            "clicked": ["0", "1", "1"],
            "price": ["1.5", "2", ""],
            "country": ["fr", "de", "fr"],
            "note": ["a", "b", "c"],
            "count": ["3", "4", "5"],
        }
    )
    result = validate(frame, spec)
    assert result.ok
    assert result.features == ["price", "count"]
    assert result.text_columns == ["note"]


def test_binary_target_must_be_zero_or_one() -> None:
    spec = DatasetSpec(name="plain", task=Task.BINARY, target="clicked")
    frame = pd.DataFrame({"clicked": ["0", "2", "1"], "price": ["1", "2", "3"]})
    (problem,) = validate(frame, spec).problems
    assert problem.code == "target_not_binary" and problem.rows == [2]


def test_graded_relevance_groups_without_signal_are_a_warning_not_an_error() -> None:
    spec = DatasetSpec(
        name="letor", task=Task.RANKING, target="rel", group="qid", target_order="descending"
    )
    frame = pd.DataFrame(
        {
            "qid": ["1", "1", "2", "2"],
            "rel": ["0", "0", "2", "0"],
            "f1": ["0.1", "0.2", "0.3", "0.4"],
        }
    )
    result = validate(frame, spec)
    assert result.ok
    assert [w.code for w in result.warnings] == ["no_target_order"]


def test_a_group_of_a_single_row_is_kept_with_a_warning() -> None:
    # GIVEN a query of one document, as LETOR's sample has (a walkover in racing)
    spec = DatasetSpec(
        name="letor", task=Task.RANKING, target="rel", group="qid", target_order="descending"
    )
    frame = pd.DataFrame(
        {"qid": ["1", "1", "2"], "rel": ["2", "0", "1"], "f1": ["0.1", "0.2", "0.3"]}
    )
    # WHEN it is validated
    result = validate(frame, spec)
    # THEN it is valid, the lone group named in a warning, and no row is dropped
    assert result.ok, result.problems
    [warning] = result.warnings
    assert warning.code == "single_row_group" and "'qid'" in warning.message
    assert len(result.canonical) == 3


def test_json_booleans_are_not_numbers(races_spec: DatasetSpec) -> None:
    data = b'{"clicked": 1, "price": true}\n{"clicked": 0, "price": 2.5}\n'
    spec = DatasetSpec(name="plain", task=Task.BINARY, target="clicked", features=["price"])
    (problem,) = validate(read_table(data, "jsonl"), spec).problems
    assert problem.code == "not_numeric" and problem.rows == [1]


def test_duplicate_header_names_are_refused() -> None:
    with pytest.raises(UnreadableFile, match="more than once"):
        read_table(b"a,b,a\n1,2,3\n", "csv")


def test_integer_ids_beyond_float_precision_stay_distinct(
    good: bytes, races_spec: DatasetSpec
) -> None:
    # Parquet int64 race ids above 2**53 would collide if they passed through float64.
    frame = pd.read_csv(io.BytesIO(good))
    codes = {race: 2**53 + i for i, race in enumerate(frame["race_id"].unique())}
    frame["race_id"] = frame["race_id"].map(codes).astype("int64")
    sink = io.BytesIO()
    frame.to_parquet(sink)
    result = validate(read_table(sink.getvalue(), "parquet"), races_spec)
    assert result.ok, [p.message for p in result.problems]
    assert result.canonical is not None
    assert result.canonical["race_id"].nunique() == len(codes)
    assert str(2**53 + 1) in set(result.canonical["race_id"])
