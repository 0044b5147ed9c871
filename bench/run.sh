#!/usr/bin/env bash
# occystrap benchmark: times this checkout's occystrap against skopeo,
# skopeo + umoci and the Python occystrap 0.4.17 on the same image in one run,
# interleaved (run 1 of every tool, then run 2, ...), and prints medians, peak
# RSS and ratios (peer time / our time). Not part of the test suite.
#
#   bench/run.sh                # RUNS=3 PORT=5123 BENCH_DIR=/dev/shm/occy-bench
#   BASE=origin/main bench/run.sh   # also time an earlier build (a git revision,
#                                   # built into BASE_BUILD_DIR, or a binary path)
#   OURS=/path/to/occystrap bench/run.sh   # time that binary as "ours"
#
# Uses bench/registry.sh and bench/make-images.sh (a loopback registry and the 4-layer benchmark image
# bench/debian:layered); installs docker-registry, skopeo, umoci, pigz, jq,
# debootstrap with apt and occystrap==0.4.17 into a venv when missing.
# Outputs go to tmpfs by default: on ext4, deleting the previous run's tree
# slows the next extraction 5-20x, which would swamp the tools' own cost.
# Writes the table to bench/results.md (BENCH_MD= to change).
#
#   TASKS=copy1st,copy2nd,tar2reg bench/run.sh   # only these rows (task names
#       or their groups, the part before the dot); skips the set-up of images
#       no selected row reads, and writes /tmp/occy-bench-results.md instead
#       of bench/results.md unless BENCH_MD says otherwise.
#
# The copy rows push to a second loopback registry (PORT2, default PORT+1):
#   copy1st   registry -> registry into a destination emptied before every run
#             (registry stopped, its storage deleted, started again), so every
#             blob is uploaded;
#   copy2nd   the same copy into a repository that already holds the image
#             (seeded with skopeo, untimed, whenever its tag does not name the
#             source's manifest);
#   tar2reg   a docker-save tarball (made once with skopeo) -> an emptied
#             destination.
# Their floor: copy1st.floor-curl PUTs the image's blobs from local disk with
# curl, all at once (what the destination registry itself costs).
# After each copy the destination is checked: its manifest and every blob it
# names must be there, or the run's exit code is recorded as 97. The Python
# tool takes ~30 s a copy, so its copy rows run only in the first PY_COPY_RUNS
# (default 1) runs. When this build (or BASE) cannot push to a registry, its
# copy rows are skipped with the reason in the table.
#
# The proxy rows run `occystrap proxy` (this build) on PORT+2 and PORT+3:
#   proxypush.skopeo-via-proxy  skopeo copies the image into a proxy with
#             -f normalize-timestamps in front of the emptied second registry;
#   proxypush.process           the same filtered copy by `occystrap process`;
#   proxyhit.via-proxy          occystrap pulls a tag the pull-through proxy
#             (-u first registry, -d second registry's cache/ namespace) holds;
#   proxyhit.direct             the same pull straight from the second registry.
# The proxies' own peak RSS is read from /proc at the end.
#
# The mirror rows (bench/mirror-seed.py: 30 repositories x 3 tags of small
# images sharing base layers, pushed to src/ of the first registry with skopeo):
#   mirrorcold  `occystrap mirror` against `skopeo sync --src yaml --dest docker`
#               with the same selection, each into the emptied second registry;
#   mirrorwarm  the same into a third registry (PORT+4) that already holds it
#               all (seeded once by skopeo sync, untimed): a no-op run. The
#               requests each tool sent to the source and destination
#               registries are counted from their access logs.
# MIRROR_IMAGES (default 8) and MIRROR_LAYERS (default 4) are our -J and -j.
#
# The engine rows start `podman system service` (vfs storage on $W, its temp
# files there too) with the main image pulled into it:
#   engine.ours               docker://IMAGE -> tar:// over the Engine API;
#   engine.dockerpush         dockerpush://IMAGE -> tar:// (the engine pushes
#                             into our embedded registry);
#   engine.podman-save+ours   `podman save -o` a file, then `process tar://`;
#   engine.python             the Python tool's docker:// -> tar://.
# Our temp dir is the output's (tmpfs), where `podman save` writes its file.
#
# The many-layers rows (group layers40): an image of 40 layers of 1 MiB
# (incompressible, gzip) against one of a single 40 MiB layer of the same
# bytes, each pulled into tar://; the difference over 39 is the cost of a
# layer beyond its bytes (requests, temp files, thread hand-offs). Its floor,
# layers40.floor-curl, is one curl fetching the 40 blobs 4 at a time (what
# the registry itself costs a blob, ~10 ms here).
#
# The slow rows (group slow) pull the main image into tar:// through
# bench/netshape.py on PORT+5, a TCP proxy in front of the source registry
# that adds SLOW_DELAY_MS (default 50) of round-trip time (half each way, and
# one round trip for each new connection's handshake) and limits every
# connection, each direction, to SLOW_MBIT (default 100) Mbit/s:
#   slow.ours        occystrap process registry:// -> tar://;
#   slow.skopeo      skopeo copy docker:// -> docker-archive:;
#   slow.floor-curl  curl fetching the config and every layer at once, one
#                    connection each, to /dev/null: what a tool fetching
#                    each blob over one connection must at least take (the
#                    biggest layer over one connection; 268 MB at 100 Mbit/s
#                    is ~21 s).
# The proxy starts only when a slow row is selected; its CPU time is in the
# table's notes.
#
# The floor rows (group floor): floor.tar-x untars the decompressed layers;
# floor.curl-pigz-sha256 fetches, inflates and hashes each layer with the
# standard tools; floor.curl-blobs fetches every blob at once into files,
# with no hashing (what tar://?layers=compressed can at best take). The
# mirrorwarm rows also record the CPU the two registries spend answering
# our warm run: over the cores, a floor for its time.
#
# REG_DIR=PATH keeps the source registry's storage there (say, on disk:
# REG_DIR=/var/tmp/occy-reg) instead of in BENCH_DIR (tmpfs by default);
# it is removed at the end.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
shared=$repo/bench
runs=${RUNS:-3}; port=${PORT:-5123}; reg=127.0.0.1:$port
port2=${PORT2:-$((port + 1))}; dst=127.0.0.1:$port2; pyruns=${PY_COPY_RUNS:-1}
sel=${TASKS:-}
W=${BENCH_DIR:-/dev/shm/occy-bench}
if [[ -n $sel ]]; then md=${BENCH_MD:-/tmp/occy-bench-results.md}; else md=${BENCH_MD:-$repo/bench/results.md}; fi
IFS=, read -ra picked <<<"$sel"
groups=" tar expand oci search floor single10m single1g layers40 store1st store2nd copy1st copy2nd tar2reg proxypush proxyhit mirrorcold mirrorwarm engine slow "
for t in "${picked[@]}"; do
  [[ $groups == *" ${t%%.*} "* ]] || { echo "TASKS: no group '${t%%.*}'; groups:$groups" >&2; exit 2; }
