#!/usr/bin/env bash
# occystrap benchmark: times this checkout's occystrap against skopeo,
# skopeo + umoci and the Python occystrap 0.4.17 on the same image in one run,
# interleaved (run 1 of every tool, then run 2, ...), and prints medians, peak
# RSS and ratios (peer time / our time). Not part of the test suite.
#
#   bench/run.sh                # RUNS=3 PORT=5123 BENCH_DIR=/dev/shm/occy-bench
#   BASE=origin/main bench/run.sh   # also time an earlier build (a git revision,
#                                   # built into BASE_BUILD_DIR, or a binary path)
#
# Uses bench/registry.sh and bench/make-images.sh (a loopback registry and the 4-layer benchmark image
# bench/debian:layered); installs docker-registry, skopeo, umoci, pigz, jq,
# debootstrap with apt and occystrap==0.4.17 into a venv when missing.
# Outputs go to tmpfs by default: on ext4, deleting the previous run's tree
# slows the next extraction 5-20x, which would swamp the tools' own cost.
# Writes the table to bench/results.md (BENCH_MD= to change).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
shared=$repo/bench
runs=${RUNS:-3}; port=${PORT:-5123}; reg=127.0.0.1:$port
W=${BENCH_DIR:-/dev/shm/occy-bench}; md=${BENCH_MD:-$repo/bench/results.md}
img=bench/debian:layered; src="registry://$reg/$img"
venv=${PY_VENV:-/tmp/bench-venv}

need=()
for p in docker-registry skopeo umoci pigz jq debootstrap curl; do
  command -v "$p" >/dev/null || need+=("$p")
