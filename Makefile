# dnsgo: two commands from a fresh Debian machine with python3.
#   make run    set up, then serve DNS on the embedded default (127.0.0.1:5353)
#   make test   set up (Debian test tools included, when root), then run every test
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEBS   := redis-server redis-sentinel bind9-dnsutils chromium iproute2
BENCH_DEBS := nsd unbound dnsperf

.PHONY: run test venv debs bench-debs bench check clean

$(VENV)/bin/python:
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv && $(PYTHON) -m venv $(VENV); \
	  else echo "need the python3-venv package" >&2; exit 1; fi; }

$(STAMP): $(VENV)/bin/python setup.py setup.cfg
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]' --config-settings editable_mode=compat
	$(PY) -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"
	touch $(STAMP)

venv: $(STAMP)

# Installs the Debian packages the tests drive (redis-server, dig, chromium, ip), when
# missing and when run as root; otherwise the tests that need them are skipped.
debs:
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else echo "not root: the tests that need$$missing will be skipped" >&2; fi; fi

bench-debs:
	@missing=""; for p in $(BENCH_DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; fi

run: venv
	$(VENV)/bin/twistd -n dnsgo

test: venv debs
	$(VENV)/bin/lint-imports --no-cache
	$(PY) tests/support/summarize.py $(VENV)/bin/trial -j2 tests

check: venv
	$(VENV)/bin/twistd dnsgo --check-config --config $(CONFIG)

bench: venv bench-debs
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) _trial_temp* twisted/plugins/dropin.cache
