#!/usr/bin/env bash
# Where the CPU goes in one of our runs against a loopback registry holding
# the benchmark image (bench/make-images.sh), with perf:
#
#   bench/profile.sh                 # registry -> tar://
#   TASK=search bench/profile.sh     # tar | compressed | expand | oci | search
#   OURS=/path/to/occystrap bench/profile.sh
#
# Prints the wall and CPU time of the run, then a system-wide profile (our
# process, the registry and the kernel, as they share the 2 cores) grouped
# into what the work is: sha256, inflate, kernel copies, the registry, ...,
# and the top symbols. Writes a flame graph of our process to
# $OUT/flame-$TASK.svg when inferno is installed (`cargo install inferno`),
# else the folded stacks to $OUT/stacks-$TASK.folded. Not part of the tests.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
task=${TASK:-tar}; port=${PORT:-5131}; reg=127.0.0.1:$port
W=${BENCH_DIR:-/dev/shm/occy-profile}; OUT=${OUT:-$W}
img=bench/debian:layered; src="registry://$reg/$img"
for p in perf docker-registry skopeo umoci; do
  command -v "$p" >/dev/null || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q linux-perf docker-registry skopeo umoci </dev/null; break; }
done
if [[ -n ${OURS:-} ]]; then ours=$(readlink -f "$OURS")
else (cd "$repo" && cargo build --release -q); ours=${CARGO_TARGET_DIR:-$repo/target}/release/occystrap; fi
mkdir -p "$W/out" "$OUT"
trap '"$repo/bench/registry.sh" stop "$W/reg" "$port" >/dev/null 2>&1 || true' EXIT
"$repo/bench/registry.sh" start "$W/reg" "$port" >/dev/null
"$repo/bench/make-images.sh" "$port" >/dev/null
case $task in
  tar) args=(process "$src" tar://image.tar) ;;
  compressed) args=(process "$src" 'tar://image.tar?layers=compressed') ;;
  expand) args=(process "$src" 'dir://d?expand=true') ;;
  oci) args=(process "$src" oci://bundle) ;;
  search) args=(search "$src" '*/f01[0-1].txt') ;;
  *) echo "TASK: tar, compressed, expand, oci or search" >&2; exit 2 ;;
esac
clean() { cd "$W" && rm -rf "$W/out" && mkdir -p "$W/out"; }
run() { cd "$W/out" && "$ours" --insecure "${args[@]}" >/dev/null 2>&1; }
clean; run  # warms the registry's page cache
echo "occystrap ${args[*]}"
clean
/usr/bin/time -f "wall %e s, user %U s, sys %S s, peak RSS %M KB" bash -c "$(declare -f run); $(declare -p W ours args); run"
clean

# System-wide, no call graphs: what each of the three parties costs.
perf record -q -a -F 1999 -o "$W/all.data" -- bash -c "$(declare -f run); $(declare -p W ours args); run" 2>/dev/null
perf report -q -i "$W/all.data" --no-children --sort comm,dso,symbol --stdio 2>/dev/null \
  | awk 'NF>=4 && $1 ~ /%$/' > "$W/flat.txt"
echo
echo "| share of all CPU samples (2 cores, the run's duration) | % |"
echo "|---|---|"
awk '
  { p = $1; sub(/%/, "", p); comm = $2; sym = ""; for (i = 5; i <= NF; i++) sym = sym " " $i
    if (comm == "docker-registry") k = "the registry (Go: serving, TCP)"
    else if (comm == "swapper") k = "idle"
    else if (comm !~ /occystrap|tokio|layer|verify|relay/ && comm != "bash") k = "other processes"
    else if (sym ~ /sha256|Sha256|compress256|sha2::/) k = "sha256 (blob and tar)"
    else if (sym ~ /inflate|zlib_rs|adler|crc32|Inflate|decompress/) k = "inflate"
    else if (sym ~ /memcpy|memmove|copy_user|rep_movs|copy_page|copy_to_iter|copy_from_iter|copy_folio/) k = "memory copies (user and kernel: sockets, page cache)"
    else if ($3 ~ /kernel/) k = "kernel: syscalls, sockets, page cache, files"
    else k = "occystrap: the rest (tar, channels, HTTP)"
    s[k] += p }
  END { for (k in s) printf "| %s | %.1f |\n", k, s[k] }' "$W/flat.txt" | sort -t'|' -k3 -rn
echo
echo "Top symbols (comm, dso, symbol):"
head -15 "$W/flat.txt"

# Our process only, with call graphs, for the flame graph.
clean; cd "$W/out"
perf record -q -F 999 --call-graph dwarf,16384 -o "$W/ours.data" -- "$ours" --insecure "${args[@]}" >/dev/null 2>&1 || true
perf script -i "$W/ours.data" 2>/dev/null > "$W/ours.perf"
if command -v inferno-collapse-perf >/dev/null && command -v inferno-flamegraph >/dev/null; then
  inferno-collapse-perf < "$W/ours.perf" | inferno-flamegraph > "$OUT/flame-$task.svg"
  echo; echo "flame graph: $OUT/flame-$task.svg"
else
  # Folded stacks (frame;frame;... count), which any flame-graph tool reads.
  awk '/^[^ \t]/ { if (st != "") f[st]++; st = ""; next }
       /^[ \t]+[0-9a-f]+ / { s = $2; sub(/\+0x[0-9a-f]+$/, "", s); st = (st == "" ? s : s ";" st); next }
       END { if (st != "") f[st]++; for (k in f) print k, f[k] }' "$W/ours.perf" > "$OUT/stacks-$task.folded"
  echo; echo "folded stacks: $OUT/stacks-$task.folded (cargo install inferno for an SVG)"
fi
