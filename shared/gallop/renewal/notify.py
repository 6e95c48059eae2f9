"""How the world hears of renewal: an SNS message on the alarm topic (a log line where
no topic is set), and on AWS the renewal state machine, which waits on a task token until
an approval request is decided or times out.

A failure to notify or to signal the state machine is logged, never raised: the request
is in the database whatever happens to the message, and the state machine's timeout path
finds it decided and does nothing."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from gallop import aws

if TYPE_CHECKING:
    from gallop.metadata.models import Approval
    from gallop.settings import Settings

log = logging.getLogger(__name__)
SUBJECT_CHARS = 100  # SNS's limit on a subject
NAMED_IDS = ("approval_id", "run_id", "dataset")


def announce(settings: Settings, subject: str, message: dict[str, Any]) -> None:
    """Publish on the alarm topic, or log the message when none is configured."""
    if not settings.alarm_topic_arn:  # a line, not the message: the API and CLI show it whole
        ids = [f"{name} {message[name]}" for name in NAMED_IDS if message.get(name)]
        log.warning("%s (%s)", subject, ", ".join(ids))
        return
    try:
        aws.client("sns", settings).publish(
            TopicArn=settings.alarm_topic_arn,
            Subject=subject[:SUBJECT_CHARS],
            Message=json.dumps(message, default=str, indent=1),
        )
    except (BotoCoreError, ClientError):
        log.exception("could not publish %r on %s", subject, settings.alarm_topic_arn)


def start_waiting(settings: Settings, approval: Approval) -> str | None:
    """Start the renewal state machine on an approval request; its execution's ARN, or
    None (no state machine configured, or it could not start: logged)."""
    if not settings.renewal_state_machine_arn:
        return None
    try:
        reply = aws.client("stepfunctions", settings).start_execution(
            stateMachineArn=settings.renewal_state_machine_arn,
            name=approval.approval_id,
            input=json.dumps({"approval_id": approval.approval_id}),
        )
    except (BotoCoreError, ClientError):
        log.exception("could not start the renewal state machine for %s", approval.approval_id)
        return None
    return str(reply["executionArn"])


def finish_waiting(settings: Settings, approval: Approval) -> None:
    """Tell the execution waiting on the request's task token how it was decided:
    approved is a success, anything else a failure (with the status as the error)."""
    if not approval.task_token:
        return
    client = aws.client("stepfunctions", settings)
    said = {"approval_id": approval.approval_id, "status": approval.status}
    try:
        if approval.status == "APPROVED":
            client.send_task_success(taskToken=approval.task_token, output=json.dumps(said))
        else:
            client.send_task_failure(
                taskToken=approval.task_token,
                error=approval.status,
                cause=(approval.reason or approval.status)[:256],
            )
    except (BotoCoreError, ClientError):
        log.exception("could not tell the renewal state machine about %s", approval.approval_id)
