"""The HTTP layer of ``attnorm serve``: routes, multipart parsing, static files, errors.

Standard library only (``http.server.ThreadingHTTPServer``): one thread per connection,
so a long inpainting request never blocks the page, the progress polls or other API calls;
the models themselves are serialised by :class:`attnorm.serve.app.ServeApp`.

Routes (every error is JSON ``{"error": "...", "status": N}``, never a traceback)::

    GET  /                       the inpainting page        GET /generate   the generator page
    GET  /static/<file>          the page's files (an allow-list built from the package folder)
    GET  /api/health             status, versions, limits, loaded models
    GET  /api/progress?job=ID    progress of an inpainting request sent with header X-Job-Id: ID
    POST /api/inpaint            multipart image + mask -> image/png  (?format=json: JSON with the PNG as a
                                 data URL; ?layouts=1: JSON with the AN layout of the fill too)
    GET  /api/gan                the GAN's classes and settings, or why there is none
    POST /api/generate           JSON {classes, n, seed, truncation} -> grid image/png (?format=json: tiles)
    POST /api/interpolate        JSON {from, to, steps, seed, n, index, truncation} -> strip png (or JSON frames)
    POST /api/layouts            JSON {class, seed, n, index, truncation} -> layout figure png (or JSON maps)
"""

from __future__ import annotations

import ipaddress
import json
import socket
import sys
import threading
import traceback
from email.message import Message
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

from .app import ApiError, ServeApp, data_url

__all__ = ["ServeServer", "make_server", "parse_multipart", "serve_in_thread", "static_files"]

# how much of an over-limit request body is read (and discarded) so that the client sees the 413
# instead of a reset connection; beyond this the connection is closed without reading
_DRAIN_LIMIT = 256 * 2**20


_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png",
          ".json": "application/json"}


def _too_large(n: int, limit: int) -> str:
    return (f"request body is {n} bytes; this server accepts at most {limit} bytes "
            f"({limit / 2**20:.1f} MiB, --max-upload-mb)")


def static_files() -> dict[str, tuple[bytes, str]]:
    """URL path -> (content, content type) for every file of the package's ``static/`` folder.

    Requests are answered from this table only: no request path ever reaches the file system."""
    root = resources.files("attnorm.serve") / "static"
    table: dict[str, tuple[bytes, str]] = {}
    for entry in root.iterdir():
        if entry.is_file() and not entry.name.startswith("."):
            ctype = _TYPES.get(Path(entry.name).suffix, "application/octet-stream")
            table[f"/static/{entry.name}"] = (entry.read_bytes(), ctype)
    for page, name in (("/", "index.html"), ("/index.html", "index.html"), ("/generate", "generate.html"),
                       ("/generate.html", "generate.html")):
        if f"/static/{name}" in table:
            table[page] = table[f"/static/{name}"]
    return table


# ---------------------------------------------------------------------------- multipart/form-data
class Part:
    def __init__(self, name: str, filename: str | None, content_type: str | None, data: bytes) -> None:
        self.name, self.filename, self.content_type, self.data = name, filename, content_type, data


def _header_params(value: str) -> Message:
    m = Message()
    m["content-type"] = value
    return m


def _find_delimiter(body: bytes, delim: bytes, start: int) -> int:
    """Index of the next ``CRLF--boundary`` that really ends a part: followed by ``--`` (the last one)
    or by optional blanks and CRLF, not by other characters (a line that merely starts like it)."""
    while True:
        i = body.find(delim, start)
        if i < 0:
            return -1
        j = i + len(delim)
        if body[j:j + 2] == b"--":
            return i
        while body[j:j + 1] in (b" ", b"\t"):
            j += 1
        if body[j:j + 2] == b"\r\n":
            return i
        start = i + 1


