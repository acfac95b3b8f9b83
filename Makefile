# Two commands matter: `make up` (set up and run Ariel) and `make test`.
# Everything else is a step of those.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)

.PHONY: up test test-fast check setup docker-host postgres image bench clean

up: setup
	./docker/setup-host.sh --optional
	$(BIN)/ariel up

# Two test processes at once, each taking whole modules (a module's `ariel up` stack serves all its tests);
# then, alone, the tests marked serial, which change what every process of the machine shares.
test: check docker-host postgres image
	$(BIN)/pytest -n 2 --dist loadfile -m "not serial" --durations=30
	$(BIN)/pytest -p no:xdist -m serial || [ $$? -eq 5 ]  # 5: PYTEST_ADDOPTS selected none of them

# Everything that needs no container or long-running stack: a quick lane while working.
test-fast: setup postgres
	$(BIN)/pytest -m "not slow and not docker"

# Lint, types and the one-way import layers (pyproject.toml holds each tool's settings).
check: setup
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

setup: $(STAMP)

# constraints.txt pins every transitive version the tests passed with: warnings
# are errors in the tests, so a new release of anything must not slip in unseen.
$(STAMP): pyproject.toml constraints.txt
	# A venv made where Python lacks ensurepip (Debian without python3-venv) has no pip: made again, whole.
	test -x $(BIN)/pip || { rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); }
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	rm -f $(VENV)/.installed-* && touch $@

# In CI (CI set) Docker must be had; on a laptop without it the Docker tests skip.
docker-host:
	./docker/setup-host.sh $(if $(CI),,--optional)

# The PostgreSQL store tests need a server; in CI it must be had.
postgres:
	./tests/setup-postgres.sh $(if $(CI),,--optional)

# Built before the tests so their progress shows here, not inside a test's timeout: the runtime image,
# and the app and PostgreSQL images of docker/compose.yaml.
image: setup docker-host
	if docker info >/dev/null 2>&1; then LITELLM_LOCAL_MODEL_COST_MAP=True $(BIN)/ariel build-image compose; fi

bench: setup docker-host postgres image
	$(BIN)/python bench/run_latency.py --runs 10
	$(BIN)/python bench/worker_memory.py --pools 5
	$(BIN)/python bench/gateway_latency.py --calls 200
	$(BIN)/python bench/mcp_call.py --calls 20 --rounds 3
	$(BIN)/python bench/read_latency.py --calls 30
	$(BIN)/python bench/fault_soak.py --minutes 20
	$(BIN)/python bench/desktop_load.py --agents 20 --minutes 10 --baseline --postgresql
	$(BIN)/python bench/scale.py --orgs 1000 --agents 10 --every-minute 10 --minutes 10

clean:
	rm -rf $(VENV) .pytest_cache
