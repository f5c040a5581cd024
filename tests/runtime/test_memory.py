"""Memory is bounded by the chunk (issue 16, class 4): a large batch costs its inputs and outputs plus one chunk.

Peak RSS is measured in a fresh child process (the test process's own high-water mark holds whatever ran before):
the child loads the tiny bundle, notes its current RSS, resets its peak (/proc/self/clear_refs), runs one large batch
and reports its peak, VmHWM. Not ru_maxrss: Linux carries the forking parent's RSS into the child's ru_maxrss across
exec, so under pytest it read ~460 MiB before the child had done anything. The unchunked control (max_chunk=None, one
engine call for the whole batch, as before the fix) must exceed the same bound, so the bound is proven to catch the
defect on this machine: 10,000 tiny latents in one call peaked ~530 MiB above their 117 MiB output, chunked (the
default) ~34 MiB; the encoder ~289 MiB before, ~15 MiB now.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import runtime
from runtime.backends.base import DEFAULT_MAX_CHUNK

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/status").is_file(), reason="peak RSS is read from /proc/self/status (VmRSS, VmHWM: Linux)"
)

ROOT = Path(__file__).resolve().parents[2]
N = 10_000
BOUND_MIB = 128  # allowed above the inputs and the outputs; the unchunked call needs ~4x this

_CHILD = r"""
import json, sys
import numpy as np
import runtime

def status_kib(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))

bundle, graph, n, chunk, library = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
if library:  # the C++ library through its C ABI (sessions are created by vae_runtime_create)
    from benchmarks.cpp_runtime import CppRuntime
    rt = CppRuntime(bundle, graphs=graph, library=library)
else:
    options = {} if chunk == "default" else {"max_chunk": None if chunk == "none" else int(chunk)}
    rt = runtime.load(bundle, backend="onnxruntime", graphs=[graph], preload=True, **options)
with rt:
    rng = np.random.default_rng(0)
    if graph == "decoder":
        x = rng.standard_normal((n, rt.latent_dim), dtype=np.float32)
    else:
        x = rng.random((n, *rt.image_shape), dtype=np.float32)
        x *= 2  # in place: no temporary as large as the input before the measured call
        x -= 1
    before = status_kib("VmRSS")
    try:  # reset VmHWM to the current RSS (Linux >= 4.0), so nothing before the call counts
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # then VmHWM is the whole life's peak, which the lines above keep below the call's
    out = rt.decode(x) if graph == "decoder" else rt.encode(x)
    arrays = [out] if graph == "decoder" else list(out) if isinstance(out, tuple) else [out.mu, out.logvar]
    peak = status_kib("VmHWM")
    print(json.dumps({"before_kib": before, "peak_kib": peak, "input_bytes": x.nbytes,
                      "output_bytes": sum(a.nbytes for a in arrays), "shape": list(arrays[0].shape)}))
"""


def peak_memory(bundle: Path, graph: str, chunk: str = "default", library: Path | None = None) -> dict:
    """Run N items of `graph` in a fresh process (the Python runtime, or the C++ library at `library`); its RSS
    before the call, its peak during it, and extra_mib: the peak above that RSS and the call's outputs, in MiB."""
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(bundle), graph, str(N), chunk, str(library or "")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    # Beyond the RSS before the call (which already holds the input): the output, and what the engine call adds.
    r["extra_mib"] = ((r["peak_kib"] - r["before_kib"]) * 1024 - r["output_bytes"]) / 2**20
    return r


@pytest.mark.parametrize("graph", ["decoder", "encoder"])
def test_large_batch_peak_memory_is_outputs_plus_one_chunk(bundle, graph):
    r = peak_memory(bundle, graph, "default")
    assert r["shape"][0] == N
    assert r["extra_mib"] < BOUND_MIB, (
        f"{graph} of {N}: peak RSS {r['extra_mib']:.0f} MiB above input + output "
        f"({r['output_bytes'] / 2**20:.0f} MiB), bound {BOUND_MIB} MiB: {r}"
    )


def test_unchunked_control_exceeds_the_bound(bundle):
    """max_chunk=None is one engine call for the whole batch (the behaviour before the fix): the bound above catches
    it, so the bounded case is not passing merely because the model is small."""
    r = peak_memory(bundle, "decoder", "none")
    assert r["extra_mib"] > BOUND_MIB, r