def parse_multipart(body: bytes, content_type: str) -> dict[str, Part]:
    """Parse a ``multipart/form-data`` body (RFC 7578) into {field name: Part}; the first part of a
    repeated name wins. Raises ApiError(400) on malformed input."""
    msg = _header_params(content_type)
    if msg.get_content_type() != "multipart/form-data":
        raise ApiError(415, "expected Content-Type multipart/form-data (e.g. curl -F image=@photo.png "
                            "-F mask=@mask.png)")
    boundary = msg.get_param("boundary")
    if not isinstance(boundary, str) or not 1 <= len(boundary) <= 200:
        raise ApiError(400, "multipart/form-data without a valid boundary parameter")
    delim = b"--" + boundary.encode("latin-1")
    pos = body.find(delim)
    if pos < 0 or (pos > 0 and body[pos - 2:pos] != b"\r\n"):
        raise ApiError(400, "malformed multipart body: no opening boundary")
    pos += len(delim)
    parts: dict[str, Part] = {}
    while True:
        if body[pos:pos + 2] == b"--":
            return parts  # closing delimiter (anything after it is an epilogue)
        while body[pos:pos + 1] in (b" ", b"\t"):  # transport padding
            pos += 1
        if body[pos:pos + 2] != b"\r\n":
            raise ApiError(400, "malformed multipart body: bad boundary line")
        pos += 2
        end = _find_delimiter(body, b"\r\n" + delim, pos)
        if end < 0:
            raise ApiError(400, "malformed multipart body: a part is not terminated (truncated upload?)")
        head_end = body.find(b"\r\n\r\n", pos, end + 2)
        if head_end < 0:
            raise ApiError(400, "malformed multipart body: a part has no header block")
        headers = Message()
        for line in body[pos:head_end].decode("utf-8", "replace").split("\r\n"):
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip()] = v.strip()
        disp = headers.get("content-disposition")
        if not disp:
            raise ApiError(400, "malformed multipart body: a part has no Content-Disposition")
        dm = Message()
        dm["content-disposition"] = disp
        name = dm.get_param("name", header="content-disposition")
        filename = dm.get_param("filename", header="content-disposition")
        if not isinstance(name, str):
            raise ApiError(400, "malformed multipart body: a part has no field name")
        if name not in parts:
            parts[name] = Part(name, filename if isinstance(filename, str) else None,
                               headers.get("content-type"), body[head_end + 4:end])
        pos = end + 2 + len(delim)


# ---------------------------------------------------------------------------- the handler
def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


