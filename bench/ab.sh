#!/usr/bin/env bash
# A/B of two occystrap builds on local work only (no registry): expand, oci,
# search and normalize-timestamps of one gzip layer holding this machine's
# /usr/share, interleaved, medians of RUNS (3), wall seconds and peak RSS.
# For checking that a change to tar reading or extraction costs nothing.
#
#   bench/ab.sh OLD_BIN NEW_BIN      # e.g. a release build of main, and yours
#
# Work files go to BENCH_DIR (default /dev/shm/occy-ab, tmpfs).
set -euo pipefail
old=${1:?OLD_BIN}; new=${2:?NEW_BIN}; runs=${RUNS:-3}
W=${BENCH_DIR:-/dev/shm/occy-ab}; img=$W/img.tar
mkdir -p "$W"
if [[ ! -f $img ]]; then
  tar -C / --sort=name --mtime=2024-01-01 -cf "$W/layer.tar" usr/share 2>/dev/null || true
  python3 - "$W" <<'PY'
import gzip, hashlib, io, json, os, sys, tarfile
w = sys.argv[1]
h = hashlib.sha256()
with open(f"{w}/layer.tar", "rb") as f, open(f"{w}/layer.tar.gz", "wb") as raw, \
        gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) as g:
    for b in iter(lambda: f.read(1 << 20), b""):
        h.update(b); g.write(b)
cfg = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                  "rootfs": {"type": "layers", "diff_ids": ["sha256:" + h.hexdigest()]},
                  "history": [{"created_by": "usr/share"}]}).encode()
name = hashlib.sha256(cfg).hexdigest() + ".json"
man = json.dumps([{"Config": name, "RepoTags": ["ab:1"], "Layers": ["l0/layer.tar"]}]).encode()
with tarfile.open(f"{w}/img.tar", "w") as t:
    t.add(f"{w}/layer.tar.gz", arcname="l0/layer.tar")
    for n, b in ((name, cfg), ("manifest.json", man)):
        ti = tarfile.TarInfo(n); ti.size = len(b); t.addfile(ti, io.BytesIO(b))
PY
  rm -f "$W/layer.tar" "$W/layer.tar.gz"
fi
tasks=(expand oci search normalize)
declare -A T
for _ in $(seq "$runs"); do
  for b in old new; do
    bin=${!b}
    for task in "${tasks[@]}"; do
      rm -rf "$W/out"; mkdir -p "$W/out"
      case $task in
        expand) cmd=("$bin" process "tar://$img" "dir://$W/out/d?expand=true") ;;
        oci) cmd=("$bin" process "tar://$img" "oci://$W/out/b") ;;
        search) cmd=("$bin" search "tar://$img" '*.conf') ;;
        normalize) cmd=("$bin" process "tar://$img" "tar://$W/out/o.tar" -f normalize-timestamps) ;;
      esac
      /usr/bin/time -o "$W/time" -f "%e %M" "${cmd[@]}" >/dev/null 2>"$W/err" \
        || { echo "$b $task failed:"; head -3 "$W/err"; exit 1; }
      T[$b-$task]+="$(cat "$W/time");"
    done
  done
done
median() { tr ';' '\n' | grep . | sort -n | awk '{a[NR]=$0} END{print a[int((NR+1)/2)]}'; }
printf '%-10s %-18s %-18s %s\n' task old new "new/old time"
for task in "${tasks[@]}"; do
  o=$(median <<<"${T[old-$task]}"); n=$(median <<<"${T[new-$task]}")
  printf '%-10s %-18s %-18s %s\n' "$task" "${o%% *} s ${o##* } KB" "${n%% *} s ${n##* } KB" \
    "$(awk -v a="${o%% *}" -v b="${n%% *}" 'BEGIN{printf "%.2f", b/a}')"
done
rm -rf "$W/out"
