"""A small client of gallop's HTTP API: what the CLI, the demo and the tests use."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from gallop.ingest.formats import format_of
from gallop.spec import DatasetSpec


class ApiError(RuntimeError):
    def __init__(self, response: httpx.Response) -> None:
        try:
            body: Any = response.json()
        except ValueError:
            body = response.text
        message = body.get("message") or body.get("detail") if isinstance(body, dict) else body
        super().__init__(
            f"{response.request.method} {response.request.url.path} → "
            f"{response.status_code}: {message}"
        )
        self.status_code = response.status_code
        self.body = body


class GallopClient:
    def __init__(self, api_url: str, api_key: str, timeout: float = 60.0) -> None:
        self.http = httpx.Client(base_url=api_url, headers={"x-api-key": api_key}, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise ApiError(response)
        return response.json()

    def health(self) -> dict[str, Any]:
        return self._call("GET", "/v1/health")

    def register_dataset(self, spec: DatasetSpec) -> dict[str, Any]:
        return self._call("POST", "/v1/datasets", json=spec.model_dump(mode="json"))

    def create_upload(self, dataset: str, file_format: str) -> dict[str, Any]:
        return self._call("POST", f"/v1/datasets/{dataset}/uploads", json={"format": file_format})

    def upload_file(self, dataset: str, path: Path) -> str:
        """Upload a file through a presigned POST; returns the upload id."""
        return self.upload_bytes(dataset, path.read_bytes(), format_of(path.name))

    def upload_bytes(self, dataset: str, data: bytes, file_format: str) -> str:
        upload = self.create_upload(dataset, file_format)
        response = httpx.post(
            upload["url"],
            data=upload["fields"],
            files={"file": (upload["key"].rsplit("/", 1)[-1], data)},
            timeout=300,
        )
        if response.status_code >= 300:
            raise RuntimeError(
                f"upload to storage failed: {response.status_code} {response.text[:500]}"
            )
        return str(upload["upload_id"])

    def upload_status(self, dataset: str, upload_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/datasets/{dataset}/uploads/{upload_id}")

    def wait_for_upload(
        self,
        dataset: str,
        upload_id: str,
        timeout: float = 600.0,
        progress: Callable[[float], None] | None = None,
    ) -> dict[str, Any]:
        started = time.monotonic()
        while True:
            status = self.upload_status(dataset, upload_id)
            if status["status"] != "PENDING":
                return status
            waited = time.monotonic() - started
            if waited > timeout:
                raise TimeoutError(f"upload {upload_id} still PENDING after {timeout:.0f} s")
            if progress:
                progress(waited)
            time.sleep(0.1)

    def versions(self, dataset: str) -> list[dict[str, Any]]:
        return self._call("GET", f"/v1/datasets/{dataset}/versions")

    def version(self, dataset: str, version_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/datasets/{dataset}/versions/{version_id}")

    def feature_sets(self, dataset: str, version_id: str) -> list[dict[str, Any]]:
        return self._call("GET", f"/v1/datasets/{dataset}/versions/{version_id}/features")

    def card_features(
        self, dataset: str, version_id: str, rows: list[dict[str, Any]]
    ) -> dict[str, Any]:
        path = f"/v1/datasets/{dataset}/versions/{version_id}/features/card"
        return self._call("POST", path, json={"rows": rows})

    def wait_for_features(
        self, dataset: str, version_id: str, timeout: float = 600.0
    ) -> dict[str, Any]:
        started = time.monotonic()
        while True:
            found = self.feature_sets(dataset, version_id)
            if found:
                return found[-1]
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"no features for {version_id} after {timeout:.0f} s")
            time.sleep(0.1)

    def start_training_run(self, dataset: str, **options: Any) -> dict[str, Any]:
        """POST /v1/training-runs: options are version, bases, hyperparameters, test_share,
        time_limit."""
        return self._call("POST", "/v1/training-runs", json={"dataset": dataset, **options})

    def training_run(self, run_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/training-runs/{run_id}")

    def wait_for_training_run(
        self,
        run_id: str,
        timeout: float = 1800.0,
        progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Poll until the run SUCCEEDED or FAILED; `progress` sees the run at each poll."""
        started = time.monotonic()
        while True:
            run = self.training_run(run_id)
            if progress:
                progress(run)
            if run["status"] in ("SUCCEEDED", "FAILED"):
                return run
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"run {run_id} still {run['status']} after {timeout:.0f} s")
            time.sleep(0.2)

    # -- models and serving -----------------------------------------------------------

    def promote(self, model_id: str, alias: str = "champion") -> dict[str, Any]:
        """Point an alias (champion, challenger) at a model; the reply names the previous."""
        return self._call("POST", f"/v1/models/{model_id}/promote", json={"alias": alias})

    def predict(
        self, model: str, rows: list[dict[str, Any]] | None = None, **columnar: Any
    ) -> dict[str, Any]:
        """POST /v1/predict with row objects, or columnar: columns=[...], data=[[...]].
        `model` is a model id or an alias; race-card rows are completed by the server."""
        return self._call("POST", "/v1/predict", json=serving_body(model, rows, columnar))

    def explain(
        self,
        model: str,
        rows: list[dict[str, Any]] | None = None,
        top_k: int = 5,
        **columnar: Any,
    ) -> dict[str, Any]:
        """POST /v1/explain: each row's contributions and its top_k reasons."""
        body = {**serving_body(model, rows, columnar), "top_k": top_k}
        return self._call("POST", "/v1/explain", json=body)


def serving_body(
    model: str, rows: list[dict[str, Any]] | None, columnar: dict[str, Any]
) -> dict[str, Any]:
    unknown = set(columnar) - {"columns", "data"}
    if unknown:
        raise TypeError(f"unexpected arguments: {', '.join(sorted(unknown))}")
    if (rows is None) == (not columnar):
        raise TypeError("give rows, or columns and data")
    return {"model": model, **({"rows": rows} if rows is not None else columnar)}
