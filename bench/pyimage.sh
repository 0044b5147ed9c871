#!/usr/bin/env bash
# A second benchmark image, laid out like a Python application's, timed
# against the same peers as bench/run.sh, interleaved, medians and peak RSS.
# Not part of the test suite.
#
#   bench/pyimage.sh                # RUNS=3 PORT=5141 BENCH_DIR=/dev/shm/occy-py
#   OURS=/path/to/occystrap bench/pyimage.sh
#
# Layers (built once with umoci into /tmp/bench-data/oci-py, gzip):
#   1  the Debian minbase root of bench/make-images.sh (run bench/run.sh or
#      bench/make-images.sh once first)
#   2  this machine's Python standard library, without site-packages, and
#      its bin/ (python3 -c 'import sys; print(sys.prefix)')
#   3  its site-packages: tens of thousands of small files in thousands of
#      directories, the shape that tests extraction
#   4  /usr/include
# The image is made of this machine's files, so its sizes differ from one
# machine to another: compare ratios, and say which image. Rows: tar
# (ours, Python 0.4.17, skopeo), oci:// and dir://?expand=true (ours,
# skopeo + umoci), search (ours, Python), and tar -x of the uncompressed
# layers. Installs what it needs as bench/run.sh does.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
runs=${RUNS:-3}; port=${PORT:-5141}; reg=127.0.0.1:$port
W=${BENCH_DIR:-/dev/shm/occy-py}
data=/tmp/bench-data; L=$data/oci-py; B=$data/bundle-py; T=py
venv=${PY_VENV:-/tmp/bench-venv}
for p in docker-registry skopeo umoci pigz jq; do
  command -v "$p" >/dev/null || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker-registry skopeo umoci pigz jq </dev/null; break; }
done
[[ -x $venv/bin/occystrap ]] || { python3 -m venv "$venv" && "$venv/bin/pip" install -q occystrap==0.4.17; }
py=$venv/bin/occystrap
if [[ -n ${OURS:-} ]]; then ours=$(readlink -f "$OURS")
else (cd "$repo" && cargo build --release -q); ours=${CARGO_TARGET_DIR:-$repo/target}/release/occystrap; fi
root=$data/minbase-root
[[ -f $root/etc/debian_version ]] || { echo "no $root: run bench/make-images.sh (or bench/run.sh) once first" >&2; exit 2; }

if [[ ! -f $L/py.done ]]; then
  prefix=$(python3 -c 'import sys; print(sys.prefix)')
  lib=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')
  site=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  rm -rf "$L" "$B"
  umoci init --layout "$L"
  umoci new --image "$L:$T"
  umoci unpack --image "$L:$T" "$B" >/dev/null
  cp -a "$root"/. "$B/rootfs/"
  umoci repack --refresh-bundle --image "$L:$T" "$B"
  dest=$B/rootfs/usr/local/lib/$(basename "$lib")
  mkdir -p "$dest" "$B/rootfs/usr/local/bin"
  (cd "$lib" && tar --exclude="./$(basename "$site")" --exclude=./dist-packages -cf - .) | tar -C "$dest" -xf -
  cp -a "$prefix/bin/." "$B/rootfs/usr/local/bin/" 2>/dev/null || true
  umoci repack --refresh-bundle --image "$L:$T" "$B"
  mkdir -p "$dest/site-packages"
  cp -a "$site/." "$dest/site-packages/"
  umoci repack --refresh-bundle --image "$L:$T" "$B"
  mkdir -p "$B/rootfs/usr/include"
  cp -a /usr/include/. "$B/rootfs/usr/include/"
  umoci repack --refresh-bundle --image "$L:$T" "$B"
  rm -rf "$B"; touch "$L/py.done"
fi

