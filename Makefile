# Pelagos: containerd shim v2 with an in-process container core.
#
#   make demo    install deps, build, run "echo hello from pelagos" through a private containerd
#   make test    install deps, build, run every test (containerd 1.6), then the shim tests on 2.1
#   make test-v2 the integration suites in a pure cgroup v2 VM (qemu)
#   make test-long the reliability suites (tests/rel_*) at the full sizes of RELIABILITY.md
#   make soak    kubelet-like churn through CRI for SOAK_MINUTES (default 60), see RELIABILITY.md
#   make fuzz    every fuzz target for FUZZ_SECONDS (default 15) each, see RELIABILITY.md
#   make lint    rustfmt check and clippy with warnings as errors
#   make install install the shim (release build) into $(PREFIX)/bin
#   make bench   pelagos vs runc's shim through ctr and through CRI (latency, exec, memory,
#                throughput), see BENCHMARKS.md
#   make fresh-root  set-up, build, demo and test in a clean debootstrap bookworm root (CI does)

CARGO ?= cargo
PREFIX ?= /usr/local
SHIM := containerd-shim-pelagos-v2
# Every tests/shim_*.rs and the checkpoint suite (about 7 s), as cargo --test arguments.
SHIM_TESTS := $(foreach t,$(basename $(notdir $(wildcard tests/shim_*.rs))),--test $(t)) --test criu_checkpoint
# The shim tests start one containerd per test; two at a time suits the 2-core machines.
TEST_THREADS ?= 2

.PHONY: all setup build demo test test-shim-2.1 test-v2 test-long soak fuzz lint install bench fresh-root

all: build

setup:
	@bash scripts/install-deps.sh

build:
	$(CARGO) build --workspace

demo: setup build
	@bash scripts/demo.sh

# Both passes run even when the first fails, so one run reports every failure.
test: setup build
	@rc=0; \
	$(CARGO) test --workspace --no-fail-fast -- --test-threads=$(TEST_THREADS) || rc=1; \
	$(TEST_SHIM_21) || rc=1; \
	exit $$rc

test-shim-2.1:
	$(TEST_SHIM_21)

TEST_SHIM_21 = bash scripts/fetch-containerd.sh 2.1 >/dev/null && \
	PELAGOS_CONTAINERD=2.1 $(CARGO) test -p pelagos --no-fail-fast $(SHIM_TESTS) -- --test-threads=$(TEST_THREADS)

REL_TESTS := $(foreach t,$(basename $(notdir $(wildcard tests/rel_*.rs))),--test $(t))

# The reliability suites with PELAGOS_LONG=1: the issue's full sizes (1000 cycles, 500 execs
# under attack, 50 MiB configs...); about 10 minutes.
test-long: setup build
	PELAGOS_LONG=1 $(CARGO) test -p pelagos --no-fail-fast $(REL_TESTS) -- --test-threads=$(TEST_THREADS)

SOAK_MINUTES ?= 60
# tests/rel_soak.rs: pods churned by parallel workers, containerd restarted every 40 s.
soak: setup build
	PELAGOS_SOAK_SECS=$$(( $(SOAK_MINUTES) * 60 )) $(CARGO) test -p pelagos --test rel_soak -- --ignored --nocapture

FUZZ_SECONDS ?= 15
fuzz:
	@bash scripts/fuzz.sh $(FUZZ_SECONDS)

# The integration suites in a qemu VM that is a pure cgroup v2 host (scripts/vm/README.md).
test-v2: setup
	@bash scripts/vm/run-tests.sh $(V2_SUITES)

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# The release shim is linked statically (scripts/build-release.sh says why).
install:
	install -D -m 0755 "$$(bash scripts/build-release.sh)" $(DESTDIR)$(PREFIX)/bin/$(SHIM)

# Pelagos beside runc's shim through one private containerd: through ctr (a table and
# bench/results.json), then through CRI on containerd 1.6 and 2.1 (bench/cri-results.json).
bench: setup
	@bash scripts/bench.sh $(BENCH_ARGS)
	@BENCH_NO_BUILD=1 bash scripts/bench-cri.sh $(CRI_BENCH_ARGS)

# scripts/install-deps.sh, the build, `make demo` and `make test` in a clean bookworm root that
# has only debootstrap's minbase and the Rust toolchain: what a fresh machine needs is in the
# set-up. FRESH_STEPS picks steps (deps build demo test test-v2 shell).
fresh-root:
	@bash scripts/fresh-root.sh $(FRESH_STEPS)
