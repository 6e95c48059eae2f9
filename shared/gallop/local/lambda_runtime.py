"""Run Lambda handlers locally the way the Lambda service does."""

from __future__ import annotations

import importlib.util
import logging
import sysconfig
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def _functions_dir() -> Path:
    """functions/ of the checkout this runs from, else the copy a wheel installs under the
    environment's share/ (pyproject's data-files)."""
    checkout = Path(__file__).resolve().parents[3] / "functions"
    if checkout.is_dir():
        return checkout
    return Path(sysconfig.get_path("data")) / "share" / "gallop" / "functions"


FUNCTIONS_DIR = _functions_dir()

Handler = Callable[[dict[str, Any], Any], Any]


class LocalContext:
    """The attributes of the Lambda context object that handlers and Powertools read."""

    def __init__(self, function_name: str, timeout_seconds: int = 900, memory_mb: int = 1024):
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.memory_limit_in_mb = memory_mb
        self.invoked_function_arn = (
            f"arn:aws:lambda:us-east-1:000000000000:function:{function_name}"
        )
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = "local"
        self._deadline = time.monotonic() + timeout_seconds

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def load_handler(function: str, functions_dir: Path = FUNCTIONS_DIR) -> Handler:
    """Import functions/<function>/handler.py as Lambda does (its folder is the code root)."""
    path = functions_dir / function / "handler.py"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: the local stack needs the Lambda handlers, from a checkout "
            "of the gallop repository or installed with gallop's wheel"
        )
    spec = importlib.util.spec_from_file_location(f"gallop_function_{function}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.handler


def sqs_record(message: dict[str, Any], queue_arn: str, region: str) -> dict[str, Any]:
    """One SQS message as it appears in a Lambda event's Records."""
    attributes = {
        name: {
            "stringValue": value.get("StringValue"),
            "binaryValue": value.get("BinaryValue"),
            "stringListValues": [],
            "binaryListValues": [],
            "dataType": value["DataType"],
        }
        for name, value in message.get("MessageAttributes", {}).items()
    }
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": message.get("Attributes", {}),
        "messageAttributes": attributes,
        "md5OfBody": message["MD5OfBody"],
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": region,
    }


class SqsPoller(threading.Thread):
    """The SQS event source mapping: receive a batch, invoke, delete what succeeded.

    Messages the handler reports in batchItemFailures, and every message of a batch
    whose invocation raised, stay on the queue and come back after the visibility
    timeout; after the queue's maxReceiveCount they go to its dead-letter queue.
    """

    def __init__(
        self,
        sqs: Any,
        queue_url: str,
        queue_arn: str,
        handler: Handler,
        function_name: str,
        region: str = "us-east-1",
        batch_size: int = 10,
        wait_seconds: int = 1,
    ) -> None:
        super().__init__(name=f"poller-{function_name}", daemon=True)
        self.sqs = sqs
        self.queue_url = queue_url
        self.queue_arn = queue_arn
        self.handler = handler
        self.function_name = function_name
        self.region = region
        self.batch_size = batch_size
        self.wait_seconds = wait_seconds
        self.invocations = 0
        self.failures = 0
        self._stop_event = threading.Event()
        self._busy = threading.Lock()

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                self.poll_once()
            except Exception:  # the poller must outlive any one bad batch
                log.exception("poller for %s failed; retrying", self.function_name)
                self._stop_event.wait(1.0)

    def stop(self, timeout: float = 120.0) -> None:
        """Stop polling and wait for the batch in hand; a poller still running after
        `timeout` would go on taking messages, so that is an error."""
        self._stop_event.set()
        self.join(timeout=timeout)
        if self.is_alive():
            raise TimeoutError(f"{self.function_name}: poller still running after {timeout} s")

    def poll_once(self) -> int:
        reply = self.sqs.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=self.batch_size,
            WaitTimeSeconds=self.wait_seconds,
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
        )
        messages = reply.get("Messages", [])
        if not messages:
            return 0
        with self._busy:
            event = {"Records": [sqs_record(m, self.queue_arn, self.region) for m in messages]}
            self.invocations += 1
            try:
                result = self.handler(event, LocalContext(self.function_name)) or {}
            except Exception:
                self.failures += len(messages)
                log.exception("%s raised; the whole batch will be retried", self.function_name)
                return len(messages)
            failed = {f["itemIdentifier"] for f in result.get("batchItemFailures", [])}
            self.failures += len(failed)
            done = [
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                for i, m in enumerate(messages)
                if m["MessageId"] not in failed
            ]
            if done:
                self.sqs.delete_message_batch(QueueUrl=self.queue_url, Entries=done)
        return len(messages)

    def drain(self, timeout: float = 30.0) -> None:
        """Wait until the queue holds no visible or in-flight message and no batch runs."""
        deadline = time.monotonic() + timeout
        empty_in_a_row = 0
        while time.monotonic() < deadline:
            counts = self.sqs.get_queue_attributes(
                QueueUrl=self.queue_url,
                AttributeNames=[
                    "ApproximateNumberOfMessages",
                    "ApproximateNumberOfMessagesNotVisible",
                ],
            )["Attributes"]
            # The two counts are read a moment apart, so a message turning visible again
            # in between is in neither: only an answer seen twice running means empty.
            if not any(int(v) for v in counts.values()) and not self._busy.locked():
                empty_in_a_row += 1
                if empty_in_a_row == 2:
                    return
            else:
                empty_in_a_row = 0
            time.sleep(0.05)
        raise TimeoutError(f"{self.function_name}: queue not drained within {timeout} s")
