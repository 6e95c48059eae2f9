"""A small client of gallop's HTTP API: what the CLI, the demo and the tests use."""

from __future__ import annotations

from collections.abc import Callable
from email.utils import parsedate_to_datetime
from pathlib import Path
from time import monotonic, sleep, time
from typing import Any, TypeVar

import httpx

from gallop.ingest.formats import format_of
from gallop.layout import REPLACE
from gallop.spec import DatasetSpec

# Where an API is named when the caller does not say: the CLI and gallop.Client.
ENV_API_URL, ENV_API_KEY = "GALLOP_API_URL", "GALLOP_API_KEY"
PAGE_SIZE = 500  # the most a list route gives per page: fewest round trips


class ApiError(RuntimeError):
    """An error answer: the API's are problem details (RFC 9457): `code` tells one kind
    from another (not_found, conflict, validation_failed, throttled...), `detail` what went
    wrong, `body` all of it (a validation failure's `errors`, a race card's `problems`)."""

    def __init__(self, response: httpx.Response) -> None:
        try:
            body: Any = response.json()
        except ValueError:
            body = response.text
        problem = body if isinstance(body, dict) else {}
        self.status_code = response.status_code
        self.code: str | None = problem.get("code")
        self.title: str | None = problem.get("title")
        # a gateway's own body may be {"message": ...}; a problem may carry a title alone
        said = problem.get("detail") or problem.get("message") or problem.get("title")
        self.detail: str = str(said or body or response.reason_phrase)
        self.body = body
        super().__init__(
            f"{response.request.method} {response.request.url.path} → "
            f"{response.status_code}: {self.detail}"
        )
        self.retry_after = retry_after(response)


# Polling: the first pause, its growth per poll and its ceiling. Waiting 30 minutes for a
# run is then about 370 calls, not the 9,000 of a fixed 0.2 s.
FIRST_PAUSE, PAUSE_GROWTH, MAX_PAUSE = 0.2, 1.5, 5.0
# Answers a wait treats as "not yet, ask again later" rather than as failures.
BUSY_STATUSES = frozenset({429, 503})

T = TypeVar("T")


