# Switchboard: `make run` and `make test` do all set-up on a fresh Debian machine.
# System packages are installed only when missing (apt-get needs root; sudo is used if present).

SYSTEM_PACKAGES := libssl-dev liblmdb-dev pkg-config
# The terminal client's end-to-end tests drive two sbchat sessions in tmux, and one in a real xterm under
# Xvfb with xdotool's mouse (screenshot with ImageMagick's import, DejaVu Sans Mono for the symbols); the
# service unit is checked with systemd-analyze verify (package systemd); the cluster tests start a
# three-server NATS cluster with JetStream (nats-server 2.9).
TEST_PACKAGES := tmux xvfb xterm xdotool imagemagick fonts-dejavu-core systemd nats-server valgrind
SWIFT ?= swift
DATA ?= ./data
LISTEN ?= 127.0.0.1:7878
RUN_FLAGS ?=

.PHONY: bench-instructions install all deps test-deps install-packages build release run test soak cert clean bench bench-deps fuzz fuzz-ci fuzz-build

all: build

deps:
	@$(MAKE) --no-print-directory install-packages PACKAGES="$(SYSTEM_PACKAGES)"

test-deps:
	@$(MAKE) --no-print-directory install-packages PACKAGES="$(SYSTEM_PACKAGES) $(TEST_PACKAGES)"

install-packages:
	@missing=""; for p in $(PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

build: deps
	$(SWIFT) build

release: deps
	$(SWIFT) build -c release

# Starts the server on its defaults: LMDB under ./data, loopback port 7878, TLS with a development
# certificate (created under ./data/tls on first run).
run: release
	@[ -f $(DATA)/tls/server.pem ] || ./.build/release/switchboard cert init --data $(DATA)
	./.build/release/switchboard serve --listen $(LISTEN) --data $(DATA) $(RUN_FLAGS)

cert: release
	./.build/release/switchboard cert init --data $(DATA)

# `make install` (PREFIX=/usr/local, DESTDIR= for staging): the three binaries in BINDIR, the systemd unit
# (`switchboard service unit`) in UNITDIR, a sysusers.d entry for the dedicated user, and the example config
# in SYSCONFDIR/switchboard (switchboard.toml only if there is none yet; switchboard.toml.example always).
# BIN_DIR= takes already built binaries (e.g. .build/debug) instead of building a release.
PREFIX ?= /usr/local
DESTDIR ?=
BINDIR ?= $(PREFIX)/bin
SYSCONFDIR ?= $(if $(filter /usr,$(PREFIX)),/etc,$(PREFIX)/etc)
UNITDIR ?= $(PREFIX)/lib/systemd/system
SYSUSERSDIR ?= $(PREFIX)/lib/sysusers.d
STATEDIR ?= /var/lib/switchboard
SERVICE_USER ?= switchboard
INSTALL_LISTEN ?= 0.0.0.0:7878
BIN_DIR ?= .build/release
CONFIG_DIR = $(DESTDIR)$(SYSCONFDIR)/switchboard

install: $(if $(filter .build/release,$(BIN_DIR)),release)
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSUSERSDIR) $(CONFIG_DIR)
	install -m 0755 $(BIN_DIR)/switchboard $(BIN_DIR)/sbchat $(BIN_DIR)/sbload $(DESTDIR)$(BINDIR)/
	$(BIN_DIR)/switchboard config print --no-origin --data $(STATEDIR) --listen $(INSTALL_LISTEN) > $(CONFIG_DIR)/switchboard.toml.example
	chmod 0644 $(CONFIG_DIR)/switchboard.toml.example
	[ -e $(CONFIG_DIR)/switchboard.toml ] || install -m 0644 $(CONFIG_DIR)/switchboard.toml.example $(CONFIG_DIR)/switchboard.toml
	$(BIN_DIR)/switchboard service unit --binary $(BINDIR)/switchboard --user $(SERVICE_USER) \
	  --config $(CONFIG_DIR)/switchboard.toml --exec-config $(SYSCONFDIR)/switchboard/switchboard.toml \
	  > $(DESTDIR)$(UNITDIR)/switchboard.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/switchboard.service
	printf 'u %s - "Switchboard chat relay" %s\n' $(SERVICE_USER) $(STATEDIR) > $(DESTDIR)$(SYSUSERSDIR)/switchboard.conf
	@echo "installed; next: systemd-sysusers, switchboard cert init --data $(STATEDIR) (or tls-cert/tls-key in the config),"
	@echo "  systemctl daemon-reload && systemctl enable --now switchboard"

