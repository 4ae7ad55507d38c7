"""The app's HTTP server: the page, its assets, and a small JSON API over `AppState`.

Python's own `ThreadingHTTPServer` (no web framework: the app starts in the time the tokenizer
takes to load, and `[app]` installs nothing). Work that can take more than a moment (tokenizing,
sampling) runs as a job: POST starts it and answers its id, GET /api/job/ID reports progress
and, at the end, the result or a one-line error. Every error reaches the page as
{"error": "one line"}; a traceback only ever goes to the server's log.

    GET  /                        the page          GET /api/info        what is loaded
    GET  /api/data                evaluation images GET /api/usage       usage of the evaluation set
    GET  /api/entry/E             one entry         GET /api/patch/E/J.png   its J-th exemplar patch
    GET  /api/entries?order=most|never|class&class=C&offset=O
    POST /api/tokenize[?data=I]   body: image bytes, or none with ?data=I
    POST /api/generate            body: {"class_id", "cfg_scale", "method", "steps", "seed", "count"}
    GET  /api/job/ID              {"state": running|done|error, "elapsed", "progress", "result" | "error"}
"""
from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from urllib.parse import parse_qs, urlparse

from .state import AppState

log = logging.getLogger(__name__)

MAX_UPLOAD = 32 * 2**20
STATIC = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
          "app.css": "text/css; charset=utf-8"}
USER_ERRORS = (ValueError, FileNotFoundError, RuntimeError, OSError)


def one_line(err: BaseException) -> str:
    """What the page shows for an error: the message of a user error, never a traceback."""
    if isinstance(err, USER_ERRORS) and str(err).strip():
        return " ".join(str(err).split())
    return f"internal error ({type(err).__name__}); the server's log has the details"


class Jobs:
    """Background jobs and their results, kept for an hour after they start."""

    def __init__(self):
        self._jobs: dict[str, dict] = {}
        self._lock = threading.Lock()

    def start(self, work, label: str) -> str:
        job_id = uuid.uuid4().hex[:12]
        job = {"state": "running", "label": label, "started": time.time(), "progress": None}
        with self._lock:
            cutoff = time.time() - 3600
            self._jobs = {k: v for k, v in self._jobs.items() if v["started"] > cutoff}
            self._jobs[job_id] = job

        def run():
            try:
                job["result"] = work()
                job["state"] = "done"
            except Exception as err:  # the page gets one line; the log keeps the traceback of a bug
                if not isinstance(err, USER_ERRORS):
                    log.exception("%s failed", label)
                job["error"], job["state"] = one_line(err), "error"
            job["elapsed"] = round(time.time() - job["started"], 2)

        threading.Thread(target=run, name=f"job-{label}", daemon=True).start()
        return job_id

    def status(self, job_id: str) -> dict:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise ValueError(f"no job {job_id} (finished jobs are kept for an hour)")
        found = {k: v for k, v in job.items() if k != "started"}
        found.setdefault("elapsed", round(time.time() - job["started"], 2))
        return found


class AppServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, state: AppState):
        super().__init__(address, Handler)
        self.state = state
        self.jobs = Jobs()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"