done
# uses GROUP: is a row of GROUP (the part of a task name before the dot) selected?
uses() {
  [[ -z $sel ]] && return 0
  local t; for t in "${picked[@]}"; do [[ ${t%%.*} == "$1" ]] && return 0; done; return 1
}
# selected NAME: does TASKS name this task or its group?
selected() {
  [[ -z $sel ]] && return 0
  local t; for t in "${picked[@]}"; do [[ $t == "$1" || $t == "${1%%.*}" ]] && return 0; done; return 1
}
# main: does a selected row read the main benchmark image (or a Python or
# umoci row need installing)? The mirror rows bring their own images.
main() {
  [[ -z $sel ]] && return 0
  local t; for t in "${picked[@]}"; do [[ ${t%%.*} == mirror* ]] || return 0; done; return 1
}
img=bench/debian:layered; src="registry://$reg/$img"
venv=${PY_VENV:-/tmp/bench-venv}

need=()
tools="docker-registry skopeo jq curl"; main && tools+=" umoci pigz debootstrap"; uses engine && tools+=" podman"
for p in $tools; do
  command -v "$p" >/dev/null || need+=("$p")
done
if ((${#need[@]})); then
  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]/docker-registry/docker-registry}" </dev/null
fi
main && [[ ! -x $venv/bin/occystrap ]] && { python3 -m venv "$venv" && "$venv/bin/pip" install -q occystrap==0.4.17; }
py=$venv/bin/occystrap
# OURS=<binary> times that build as ours instead of this checkout's release build.
if [[ -n ${OURS:-} ]]; then ours=$(readlink -f "$OURS")
else (cd "$repo" && cargo build --release -q); ours=${CARGO_TARGET_DIR:-$repo/target}/release/occystrap; fi
base=${BASE:-}; basebin=
if [[ -n $base && -x $base ]]; then
  basebin=$(readlink -f "$base"); base_desc="binary $base"
elif [[ -n $base ]]; then
  rev=$(git -C "$repo" rev-parse --verify "$base^{commit}")
  bdir=${BASE_BUILD_DIR:-/tmp/occy-base-build}/$rev
  if [[ ! -x $bdir/target/release/occystrap ]]; then
    rm -rf "$bdir"; mkdir -p "$bdir"
    git -C "$repo" archive "$rev" | tar -x -C "$bdir"
    (cd "$bdir" && env -u CARGO_TARGET_DIR cargo build --release -q)
  fi
  basebin=$bdir/target/release/occystrap; base_desc="$(git -C "$repo" rev-parse --short "$rev")"
fi

rm -rf "$W"; mkdir -p "$W"; pxpids=()
regdir=${REG_DIR:-$W/registry}; dregdir=$W/registry2
[[ -n ${REG_DIR:-} ]] && rm -rf "$regdir"
"$shared/registry.sh" start "$regdir" "$port" >/dev/null
trap 'for p in "${pxpids[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null
      "$shared/registry.sh" stop "$regdir" "$port" >/dev/null 2>&1 || true
      "$shared/registry.sh" stop "$dregdir" "$port2" >/dev/null 2>&1 || true
      "$shared/registry.sh" stop "$W/registry3" "$((port + 4))" >/dev/null 2>&1 || true; rm -rf "$W"
      [[ -n ${REG_DIR:-} ]] && rm -rf "$regdir"' EXIT
if main; then "$shared/make-images.sh" "$port" >/dev/null; fi
urls=; big=; fetchall=; nblobs=1

if uses single10m || uses single1g; then

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
big=$(curl -fs -H 'Accept: application/vnd.oci.image.manifest.v1+json' "http://$reg/v2/bench/single/manifests/1g" | jq -r '.layers[0].digest')
fi

many=
if uses layers40; then
# 40 layers of 1 MiB, and the same 40 MiB as one layer.
python3 - "$W/many" <<'PY'
import gzip, hashlib, io, json, os, sys, tarfile
out = sys.argv[1]
def blob(d, b):
    h = hashlib.sha256(b).hexdigest(); open(f"{d}/blobs/sha256/{h}", "wb").write(b); return h
def image(name, sizes):
    d = f"{out}/{name}"; os.makedirs(f"{d}/blobs/sha256", exist_ok=True)
    layers, diffs, n = [], [], 0
    for i, size in enumerate(sizes):
        data = b"".join(hashlib.sha256(f"{n + k}".encode()).digest() for k in range(size // 32)); n += size // 32
        buf = io.BytesIO(); t = tarfile.open(fileobj=buf, mode="w")
        ti = tarfile.TarInfo(f"l{i:02d}.bin"); ti.size = len(data); t.addfile(ti, io.BytesIO(data)); t.close()
        raw = buf.getvalue(); gz = gzip.compress(raw, 1, mtime=0)
        diffs.append("sha256:" + hashlib.sha256(raw).hexdigest())
        layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": "sha256:" + blob(d, gz), "size": len(gz)})
    cfg = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                      "rootfs": {"type": "layers", "diff_ids": diffs}}).encode()
    man = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:" + blob(d, cfg), "size": len(cfg)},
        "layers": layers}).encode()
    json.dump({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": "sha256:" + blob(d, man), "size": len(man), "annotations": {"org.opencontainers.image.ref.name": name}}]},
        open(f"{d}/index.json", "w"))
    open(f"{d}/oci-layout", "w").write('{"imageLayoutVersion":"1.0.0"}')
image("40x1m", [1 << 20] * 40)
image("1x40m", [40 << 20])
PY
for s in 40x1m 1x40m; do
  skopeo copy -q --dest-tls-verify=false "oci:$W/many/$s:$s" "docker://$reg/bench/many:$s"
done
rm -rf "$W/many"
many=$(curl -fs -H 'Accept: application/vnd.oci.image.manifest.v1+json' "http://$reg/v2/bench/many/manifests/40x1m" \
  | jq -r --arg r "http://$reg/v2/bench/many/blobs/" '.layers[] | "-o /dev/null " + $r + .digest' | paste -sd' ')
fi

if uses store2nd; then
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
fi

# Floors: the same bytes through curl, pigz and tar alone.
if uses floor; then
man=$(curl -fs -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' "http://$reg/v2/bench/debian/manifests/layered")
blobs=$(jq -r '.layers[].digest' <<<"$man")
mkdir -p "$W/raw"; i=0
for d in $blobs; do i=$((i+1)); curl -fs "http://$reg/v2/bench/debian/blobs/$d" | pigz -dc > "$W/raw/$i.tar"; done
urls=$(for d in $blobs; do printf 'http://%s/v2/bench/debian/blobs/%s ' "$reg" "$d"; done)
# Every blob (config and layers) at once into files: what the registry and
# the kernel cost to hand the bytes over, with no hashing (the floor of
# tar://?layers=compressed).
fetchall=$(jq -r '.config.digest, .layers[].digest' <<<"$man" | awk -v r="http://$reg/v2/bench/debian/blobs/" '{printf "-o b%d %s%s ", NR, r, $1}')
nblobs=$(jq -r '.layers | length + 1' <<<"$man")
fi

# Copy rows: the destination registry, and the docker-save tarball tar2reg pushes.
# Floor (copy1st.floor-curl): the image's blobs, on local disk, PUT with curl
# all at once: what the destination registry itself costs.
srctar=$W/image-src.tar; pushfloor=$W/push-floor.sh
v2accept='application/vnd.docker.distribution.manifest.v2+json'
if uses copy1st || uses copy2nd || uses tar2reg || uses proxypush || uses proxyhit; then
  "$shared/registry.sh" start "$dregdir" "$port2" >/dev/null
  skopeo copy -q --src-tls-verify=false "docker://$reg/$img" "docker-archive:$srctar:$img"
  mkdir -p "$W/blobs"
  curl -fs -H "Accept: $v2accept" -o "$W/blobs/manifest" "http://$reg/v2/bench/debian/manifests/layered"
  for d in $(jq -r '.config.digest, .layers[].digest' "$W/blobs/manifest"); do
    curl -fs -o "$W/blobs/$d" "http://$reg/v2/bench/debian/blobs/$d"
  done
  cat > "$pushfloor" <<'SH'
#!/usr/bin/env bash
# push-floor.sh HOST REPO TAG DIR: every sha256:* blob file in DIR uploaded at
# once (a POST, then one PUT of the whole file), then DIR/manifest.
set -euo pipefail
h=$1 r=$2 t=$3 d=$4; pids=()
for f in "$d"/sha256:*; do
  ( loc=$(curl -fsS -o /dev/null -D - -X POST "http://$h/v2/$r/blobs/uploads/" | tr -d '\r' \
          | awk 'tolower($1)=="location:"{print $2}')
    [[ $loc == /* ]] && loc="http://$h$loc"
    if [[ $loc == *\?* ]]; then sep='&'; else sep='?'; fi
    curl -fsS -o /dev/null -H 'Expect:' -T "$f" "$loc${sep}digest=${f##*/}" ) & pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
curl -fsS -o /dev/null -X PUT -H "Content-Type: application/vnd.docker.distribution.manifest.v2+json" \
  --data-binary @"$d/manifest" "http://$h/v2/$r/manifests/$t"
SH
  chmod +x "$pushfloor"
fi

# The mirror rows' images, configs and warm destination.
wport=$((port + 4)); wdst=127.0.0.1:$wport; wregdir=$W/registry3
mimages=${MIRROR_IMAGES:-8}; mlayers=${MIRROR_LAYERS:-4}
if uses mirrorcold || uses mirrorwarm; then
  "$shared/registry.sh" start "$dregdir" "$port2" >/dev/null
  "$shared/registry.sh" start "$wregdir" "$wport" >/dev/null
  python3 "$shared/mirror-seed.py" "$W/mseed" 30 3 > "$W/mseed.list"
  xargs -L1 sh -c 'skopeo copy -q --dest-tls-verify=false "oci:$0/mseed:$1-$2" "docker://$3/src/$1:$2"' \
    "$W" < <(awk -v r="$reg" '{print $1, $2, r}' "$W/mseed.list")
  : > "$W/mseed.digests"
  while read -r r t; do
    echo "$r $t $(curl -fsI -H 'Accept: application/vnd.oci.image.manifest.v1+json' "http://$reg/v2/src/$r/manifests/$t" \
      | tr -d '\r' | awk -F': ' 'tolower($1)=="docker-content-digest"{print $2}')" >> "$W/mseed.digests"
  done < "$W/mseed.list"
  for x in cold:$dst warm:$wdst; do
    printf 'mirrors:\n  - from: registry://%s/src?insecure=true\n    to: registry://%s/dst?insecure=true\n    repositories: ["*"]\n' \
      "$reg" "${x#*:}" > "$W/mirror-${x%%:*}.yaml"
  done
  { echo "$reg:"; echo "  tls-verify: false"; echo "  images-by-tag-regex:"
    awk '{print $1}' "$W/mseed.list" | sort -u | sed 's|.*|    src/&: ".*"|'; } > "$W/sync.yaml"
  skopeo sync --src yaml --dest docker --dest-tls-verify=false "$W/sync.yaml" "$wdst/dst" > "$W/warm-seed.log" 2>&1
fi
# The engine rows' podman service, the image pulled into it (untimed).
sock=$W/podman/engine.sock; eimg=$reg/$img; podmansh=$W/podman.sh
if uses engine; then
  mkdir -p "$W/podman/tmp"
  cat > "$podmansh" <<SH
#!/bin/sh
exec env TMPDIR=$W/podman/tmp podman --root $W/podman/root --runroot $W/podman/runroot --tmpdir $W/podman/tmp \
  --storage-driver vfs --events-backend none --cgroup-manager cgroupfs "\$@"
SH
  chmod +x "$podmansh"
  "$podmansh" system service --time=0 "unix://$sock" > "$W/podman.log" 2>&1 & pxpids+=($!)
  for _ in $(seq 100); do curl -fs --unix-socket "$sock" http://d/version >/dev/null 2>&1 && break; sleep 0.1; done
  "$podmansh" pull -q --tls-verify=false "$eimg" >/dev/null
fi
# registries_cpu: CPU seconds the mirror rows' source and destination
# registries have used so far (what answering a warm run costs them).
registries_cpu() { awk -v a="$(cpu_s "$(cat "$regdir/registry.pid")")" -v b="$(cpu_s "$(cat "$wregdir/registry.pid")")" 'BEGIN{printf "%.2f", a+b}'; }
# requests_in LOG: access-log lines of registry API requests so far.
requests_in() { grep -c '"[A-Z]* /v2/' "$1" 2>/dev/null || true; }

# The proxies of the proxy rows (this build), their state on tmpfs.
pxpush=127.0.0.1:$((port + 2)); pxpull=127.0.0.1:$((port + 3)); pushpid=; pullpid=
if uses proxypush; then
  "$ours" --insecure proxy -l "$pxpush" --state-dir "$W/pxpush" -d "registry://$dst" \
    -f normalize-timestamps 2> "$W/pxpush.log" & pxpids+=($!); pushpid=$!
fi
if uses proxyhit; then
  "$ours" --insecure proxy -l "$pxpull" --state-dir "$W/pxpull" -d "registry://$dst/cache" \
    -u "registry://$reg" --cache-ttl 1d 2> "$W/pxpull.log" & pxpids+=($!); pullpid=$!
fi
for _ in $(seq 100); do
  ok=1; for h in ${pushpid:+$pxpush} ${pullpid:+$pxpull}; do curl -fs "http://$h/v2/" >/dev/null || ok=; done
  [[ -n $ok ]] && break; sleep 0.1
done
# The slow rows' shaping proxy in front of the source registry, and the
# URLs of the image's blobs through it (config and layers) for its floor.
slowdelay=${SLOW_DELAY_MS:-50}; slowmbit=${SLOW_MBIT:-100}
slow=127.0.0.1:$((port + 5)); slowpid=; slowurls=; slown=1
if uses slow; then
  python3 "$shared/netshape.py" --listen "$slow" --upstream "$reg" \
    --delay-ms "$slowdelay" --rate-mbit "$slowmbit" 2> "$W/netshape.log" & pxpids+=($!); slowpid=$!
  for _ in $(seq 100); do curl -fs "http://$slow/v2/" >/dev/null && break; sleep 0.1; done
  curl -fs "http://$slow/v2/" >/dev/null || { echo "netshape.py did not start on $slow; see $W/netshape.log" >&2; exit 1; }
  slowurls=$(curl -fs -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' "http://$reg/v2/bench/debian/manifests/layered" \
    | jq -r --arg r "http://$slow/v2/bench/debian/blobs/" '.config.digest, .layers[].digest | "-o /dev/null " + $r + .' | paste -sd' ')
  slown=$(wc -w <<<"$slowurls"); slown=$((slown / 3))
fi
# cpu_s PID: the CPU seconds (user + system) the process has used so far.
cpu_s() { [[ -n ${1:-} && -r /proc/$1/stat ]] && awk -v t="$(getconf CLK_TCK)" '{sub(/.*\) /, ""); printf "%.2f", ($12 + $13) / t}' "/proc/$1/stat" || echo -; }
# The proxies' peak RSS (VmHWM), MB, before they are stopped.
proxy_rss() { [[ -n ${1:-} && -r /proc/$1/status ]] && awk '/VmHWM/{printf "%.0f", $2/1024}' "/proc/$1/status" || echo -; }

# name|command run in an emptied $W/out (the command may use $OUT)
tasks=(
  "tar.ours|$ours --insecure process $src tar://image.tar"
  "tar.ours-compressed|$ours --insecure process $src 'tar://image.tar?layers=compressed'"
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
  "floor.curl-blobs|curl -fsS -Z --parallel-immediate --parallel-max $nblobs $fetchall"
  "floor.curl-pigz-sha256|sh -c 'for u in $urls; do curl -fs \$u | pigz -dc | sha256sum >/dev/null; done'"
  "single10m.ours|$ours --insecure process registry://$reg/bench/single:10m tar://s.tar"
  "single1g.ours|$ours --insecure process registry://$reg/bench/single:1g tar://s.tar"
  "layers40.ours|$ours --insecure process registry://$reg/bench/many:40x1m tar://m.tar"
  "layers40.one-layer|$ours --insecure process registry://$reg/bench/many:1x40m tar://m.tar"
  "layers40.floor-curl|curl -fsS -Z --parallel-max 4 $many"
  "single1g.floor|sh -c 'curl -fs http://$reg/v2/bench/single/blobs/$big | pigz -dc | sha256sum >/dev/null'"
  "store1st.ours|$ours --insecure process $src 'dir://store?unique_names=true'"
  "store2nd.ours|sh -c '$ours --insecure process $src dir://store?unique_names=true >/dev/null 2>&1; /usr/bin/time -f \"%e %M\" -o $W/t2 $ours --insecure process registry://$reg/bench/debian:v2 dir://store?unique_names=true'"
  "copy1st.ours|$ours --insecure process $src registry://$dst/bench/copy1st:layered"
  "copy1st.skopeo|skopeo copy -q --src-tls-verify=false --dest-tls-verify=false docker://$reg/$img docker://$dst/bench/copy1st:layered"
  "copy1st.python|$py --insecure process $src registry://$dst/bench/copy1st:layered"
  "copy1st.floor-curl|$pushfloor $dst bench/copy1st layered $W/blobs"
  "copy2nd.ours|$ours --insecure process $src registry://$dst/bench/copy2nd:layered"
  "copy2nd.skopeo|skopeo copy -q --src-tls-verify=false --dest-tls-verify=false docker://$reg/$img docker://$dst/bench/copy2nd:layered"
  "copy2nd.python|$py --insecure process $src registry://$dst/bench/copy2nd:layered"
  "tar2reg.ours|$ours --insecure process tar://$srctar registry://$dst/bench/tar2reg:layered"
  "tar2reg.skopeo|skopeo copy -q --dest-tls-verify=false docker-archive:$srctar docker://$dst/bench/tar2reg:layered"
  "tar2reg.python|$py --insecure process tar://$srctar registry://$dst/bench/tar2reg:layered"
  "proxypush.skopeo-via-proxy|skopeo copy -q --src-tls-verify=false --dest-tls-verify=false docker://$reg/$img docker://$pxpush/bench/proxypush:layered"
  "proxypush.process|$ours --insecure process $src registry://$dst/bench/proxypush:layered -f normalize-timestamps"
  "proxyhit.via-proxy|$ours --insecure process registry://$pxpull/$img tar://image.tar"
  "proxyhit.direct|$ours --insecure process registry://$dst/cache/$img tar://image.tar"
  "mirrorcold.ours|$ours --insecure -O json mirror $W/mirror-cold.yaml -J $mimages -j $mlayers > report.json"
  "mirrorcold.skopeo|skopeo sync --src yaml --dest docker --dest-tls-verify=false $W/sync.yaml $dst/dst"
  "mirrorwarm.ours|$ours --insecure -O json mirror $W/mirror-warm.yaml -J $mimages -j $mlayers > report.json"
  "mirrorwarm.skopeo|skopeo sync --src yaml --dest docker --dest-tls-verify=false $W/sync.yaml $wdst/dst"
  "engine.ours|$ours --temp-dir . process 'docker://$eimg?socket=$sock' tar://image.tar"
  "engine.dockerpush|$ours --temp-dir . process 'dockerpush://$eimg?socket=$sock' tar://image.tar"
  "engine.podman-save+ours|sh -c '$podmansh save -q -o s.tar $eimg && $ours process tar://s.tar tar://image.tar'"
  "engine.python|$py process 'docker://$eimg?socket=$sock' tar://image.tar"
  "slow.ours|$ours --insecure process registry://$slow/$img tar://image.tar"
  "slow.skopeo|skopeo copy -q --src-tls-verify=false docker://$slow/$img docker-archive:image.tar:$img"
  "slow.floor-curl|curl -fsS -Z --parallel-immediate --parallel-max $slown $slowurls"
)
if [[ -n $sel ]]; then
  kept=()
  for t in "${tasks[@]}"; do selected "${t%%|*}" && kept+=("$t"); done
  for p in "${picked[@]}"; do
    hit=; for t in "${tasks[@]}"; do n=${t%%|*}; [[ $p == "$n" || $p == "${n%%.*}" ]] && hit=1; done
    [[ -n $hit ]] || { echo "TASKS: no task or group named '$p'; tasks: $(for t in "${tasks[@]}"; do printf '%s ' "${t%%|*}"; done)" >&2; exit 2; }
  done
  tasks=("${kept[@]}")
fi
# With BASE, each of our rows gets a twin run by the earlier build, right after
# it; even runs swap each pair, so that neither build always runs straight
# after another tool's output was deleted (on tmpfs that tail lands on the
# next writer: 1.9-3.3 s against 1.7 s for expand, seen 2026-12-03).
if [[ -n $basebin ]]; then
  twinned=()
  for t in "${tasks[@]}"; do
    twinned+=("$t"); name=${t%%|*}
    [[ $name == *.ours ]] && twinned+=("${name%.ours}.base|${t#*|}")
  done
  tasks=("${twinned[@]}")
fi

# --- copy rows: the destination's state before a run, and the check after it
accept="$v2accept,application/vnd.oci.image.manifest.v1+json,application/vnd.docker.distribution.manifest.list.v2+json,application/vnd.oci.image.index.v1+json"
# The destination emptied, so that a "first" copy finds no blob of the image
# anywhere in it (not even under another repository to mount from).
wipe_dst() {
  "$shared/registry.sh" stop "$dregdir" "$port2" >/dev/null
  rm -rf "$dregdir/storage"
  "$shared/registry.sh" start "$dregdir" "$port2" >/dev/null
}
# digest_of HOST REPO TAG: the manifest digest the tag names (empty if none).
digest_of() {
  curl -fsI -H "Accept: $v2accept" "http://$1/v2/$2/manifests/$3" 2>/dev/null \
    | tr -d '\r' | awk -F': ' 'tolower($1)=="docker-content-digest"{print $2}'
}
srcdigest=$(digest_of "$reg" bench/debian layered || true)
# prepare NAME: untimed set-up before a run of the task.
prepare() {
  case ${1%%.*} in
    copy1st|tar2reg|proxypush|mirrorcold) wipe_dst ;;
    # A hit: the proxy holds the tag (a pull through it, untimed, if a wipe
    # emptied the cache).
    proxyhit)
      [[ -n $(digest_of "$dst" cache/bench/debian layered) ]] ||
        "$ours" --insecure process "registry://$pxpull/$img" tar://"$W/warm.tar" >/dev/null 2>&1
      rm -f "$W/warm.tar" ;;
    copy2nd)
      [[ $(digest_of "$dst" bench/copy2nd layered) == "$srcdigest" ]] ||
        skopeo copy -q --src-tls-verify=false --dest-tls-verify=false "docker://$reg/$img" "docker://$dst/bench/copy2nd:layered" ;;
  esac
}
# landed NAME: after a copy row, does the destination hold its tag's manifest
# and every blob that manifest names? (No check for the other rows.)
landed() {
  local g=${1%%.*} m d h r t want
  if [[ $g == mirrorcold || $g == mirrorwarm ]]; then
    h=$dst; [[ $g == mirrorwarm ]] && h=$wdst
    while read -r r t want; do
      [[ $(curl -fsI -H "Accept: $accept" "http://$h/v2/dst/$r/manifests/$t" | tr -d '\r' \
           | awk -F': ' 'tolower($1)=="docker-content-digest"{print $2}') == "$want" ]] || return 1
    done < "$W/mseed.digests"
    return 0
  fi
  [[ $1 =~ ^(copy1st|copy2nd|tar2reg|proxypush)\.(ours|base|skopeo|python|floor-curl|skopeo-via-proxy|process)$ ]] || return 0
  m=$(curl -fs -H "Accept: $accept" "http://$dst/v2/bench/$g/manifests/layered") || return 1
  for d in $(jq -r '(.config.digest // empty), (.layers // [] | .[].digest)' <<<"$m"); do
    curl -fsI "http://$dst/v2/bench/$g/blobs/$d" >/dev/null || return 1
  done
}
# A build that cannot push to a registry (before registry:// was a
# destination) gets its copy rows skipped, with the reason in the table.
declare -A skip=()
probe_push() {  # probe_push BIN SUFFIX
  local why= probed= t n
  for t in "${tasks[@]}"; do
    n=${t%%|*}; case $n in copy1st.$2|copy2nd.$2|tar2reg.$2) ;; *) continue ;; esac
    if [[ -z $probed ]]; then
      probed=1
      "$1" --insecure process "$src" "registry://$dst/bench/probe:layered" > "$W/probe.log" 2>&1 ||
        why="skipped, this build cannot copy to a registry: $(grep -m1 -v '^\s*$' "$W/probe.log" | tr -d '|' | cut -c1-100)"
      [[ -n $why ]] && echo "$n and the other copy rows of $1: $why" >&2
    fi
    [[ -n $why ]] && skip[$n]=$why
  done
  return 0
}
if uses copy1st || uses copy2nd || uses tar2reg; then
  probe_push "$ours" ours
  [[ -n $basebin ]] && probe_push "$basebin" base
