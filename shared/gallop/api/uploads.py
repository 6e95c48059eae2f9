"""Routes for uploads no dataset claims: list them, and send one back to be ingested."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, HTTPException, Path, Request, Response, status

from gallop.api.pages import Cursor, Limit, Page, fetched
from gallop.api.schemas import UnclaimedOut
from gallop.ingest import unclaimed
from gallop.metadata import repo

router = APIRouter(prefix="/v1/uploads", tags=["uploads"])


@router.get("/unclaimed", response_model=Page[UnclaimedOut])
def list_unclaimed(
    request: Request, limit: Limit = 100, cursor: Cursor = None
) -> Page[UnclaimedOut]:
    """Files copied under raw/ for a dataset not registered yet, or under a key that names
    no dataset, oldest first. Registering the dataset ingests its files."""
    engine = request.app.state.engine()
    found, after = fetched(lambda: repo.page_unclaimed(engine, limit, cursor))
    items = [UnclaimedOut.model_validate(r, from_attributes=True) for r in found]
    return Page(items=items, next_cursor=after)


@router.post(
    "/unclaimed/{unclaimed_id}/retry",
    response_model=UnclaimedOut,
    status_code=status.HTTP_202_ACCEPTED,
    responses={404: {}, 409: {"description": "No dataset claims it (yet)"}},
)
def retry_unclaimed(
    unclaimed_id: Annotated[str, Path(max_length=64)], request: Request, response: Response
) -> UnclaimedOut:
    """Send the file back under raw/ to be ingested, now that its dataset exists."""
    state = request.app.state
    try:
        record = unclaimed.retry(state.store(), state.engine(), unclaimed_id)
    except repo.UnclaimedNotFound:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"no unclaimed upload {unclaimed_id!r}"
        ) from None
    except unclaimed.UnclaimedGone as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
    except (unclaimed.NeverClaimable, unclaimed.DatasetStillUnknown) as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    if record.dataset:  # sent back to be ingested: its upload appears in the dataset's list
        location = request.url_for("list_uploads", name=record.dataset).path
        response.headers["location"] = location + "?prefix=" + quote(record.key)
    return UnclaimedOut.model_validate(record, from_attributes=True)
