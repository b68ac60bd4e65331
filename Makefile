# bake: the two commands a newcomer needs are `make image` and `make test`.
SHELL := /bin/bash
export GOFLAGS ?= -mod=mod
VERSION := $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/bakeimg/bake/builder.Version=$(VERSION)
RECIPE ?= recipes/openclaw.yaml
OUT ?= out
# Expensive test fixtures (bootstrapped trees, cloud-image fixtures, the
# tailscale build, npm downloads) live here, keyed by their inputs, outside the
# checkout so that CI's fresh clone reuses them.
export BAKE_TEST_CACHE ?= /var/cache/bake-test

.PHONY: all deps bake image test unit integration vm bench fuzz clean

all: bake

deps:
	@bash scripts/install-deps.sh

bake:
	go build -ldflags '$(LDFLAGS)' -o bake ./cmd/bake

# First command: install what is missing, build bake, bake the default recipe.
image: deps bake
	RECIPE=$(RECIPE) OUT=$(OUT) bash scripts/make-image.sh

# Each test tier's `go test -json` goes through testreport
# (internal/testreport): it prints RUN and PASS/FAIL/SKIP lines, a failing
# test's last lines, panics, timeouts and build errors in full, hung tests,
# and a per-test duration table; the whole log is $(BAKE_TEST_CACHE)/TIER-test.log,
# the event stream TIER.json (.ci/run re-prints every tier's table from it).
# A tier fails with go test's status, or else testreport's (a hung test, or
# no test at all, fails the tier even if go test said 0).
TESTREPORT := $(BAKE_TEST_CACHE)/bin/testreport
TIER_STATUS := st=("$${PIPESTATUS[@]}"); [ "$${st[0]}" = 0 ] || exit "$${st[0]}"; exit "$${st[1]}"
# The VM tier's tests must fit in their BENCHMARKS.md budget (warnings only).
VM_BUDGET := -budget BENCHMARKS.md -budget-packages test/vm,vm -budget-min 10s
# The VM tier's -timeout. Under CI (.ci/run sets BAKE_CI_START) go test's own
# timeout, whose panic names the running tests, must fire before CI kills the
# job at 90 minutes: 84 minutes after CI started, at least 5 minutes; else 85m.
# (-timeout is per test binary: a package that runs after a slow one gets the
# whole limit again.)
VM_TIMEOUT := timeout=85m; if [ -n "$${BAKE_CI_START:-}" ]; then s=$$(( 84*60 - ($$(date +%s) - BAKE_CI_START) )); [ "$$s" -ge 300 ] || s=300; timeout=$${s}s; fi

# Second command: every test tier. Unit tests need nothing; integration and VM
# tests need root and the tools deps installs, and start their own servers.
# Under make test a unit test whose tool is missing fails (internal/testenv).
test: export BAKE_TEST_STRICT := 1
test: deps bake
	go vet ./...
	go vet -tags integration ./...
	go vet -tags vm ./...
	mkdir -p $(BAKE_TEST_CACHE)/bin
	go build -o $(TESTREPORT).$$$$ ./internal/testreport/cmd/testreport && mv -f $(TESTREPORT).$$$$ $(TESTREPORT)
	# Children with a parent-death signal survive other goroutines' namespace
	# switches (issue 11): under the race detector too.
	go test -race -count=1 -run 'TestStartPinned' ./internal/execx/
	go test -race -count=1 -tags vm -run 'TestLinkChildrenSurviveNetnsSwitches' ./vm/
	go test -json -count=1 -timeout 10m ./... 2>&1 | $(TESTREPORT) -quick 1s -json $(BAKE_TEST_CACHE)/unit.json -log $(BAKE_TEST_CACHE)/unit-test.log; $(TIER_STATUS)
	go test -json -count=1 -tags integration -timeout 30m -p 2 ./... 2>&1 | $(TESTREPORT) -quick 1s -json $(BAKE_TEST_CACHE)/integration.json -log $(BAKE_TEST_CACHE)/integration-test.log; $(TIER_STATUS)
	# -p 2: package vm's few short VM tests and every package's unit tests
	# run beside test/vm's first phase (whose 2 cores are not all busy), not
	# alone after it.
	@$(VM_TIMEOUT); \
	echo "go test -json -count=1 -tags vm -timeout $$timeout -p 2 -parallel 64 ./... 2>&1 | $(TESTREPORT) -quick 1s -json $(BAKE_TEST_CACHE)/vm.json -log $(BAKE_TEST_CACHE)/vm-test.log $(VM_BUDGET)"; \
	go test -json -count=1 -tags vm -timeout $$timeout -p 2 -parallel 64 ./... 2>&1 | $(TESTREPORT) -quick 1s -json $(BAKE_TEST_CACHE)/vm.json -log $(BAKE_TEST_CACHE)/vm-test.log $(VM_BUDGET); $(TIER_STATUS)

unit:
	go test ./...

# Every native fuzz target (func FuzzXxx in a *_test.go), one go test -fuzz
# run each for FUZZTIME, under a memory cap per process (FUZZMEM MiB);
# fails on any failing input and prints where go saved it
# (PKG/testdata/fuzz/FuzzXxx/...). See scripts/fuzz.sh for FUZZPARALLEL,
# FUZZ (a name filter) and the rest; results in BENCHMARKS.md.
FUZZTIME ?= 60s
fuzz:
	FUZZTIME=$(FUZZTIME) bash scripts/fuzz.sh

bench: deps bake
	bash scripts/install-deps.sh --bench
	bash scripts/bench.sh
	bash scripts/bench-cloud.sh

clean:
	rm -f bake
