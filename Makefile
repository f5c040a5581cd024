# Two entry points on a fresh clone: `make demo` (train -> export -> parity -> benchmark) and `make test`.
# Each creates .venv and installs the pinned versions from constraints.txt first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO   := runs/demo
EXTRAS := train,export,ort,images,openvino,bench,trt-cpu,dev,serve

.PHONY: demo test venv clean cpp cpp-aarch64 apt-deps
venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[$(EXTRAS)]'
	@# tritonserver for runtime.serving.serve: from the pinned nvidia-pytriton wheel, sha256-checked; the PyTriton library itself
	@# is not installed (it pins numpy<2). See runtime/serving/serve.py.
	$(PY) -m pip download --quiet --disable-pip-version-check --no-deps -c constraints.txt -d $(VENV)/wheels nvidia-pytriton
	$(PY) -m runtime.serving.serve --install-server $(VENV)/wheels
	touch $(STAMP)

demo: $(STAMP)
	@# A short schedule: batch 32 and lr 1e-3 (instead of the original 64 / 5e-3) learn recognisable shapes in ~3 min on 2 cores.
	$(PY) -m vae_model.train --out $(DEMO)/train --epochs 8 --train-size 4096 --val-size 256 --batch-size 32 --lr 0.001 --seed 0
	$(PY) -m export.to_onnx $(DEMO)/train/best.pt --out $(DEMO)/bundle
	$(PY) -m export.precision.fp16 $(DEMO)/bundle
	$(PY) -m export.precision.int8 $(DEMO)/bundle --int8
	$(PY) -m runtime.verify.parity $(DEMO)/bundle --precision fp32 --json $(DEMO)/parity.fp32.json
	$(PY) -m runtime.verify.parity $(DEMO)/bundle --precision fp16 --json $(DEMO)/parity.fp16.json
	$(PY) -m runtime.verify.parity $(DEMO)/bundle --precision int8 --json $(DEMO)/parity.int8.json
	@# bf16 runs on OpenVINO, on CPUs with native bf16 only: elsewhere export.precision.bf16 says why and the demo goes on.
	if $(PY) -m export.precision.bf16 $(DEMO)/bundle; then \
		$(PY) -m runtime.verify.parity $(DEMO)/bundle --backend openvino --precision bf16 --json $(DEMO)/parity.bf16.json; \
	else echo "demo: no bf16 on this machine (the line above says why); going on"; fi
	@# Every option side by side, with the peer a user would otherwise pick: OpenVINO's default on a plain export.
	@# --record-auto: the CPU backends' medians go into vae.json, so backend="auto" on this machine takes the faster one.
	$(PY) -m benchmarks.latency $(DEMO)/bundle --backends torch,onnxruntime,openvino --precision fp32,fp16,int8,bf16 \
		--batch 1,64 --duration 1.5 --checkpoint $(DEMO)/train/best.pt --peer --record-auto --out $(DEMO)/bench
	@echo "demo done: samples in $(DEMO)/train/samples_e008.png, bundle in $(DEMO)/bundle, plots in $(DEMO)/bench/*.png"

test: $(STAMP)
	$(PY) -m pytest -q

# JetPack 6's Python (Ubuntu 22.04): the runtime alone on Python 3.10 with numpy 1.26, onnxruntime 1.19 and no torch
# (constraints-jetpack.txt). The main venv exports the test bundles (tests/make_bundles.py); the runtime tests run on
# them in .venv-jetpack, skipping only JETPACK_SKIPS (tests/runtime/conftest.py, each with its reason) and failing when
# fewer than JP_MIN_PASSED pass; then runtime.verify.parity checks export's FP32/FP16/INT8 variants on that ONNX Runtime.
JP_PYTHON     ?= /root/.pyenv/versions/3.10.13/bin/python3.10
JP_VENV       := .venv-jetpack
JP_PY         := $(JP_VENV)/bin/python
JP_STAMP      := $(JP_VENV)/.installed
JP_BUNDLES    := runs/jetpack/bundles
JP_MIN_PASSED := 100
.PHONY: test-jetpack

$(JP_STAMP): pyproject.toml constraints-jetpack.txt
	@test -x $(JP_PYTHON) || { echo "test-jetpack: no Python 3.10 at $(JP_PYTHON) (set JP_PYTHON=...)" >&2; exit 1; }
	test -x $(JP_PY) || $(JP_PYTHON) -m venv $(JP_VENV)
	$(JP_PY) -m pip install --quiet --disable-pip-version-check -c constraints-jetpack.txt -e '.[ort,images]' \
		pytest pytest-timeout
	@# The runtime must not need these: make sure they cannot be imported here.
	$(JP_PY) -c "import importlib.util as u, sys; bad = [m for m in ('torch', 'onnx') if u.find_spec(m)]; \
		sys.exit(f'$(JP_VENV) must not have {bad}' if bad else 0)"
	touch $(JP_STAMP)

