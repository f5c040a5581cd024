"""The README's commands, run as written in the order a reader meets them (on a tiny model, in a temporary folder).

Every line of every ```bash block is either run or listed in NOT_RUN with the test that covers it, so a new README
line must be classified here. The only change made to a command: `.venv/bin/python` becomes this interpreter,
`runtime/cpp/build/` the session's C++ build, and the training lines get TINY appended (argparse: the last value wins),
so the model is 32x32 with latent 8 and each step takes seconds.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnx")

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "--image-size",
    "32",
    "--latent-dim",
    "8",
    "--hidden-dims",
    "8,16",
    "--train-size",
    "64",
    "--val-size",
    "16",
    "--no-progress",
]
# Lines not run here, by the start of the command, with where they are tested.
NOT_RUN = {
    "make demo": "CI runs the same steps through this test and `make test`; the Makefile target itself by hand",
    "make test": "CI (.ci/run)",
    "make cpp-aarch64": "tests/runtime/cpp/test_cpp_aarch64.py",
    "make cpp-trt-check": "tests/runtime/cpp/test_cpp_tensorrt_compile.py",
    "make cpp": "the session's C++ build (tests/cpp_support.py) stands in for it",
    "python -m export.tensorrt.build": "needs an NVIDIA GPU and TensorRT (tests/export/tensorrt/)",
    "python -m runtime.verify.parity": "the GPU block: needs TensorRT (tests/runtime/test_tensorrt_backend.py)",
    ".venv/bin/python -m runtime.serving.serve": "a long-running server (tests/runtime/serving/test_serve.py)",
    ".venv/bin/python -m benchmarks.serving": "starts a server (tests/benchmarks/test_serving.py)",
}


def blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", (REPO / "README.md").read_text(), flags=re.S | re.M)


def commands() -> list[str]:
    out = []
    for block in blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line and not line.startswith("#"):
                out.append(line)
    return out


def _not_run(cmd: str) -> str | None:
    return next((why for start, why in NOT_RUN.items() if cmd == start or cmd.startswith(start + " ")), None)


def test_every_readme_command_is_run_or_covered_elsewhere():
    cmds = commands()
    assert len(cmds) >= 15
    for cmd in cmds:
        assert _not_run(cmd) or cmd.startswith((".venv/bin/python -m ", "runtime/cpp/build/")), cmd


@pytest.mark.slow
def test_readme_commands_work_in_reading_order(tmp_path, cpp_build):
    from PIL import Image

    bin_dir = cpp_build.build_dir
    for cmd in commands():
        if _not_run(cmd):
            continue
        argv = shlex.split(cmd)
        if argv[0] == ".venv/bin/python":
            argv[0] = sys.executable
        else:
            argv[0] = str(bin_dir / Path(argv[0]).name)
        if argv[1:3] == ["-m", "vae_model.train"]:
            argv += TINY
        proc = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{cmd}\nexit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"

    runs = tmp_path / "runs" / "demo"
    assert (runs / "train" / "best.pt").is_file() and (runs / "bundle" / "vae.json").is_file()
    assert sorted(p.name for p in (runs / "cpp").glob("*.png"))[:1]
    assert (runs / "triton").is_dir() and (runs / "bench" / "latency.json").is_file()

    # The application snippet, on a photo of another size than the model's (128x128 RGB, the model is 32x32).
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)).save(tmp_path / "in.png")
    (snippet,) = blocks("python")
    proc = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with Image.open(tmp_path / "out.png") as out:
        assert out.size == (32, 32) and out.mode == "RGB"
