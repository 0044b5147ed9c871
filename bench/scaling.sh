#!/usr/bin/env bash
# occystrap scaling benchmark: how time and peak RSS grow with layer size, with
# file count and with -j, with skopeo, skopeo + umoci and the Python occystrap
# 0.4.17 on the same images. Runs are interleaved (run 1 of every row, then
# run 2, ...) so drift on a shared machine hits every tool alike; medians are
# reported. Not part of the test suite.
#
#   bench/scaling.sh            # RUNS=3 PORT=5125 BENCH_DIR=/dev/shm/occy-scaling
#   QUICK=1 RUNS=1 bench/scaling.sh   # drops the 1 GiB and 200k-file rows
#
# OCCY=/path/to/occystrap skips `cargo build` and times that binary instead.
# TASK_TIMEOUT (s, default 1800) bounds each run so a stuck peer shows up as
# rc=124 in the table instead of hanging the benchmark.
# Built images are cached in SCALING_DATA (default /tmp/bench-data/scaling):
# the 1 GiB and 200k-file layers take minutes to make and never change.
# Writes bench/scaling.md (SCALING_MD= to change) and prints it.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
shared=$repo/bench
runs=${RUNS:-3}; port=${PORT:-5125}; reg=127.0.0.1:$port; quick=${QUICK:-0}
W=${BENCH_DIR:-/dev/shm/occy-scaling}; md=${SCALING_MD:-$repo/bench/scaling.md}
data=${SCALING_DATA:-/tmp/bench-data/scaling}; tmo=${TASK_TIMEOUT:-1800}
venv=${PY_VENV:-/tmp/bench-venv}

need=()
for p in docker-registry skopeo umoci pigz jq debootstrap curl openssl; do
  command -v "$p" >/dev/null || need+=("$p")
done
if ((${#need[@]})); then
  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" </dev/null
fi
[[ -x $venv/bin/occystrap ]] || { python3 -m venv "$venv" && "$venv/bin/pip" install -q occystrap==0.4.17; }
py=$venv/bin/occystrap
[[ -n ${OCCY:-} ]] || (cd "$repo" && cargo build --release -q)

rm -rf "$W"; mkdir -p "$W" "$data"
# A private copy, so a rebuild during the (long) run cannot mix two versions.
cp "${OCCY:-$repo/target/release/occystrap}" "$W/occystrap"; ours=$W/occystrap
regdir=$W/registry
"$shared/registry.sh" start "$regdir" "$port" >/dev/null
trap '"$shared/registry.sh" stop "$regdir" "$port" >/dev/null 2>&1 || true; rm -rf "$W"' EXIT

sizes=(10m 100m 1g); counts=(1k 20k 200k)
((quick)) && { sizes=(10m 100m); counts=(1k 20k); }

# build NAME TAG LAYER... writes a deterministic one-manifest OCI layout to
# $data/NAME-TAG (once). LAYER is big:BYTES (one incompressible file, pigz -1,
# like run.sh's single images) or files:COUNT (small files, pigz -6).
build() {
  local dir=$data/${1//\//_}-$2
  [[ -f $dir/done ]] || python3 - "$dir" "$@" <<'PY'
import hashlib, json, os, random, shutil, subprocess, sys, tarfile, io
d, name, tag, specs = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
shutil.rmtree(d, ignore_errors=True); os.makedirs(f"{d}/blobs/sha256")
MT = 1700000000  # fixed mtime: same bytes, same digests, every build
def put(b):
    h = hashlib.sha256(b).hexdigest(); open(f"{d}/blobs/sha256/{h}", "wb").write(b); return h
class Tee:  # hash the uncompressed tar (the diff_id) on its way into pigz
    def __init__(s, f): s.f, s.h = f, hashlib.sha256()
    def write(s, b): s.h.update(b); s.f.write(b); return len(b)
layers, diffs = [], []
for i, spec in enumerate(specs):
    kind, n = spec.split(":"); n = int(n); gz = f"{d}/layer.gz"
    # -n: no name/mtime in the gzip header, or the digest would change per build
    p = subprocess.Popen(["pigz", "-1" if kind == "big" else "-6", "-n", "-c"],
                         stdin=subprocess.PIPE, stdout=open(gz, "wb"))
    tee = Tee(p.stdin); t = tarfile.open(fileobj=tee, mode="w|", format=tarfile.PAX_FORMAT)
    def entry(path, size=0, kind=tarfile.REGTYPE, mode=0o644):
        ti = tarfile.TarInfo(path); ti.size, ti.type, ti.mode, ti.mtime = size, kind, mode, MT; return ti
    if kind == "big":  # AES-CTR keystream with a fixed key: fast, incompressible, reproducible
        ks = subprocess.Popen(f"head -c {n} /dev/zero | openssl enc -aes-256-ctr -nosalt -pbkdf2 "
                              f"-pass pass:occystrap-scale-{i}", shell=True, stdout=subprocess.PIPE)
        t.addfile(entry(f"big{i}.bin", n), ks.stdout); ks.wait()
    else:  # d###/s#/f##.bin: at most 1000 entries in any directory
        rnd, seen = random.Random(f"{n}-{i}"), set()
        for j in range(n):
            for dd in (f"l{i}", f"l{i}/d{j // 1000:03}", f"l{i}/d{j // 1000:03}/s{j // 100 % 10}"):
                if dd not in seen: seen.add(dd); t.addfile(entry(dd, kind=tarfile.DIRTYPE, mode=0o755))
            b = rnd.randbytes(rnd.randrange(100, 1001))
            t.addfile(entry(f"l{i}/d{j // 1000:03}/s{j // 100 % 10}/f{j % 100:02}.bin", len(b)), io.BytesIO(b))
    t.close(); p.stdin.close(); assert p.wait() == 0
    dig = subprocess.check_output(["sha256sum", gz]).split()[0].decode()
    os.rename(gz, f"{d}/blobs/sha256/{dig}"); diffs.append("sha256:" + tee.h.hexdigest())
    layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": "sha256:" + dig,
                   "size": os.path.getsize(f"{d}/blobs/sha256/{dig}")})
cfg = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                  "rootfs": {"type": "layers", "diff_ids": diffs},
                  "history": [{"created_by": s} for s in specs]}).encode()
man = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:" + put(cfg), "size": len(cfg)},
    "layers": layers}).encode()
