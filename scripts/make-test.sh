#!/usr/bin/env bash
# make test's tiers, in two lanes (issue 11; BENCHMARKS.md, "Two lanes").
#
# Lane 1, at the caller's priority, in the background from the start:
#   test/vm's first phase (LANE1 below): TestDefaultRecipe, the real
#   OpenClaw gateway under TCG, the one load-sensitive test (its doc
#   comment), and beside it, one at a time, the tests of what an
#   interrupted build or verify leaves on the host.
# Lane 2, under SCHED_IDLE: vet, the race tests, the unit tier, the integration
#   tier, then every other VM test (two at a time, longest first).
#
# Everything but lane 1 is CPU-bound throughput work; lane 1 leaves a
# quarter to a third of the two cores idle (a Node process in one guest).
# Under SCHED_IDLE lane 2 takes only what lane 1 leaves, and a waking lane
# 1 thread preempts it at once: the idle goes to the unit and integration
# tiers instead of waiting. Measured (BENCHMARKS.md, "Two lanes"):
# TestDefaultRecipe's two-vCPU guest beside a compile loop at nice 19
# burned 928 s of CPU and its gateway answered 7m32s after power-on;
# beside the same loop under SCHED_IDLE 717 s and 5m40s; alone 622 s and
# 3m21s (a vCPU thread that waits behind a nice-19 task for its slice
# leaves the other vCPU spinning). Both lanes are in make's session (no
# setsid: one scheduler autogroup), so the policy is what divides the
# cores.
#
# Each tier's go test -json goes through testreport (internal/testreport):
# RUN and PASS/FAIL lines, a failing or hung test's last lines, panics and
# timeouts in full, the per-test table; the whole log in
# $BAKE_TEST_CACHE/TIER-test.log, the events in TIER.json (.ci/run prints
# every tier's table again). Lane 1's console output is kept in
# $BAKE_TEST_CACHE/vm1-console.log and printed when lane 2 is done.
# Exit status: the first failing tier's (lane 2's order, then lane 1).
set -uo pipefail
cd "$(dirname "$0")/.."

cache=${BAKE_TEST_CACHE:-/var/cache/bake-test}
export BAKE_TEST_CACHE=$cache BAKE_TEST_STRICT=1
mkdir -p "$cache/bin"
tr=$cache/bin/testreport
go build -o "$tr.$$" ./internal/testreport/cmd/testreport && mv -f "$tr.$$" "$tr" || exit

# test/vm's first phase: the tests that call firstPhase(t). Each test's
# firstPhase/parallel fails when it runs in the wrong lane
# (BAKE_VMTEST_LANE), so this list cannot drift from the code unnoticed.
LANE1='^(TestDefaultRecipe|TestInterruptedBuildLeavesNothing|TestVerifyInterrupted|TestVerifyKilled)$'
# The VM tests must fit in their BENCHMARKS.md budget (warnings only).
budget=(-budget BENCHMARKS.md -budget-packages test/vm,vm -budget-min 10s)

# A VM go test's -timeout. Under CI (.ci/run sets BAKE_CI_START) go test's
# own timeout, whose panic names the running tests, must fire before CI
# kills the job at 90 minutes: 84 minutes after CI started, at least 5
# minutes; else 85m. (-timeout is per test binary.)
vm_timeout() {
	if [ -z "${BAKE_CI_START:-}" ]; then
		echo 85m
		return
	fi
	local s=$((84 * 60 - ($(date +%s) - BAKE_CI_START)))
	[ "$s" -ge 300 ] || s=300
	echo "${s}s"
}

# tier NAME ARGS...: go test -json ARGS through testreport; go test's
# status, else testreport's (a hung test, or no test at all, fails the
# tier even if go test said 0).
tier() {
	local name=$1
	shift
	local extra=()
	case $name in vm*) extra=("${budget[@]}") ;; esac
	echo "== $name tier: go test $*"
	go test -json -count=1 "$@" 2>&1 |
		"$tr" -quick 1s -json "$cache/$name.json" -log "$cache/$name-test.log" "${extra[@]}"
	local st=("${PIPESTATUS[@]}")
	[ "${st[0]}" = 0 ] || return "${st[0]}"
	return "${st[1]}"
}

# Lane 1 in a process group of its own (set -m), with the default signal
# dispositions (without job control bash would start it with SIGINT
# ignored), in make's session. Its status goes to a file.
lane1_status=$cache/vm1.status
rm -f "$lane1_status"
t1=$(vm_timeout)
set -m
(
	BAKE_VMTEST_LANE=1 tier vm1 -tags vm -timeout "$t1" -run "$LANE1" -parallel 64 ./test/vm/ \
		</dev/null >"$cache/vm1-console.log" 2>&1
	echo $? >"$lane1_status"
) &
lane1=$!
set +m
echo "== lane 1 (pid $lane1): test/vm's first phase, $LANE1, in the background; its output at the end"

# Stopping lane 1: SIGINT to its process group (a Ctrl-C: bake and the
# tests clean up), SIGTERM after 20 s (an ancestor may have started us with
# SIGINT ignored, which no child can undo), SIGKILL after 20 s more (QEMU
# and dnsmasq die with their parents: Pdeathsig).
stop_lane1() {
	kill -0 "$lane1" 2>/dev/null || return 0
	echo "== stopping lane 1 (process group $lane1)"
	local sig i
	for sig in INT TERM KILL; do
		kill -"$sig" -- "-$lane1" 2>/dev/null
		for ((i = 0; i < 20; i++)); do
			kill -0 "$lane1" 2>/dev/null || break 2
			sleep 1
		done
	done
	wait "$lane1" 2>/dev/null
}
trap 'stop_lane1; exit 130' INT
trap 'stop_lane1; exit 143' TERM
trap 'stop_lane1' EXIT

# Lane 2: this shell and everything it starts from here on (chrt is
# util-linux's; nice 19 where SCHED_IDLE is refused).
chrt --idle -p 0 $$ >/dev/null 2>&1 || renice -n 19 -p $$ >/dev/null

lane2() {
	go vet ./... &&
		go vet -tags integration ./... &&
		go vet -tags vm ./... || return
	# Children with a parent-death signal survive other goroutines'
	# namespace switches (issue 11): under the race detector too.
	go test -race -count=1 -run 'TestStartPinned' ./internal/execx/ &&
		go test -race -count=1 -tags vm -run 'TestLinkChildrenSurviveNetnsSwitches' ./vm/ || return
	tier unit -timeout 10m ./... || return
	tier integration -tags integration -timeout 30m -p 2 ./... || return
	# -p 2: package vm's few short VM tests and every package's unit tests
	# run beside test/vm.
	BAKE_VMTEST_LANE=2 tier vm -tags vm -timeout "$(vm_timeout)" -p 2 -parallel 64 -skip "$LANE1" ./...
}
lane2
status2=$?
echo "== lane 2 done, exit status $status2; waiting for lane 1"
wait "$lane1"
trap - EXIT
echo "== lane 1's output ($cache/vm1-console.log):"
cat "$cache/vm1-console.log"
status1=$(cat "$lane1_status" 2>/dev/null || echo 1)
echo "== lane 1 exit status $status1, lane 2 exit status $status2"
[ "$status2" = 0 ] || exit "$status2"
exit "$status1"
