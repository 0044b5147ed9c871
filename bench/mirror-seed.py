#!/usr/bin/env python3
"""Writes the mirror rows' images into one OCI layout, deterministically.

  mirror-seed.py DIR REPOS TAGS

REPOS x TAGS small images sharing base layers: every image has the one
2 MiB base layer, one of three 512 KiB middle layers (by repository), and a
16 KiB top layer of its own. Tag i of repository n is named
`repoNN-tI` in DIR's index.json; each `repoNN tI` pair is printed on a line,
for the caller to push as src/repoNN:tI.
"""
import gzip, hashlib, io, json, os, sys, tarfile

OCI = "application/vnd.oci.image."


def stream(seed, size):
    """Incompressible, deterministic bytes: a SHA-256 counter stream."""
    out = bytearray()
    i = 0
    while len(out) < size:
        out += hashlib.sha256(b"%s-%d" % (seed.encode(), i)).digest()
        i += 1
    return bytes(out[:size])


def layer(name, data):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
        ti = tarfile.TarInfo(name)
        ti.size, ti.mtime, ti.mode = len(data), 1700000000, 0o644
        t.addfile(ti, io.BytesIO(data))
    raw = buf.getvalue()
    return raw, gzip.compress(raw, 1, mtime=0)


def main():
    d, repos, tags = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    os.makedirs(f"{d}/blobs/sha256", exist_ok=True)

    def put(b):
        h = hashlib.sha256(b).hexdigest()
        p = f"{d}/blobs/sha256/{h}"
        if not os.path.exists(p):
            open(p, "wb").write(b)
        return "sha256:" + h

    base = layer("base.bin", stream("base", 2 << 20))
    middles = [layer(f"mid{k}.bin", stream(f"mid{k}", 512 << 10)) for k in range(3)]
    manifests = []
    for n in range(repos):
        for i in range(tags):
            repo, tag = f"repo{n:02d}", f"t{i}"
            top = layer("top.bin", stream(f"{repo}:{tag}", 16 << 10))
            ls = [base, middles[n % 3], top]
            cfg = json.dumps({
                "architecture": "amd64", "os": "linux", "config": {},
                "created": f"2025-01-{i + 1:02d}T00:00:00Z",
                "rootfs": {"type": "layers",
                           "diff_ids": ["sha256:" + hashlib.sha256(r).hexdigest() for r, _ in ls]},
                "history": [{"created_by": f"{repo}:{tag}"}],
            }, sort_keys=True).encode()
            man = json.dumps({
                "schemaVersion": 2, "mediaType": OCI + "manifest.v1+json",
                "config": {"mediaType": OCI + "config.v1+json", "digest": put(cfg), "size": len(cfg)},
                "layers": [{"mediaType": OCI + "layer.v1.tar+gzip", "digest": put(gz), "size": len(gz)}
                           for _, gz in ls],
            }, sort_keys=True).encode()
            manifests.append({"mediaType": OCI + "manifest.v1+json", "digest": put(man),
                              "size": len(man),
                              "annotations": {"org.opencontainers.image.ref.name": f"{repo}-{tag}"}})
            print(repo, tag)
    json.dump({"schemaVersion": 2, "manifests": manifests}, open(f"{d}/index.json", "w"))
    open(f"{d}/oci-layout", "w").write('{"imageLayoutVersion":"1.0.0"}')


main()
