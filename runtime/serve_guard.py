"""The HTTP front of runtime.serve: a small proxy that answers on the user's HTTP port, refuses inference requests
that would make tritonserver allocate by a claimed shape, and forwards everything else to Triton unchanged.

Why it exists: Triton 2.51 (the nvidia-pytriton wheel's server) reads a KServe JSON request's tensor by first sizing a
buffer from the request's "shape" (element count x dtype size, http_server.cc) and only then reading "data" and
checking the shape against config.pbtxt. `"shape": [2147483648, 128]` with one value of data asks for 1 TiB:
std::bad_alloc, abort (signal 6), every client cut off. Neither the model config (checked later, in the core) nor a
server option of 2.51 prevents it (--http-max-input-size arrived after 2.51), and a smaller lie (8 GiB) is worse: the
buffer is zero-filled and takes the machine's memory. gRPC sizes tensors from the bytes received, so it is not
affected (tests/runtime/test_serve.py checks both).

What is checked (standard library only; each refusal is a KServe error body {"error": ...} with HTTP 400, 411 or 413):
- the body is at most `max_request_bytes` (compressed bodies are inflated here, up to the same bound);
- for POST /v2/models/<model>[/versions/<v>]/infer: each input's shape is a list of non-negative integers, and the
  data the request carries agrees with it: as many JSON values as the shape has elements, or binary_data_size equal
  to elements x dtype size. Inputs in registered shared memory are sized by Triton against their region.
Triton then checks the shape against the model's dims and max_batch_size as before.
"""
from __future__ import annotations

import http.client
import json
import logging
import re
import socket
import threading
import zlib
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from math import prod
from typing import Any, Callable

log = logging.getLogger("runtime.serve")

DEFAULT_MAX_REQUEST_BYTES = 128 << 20
# Triton data type -> bytes per element (BYTES: variable, sized by Triton from the data itself)
DTYPE_BYTES = {"BOOL": 1, "UINT8": 1, "INT8": 1, "UINT16": 2, "INT16": 2, "FP16": 2, "BF16": 2, "UINT32": 4,
               "INT32": 4, "FP32": 4, "UINT64": 8, "INT64": 8, "FP64": 8}
HEADER_LENGTH = "Inference-Header-Content-Length"
_INFER_PATH = re.compile(r"^/v2/models/[^/]+(/versions/[^/]+)?/infer/?(\?.*)?$")
# Hop-by-hop headers (RFC 9110 7.6.1) and the ones this proxy rewrites
_NOT_FORWARDED = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade",
                  "content-length", "host", "expect"}


class RequestRefused(ValueError):
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
    `body_bytes` = bytes after the JSON header (binary tensor data)."""
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list):
        return  # not a KServe request at all: Triton answers it with its own parse error, allocating nothing
    binary_total = 0
    for i, tensor in enumerate(header["inputs"]):
        if not isinstance(tensor, dict):
            continue
        name = tensor.get("name", f"#{i}")
        shape = tensor.get("shape")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                  for d in shape):
            raise RequestRefused(f"input {name!r}: shape must be a list of non-negative integers, got {shape!r}")
        elements = prod(shape)
        params = tensor.get("parameters") if isinstance(tensor.get("parameters"), dict) else {}
        if "shared_memory_region" in params:
            continue  # Triton checks the shape against the registered region's size, allocating nothing
        datatype = tensor.get("datatype")
        size = DTYPE_BYTES.get(datatype) if isinstance(datatype, str) else None
        if "binary_data_size" in params:
            claimed = params["binary_data_size"]
            if not isinstance(claimed, int) or isinstance(claimed, bool) or claimed < 0:
                raise RequestRefused(f"input {name!r}: binary_data_size must be a non-negative integer, "
                                     f"got {claimed!r}")
            binary_total += claimed
            if size is not None and elements * size != claimed:
                raise RequestRefused(f"input {name!r}: shape {shape} of {datatype} needs {elements * size} bytes, "
                                     f"binary_data_size is {claimed}")
        elif "data" in tensor:
            values = _count_values(tensor["data"])
            if values != elements:
                raise RequestRefused(f"input {name!r}: shape {shape} has {elements} element(s), 'data' holds "
                                     f"{values} value(s)")
    if binary_total > body_bytes:
        raise RequestRefused(f"binary_data_size of the inputs adds up to {binary_total} bytes, the request carries "
                             f"{body_bytes} after its JSON header")


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


def check_request(method: str, path: str, headers: Any, body: bytes, limit: int) -> tuple[bytes, bool]:
    """The body to forward (inflated when it came compressed) and whether it was inflated; RequestRefused when the
    request must not reach Triton."""
    inflated = False
    encoding = (headers.get("Content-Encoding") or "").strip().lower()
    if encoding and encoding != "identity":
        body, inflated = _inflate(body, encoding, limit), True
    if method != "POST" or not _INFER_PATH.match(path):
        return body, inflated
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
    try:
        header = json.loads(body[:header_len])
    except (ValueError, UnicodeDecodeError, RecursionError):
        return body, inflated  # Triton refuses unparsable JSON itself
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

    def _upstream(self, fresh: bool = False) -> http.client.HTTPConnection:
        local = self.server.connections
        conn = getattr(local, "conn", None)
        if conn is None or fresh:
            if conn is not None:
                conn.close()
            up = self.server.upstream
            conn = local.conn = http.client.HTTPConnection(up.host, up.port, timeout=self.server.upstream_timeout)
        return conn

    def _forward(self) -> None:
        front = self.server
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            return self._answer(411, "chunked request bodies are not accepted: send Content-Length", close=True)
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            return self._answer(400, f"Content-Length: not an integer: {self.headers.get('Content-Length')!r}",
                                close=True)
        if length < 0 or length > front.max_request_bytes:
            return self._answer(413, f"the request body has {length} bytes; this server accepts at most "
                                     f"{front.max_request_bytes} (runtime.serve --max-request-bytes)", close=True)
        body = self.rfile.read(length) if length else b""
        try:
            body, inflated = check_request(self.command, self.path, self.headers, body, front.max_request_bytes)
        except RequestRefused as e:
            front.refused += 1
            return self._answer(e.status, str(e))
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _NOT_FORWARDED
                   and not (inflated and k.lower() == "content-encoding")}
        headers["Content-Length"] = str(len(body))
        for attempt in (0, 1):  # a kept-alive upstream connection may have died with a server restart: one retry
            conn = self._upstream(fresh=attempt > 0)
            try:
                conn.request(self.command, self.path, body=body, headers=headers)
                reply = conn.getresponse()
                data = reply.read()
                break
            except (ConnectionError, http.client.HTTPException, socket.timeout, OSError) as e:
                conn.close()
                self.server.connections.conn = None
                if attempt:
                    reason = front.upstream.down_reason() or f"tritonserver did not answer ({e})"
                    return self._answer(503, reason)
        self.send_response_only(reply.status, reply.reason)
        for k, v in reply.getheaders():
            if k.lower() not in _NOT_FORWARDED:
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _forward


class HttpFront(ThreadingHTTPServer):
    """The proxy: listens on (host, port), forwards to `upstream` (Triton's HTTP port on 127.0.0.1). serve_forever()
    runs in a daemon thread from start(); close() stops it and frees the port."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, host: str, port: int, upstream: Upstream, *,
                 max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES, upstream_timeout: float = 600.0) -> None:
        super().__init__((host, port), _Handler)
        self.upstream, self.max_request_bytes, self.upstream_timeout = upstream, max_request_bytes, upstream_timeout
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