json.dump({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
    "digest": "sha256:" + put(man), "size": len(man), "annotations": {"org.opencontainers.image.ref.name": tag}}]},
    open(f"{d}/index.json", "w"))
open(f"{d}/oci-layout", "w").write('{"imageLayoutVersion":"1.0.0"}'); open(f"{d}/done", "w").close()
PY
  skopeo copy -q --dest-tls-verify=false "oci:$dir:$2" "docker://$reg/$1:$2"
}
declare -A bytes=([10m]=$((10 << 20)) [100m]=$((100 << 20)) [1g]=$((1 << 30)))
declare -A nfiles=([1k]=1000 [20k]=20000 [200k]=200000)
for s in "${sizes[@]}"; do build scale/size "$s" "big:${bytes[$s]}"; done
for c in "${counts[@]}"; do build scale/files "$c" "files:${nfiles[$c]}"; done
# -j rows want several layers of mixed content; the shared image is the
# realistic one, our own mix only stands in when it cannot be built here.
jimg=bench/debian:layered
if ! "$shared/make-images.sh" "$port" > "$W/make-images.log" 2>&1; then
  echo "make-images.sh failed (see above); using scale/mixed:4l for the -j rows" >&2
  tail -n5 "$W/make-images.log" >&2
  jimg=scale/mixed:4l; build scale/mixed 4l files:5000 big:$((128 << 20)) files:20000 big:$((64 << 20))
fi

# name|command run in an emptied $W/out
tasks=()
for s in "${sizes[@]}"; do src="registry://$reg/scale/size:$s"; tasks+=(
  "size.$s.ours|$ours --insecure process $src tar://o.tar"
  "size.$s.python|$py --insecure process $src tar://o.tar"
  "size.$s.skopeo|skopeo copy -q --src-tls-verify=false docker://$reg/scale/size:$s docker-archive:o.tar:x")
done
for c in "${counts[@]}"; do src="registry://$reg/scale/files:$c"; tasks+=(
  "files.$c.oci|$ours --insecure process $src oci://bundle"
  "files.$c.expand|$ours --insecure process $src 'dir://d?expand=true'"
  "files.$c.python|$py --insecure process $src 'dir://d?expand=true'"
  "files.$c.umoci|sh -c 'skopeo copy -q --src-tls-verify=false docker://$reg/scale/files:$c oci:layout:t && umoci unpack --image layout:t bundle >/dev/null'")
done
for j in 1 2 4 8; do tasks+=(
  "j.$j.tar|$ours -j $j --insecure process registry://$reg/$jimg tar://o.tar"
  "j.$j.oci|$ours -j $j --insecure process registry://$reg/$jimg oci://bundle")
