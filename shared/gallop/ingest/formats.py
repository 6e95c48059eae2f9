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
    # Text compresses well (often 5-10x): gzip is read as a stream, within a limit.
    ".csv.gz": "csv.gz",
    ".jsonl.gz": "jsonl.gz",
    ".ndjson.gz": "jsonl.gz",
    ".json.gz": "jsonl.gz",
}
FILENAMES = {fmt: "data." + fmt for fmt in ("csv", "parquet", "jsonl", "csv.gz", "jsonl.gz")}


def format_of(filename: str) -> str:
    for suffix, fmt in EXTENSIONS.items():
        if filename.lower().endswith(suffix):
            return fmt
    raise UnreadableFile(
        Problem(
            "unknown_format",
            f"cannot tell the format of {filename!r}: use .csv, .parquet or .jsonl "
            "(or .csv.gz, .jsonl.gz)",
        )
    )
