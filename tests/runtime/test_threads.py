"""One runtime shared by 8 threads x 200 calls gives exactly the serial results."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import runtime

THREADS, CALLS = 8, 200


@pytest.mark.parametrize(
    "options",
    [{}, {"io_binding": True}, {"max_batch": 2}, {"threads": 3, "batch_split": 2}],
    ids=["run", "io_binding", "chunked", "batch_split"],
)
def test_threads_equal_serial(bundle, options):
    # batch_split: batches of 2 and 3 are cut across 2-3 single-threaded sessions while 8 threads call at once
    with runtime.load(bundle, backend="onnxruntime", **{"threads": 1, **options}) as rt:
        rng = np.random.default_rng(0)
        # Each call gets its own input (varying batch size too), so a mix-up between threads would show.
        zs = [rng.standard_normal((1 + i % 3, rt.latent_dim), dtype=np.float32) for i in range(THREADS * CALLS)]
        xs = [rng.uniform(-1, 1, (1 + i % 2, *rt.image_shape)).astype(np.float32) for i in range(THREADS * CALLS)]

        def call(i):
            return rt.decode(zs[i]) if i % 2 == 0 else rt.encode(xs[i]).mu

        serial = [call(i) for i in range(THREADS * CALLS)]
        start = threading.Barrier(THREADS)

        def worker(t):
            start.wait()  # all threads hammer the runtime at once
            return [(i, call(i)) for i in range(t, THREADS * CALLS, THREADS)]

        with ThreadPoolExecutor(THREADS) as pool:
            results = [r for part in pool.map(worker, range(THREADS)) for r in part]
    assert len(results) == THREADS * CALLS
    for i, out in results:
        np.testing.assert_array_equal(out, serial[i], err_msg=f"call {i}")


def test_close_waits_for_calls_in_flight(bundle):
    rt = runtime.load(bundle, backend="onnxruntime")
    z = np.zeros((64, rt.latent_dim), np.float32)
    errors, done = [], []

    def worker():
        try:
            for _ in range(50):
                done.append(rt.decode(z).shape)
        except runtime.ClosedError:
            pass
        except Exception as e:  # noqa: BLE001 - any other failure (a released session mid-call) fails the test
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    rt.close()
    for t in threads:
        t.join()
    assert not errors
    with pytest.raises(runtime.ClosedError):
        rt.decode(z)
