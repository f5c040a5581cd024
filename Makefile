# Two entry points on a fresh clone: `make demo` (train -> export -> parity -> benchmark) and `make test`.
# Each creates .venv and installs the pinned versions from constraints.txt first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO   := runs/demo
EXTRAS := train,export,ort,bench,dev

.PHONY: demo test venv clean
venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[$(EXTRAS)]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m vae_model.train --out $(DEMO)/train --epochs 8 --train-size 6000 --seed 0

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) runs
