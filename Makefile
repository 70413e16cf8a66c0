# Two entry points on a fresh machine: `make demo` and `make test`.
# Both create or reuse .venv; the install step re-runs only when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_PIN := torch==2.13.0
EXTRAS := sim,baselines,images,dense,dev
export MUJOCO_GL ?= osmesa
export PYOPENGL_PLATFORM ?= $(MUJOCO_GL)

.PHONY: demo test lint osmesa clean-venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_PIN)"
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]" "$(TORCH_PIN)"
	touch $(STAMP)

# MuJoCo's software renderer; only installed when it is missing and we use osmesa.
osmesa:
	@if [ "$(MUJOCO_GL)" = "osmesa" ] && ! ldconfig -p | grep -q libOSMesa; then \
		echo "installing libosmesa6 for headless MuJoCo rendering"; \
		apt-get update -qq && apt-get install -y -qq libosmesa6 >/dev/null; \
	fi

demo: $(STAMP) osmesa
	$(BIN)/ddn-train task=obstacle-reach policy=ddn out_dir=runs/demo

lint: $(STAMP)
	$(BIN)/ruff check ddn_policy tasks baselines tests

test: $(STAMP) osmesa lint
	$(BIN)/python -m pytest

clean-venv:
	rm -rf $(VENV)
