"""gallop for notebooks and scripts: the API with DataFrames in and out (`Client`), and a
model folder scored on this machine (`load_model`).

    import gallop
    client = gallop.Client()                    # GALLOP_API_URL, GALLOP_API_KEY
    client.upload(history, dataset="races", spec="races.yaml")
    client.append(today, dataset="races")       # the day's results: a version that grows
    run = client.train("races").wait()
    run.leaderboard()                           # the stack and each base, held-out metrics
    client.predict(card)                        # the champion's win/place probabilities

Built on `gallop.client.GallopClient` (the wire layer: dicts, one method per route).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

import httpx
import pandas as pd

from gallop.client import ENV_API_KEY, ENV_API_URL, ApiError, GallopClient
from gallop.extras import MissingExtra, missing_extra
from gallop.layout import APPEND, REPLACE
from gallop.manifests import ModelManifest, kind_of_metrics_key
from gallop.spec import DatasetSpec, load_spec

ENDED = ("SUCCEEDED", "FAILED", "CANCELLED")


class UploadRejected(RuntimeError):
    """The upload was read and refused; `.version` holds the report (its errors)."""

    def __init__(self, version: dict[str, Any]) -> None:
        errors = version.get("report", {}).get("errors", [])
        listed = "; ".join(f"[{e['code']}] {e['message']}" for e in errors[:5])
        super().__init__(f"version {version['version_id']} REJECTED: {listed}")
        self.version = version


class RunFailed(RuntimeError):
    """A training run that ended FAILED or CANCELLED; `.run` is its last state."""

    def __init__(self, run: dict[str, Any]) -> None:
        super().__init__(f"run {run['run_id']} {run['status']}: {run.get('reason') or ''}")
        self.run = run


class Client:
    """A gallop API. `url` and `key` default to $GALLOP_API_URL and $GALLOP_API_KEY."""

    def __init__(
        self,
        url: str | None = None,
        key: str | None = None,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        url = url or os.environ.get(ENV_API_URL)
        key = key or os.environ.get(ENV_API_KEY)
        if not url or not key:
            raise ValueError(
                f"gallop.Client needs the API's URL and key: give url= and key=, or set "
                f"{ENV_API_URL} and {ENV_API_KEY} (`gallop serve` prints both)"
            )
        self.api = GallopClient(url, key, timeout=timeout, transport=transport)

    def close(self) -> None:
        self.api.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- data ---------------------------------------------------------------------------

    def register(self, spec: DatasetSpec | dict[str, Any] | str | Path) -> dict[str, Any]:
        """Register (or find, when the same) a dataset: a spec, its dict or its file."""
        return self.api.register_dataset(_spec(spec))

    def upload(
        self,
        data: pd.DataFrame | str | Path,
        dataset: str,
        spec: DatasetSpec | dict[str, Any] | str | Path | None = None,
        timeout: float = 600.0,
    ) -> dict[str, Any]:
        """Upload a DataFrame or a file (CSV, Parquet, JSON Lines) to a dataset and wait
        for its validation: the VALID version, or UploadRejected with the report. With
        `spec`, the dataset is registered first. The data is the whole dataset: to add
        rows to what is stored, `append`."""
        if spec is not None:
            spec = _spec(spec)
            if spec.name != dataset:
                raise ValueError(f"the spec is of dataset {spec.name!r}, not {dataset!r}")
            self.api.register_dataset(spec)
        return self._upload(data, dataset, REPLACE, False, timeout)

    def append(
        self,
        data: pd.DataFrame | str | Path,
        dataset: str,
        corrections: bool = False,
        timeout: float = 600.0,
    ) -> dict[str, Any]:
        """Add rows (today's results) to the dataset's newest VALID version and wait for
        the new version, validated as a whole: the VALID version, whose
        `parent_version_id`, `rows_added` and `rows_replaced` say what it grew from, or
        UploadRejected with the report (a horse twice in a race, a row already stored, a
        race already stored). With `corrections`, a race sent again replaces the stored
        race's rows. The same append twice is the same version."""
        return self._upload(data, dataset, APPEND, corrections, timeout)

    def _upload(
        self,
        data: pd.DataFrame | str | Path,
        dataset: str,
        mode: str,
        corrections: bool,
        timeout: float,
    ) -> dict[str, Any]:
        if isinstance(data, pd.DataFrame):
            body = gzip.compress(data.to_csv(index=False).encode(), mtime=0)
            upload_id = self.api.upload_bytes(dataset, body, "csv.gz", mode, corrections)
        else:
            upload_id = self.api.upload_file(dataset, Path(data), mode, corrections)
        status = self.api.wait_for_upload(dataset, upload_id, timeout=timeout)
        version = self.api.version(dataset, status["version_id"])
        if version["status"] != "VALID":
            raise UploadRejected(version)
        return version

    def versions(self, dataset: str) -> pd.DataFrame:
        return pd.DataFrame(self.api.versions(dataset))

    # -- training -----------------------------------------------------------------------

    def train(
        self,
        dataset: str,
        version: str | None = None,
        bases: list[str] | None = None,
        hyperparameters: dict[str, Any] | None = None,
        test_share: float | None = None,
        time_limit: float | None = None,
        features_timeout: float = 600.0,
    ) -> Run:
        """Start a training run on a version (default: the newest VALID one) once its
        features are built; the Run returns at once: `.wait()` for it to end."""
        if version is None:
            valid = [v for v in self.api.versions(dataset) if v["status"] == "VALID"]
            if not valid:
                raise ValueError(f"dataset {dataset!r} has no VALID version to train on")
            version = str(valid[-1]["version_id"])
        self.api.wait_for_features(dataset, version, timeout=features_timeout)
        options: dict[str, Any] = {"version": version}
        for name, value in (
            ("bases", bases),
            ("hyperparameters", hyperparameters),
            ("test_share", test_share),
            ("time_limit", time_limit),
        ):
            if value is not None:
                options[name] = value
        return Run(self, self.api.start_training_run(dataset, **options))

    def run(self, run_id: str) -> Run:
        return Run(self, self.api.training_run(run_id))

    def leaderboard(self, run: Run | str) -> pd.DataFrame:
        """The held-out metrics of the run's stack and of each base model (a row each,
        the stack first), with each base's weight in the stack."""
        run = run if isinstance(run, Run) else self.run(run)
        if run.model_id is None:
            raise ValueError(f"run {run.run_id} is {run.status}: no model to judge yet")
        model = self.api.model(run.model_id)
        judged = model["leaderboard"]
        names = ["stack", *sorted(set(judged) - {"stack"})]
        board = pd.DataFrame.from_dict({n: judged[n] for n in names}, orient="index")
        board.index = [kind_of_metrics_key(name) for name in board.index]  # as gallop train
        # base_models name each base by its kind already (position_regression, not
        # base_3_position_regression): splitting them too lost the weight of such kinds
        weights = {b["model"]: b["weight"] for b in model["base_models"]}
        board.insert(0, "weight", [weights.get(name) for name in board.index])
        board.index.name = "model"
        return board

    # -- models and serving -------------------------------------------------------------

    def models(self, dataset: str | None = None) -> pd.DataFrame:
        """The registered models, newest last, with their aliases and the stack's
        held-out metrics as columns."""
        rows = []
        for model in self.api.models(dataset):
            metrics = model.get("metrics") or {}
            row = {k: v for k, v in model.items() if k != "metrics"}
            rows.append(row | metrics)
        return pd.DataFrame(rows)

    def promote(
        self, model_id: str, alias: str = "champion", reason: str | None = None
    ) -> dict[str, Any]:
        """Point champion (or challenger) of the model's dataset at the model; the reply
        names the previous one. `reason` goes in the dataset's alias history."""
        return self.api.promote(model_id, alias, reason)

    def aliases(self, dataset: str) -> dict[str, Any]:
        """The dataset's champion, challenger and traffic policy."""
        return self.api.aliases(dataset)

    def alias_history(self, dataset: str) -> pd.DataFrame:
        """The dataset's alias history, newest first: who moved which alias, when, from
        which model to which, and why."""
        return pd.DataFrame(self.api.alias_history(dataset))

    def rollback(self, dataset: str, reason: str | None = None) -> dict[str, Any]:
        """The dataset's champion goes back one step."""
        return self.api.rollback(dataset, reason)

    def put_traffic_policy(
        self,
        dataset: str,
        mode: str,
        challenger_share: float | None = None,
        shadow_share: float | None = None,
    ) -> dict[str, Any]:
        """champion, shadow (the challenger also scores shadow_share of races) or split
        (challenger_share of races answered by the challenger)."""
        return self.api.put_traffic(
            dataset, mode, challenger_share=challenger_share, shadow_share=shadow_share
        )

    def traffic_policy(self, dataset: str) -> dict[str, Any]:
        return self.api.traffic(dataset)

    def put_retraining_policy(self, dataset: str, **policy: Any) -> dict[str, Any]:
        """every_hours, after_rows, on_alarm, time_limit, auto_promote (not given: off)."""
        return self.api.put_retraining(dataset, **policy)

    def retraining_policy(self, dataset: str) -> dict[str, Any]:
        return self.api.retraining(dataset)

    def predict(
        self,
        rows: pd.DataFrame,
        model: str = "champion",
        snapshot: str | None = None,
        dataset: str | None = None,
    ) -> pd.DataFrame:
        """Score rows (feature rows with the group column, or race-card rows the server
        completes) with a model id or an alias of `dataset`: one prediction per row, on
        the rows' index.
        `.attrs["model_id"]` names the model that answered; for a race card,
        `.attrs["features_as_of"]` the entity snapshot that completed it (the newest READY
        one of the model's dataset, or with snapshot="training" the model's own)."""
        reply = self.api.predict(model, snapshot=snapshot, dataset=dataset, **_columnar(rows))
        out = pd.DataFrame(reply["predictions"], index=rows.index)
        out.attrs["model_id"] = reply["model_id"]
        out.attrs["features_as_of"] = reply.get("features_as_of")
        return out

    def explain(
        self,
        rows: pd.DataFrame,
        model: str = "champion",
        top_k: int = 5,
        snapshot: str | None = None,
        dataset: str | None = None,
    ) -> pd.DataFrame:
        """Per row: the score, the base value, each feature's part of the score (a column
        each; with the base value they add up to the score) and the top_k reasons."""
        reply = self.api.explain(
            model, top_k=top_k, snapshot=snapshot, dataset=dataset, **_columnar(rows)
        )
        return _explanations(reply, rows.index)

    def download(self, model_id: str, path: str | Path) -> Path:
        """The model's folder (model.onnx, manifest.json, report, bases) under `path`,
        for `gallop.load_model`."""
        url = self.api.model(model_id)["artifact_url"]
        response = httpx.get(url, timeout=300)
        response.raise_for_status()
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(response.content), mode="r:gz") as tar:
            tar.extractall(folder, filter="data")  # nothing outside the folder
        return folder

    def challenger(self, dataset: str) -> pd.DataFrame:
        """The dataset's champion against its challenger: one row per metric (champion,
        challenger, difference with positive = the challenger better, its 95 % interval,
        races); `.attrs` holds the recommendation, its reason and rule, and the open
        approval request (or None)."""
        reply = self.api.challenger(dataset)
        comparison = reply.get("comparison") or {}
        out = pd.DataFrame(comparison.get("metrics") or [])
        out.attrs.update(
            {k: comparison.get(k) for k in ("recommendation", "reason", "rule")}
            | {"champion": reply["champion"], "challenger": reply["challenger"]}
            | {"approval": reply.get("approval")}
        )
        return out

    def approvals(self, dataset: str | None = None, status: str | None = None) -> pd.DataFrame:
        """Approval requests, newest first, one row each (without the comparison)."""
        rows = [
            {k: v for k, v in a.items() if k != "comparison"}
            for a in self.api.approvals(dataset, status)
        ]
        return pd.DataFrame(rows)

    def decide(self, approval_id: str, decision: str, reason: str | None = None) -> dict[str, Any]:
        """Approve or reject a PENDING approval request (the approver role)."""
        return self.api.decide(approval_id, decision, reason)


