"""`import runtime` pulls numpy only; an ONNX Runtime bundle loads and runs with torch made unimportable."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

CHILD = r"""
import importlib.abc, json, sys

BLOCKED = ("torch", "onnx", "onnxscript", "onnxslim", "matplotlib", "vae_model", "export", "tensorrt")

class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"blocked by the test: {name}")
        return None

sys.meta_path.insert(0, Blocker())
import runtime
after_import = sorted(m for m in sys.modules if m.split(".")[0] in ("onnxruntime", "openvino", *BLOCKED))
import numpy as np
with runtime.load(sys.argv[1], backend="auto") as rt:
    z = np.zeros((2, rt.latent_dim), np.float32)
    img = rt.decode(z)
    mu = rt.encode(img).mu
    backend = rt.backend_name
try:
    runtime.load(sys.argv[1], backend="torch")
    torch_error = None
except runtime.BackendUnavailableError as e:
    torch_error = str(e)
from runtime.verify.parity import check_parity
report = check_parity(sys.argv[1], backend="onnxruntime")
heavy = sorted({m.split(".")[0] for m in sys.modules} & set(BLOCKED))
print(json.dumps({"after_import": after_import, "heavy": heavy, "backend": backend, "shape": list(img.shape),
                  "mu": list(mu.shape), "torch_error": torch_error, "parity": bool(report)}))
"""


def test_runtime_runs_without_torch(bundle):
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(bundle)], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["after_import"] == []  # not even onnxruntime / openvino: backends import their engine when chosen
    assert out["heavy"] == []
    assert out["backend"] == "onnxruntime" and out["shape"][0] == 2 and out["mu"][0] == 2
    assert out["parity"] is True
    assert "backend 'torch': its module export.reference cannot be imported here" in out["torch_error"]


DECODE_ONLY = r"""
import json, sys
import numpy as np
before = set(sys.modules)  # numpy < 2 imports random itself (numpy.random eagerly): not the runtime's doing
import runtime
with runtime.load(sys.argv[1], graphs=("decoder",)) as rt:
    rt.decode(np.zeros((1, rt.latent_dim), np.float32))
print(json.dumps(sorted(m for m in ("tempfile", "shutil", "bz2", "lzma", "random")
                        if m in sys.modules and m not in before)))
"""


def test_loading_and_decoding_import_no_writer_modules(bundle):
    # A cold start pays for every import: tempfile and shutil (~4 ms here, with bz2 / lzma / random behind them)
    # are only needed to write files, which runtime.files imports when it writes (docs/performance.md#cold-start).
    proc = subprocess.run(
        [sys.executable, "-c", DECODE_ONLY, str(bundle)], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
