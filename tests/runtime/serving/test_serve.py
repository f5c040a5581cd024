"""runtime.serving.serve: a real Triton server on 127.0.0.1 serving the tiny bundle; HTTP and gRPC parity with the local
runtime, malformed requests answered with errors while the server keeps serving, a clean stop, the CLI."""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

grpcclient = pytest.importorskip("tritonclient.grpc", reason="the `serve` extra (tritonclient) is not installed")
httpclient = pytest.importorskip("tritonclient.http", reason="the `serve` extra (tritonclient) is not installed")
from tritonclient.utils import InferenceServerException  # noqa: E402

import runtime  # noqa: E402
from runtime.serving.guard import HttpFront, Upstream  # noqa: E402
from runtime.serving.serve import (
    PYTRITON_VERSION,
    ServerUnavailableError,
    find_server,
    group_alive,  # noqa: E402
    install_server,
    main as serve_main,
    serve,
)

pytestmark = pytest.mark.serve
REPO = Path(__file__).resolve().parents[3]
PARITY = 1e-5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def dist():
    """The serve extra is installed (else skipped above), so the server must be too: a missing one is a failure."""
    try:
        return find_server()
    except ServerUnavailableError as e:
        pytest.fail(f"tritonclient is installed but tritonserver is not: {e}")


@pytest.fixture(scope="module")
def server(bundle, dist, tmp_path_factory):
    s = serve(
        bundle,
        http_port=free_port(),
        grpc_port=free_port(),
        max_batch=16,
        queue_delay_us=2000,
        threads=1,
        log_file=tmp_path_factory.mktemp("serve") / "tritonserver.log",
    )
    yield s
    s.stop()