# Dictionary order is fixed so a failing simulation seed replays exactly (see ServerCoreSimulation.swift).
test: test-deps
	SWIFT_DETERMINISTIC_HASHING=1 $(SWIFT) test
	@$(MAKE) --no-print-directory fuzz-ci
	@$(MAKE) --no-print-directory bench-instructions SLACK=10

# Instructions per relayed message in the server core, counted by callgrind (deterministic, unlike wall
# time), against Benchmarks/Thresholds/instructions-per-message.json; `make test` allows 10 % slack.
SLACK ?= 0
bench-instructions:
	perf/instructions-per-message.sh --slack $(SLACK)

# More seeds of the deterministic simulations (server core and auth gate): make soak SEEDS=2000.
SEEDS ?= 2000
soak: deps
	SWIFT_DETERMINISTIC_HASHING=1 SB_SOAK_SEEDS=$(SEEDS) $(SWIFT) test --filter 'ServerCoreSimulation|AuthGateTests'

# Coverage-guided fuzzing of the wire codec and the server core with libFuzzer (Tests/Fuzz, README "Fuzzing"). The targets are
# built by swiftc alone into $(FUZZ_BUILD), one fuzzer process at a time. `make fuzz` runs each target for
# FUZZ_SECONDS and keeps new inputs in $(FUZZ_BUILD)/corpus (the committed corpus is only read);
# `make fuzz-ci` runs each for 30 s from the committed corpus alone and fails on any crash, timeout or OOM.
FUZZ_SECONDS ?= 300
FUZZ_CI_SECONDS ?= 30
FUZZ_TARGETS := decoder roundtrip core
export FUZZ_BUILD ?= $(CURDIR)/.build-fuzz

fuzz-build:
	Tests/Fuzz/build.sh $(FUZZ_TARGETS)

fuzz: fuzz-build
	@status=0; for t in $(FUZZ_TARGETS); do Tests/Fuzz/run.sh $$t $(FUZZ_SECONDS) || status=1; done; exit $$status

fuzz-ci: fuzz-build
	@status=0; for t in $(FUZZ_TARGETS); do Tests/Fuzz/run.sh --ci $$t $(FUZZ_CI_SECONDS) || status=1; done; exit $$status

# The peers and tools of the performance comparison (Redis, Mosquitto, NATS, gnuplot for the sweep's PNG,
# perf for perf/flamegraph.sh and --perf-stat); installed only when missing.
BENCH_PACKAGES := redis-server mosquitto nats-server gnuplot-nox linux-perf

bench-deps:
	@$(MAKE) --no-print-directory install-packages PACKAGES="$(BENCH_PACKAGES)"

# The performance comparison of perf/README.md (server pinned to CPU 0, sbload to CPU 1, loopback only):
# relay throughput and latency, plaintext then TLS (medians of 3 runs); the same scenario against the peers
# (perf/run-peers.sh, 3 runs each); the open-loop rate sweep for sb, sb-tls, redis, mosquitto QoS 0 and nats
# (1 run per rate, each target until it saturates); wake-ups, syscalls and CPU per message beside Redis at
# 20k and 2k msg/s (perf/wakeups.sh, ~1 min each); then the micro-benchmarks.
# Estimate on the 2-vCPU machine of perf/README.md, release builds already done: relay pair ~1 min, peers
# ~3.5 min (6 targets x 3 runs x ~11 s), sweep ~4 min (~50 points x ~4.5 s), micro-benchmarks ~3 min:
# about 14 minutes in all (first builds of the release and Benchmarks packages come on top).
bench: deps bench-deps
	perf/run-relay.sh
	perf/run-relay.sh --tls
	perf/run-peers.sh --runs 3
	perf/sweep.sh --targets sb,sb-tls,redis,mqtt0,nats
	perf/wakeups.sh
	perf/wakeups.sh --rate 2000
	cd Benchmarks && swift package --allow-writing-to-package-directory benchmark

clean:
	rm -rf .build
