"""The HTTP front of runtime.serving.serve: a small proxy that answers on the user's HTTP port, refuses inference
requests that would make tritonserver allocate by a claimed shape, and forwards everything else to Triton unchanged.

Triton 2.51 allocates a KServe JSON request's tensors from their claimed "shape" before anything checks them, and a
large claim aborts it (see check_infer_header); gRPC is not affected. Standard library only. Each refusal is a KServe
error body {"error": ...} with HTTP 400, 411 or 413:
- a body over `max_request_bytes` (compressed bodies are inflated here, up to the same bound);
- fail closed: a request target that is not a path ('/...'), a POST body that does not parse strictly as JSON (no
  duplicate keys, NaN/Infinity, NUL bytes or too deep nesting, where Python's parser and Triton's rapidjson
  disagree); every body that is an object with "inputs" is checked, whatever its path;
- an input whose shape is not a list of non-negative integers, or whose data disagrees with it (JSON value count, or
  binary_data_size = elements x dtype size). Shared-memory inputs are sized by Triton against their region.
Limits: a connection silent for `client_timeout` s is closed; at most `max_concurrent` requests in flight (more get
503 "busy"); responses are streamed through in blocks. A request is resent only when a kept-alive connection to
Triton had gone stale before the request got through (see _exchange).
"""

from __future__ import annotations

import http.client
import json
import logging
import re
import threading
import urllib.parse
import zlib
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from math import prod
from typing import Any, Callable

from ..errors import VaeError

log = logging.getLogger("runtime.serving.serve")

DEFAULT_MAX_REQUEST_BYTES = 128 << 20
# Triton data type -> bytes per element (BYTES: variable, sized by Triton from the data itself)
DTYPE_BYTES = {
    "BOOL": 1,
    "UINT8": 1,
    "INT8": 1,
    "UINT16": 2,
    "INT16": 2,
    "FP16": 2,
    "BF16": 2,
    "UINT32": 4,
    "INT32": 4,
    "FP32": 4,
    "UINT64": 8,
    "INT64": 8,
    "FP64": 8,
}
HEADER_LENGTH = "Inference-Header-Content-Length"
DEFAULT_MAX_CONCURRENT = 32  # requests in flight through the front; more get 503 "busy"
DEFAULT_CLIENT_TIMEOUT = 30.0  # seconds a client connection may stay silent (idle keep-alive, half a request)
_BLOCK = 1 << 16  # bytes relayed at a time from Triton's response
_INFER_PATH = re.compile(r"^/v2/models/[^/]+(/versions/[^/]+)?/infer/?$")  # on the path, query removed
# Hop-by-hop headers (RFC 9110 7.6.1) and the ones this proxy rewrites
_NOT_FORWARDED = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
    "host",
    "expect",
}


