"""api Lambda: API Gateway events → FastAPI, through Mangum."""

from __future__ import annotations

from mangum import Mangum

from gallop.api.app import create_app

# lifespan="off": start-up work would otherwise run on every invocation.
handler = Mangum(create_app(), lifespan="off")
