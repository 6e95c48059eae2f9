"""A model ready to serve: its ONNX session and manifest, loaded once, used by every
request of a warm container.

Only onnxruntime and numpy are imported here: the predict path must stay lean (no
pandas, LightGBM, SciPy or scikit-learn; a test checks). The explainers are built on the
first explain request, from the JSON the stack job wrote beside each base model.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

import numpy as np
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidProtobuf

from gallop.layout import MANIFEST_FILE, ONNX_FILE
from gallop.manifests import ModelManifest, read_model_manifest
from gallop.serving.registry import ModelUnreadable

# One request at a time per Lambda container (about 0.6 vCPU at 1024 MB): one thread
# each way; more only add hand-offs for a 12-runner race.
T = TypeVar("T")

INTRA_OP_THREADS = 1
INTER_OP_THREADS = 1


def session_for(model_bytes: bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = INTRA_OP_THREADS
    options.inter_op_num_threads = INTER_OP_THREADS
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


@dataclass
class LoadedModel:
    model_id: str
    manifest: ModelManifest
    session: ort.InferenceSession
    read_file: Callable[[str], bytes]  # a file of the artifact, for the explainers
    features: list[str] = field(init=False)
    index: dict[str, int] = field(init=False)
    # Per categorical feature's position: its vocabulary's text -> code
    category_codes: dict[int, dict[str, int]] = field(init=False)
    _built: dict[str, Any] = field(default_factory=dict, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        self.features = list(self.manifest["features"])
        self.index = {name: i for i, name in enumerate(self.features)}
        self.category_codes = {
            self.index[name]: {text: code for code, text in enumerate(vocabulary)}
            for name, vocabulary in (self.manifest.get("categorical") or {}).items()
            if name in self.index
        }

    @property
    def task(self) -> str:
        return str(self.manifest["task"])

    @property
    def group(self) -> str | None:
        return self.manifest.get("group")

    @classmethod
    def from_files(cls, model_id: str, read_file: Callable[[str], bytes]) -> LoadedModel:
        """ModelUnreadable when the files are not a model training wrote (ObjectMissing,
        from read_file, when one is gone)."""
        try:
            manifest = read_model_manifest(json.loads(read_file(MANIFEST_FILE)))
            return cls(model_id, manifest, session_for(read_file(ONNX_FILE)), read_file)
        except (ValueError, KeyError, TypeError, InvalidProtobuf, Fail) as exc:
            raise ModelUnreadable(
                f"model {model_id!r} cannot be loaded ({type(exc).__name__}: {exc}); "
                "train its run again"
            ) from None

    @classmethod
    def from_dir(cls, path: Path) -> LoadedModel:
        """A model artifact folder, as `gallop train --out` leaves it."""
        if not (path / MANIFEST_FILE).exists() or not (path / ONNX_FILE).exists():
            raise FileNotFoundError(f"{path} holds no model (model.onnx and manifest.json)")
        manifest = json.loads((path / MANIFEST_FILE).read_text())
        model_id = str(manifest.get("run_id") or path.name)
        return cls.from_files(model_id, lambda name: (path / name).read_bytes())

    def run(self, features: np.ndarray) -> dict[str, np.ndarray]:
        outputs = self.manifest["onnx_outputs"]
        values = self.session.run(outputs, {self.manifest["onnx_input"]: features})
        return dict(zip(outputs, values, strict=True))

    def once(self, name: str, build: Callable[[], T]) -> T:
        """What `build` makes of this model, made once per loaded model (under its lock):
        the explainers, on the first explain request (gallop.serving.explain builds on
        this module, never the other way round)."""
        with self._lock:
            if name not in self._built:
                self._built[name] = build()
            return cast(T, self._built[name])
