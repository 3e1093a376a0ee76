"""What every request passes before a handler: the JSON body cap and the query-string check.

REQUEST_MAX_SIZE is REQUEST_MAX_BYTES, the JSON cap: Sanic refuses a larger declared
Content-Length (413) before reading a byte of the body, and cuts a chunked body off at it,
before the whole body is buffered for a non-streaming route. The upload route streams (Sanic
lifts the cap for streaming handlers) and enforces its own (app/body_limits.py, which also
drains a refused body so the client sees the answer).
"""

from __future__ import annotations

from sanic import Request, Sanic

from app.validation import check_query


def setup_request_limits(app: Sanic) -> None:
    """JSON bodies capped at REQUEST_MAX_BYTES before buffering; query strings checked at the door."""
    app.config.REQUEST_MAX_SIZE = app.ctx.settings.request_max_bytes

    @app.on_request
    async def _check_query(request: Request) -> None:
        if request.query_string:
            check_query(request.query_args)
