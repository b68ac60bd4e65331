#!/usr/bin/env bash
# Runs every native Go fuzz target of the repository (make fuzz), one target
# per `go test` run (go test -fuzz takes one target of one package), each
# for FUZZTIME. The targets are found by grepping `func FuzzXxx(` in
# *_test.go files, so a new fuzzer is run without editing anything here.
#
#   FUZZTIME=60s          how long each target runs (go test -fuzztime: 1h, 30s, 1000x)
#   FUZZMINIMIZETIME=1s   time to minimise each new corpus entry or failing input (go's
#                         default, 60 s, stalls a short run: a worker that minimises does not fuzz)
#   FUZZPARALLEL=         fuzzing workers per target (go test -parallel; default GOMAXPROCS)
#   FUZZMEM=4096          memory cap per process in MiB (ulimit -v: go test -fuzz has
#                         none of its own; a worker over it dies and the run fails); 0 = none
#   FUZZ=REGEXP           run only the targets whose name matches (grep -E)
#   FUZZLOG=DIR           where each target's output is kept (default: a new temp dir)
#
# Fails if any target fails: a crash, a failed check, a hang or a worker out
# of memory. go test then saves the input in PKG/testdata/fuzz/FuzzXxx/; this
# script prints that path. Keep it (git add) as a regression seed: `go test`
# runs every file there as a unit test.
set -uo pipefail
cd "$(dirname "$0")/.."

FUZZTIME=${FUZZTIME:-60s}
FUZZMINIMIZETIME=${FUZZMINIMIZETIME:-1s}
FUZZPARALLEL=${FUZZPARALLEL:-}
FUZZMEM=${FUZZMEM:-4096}
FUZZ=${FUZZ:-}
FUZZLOG=${FUZZLOG:-$(mktemp -d /tmp/bake-fuzz.XXXXXX)}
mkdir -p "$FUZZLOG"

# PKGDIR NAME, one line per target, sorted. Files with a build constraint
# (//go:build integration, vm) are not built by a plain go test: skipped.
targets=()
while IFS= read -r line; do
	targets+=("$line")
done < <(
	grep -rlE --include='*_test.go' --exclude-dir='.[!.]*' --exclude-dir=testdata '^func Fuzz[A-Za-z0-9_]*\(' . |
		while IFS= read -r f; do
			if grep -q '^//go:build' "$f"; then
				echo "fuzz: skipping $f (it has a build constraint)" >&2
				continue
			fi
			sed -nE 's/^func (Fuzz[A-Za-z0-9_]*)\(.*/\1/p' "$f" | while IFS= read -r name; do
				printf '%s %s\n' "$(dirname "${f#./}")" "$name"
			done
		done | sort -u
)
if [ -n "$FUZZ" ]; then
	filtered=()
	for t in "${targets[@]}"; do
		if grep -qE -- "$FUZZ" <<<"${t#* }"; then filtered+=("$t"); fi
	done
	targets=("${filtered[@]}")
fi
if [ ${#targets[@]} -eq 0 ]; then
	echo "fuzz: no fuzz targets found" >&2
	exit 1
fi

echo "fuzz: ${#targets[@]} targets, $FUZZTIME each, GOMAXPROCS=${GOMAXPROCS:-all}, -parallel ${FUZZPARALLEL:-default}, memory cap ${FUZZMEM} MiB per process; logs in $FUZZLOG"
failed=0
summary=()
crashers=()
for t in "${targets[@]}"; do
	dir=${t% *}
	name=${t#* }
	log="$FUZZLOG/${dir//\//_}.$name.log"
	args=(test -run '^$' -fuzz "^${name}\$" -fuzztime "$FUZZTIME" -fuzzminimizetime "$FUZZMINIMIZETIME")
	if [ -n "$FUZZPARALLEL" ]; then args+=(-parallel "$FUZZPARALLEL"); fi
	args+=("./$dir/")
	echo "=== $name ($dir): go ${args[*]}"
	start=$(date +%s)
	(
		if [ "$FUZZMEM" != 0 ]; then ulimit -v $((FUZZMEM * 1024)) || exit 1; fi
		exec go "${args[@]}"
	) 2>&1 | tee "$log"
	st=${PIPESTATUS[0]}
	secs=$(($(date +%s) - start))
	# The last progress line: "fuzz: elapsed: 10s, execs: 123456 (12345/sec), new interesting: 3 (total: 20)".
	execs=$(grep -oE 'execs: [0-9]+' "$log" | tail -n 1 | awk '{print $2}')
	interesting=$(grep -oE 'new interesting: [0-9]+ \(total: [0-9]+\)' "$log" | tail -n 1 | sed -E 's/new interesting: ([0-9]+) \(total: ([0-9]+)\)/\1 new, \2 total/')
	result=ok
	if [ "$st" != 0 ]; then
		failed=1
		result=FAIL
		saved=$(sed -nE 's/.*Failing input written to (testdata\/fuzz\/[^ ]+).*/\1/p' "$log" | tail -n 1)
		if [ -n "$saved" ]; then
			crashers+=("$dir/$saved (go test -run '^$name/$(basename "$saved")\$' ./$dir/)")
			echo "fuzz: $name found a failing input: saved in $dir/$saved"
		else
			crashers+=("$name ($dir): failed with status $st and saved no input: see $log")
		fi
	fi
	summary+=("$(printf '%-20s %-22s %6ss %12s   %-22s %s' "$name" "$dir" "$secs" "${execs:-?}" "${interesting:--}" "$result")")
done

echo
printf '%-20s %-22s %7s %12s   %-22s %s\n' target package time execs "corpus (new, total)" result
for s in "${summary[@]}"; do echo "$s"; done
if [ "$failed" != 0 ]; then
	echo
	echo "fuzz: FAILED; failing inputs (keep them: go test runs them as regression tests):"
	for c in "${crashers[@]}"; do echo "  $c"; done
	exit 1
fi
echo "fuzz: every target ran $FUZZTIME without a failure (logs in $FUZZLOG)"