class RequestRefused(VaeError, ValueError):
    """A request the front will not forward; `status` is the HTTP status of the answer, the message says why."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _count_values(data: Any) -> int:
    """Number of scalar values in a (possibly nested) JSON array, without recursion."""
    count, stack = 0, [data]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        else:
            count += 1
    return count


def check_infer_header(header: Any, body_bytes: int) -> None:
    """Raise RequestRefused when an inference request header claims tensors its data does not hold.
    `body_bytes` = bytes after the JSON header (binary tensor data).

    Why: Triton 2.51 sizes a tensor's buffer from the request's "shape" (element count x dtype size, http_server.cc)
    before it reads "data" or checks config.pbtxt, so `"shape": [2147483648, 128]` with one value asks for 1 TiB and
    aborts the server (std::bad_alloc), and a smaller lie (8 GiB) zero-fills the machine's memory. No server option of
    2.51 prevents it (--http-max-input-size came later); gRPC sizes tensors from the bytes received.
    """
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list):
        return  # not a KServe request at all: Triton answers it with its own parse error, allocating nothing
    binary_total = 0
    for i, tensor in enumerate(header["inputs"]):
        if not isinstance(tensor, dict):
            continue
        name = tensor.get("name", f"#{i}")
        shape = tensor.get("shape")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise RequestRefused(f"input {name!r}: shape must be a list of non-negative integers, got {shape!r}")
        if any(d >= 1 << 63 for d in shape):  # Triton reads dims as int64: a larger one would mean something else
            raise RequestRefused(f"input {name!r}: shape {shape} has a dimension over 2^63 - 1")
        elements = prod(shape)
        params = tensor.get("parameters") if isinstance(tensor.get("parameters"), dict) else {}
        if "shared_memory_region" in params:
            continue  # Triton checks the shape against the registered region's size, allocating nothing
        datatype = tensor.get("datatype")
        size = DTYPE_BYTES.get(datatype) if isinstance(datatype, str) else None
        if "binary_data_size" in params:
            claimed = params["binary_data_size"]
            if not isinstance(claimed, int) or isinstance(claimed, bool) or claimed < 0:
                raise RequestRefused(
                    f"input {name!r}: binary_data_size must be a non-negative integer, got {claimed!r}"
                )
            binary_total += claimed
            if size is not None and elements * size != claimed:
                raise RequestRefused(
                    f"input {name!r}: shape {shape} of {datatype} needs {elements * size} bytes, "
                    f"binary_data_size is {claimed}"
                )
        elif "data" in tensor:
            values = _count_values(tensor["data"])
            if values != elements:
                raise RequestRefused(
                    f"input {name!r}: shape {shape} has {elements} element(s), 'data' holds {values} value(s)"
                )
    if binary_total > body_bytes:
        raise RequestRefused(
            f"binary_data_size of the inputs adds up to {binary_total} bytes, the request carries "
            f"{body_bytes} after its JSON header"
        )


def _inflate(body: bytes, encoding: str, limit: int) -> bytes:
    wbits = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}.get(encoding)
    if wbits is None:
        raise RequestRefused(f"Content-Encoding {encoding!r}: expected gzip or deflate", 415)
    d = zlib.decompressobj(wbits)
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as e:
        raise RequestRefused(f"Content-Encoding {encoding}: the body does not inflate ({e})") from None
    if len(out) > limit:
        raise RequestRefused(f"the request inflates to more than {limit} bytes (the front's limit)", 413)
    return out


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """object_pairs_hook: Python keeps the last of duplicate keys, Triton's rapidjson the first, so a request with
    "shape" twice would be checked against one shape and served with the other. Refuse it instead."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        if "\x00" in key:  # rapidjson and C code downstream compare such keys differently from Python
            raise ValueError(f"NUL in key {key!r}")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    """parse_constant: NaN/Infinity are not JSON, yet rapidjson (Triton) accepts them; a front that skipped such a
    body as 'unparsable' would forward it unchecked."""
    raise ValueError(f"{name} is not JSON")