fi

: > "$W/res"; : > "$W/reqs"
# order R: the task list of run R (each ours/base pair swapped on even runs).
order() {
  local i=0 n=${#tasks[@]}
  while ((i < n)); do
    if (($1 % 2 == 0)) && ((i + 1 < n)) && [[ ${tasks[i]%%|*} == *.ours && ${tasks[i+1]%%|*} == *.base ]]; then
      printf '%s\n' "${tasks[i+1]}" "${tasks[i]}"; i=$((i + 2))
    else printf '%s\n' "${tasks[i]}"; i=$((i + 1)); fi
  done
}
for r in $(seq "$runs"); do
  mapfile -t run_tasks < <(order "$r")
  for t in "${run_tasks[@]}"; do
    name=${t%%|*}; cmd=${t#*|}
    [[ -n ${skip[$name]:-} ]] && continue
    [[ $name =~ ^(copy1st|copy2nd|tar2reg)\.python$ ]] && ((r > pyruns)) && continue
    rm -rf "$W/out" "$W/t2"; mkdir -p "$W/out"; prepare "$name"; sync
    [[ $name == *.base ]] && cmd=${cmd//$ours/$basebin}
    if [[ $name == mirrorwarm.* ]]; then
      s0=$(requests_in "$regdir/registry.log"); d0=$(requests_in "$wregdir/registry.log"); c0=$(registries_cpu)
    fi
    rc=0; (cd "$W/out" && /usr/bin/time -f '%e %M' -o "$W/t" bash -c "$cmd" > "$W/last.log" 2>&1) || rc=$?
    # Counted before the check below, whose own HEADs are not the tool's.
    if [[ $name == mirrorwarm.* ]]; then
      echo "$name $(( $(requests_in "$regdir/registry.log") - s0 )) $(( $(requests_in "$wregdir/registry.log") - d0 )) $(awk -v a="$(registries_cpu)" -v b="$c0" 'BEGIN{printf "%.2f", a-b}')" >> "$W/reqs"
    fi
    # A copy that exits 0 without the image in the destination is a failure.
    ((rc == 0)) && ! landed "$name" && rc=97
    # For the second-tag row only the second pull counts.
    [[ -f $W/t2 ]] && cp "$W/t2" "$W/t"
    # An earlier build that lacks the command (a usage error) is not timed again.
    if [[ $name == *.base ]] && ((rc == 2)); then
      skip[$name]="skipped, this build cannot do it: $(grep -m1 -v '^\s*$' "$W/last.log" | tr -d '|' | cut -c1-100)"
    fi
    echo "$name $(tail -n1 "$W/t") $rc" >> "$W/res"
    echo "run $r: $name $(tail -n1 "$W/t") rc=$rc" >&2
    ((rc == 0)) || echo "  $(tail -n3 "$W/last.log" | cut -c1-200)" >&2
  done
done

med() { awk -v n="$1" -v f="$2" '$1==n {print $f}' "$W/res" | sort -n | awk '{a[NR]=$1} END{if (NR) print a[int((NR+1)/2)]; else print "-"}'; }
rss() { local k; k=$(med "$1" 3); [[ $k == - ]] && echo - || awk -v k="$k" 'BEGIN{printf "%.0f", k/1024}'; }
rcs() { awk -v n="$1" '$1==n {print $4}' "$W/res" | sort -u | paste -sd,; }
ratio() { awk -v a="$(med "$1" 2)" -v b="$(med "$2" 2)" 'BEGIN{ if (a+0>0 && b+0>0) printf "%.2fx", a/b; else print "-" }'; }
row() {
  if [[ -n ${skip[$1]:-} ]]; then printf '| %s | %s | - | - |\n' "$1" "${skip[$1]}"
  elif [[ $(med "$1" 2) == - ]]; then printf '| %s | not run | - | - |\n' "$1"
  else printf '| %s | %s | %s | %s |\n' "$1" "$(med "$1" 2)" "$(rss "$1")" "$(rcs "$1")"; fi
}
has() { local t; for t in "${tasks[@]}"; do [[ ${t%%|*} == "$1" ]] && return 0; done; return 1; }
# rl LABEL OTHER OURS: a ratio line, when both rows were selected.
rl() { has "$2" && has "$3" && echo "| $1 | $(ratio "$2" "$3") |"; return 0; }

{
  echo "# occystrap benchmark ($(date -u +%FT%TZ))"
  echo
  echo "Host: $(nproc) cores, $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo). Image \`$img\` on a loopback registry."
  echo "Tools: occystrap ${OURS:+binary $OURS, not }$(cd "$repo" && git rev-parse --short HEAD), Python occystrap 0.4.17, $(skopeo --version), umoci $(umoci --version | awk '{print $3}')."
  [[ -n $basebin ]] && echo "Earlier build (the .base rows): $base_desc."
  echo "Outputs on $W; the source registry's storage in $regdir. $runs interleaved runs, medians."
  if uses copy1st || uses copy2nd || uses tar2reg; then
    echo "Copy rows: to a second loopback registry, emptied (stopped, storage deleted, restarted) before every copy1st and tar2reg run; copy2nd into a repository already holding the image. Python copy rows: $((pyruns < runs ? pyruns : runs)) run(s) (PY_COPY_RUNS). Exit code 97: the tool exited 0 but the destination lacks the manifest or a blob."
  fi
  if uses slow; then
    echo "Slow rows: the source registry behind bench/netshape.py, +$slowdelay ms a round trip ($(awk -v d="$slowdelay" 'BEGIN{print d/2}') ms each way; a new connection's first bytes wait one round trip more, its handshake) and $slowmbit Mbit/s a connection each direction; the proxy used $(cpu_s "$slowpid") s of CPU in all."
  fi
  echo
  echo "| task | median wall s | median peak RSS MB | exit codes |"
  echo "|---|---|---|---|"
  for t in "${tasks[@]}"; do row "${t%%|*}"; done
  echo
  echo "| ratio (time of the other / ours; >1 means we are faster) | value |"
  echo "|---|---|"
  rl "registry -> tar: skopeo / ours" tar.skopeo tar.ours
  rl "registry -> tar: Python occystrap / ours" tar.python tar.ours
  rl "registry -> tar, layers=compressed: Python occystrap / ours (target >= 8)" tar.python tar.ours-compressed
  rl "registry -> rootfs: skopeo + umoci / ours dir://?expand=true" expand.skopeo+umoci expand.ours
  rl "registry -> rootfs: skopeo + umoci / ours oci://" expand.skopeo+umoci oci.ours
  rl "registry -> rootfs: Python dir://?expand=true / ours" expand.python expand.ours
  rl "ours dir://?expand=true / tar -x of decompressed layers (target <= 1.5)" expand.ours floor.tar-x
  rl "ours oci:// / tar -x of decompressed layers (target <= 1.5)" oci.ours floor.tar-x
  rl "ours layers=compressed / curl of every blob at once into files (no hashing)" tar.ours-compressed floor.curl-blobs
  rl "Python occystrap tarball / curl of every blob at once: the most layers=compressed can be (target >= 8)" tar.python floor.curl-blobs
  rl "search: Python / ours" search.python search.ours
  rl "1 GiB layer: ours / curl + pigz -dc + sha256sum (target <= 1.5)" single1g.ours single1g.floor
  if has single1g.ours && has single10m.ours; then
    echo "| peak RSS 1 GiB layer / 10 MiB layer | $(awk -v a="$(med single1g.ours 3)" -v b="$(med single10m.ours 3)" 'BEGIN{ if (b+0>0) printf "%.2f", a/b; else print "-" }') |"
  fi
  if has layers40.ours && has layers40.one-layer; then
    echo "| 40 layers of 1 MiB against one of 40 MiB: cost of a layer beyond its bytes, the registry's included | $(awk -v a="$(med layers40.ours 2)" -v b="$(med layers40.one-layer 2)" 'BEGIN{ if (a+0>0 && b+0>0) printf "%.1f ms", (a-b)*1000/39; else print "-" }') |"
  fi
  if has layers40.ours && has layers40.floor-curl; then
    echo "| 40 layers of 1 MiB: ours beyond curl fetching the same blobs 4 at a time, a layer (target < 5 ms) | $(awk -v a="$(med layers40.ours 2)" -v b="$(med layers40.floor-curl 2)" 'BEGIN{ if (a+0>0 && b+0>0) printf "%.1f ms", (a-b)*1000/40; else print "-" }') |"
  fi
  if has store2nd.ours && has store1st.ours; then
    echo "| second tag into a store sharing 3 of 4 layers / first pull into an empty store | $(awk -v a="$(med store2nd.ours 2)" -v b="$(med store1st.ours 2)" 'BEGIN{ if (b+0>0) printf "%.2f", a/b; else print "-" }') |"
  fi
  rl "registry -> registry, first copy: skopeo / ours (target >= 3)" copy1st.skopeo copy1st.ours
  rl "registry -> registry, first copy: Python occystrap / ours" copy1st.python copy1st.ours
  rl "registry -> registry, repeat copy: skopeo / ours (target >= 1)" copy2nd.skopeo copy2nd.ours
  rl "registry -> registry, repeat copy: Python occystrap / ours" copy2nd.python copy2nd.ours
  rl "docker-save tar -> registry: skopeo / ours (target >= 3)" tar2reg.skopeo tar2reg.ours
  rl "docker-save tar -> registry: Python occystrap / ours" tar2reg.python tar2reg.ours
  rl "first copy: curl PUT of the blobs from local disk / ours (the registry's own cost; <= 1)" copy1st.floor-curl copy1st.ours
  for n in copy1st copy2nd tar2reg; do
    if has $n.ours; then echo "| peak RSS of ours, $n (target < 64 MB) | $(rss $n.ours) MB |"; fi
  done
  rl "skopeo push through the filtering proxy / occystrap process with the same filter (target <= 1.5)" proxypush.skopeo-via-proxy proxypush.process
  rl "pull-through hit / the same pull from downstream directly (target <= 1.2)" proxyhit.via-proxy proxyhit.direct
  rl "mirror, cold (30 repositories x 3 tags into an empty registry): skopeo sync / ours (target >= 3)" mirrorcold.skopeo mirrorcold.ours
  rl "mirror, warm no-op: skopeo sync / ours (target >= 10)" mirrorwarm.skopeo mirrorwarm.ours
  for n in mirrorcold mirrorwarm; do
    if has $n.ours; then echo "| peak RSS of ours, $n (target < 128 MB) | $(rss $n.ours) MB |"; fi
  done
  if uses mirrorwarm; then
    ntags=$(wc -l < "$W/mseed.list")
    # reqs TOOL FIELD: the median request count of TOOL's warm runs (2: source, 3: destination).
    reqs() { awk -v n="mirrorwarm.$1" -v f="$2" '$1==n {print $f}' "$W/reqs" | sort -n | awk '{a[NR]=$1} END{if (NR) print a[int((NR+1)/2)]; else print "-"}'; }
    for tool in ours skopeo; do
      has mirrorwarm.$tool || continue
      s=$(reqs $tool 2); d=$(reqs $tool 3)
      echo "| warm requests, $tool: source + destination ($ntags tags; target for ours <= 2 a tag) | $s + $d = $((s + d)) ($(awk -v a=$((s + d)) -v b="$ntags" 'BEGIN{printf "%.2f", a/b}') a tag) |"
    done
    if has mirrorwarm.ours; then
      c=$(reqs ours 4)
      echo "| warm run of ours: CPU of the two registries answering it, and that over $(nproc) cores (a floor for its time) | $c s, $(awk -v c="$c" -v n="$(nproc)" 'BEGIN{printf "%.3f", c/n}') s |"
    fi
    if has mirrorwarm.ours && has mirrorwarm.skopeo; then
      echo "| warm requests: skopeo sync / ours | $(awk -v a=$(( $(reqs skopeo 2) + $(reqs skopeo 3) )) -v b=$(( $(reqs ours 2) + $(reqs ours 3) )) 'BEGIN{ if (b>0) printf "%.2fx", a/b; else print "-" }') |"
    fi
  fi
  rl "engine -> tar: podman save to a file + process tar:// / ours docker:// (target >= 2)" engine.podman-save+ours engine.ours
  rl "engine -> tar: podman save to a file + process tar:// / ours dockerpush://" engine.podman-save+ours engine.dockerpush
  rl "engine -> tar: Python docker:// / ours docker://" engine.python engine.ours
  rl "slow registry ($slowdelay ms, $slowmbit Mbit/s a connection) -> tar: skopeo / ours (target >= 2)" slow.skopeo slow.ours
  rl "slow registry: curl of every blob at once, one connection each / ours" slow.floor-curl slow.ours
  if uses proxypush; then echo "| peak RSS of the push proxy | $(proxy_rss "$pushpid") MB |"; fi
  if uses proxyhit; then echo "| peak RSS of the pull-through proxy | $(proxy_rss "$pullpid") MB |"; fi
  if [[ -n $basebin ]]; then
    echo
    echo "| this build against the earlier one (time of earlier / this; >1 means faster now) | time | peak RSS this / earlier |"
    echo "|---|---|---|"
    for t in "${tasks[@]}"; do
      n=${t%%|*}; [[ $n == *.ours ]] || continue
      [[ -n ${skip[${n%.ours}.base]:-} ]] && { printf '| %s | - | - |\n' "${n%.ours}"; continue; }
      printf '| %s | %s | %s |\n' "${n%.ours}" "$(ratio "${n%.ours}.base" "$n")" \
        "$(awk -v a="$(med "$n" 3)" -v b="$(med "${n%.ours}.base" 3)" 'BEGIN{ if (a+0>0 && b+0>0) printf "%.2f", a/b; else print "-" }')"
    done
  fi
} > "$md"
cat "$md"
