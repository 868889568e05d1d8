"""The rating page (``rlft rate``): a small FastAPI app over a feedback ``Store``, served by uvicorn.

Needs the ``web`` extra (fastapi, uvicorn); nothing else in rlft imports this module.

Security model (docs/feedback.md has the reasoning):

* binds to 127.0.0.1 by default; then requests must name a loopback host in ``Host`` (blocks DNS rebinding);
* bound anywhere else, a token is required (``--token``, or one is generated and printed): as ``?token=`` on
  the first visit, which sets an HttpOnly SameSite=Strict cookie and redirects to the bare URL, or as an
  ``X-Rlft-Token`` header from scripts. Requests without it get 401;
* state-changing requests are POSTs that must send ``Content-Type: application/json``, an ``X-Rlft-Csrf``
  header equal to the per-server token the page fetches from ``/api/session`` (no CORS, so other sites
  cannot read it) and, if the browser sends ``Origin``, the page's own origin. A cross-site form post fails
  all three;
* the page puts model output in the DOM only through ``textContent``; a Content-Security-Policy without
  inline scripts is a second wall; bodies are limited to 64 KiB and values are validated by the store.
"""

import hashlib
import hmac
import os
import secrets
import socket
import threading
from importlib import resources
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict

from .store import MAX_COMMENT, Conflict, Invalid, NotFound, Store

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
MAX_BODY = 64 * 1024
STATIC = {"app.js": "text/javascript", "style.css": "text/css"}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rater: str


class ItemBody(_Body):
    item_id: int


class RateBody(ItemBody):
    score: int | None = None
    choice: str | None = None
    comment: str = ""


def _static_dir():
    return resources.files("rlft.feedback") / "static"


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_app(db, *, token: str | None = None, lease_s: float = 600.0,
               allowed_hosts: set | None = None) -> FastAPI:
    """The app. ``token``: required on every request when set. ``allowed_hosts``: host names accepted in the
    ``Host`` header (None: any -- for a server bound to a public address, where the token protects it)."""
    store = Store(db, lease_s=lease_s)
    csrf = secrets.token_urlsafe(32)
    app = FastAPI(title="rlft rate", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.store = store
    _add_guard(app, token, csrf, allowed_hosts)
    _add_error_handlers(app)
    _add_page_routes(app)
    _add_api_routes(app, store, csrf, os.path.basename(str(db)))
    return app


def _add_guard(app: FastAPI, token: str | None, csrf: str, allowed_hosts: set | None) -> None:
    """The middleware every request passes: Host, token, CSRF checks and the security headers."""
    cookie = "rlft_" + hashlib.sha256((token or "").encode()).hexdigest()[:12]

    def authorised(request: Request) -> bool:
        given = (request.headers.get("x-rlft-token") or request.cookies.get(cookie)
                 or request.query_params.get("token") or "")
        return hmac.compare_digest(given.encode(), token.encode())

    @app.middleware("http")
    async def guard(request: Request, call_next):
        host = request.headers.get("host", "")
        name = urlsplit("//" + host).hostname or ""
        if allowed_hosts is not None and name not in allowed_hosts:
            resp = _error(400, f"unexpected Host header {host!r}: open the page as http://127.0.0.1:<port>/")
        elif token is not None and not authorised(request):
            resp = _error(401, "this server needs its access token: open the address `rlft rate` printed "
                               "(it ends in ?token=...) or send an X-Rlft-Token header")
        elif token is not None and request.method == "GET" and "token" in request.query_params:
            # first visit with ?token=: keep it in a cookie and drop it from the address bar and history
            resp = RedirectResponse(request.url.path, status_code=303)
            resp.set_cookie(cookie, token, httponly=True, samesite="strict")
        elif request.method not in ("GET", "HEAD"):
            resp = _check_post(request, host, csrf)
            if resp is None:
                resp = await call_next(request)
        else:
            resp = await call_next(request)
        resp.headers["Content-Security-Policy"] = CSP
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["X-Frame-Options"] = "DENY"
        resp.headers["Referrer-Policy"] = "no-referrer"
        resp.headers["Cache-Control"] = "no-store"
        return resp


def _add_error_handlers(app: FastAPI) -> None:
    """Errors as ``{"error": message}``: 422 for bad values, 404 for no such item, 409 for a conflict."""

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError):
        parts = []
        for e in exc.errors():
            where = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
            parts.append(f"{where}: {e.get('msg', 'invalid')}")
        return _error(422, "; ".join(parts))

    for exc_type, status in ((Invalid, 422), (NotFound, 404), (Conflict, 409)):
        app.add_exception_handler(exc_type, _status_handler(status))


def _status_handler(status: int):
    async def handler(request: Request, exc: Exception):
        return _error(status, str(exc))
    return handler


# Handlers are plain functions: FastAPI runs them in its thread pool, and the store gives each thread its own
# SQLite connection.

