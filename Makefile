# gpuaudit: the two commands a new user needs are `make run` and `make test`.
PY      ?= /usr/bin/python3
VENV    ?= .venv
BIN     := $(VENV)/bin
LISTEN  ?= 127.0.0.1:50051
DB      ?= var/events.db
STAMP   := $(VENV)/.installed

.PHONY: install run test lint unit proto clean

install: $(STAMP)

# Host packages (bcc, headers, tracefs), then a venv that sees the system bcc.
$(STAMP): pyproject.toml agent/host-setup.sh
	./agent/host-setup.sh
	test -x $(BIN)/python || $(PY) -m venv --system-site-packages $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

# Collector on SQLite + agent, on loopback, over mutual TLS with a dev PKI in
# var/pki (minted on first run: a node certificate for this host, a reader "ops").
# Ctrl-C stops both.
run: install
	@mkdir -p $(dir $(DB))
	@set -e; node=$$($(BIN)/python -c 'import socket; print(socket.gethostname())'); \
	 test -f var/pki/ca/ca.key || $(BIN)/gpuaudit certs init --out var/pki --reader ops >/dev/null; \
	 test -f var/pki/nodes/$$node/tls.key || $(BIN)/gpuaudit certs node $$node --pki var/pki >/dev/null; \
	 test -f var/pki/readers/ops/tls.key || $(BIN)/gpuaudit certs reader ops --pki var/pki >/dev/null; \
	 echo "gpuaudit: collector on $(LISTEN) (mTLS, certificates in var/pki), db $(DB); agent $$node starting (Ctrl-C to stop)"; \
	 echo "gpuaudit: look at events with:  $(BIN)/gpuaudit events --collector $(LISTEN) --tls-dir var/pki/readers/ops"; \
	 echo "gpuaudit: and at node status:   $(BIN)/gpuaudit status --collector $(LISTEN) --tls-dir var/pki/readers/ops"; \
	 $(BIN)/gpuaudit collector --listen $(LISTEN) --db $(DB) --tls-dir var/pki/collector & cpid=$$!; \
	 trap 'kill $$cpid 2>/dev/null; wait $$cpid 2>/dev/null' EXIT INT TERM; \
	 $(BIN)/gpuaudit agent --collector $(LISTEN) --node $$node --tls-dir var/pki/nodes/$$node --spool-dir var/spool

lint: install
	$(BIN)/ruff check agent collector tests bench proto/gpuaudit/jsonform.py proto/gpuaudit/tls.py proto/gpuaudit/integrity.py
	$(BIN)/mypy agent collector proto/gpuaudit/jsonform.py proto/gpuaudit/tls.py proto/gpuaudit/integrity.py

# The whole suite: lint, types, unit, then root/eBPF integration tests.
# With CI=true a missing capability (root, bcc, tracefs) fails instead of skipping.
test: install lint
	./tests/host-setup.sh
	$(BIN)/python -m pytest -q tests

unit: install
	$(BIN)/python -m pytest -q tests/unit

proto: install
	PYTHON=$(BIN)/python proto/gen.sh

clean:
	rm -rf $(VENV) var build *.egg-info