def strict_json(data: bytes) -> Any:
    """The JSON value of `data`, parsed so that whatever passes means the same to Triton's parser as to this check;
    RequestRefused (400) for anything else. Python and rapidjson disagree on NUL bytes (rapidjson stops there),
    duplicate keys, NaN/Infinity and non-UTF-8 text: each is refused, never forwarded unchecked."""
    if b"\x00" in data:
        raise RequestRefused("the JSON request holds a NUL byte")
    try:
        return json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constant)
    except RecursionError:
        raise RequestRefused("the JSON request is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise RequestRefused(f"the request body is not strict JSON: {e}") from None


def request_path(target: str) -> str:
    """The path of an origin-form request target ('/v2/...?q'); RequestRefused for any other form: an absolute-form
    'http://host/v2/.../infer' or '//host/...' would not match the infer path check, yet Triton serves it."""
    if not target.startswith("/") or target.startswith("//"):
        raise RequestRefused(f"request target {target[:100]!r}: expected a path starting with a single '/'")
    return urllib.parse.urlsplit(target).path


def check_request(method: str, path: str, headers: Any, body: bytes, limit: int) -> tuple[bytes, bool]:
    """The body to forward (inflated when it came compressed) and whether it was inflated; RequestRefused when the
    request must not reach Triton.

    Fails closed: every POST body must parse strictly (an empty one only outside the infer endpoints), and every body
    that is an object with "inputs" is checked, whatever the path says, so that no spelling of the path or the body
    that this check misreads reaches Triton's shape-sized allocation unchecked."""
    inflated = False
    encoding = (headers.get("Content-Encoding") or "").strip().lower()
    if encoding and encoding != "identity":
        body, inflated = _inflate(body, encoding, limit), True
    if method != "POST":
        return body, inflated
    infer = _INFER_PATH.match(request_path(path)) is not None
    length = headers.get(HEADER_LENGTH)
    if length is None:
        header_len = len(body)
    else:
        try:
            header_len = int(length)
        except ValueError:
            raise RequestRefused(f"{HEADER_LENGTH}: expected an integer, got {length!r}") from None
        if not 0 <= header_len <= len(body):
            raise RequestRefused(f"{HEADER_LENGTH} {header_len}: the body has {len(body)} bytes")
    if header_len == 0 and not infer:
        return body, inflated  # e.g. POST /v2/repository/index without a body: nothing to check
    header = strict_json(body[:header_len])
    check_infer_header(header, len(body) - header_len)
    return body, inflated


@dataclass(frozen=True)
class Upstream:
    """Where Triton's own HTTP endpoint listens, and a callable telling why it is not there (None: it should be)."""

    host: str
    port: int
    down_reason: Callable[[], str | None] = lambda: None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "HttpFront"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass  # Triton logs requests (when asked); an access log per request here would only slow the front

    def _answer(self, status: int, message: str, *, close: bool = False) -> None:
        body = json.dumps({"error": message}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def setup(self) -> None:
        # A per-connection socket timeout: without it a client that opens a connection (or sends half a request) and
        # goes quiet holds a thread forever. handle_one_request() closes the connection on the timeout.
        self.timeout = self.server.client_timeout
        super().setup()

    def _upstream(self) -> tuple[http.client.HTTPConnection, bool]:
        """This thread's connection to Triton and whether it is a kept-alive one (already connected): only such a
        connection may have gone stale behind our back (e.g. Triton restarted), which is what a retry is for."""
        local = self.server.connections
        conn = getattr(local, "conn", None)
        if conn is None:
            up = self.server.upstream
            conn = local.conn = http.client.HTTPConnection(up.host, up.port, timeout=self.server.upstream_timeout)
        return conn, conn.sock is not None

    def _drop_upstream(self) -> None:
        conn = getattr(self.server.connections, "conn", None)
        if conn is not None:
            conn.close()
        self.server.connections.conn = None

    def _forward(self) -> None:
        front = self.server
        # Bound the requests in flight (each holds a thread, its body and an upstream connection). Refuse rather than
        # queue: the body is not read, so the connection is closed with the answer.
        if not front.slots.acquire(blocking=False):
            return self._answer(503, f"busy: {front.max_concurrent} requests in flight, try again", close=True)
        try:
            self._forward_request()
        finally:
            front.slots.release()

    def _forward_request(self) -> None:
        front = self.server
        try:
            request_path(self.path)
        except RequestRefused as e:
            front.refused += 1
            return self._answer(e.status, str(e), close=True)
        for name in ("Content-Length", "Content-Encoding", HEADER_LENGTH):
            if len(self.headers.get_all(name) or ()) > 1:  # which one would Triton read? refuse to guess
                front.refused += 1
                return self._answer(400, f"{name} given more than once", close=True)
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            return self._answer(411, "chunked request bodies are not accepted: send Content-Length", close=True)
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            return self._answer(
                400, f"Content-Length: not an integer: {self.headers.get('Content-Length')!r}", close=True
            )
        if length < 0 or length > front.max_request_bytes:
            return self._answer(
                413,
                f"the request body has {length} bytes; this server accepts at most "
                f"{front.max_request_bytes} (runtime.serving.serve --max-request-bytes)",
                close=True,
            )
        body = self.rfile.read(length) if length else b""
        if len(body) < length:
            return self._answer(400, f"the request body ended after {len(body)} of {length} bytes", close=True)
        try:
            body, inflated = check_request(self.command, self.path, self.headers, body, front.max_request_bytes)
        except RequestRefused as e:
            front.refused += 1
            return self._answer(e.status, str(e))
        headers = {
            k: v
            for k, v in self.headers.items()
            if k.lower() not in _NOT_FORWARDED and not (inflated and k.lower() == "content-encoding")
        }
        headers["Content-Length"] = str(len(body))
        reply = self._exchange(body, headers)
        if reply is not None:
            self._relay(reply)

    def _exchange(self, body: bytes, headers: dict[str, str]) -> http.client.HTTPResponse | None:
        """Send the request to Triton and return its response (headers read, body not); None when an error answer
        was sent instead. A request is sent again only when it provably never reached Triton whole: a kept-alive
        connection that Triton had closed (a restart) fails while sending, or is closed before any response.
        Never after a timeout or a reset once the request was sent: inference is not idempotent, and a request that
        crashed Triton would crash the restarted one too."""
        for attempt in (0, 1):
            conn, reused = self._upstream()
            try:
                conn.request(self.command, self.path, body=body, headers=headers)
            except (BrokenPipeError, ConnectionResetError) as e:
                self._drop_upstream()
                if reused and attempt == 0:
                    continue
                return self._upstream_failed(e)
            except (OSError, http.client.HTTPException) as e:  # refused (Triton down), timeout connecting, ...
                self._drop_upstream()
                return self._upstream_failed(e)
            try:
                return conn.getresponse()
            except http.client.RemoteDisconnected as e:  # closed without a byte of response
                self._drop_upstream()
                if reused and attempt == 0:
                    continue
                return self._upstream_failed(e)
            except (OSError, http.client.HTTPException) as e:  # socket.timeout is an OSError: not retried
                self._drop_upstream()
                return self._upstream_failed(e)
        return None  # not reached: the second attempt always returns

    def _upstream_failed(self, error: BaseException) -> None:
        if isinstance(error, TimeoutError):
            return self._answer(504, f"tritonserver did not answer within {self.server.upstream_timeout:g} s")
        reason = self.server.upstream.down_reason() or f"tritonserver did not answer ({error!r})"
        return self._answer(503, reason)

    def _relay(self, reply: http.client.HTTPResponse) -> None:
        """Triton's response to the client, streamed in blocks: an output can be far larger than any request, and
        buffering it whole would hold that much memory per request in flight."""
        self.send_response_only(reply.status, reply.reason)
        for k, v in reply.getheaders():
            if k.lower() not in _NOT_FORWARDED:
                self.send_header(k, v)
        known = reply.length  # None: Triton sent it chunked (or until close)
        chunked = known is None and self.command != "HEAD"
        if self.command == "HEAD" or known is not None:
            self.send_header("Content-Length", reply.getheader("Content-Length") or str(known or 0))
        elif self.request_version == "HTTP/1.1":
            self.send_header("Transfer-Encoding", "chunked")
        else:  # an HTTP/1.0 client: the end of the body is the end of the connection
            chunked, self.close_connection = False, True
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command == "HEAD":
            reply.read()
            return
        try:
            while block := reply.read1(_BLOCK):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(block), block) if chunked else block)
            if chunked:
                self.wfile.write(b"0\r\n\r\n")
        except (OSError, http.client.HTTPException):
            # Triton or the client went away mid-body: the status is sent, so the only honest signal left is to cut
            # the client's connection; the upstream connection is in an unknown state.
            self._drop_upstream()
            self.close_connection = True
        if not reply.isclosed():
            self._drop_upstream()

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _forward


class HttpFront(ThreadingHTTPServer):
    """The proxy: listens on (host, port), forwards to `upstream` (Triton's HTTP port on 127.0.0.1). serve_forever()
    runs in a daemon thread from start(); close() stops it and frees the port."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(
        self,
        host: str,
        port: int,
        upstream: Upstream,
        *,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        upstream_timeout: float = 600.0,
        max_concurrent: int = DEFAULT_MAX_CONCURRENT,
        client_timeout: float = DEFAULT_CLIENT_TIMEOUT,
    ) -> None:
        super().__init__((host, port), _Handler)
        self.upstream, self.max_request_bytes, self.upstream_timeout = upstream, max_request_bytes, upstream_timeout
        self.max_concurrent, self.client_timeout = max_concurrent, client_timeout
        self.slots = threading.BoundedSemaphore(max_concurrent)
        self.connections = threading.local()
        self.refused = 0
        self._thread: threading.Thread | None = None

    def start(self) -> "HttpFront":
        self._thread = threading.Thread(target=self.serve_forever, name="vae-serve-http-front", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread is not None:
            self.shutdown()
            self._thread.join()
            self._thread = None
        self.server_close()
