"""`gallop ingest --append [--corrections]`: its arguments, what it asks the API for, and
what it prints of an appended version, and what the client asks the API for (the API is
httpx's MockTransport there; its answer is pinned in tests/integration/test_api.py)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from gallop.cli import main, parser
from gallop.cli.ingest import print_version
from gallop.client import GallopClient
from tests.conftest import SHIPPED_SPEC

PARENT = "v-20260105-3f9a0c1d"


def version(**lineage: Any) -> dict[str, Any]:
    return {
        "version_id": "v-20260106-9b8a7c6d",
        "status": "VALID",
        "row_count": 10_500,
        "group_count": 1_050,
        "data_key": "curated/races/v-20260106-9b8a7c6d/data.parquet",
        "source_key": "raw/races/append/0b5e/data.csv",
        "report": {"errors": [], "warnings": [], "features": ["draw"]},
        "parent_version_id": None,
        "rows_added": None,
        "rows_replaced": None,
        **lineage,
    }


def printed(found: dict[str, Any]) -> str:
    out = io.StringIO()
    print_version(found, out)
    return out.getvalue()


def test_the_ingest_command_takes_append_and_corrections() -> None:
    args = parser().parse_args(
        ["ingest", "today.csv", "--spec", "races.yaml", "--append", "--corrections"]
    )
    assert (args.append, args.corrections) == (True, True)
    plain = parser().parse_args(["ingest", "races.csv", "--spec", "races.yaml"])
    assert (plain.append, plain.corrections) == (False, False)


def test_corrections_without_append_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a file that exists WHEN --corrections comes without --append
    data = tmp_path / "today.csv"
    data.write_text("race_id,horse_id\n1,a\n")
    code = main(["ingest", str(data), "--spec", str(SHIPPED_SPEC), "--corrections"])
    # THEN it exits 2 on one line saying what to add, before any API is asked
    said = capsys.readouterr()
    assert code == 2 and not said.out
    assert said.err.startswith("gallop: ") and "--append" in said.err
    assert said.err.count("\n") == 1


def test_an_appended_version_prints_its_lineage() -> None:
    appended = printed(version(parent_version_id=PARENT, rows_added=500, rows_replaced=0))
    assert f"appended to {PARENT}: 500 rows added\n" in appended
    corrected = printed(version(parent_version_id=PARENT, rows_added=512, rows_replaced=12))
    assert f"appended to {PARENT}: 512 rows added, 12 stored rows replaced" in corrected
    whole = printed(version())
    assert "VALID version v-20260106-9b8a7c6d: 10,500 rows" in whole
    assert "appended" not in whole


@pytest.mark.parametrize(
    ("options", "asked"),
    [
        ({}, {"mode": "replace", "corrections": False}),
        ({"mode": "append"}, {"mode": "append", "corrections": False}),
        ({"mode": "append", "corrections": True}, {"mode": "append", "corrections": True}),
    ],
)
def test_the_client_asks_the_api_for_the_upload_mode_it_was_given(
    options: dict[str, Any], asked: dict[str, Any]
) -> None:
    # GIVEN an API that answers any upload request
    sent: list[Any] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append((request.url.path, json.loads(request.content)))
        return httpx.Response(201, json={"upload_id": "u1"})

    client = GallopClient("http://gallop.test", "key", transport=httpx.MockTransport(answer))
    # WHEN an upload is asked for with a mode
    client.create_upload("races", "csv", **options)
    # THEN the body names it (a replace, unless told)
    assert sent == [("/v1/datasets/races/uploads", {"format": "csv", **asked})]
