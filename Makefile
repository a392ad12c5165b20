# Set-up and entry points. `make demo` and `make test` each install everything they need on a
# fresh Debian 12 machine (run as root) and are safe to run again: every step checks first.

PYTHON   ?= python3
VENV     ?= .venv
PY       := $(VENV)/bin/python
# Everything the build, the daemon, the lab bench, the tests and `make demo` run; the benchmarks'
# own extras are in BENCH_APT_PKGS. tests/unit/test_programs.py checks both against the code.
APT_PKGS := python3 python3-venv python3-dev gcc make libc6-dev libxdp-dev libbpf-dev clang llvm pkg-config nftables iproute2 ethtool netbase procps keepalived bird2
BENCH_APT_PKGS := conntrack
PYTEST_ARGS ?=

.PHONY: all deps bench-deps venv build man test demo demo-cluster demo-sched bench bench-sched bench-peers clean

all: build

# apt-get only what is missing, so a second run neither needs the network nor takes time.
deps: PKGS = $(APT_PKGS)
bench-deps: PKGS = $(BENCH_APT_PKGS)
deps bench-deps:
	@missing=""; for p in $(PKGS); do \
	    dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	    echo "apt-get install:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

# The venv is rebuilt only when the project's declared dependencies change.
$(VENV)/.installed: pyproject.toml setup.py | deps
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip "setuptools>=77" wheel "cython>=3.0"
	$(PY) -m pip install -q --no-build-isolation -e '.[test]'
	@touch $@

venv: $(VENV)/.installed

# Cython and setuptools skip the compile when nothing changed.
build: venv
	$(PY) setup.py -q build_ext --inplace
	$(PY) -m fastlvs.manpages man

# fastlvs(8) and fastlvs-admin(8), made from the commands' own option declarations
# (read them with `man -l man/fastlvs.8`); `make build` makes them too.
man: venv
	$(PY) -m fastlvs.manpages man

test: build
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The live director: namespaces, fastlvs --mode dr over AF_XDP, real HTTP/UDP clients (root).
demo: build
	$(PY) -m fastlvs.lab.demo_live

# Scale-out behind BGP/ECMP: a router running BIRD 2 with ECMP, three directors each with
# fastlvs + BIRD, DR real servers and clients from many addresses; the spread over the
# directors and what the loss of one does (root).
demo-cluster: build
	$(PY) -m fastlvs.lab.cluster

# The scheduler table: every IPVS scheduler over four weighted servers, no network needed.
demo-sched: build
	$(PY) -m fastlvs demo

bench: build
	$(PY) -m pytest benchmarks -q --benchmark-only

# The README's scheduler table: decisions/s of every scheduler at 4, 64 and 1024 servers.
bench-sched: build
	@mkdir -p .benchmarks
	$(PY) -m pytest benchmarks/test_bench_schedulers.py -q --benchmark-only \
	    --benchmark-json=.benchmarks/schedulers.json --benchmark-min-rounds=20
	$(PY) benchmarks/report_schedulers.py .benchmarks/schedulers.json

# fastlvs against its peers (nftables DNAT, kernel forwarding, an XDP balancer, bare C forwarders)
# in namespaces on this machine: benchmarks/results/peers.json and peers.png (README-peers.md).
bench-peers: build bench-deps
	@$(PY) -c "import matplotlib" 2>/dev/null || $(PY) -m pip install -q "matplotlib"
	$(PY) benchmarks/peers.py

clean:
	rm -rf build $(VENV) src/*.egg-info src/fastlvs/engine/_core.c src/fastlvs/engine/_testing.c src/fastlvs/engine/dataplane/contract.pxi src/fastlvs/engine/_core*.so src/fastlvs/engine/_testing*.so man
