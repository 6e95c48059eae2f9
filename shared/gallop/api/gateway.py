"""Where the app sits on API Gateway: its REST API serves the app under the stage's name
(https://{api}.execute-api.{region}.amazonaws.com/{stage}/v1/...), but the event's path,
and so Mangum's, leaves the stage out. The app is told it as the ASGI root_path, so that
what it links to (request.url_for, the docs' openapi.json) resolves on the gateway."""

from __future__ import annotations

from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send


def gateway_prefix(event: dict[str, Any]) -> str:
    """What comes before the app's path in the URL the client called: "/{stage}" on the
    API's own domain; "" behind a custom domain, where the event's path is the whole URL's."""
    called = (event.get("requestContext") or {}).get("path") or ""
    path = event.get("path") or ""
    if not path or not called.endswith(path):
        return ""
    return called[: len(called) - len(path)]


class GatewayRootPath:
    """ASGI middleware: on a request Mangum brought from API Gateway, root_path is the
    stage's prefix (and path carries it, as the ASGI spec has it); elsewhere, no change."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        event = scope.get("aws.event")
        if scope["type"] == "http" and isinstance(event, dict):
            prefix = gateway_prefix(event)
            if prefix:
                scope = {**scope, "root_path": prefix, "path": prefix + scope["path"]}
        await self.app(scope, receive, send)


def asgi_handler(app: Any) -> Any:
    """Mangum for the app, as the api and predict functions run it: lifespan off (start-up
    work would otherwise run on every invocation), and problem+json bodies sent as text
    (Mangum would base64 a media type it does not know as text)."""
    from mangum import Mangum
    from mangum.adapter import DEFAULT_TEXT_MIME_TYPES

    from gallop.api.problems import MEDIA_TYPE

    return Mangum(app, lifespan="off", text_mime_types=[*DEFAULT_TEXT_MIME_TYPES, MEDIA_TYPE])