done
: > "$W/res"
for r in $(seq "$runs"); do
  for t in "${tasks[@]}"; do
    name=${t%%|*}; cmd=${t#*|}
    rm -rf "$W/out"; mkdir -p "$W/out"; sync
    rc=0; (cd "$W/out" && /usr/bin/time -f '%e %M' -o "$W/t" timeout "$tmo" bash -c "$cmd" > "$W/last.log" 2>&1) || rc=$?
    echo "$name $(tail -n1 "$W/t") $rc" >> "$W/res"
    echo "run $r: $name $(tail -n1 "$W/t") rc=$rc" >&2
    ((rc == 0)) || tail -n3 "$W/last.log" | sed 's/^/    /' >&2
  done
done

med() { awk -v n="$1" -v f="$2" '$1==n {print $f}' "$W/res" | sort -n | awk '{a[NR]=$1} END{if (NR) print a[int((NR+1)/2)]; else print "-"}'; }
bad() { awk -v n="$1" '$1==n && $4!=0 {print $4}' "$W/res" | sort -u | paste -sd,; }
# time and MB cells; a failed run is flagged in the cell, so its time is not read as a result
cells() { local b; b=$(bad "$1"); printf '%s%s | %s' "$(med "$1" 2)" "${b:+ (rc=$b)}" "$(awk -v k="$(med "$1" 3)" 'BEGIN{printf "%.0f", k/1024}')"; }
ratio() { [[ -z $(bad "$1")$(bad "$2") ]] || { echo -; return; }
  awk -v a="$(med "$1" 2)" -v b="$(med "$2" 2)" 'BEGIN{ if (a+0>0 && b+0>0) printf "%.2fx", a/b; else print "-" }'; }

{
  echo "# occystrap scaling benchmark ($(date -u +%FT%TZ))"
  echo
  echo "Host: $(nproc) cores, $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo). Loopback registry, outputs on $W."
  echo "Tools: ours $("$ours" --version) ($(cd "$repo" && git describe --always --dirty)), Python occystrap $("$venv/bin/pip" show occystrap 2>/dev/null | awk '/^Version/{print $2}'), $(skopeo --version), umoci $(umoci --version | awk '{print $3}')."
  echo "$runs interleaved runs, medians; s = wall seconds, MB = peak RSS. Ratios are peer time / our time (>1: we are faster)."
  echo
  echo "## Layer size (one incompressible file in one gzip -1 layer; registry -> docker-save tar)"
  echo
  echo "| layer size | ours s | ours MB | Python s | Python MB | skopeo s | skopeo MB | Python/ours | skopeo/ours |"
  echo "|---|---|---|---|---|---|---|---|---|"
  for s in "${sizes[@]}"; do
    printf '| %s | %s | %s | %s | %s | %s |\n' "$s" "$(cells "size.$s.ours")" "$(cells "size.$s.python")" \
      "$(cells "size.$s.skopeo")" "$(ratio "size.$s.python" "size.$s.ours")" "$(ratio "size.$s.skopeo" "size.$s.ours")"
  done
  echo
  echo "## File count (100-1000 B files in one gzip -6 layer; registry -> extracted rootfs)"
  echo
  echo "Python is compared with ours \`dir://?expand=true\` (same output); skopeo + umoci with ours \`oci://\` (both write a runtime bundle)."
  echo
  echo "| files | ours oci:// s | ours oci:// MB | ours expand s | ours expand MB | Python s | Python MB | skopeo+umoci s | skopeo+umoci MB | Python/ours | umoci/ours |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|"
  for c in "${counts[@]}"; do
    printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$c" "$(cells "files.$c.oci")" "$(cells "files.$c.expand")" \
      "$(cells "files.$c.python")" "$(cells "files.$c.umoci")" "$(ratio "files.$c.python" "files.$c.expand")" "$(ratio "files.$c.umoci" "files.$c.oci")"
  done
  echo
  echo "## Parallel layer downloads (\`-j N\`, ours only, 4-layer \`$jimg\`)"
  echo
  echo "| -j | tar:// s | tar:// MB | tar -j1/-jN | oci:// s | oci:// MB | oci -j1/-jN |"
  echo "|---|---|---|---|---|---|---|"
  for j in 1 2 4 8; do
    printf '| %s | %s | %s | %s | %s |\n' "$j" "$(cells "j.$j.tar")" "$(ratio j.1.tar "j.$j.tar")" "$(cells "j.$j.oci")" "$(ratio j.1.oci "j.$j.oci")"
  done
} > "$md"
cat "$md"