class Handler(BaseHTTPRequestHandler):
    server: "ServeServer"
    protocol_version = "HTTP/1.1"
    server_version = "attnorm-serve"
    sys_version = ""

    # ------------------------------------------------------------------ plumbing
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        if not self.server.quiet:
            sys.stderr.write(f"{self.address_string()} - {format % args}\n")

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        if str(code) == "200" and self.path.startswith("/api/progress"):
            return  # the page polls it several times a second while a request runs
        super().log_request(code, size)

    def _send(self, status: int, body: bytes, ctype: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json",
                   {"Cache-Control": "no-store", **(headers or {})})

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        self._json(status, {"error": message, "status": status}, headers)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The base class's malformed-request errors (bad request line, header overflow), as JSON."""
        self.close_connection = True
        try:
            self._error(code, message or HTTPStatus(code).phrase)
        except OSError:
            pass

    def _discard_body(self) -> None:
        """Read and drop the request body (so keep-alive stays in sync), or close when it is too big."""
        self._body_read = True
        try:
            n = self._content_length(required=False)
        except ApiError:
            n = None
        if n is None or n > _DRAIN_LIMIT:
            self.close_connection = True
            return
        while n > 0:
            chunk = self.rfile.read(min(n, 1 << 20))
            if not chunk:
                self.close_connection = True
                return
            n -= len(chunk)

    def _content_length(self, required: bool = True) -> int | None:
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            if required:
                raise ApiError(411, "chunked uploads are not supported: send a Content-Length")
            return None
        raw = self.headers.get("Content-Length")
        if raw is None:
            return 0  # HTTP/1.1: no Content-Length and no Transfer-Encoding is an empty body
        if not raw.isdigit():
            self.close_connection = True
            raise ApiError(400, f"bad Content-Length {raw!r}")
        return int(raw)

    def handle_expect_100(self) -> bool:
        """``Expect: 100-continue`` (curl, for bodies over 1 MB): refuse an over-limit body before it is sent."""
        n = self.headers.get("Content-Length", "")
        limit = self.server.app.limits.max_upload_bytes
        if n.isdigit() and int(n) > limit:
            self.close_connection = True
            self._body_read = True
            self._error(413, _too_large(int(n), limit))
            return False
        return super().handle_expect_100()

    def _read_body(self) -> bytes:
        self._body_read = True
        n = self._content_length()
        limit = self.server.app.limits.max_upload_bytes
        if n > limit:
            if n <= _DRAIN_LIMIT:
                self._discard_body()
            else:
                self.close_connection = True
            raise ApiError(413, _too_large(n, limit))
        data = self.rfile.read(n)
        if len(data) != n:
            self.close_connection = True
            raise ApiError(400, f"request body ended after {len(data)} of {n} bytes")
        return data

    def _check_origin(self) -> None:
        """DNS-rebinding and cross-site protection for a server bound to loopback: the Host header must
        name a loopback address, and a browser's Origin (when sent) must be this server."""
        if not self.server.loopback_only:
            return
        host = self.headers.get("Host", "")
        hostname = urlsplit(f"//{host}").hostname or ""
        if not _is_loopback(hostname):
            raise ApiError(403, f"Host {host!r} is not a loopback address; this server only answers local "
                                f"requests (start it with --host to serve others)")
        origin = self.headers.get("Origin")
        if origin:  # browsers send it on cross-origin requests and on every POST ("null" from sandboxes)
            oh = urlsplit(origin)
            try:
                port = oh.port or {"http": 80, "https": 443}.get(oh.scheme)
            except ValueError:
                port = None
            if not _is_loopback(oh.hostname or "") or port != self.server.server_port:
                raise ApiError(403, f"cross-origin request from {origin[:100]} refused")

    # ------------------------------------------------------------------ dispatch
    def _handle(self) -> None:
        self._body_read = False
        url = urlsplit(self.path)
        path = url.path
        try:
            self._check_origin()
            route = ROUTES.get(path)
            if route is None and path in self.server.static:
                route = {"GET": Handler._static, "HEAD": Handler._static}
            if route is None:
                raise ApiError(404, f"no such path: {path[:200]}")
            fn = route.get(self.command)
            if fn is None:
                allow = ", ".join(sorted(route))
                raise ApiError(405, f"{self.command} is not allowed on {path}; use {allow}", {"Allow": allow})
            fn(self, parse_qs(url.query))
        except ApiError as exc:
            if not self._body_read:
                self._discard_body()
            self._error(exc.status, exc.message, exc.headers)
            if not self.server.quiet:
                sys.stderr.write(f"  -> {exc.status}: {exc.message}\n")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as exc:  # a bug or an exhausted machine: one line to the client, the trace to the log
            self.close_connection = True
            sys.stderr.write(f"attnorm serve: internal error on {self.command} {path}:\n{traceback.format_exc()}")
            msg = str(exc).splitlines()[0] if str(exc) else ""
            try:
                self._error(500, f"internal error: {type(exc).__name__}{': ' + msg if msg else ''}")
            except OSError:
                pass
        if not self._body_read and not self.close_connection:
            self._discard_body()  # a body nobody read (GET with a body): keep the connection in sync

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _handle

    # ------------------------------------------------------------------ endpoints
    def _static(self, query: dict) -> None:
        body, ctype = self.server.static[urlsplit(self.path).path]
        headers = {"Cache-Control": "no-cache"}
        if ctype.startswith("text/html"):
            headers["Content-Security-Policy"] = (
                "default-src 'self'; img-src 'self' blob: data:; connect-src 'self' data: blob:; "
                "style-src 'self'; script-src 'self'; object-src 'none'; frame-ancestors 'none'; base-uri 'none'")
            headers["X-Frame-Options"] = "DENY"
        self._send(200, body, ctype, headers)

    def _health(self, query: dict) -> None:
        self._json(200, self.server.app.health())

    def _progress(self, query: dict) -> None:
        job = (query.get("job") or [""])[0]
        if not job:
            raise ApiError(400, "give the job id: /api/progress?job=ID (the X-Job-Id sent with the request)")
        self._json(200, self.server.app.progress(job))

    def _gan(self, query: dict) -> None:
        self._json(200, self.server.app.gan_info())

    def _form(self) -> dict[str, Part]:
        body = self._read_body()
        return parse_multipart(body, self.headers.get("Content-Type", ""))

    def _params(self) -> dict:
        body = self._read_body()
        if not body.strip():
            return {}
        try:
            params = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ApiError(400, f"the body must be a JSON object ({exc})") from None
        if not isinstance(params, dict):
            raise ApiError(400, "the body must be a JSON object")
        return params

    @staticmethod
    def _flag(query: dict, key: str) -> bool:
        return (query.get(key) or ["0"])[0].lower() in ("1", "true", "yes", "on")

    @staticmethod
    def _format(query: dict) -> str:
        fmt = (query.get("format") or ["png"])[0]
        if fmt not in ("png", "json"):
            raise ApiError(400, f"format must be png or json, got {fmt!r}")
        return fmt

    def _inpaint(self, query: dict) -> None:
        with self.server.app.admission():  # before the body is read: a refused upload is never held
            self._inpaint_admitted(query)

    def _inpaint_admitted(self, query: dict) -> None:
        form = self._form()
        missing = [k for k in ("image", "mask") if k not in form]
        if missing:
            raise ApiError(400, f"missing form field(s) {', '.join(missing)}: send multipart fields image and mask "
                                f"(image files; white = hole)")
        layouts = self._flag(query, "layouts")
        as_json = layouts or (query.get("format") and self._format(query) == "json")
        res = self.server.app.inpaint(form["image"].data, form["mask"].data, layouts=layouts,
                                      job_id=self.headers.get("X-Job-Id"))
        timing = {"X-Queue-Seconds": f"{res.queue_s:.4f}", "X-Inference-Seconds": f"{res.inference_s:.4f}",
                  "X-Hole-Pixels": str(res.hole_pixels)}
        if as_json:
            self._json(200, res.as_json(), timing)
        else:
            self._send(200, res.png, "image/png", {"Cache-Control": "no-store", **timing})

    def _gan_call(self, query: dict, fn: Callable[[dict], dict], png_key: str, json_fn: Callable[[dict], dict]) -> None:
        fmt = self._format(query)
        out = fn(self._params())
        if fmt == "png":
            self._send(200, out[png_key], "image/png", {"Cache-Control": "no-store"})
        else:
            self._json(200, json_fn(out))

    def _generate(self, query: dict) -> None:
        self._gan_call(query, self.server.app.generate, "grid",
                       lambda o: {**{k: v for k, v in o.items() if k not in ("tiles", "grid")},
                                  "grid": data_url(o["grid"]), "tiles": [[data_url(t) for t in r] for r in o["tiles"]]})

    def _interpolate(self, query: dict) -> None:
        self._gan_call(query, self.server.app.interpolate, "strip",
                       lambda o: {**{k: v for k, v in o.items() if k not in ("frames", "strip")},
                                  "strip": data_url(o["strip"]), "frames": [data_url(f) for f in o["frames"]]})

    def _layouts(self, query: dict) -> None:
        def as_json(o: dict) -> dict:
            layers = [{**lay, "argmax": data_url(lay["argmax"]), "entities": data_url(lay["entities"])}
                      for lay in o["layers"]]
            return {**{k: v for k, v in o.items() if k not in ("image", "figure", "layers")},
                    "image": data_url(o["image"]), "figure": data_url(o["figure"]), "layers": layers}
        self._gan_call(query, self.server.app.layouts, "figure", as_json)


