"""Where everything lives in the buckets: every S3 key prefix and artifact file name, and
the functions that build keys from ids. The one home of the layout: the code, the
infrastructure (its grants and lifecycle rules) and the local stack read it from here,
and a test refuses such a literal anywhere else.

Data bucket:
  raw/{dataset}/[{folders}/]{file}              uploads (API uploads: {upload_id}/{file})
  raw/{dataset}/append/[{folders}/]{file}       appends: the newest VALID version plus these rows
  raw/{dataset}/corrections/[{folders}/]{file}  appends whose races replace stored ones
  unclaimed/{rest of the raw key}               uploads no dataset claims
  curated/{dataset}/{version}/                  data.parquet, report.json, manifest.json
  quarantine/{dataset}/{upload_id}/             upload/{file}, report.json
  curated/{dataset}/{version}/append.parquet    an appended version's own rows (new, replacing)
  features/{dataset}/{version}/{spec_hash}/     features.parquet, state.npz, manifest.json
  features/{dataset}/online/{spec_hash}.json    the newest READY snapshot (race cards read it)
  capture/{dataset}/{model_id}/date={day}/      what the predict path served (Firehose, JSON Lines)
  capture-errors/{error type}/date={day}/       records Firehose could not partition
Artifacts bucket:
  training/{run_id}/                            a run's channels and its jobs' output
  models/{run_id}/                              model.onnx, manifest.json, report.html,
                                                base_{i}.explain.json, model.tar.gz,
                                                monitor_reference.npz (drift's reference)
  aliases/{dataset}/serving.json                what a dataset's requests are answered by: its
                                                champion and challenger, and the traffic policy
  models/{run_id}/monitoring.html               the model's monitoring page (live quality, drift)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gallop.spec import NAME_PATTERN

RAW_PREFIX = "raw/"
UNCLAIMED_PREFIX = "unclaimed/"
CURATED_PREFIX = "curated/"
QUARANTINE_PREFIX = "quarantine/"
FEATURES_PREFIX = "features/"
TRAINING_PREFIX = "training/"
MODELS_PREFIX = "models/"
ALIASES_PREFIX = "aliases/"
CAPTURE_ROOT = "capture/"
CAPTURE_ERRORS_ROOT = "capture-errors/"

# Captured predictions (gallop.monitoring.capture): the Firehose stream's prefixes, the
# same strings on AWS (dynamic partitioning) and locally (gallop.local.firehose). The JQ
# query names the partition keys from each record.
CAPTURE_PREFIX = (
    CAPTURE_ROOT + "!{partitionKeyFromQuery:dataset}/!{partitionKeyFromQuery:model}/"
    "date=!{timestamp:yyyy-MM-dd}/"
)
CAPTURE_ERROR_PREFIX = (
    CAPTURE_ERRORS_ROOT + "!{firehose:error-output-type}/date=!{timestamp:yyyy-MM-dd}/"
)
CAPTURE_PARTITION_QUERY = "{dataset: .dataset, model: .model_id}"

# A dataset version's files (curated/) and a rejected upload's (quarantine/)
DATA_FILE = "data.parquet"
APPENDED_FILE = "append.parquet"  # an appended version's own rows (a part of its data)
ROW_INDEX_FILE = "row_index.npz"  # a version's row hashes and groups: what an append checks
REPORT_FILE = "report.json"  # the validation report
MANIFEST_FILE = "manifest.json"  # of a dataset version, a feature set or a model
QUARANTINED_UPLOAD = "upload/"  # the kept upload, in a folder of its own beside its report

# A feature set's files (features/), also a training job's train and test channels
FEATURES_FILE = "features.parquet"
SNAPSHOT_FILE = "state.npz"  # the entity snapshot for race cards (gallop.features.state)

# A model's files (models/), as the stack job writes its model directory
ONNX_FILE = "model.onnx"
REPORT_HTML_FILE = "report.html"
TARBALL_FILE = "model.tar.gz"
MONITOR_REFERENCE_FILE = "monitor_reference.npz"  # gallop.monitoring.reference

# A base job's model directory, which the stack job reads
BASE_RECORD_FILE = "base.json"
MARGINS_FILE = "margins.parquet"


# The first folder under raw/{dataset}/ that makes an upload an append (a plain put with
# `aws s3 cp` works), and the one that also lets its races replace stored ones.
APPEND_FOLDER = "append"
CORRECTIONS_FOLDER = "corrections"
REPLACE, APPEND = "replace", "append"
ONLINE_FOLDER = "online"


class NotAnUploadKey(ValueError):
    """A key under raw/ that names no dataset and file: no dataset can ever claim it."""


@dataclass(frozen=True)
class RawKey:
    """An object under raw/: `raw/{dataset}/[{folders}/]{file}`, at any depth.

    The key says which dataset the object is for, never which upload it is: each object
    that lands is an upload of its own (see `gallop.storage.object_id`), whatever folder
    it sits in.
    """

    dataset: str
    filename: str
    key: str
    mode: str = REPLACE  # or APPEND: the key's first folder says which
    corrections: bool = False  # an append whose races may replace stored races

    @classmethod
    def for_upload(
        cls,
        dataset: str,
        upload_id: str,
        filename: str,
        mode: str = REPLACE,
        corrections: bool = False,
    ) -> RawKey:
        folder = _mode_folder(mode, corrections)
        key = f"{RAW_PREFIX}{dataset}/{folder}{upload_id}/{filename}"
        return cls(dataset, filename, key, mode, corrections and mode == APPEND)

    @classmethod
    def parse(cls, key: str) -> RawKey:
        parts = key.removeprefix(RAW_PREFIX).split("/") if key.startswith(RAW_PREFIX) else []
        if len(parts) < 2 or not parts[-1]:
            raise NotAnUploadKey(
                f"{key!r} names no file of a dataset: copy files to "
                f"{RAW_PREFIX}{{dataset}}/[{{folders}}/]{{file}}"
            )
        if not re.match(NAME_PATTERN, parts[0]):
            raise NotAnUploadKey(
                f"{key!r}: {parts[0]!r} cannot be a dataset name "
                "(lower-case letters, digits and '-')"
            )
        folder = parts[1] if len(parts) > 2 else ""
        corrections = folder == CORRECTIONS_FOLDER
        mode = APPEND if folder == APPEND_FOLDER or corrections else REPLACE
        return cls(parts[0], parts[-1], key, mode, corrections)


def _mode_folder(mode: str, corrections: bool) -> str:
    if mode not in (REPLACE, APPEND):
        raise ValueError(f"mode must be {REPLACE!r} or {APPEND!r}, not {mode!r}")
    if mode == REPLACE:
        return ""
    return (CORRECTIONS_FOLDER if corrections else APPEND_FOLDER) + "/"


def unclaimed_key(raw_key: str) -> str:
    """Where an object under raw/ that no dataset claims is kept: the rest of its key
    under unclaimed/, so that moving it back is the reverse."""
    return UNCLAIMED_PREFIX + raw_key.removeprefix(RAW_PREFIX)


def curated_prefix(dataset: str, version_id: str) -> str:
    return f"{CURATED_PREFIX}{dataset}/{version_id}/"


def appended_key(dataset: str, version_id: str) -> str:
    return curated_prefix(dataset, version_id) + APPENDED_FILE


def quarantine_prefix(dataset: str, upload_id: str) -> str:
    return f"{QUARANTINE_PREFIX}{dataset}/{upload_id}/"


def quarantined_upload_key(dataset: str, upload_id: str, filename: str) -> str:
    return quarantine_prefix(dataset, upload_id) + QUARANTINED_UPLOAD + filename


def features_prefix(dataset: str, version_id: str, spec_hash: str) -> str:
    return f"{FEATURES_PREFIX}{dataset}/{version_id}/{spec_hash}/"


def online_snapshot_key(dataset: str, spec_hash: str) -> str:
    """The pointer to the newest READY entity snapshot of a dataset under a feature spec:
    one object replaced whole, so a race card sees the old snapshot or the new one."""
    return f"{FEATURES_PREFIX}{dataset}/{ONLINE_FOLDER}/{spec_hash}.json"


def training_prefix(run_id: str) -> str:
    """A run's working objects: its data channels, and its SageMaker jobs' output."""
    return f"{TRAINING_PREFIX}{run_id}/"


def model_prefix(run_id: str) -> str:
    return f"{MODELS_PREFIX}{run_id}/"


MONITORING_HTML_FILE = "monitoring.html"


def monitoring_page_key(model_prefix: str) -> str:
    """A model's monitoring page, beside its training report (model_prefix: models/{run_id}/)."""
    return model_prefix + MONITORING_HTML_FILE