@pytest.fixture(autouse=True)
def _temporary_folders_in_tmp_path(tmp_path, monkeypatch):
    """serve() keeps its server log in its temporary work folder: in tests, under tmp_path, not the system's /tmp."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))


@pytest.fixture(scope="module")
def local(bundle):
    with runtime.load(bundle, backend="onnxruntime") as vae:
        yield vae


def http_infer(client, model, name, x, datatype="FP32"):
    i = httpclient.InferInput(name, list(x.shape), datatype)
    i.set_data_from_numpy(x)
    return client.infer(model, [i])


def grpc_infer(client, model, name, x, datatype="FP32"):
    i = grpcclient.InferInput(name, list(x.shape), datatype)
    i.set_data_from_numpy(x)
    return client.infer(model, [i])


def latents(local, n, seed=0):
    return np.random.default_rng(seed).standard_normal((n, local.latent_dim), dtype=np.float32)


def images(local, n, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n, *local.image_shape)).astype(np.float32)


def close(a, b) -> float:
    assert a.shape == b.shape and a.dtype == np.float32
    return float(np.abs(a - b).max())


# ----------------------------------------------------------------------------------------------- parity


def test_http_parity(server, local):
    with httpclient.InferenceServerClient(server.http_url) as c:
        _http_parity(c, local)


def _http_parity(c, local):
    assert c.is_server_ready() and c.is_model_ready("vae_encoder") and c.is_model_ready("vae_decoder")
    z = latents(local, 3)
    assert close(http_infer(c, "vae_decoder", "z", z).as_numpy("image"), local.decode(z)) <= PARITY
    x = images(local, 2)
    r, post = http_infer(c, "vae_encoder", "image", x), local.encode(x)
    assert close(r.as_numpy("mu"), post.mu) <= PARITY and close(r.as_numpy("logvar"), post.logvar) <= PARITY


def test_grpc_parity_and_served_config(server, local):
    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        _grpc_parity(c, local)


def _grpc_parity(c, local):
    x = images(local, 4, seed=1)
    r, post = grpc_infer(c, "vae_encoder", "image", x), local.encode(x)
    assert close(r.as_numpy("mu"), post.mu) <= PARITY and close(r.as_numpy("logvar"), post.logvar) <= PARITY
    z = latents(local, 16, seed=2)  # max_batch_size
    assert close(grpc_infer(c, "vae_decoder", "z", z).as_numpy("image"), local.decode(z)) <= PARITY
    cfg = c.get_model_config("vae_decoder", as_json=True)["config"]
    assert cfg["max_batch_size"] == 16 and cfg["backend"] == "python"
    assert int(cfg["dynamic_batching"]["max_queue_delay_microseconds"]) == 2000
    assert [int(d) for d in cfg["input"][0]["dims"]] == [local.latent_dim]


def test_concurrent_clients_get_their_own_rows(server, local):
    """Dynamic batching merges requests of several clients into one runtime call; each must get back its own rows."""
    results, errors = {}, []

    def client(k):
        try:
            with grpcclient.InferenceServerClient(server.grpc_url) as c:
                for j in range(4):
                    z = latents(local, 1 + (k + j) % 3, seed=100 * k + j)
                    results[(k, j)] = (z, grpc_infer(c, "vae_decoder", "z", z).as_numpy("image"))
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            errors.append(repr(e))

    def decoded_rows(expect: int | None = None) -> int:
        """Triton's row count for the decoder. The Python backend reports a batch's statistics just after sending
        its responses, so wait (bounded) for the count to catch up with what the clients received."""
        previous = None
        with grpcclient.InferenceServerClient(server.grpc_url) as c:
            for _ in range(100):
                stats = c.get_inference_statistics("vae_decoder", as_json=True)
                rows = int(stats["model_stats"][0].get("inference_count", 0))
                if (rows >= expect) if expect is not None else (rows == previous):
                    break
                previous = rows
                time.sleep(0.05)
        return rows

    before = decoded_rows()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and len(results) == 24
    for z, img in results.values():
        assert close(img, local.decode(z)) <= PARITY
    sent = sum(z.shape[0] for z, _ in results.values())
    assert decoded_rows(before + sent) - before == sent  # each row inferred once: none lost, none duplicated


# ----------------------------------------------------------------------------------------------- malformed requests


def test_malformed_requests_get_errors_and_the_server_keeps_serving(server, local):
    with httpclient.InferenceServerClient(server.http_url) as h, grpcclient.InferenceServerClient(server.grpc_url) as g:
        _malformed(server, local, h, g)


def _malformed(server, local, h, g):
    z = latents(local, 2)
    bad_nan = z.copy()
    bad_nan[1, 3] = np.nan
    bad_inf = images(local, 1)
    bad_inf[0, 0, 0, 0] = np.inf
    cases = [
        # refused by our runtime's validation inside the model
        (
            lambda: http_infer(h, "vae_decoder", "z", bad_nan),
            r"tensor 'z': 1 NaN and 0 Inf value\(s\), first at index \(1, 3\)",
        ),
        (lambda: grpc_infer(g, "vae_encoder", "image", bad_inf), r"tensor 'image': 0 NaN and 1 Inf"),
        # refused by Triton against config.pbtxt before the model sees them
        (
            lambda: http_infer(h, "vae_decoder", "z", np.zeros((2, local.latent_dim + 1), np.float32)),
            r"unexpected shape for input 'z'.*Expected \[-1,8\], got \[2,9\]",
        ),
        (
            lambda: grpc_infer(g, "vae_encoder", "image", np.zeros((1, 32, 32, 3), np.float32)),
            r"unexpected shape for input 'image'",
        ),
        (
            lambda: grpc_infer(g, "vae_decoder", "z", z.astype(np.float64), "FP64"),
            r"data-type is 'FP64'.*expects 'FP32'",
        ),
        (
            lambda: http_infer(h, "vae_encoder", "image", np.zeros((1, 3, 32, 32), np.uint8), "UINT8"),
            r"data-type is 'UINT8'.*expects 'FP32'",
        ),
        (lambda: http_infer(h, "vae_decoder", "z", latents(local, 17)), r"batch-size must be <= 16 for 'vae_decoder'"),
    ]
    for call, expect in cases:
        with pytest.raises(InferenceServerException) as info:
            call()
        assert re.search(expect, info.value.message(), re.S), info.value.message()
        # still serving, and still right
        assert close(http_infer(h, "vae_decoder", "z", z).as_numpy("image"), local.decode(z)) <= PARITY
    assert server.proc.poll() is None and h.is_server_live()


def test_a_bad_request_in_a_batch_fails_alone(server, local):
    """Requests batched together with a NaN request still succeed; only the NaN request gets the error."""
    outcomes, go = {}, threading.Barrier(6)

    def client(k):
        z = latents(local, 2, seed=k)
        if k == 0:
            z[0, 0] = np.nan
        with httpclient.InferenceServerClient(server.http_url) as c:
            go.wait()
            try:
                outcomes[k] = ("ok", close(http_infer(c, "vae_decoder", "z", z).as_numpy("image"), local.decode(z)))
            except InferenceServerException as e:
                outcomes[k] = ("error", e.message())

    threads = [threading.Thread(target=client, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert outcomes[0][0] == "error" and "NaN" in outcomes[0][1]
    assert all(kind == "ok" and err <= PARITY for k, (kind, err) in outcomes.items() if k != 0), outcomes


def post_json(url: str, body: dict) -> tuple[int, dict]:
    """POST a KServe JSON body with the standard library (no client-side checks): (HTTP status, decoded answer)."""
    req = urllib.request.Request(
        f"http://{url}", data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def post_raw(url: str, target: str, body: bytes) -> tuple[int, dict]:
    """POST `body` as it is, with `target` as the request line's target (absolute-form too): (status, answer)."""
    host, port = url.rsplit(":", 1)
    c = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        c.request("POST", target, body=body, headers={"Content-Type": "application/json"})
        r = c.getresponse()
        return r.status, json.loads(r.read())
    finally:
        c.close()


