# Two entry points on a fresh clone: `make demo` (train -> export -> parity -> benchmark) and `make test`.
# Each creates .venv and installs the pinned versions from constraints.txt first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO   := runs/demo
EXTRAS := train,export,ort,bench,trt-cpu,dev,serve

.PHONY: demo test venv clean cpp
venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[$(EXTRAS)]'
	@# tritonserver for runtime.serve: from the pinned nvidia-pytriton wheel, sha256-checked; the PyTriton library itself
	@# is not installed (it pins numpy<2). See runtime/serve.py.
	$(PY) -m pip download --quiet --disable-pip-version-check --no-deps -c constraints.txt -d $(VENV)/wheels nvidia-pytriton
	$(PY) -m runtime.serve --install-server $(VENV)/wheels
	touch $(STAMP)

demo: $(STAMP)
	@# A short schedule: batch 32 and lr 1e-3 (instead of the original 64 / 5e-3) learn recognisable shapes in ~3 min on 2 cores.
	$(PY) -m vae_model.train --out $(DEMO)/train --epochs 8 --train-size 4096 --val-size 256 --batch-size 32 --lr 0.001 --seed 0
	$(PY) -m export.to_onnx $(DEMO)/train/best.pt --out $(DEMO)/bundle
	$(PY) -m export.to_fp16 $(DEMO)/bundle
	$(PY) -m export.quantize $(DEMO)/bundle --int8
	$(PY) -m runtime.parity $(DEMO)/bundle --precision fp32 --json $(DEMO)/parity.fp32.json
	$(PY) -m runtime.parity $(DEMO)/bundle --precision fp16 --json $(DEMO)/parity.fp16.json
	$(PY) -m runtime.parity $(DEMO)/bundle --precision int8 --json $(DEMO)/parity.int8.json
	$(PY) -m benchmarks.latency $(DEMO)/bundle --backends torch,onnxruntime --precision fp32,fp16,int8 \
		--batch 1,64 --duration 1.5 --checkpoint $(DEMO)/train/best.pt --out $(DEMO)/bench
	@echo "demo done: samples in $(DEMO)/train/samples_e008.png, bundle in $(DEMO)/bundle, plots in $(DEMO)/bench/*.png"

test: $(STAMP)
	$(PY) -m pytest -q

cpp: $(STAMP)
	cmake -S runtime/cpp -B runtime/cpp/build -DCMAKE_BUILD_TYPE=Release -DPython3_EXECUTABLE=$(PY)
	cmake --build runtime/cpp/build -j2

clean:
	rm -rf $(VENV) runs runtime/cpp/build third_party
