"""Upload formats and their file names; no heavy imports (the API uses these)."""

from __future__ import annotations

from gallop.ingest.problems import Problem, UnreadableFile

EXTENSIONS = {
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
}
FILENAMES = {"csv": "data.csv", "parquet": "data.parquet", "jsonl": "data.jsonl"}


def format_of(filename: str) -> str:
    for suffix, fmt in EXTENSIONS.items():
        if filename.lower().endswith(suffix):
            return fmt
    raise UnreadableFile(
        Problem(
            "unknown_format",
            f"cannot tell the format of {filename!r}: use .csv, .parquet or .jsonl",
        )
    )