class Run:
    """A training run. Its state is the one last seen: `.refresh()` or `.wait()` update it."""

    def __init__(self, client: Client, info: dict[str, Any]) -> None:
        self.client = client
        self.info = info

    def __repr__(self) -> str:
        return f"<Run {self.run_id} {self.status}>"

    @property
    def run_id(self) -> str:
        return str(self.info["run_id"])

    @property
    def status(self) -> str:
        """PENDING, RUNNING, SUCCEEDED, FAILED or CANCELLED (asked again until it ends)."""
        if self.info["status"] not in ENDED:
            self.refresh()
        return str(self.info["status"])

    @property
    def model_id(self) -> str | None:
        model = self.info.get("model")
        return str(model["model_id"]) if model else None

    @property
    def metrics(self) -> dict[str, float] | None:
        return self.info.get("metrics")

    def refresh(self) -> Run:
        self.info = self.client.api.training_run(self.run_id)
        return self

    def wait(self, timeout: float = 1800.0, check: bool = True) -> Run:
        """Wait (with backoff, honouring Retry-After) until the run ends; RunFailed when it
        FAILED or was CANCELLED, unless `check` is False."""
        self.info = self.client.api.wait_for_training_run(self.run_id, timeout=timeout)
        if check and self.info["status"] != "SUCCEEDED":
            raise RunFailed(self.info)
        return self

    def cancel(self) -> Run:
        self.info = self.client.api.cancel_training_run(self.run_id)
        return self

    def leaderboard(self) -> pd.DataFrame:
        return self.client.leaderboard(self)


