"""The steering page's web app (FastAPI): routes over ``PageSession`` and the steer file.

Routes (every POST takes and every route answers JSON, except the page and the streams):

    GET  /                                the page (static/index.html, page.js, page.css)
    GET  /api/info                        model ids, output file, defaults and limits
    POST /api/sessions                    {prompt, temperature?, top_p?, seed?, max_new_tokens?} -> state
    POST /api/sessions/{id}/generate      stream (NDJSON): {"piece"} lines, then {"state"} (or {"error"})
    POST /api/sessions/{id}/stop          stop generating -> state (the text as the server has it)
    POST /api/sessions/{id}/correct       {at, text, ends_turn?} -> state (then /generate resumes)
    POST /api/sessions/{id}/accept        append the trajectory to the output file -> {saved, steers}
    POST /api/sessions/{id}/discard       drop it
    GET  /api/review                      saved records with the tokens each steer trains on
    POST /api/review/delete               {line, digest}: remove one record
    POST /api/compare                     stream: the model and the --compare model, same prompt and seed

Safety: the output path is fixed when the app is made; request bodies are bounded (413), so are
prompts, corrections and generation lengths (422); POSTs must be JSON (415) from the page's own
origin (403), which a cross-site page cannot send without a CORS preflight this app never
approves; Host is checked (DNS rebinding) when serving on loopback; the page's Content Security
Policy allows only its own script. Each tab's trajectory lives under its own random session id,
so tabs never mix; at most ``max_sessions`` stay open (the least recently used is dropped).
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union
from urllib.parse import urlsplit

from fastapi import FastAPI, HTTPException, Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.middleware.trustedhost import TrustedHostMiddleware

from localpref.data.errors import SteerError
from localpref.data.load import validate_prompt
from localpref.generation import TurnWriter
from localpref.page.review import delete_line, prepare_output, review as review_file
from localpref.page.session import PageError, PageSession, Sampling
from localpref.steering import append_records

STATIC = Path(__file__).parent / "static"
MAX_BODY_BYTES = 256 * 1024
MAX_PROMPT_CHARS = 20_000  # per message
MAX_MESSAGES = 16
MAX_CORRECTION_CHARS = 4_000
MAX_NEW_TOKENS_CAP = 4096  # no --max-new-tokens above this
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


@dataclass
class Served:
    """A model the app generates with."""

    model: Any
    tokenizer: Any
    model_id: str
    lock: threading.Lock


# ---------------------------------------------------------------------------------------------
# Requests


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=MAX_PROMPT_CHARS)


Prompt = Union[Annotated[str, Field(min_length=1, max_length=MAX_PROMPT_CHARS)],
               Annotated[list[Message], Field(min_length=1, max_length=MAX_MESSAGES)]]


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: Prompt
    temperature: Optional[float] = Field(None, ge=0, le=2, allow_inf_nan=False)  # JSON parsing lets NaN in
    top_p: Optional[float] = Field(None, gt=0, le=1, allow_inf_nan=False)
    seed: Optional[int] = Field(None, ge=0, le=2**31 - 1)
    max_new_tokens: Optional[int] = Field(None, ge=1)  # at most the server's --max-new-tokens


class CorrectRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    at: int = Field(ge=0)  # character offset in the assistant text, as the state's click targets give it
    text: str = Field(max_length=MAX_CORRECTION_CHARS)
    ends_turn: bool = False


class DeleteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    line: int = Field(ge=1)
    digest: str = Field(pattern=r"^[0-9a-f]{16}$")


SessionId = Annotated[str, PathParam(pattern=r"^[A-Za-z0-9_-]{8,64}$")]


# ---------------------------------------------------------------------------------------------
# Guards


class Guard:
    """ASGI middleware: body size, JSON-only POSTs, same-origin requests, security headers."""

    def __init__(self, app: Any, max_body: int = MAX_BODY_BYTES):
        self.app, self.max_body = app, max_body

    def refuse(self, method: str, headers: dict[str, str]) -> tuple[int, str] | None:
        origin = headers.get("origin")
        if origin is not None and urlsplit(origin).netloc != headers.get("host"):
            return 403, f"cross-origin request refused (Origin {origin}, Host {headers.get('host')})"
        if method == "POST" and headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return 415, "send JSON (Content-Type: application/json)"
        if int(headers.get("content-length") or 0) > self.max_body:
            return 413, f"request body over {self.max_body} bytes"
        return None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + [
                    (b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"), (b"cache-control", b"no-store")]
            await send(message)

        try:
            refused = self.refuse(scope["method"], headers)
        except ValueError:
            refused = 400, "bad Content-Length"
        if refused:
            return await JSONResponse({"detail": refused[1]}, status_code=refused[0])(scope, receive, send_with_headers)
        received = 0

        async def bounded_receive() -> dict:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body:  # a body sent without (or lying about) Content-Length
                raise HTTPException(413, f"request body over {self.max_body} bytes")
            return message

        await self.app(scope, bounded_receive, send_with_headers)


def _line(obj: dict) -> str:
    return json.dumps(obj, ensure_ascii=False) + "\n"


def _step_writer(writer: TurnWriter, lock: threading.Lock) -> str | None:
    with lock:
        return None if writer.done else writer.step()


# ---------------------------------------------------------------------------------------------
# The app


async def _page_error(request: Any, e: PageError) -> JSONResponse:
    return JSONResponse({"detail": e.message}, status_code=e.status)


async def _invalid(request: Any, e: RequestValidationError) -> JSONResponse:
    """422 with one readable line per problem: ``temperature: Input should be ...``; a body that is
    not JSON: ``request body: invalid JSON at line 1, column 17: Expecting ',' delimiter``."""
    where = lambda loc: ".".join(str(x) for x in loc if x not in ("body", "path")) or "body"  # noqa: E731
    problems = []
    for err in e.errors():
        if err["type"] == "json_invalid":  # loc: ("body", character offset)
            problems.append(f"request body: invalid JSON at {await _position(request, err['loc'][-1])}: "
                            f"{err.get('ctx', {}).get('error', err['msg'])}")
        elif err["type"] == "finite_number":  # NaN and Infinity are JSON to Python, not numbers to sample with
            what = "NaN is not a number" if math.isnan(err["input"]) else f"{err['input']} is not a finite number"
            problems.append(f"{where(err['loc'])}: {what}")
        else:
            problems.append(f"{where(err['loc'])}: {err['msg']}")
    return JSONResponse({"detail": "; ".join(problems)}, status_code=422)


async def _position(request: Any, offset: Any) -> str:
    """``line L, column C`` of character ``offset`` in the request body (``character N`` if unreadable)."""
    try:
        text = (await request.body()).decode("utf-8", "replace")[:int(offset)]
    except Exception:  # the body is gone: the offset is all there is
        return f"character {offset}"
    line, column = text.count("\n") + 1, len(text) - text.rfind("\n")  # both 1-based
    return f"line {line}, column {column}"


def create_app(served: Served, out: str | Path, *, defaults: Sampling | None = None, span: str = "hunk",
               max_length: int | None = None, compare: Served | None = None,
               allowed_hosts: list[str] | None = None, max_sessions: int = 16) -> FastAPI:
    """The app for one model and one output file (fixed here, never taken from a request).

    ``defaults.max_new_tokens`` is also the most a request may ask for. ``allowed_hosts``: Host
    header values accepted (None: any). Prints nothing; ``app.state.warnings`` lists what
    preparing the output file did (a torn last line cut).
    """
    out, defaults = Path(out), defaults or Sampling()
    if not 1 <= defaults.max_new_tokens <= MAX_NEW_TOKENS_CAP:
        raise ValueError(f"max_new_tokens must be in 1..{MAX_NEW_TOKENS_CAP}, got {defaults.max_new_tokens}")
    if not (math.isfinite(defaults.temperature) and defaults.temperature >= 0):  # NaN passes `< 0` checks
        raise ValueError(f"temperature must be a number >= 0, got {defaults.temperature}")
    if not (math.isfinite(defaults.top_p) and 0 < defaults.top_p <= 1):
        raise ValueError(f"top_p must be a number in (0, 1], got {defaults.top_p}")
    warning = prepare_output(out)
    app = FastAPI(title="localpref steer", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.warnings = [warning] if warning else []
    app.add_middleware(Guard)
    if allowed_hosts is not None:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)
    app.add_exception_handler(PageError, _page_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    routes = Routes(served, out, defaults=defaults, span=span, max_length=max_length, compare=compare,
                    max_sessions=max_sessions)
    app.add_api_route("/", routes.index, methods=["GET"], include_in_schema=False)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_api_route("/api/info", routes.info, methods=["GET"])
    app.add_api_route("/api/sessions", routes.new_session, methods=["POST"])
    for action in ("generate", "stop", "correct", "accept", "discard"):
        app.add_api_route(f"/api/sessions/{{sid}}/{action}", getattr(routes, action), methods=["POST"])
    app.add_api_route("/api/review", routes.review, methods=["GET"])
    app.add_api_route("/api/review/delete", routes.delete, methods=["POST"])
    app.add_api_route("/api/compare", routes.compare, methods=["POST"])
    return app


class Routes:
    """The route handlers (``create_app`` binds them), over the sessions and the output file.

    ``sessions`` is touched only from handlers running on the event loop (never from a worker
    thread), so it needs no lock; work that blocks (the model, the file) runs in the threadpool.
    """

    def __init__(self, served: Served, out: Path, *, defaults: Sampling, span: str, max_length: int | None,
                 compare: Served | None, max_sessions: int):
        self.served, self.out, self.defaults, self.span, self.max_length = served, out, defaults, span, max_length
        self.compare_with, self.max_sessions = compare, max_sessions
        self.sessions: OrderedDict[str, PageSession] = OrderedDict()
        self.file_lock = threading.Lock()  # appends, reads and deletes of the output file, one at a time

    # -- helpers --------------------------------------------------------------------------------

    def sampling(self, req: GenerateRequest) -> tuple[Any, Sampling]:
        """(the validated prompt, the request's sampling settings over the server's defaults)."""
        if req.max_new_tokens is not None and req.max_new_tokens > self.defaults.max_new_tokens:
            raise PageError(422, f"max_new_tokens: at most {self.defaults.max_new_tokens} "
                                 f"(the server's --max-new-tokens)")
        try:
            prompt = validate_prompt(req.prompt if isinstance(req.prompt, str)
                                     else [m.model_dump() for m in req.prompt])
        except SteerError as e:
            raise PageError(422, f"{e.field}: {e.message}") from None
        chosen = {k: v for k, v in req.model_dump().items() if k != "prompt" and v is not None}
        return prompt, replace(self.defaults, **chosen)

    def session(self, sid: str) -> PageSession:
        if sid not in self.sessions:
            raise PageError(404, "unknown or expired trajectory (reload the page to start a new one)")
        self.sessions.move_to_end(sid)
        return self.sessions[sid]

    @staticmethod
    async def halt(s: PageSession) -> None:
        """Stop a generation pass in progress and wait for it (10 s, then end it anyway)."""
        s.stop_requested.set()
        for _ in range(1000):
            if not s.generating:
                break
            await asyncio.sleep(0.01)
        await run_in_threadpool(s.end_pass)

    # -- the page -------------------------------------------------------------------------------

    async def index(self) -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    async def info(self) -> dict:
        return {"model": self.served.model_id, "compare_model": self.compare_with and self.compare_with.model_id,
                "out": str(self.out), "span": self.span, "max_length": self.max_length,
                "defaults": asdict(self.defaults), "chat": bool(getattr(self.served.tokenizer, "chat_template", None)),
                "limits": {"max_new_tokens": self.defaults.max_new_tokens, "prompt_chars": MAX_PROMPT_CHARS,
                           "correction_chars": MAX_CORRECTION_CHARS, "body_bytes": MAX_BODY_BYTES}}

    # -- a trajectory ---------------------------------------------------------------------------

    async def new_session(self, req: GenerateRequest) -> dict:
        prompt, chosen = self.sampling(req)
        m = self.served
        s = await run_in_threadpool(lambda: PageSession(m.model, m.tokenizer, prompt, chosen, model_id=m.model_id,
                                                        model_lock=m.lock, span=self.span))
        while len(self.sessions) >= self.max_sessions:  # the least recently used tab loses its trajectory
            self.sessions.popitem(last=False)[1].stop_requested.set()
        self.sessions[s.id] = s
        return s.state()

    async def generate(self, sid: SessionId) -> StreamingResponse:
        s = self.session(sid)
        await run_in_threadpool(s.begin_pass)

        async def lines():
            try:
                while (piece := await run_in_threadpool(s.step)) is not None:
                    if piece:
                        yield _line({"piece": piece})
                await run_in_threadpool(s.end_pass)
                yield _line({"state": s.state()})
            except Exception as e:  # the stream has started: report in-band
                yield _line({"error": f"generation failed: {type(e).__name__}: {e}"})
            finally:
                s.generating = False  # also when the client went away mid-stream

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    async def stop(self, sid: SessionId) -> dict:
        s = self.session(sid)
        await self.halt(s)
        return s.state()

    async def correct(self, sid: SessionId, req: CorrectRequest) -> dict:
        s = self.session(sid)
        await self.halt(s)
        await run_in_threadpool(s.correct, req.at, req.text, ends_turn=req.ends_turn)
        return s.state()

    async def accept(self, sid: SessionId) -> dict:
        s = self.session(sid)
        await self.halt(s)
        record = await run_in_threadpool(s.record)
        if not record["final"]:
            raise PageError(409, "nothing written yet: generate first, or discard")

        def save() -> None:
            with self.file_lock:
                append_records(self.out, [record])

        await run_in_threadpool(save)
        self.sessions.pop(sid, None)
        return {"saved": str(self.out), "id": record["id"], "steers": record["meta"]["steers"]}

    async def discard(self, sid: SessionId) -> dict:
        s = self.session(sid)
        await self.halt(s)
        self.sessions.pop(sid, None)
        return {"discarded": True}

    # -- the file -------------------------------------------------------------------------------

    async def review(self) -> dict:
        def read() -> dict:
            with self.file_lock:
                return review_file(self.out, self.served.tokenizer, span=self.span, max_length=self.max_length)

        return await run_in_threadpool(read)

    async def delete(self, req: DeleteRequest) -> dict:
        def remove() -> None:
            with self.file_lock:
                delete_line(self.out, req.line, req.digest)

        await run_in_threadpool(remove)
        return {"deleted": req.line}

    # -- compare --------------------------------------------------------------------------------

    async def compare(self, req: GenerateRequest) -> StreamingResponse:
        if self.compare_with is None:
            raise PageError(409, "no model to compare with: start the server with --compare MODEL "
                                 "(and --compare-adapter ADAPTER for a LoRA adapter)")
        prompt, chosen = self.sampling(req)
        models = {"a": self.served, "b": self.compare_with}
        try:
            writers = {side: TurnWriter(m.model, m.tokenizer, prompt, temperature=chosen.temperature,
                                        top_p=chosen.top_p, seed=chosen.seed, max_new_tokens=chosen.max_new_tokens)
                       for side, m in models.items()}
        except ValueError as e:
            raise PageError(422, str(e)) from None

        async def lines():
            live = ["a", "b"]
            try:
                while live:  # one token from each side in turn: both columns grow together
                    for side in list(live):
                        piece = await run_in_threadpool(_step_writer, writers[side], models[side].lock)
                        if piece is None:
                            live.remove(side)
                        elif piece:
                            yield _line({"side": side, "piece": piece})
                yield _line({"done": {side: {"text": w.text, "ended": w.ended} for side, w in writers.items()},
                             "sampling": asdict(chosen)})
            except Exception as e:
                yield _line({"error": f"generation failed: {type(e).__name__}: {e}"})

        return StreamingResponse(lines(), media_type="application/x-ndjson")