_1TIB = b'{"inputs":[{"name":"z","shape":[2147483648,128],"datatype":"FP32","data":[0]}]}'
_INFER = "/v2/models/vae_decoder/infer"

OVERSIZED = [  # each once made tritonserver size a buffer from the claimed shape (1 TiB: std::bad_alloc, signal 6)
    (
        {"name": "z", "shape": [2147483648, 128], "datatype": "FP32", "data": [0]},
        r"input 'z': shape \[2147483648, 128\] has 274877906944 element\(s\), 'data' holds 1 value\(s\)",
    ),
    ({"name": "z", "shape": [1 << 40, 8], "datatype": "FP32", "data": [[0] * 8]}, r"'data' holds 8 value"),
    (
        {"name": "z", "shape": [2147483648, 128], "datatype": "FP32", "parameters": {"binary_data_size": 4}},
        r"needs 1099511627776 bytes, binary_data_size is 4",
    ),
    ({"name": "z", "shape": [-1, 8], "datatype": "FP32", "data": [0] * 8}, r"non-negative integers, got \[-1, 8\]"),
    ({"name": "z", "shape": "2147483648,128", "datatype": "FP32", "data": [0]}, r"non-negative integers"),
    # bypasses of a front that parsed leniently or matched the path loosely: (request target, raw body)
    (
        (_INFER, b'{"inputs":[{"name":"z","shape":[2147483648,128],"shape":[1,1],"datatype":"FP32","data":[0]}]}'),
        r"duplicate key 'shape'",
    ),  # Python keeps the last "shape", rapidjson the first
    ((_INFER, _1TIB + b"\x00"), r"NUL byte"),  # rapidjson stops at the NUL, Python's parser failed
    ((_INFER, _1TIB[:-1] + b',"x":Inf}'), r"not strict JSON"),  # rapidjson accepts Inf/NaN
    ((_INFER, _1TIB[:-1] + b',"x":NaN}'), r"NaN is not JSON"),
    ((_INFER, _1TIB[:-1] + b',"x":' + b"[" * 1200 + b"]" * 1200 + b"}"), r"nested too deeply"),
    (("http://127.0.0.1" + _INFER, _1TIB), r"expected a path starting with a single '/'"),  # absolute-form target
    (("/v2/models/vae_decoder/./infer", _1TIB), r"274877906944 element"),  # no infer path: checked for its "inputs"
]