def load_model(path: str | Path) -> LocalModel:
    """A model folder (as `gallop train --out` or `Client.download` leaves it), scored on
    this machine with onnxruntime: needs `pip install 'gallop[train]'` (or [local])."""
    try:
        from gallop.serving.model import LoadedModel
    except ModuleNotFoundError as exc:
        missing = missing_extra(exc)
        if missing is None:
            raise
        raise MissingExtra(f"gallop.load_model: {missing}") from exc
    return LocalModel(LoadedModel.from_dir(Path(path)))


class LocalModel:
    """A model folder loaded here: predict and explain as the API does, for feature rows
    (with the group column for a ranking model)."""

    def __init__(self, loaded: Any) -> None:
        self.loaded = loaded

    @property
    def model_id(self) -> str:
        return str(self.loaded.model_id)

    @property
    def task(self) -> str:
        return str(self.loaded.task)

    @property
    def features(self) -> list[str]:
        return list(self.loaded.features)

    @property
    def manifest(self) -> ModelManifest:
        return self.loaded.manifest.copy()

    def predict(self, rows: pd.DataFrame) -> pd.DataFrame:
        from gallop.serving.predict import parse, predict_columns

        reply = predict_columns(self.loaded, *parse(self.loaded, _columnar(rows)))
        return pd.DataFrame(reply["predictions"], index=rows.index)

    def explain(self, rows: pd.DataFrame, top_k: int = 5) -> pd.DataFrame:
        from gallop.serving.predict import explain_columns, parse

        reply = explain_columns(self.loaded, *parse(self.loaded, _columnar(rows)), top_k=top_k)
        return _explanations(reply, rows.index)