mkdir -p "$W"
trap '"$repo/bench/registry.sh" stop "$W/reg" "$port" >/dev/null 2>&1 || true' EXIT
"$repo/bench/registry.sh" start "$W/reg" "$port" >/dev/null
skopeo copy -q --dest-tls-verify=false --format v2s2 "oci:$L:$T" "docker://$reg/bench/py:$T"
src=registry://$reg/bench/py:$T
# The uncompressed layers, for the tar -x floor.
rm -rf "$W/raw"; mkdir -p "$W/raw"; i=0
man=$(curl -fs -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' "http://$reg/v2/bench/py/manifests/$T")
for dg in $(jq -r '.layers[].digest' <<<"$man"); do
  i=$((i + 1)); curl -fs "http://$reg/v2/bench/py/blobs/$dg" | pigz -dc > "$W/raw/$i.tar"
done
echo "image bench/py:$T: $(jq '[.layers[].size] | add' <<<"$man") bytes compressed, $(du -cb "$W"/raw/*.tar | tail -1 | cut -f1) uncompressed, $(for t in "$W"/raw/*.tar; do tar -tf "$t"; done | wc -l) entries"

tasks=(
  "tar.ours|$ours --insecure process $src tar://image.tar"
  "tar.python|$py --insecure process $src tar://image.tar"
  "tar.skopeo|skopeo copy -q --src-tls-verify=false docker://$reg/bench/py:$T docker-archive:image.tar:x"
  "oci.ours|$ours --insecure process $src oci://bundle"
  "expand.ours|$ours --insecure process $src 'dir://d?expand=true'"
  "rootfs.skopeo+umoci|sh -c 'skopeo copy -q --src-tls-verify=false docker://$reg/bench/py:$T oci:layout:t && umoci unpack --image layout:t bundle >/dev/null'"
  "search.ours|$ours --insecure search $src '*/__init__.py'"
  "search.python|$py --insecure search $src '*/__init__.py'"
  "floor.tar-x|sh -c 'for t in $W/raw/*.tar; do tar -xf \$t; done'"
)
declare -A times rss
for ((r = 1; r <= runs; r++)); do
  for t in "${tasks[@]}"; do
    name=${t%%|*}; cmd=${t#*|}
    rm -rf "$W/out"; mkdir -p "$W/out"
    if (cd "$W/out" && /usr/bin/time -f '%e %M' -o "$W/time" sh -c "$cmd" >/dev/null 2>"$W/err"); then
      read -r s kb <"$W/time"; times[$name]+="$s "; rss[$name]+="$((kb / 1024)) "
      echo "run $r: $name $s s"
    else
      echo "run $r: $name failed: $(tail -1 "$W/err")"
    fi
  done
done
rm -rf "$W/out" "$W/raw"
median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {if (NR) print (NR % 2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
echo
echo "| task | median wall s | median peak RSS MB |"
echo "|---|---|---|"
declare -A med
for t in "${tasks[@]}"; do
  name=${t%%|*}; med[$name]=$(median <<<"${times[$name]:-}")
  echo "| $name | ${med[$name]} | $(median <<<"${rss[$name]:-}") |"
done
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (a && b) printf "%.2fx", a / b; else print "-"}'; }
echo
echo "| ratio | value |"
echo "|---|---|"
echo "| tar: Python / ours | $(ratio "${med[tar.python]}" "${med[tar.ours]}") |"
echo "| tar: skopeo / ours | $(ratio "${med[tar.skopeo]}" "${med[tar.ours]}") |"
echo "| oci://: skopeo + umoci / ours | $(ratio "${med[rootfs.skopeo+umoci]}" "${med[oci.ours]}") |"
echo "| dir://?expand=true: skopeo + umoci / ours | $(ratio "${med[rootfs.skopeo+umoci]}" "${med[expand.ours]}") |"
echo "| oci:// / tar -x (target <= 1.5) | $(ratio "${med[oci.ours]}" "${med[floor.tar-x]}") |"
echo "| dir://?expand=true / tar -x (target <= 1.5) | $(ratio "${med[expand.ours]}" "${med[floor.tar-x]}") |"
echo "| search: Python / ours | $(ratio "${med[search.python]}" "${med[search.ours]}") |"