def _recording(bundle, **options):
    """A real ONNX Runtime backend that records the batch of each engine call (_run), behind a VAERuntime."""
    from runtime.backends import Device
    from runtime.backends.onnxruntime import OnnxRuntimeBackend

    seen: list[int] = []

    class Recording(OnnxRuntimeBackend):
        def _run(self, graph, feeds):
            seen.append(next(iter(feeds.values())).shape[0])
            return super()._run(graph, feeds)

    m = runtime.read_manifest(bundle)
    be = Recording.open(
        bundle, m, device=Device.parse("cpu"), precision="fp32", graphs=("encoder", "decoder"), **options
    )
    return runtime.VAERuntime(be, m, bundle), seen


def test_every_engine_call_is_chunked_by_default_and_results_are_unchanged(bundle):
    vae, seen = _recording(bundle, batch_split=False)
    assert vae.backend.max_chunk == DEFAULT_MAX_CHUNK and vae.describe()["max_chunk"] == DEFAULT_MAX_CHUNK
    n = 2 * DEFAULT_MAX_CHUNK + 5
    rng = np.random.default_rng(3)
    z = rng.standard_normal((n, vae.latent_dim), dtype=np.float32)
    x = rng.uniform(-1, 1, (n, *vae.image_shape)).astype(np.float32)
    out, post = vae.decode(z), vae.encode(x)
    assert seen == [DEFAULT_MAX_CHUNK, DEFAULT_MAX_CHUNK, 5] * 2
    with runtime.load(bundle, backend="onnxruntime", max_chunk=None, batch_split=False) as whole:
        assert whole.describe()["max_chunk"] is None
        np.testing.assert_allclose(out, whole.decode(z), rtol=0, atol=1e-6)
        ref = whole.encode(x)
    np.testing.assert_allclose(post.mu, ref.mu, rtol=0, atol=1e-6)
    np.testing.assert_allclose(post.logvar, ref.logvar, rtol=0, atol=1e-6)
    assert out.flags.c_contiguous and out.dtype == np.float32 and post.mu.flags.c_contiguous
    seen.clear()
    vae.sample(DEFAULT_MAX_CHUNK + 1, seed=0)  # sample / reconstruct / interpolate go through the same run()
    assert seen == [DEFAULT_MAX_CHUNK, 1]
    vae.close()


def test_max_chunk_and_max_batch_the_smaller_wins(bundle):
    vae, seen = _recording(bundle, max_batch=5, batch_split=False)
    vae.backend.max_chunk = 3
    vae.decode(np.zeros((7, vae.latent_dim), np.float32))
    vae.backend.max_chunk = 8
    vae.decode(np.zeros((12, vae.latent_dim), np.float32))
    assert seen == [3, 3, 1, 5, 5, 2]
    vae.close()


def test_max_chunk_through_load_with_batch_split(bundle):
    """Each chunk is what batch_split sees: chunks of 6 are cut across 2 single-threaded sessions, a last chunk of 3
    (below the split threshold of 4) runs on the main session; outputs equal one unchunked, unsplit call."""
    rng = np.random.default_rng(4)
    z = rng.standard_normal((15, 8), dtype=np.float32)
    with (
        runtime.load(bundle, backend="onnxruntime", batch_split=False, max_chunk=None) as whole,
        runtime.load(bundle, backend="onnxruntime", threads=2, batch_split=4, max_chunk=6) as rt,
    ):
        calls = []
        workers = rt.backend._worker_sessions("decoder")

        class Recorder:
            def __init__(self, sess):
                self.sess = sess

            def run(self, names, feeds):
                calls.append(len(next(iter(feeds.values()))))
                return self.sess.run(names, feeds)

        rt.backend._workers["decoder"] = [(Recorder(s), t, o) for s, t, o in workers]
        np.testing.assert_allclose(rt.decode(z), whole.decode(z), rtol=0, atol=1e-6)
        assert sorted(calls) == [3, 3, 3, 3]  # two chunks of 6, each split 3 + 3; the last chunk (3) is not split


@pytest.mark.parametrize("value", [0, -1, 2.5, True, "64"])
def test_max_chunk_is_checked(bundle, value):
    with pytest.raises(runtime.BackendError, match=r"option max_chunk: expected a positive integer or None"):
        runtime.load(bundle, backend="onnxruntime", max_chunk=value)
    with runtime.load(bundle, backend="onnxruntime") as rt:
        with pytest.raises(runtime.BackendError, match=r"option max_chunk"):
            rt.backend.max_chunk = value
        assert rt.backend.max_chunk == DEFAULT_MAX_CHUNK