def _add_page_routes(app: FastAPI) -> None:
    """The page itself and its static files."""

    @app.get("/")
    def index():
        return FileResponse(str(_static_dir() / "index.html"), media_type="text/html")

    @app.get("/favicon.ico")
    def favicon():
        return Response(status_code=204)

    @app.get("/static/{name}")
    def static(name: str):
        if name not in STATIC:
            return _error(404, f"no static file {name!r}")
        return FileResponse(str(_static_dir() / name), media_type=STATIC[name])


def _add_api_routes(app: FastAPI, store: Store, csrf: str, db_name: str) -> None:
    """The JSON API the page calls; every state change answers with the new progress counts too."""

    @app.get("/api/session")
    def session():
        return {"csrf": csrf, "db": db_name, "max_comment": MAX_COMMENT, "lease_s": store.lease_s}

    @app.get("/api/progress")
    def progress():
        return store.progress()

    @app.post("/api/next")
    def next_item(body: _Body):
        return {"item": store.next_item(body.rater), "progress": store.progress()}

    @app.post("/api/rate")
    def rate(body: RateBody):
        out = store.rate(body.rater, body.item_id, score=body.score, choice=body.choice, comment=body.comment)
        return {**out, "progress": store.progress()}

    @app.post("/api/skip")
    def skip(body: ItemBody):
        return {**store.skip(body.rater, body.item_id), "progress": store.progress()}

    @app.post("/api/undo")
    def undo(body: _Body):
        out = store.undo(body.rater) or {"undone": None, "item": None}
        return {**out, "progress": store.progress()}

    @app.get("/api/item/{item_id}")
    def get_item(item_id: int):
        return store.get_item(item_id)


def _check_post(request: Request, host: str, csrf: str) -> Response | None:
    """The cross-site request forgery checks on a state-changing request; None when it passes."""
    try:
        size = int(request.headers.get("content-length") or 0)
    except ValueError:
        size = MAX_BODY + 1
    if size > MAX_BODY:
        return _error(413, f"request body over {MAX_BODY} bytes")
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        return _error(415, "send JSON (Content-Type: application/json)")
    origin = request.headers.get("origin")
    if origin is not None and origin != f"{request.url.scheme}://{host}":
        return _error(403, f"cross-origin request from {origin!r} refused")
    if not hmac.compare_digest(request.headers.get("x-rlft-csrf", "").encode(), csrf.encode()):
        return _error(403, "missing or wrong X-Rlft-Csrf header (GET /api/session gives it)")
    return None


class Running:
    """A server started by ``start`` in a background thread: ``url`` (with ``?token=`` when there is one),
    ``base`` (without), ``token``, ``stop()``."""

    def __init__(self, server, thread, base: str, token: str | None, app):
        self.server, self.thread, self.base, self.token, self.app = server, thread, base, token, app
        self.url = base + (f"?token={token}" if token else "")

    def stop(self, timeout: float = 30.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        self.app.state.store.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def _prepare(db, host: str, port: int, token: str | None, lease_s: float):
    import uvicorn

    loopback = host in LOOPBACK
    if token is None and not loopback:
        token = secrets.token_urlsafe(24)  # never serve a public address without one
    app = create_app(db, token=token, lease_s=lease_s, allowed_hosts=LOOPBACK if loopback else None)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    port = sock.getsockname()[1]
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    shown = f"[{shown}]" if ":" in shown else shown
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
    return server, sock, app, f"http://{shown}:{port}/", token


def start(db, *, host: str = "127.0.0.1", port: int = 0, token: str | None = None, lease_s: float = 600.0,
          timeout: float = 60.0) -> Running:
    """Serve the rating page in a background thread (from a notebook, or in tests); ``port=0`` picks a free
    one. Returns once it accepts connections."""
    server, sock, app, base, token = _prepare(db, host, port, token, lease_s)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="rlft-rate")
    thread.start()
    ready = threading.Event()
    for _ in range(int(timeout / 0.05)):
        if server.started or not thread.is_alive():
            break
        ready.wait(0.05)
    if not server.started:
        server.should_exit = True
        raise RuntimeError("the rating server did not start")
    return Running(server, thread, base, token, app)


def serve(db, *, host: str = "127.0.0.1", port: int = 8000, token: str | None = None, lease_s: float = 600.0,
          log=print) -> None:
    """Serve the rating page until interrupted (``rlft rate``)."""
    server, sock, app, base, token = _prepare(db, host, port, token, lease_s)
    log(f"rlft rate: rating {db}")
    log(f"  open {base}" + (f"?token={token}" if token else "") + "   (Ctrl-C to stop)")
    if host not in LOOPBACK:
        log("  bound to a non-loopback address: anyone who can reach it needs the token above; plain HTTP, "
            "so use it only on a network you trust (or an SSH tunnel)")
    try:
        server.run(sockets=[sock])
    finally:
        app.state.store.close()
