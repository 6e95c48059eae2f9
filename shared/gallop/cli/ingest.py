"""gallop ingest: upload a file (or stdin) through the API and wait for its validation."""

from __future__ import annotations

import argparse
import builtins
import functools
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from gallop.cli.common import (
    STDIN,
    UserError,
    add_api,
    add_format,
    add_json,
    api_client,
    data_format,
    emit_json,
    load_spec,
    progress,
    read_input,
)
from gallop.layout import APPEND, REPLACE

if TYPE_CHECKING:
    from gallop.client import GallopClient
    from gallop.spec import DatasetSpec


def add(commands: Any) -> None:
    p = commands.add_parser("ingest", help="upload a file and wait for its validation")
    p.add_argument("file", help="the data file, or - for stdin (with --format)")
    p.add_argument("--spec", type=Path, required=True, help="dataset spec (YAML or JSON)")
    add_format(p, "the data")
    p.add_argument(
        "--append",
        action="store_true",
        help="add the file's rows to the newest VALID version (validated as a whole) "
        "instead of making a version of the file alone",
    )
    p.add_argument(
        "--corrections",
        action="store_true",
        help="with --append: a race already stored that the file sends again replaces "
        "the stored race's rows (without it, such a race is an error)",
    )
    p.add_argument("--timeout", type=float, default=600.0)
    add_api(p)
    add_json(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.corrections and not args.append:
        raise UserError("--corrections replaces stored races of an append: give --append too")
    mode = APPEND if args.append else REPLACE
    fmt = data_format(args.file, args.format)
    data = read_input(args.file)
    spec = load_spec(args.spec)
    name = "stdin" if args.file == STDIN else Path(args.file).name
    with api_client(args) as client:
        status, version = ingest_bytes(
            client, spec, data, fmt, name, args.timeout, mode, args.corrections
        )
    if args.json:
        emit_json(version)
    else:
        print_version(version)
    return 0 if status == "VALID" else 1


def ingest_bytes(
    client: GallopClient,
    spec: DatasetSpec,
    data: bytes,
    fmt: str,
    name: str,
    timeout: float = 600.0,
    mode: str = REPLACE,
    corrections: bool = False,
) -> tuple[str, dict[str, Any]]:
    """Register the spec, upload the data (the whole dataset, or with mode="append" rows
    added to its newest VALID version), wait for validation; (status, version). The
    waiting is shown on stderr."""
    client.register_dataset(spec)
    started = time.monotonic()
    how = "" if mode == REPLACE else " as corrections" if corrections else " as an append"
    progress(f"uploading {name} ({len(data):,} bytes) to dataset {spec.name!r}{how} ...")
    upload_id = client.upload_bytes(spec.name, data, fmt, mode, corrections)
    progress(f"  upload {upload_id}: waiting for validation", end="")
    dots = [0]

    def tick(waited: float) -> None:
        if int(waited) > dots[0]:
            dots[0] = int(waited)
            progress(".", end="")

    status = client.wait_for_upload(spec.name, upload_id, timeout=timeout, progress=tick)
    progress(f" {status['status']} in {time.monotonic() - started:.1f} s")
    return status["status"], client.version(spec.name, status["version_id"])


def ingest_file(
    client: GallopClient,
    spec: DatasetSpec,
    path: Path,
    timeout: float = 600.0,
    mode: str = REPLACE,
    corrections: bool = False,
) -> tuple[str, dict[str, Any]]:
    fmt = data_format(path, None)
    return ingest_bytes(client, spec, path.read_bytes(), fmt, path.name, timeout, mode, corrections)


def print_version(version: dict[str, Any], file: TextIO | None = None) -> None:
    """A version's status and report, for people (on stdout unless `file` says)."""
    print = functools.partial(builtins.print, file=file or sys.stdout)
    report = version["report"]
    if version["status"] == "VALID":
        print(
            f"VALID version {version['version_id']}: {version['row_count']:,} rows"
            + (f", {version['group_count']:,} groups" if version["group_count"] else "")
        )
        if version.get("parent_version_id"):
            print(f"  {lineage(version)}")
        # An append's data is its parent's parts and its own rows (data_key names those).
        own = "its own rows" if version.get("parent_version_id") else "canonical data"
        print(f"  {own}: {version['data_key']}")
        print(f"  features (float32): {', '.join(report.get('features', []))}")
    else:
        print(
            f"REJECTED version {version['version_id']}; the upload is kept at "
            f"{version['source_key']}"
        )
        for error in report["errors"]:
            print(f"  ✗ [{error['code']}] {error['message']}")
    for warning in report.get("warnings", []):
        print(f"  ! [{warning['code']}] {warning['message']}")


def lineage(version: dict[str, Any]) -> str:
    """What an appended version grew from, in words."""
    added, replaced = version.get("rows_added") or 0, version.get("rows_replaced") or 0
    return f"appended to {version['parent_version_id']}: {added:,} rows added" + (
        f", {replaced:,} stored rows replaced (corrections)" if replaced else ""
    )