done
if ((${#need[@]})); then
  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]/docker-registry/docker-registry}" </dev/null
fi
[[ -x $venv/bin/occystrap ]] || { python3 -m venv "$venv" && "$venv/bin/pip" install -q occystrap==0.4.17; }
py=$venv/bin/occystrap
(cd "$repo" && cargo build --release -q)
ours=$repo/target/release/occystrap
base=${BASE:-}; basebin=
if [[ -n $base && -x $base ]]; then
  basebin=$(readlink -f "$base"); base_desc="binary $base"
elif [[ -n $base ]]; then
  rev=$(git -C "$repo" rev-parse --verify "$base^{commit}")
  bdir=${BASE_BUILD_DIR:-/tmp/occy-base-build}/$rev
  if [[ ! -x $bdir/target/release/occystrap ]]; then
    rm -rf "$bdir"; mkdir -p "$bdir"
    git -C "$repo" archive "$rev" | tar -x -C "$bdir"
    (cd "$bdir" && cargo build --release -q)
  fi
  basebin=$bdir/target/release/occystrap; base_desc="$(git -C "$repo" rev-parse --short "$rev")"
fi

rm -rf "$W"; mkdir -p "$W"
regdir=$W/registry
"$shared/registry.sh" start "$regdir" "$port" >/dev/null
trap '"$shared/registry.sh" stop "$regdir" "$port" >/dev/null 2>&1 || true; rm -rf "$W"' EXIT
"$shared/make-images.sh" "$port" >/dev/null

# Extra images for the scaling rows: one incompressible layer of 10 MiB and
# of 1 GiB, and a second tag sharing 3 of the 4 layers of the main image.
python3 - "$W/img" <<'PY'
import hashlib, json, os, subprocess, sys, tarfile, io
out = sys.argv[1]
def layer_image(name, size):
    d = f"{out}/{name}"; os.makedirs(f"{d}/blobs/sha256", exist_ok=True)
    raw = f"{d}/layer.tar"
    with open(raw, "wb") as f:
        t = tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT)
        ti = tarfile.TarInfo("big.bin"); ti.size = size
        # Deterministic, incompressible: a SHA-256 counter stream.
        class R(io.RawIOBase):
            def __init__(s): s.n = 0; s.buf = b""
            def readable(s): return True
            def readinto(s, b):
                while len(s.buf) < len(b):
                    s.buf += b"".join(hashlib.sha256(i.to_bytes(8, "big")).digest() for i in range(s.n, s.n + 4096)); s.n += 4096
                k = len(b); b[:k] = s.buf[:k]; s.buf = s.buf[k:]; return k
        t.addfile(ti, io.BufferedReader(R(), 1 << 20)); t.close()
    diff = subprocess.check_output(["sha256sum", raw]).split()[0].decode()
    subprocess.check_call(f"pigz -1 -c {raw} > {raw}.gz", shell=True); os.remove(raw)
    dig = subprocess.check_output(["sha256sum", f"{raw}.gz"]).split()[0].decode()
    os.rename(f"{raw}.gz", f"{d}/blobs/sha256/{dig}")
    cfg = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                      "rootfs": {"type": "layers", "diff_ids": ["sha256:" + diff]},
                      "history": [{"created_by": name}]}).encode()
    cd = hashlib.sha256(cfg).hexdigest(); open(f"{d}/blobs/sha256/{cd}", "wb").write(cfg)
    man = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:" + cd, "size": len(cfg)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": "sha256:" + dig,
                    "size": os.path.getsize(f"{d}/blobs/sha256/{dig}")}]}).encode()
    md = hashlib.sha256(man).hexdigest(); open(f"{d}/blobs/sha256/{md}", "wb").write(man)
    json.dump({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": "sha256:" + md, "size": len(man), "annotations": {"org.opencontainers.image.ref.name": name}}]},
        open(f"{d}/index.json", "w"))
    open(f"{d}/oci-layout", "w").write('{"imageLayoutVersion":"1.0.0"}')
layer_image("10m", 10 << 20)
layer_image("1g", 1 << 30)
PY
for s in 10m 1g; do
  skopeo copy -q --dest-tls-verify=false "oci:$W/img/$s:$s" "docker://$reg/bench/single:$s"
done
rm -rf "$W/img"
# v2 = the main image with its top layer replaced (3 of 4 layers shared).
skopeo copy -q --src-tls-verify=false "docker://$reg/$img" "oci:$W/v2:v2"
python3 - "$W/v2" <<'PY'
import hashlib, json, os, sys, tarfile, io, gzip
d = sys.argv[1]
idx = json.load(open(f"{d}/index.json")); md = idx["manifests"][0]["digest"].split(":")[1]
man = json.load(open(f"{d}/blobs/sha256/{md}"))
cfg = json.load(open(f"{d}/blobs/sha256/{man['config']['digest'].split(':')[1]}"))
buf = io.BytesIO(); t = tarfile.open(fileobj=buf, mode="w")
data = os.urandom(64 << 20); ti = tarfile.TarInfo("srv/new.bin"); ti.size = len(data); t.addfile(ti, io.BytesIO(data)); t.close()
raw = buf.getvalue(); gz = gzip.compress(raw, 1)
def put(b):
    h = hashlib.sha256(b).hexdigest(); open(f"{d}/blobs/sha256/{h}", "wb").write(b); return h
lh = put(gz)
man["layers"][-1] = {"mediaType": man["layers"][-1]["mediaType"], "digest": "sha256:" + lh, "size": len(gz)}
cfg["rootfs"]["diff_ids"][-1] = "sha256:" + hashlib.sha256(raw).hexdigest()
cb = json.dumps(cfg).encode(); ch = put(cb)
man["config"]["digest"] = "sha256:" + ch; man["config"]["size"] = len(cb)
mb = json.dumps(man).encode(); mh = put(mb)
idx["manifests"][0].update(digest="sha256:" + mh, size=len(mb))
json.dump(idx, open(f"{d}/index.json", "w"))
PY
skopeo copy -q --dest-tls-verify=false "oci:$W/v2:v2" "docker://$reg/bench/debian:v2"
rm -rf "$W/v2"

# Floors: the same bytes through curl, pigz and tar alone.
man=$(curl -fs -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' "http://$reg/v2/bench/debian/manifests/layered")
blobs=$(jq -r '.layers[].digest' <<<"$man")
mkdir -p "$W/raw"; i=0
for d in $blobs; do i=$((i+1)); curl -fs "http://$reg/v2/bench/debian/blobs/$d" | pigz -dc > "$W/raw/$i.tar"; done
urls=$(for d in $blobs; do printf 'http://%s/v2/bench/debian/blobs/%s ' "$reg" "$d"; done)
big=$(curl -fs -H 'Accept: application/vnd.oci.image.manifest.v1+json' "http://$reg/v2/bench/single/manifests/1g" | jq -r '.layers[0].digest')

# name|command run in an emptied $W/out (the command may use $OUT)
tasks=(
  "tar.ours|$ours --insecure process $src tar://image.tar"
  "tar.python|$py --insecure process $src tar://image.tar"
  "tar.skopeo|skopeo copy -q --src-tls-verify=false docker://$reg/$img docker-archive:image.tar:$img"
  "expand.ours|$ours --insecure process $src 'dir://d?expand=true'"
  "oci.ours|$ours --insecure process $src oci://bundle"
  "expand.python|$py --insecure process $src 'dir://d?expand=true'"
  "oci.python|$py --insecure process $src oci://bundle"
  "expand.skopeo+umoci|sh -c 'skopeo copy -q --src-tls-verify=false docker://$reg/$img oci:layout:t && umoci unpack --image layout:t bundle >/dev/null'"
  "search.ours|$ours --insecure search $src '*/f01[0-1].txt'"
  "search.python|$py --insecure search $src '*/f01[0-1].txt'"
  "floor.tar-x|sh -c 'for t in $W/raw/*.tar; do tar -xf \$t; done'"
  "floor.curl-pigz-sha256|sh -c 'for u in $urls; do curl -fs \$u | pigz -dc | sha256sum >/dev/null; done'"
  "single10m.ours|$ours --insecure process registry://$reg/bench/single:10m tar://s.tar"
  "single1g.ours|$ours --insecure process registry://$reg/bench/single:1g tar://s.tar"
  "single1g.floor|sh -c 'curl -fs http://$reg/v2/bench/single/blobs/$big | pigz -dc | sha256sum >/dev/null'"
  "store1st.ours|$ours --insecure process $src 'dir://store?unique_names=true'"
  "store2nd.ours|sh -c '$ours --insecure process $src dir://store?unique_names=true >/dev/null 2>&1; /usr/bin/time -f \"%e %M\" -o $W/t2 $ours --insecure process registry://$reg/bench/debian:v2 dir://store?unique_names=true'"
)
# With BASE, each of our rows gets a twin run by the earlier build, right after it.
if [[ -n $basebin ]]; then
  twinned=()
  for t in "${tasks[@]}"; do
    twinned+=("$t"); name=${t%%|*}
    [[ $name == *.ours ]] && twinned+=("${name%.ours}.base|${t#*|}")
  done
  tasks=("${twinned[@]}")
fi
: > "$W/res"
for r in $(seq "$runs"); do
  for t in "${tasks[@]}"; do
    name=${t%%|*}; cmd=${t#*|}
    rm -rf "$W/out" "$W/t2"; mkdir -p "$W/out"; sync
    [[ $name == *.base ]] && cmd=${cmd//$ours/$basebin}
    rc=0; (cd "$W/out" && /usr/bin/time -f '%e %M' -o "$W/t" bash -c "$cmd" > "$W/last.log" 2>&1) || rc=$?
    # For the second-tag row only the second pull counts.
    [[ -f $W/t2 ]] && cp "$W/t2" "$W/t"
    echo "$name $(tail -n1 "$W/t") $rc" >> "$W/res"
    echo "run $r: $name $(tail -n1 "$W/t") rc=$rc" >&2
  done
done

med() { awk -v n="$1" -v f="$2" '$1==n {print $f}' "$W/res" | sort -n | awk '{a[NR]=$1} END{if (NR) print a[int((NR+1)/2)]; else print "-"}'; }
rss() { local k; k=$(med "$1" 3); [[ $k == - ]] && echo - || awk -v k="$k" 'BEGIN{printf "%.0f", k/1024}'; }
rcs() { awk -v n="$1" '$1==n {print $4}' "$W/res" | sort -u | paste -sd,; }
ratio() { awk -v a="$(med "$1" 2)" -v b="$(med "$2" 2)" 'BEGIN{ if (a+0>0 && b+0>0) printf "%.2fx", a/b; else print "-" }'; }
row() { printf '| %s | %s | %s | %s |\n' "$1" "$(med "$1" 2)" "$(rss "$1")" "$(rcs "$1")"; }

{
  echo "# occystrap benchmark ($(date -u +%FT%TZ))"
  echo
  echo "Host: $(nproc) cores, $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo). Image \`$img\` on a loopback registry."
  echo "Tools: occystrap $(cd "$repo" && git rev-parse --short HEAD), Python occystrap 0.4.17, $(skopeo --version), umoci $(umoci --version | awk '{print $3}')."
  [[ -n $basebin ]] && echo "Earlier build (the .base rows): $base_desc."
  echo "Outputs on $W. $runs interleaved runs, medians."
  echo
  echo "| task | median wall s | median peak RSS MB | exit codes |"
  echo "|---|---|---|---|"
  for t in "${tasks[@]}"; do row "${t%%|*}"; done
  echo
  echo "| ratio (time of the other / ours; >1 means we are faster) | value |"
  echo "|---|---|"
  echo "| registry -> tar: skopeo / ours | $(ratio tar.skopeo tar.ours) |"
  echo "| registry -> tar: Python occystrap / ours | $(ratio tar.python tar.ours) |"
  echo "| registry -> rootfs: skopeo + umoci / ours dir://?expand=true | $(ratio expand.skopeo+umoci expand.ours) |"
  echo "| registry -> rootfs: skopeo + umoci / ours oci:// | $(ratio expand.skopeo+umoci oci.ours) |"
  echo "| registry -> rootfs: Python dir://?expand=true / ours | $(ratio expand.python expand.ours) |"
  echo "| ours dir://?expand=true / tar -x of decompressed layers (target <= 2.5) | $(ratio expand.ours floor.tar-x) |"
  echo "| ours oci:// / tar -x of decompressed layers (target <= 2.5) | $(ratio oci.ours floor.tar-x) |"
  echo "| search: Python / ours | $(ratio search.python search.ours) |"
  echo "| 1 GiB layer: ours / curl + pigz -dc + sha256sum (target <= 1.5) | $(ratio single1g.ours single1g.floor) |"
  echo "| peak RSS 1 GiB layer / 10 MiB layer | $(awk -v a="$(med single1g.ours 3)" -v b="$(med single10m.ours 3)" 'BEGIN{printf "%.2f", a/b}') |"
  echo "| second tag into a store sharing 3 of 4 layers / first pull into an empty store | $(awk -v a="$(med store2nd.ours 2)" -v b="$(med store1st.ours 2)" 'BEGIN{ if (b+0>0) printf "%.2f", a/b; else print "-" }') |"
  if [[ -n $basebin ]]; then
    echo
    echo "| this build against the earlier one (time of earlier / this; >1 means faster now) | time | peak RSS this / earlier |"
    echo "|---|---|---|"
    for t in "${tasks[@]}"; do
      n=${t%%|*}; [[ $n == *.ours ]] || continue
      printf '| %s | %s | %s |\n' "${n%.ours}" "$(ratio "${n%.ours}.base" "$n")" \
        "$(awk -v a="$(med "$n" 3)" -v b="$(med "${n%.ours}.base" 3)" 'BEGIN{ if (b+0>0) printf "%.2f", a/b; else print "-" }')"
    done
  fi
} > "$md"
cat "$md"