test-jetpack: $(STAMP) $(JP_STAMP)
	$(PY) -m tests.make_bundles $(JP_BUNDLES)
	$(JP_PY) -c "import sys, numpy, onnxruntime as ort; \
		print('JetPack run: Python', sys.version.split()[0], 'numpy', numpy.__version__, 'onnxruntime', ort.__version__)"
	VAE_TEST_BUNDLES=$(JP_BUNDLES) $(JP_PY) -m pytest -q tests/runtime --min-passed $(JP_MIN_PASSED)
	for p in fp32 fp16 int8; do $(JP_PY) -m runtime.verify.parity $(JP_BUNDLES)/tiny-variants --precision $$p || exit 1; done

cpp: $(STAMP)
	cmake -S runtime/cpp -B runtime/cpp/build -DCMAKE_BUILD_TYPE=Release -DPython3_EXECUTABLE=$(CURDIR)/$(PY)
	cmake --build runtime/cpp/build -j2

# Compiles (never links) the whole C++ runtime with its native TensorRT backend, -Werror, against the published headers
# of each TensorRT in TRT_VERSIONS (../shared/third_party/tensorrt/<v>/include, used in place) and CUDA 12.6 headers
# fetched from PyPI (fetch_deps.py cuda_headers); no TensorRT library, CUDA toolkit or GPU needed. The same check as
# tests/runtime/cpp/test_cpp_tensorrt_compile.py; build folders runtime/cpp/build/trt-check-<v>.
TRT_HEADERS  ?= $(abspath ../shared/third_party/tensorrt)
TRT_VERSIONS ?= 10.3 11.1
.PHONY: cpp-trt-check
cpp-trt-check: $(STAMP)
	for v in $(TRT_VERSIONS); do \
		cmake -S runtime/cpp -B runtime/cpp/build/trt-check-$$v -DCMAKE_BUILD_TYPE=Release -DPython3_EXECUTABLE=$(CURDIR)/$(PY) \
			-DVAE_BUILD_EXAMPLES=OFF -DVAE_BUILD_TESTS=OFF -DVAE_TENSORRT_COMPILE_CHECK=$(TRT_HEADERS)/$$v/include && \
		cmake --build runtime/cpp/build/trt-check-$$v --target vae_runtime_trt_compile_check -j2 || exit 1; \
		echo "cpp-trt-check: TensorRT $$v headers: compiled"; \
	done

# Debian packages beyond the machine image (.ci/apt-packages.txt: the aarch64 cross compiler and qemu-user); installs
# only the missing ones, needs root then (CI runs as root).
apt-deps:
	bash .ci/install-apt-packages.sh

# The C++ runtime and its programs for Linux aarch64 (Jetson), cross-built with Debian's g++-aarch64-linux-gnu against
# ONNX Runtime 1.32.0 for aarch64 (fetch_deps.py onnxruntime_aarch64: the PyPI wheel's library, as for x86_64); CMake's
# ABI probe runs under qemu-aarch64.
# Run the results under QEMU with: runtime/cpp/cmake/toolchains/qemu-aarch64-run runtime/cpp/build-aarch64/vae_decode ...
AARCH64_BUILD := runtime/cpp/build-aarch64
cpp-aarch64: $(STAMP)
	@command -v aarch64-linux-gnu-g++ >/dev/null && command -v qemu-aarch64 >/dev/null || \
		{ echo "cpp-aarch64: aarch64-linux-gnu-g++ or qemu-aarch64 is missing: run 'make apt-deps' (as root)" >&2; exit 1; }
	ort=$$($(PY) runtime/cpp/scripts/fetch_deps.py --only onnxruntime_aarch64 --print-root | sed -n 's/^onnxruntime_aarch64=//p') && \
	test -n "$$ort" && \
	cmake -S runtime/cpp -B $(AARCH64_BUILD) -DCMAKE_BUILD_TYPE=Release -DPython3_EXECUTABLE=$(CURDIR)/$(PY) \
		-DCMAKE_TOOLCHAIN_FILE=$(CURDIR)/runtime/cpp/cmake/toolchains/aarch64-linux-gnu.cmake -DONNXRUNTIME_ROOT="$$ort"
	cmake --build $(AARCH64_BUILD) -j2

# The inner loop: `make check` = ruff (pyproject.toml [tool.ruff]), then the quick tests: pure Python, no bundle
# export, no C++ build, no server (about 25 s of pytest on 2 idle cores; `make test` still runs everything).
QUICK_TESTS := tests/test_version.py tests/runtime/verify/test_metrics.py tests/benchmarks/test_stats.py \
	tests/benchmarks/test_flops.py tests/runtime/test_tensorrt_runner.py tests/vae_model/test_model.py \
	tests/vae_model/test_checkpoint.py
.PHONY: lint check
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

check: lint
	$(PY) -m pytest -q $(QUICK_TESTS)

clean:
	rm -rf $(VENV) $(JP_VENV) runs runtime/cpp/build runtime/cpp/build-aarch64 third_party
