# udabench: `make demo` and `make test` each work on a fresh machine by themselves.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export MLFLOW_DISABLE_TELEMETRY := true
export DVC_NO_ANALYTICS := 1
export RAY_USAGE_STATS_ENABLED := 0
export RAY_AUTH_MODE := disabled
export DO_NOT_TRACK := 1

.PHONY: install demo test test-all lint clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/torchrun || { avail=$$(df -Pk . | awk 'NR==2 {print int($$4 / 1048576)}'); \
	  [ $$avail -ge 7 ] || echo "warning: $$avail GB free in $(CURDIR); the install needs about 7 GB" \
	    "(torch 2.14.1 and torchvision 0.29.1 are CUDA builds)" >&2; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, from this machine's local files (see DEVELOPERS.md)
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# outputs: runs/demo/ (samples, report), mlruns/, ray_results/, datasets/synthetic (DVC): all ignored by
# git; the committed reports/ and dvc.lock stay as they are
demo: $(STAMP)
	$(BIN)/udabench demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" --timeout=900

test-all: $(STAMP)
	$(BIN)/python -m pytest -q --timeout=1800

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache
