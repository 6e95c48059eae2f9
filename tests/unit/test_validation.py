"""Reading and validating tables in memory: every problem is named precisely."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gallop.ingest.canonical import content_hash
from gallop.ingest.problems import Problem, UnreadableFile
from gallop.ingest.readers import BYTES_PER_CELL, Limits, read_table
from gallop.ingest.validate import validate
from gallop.settings import Settings
from gallop.spec import DatasetSpec, Task
from tests.bad_inputs import BAD_INPUTS, BadInput
from tests.conftest import TEST_LIMITS


@pytest.fixture(scope="module")
def good(races_csv: Path) -> bytes:
    return races_csv.read_bytes()


# The limits of the test stack, so that both see the same problems.
LIMITS = Limits.of(
    Settings(**{k.removeprefix("GALLOP_").lower(): v for k, v in TEST_LIMITS.items()})
)


def problems_of(data: bytes, fmt: str, spec: DatasetSpec) -> list:
    try:
        frame = read_table(data, fmt, LIMITS)
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


@pytest.mark.parametrize("ending", [b"\r", b"\r\n"], ids=["cr-only", "crlf"])
def test_any_line_ending_reads_as_the_same_table(
    ending: bytes, good: bytes, races_spec: DatasetSpec
) -> None:
    # Old Mac exports end lines with a lone CR: the same rows, the same version.
    with_ending = read_table(good.replace(b"\n", ending), "csv")
    pd.testing.assert_frame_equal(with_ending, read_table(good, "csv"))
    result = validate(with_ending, races_spec)
    assert result.ok and result.canonical is not None


def test_a_quoted_cell_may_hold_separators_and_line_breaks() -> None:
    frame = read_table(b'a,b\r1,"x, y\r\nz ""q"""\r2,3\r', "csv")
    assert frame.to_dict("list") == {"a": ["1", "2"], "b": ['x, y\r\nz "q"', "3"]}


def test_a_table_too_large_to_validate_is_refused_before_it_is_built(good: bytes) -> None:
    rows, columns = good.count(b"\n") - 1, good.split(b"\n", 1)[0].count(b",") + 1
    needed_mb = rows * columns * BYTES_PER_CELL["csv"] / 2**20
    tight = Limits.of(Settings(max_validation_memory_mb=max(1, int(needed_mb) - 1)))
    with pytest.raises(UnreadableFile) as refused:
        read_table(good, "csv", tight)
    assert refused.value.problem.code == "too_large_to_validate"
    assert f"{rows:,} rows x {columns:,} columns" in refused.value.problem.message
    assert len(read_table(good, "csv", Limits.of(Settings(max_validation_memory_mb=2)))) == rows


def test_a_wide_header_is_refused_from_its_first_line_whatever_follows() -> None:
    # The header is counted before anything else is read: the rest need not even be CSV.
    header = b",".join(b"c%d" % i for i in range(LIMITS.max_columns + 1))
    with pytest.raises(UnreadableFile, match=f"{LIMITS.max_columns + 1} columns"):
        read_table(header + b'\n"unclosed\n', "csv", LIMITS)


def test_a_problem_names_a_few_columns_of_a_wide_file_and_counts_the_rest(
    good: bytes, races_spec: DatasetSpec
) -> None:
    frame = pd.read_csv(io.BytesIO(good), dtype=str, keep_default_na=False).drop(
        columns=["position"]
    )
    wide = pd.concat(
        [frame, pd.DataFrame({f"x{i}": ["1"] * len(frame) for i in range(5000)})], axis=1
    )
    (problem,) = validate(wide, races_spec).problems
    assert problem.code == "missing_column"
    assert f"the file has {wide.shape[1]:,} columns" in problem.message
    assert "and 5,003 more" in problem.message
    assert len(problem.message) < 500


def test_a_problem_quoting_a_huge_column_name_stays_small() -> None:
    problem = Problem("not_numeric", f"column {'n' * 100_000!r} has text", column="n" * 100_000)
    shown = problem.to_dict()
    assert len(shown["message"]) < 1_100 and len(shown["column"]) < 1_100
    assert shown["column"].endswith("(99,000 more characters)")
