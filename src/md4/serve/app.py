"""The web application of ``md4 serve`` (Starlette): the page, its script and style, the runs it offers, and
the jobs, each a stream of Server-Sent Events.

Routes: ``GET /`` the page; ``GET /static/NAME`` its script and style (a fixed set of the package's files);
``GET /api/runs`` the runs and limits; ``POST /api/runs/INDEX/text`` and ``.../images`` a job (JSON in, events
out; 429 while the server is busy, 400 with one sentence for a bad field); ``POST /api/runs/INDEX/upload`` an
uploaded picture as the model sees it. Requests are JSON of at most ``limits.request_bytes``, and the host header
must name this server (no DNS rebinding of a page bound to 127.0.0.1)."""

from __future__ import annotations

import json
from functools import partial
from importlib import resources

import anyio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from md4.serve.catalog import ServedRun, png_data_url
from md4.serve.fields import Fields, RequestError
from md4.serve.hosting import LOOPBACK_NAMES, is_loopback
from md4.serve.images import image_job, source_image
from md4.serve.jobs import Busy, Job, JobSlots, Limits
from md4.serve.text import text_job

STATIC = {"app.js": "text/javascript", "style.css": "text/css"}  # the files /static/ serves, and nothing else
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class EventStream(StreamingResponse):
    """A job's events as ``text/event-stream``; the job is cancelled as soon as the client disconnects (the
    disconnect is watched for while the job runs, not only noticed at the next write)."""

    def __init__(self, job: Job):
        super().__init__(job.events(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})
        self.job = job

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as group:

                async def until_disconnect() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    group.cancel_scope.cancel()

                group.start_soon(until_disconnect)
                await self.stream_response(send)
                group.cancel_scope.cancel()
        except OSError:  # the connection broke while writing
            pass
        finally:
            self.job.cancel()


def error(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class Server:
    """The routes' state: the runs (fixed at start), the limits and the job slots."""

    def __init__(self, runs: list[ServedRun], limits: Limits):
        self.runs, self.limits, self.slots = runs, limits, JobSlots(limits.jobs)
        self.page = (resources.files("md4.serve") / "static" / "index.html").read_text("utf-8")
        self.static = {name: (resources.files("md4.serve") / "static" / name).read_bytes() for name in STATIC}

    async def index(self, request: Request) -> Response:
        return HTMLResponse(self.page, headers=HEADERS)

    async def static_file(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC:
            return error(f"There is no file {name!r} here.", 404)
        return Response(self.static[name], media_type=STATIC[name], headers=HEADERS)

    async def list_runs(self, request: Request) -> Response:
        runs = [run.describe(i, self.limits) for i, run in enumerate(self.runs)]
        return JSONResponse({"runs": runs, "limits": self.limits.to_dict()})

    async def read(self, request: Request) -> tuple[ServedRun, Fields]:
        """The run a request names by index, and its JSON body (at most ``limits.request_bytes``)."""
        index = request.path_params["index"]
        if not 0 <= index < len(self.runs):
            raise RequestError(f"There is no run {index}; this server has runs 0 to {len(self.runs) - 1}.", 404)
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            raise RequestError("Send the request as JSON (Content-Type: application/json).", 415)
        limit = self.limits.request_bytes
        too_large = RequestError(f"The request is larger than this server's limit of {limit:,} bytes.", 413)
        if int(request.headers.get("content-length") or 0) > limit:
            raise too_large
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise too_large
        try:
            return self.runs[index], Fields(json.loads(body))
        except json.JSONDecodeError:
            raise RequestError("The request is not valid JSON; reload the page.") from None

    async def job(self, request: Request, plan) -> Response:
        """Check the request, start its job in a free slot and stream its events."""
        try:
            run, fields = await self.read(request)
            work = plan(run, fields, self.limits)
            return EventStream(self.slots.start(work))
        except RequestError as err:
            return error(str(err), err.status)
        except Busy as err:
            return error(str(err), 429)
        except ValueError as err:  # md4's sentence for input it refuses (a prompt it cannot encode, ...)
            return error(str(err))

    async def upload(self, request: Request) -> Response:
        """An uploaded picture as the model sees it (its size and levels), to draw a mask on."""
        try:
            run, fields = await self.read(request)
            if not run.images:
                raise RequestError(f"{run.name} is a text run; it takes no pictures.")
            if not isinstance(fields.body.get("png"), str):
                raise RequestError("The request has no picture; send it as png, base64 (a data: URL is fine).")
            tokens = source_image(run, fields, self.limits)
            return JSONResponse({"png": png_data_url(run.loaded.codec, tokens)})
        except ValueError as err:
            return error(str(err), err.status if isinstance(err, RequestError) else 400)


def build_app(runs: list[ServedRun], limits: Limits | None = None, host: str = "127.0.0.1") -> Starlette:
    """The application serving ``runs`` within ``limits``; bound to ``host``, whose name (and, for a loopback
    address, its other loopback names) the Host header must give."""
    server = Server(runs, limits or Limits())
    hosts = [*LOOPBACK_NAMES, host] if is_loopback(host) else ["*"]
    routes = [
        Route("/", server.index),
        Route("/static/{name}", server.static_file),
        Route("/api/runs", server.list_runs),
        Route("/api/runs/{index:int}/text", partial(server.job, plan=text_job), methods=["POST"]),
        Route("/api/runs/{index:int}/images", partial(server.job, plan=image_job), methods=["POST"]),
        Route("/api/runs/{index:int}/upload", server.upload, methods=["POST"]),
    ]
    app = Starlette(routes=routes, middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=hosts)])
    app.state.server = server
    return app