@pytest.mark.parametrize(
    "tensor,expect",
    OVERSIZED,
    ids=[
        "json-1TiB",
        "json-2^43",
        "binary-1TiB",
        "negative",
        "str",
        "dup-key",
        "nul",
        "Inf",
        "NaN",
        "deep",
        "absolute-form",
        "other-path",
    ],
)
def test_a_shape_larger_than_its_data_is_refused_and_the_server_keeps_serving(server, local, tensor, expect):
    pid = server.proc.pid
    if isinstance(tensor, dict):
        status, answer = post_json(f"{server.http_url}/v2/models/vae_decoder/infer", {"inputs": [tensor]})
    else:
        status, answer = post_raw(server.http_url, *tensor)
    assert status == 400 and re.search(expect, answer["error"]), (status, answer)
    z = latents(local, 2)
    with httpclient.InferenceServerClient(server.http_url) as c:  # the same server, still serving, still right
        assert close(http_infer(c, "vae_decoder", "z", z).as_numpy("image"), local.decode(z)) <= PARITY
    assert server.proc.pid == pid and server.proc.poll() is None and server.restarts == 0


def test_an_oversized_body_is_refused_before_it_is_read(bundle, dist, local):
    with serve(bundle, http_port=free_port(), grpc_port=free_port(), max_batch=4, max_request_bytes=300) as s:
        status, answer = post_json(
            f"{s.http_url}/v2/models/vae_decoder/infer",
            {
                "inputs": [
                    {
                        "name": "z",
                        "shape": [4, local.latent_dim],
                        "datatype": "FP32",
                        "data": [0.123456789] * (4 * local.latent_dim),
                    }
                ]
            },
        )
        assert status == 413 and "at most 300 (runtime.serving.serve --max-request-bytes)" in answer["error"], answer
        with httpclient.InferenceServerClient(s.http_url) as c:
            z = latents(local, 1)
            assert close(http_infer(c, "vae_decoder", "z", z).as_numpy("image"), local.decode(z)) <= PARITY


def test_a_huge_shape_over_grpc_gets_tritons_shape_error(server):
    """gRPC sizes a tensor from the bytes received, not from the claimed shape: no front is needed there."""
    from tritonclient.grpc import service_pb2

    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        req = service_pb2.ModelInferRequest(model_name="vae_decoder")
        tensor = req.inputs.add(name="z", datatype="FP32", shape=[2147483648, 128])
        tensor.contents.fp32_contents.extend([0.0])
        with pytest.raises(Exception, match=r"unexpected shape for input 'z'.*got \[2147483648,128\]"):
            c._client_stub.ModelInfer(req, timeout=30)
        assert c.is_server_ready()


# ----------------------------------------------------------------------------------------------- the front's limits
# HttpFront alone, in front of a scripted stand-in for Triton's HTTP endpoint: quick, and it can misbehave on cue.