def _spec(spec: DatasetSpec | dict[str, Any] | str | Path) -> DatasetSpec:
    if isinstance(spec, str | Path):
        return load_spec(Path(spec))
    if isinstance(spec, dict):
        return DatasetSpec.model_validate(spec)
    return spec


def _columnar(rows: pd.DataFrame) -> dict[str, Any]:
    """A DataFrame as the API's columnar body: JSON values (NaN as null, times as ISO)."""
    if not isinstance(rows, pd.DataFrame):
        raise TypeError(f"give a pandas DataFrame, not {type(rows).__name__}")
    split = json.loads(rows.to_json(orient="split", index=False, date_format="iso"))
    return {"columns": split["columns"], "data": split["data"]}


def _explanations(reply: dict[str, Any], index: pd.Index) -> pd.DataFrame:
    rows = [
        {
            "score": e["score"],
            "base_value": e["base_value"],
            **e["contributions"],
            "reasons": [t["reason"] for t in e["top"]],
        }
        for e in reply["explanations"]
    ]
    out = pd.DataFrame(rows, index=index)
    out.attrs["model_id"] = reply["model_id"]
    out.attrs["features_as_of"] = reply.get("features_as_of")
    return out


__all__ = [
    "ApiError",
    "Client",
    "LocalModel",
    "Run",
    "RunFailed",
    "UploadRejected",
    "load_model",
]
