"""What every `gallop` command shares: its errors, its options, where it writes, and the
API client it talks to."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gallop.client import ENV_API_KEY, ENV_API_URL
from gallop.settings import get_settings

if TYPE_CHECKING:
    from gallop.client import ApiError, GallopClient
    from gallop.spec import DatasetSpec

SHIPPED_SPEC = Path(__file__).parents[1] / "specs" / "races.yaml"

STDIN = "-"


class UserError(Exception):
    """A command used wrongly (exit 2); the message goes to stderr on one line."""

    exit_code = 2


class Failed(UserError):
    """A command that ran and said no (exit 1): bad input, an API that refused."""

    exit_code = 1


# -- options ------------------------------------------------------------------------------


def add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--json",
        action="store_true",
        help="print the result as one JSON document on stdout (progress stays on stderr)",
    )


def add_state_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="local state directory (default: $GALLOP_STATE_DIR or ~/.gallop)",
    )


def add_api(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--api",
        default=None,
        help=f"API URL (default: ${ENV_API_URL}, else the running `gallop serve`, "
        "else a local stack started for the command)",
    )
    p.add_argument("--api-key", default=None, help=f"API key (default: ${ENV_API_KEY})")
    add_state_dir(p)


def state_dir(args: argparse.Namespace) -> Path:
    return Path(args.state_dir or get_settings().state_dir).expanduser()


# -- output -------------------------------------------------------------------------------


def progress(*parts: object, end: str = "\n") -> None:
    """Progress (stages, waits, dots) goes to stderr: stdout holds only results."""
    print(*parts, end=end, file=sys.stderr, flush=True)


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    """Columns as wide as their widest cell, two spaces apart."""
    widths = [max(map(len, column)) for column in zip(headers, *rows, strict=True)]
    for row in [headers, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def emit_json(document: Any) -> None:
    print(json.dumps(document, indent=2, default=str))


# -- input --------------------------------------------------------------------------------


def read_input(name: str | Path) -> bytes:
    """The bytes of a file, or of stdin for `-`. A missing file is a usage error (exit 2),
    as is a missing spec file."""
    if str(name) == STDIN:
        return sys.stdin.buffer.read()
    path = Path(name)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    return path.read_bytes()


def data_format(name: str | Path, given: str | None) -> str:
    """The upload format of a data file: --format, else its name's ending (stdin has none)."""
    from gallop.ingest.formats import format_of
    from gallop.ingest.problems import UnreadableFile

    if given:
        return given
    if str(name) == STDIN:
        raise UserError("reading stdin (-) needs --format (csv, parquet, jsonl, csv.gz, jsonl.gz)")
    try:
        return format_of(Path(name).name)
    except UnreadableFile as exc:
        raise UserError(exc.problem.message) from None


def add_format(p: argparse.ArgumentParser, what: str) -> None:
    from gallop.ingest.formats import FILENAMES

    p.add_argument(
        "--format",
        choices=sorted(FILENAMES),
        default=None,
        help=f"format of {what} (default: from the file name; needed for stdin, -)",
    )


def load_spec(path: Path) -> DatasetSpec:
    from pydantic import ValidationError

    from gallop.spec import load_spec as load

    try:
        return load(path)
    except FileNotFoundError:
        raise UserError(f"{path}: no such spec file") from None
    except (ValueError, ValidationError) as exc:
        raise UserError(f"{path}: invalid spec: {exc}") from None


# -- the API ------------------------------------------------------------------------------


def api_message(exc: ApiError) -> str:
    """One line from an API error: what its body says (ApiError.detail) and the status;
    a body that is not JSON, with the request it answered."""
    if isinstance(exc.body, dict):
        return f"{exc.detail} ({exc.status_code})"
    return str(exc)


@contextmanager
def api_client(args: argparse.Namespace, quiet: bool = True) -> Iterator[GallopClient]:
    """A client of the API named by --api/--api-key (or $GALLOP_API_URL/$GALLOP_API_KEY),
    of a running `gallop serve` on the state directory, or of a local stack started here
    for the length of the command. API errors become one line on stderr and exit 1."""
    import httpx

    from gallop.client import ApiError

    try:
        with _client(args, quiet) as client:
            yield client
    except ApiError as exc:
        raise Failed(api_message(exc)) from None
    except httpx.TransportError as exc:
        raise Failed(f"cannot reach the API: {exc}") from None


@contextmanager
def _client(args: argparse.Namespace, quiet: bool) -> Iterator[GallopClient]:
    from gallop.client import GallopClient

    url = getattr(args, "api", None) or os.environ.get(ENV_API_URL)
    key = getattr(args, "api_key", None) or os.environ.get(ENV_API_KEY)
    if url and not key:
        raise UserError(f"an API URL needs a key: --api-key or ${ENV_API_KEY}")
    if url and key:
        client = GallopClient(url, key)
    else:
        with _local_api(args, quiet) as (url, key):
            client = GallopClient(url, key)
            try:
                yield client
            finally:
                client.close()
        return
    try:
        yield client
    finally:
        client.close()


@contextmanager
def _local_api(args: argparse.Namespace, quiet: bool) -> Iterator[tuple[str, str]]:
    """(URL, key) of the running `gallop serve` on the state directory, else of a local
    stack started for the length of the command. Imported here: moto and the rest take
    seconds to import, which a command given a URL does not need."""
    from gallop.local.stack import LocalStack, free_port, running_endpoints

    fresh = getattr(args, "fresh", False)
    running = None if fresh else running_endpoints(state_dir(args))
    if running:
        progress(f"using the running local stack at {running['api_url']}")
        yield running["api_url"], running["api_key"]
        return
    with LocalStack(state_dir(args), fresh=fresh, quiet=quiet) as stack:
        yield stack.serve_api(free_port()), stack.api_key