def serving_key(dataset: str) -> str:
    """The one object the predict path reads to know a dataset's champion, challenger and
    traffic policy (gallop.serving.registry writes it whole)."""
    return f"{ALIASES_PREFIX}{dataset}/serving.json"


COMPARISONS_PREFIX = "comparisons/"


def comparison_key(dataset: str) -> str:
    """A dataset's latest champion/challenger comparison (gallop.monitoring.compare), as
    the monitor run wrote it: what GET /v1/datasets/{name}/challenger answers (the API
    function has no pandas to compare with)."""
    return f"{COMPARISONS_PREFIX}{dataset}.json"


def legacy_alias_key(alias: str) -> str:
    """Where an alias of the whole installation was, before aliases were per dataset (the
    migration's publish step removes it)."""
    return f"{ALIASES_PREFIX}{alias}.json"


def capture_prefix(dataset: str, model_id: str, day: str | None = None) -> str:
    """Where a model's captured predictions are: all of them, or one day's (YYYY-MM-DD)."""
    prefix = f"{CAPTURE_ROOT}{dataset}/{model_id}/"
    return prefix + (f"date={day}/" if day else "")


def explain_file(index: int) -> str:
    """What the serving side explains the index-th base model of the graph with."""
    return f"base_{index}.explain.json"


def monitor_reference_key(model_prefix: str) -> str:
    """A model's drift reference, beside its model.onnx (built on its first check)."""
    return model_prefix + MONITOR_REFERENCE_FILE