class Handler(BaseHTTPRequestHandler):
    server: AppServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # requests are logged at debug level, not printed
        log.debug("%s %s", self.address_string(), format % args)

    # ------------------------------------------------------------------------- replies
    def _send(self, status: int, body: bytes, content_type: str, cache: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "max-age=3600" if cache else "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, data, status: int = 200) -> None:
        self._send(status, json.dumps(data).encode(), "application/json")

    def _error(self, err: BaseException | str, status: int = 400) -> None:
        self._json({"error": err if isinstance(err, str) else one_line(err)}, status)

    def _guarded(self, route) -> None:
        try:
            route()
        except Exception as err:
            if not isinstance(err, USER_ERRORS):
                log.exception("request %s failed", self.path)
            self._error(err, 400 if isinstance(err, USER_ERRORS) else 500)

    # ------------------------------------------------------------------------- routes
    def do_GET(self) -> None:
        self._guarded(self._get)

    def do_POST(self) -> None:
        self._guarded(self._post)

    def _get(self) -> None:
        url = urlparse(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        parts = [p for p in url.path.split("/") if p]
        state = self.server.state
        if not parts or parts == ["index.html"]:
            return self._static("index.html")
        if parts[0] == "static" and len(parts) == 2:
            return self._static(parts[1])
        if parts[0] != "api" or len(parts) < 2:
            return self._error(f"no page {url.path}", 404)
        what = parts[1]
        if what == "info":
            return self._json(state.info())
        if what == "data":
            return self._json(state.data_list())
        if what == "usage":
            return self._json(state.usage_summary())
        if what == "entry" and len(parts) == 3:
            return self._json(state.entry(_int(parts[2], "entry id")))
        if what == "entries":
            class_id = _int(query["class"], "class") if query.get("class") else None
            return self._json(state.entries(query.get("order", "most"), class_id,
                                            _int(query.get("offset", "0"), "offset")))
        if what == "patch" and len(parts) == 4 and parts[3].endswith(".png"):
            png = state.patch_png(_int(parts[2], "entry id"), _int(parts[3][:-4], "exemplar number"))
            return self._send(200, png, "image/png", cache=True)
        if what == "job" and len(parts) == 3:
            return self._json(self.server.jobs.status(parts[2]))
        return self._error(f"no page {url.path}", 404)

    def _post(self) -> None:
        url = urlparse(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_UPLOAD:
            self.rfile.read(length)  # drained so the connection stays usable for the error reply
            return self._error(f"the upload is {length / 2**20:.0f} MB; the app takes images up to "
                               f"{MAX_UPLOAD // 2**20} MB")
        body = self.rfile.read(length) if length else b""
        state, jobs = self.server.state, self.server.jobs
        if url.path == "/api/tokenize":
            if "data" in query:
                index = _int(query["data"], "image number")
                job = jobs.start(lambda: state.tokenize(state.data_image(index)), "tokenize")
            else:
                job = jobs.start(lambda: state.tokenize(state.uploaded_image(body)), "tokenize")
            return self._json({"job": job})
        if url.path == "/api/generate":
            try:
                params = json.loads(body or b"{}")
            except ValueError:
                return self._error("the sampling settings are not valid JSON")
            args = _generate_args(params)
            return self._json({"job": jobs.start(lambda: state.generate(**args), "generate")})
        return self._error(f"no action {url.path}", 404)

    def _static(self, name: str) -> None:
        if name not in STATIC:
            return self._error(f"no file {name}", 404)
        body = resources.files("vqgan_lc.app").joinpath("static", name).read_bytes()
        self._send(200, body, STATIC[name])


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a whole number, got {text!r}") from None


def _generate_args(params: dict) -> dict:
    def number(key, kind, default):
        value = params.get(key, default)
        if value in (None, ""):
            return default
        try:
            return kind(value)
        except (TypeError, ValueError):
            raise ValueError(f"{key.replace('_', ' ')} must be a number, got {value!r}") from None

    return {"class_id": number("class_id", int, 0), "cfg_scale": number("cfg_scale", float, 1.0),
            "method": params.get("method") or None, "steps": number("steps", int, None),
            "seed": number("seed", int, 0), "count": number("count", int, 4)}


def serve(state: AppState, host: str = "127.0.0.1", port: int = 7860) -> AppServer:
    """A server bound to (host, port) (port 0: any free one); call `serve_forever()` on it."""
    if not 0 <= port <= 65535:
        raise ValueError(f"--port must be 0..65535 (0: any free port), got {port}")
    try:
        return AppServer((host, port), state)
    except OSError as err:
        raise OSError(f"cannot listen on {host}:{port} ({err.strerror or err}); choose another --port") from None
