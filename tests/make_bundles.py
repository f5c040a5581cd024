"""Prebuilt bundles for the runtime tests in an environment without torch (JetPack 6's Python: `make test-jetpack`).

Run with the main venv (torch, export), then point the torch-less run at the folder:

    .venv/bin/python -m tests.make_bundles runs/jetpack/bundles
    VAE_TEST_BUNDLES=runs/jetpack/bundles .venv-jetpack/bin/python -m pytest tests/runtime

It writes DIR/tiny.pt, the checkpoint of the `tiny_checkpoint` fixture (tests/conftest.py), DIR/tiny/, the bundle
of the `bundle` fixture (tests/runtime/conftest.py), and DIR/tiny-variants/, the same bundle with export's FP16 and
INT8 variants added (export.precision.fp16, export.precision.int8; their output in DIR/variants.log), for `python -m runtime.verify.parity
--precision`. All exported by today's export code: the torch-less run then proves that what export writes now loads
and passes on the older ONNX Runtime. Each graph's ONNX IR version and opset are printed, because those decide whether
an older ONNX Runtime can load it at all.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
from pathlib import Path
from typing import Sequence

ENV = "VAE_TEST_BUNDLES"  # the folder the test fixtures take prebuilt bundles from (tests/conftest.py)
CHECKPOINT = "tiny.pt"
BUNDLE = "tiny"
VARIANTS = "tiny-variants"


def make_bundles(out: Path) -> Path:
    """(Re)build OUT/tiny.pt, OUT/tiny/ and OUT/tiny-variants/ from scratch; returns OUT."""
    from export.precision import fp16, int8
    from export.to_onnx import export_bundle
    from tests.conftest import TINY, make_model
    from vae_model import save_checkpoint

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    ckpt = save_checkpoint(out / CHECKPOINT, make_model(TINY), training={"epoch": 0, "step": 0, "seed": 0})
    export_bundle(ckpt, out / BUNDLE, log=lambda *a: None)
    variants = Path(shutil.copytree(out / BUNDLE, out / VARIANTS))
    log = out / "variants.log"
    with open(log, "w") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        status = (fp16.main([str(variants), "--no-progress"]), int8.main([str(variants), "--int8", "--no-progress"]))
    if status != (0, 0):
        raise SystemExit(
            f"{log.read_text()}\nexport.to_fp16 / export.precision.int8 --int8 exited {status} (log: {log})"
        )
    return out


def describe_graphs(bundle: Path) -> list[str]:
    """One line per ONNX file of BUNDLE: its IR version and default-domain opset."""
    import onnx

    lines = []
    for path in sorted(bundle.glob("*.onnx")):
        model = onnx.load(str(path), load_external_data=False)
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
        lines.append(f"{path.name}: IR version {model.ir_version}, opset {opset}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.make_bundles", description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, metavar="DIR", help="folder to (re)create")
    args = p.parse_args(argv)
    out = make_bundles(args.out)
    for line in describe_graphs(out / VARIANTS):
        print(f"{out / VARIANTS}/{line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
