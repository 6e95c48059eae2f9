"""What a training run is: the hash of its config, data version, feature spec and code.

The same inputs give the same run id (and, the jobs being deterministic, the same model
bytes), so asking for a run twice finds the first one instead of training again.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from gallop.settings import ENV_CODE_VERSION, Settings, get_settings

REPO = Path(__file__).resolve().parents[3]
RUN_ID_LENGTH = 20
# The code that turns features into a model: a change to any of it is another run.
TRAINING_SOURCES = (
    "training_jobs/*.py",
    "shared/gallop/training/*.py",
    "shared/gallop/models/*.py",
    "shared/gallop/features/*.py",
)
# The same sources where a wheel installs them (site-packages), outside a checkout.
INSTALLED = Path(__file__).resolve().parents[2]
INSTALLED_SOURCES = tuple(p.removeprefix("shared/") for p in TRAINING_SOURCES)


class CodeVersionUnknown(RuntimeError):
    pass


def source_hash(root: Path, sources: tuple[str, ...] = TRAINING_SOURCES) -> str:
    """sha256 of the training sources under a checkout: their paths and bytes, in path order,
    with line endings normalised so a Windows checkout hashes as a Linux one does."""
    files = sorted({p for pattern in sources for p in root.glob(pattern) if p.is_file()})
    if not any(p.parent.name == "training_jobs" for p in files):
        raise CodeVersionUnknown(
            f"no training sources under {root}: set {ENV_CODE_VERSION} to the code version"
        )
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes().replace(b"\r\n", b"\n") + b"\0")
    return digest.hexdigest()


@lru_cache(maxsize=1)
def _checkout_version() -> str:
    if (REPO / "training_jobs").is_dir():
        return source_hash(REPO)[:16]
    return source_hash(INSTALLED, INSTALLED_SOURCES)[:16]


def code_version(settings: Settings | None = None) -> str:
    """The configured code version, else the hash of this checkout's training sources
    (computed once per process)."""
    configured = (settings or get_settings()).code_version
    return configured or _checkout_version()


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def run_id_for(config: dict[str, Any], version_id: str, spec_hash: str, code: str) -> str:
    identity = {
        "config": config,
        "data_version": version_id,
        "feature_spec": spec_hash,
        "code_version": code,
    }
    return hashlib.sha256(canonical_json(identity).encode()).hexdigest()[:RUN_ID_LENGTH]
