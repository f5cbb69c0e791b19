#!/usr/bin/env bash
# Profiles subjects on the realistic workload and prints the top 15
# cumulative entries by CPU and by allocated bytes of each, from the
# repository root:
#
#   bench/profile-realistic.sh [duration] [rounds] [subjects]
#
# defaults: 5s, 3 rounds, tiercache,tiercache+L1. The baseline runs too (as
# in every run) but is not profiled. Profiles go to bench/results/profiles
# (not checked in): one CPU profile and a before/after pair of heap profiles
# per subject and round, covering the measured window only. The CPU tops
# merge the rounds; the allocation tops merge each round's difference
# (after minus before). With SKIP_RUN=1 it summarizes the profiles of the
# last run again instead of making new ones.
set -euo pipefail
dur=${1:-5s}
rounds=${2:-3}
subjects=${3:-tiercache,tiercache+L1}
dir=bench/results/profiles
cmd=(go run ./bench/cmd/sidebyside -workloads realistic -subjects "$subjects" -profile "$subjects"
	-profile-dir "$dir" -realistic-duration "$dur" -realistic-rounds "$rounds" -out "$dir" -name run)
echo "# ${cmd[*]}"
if [ "${SKIP_RUN:-}" != 1 ]; then
	rm -rf "$dir"
	mkdir -p "$dir"
	"${cmd[@]}" >/dev/null 2>"$dir/run.log"
fi
# The run's date, machine and tiercache commit ("+dirty": uncommitted
# changes anywhere in the tree, bench/ included).
grep '^| date \|^| machine \|^| tiercache commit \|^| Go \|^| Redis ' "$dir/run.md"
echo
# The realistic table of the profiled run (profiling costs the profiled
# subjects a little), and its request breakdown.
sed -n '/^| subject | ops\/s/,/^$/p' "$dir/run.md"
sed -n '/^Redis requests per operation/,$p' "$dir/run.md"
echo
IFS=, read -ra subs <<<"$subjects"
for s in "${subs[@]}"; do
	slug=$(echo "$s" | tr 'A-Z' 'a-z' | sed 's/[^a-z0-9]/-/g')
	echo "## $s: CPU, top 15 by cumulative time, rounds merged"
	echo "# go tool pprof -top -cum -nodecount=15 $dir/realistic-$slug-r*.cpu.pprof"
	go tool pprof -top -cum -nodecount=15 "$dir"/realistic-"$slug"-r*.cpu.pprof 2>/dev/null | grep -v '^File:\|^Build ID:\|^Time:'
	echo
	deltas=()
	for b in "$dir"/realistic-"$slug"-r*.allocs0.pprof; do
		d=${b%.allocs0.pprof}.allocs.delta.pb.gz
		go tool pprof -proto -base "$b" "${b%.allocs0.pprof}.allocs1.pprof" >"$d" 2>/dev/null
		deltas+=("$d")
	done
	echo "## $s: allocations, top 15 by cumulative alloc_space, rounds merged"
	echo "# per round: go tool pprof -proto -base <r>.allocs0.pprof <r>.allocs1.pprof > <r>.allocs.delta.pb.gz"
	echo "# go tool pprof -top -cum -nodecount=15 -sample_index=alloc_space $dir/realistic-$slug-r*.allocs.delta.pb.gz"
	go tool pprof -top -cum -nodecount=15 -sample_index=alloc_space "${deltas[@]}" 2>/dev/null | grep -v '^File:\|^Build ID:\|^Time:'
	echo
done