class _Fake(BaseHTTPRequestHandler):
    """Answers each POST by calling the server's `script(handler, body)`; counts the requests it read."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.seen += 1
        self.server.script(self, body)


def reply(handler, payload: bytes = b"{}", status: int = 200) -> None:
    handler.send_response(status)
    handler.send_header("Content-Length", str(len(payload)))
    handler.end_headers()
    handler.wfile.write(payload)


@contextlib.contextmanager
def fake_triton(script, **front_options):
    """(front, fake): a front on a free port forwarding to a fake Triton whose POST answers are `script`."""
    fake = ThreadingHTTPServer(("127.0.0.1", 0), _Fake)
    fake.daemon_threads, fake.script, fake.seen = True, script, 0
    threading.Thread(target=fake.serve_forever, daemon=True).start()
    front = HttpFront("127.0.0.1", 0, Upstream("127.0.0.1", fake.server_address[1]), **front_options).start()
    try:
        yield front, fake
    finally:
        front.close()
        fake.shutdown()
        fake.server_close()


def front_conn(front, timeout=10.0) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", front.server_address[1], timeout=timeout)


def test_the_front_closes_a_silent_connection():
    with fake_triton(reply, client_timeout=0.5) as (front, _):
        with socket.create_connection(("127.0.0.1", front.server_address[1]), timeout=10) as s:
            s.sendall(b"POST /v2/models/vae_decoder/infer HTTP/1.1\r\nContent-Length: 100\r\n\r\n{")  # then silence
            start = time.monotonic()
            assert s.recv(1024) == b""  # closed by the front, not left waiting for the rest
            assert time.monotonic() - start < 5


def test_the_front_answers_busy_beyond_its_concurrency():
    release = threading.Event()

    def slow(handler, body):
        release.wait(20)
        reply(handler)

    with fake_triton(slow, max_concurrent=1) as (front, fake):
        first = front_conn(front)
        first.request("POST", "/v2/repository/index", body=b"{}")
        deadline = time.monotonic() + 10
        while fake.seen == 0 and time.monotonic() < deadline:  # the first request holds the only slot
            time.sleep(0.02)
        second = front_conn(front)
        second.request("POST", "/v2/repository/index", body=b"{}")
        r = second.getresponse()
        assert r.status == 503 and "busy" in json.loads(r.read())["error"]
        release.set()
        assert first.getresponse().status == 200
        first.close(), second.close()
        # The client has the whole reply a moment before the handler thread gives its slot back: wait for that.
        assert front.slots.acquire(timeout=5)
        front.slots.release()
        third = front_conn(front)  # the slot is free again
        third.request("POST", "/v2/repository/index", body=b"{}")
        assert third.getresponse().status == 200
        third.close()


def test_the_front_streams_a_response_instead_of_buffering_it():
    half, received = b"x" * (1 << 20), threading.Event()

    def two_halves(handler, body):  # the second half only after the client has the first: buffering would deadlock
        handler.send_response(200)
        handler.send_header("Content-Length", str(2 * len(half)))
        handler.end_headers()
        handler.wfile.write(half)
        handler.wfile.flush()
        received.wait(20)
        handler.wfile.write(half)

    with fake_triton(two_halves) as (front, _):
        c = front_conn(front, timeout=5)
        c.request("POST", "/v2/repository/index", body=b"{}")
        r = c.getresponse()
        assert r.status == 200 and int(r.getheader("Content-Length")) == 2 * len(half)
        first = b""
        while len(first) < len(half):
            first += r.read(len(half) - len(first))  # times out (5 s) if the front waits for the whole body
        received.set()
        assert first + r.read() == half + half
        c.close()


def _read_then_close(handler, body):
    handler.close_connection = True  # Triton died after receiving the request: no response at all


def _too_slow(handler, body):
    time.sleep(1.5)
    reply(handler)


@pytest.mark.parametrize("script,status", [(_read_then_close, 503), (_too_slow, 504)], ids=["closed", "timeout"])
def test_the_front_never_resends_a_request_triton_received(script, status):
    with fake_triton(reply, upstream_timeout=0.5) as (front, fake):
        c = front_conn(front)
        c.request("POST", "/v2/repository/index", body=b"{}")
        assert c.getresponse().read() == b"{}"  # the front now holds a kept-alive connection to the fake
        fake.script, seen = script, fake.seen
        c.request("POST", _INFER, body=b'{"inputs": []}')  # on the front's reused upstream connection
        r = c.getresponse()
        assert r.status == status, r.read()
        time.sleep(1.5)  # a resend would have arrived by now
        assert fake.seen == seen + 1
        c.close()


def test_the_front_retries_a_stale_kept_alive_connection():
    def reply_and_close(handler, body):  # like a Triton that restarted between two requests
        reply(handler)
        handler.close_connection = True

    with fake_triton(reply) as (front, fake):
        c = front_conn(front)
        c.request("POST", "/v2/repository/index", body=b"{}")
        assert c.getresponse().read() == b"{}"  # the front now holds a kept-alive connection to the fake
        fake.script = reply_and_close
        c.request("POST", "/v2/repository/index", body=b"{}")
        assert c.getresponse().read() == b"{}"  # ... which the fake then closed
        time.sleep(0.2)
        fake.script = reply
        c.request("POST", "/v2/repository/index", body=b"{}")
        assert c.getresponse().status == 200
        c.close()


# ----------------------------------------------------------------------------------------------- supervision


def process_running(pid: int) -> bool:
    """Whether any thread of process `pid` is still alive. A zombie awaiting a reaper holds no port and runs nothing,
    but its main thread turns zombie before the others have exited (and closed its sockets): look at every thread."""
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        try:
            if stat.read_text().rsplit(")", 1)[1].split()[0] != "Z":
                return True
        except (OSError, IndexError):
            continue
    return False


def test_a_killed_tritonserver_is_restarted_and_the_event_logged(bundle, dist, local, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="runtime.serving.serve")
    log = tmp_path / "server.log"
    with serve(bundle, http_port=free_port(), grpc_port=free_port(), max_batch=4, log_file=log) as s:
        first = s.proc.pid
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (s.proc.pid != first and s.down is None):
            time.sleep(0.2)
        assert s.proc.pid != first and s.restarts == 1, "not serving again within 60 s"
        z = latents(local, 2)
        with httpclient.InferenceServerClient(s.http_url) as h, grpcclient.InferenceServerClient(s.grpc_url) as g:
            assert close(http_infer(h, "vae_decoder", "z", z).as_numpy("image"), local.decode(z)) <= PARITY
            assert close(grpc_infer(g, "vae_decoder", "z", z).as_numpy("image"), local.decode(z)) <= PARITY
        assert not process_running(first)
        second = s.proc.pid
    lines = caplog.text
    assert f"tritonserver (pid {first}) killed by signal 9 (SIGKILL) after serving" in lines, lines
    assert re.search(rf"tritonserver restarted \(pid {second}, restart 1\): serving again [\d.]+ s after", lines)
    assert "[runtime.serving.serve] " in log.read_text() and f"(pid {first}) killed by signal 9" in log.read_text()
    assert not process_running(second)  # and a stop after a restart still ends it


def test_kill_9_of_serve_takes_tritonserver_with_it(bundle, dist, tmp_path):
    http, grpc = free_port(), free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "runtime.serving.serve",
            str(bundle),
            "--port",
            str(http),
            "--grpc-port",
            str(grpc),
            "--no-metrics",
            "--max-batch",
            "4",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )  # what a kill -9 leaves: under tmp_path
    triton = None
    try:
        assert proc.stdout.readline().startswith(f"serving {bundle}")
        children = {
            int(p) for task in Path(f"/proc/{proc.pid}/task").iterdir() for p in (task / "children").read_text().split()
        }
        assert len(children) == 1, children  # tritonserver
        triton = children.pop()
        assert process_running(triton)
        proc.kill()
        proc.wait(10)
        deadline = time.monotonic() + 5
        while process_running(triton) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not process_running(triton), f"tritonserver {triton} outlived runtime.serving.serve (kill -9)"
        with socket.socket() as s:  # its gRPC port is free again
            s.bind(("127.0.0.1", grpc))
        # its Python-backend stubs notice that their parent is gone and exit by themselves (within about 3 s)
        deadline = time.monotonic() + 15
        while group_alive(triton) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not group_alive(triton)
    finally:
        if proc.poll() is None:
            proc.kill()
        if triton is not None:  # never leave one behind, even when the test fails
            with contextlib.suppress(ProcessLookupError):
                os.killpg(triton, signal.SIGKILL)


def test_without_restarts_the_server_stays_up(bundle, dist, local):
    """restart=None: nothing restarts tritonserver, but it must not die when the thread that started it is done."""
    with serve(bundle, http_port=free_port(), grpc_port=free_port(), max_batch=4, restart=None) as s:
        time.sleep(3)
        z = latents(local, 1)
        with httpclient.InferenceServerClient(s.http_url) as c:
            assert close(http_infer(c, "vae_decoder", "z", z).as_numpy("image"), local.decode(z)) <= PARITY
        assert s.proc.poll() is None and s.supervising


def test_a_restart_that_fails_with_an_oserror_is_retried(bundle, dist, local, caplog):
    from runtime.serving.serve import RestartPolicy

    caplog.set_level(logging.INFO, logger="runtime.serving.serve")
    policy = RestartPolicy(first_delay=0.1, max_delay=0.2)
    with serve(bundle, http_port=free_port(), grpc_port=free_port(), max_batch=4, restart=policy) as s:
        spawn, calls = s._spawn, []

        def flaky():  # the first restart fails as fork/exec or the log file can
            calls.append(1)
            if len(calls) == 1:
                raise OSError(24, "Too many open files")
            return spawn()

        s._spawn = flaky
        first = s.proc.pid
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (s.proc.pid != first and s.down is None):
            time.sleep(0.2)
        assert s.supervising and s.proc.pid != first and s.down is None and s.restarts == 2, caplog.text
        z = latents(local, 1)
        with httpclient.InferenceServerClient(s.http_url) as c:
            assert close(http_infer(c, "vae_decoder", "z", z).as_numpy("image"), local.decode(z)) <= PARITY
    assert "restart 1 failed (OSError): [Errno 24] Too many open files" in caplog.text


# ----------------------------------------------------------------------------------------------- lifetime, CLI


def test_stop_leaves_no_process_and_no_files(bundle, dist, tmp_path):
    log = tmp_path / "server.log"
    s = serve(bundle, http_port=free_port(), grpc_port=free_port(), dynamic_batching=False, max_batch=4, log_file=log)
    with httpclient.InferenceServerClient(s.http_url) as c:
        assert "dynamic_batching" not in c.get_model_config("vae_decoder")
    pgid, repo = s.proc.pid, s.repository
    assert repo.is_dir() and group_alive(pgid)
    assert s.stop() == 0
    assert not group_alive(pgid)  # the server and its Python-backend stubs are gone
    assert not repo.exists()  # the temporary repository too
    assert list(Path("/dev/shm").glob(s.shm_prefix + "*")) == []  # and the stubs' shared memory
    assert s.stop() == 0  # idempotent
    # each model ran the runtime copy inside the repository (model.py puts it first on the stub's sys.path)
    for model in ("vae_encoder", "vae_decoder"):
        assert (
            f"[vae-deploy] {model}_0_0: runtime {repo / model / '1' / 'runtime'}, onnxruntime fp32 on cpu"
            in log.read_text()
        )


METRIC = re.compile(r'^(nv_inference_\w+)\{model="(vae_\w+)",version="1"\} (\S+)$', re.M)


def test_metrics_count_client_requests_only_and_the_log_is_kept(bundle, dist, local, tmp_path):
    """The models warm up inside initialize() (zero batches of 1 and max_batch), not through Triton's model_warmup,
    which Triton would count: a fresh server reports 0 inferences, then exactly the clients' rows. stop() removes the
    repository and keeps the server log (the default one, in the temporary work folder)."""
    s = serve(bundle, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(), max_batch=8, threads=1)
    log, repo = s.log_file, s.repository

    def scrape() -> dict[tuple[str, str], float]:
        with urllib.request.urlopen(s.metrics_url, timeout=10) as r:
            return {(m[1], m[2]): float(m[3]) for m in METRIC.finditer(r.read().decode())}

    try:
        fresh = scrape()
        for model in ("vae_encoder", "vae_decoder"):
            for name in (
                "nv_inference_request_success",
                "nv_inference_count",
                "nv_inference_exec_count",
                "nv_inference_compute_infer_duration_us",
            ):
                assert fresh[(name, model)] == 0, (name, model, fresh)
            assert f"[vae-deploy] {model}_0_0: warmed up with zero batches of [1, 8] in" in log.read_text()
        z = latents(local, 3)
        with httpclient.InferenceServerClient(s.http_url) as c:
            assert close(http_infer(c, "vae_decoder", "z", z).as_numpy("image"), local.decode(z)) <= PARITY
        deadline, now = time.monotonic() + 10, scrape()
        while now[("nv_inference_count", "vae_decoder")] == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
            now = scrape()
        assert now[("nv_inference_request_success", "vae_decoder")] == 1
        assert now[("nv_inference_count", "vae_decoder")] == 3 and now[("nv_inference_exec_count", "vae_decoder")] == 1
        assert now[("nv_inference_count", "vae_encoder")] == 0
    finally:
        s.stop()
    assert not repo.exists() and log.is_file() and log.parent.parent == tmp_path
    assert "[vae-deploy] vae_decoder_0_0: warmed up" in log.read_text()


def test_cli_serves_until_sigterm(bundle, dist, local, tmp_path):
    http = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "runtime.serving.serve",
            str(bundle),
            "--port",
            str(http),
            "--grpc-port",
            str(free_port()),
            "--no-metrics",
            "--max-batch",
            "8",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    try:
        first = proc.stdout.readline()
        assert first.startswith(f"serving {bundle} as vae_encoder, vae_decoder: HTTP 127.0.0.1:{http}"), first
        start = [first] + [proc.stdout.readline() for _ in range(3)]  # the rest of the start message
        z = latents(local, 2)
        with httpclient.InferenceServerClient(f"127.0.0.1:{http}") as c:
            assert close(http_infer(c, "vae_decoder", "z", z).as_numpy("image"), local.decode(z)) <= PARITY
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    # the server log is kept where the start message said (the temporary work folder), and named again at stop
    log = Path(re.search(r"^server log: (\S+)$", "".join(start), re.M).group(1))
    assert f"stopped (tritonserver exit code 0); server log kept: {log}" in out
    assert log.is_file() and log.parent.parent == tmp_path and "[vae-deploy] vae_decoder_0_0" in log.read_text()
    assert not (log.parent / "models").exists()  # the repository is removed


def test_port_in_use_fails_with_the_servers_reason(bundle, dist, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert serve_main([str(bundle), "--port", str(port), "--grpc-port", str(free_port()), "--no-metrics"]) == 1
        err = capsys.readouterr().err
        assert f"HTTP port 127.0.0.1:{port}: cannot listen (Address already in use)" in err and "Traceback" not in err
        # the gRPC port is Triton's own: its reason
        assert serve_main([str(bundle), "--port", str(free_port()), "--grpc-port", str(port), "--no-metrics"]) == 1
    err = capsys.readouterr().err
    assert f"Socket '127.0.0.1:{port}' already in use" in err and "Traceback" not in err


def test_cli_bad_input_exits_2(tmp_path, capsys):
    assert serve_main([str(tmp_path / "missing"), "--no-metrics"]) == 2
    assert "no bundle manifest here" in capsys.readouterr().err
    assert serve_main([str(tmp_path), "--port", "8000", "--grpc-port", "8000", "--no-metrics"]) == 2
    assert "must differ" in capsys.readouterr().err
    assert serve_main([str(tmp_path), "--tritonserver", str(tmp_path / "none")]) == 2
    assert "no usable tritonserver" in capsys.readouterr().err


def test_install_server_checks_the_wheel(tmp_path):
    fake = tmp_path / "nvidia_pytriton-0.7.0-py3-none-manylinux_2_35_x86_64.whl"
    fake.write_bytes(b"not the wheel")
    with pytest.raises(ServerUnavailableError, match="sha256 .* expected 21f063ff"):
        install_server(fake, tmp_path / "triton")
    assert not (tmp_path / "triton").exists()
    assert os.listdir(tmp_path) == [fake.name]


def test_the_pinned_wheel_is_the_one_the_installer_checks():
    pins = dict(line.split("==", 1) for line in (REPO / "constraints.txt").read_text().split() if "==" in line)
    assert pins["nvidia-pytriton"] == PYTRITON_VERSION