ROUTES: dict[str, dict[str, Callable]] = {
    "/api/health": {"GET": Handler._health, "HEAD": Handler._health},
    "/api/progress": {"GET": Handler._progress},
    "/api/gan": {"GET": Handler._gan},
    "/api/inpaint": {"POST": Handler._inpaint},
    "/api/generate": {"POST": Handler._generate},
    "/api/interpolate": {"POST": Handler._interpolate},
    "/api/layouts": {"POST": Handler._layouts},
}


class ServeServer(ThreadingHTTPServer):
    """A threading HTTP server bound to ``app`` (daemon threads: Ctrl-C never waits for a request)."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # listen backlog (socketserver's default of 5 resets bursts of connections)

    def __init__(self, address: tuple[str, int], app: ServeApp, quiet: bool = False) -> None:
        host = address[0]
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__(address, Handler)
        self.app, self.quiet = app, quiet
        self.static = static_files()
        self.loopback_only = _is_loopback(host)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}/"


def make_server(app: ServeApp, host: str = "127.0.0.1", port: int = 7860, quiet: bool = False) -> ServeServer:
    """Bind (port 0: any free port; read it back from ``server.server_port``); call ``serve_forever``."""
    return ServeServer((host, port), app, quiet=quiet)


def serve_in_thread(app: ServeApp, host: str = "127.0.0.1", port: int = 0, quiet: bool = True) -> ServeServer:
    """Start a server on a daemon thread (tests, notebooks); stop it with ``server.shutdown()``."""
    server = make_server(app, host, port, quiet=quiet)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="attnorm-serve",
                     daemon=True).start()
    return server