def retry_after(response: httpx.Response) -> float | None:
    """Seconds the server asks the client to wait (Retry-After: seconds or an HTTP date)."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time())
    except (TypeError, ValueError):
        return None


class GallopClient:
    def __init__(
        self,
        api_url: str,
        api_key: str,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.http = httpx.Client(
            base_url=api_url,
            headers={"x-api-key": api_key},
            timeout=timeout,
            transport=transport,
        )
        # The Retry-After of the last answer, which a wait honours before its next poll.
        self.last_retry_after: float | None = None

    def close(self) -> None:
        self.http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.http.request(method, path, **kwargs)
        self.last_retry_after = retry_after(response)
        if response.status_code >= 400:
            raise ApiError(response)
        return response.json()

    def _pages(self, path: str, **params: Any) -> list[dict[str, Any]]:
        """Every item of a list route, page after page, until next_cursor is null."""
        items: list[dict[str, Any]] = []
        query = {k: v for k, v in params.items() if v is not None} | {"limit": PAGE_SIZE}
        while True:
            page = self._call("GET", path, params=query)
            items.extend(page["items"])
            if not page.get("next_cursor"):
                return items
            query["cursor"] = page["next_cursor"]

    def health(self) -> dict[str, Any]:
        return self._call("GET", "/v1/health")

    def datasets(self) -> list[dict[str, Any]]:
        return self._pages("/v1/datasets")

    def dataset(self, name: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/datasets/{name}")

    def register_dataset(self, spec: DatasetSpec) -> dict[str, Any]:
        return self._call("POST", "/v1/datasets", json=spec.model_dump(mode="json"))

    def create_upload(
        self, dataset: str, file_format: str, mode: str = REPLACE, corrections: bool = False
    ) -> dict[str, Any]:
        """A presigned POST for one file. mode "append": the newest VALID version plus the
        file's rows; `corrections`: an append's races may replace stored ones."""
        body = {"format": file_format, "mode": mode, "corrections": corrections}
        return self._call("POST", f"/v1/datasets/{dataset}/uploads", json=body)

    def upload_file(
        self, dataset: str, path: Path, mode: str = REPLACE, corrections: bool = False
    ) -> str:
        """Upload a file through a presigned POST; returns the upload id."""
        data = path.read_bytes()
        return self.upload_bytes(dataset, data, format_of(path.name), mode, corrections)

    def upload_bytes(
        self,
        dataset: str,
        data: bytes,
        file_format: str,
        mode: str = REPLACE,
        corrections: bool = False,
    ) -> str:
        """Upload bytes through a presigned POST (as a whole dataset, or an append with
        mode="append"); returns the upload id."""
        upload = self.create_upload(dataset, file_format, mode, corrections)
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

    def uploads(self, dataset: str, prefix: str = "") -> list[dict[str, Any]]:
        """Every file that landed under raw/{dataset}/, or those whose key starts with prefix."""
        return self._pages(f"/v1/datasets/{dataset}/uploads", prefix=prefix or None)

    def unclaimed(self) -> list[dict[str, Any]]:
        """Files under raw/ that no dataset claims (yet)."""
        return self._pages("/v1/uploads/unclaimed")

    def retry_unclaimed(self, unclaimed_id: str) -> dict[str, Any]:
        return self._call("POST", f"/v1/uploads/unclaimed/{unclaimed_id}/retry")

    def wait_for_upload(
        self,
        dataset: str,
        upload_id: str,
        timeout: float = 600.0,
        progress: Callable[[float], None] | None = None,
    ) -> dict[str, Any]:
        started = monotonic()

        def seen(status: dict[str, Any]) -> bool:
            if progress and status["status"] == "PENDING":
                progress(monotonic() - started)
            return bool(status["status"] != "PENDING")

        return self.poll(
            lambda: self.upload_status(dataset, upload_id),
            seen,
            timeout,
            f"upload {upload_id} still PENDING",
        )

    def versions(self, dataset: str) -> list[dict[str, Any]]:
        return self._pages(f"/v1/datasets/{dataset}/versions")

    def version(self, dataset: str, version_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/datasets/{dataset}/versions/{version_id}")

    def feature_sets(self, dataset: str, version_id: str) -> list[dict[str, Any]]:
        return self._pages(f"/v1/datasets/{dataset}/versions/{version_id}/features")

    def card_features(
        self, dataset: str, version_id: str, rows: list[dict[str, Any]]
    ) -> dict[str, Any]:
        path = f"/v1/datasets/{dataset}/versions/{version_id}/features/card"
        return self._call("POST", path, json={"rows": rows})

    def wait_for_features(
        self, dataset: str, version_id: str, timeout: float = 600.0
    ) -> dict[str, Any]:
        found = self.poll(
            lambda: self.feature_sets(dataset, version_id),
            bool,
            timeout,
            f"no features for {version_id}",
        )
        return found[-1]

    def start_training_run(self, dataset: str, **options: Any) -> dict[str, Any]:
        """POST /v1/training-runs: options are version, bases, hyperparameters, test_share,
        time_limit."""
        return self._call("POST", "/v1/training-runs", json={"dataset": dataset, **options})

    def training_runs(
        self, dataset: str | None = None, status: str | None = None
    ) -> list[dict[str, Any]]:
        """The runs (of one dataset, in one status), newest first."""
        return self._pages("/v1/training-runs", dataset=dataset, status=status)

    def training_run(self, run_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/training-runs/{run_id}")

    def cancel_training_run(self, run_id: str) -> dict[str, Any]:
        """DELETE /v1/training-runs/{run_id}: the run, CANCELLED."""
        return self._call("DELETE", f"/v1/training-runs/{run_id}")

    def wait_for_training_run(
        self,
        run_id: str,
        timeout: float = 1800.0,
        progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Poll until the run has ended (SUCCEEDED, FAILED or CANCELLED); `progress` sees
        the run at each poll."""

        def ended(run: dict[str, Any]) -> bool:
            if progress:
                progress(run)
            return run["status"] in ("SUCCEEDED", "FAILED", "CANCELLED")

        return self.poll(
            lambda: self.training_run(run_id),
            ended,
            timeout,
            f"run {run_id} not ended",
        )

    def poll(
        self,
        fetch: Callable[[], T],
        done: Callable[[T], bool],
        timeout: float,
        what: str,
    ) -> T:
        """Call `fetch` until `done` says yes, pausing 0.2 s, then 1.5 times longer each
        time up to 5 s, or as long as the server's Retry-After asks, and never past the
        timeout: the last poll is at the deadline. A 429 or 503 is a pause, not an error.
        TimeoutError, saying `what`, when the deadline passes."""
        deadline = monotonic() + timeout
        pause = FIRST_PAUSE
        while True:
            try:
                value = fetch()
                asked = self.last_retry_after
                if done(value):
                    return value
            except ApiError as exc:
                if exc.status_code not in BUSY_STATUSES:
                    raise
                asked = exc.retry_after
            left = deadline - monotonic()
            if left <= 0:
                raise TimeoutError(f"{what} after {timeout:.0f} s")
            sleep(min(max(pause, asked or 0.0), left))
            pause = min(pause * PAUSE_GROWTH, MAX_PAUSE)

    # -- models and serving -----------------------------------------------------------

    def models(self, dataset: str | None = None) -> list[dict[str, Any]]:
        """The registered models (of one dataset), newest first."""
        return self._pages("/v1/models", dataset=dataset)

    def model(self, model_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/models/{model_id}")

    def promote(
        self,
        model_id: str,
        alias: str = "champion",
        reason: str | None = None,
        dataset: str | None = None,
    ) -> dict[str, Any]:
        """Point an alias (champion, challenger) of the model's dataset at the model; the
        reply names the previous. `reason` goes in the alias history; `dataset`, when
        given, must be the model's (a 422 otherwise)."""
        body = {"alias": alias, "reason": reason, "dataset": dataset}
        body = {name: value for name, value in body.items() if value is not None}
        return self._call("POST", f"/v1/models/{model_id}/promote", json=body)

    def aliases(self, dataset: str) -> dict[str, Any]:
        """The dataset's champion, challenger and traffic policy."""
        return self._call("GET", f"/v1/datasets/{dataset}/aliases")

    def alias_history(self, dataset: str) -> list[dict[str, Any]]:
        """Every line of the dataset's alias history, newest first."""
        return self._pages(f"/v1/datasets/{dataset}/aliases/history")

    def rollback(self, dataset: str, reason: str | None = None) -> dict[str, Any]:
        """The dataset's champion goes back one step (409 when there is none before)."""
        body = {"reason": reason} if reason is not None else {}
        return self._call("POST", f"/v1/datasets/{dataset}/aliases/champion/rollback", json=body)

    def put_traffic(self, dataset: str, mode: str, **shares: Any) -> dict[str, Any]:
        """Set the dataset's traffic policy: mode champion, shadow or split, with
        challenger_share, shadow_share or shares={"champion": .95, "challenger": .05}."""
        body = {"mode": mode} | {k: v for k, v in shares.items() if v is not None}
        return self._call("PUT", f"/v1/datasets/{dataset}/traffic", json=body)

    def traffic(self, dataset: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/datasets/{dataset}/traffic")

    def put_retraining(self, dataset: str, **policy: Any) -> dict[str, Any]:
        """Set the dataset's retraining policy: every_hours, after_rows, on_alarm,
        time_limit, auto_promote (those not given: off)."""
        return self._call("PUT", f"/v1/datasets/{dataset}/retraining", json=policy)

    def retraining(self, dataset: str) -> dict[str, Any]:
        """The dataset's retraining policy and what it last did."""
        return self._call("GET", f"/v1/datasets/{dataset}/retraining")

    def monitoring(self, model_id: str) -> dict[str, Any]:
        """A model's live figures by day, its latest drift table and its alarms' states."""
        return self._call("GET", f"/v1/models/{model_id}/monitoring")

    def check_monitoring(self, dataset: str | None = None) -> dict[str, Any]:
        """Run the monitor now (drift checked whatever the count): "checks", one per model,
        and "renewals", what renewal did per dataset."""
        reply: dict[str, Any] = self._call(
            "POST", "/v1/monitoring/checks", json={"dataset": dataset}
        )
        return reply

    def predict(
        self,
        model: str,
        rows: list[dict[str, Any]] | None = None,
        snapshot: str | None = None,
        dataset: str | None = None,
        **columnar: Any,
    ) -> dict[str, Any]:
        """POST /v1/predict with row objects, or columnar: columns=[...], data=[[...]].
        `model` is a model id or an alias of `dataset` (which may be left out while one
        dataset has that alias); race-card rows are completed by the server from
        the newest READY entity snapshot of the model's dataset (the reply's
        `features_as_of` names it), or with snapshot="training" from the one the model
        was trained on."""
        body = serving_body(model, rows, columnar, snapshot, dataset)
        return self._call("POST", "/v1/predict", json=body)

    def explain(
        self,
        model: str,
        rows: list[dict[str, Any]] | None = None,
        top_k: int = 5,
        snapshot: str | None = None,
        dataset: str | None = None,
        **columnar: Any,
    ) -> dict[str, Any]:
        """POST /v1/explain: each row's contributions and its top_k reasons."""
        body = {**serving_body(model, rows, columnar, snapshot, dataset), "top_k": top_k}
        return self._call("POST", "/v1/explain", json=body)

    # -- renewal: the comparison and approval requests ----------------------------------

    def challenger(self, dataset: str) -> dict[str, Any]:
        """The dataset's champion against its challenger (the latest comparison) and its
        open approval request."""
        return self._call("GET", f"/v1/datasets/{dataset}/challenger")

    def approvals(
        self, dataset: str | None = None, status: str | None = None
    ) -> list[dict[str, Any]]:
        """Approval requests (of one dataset, in one status), newest first."""
        return self._pages("/v1/approvals", dataset=dataset, status=status)

    def approval(self, approval_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/approvals/{approval_id}")

    def decide(self, approval_id: str, decision: str, reason: str | None = None) -> dict[str, Any]:
        """Approve ("approve": the challenger becomes the champion) or reject ("reject")
        a PENDING request; needs a key with the approver role."""
        body = {"decision": decision, "reason": reason}
        return self._call("POST", f"/v1/approvals/{approval_id}", json=body)


def serving_body(
    model: str,
    rows: list[dict[str, Any]] | None,
    columnar: dict[str, Any],
    snapshot: str | None = None,
    dataset: str | None = None,
) -> dict[str, Any]:
    unknown = set(columnar) - {"columns", "data"}
    if unknown:
        raise TypeError(f"unexpected arguments: {', '.join(sorted(unknown))}")
    if (rows is None) == (not columnar):
        raise TypeError("give rows, or columns and data")
    body = {"model": model, **({"rows": rows} if rows is not None else columnar)}
    chosen = {"snapshot": snapshot, "dataset": dataset}  # sent only when chosen
    return body | {name: value for name, value in chosen.items() if value is not None}
