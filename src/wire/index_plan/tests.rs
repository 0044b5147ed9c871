use serde_json::json;

use super::*;

fn digest_of(seed: &str) -> Digest {
    Digest::sha256_of(seed.as_bytes())
}

fn child(seed: &str, platform: Value) -> Value {
    json!({
        "mediaType": mt::OCI_MANIFEST,
        "digest": digest_of(seed).to_string(),
        "size": 100 + seed.len(),
        "platform": platform,
        "annotations": {"note": seed},
    })
}

fn plat(os: &str, arch: &str, variant: Option<&str>) -> Value {
    match variant {
        Some(v) => json!({"os": os, "architecture": arch, "variant": v}),
        None => json!({"os": os, "architecture": arch}),
    }
}

/// amd64, arm64/v8, arm/v7, and an attestation of the amd64 image.
fn index() -> Vec<u8> {
    let mut attestation = child("att", plat("unknown", "unknown", None));
    attestation["annotations"] = json!({
        "vnd.docker.reference.type": "attestation-manifest",
        "vnd.docker.reference.digest": digest_of("amd64").to_string(),
    });
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": mt::OCI_INDEX,
        "manifests": [
            child("amd64", plat("linux", "amd64", None)),
            child("arm64", plat("linux", "arm64", Some("v8"))),
            child("arm", plat("linux", "arm", Some("v7"))),
            attestation,
        ],
        "annotations": {"org.opencontainers.image.created": "2024-01-01T00:00:00Z"},
    }))
    .unwrap()
}

fn platforms(list: &str) -> Selection {
    Selection::parse_platforms(list).unwrap()
}

fn digests(d: &[Descriptor]) -> Vec<Digest> {
    d.iter().map(|d| d.digest.clone()).collect()
}

#[test]
fn parses_platform_lists() {
    let Selection::Platforms(p) = platforms("linux/amd64, linux/arm64/v8,linux/amd64") else {
        panic!("not a platform list");
    };
    assert_eq!(p.len(), 2, "duplicates are dropped");
    assert_eq!(p[0].to_string(), "linux/amd64");
    assert_eq!(p[1].variant.as_deref(), Some("v8"));
    for bad in [
        "",
        "linux",
        "linux/",
        "linux/arm/v7/x",
        "linux/amd64,",
        "li nux/amd64",
    ] {
        let e = Selection::parse_platforms(bad).unwrap_err();
        assert!(matches!(e, Error::Usage(_)), "{bad:?}: {e}");
    }
}

#[test]
fn all_takes_every_child_in_order() {
    let planned = plan_children(&index(), &Selection::All).unwrap();
    let kinds: Vec<ChildKind> = planned.iter().map(|c| c.kind).collect();
    assert_eq!(
        kinds,
        [
            ChildKind::Image,
            ChildKind::Image,
            ChildKind::Image,
            ChildKind::Attestation
        ]
    );
    assert_eq!(planned[3].attests, Some(digest_of("amd64")));
    assert_eq!(
        digests(&plan(&index(), &Selection::All).unwrap()),
        [
            digest_of("amd64"),
            digest_of("arm64"),
            digest_of("arm"),
            digest_of("att")
        ]
    );
}

#[test]
fn platforms_take_their_best_fit_and_its_attestation() {
    // Listed out of index order; arm64 without a variant means v8.
    let got = plan(&index(), &platforms("linux/arm64,linux/amd64")).unwrap();
    assert_eq!(
        digests(&got),
        [digest_of("amd64"), digest_of("arm64"), digest_of("att")]
    );
    let got = plan(&index(), &platforms("linux/arm/v7")).unwrap();
    assert_eq!(digests(&got), [digest_of("arm")]);
}

#[test]
fn a_missing_platform_is_named() {
    let e = plan(&index(), &platforms("linux/amd64,linux/s390x"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("linux/s390x"), "{e}");
    assert!(e.contains("linux/arm64/v8"), "offers are listed: {e}");
    // The attestation's unknown/unknown is not a platform one can ask for.
    assert!(plan(&index(), &platforms("unknown/unknown")).is_err());
}

#[test]
fn nested_indexes_refuse_all_and_are_passed_over_by_platforms() {
    let mut nested = child("nested", plat("linux", "ppc64le", None));
    nested["mediaType"] = json!(mt::OCI_INDEX);
    let raw = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [child("amd64", plat("linux", "amd64", None)), nested],
    }))
    .unwrap();
    let e = plan(&raw, &Selection::All).unwrap_err();
    assert!(matches!(e, Error::Unsupported(_)), "{e}");
    assert!(e.to_string().contains(&digest_of("nested").to_string()));
    let got = plan(&raw, &platforms("linux/amd64")).unwrap();
    assert_eq!(digests(&got), [digest_of("amd64")]);
    assert!(plan(&raw, &platforms("linux/ppc64le")).is_err());
}

fn index_with(manifests: Vec<Value>) -> Vec<u8> {
    serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": manifests})).unwrap()
}

#[test]
fn hostile_indexes_are_clean_errors() {
    let one = child("a", plat("linux", "amd64", None));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("not json", b"{\"schemaVersion\":2,".to_vec()),
        ("not an object", b"[1,2]".to_vec()),
        (
            "schema 1",
            br#"{"schemaVersion":1,"manifests":[]}"#.to_vec(),
        ),
        ("no list", br#"{"schemaVersion":2}"#.to_vec()),
        ("empty", index_with(vec![])),
        ("duplicate", index_with(vec![one.clone(), one.clone()])),
        ("too many", index_with(vec![one.clone(); MAX_CHILDREN + 1])),
        ("bad digest", {
            let mut c = one.clone();
            c["digest"] = json!("sha256:../../etc/passwd");
            index_with(vec![c])
        }),
        ("no digest", {
            let mut c = one.clone();
            c.as_object_mut().unwrap().remove("digest");
            index_with(vec![c])
        }),
        ("huge child", {
            let mut c = one.clone();
            c["size"] = json!(u64::MAX);
            index_with(vec![c])
        }),
        ("entry not an object", index_with(vec![json!("x")])),
        ("too big", {
            let mut c = one.clone();
            c["annotations"] = json!({"pad": "x".repeat(MAX_INDEX_BYTES)});
            index_with(vec![c])
        }),
    ];
    for (what, raw) in cases {
        for selection in [Selection::All, platforms("linux/amd64")] {
            assert!(plan(&raw, &selection).is_err(), "{what}: planned");
        }
        assert!(
            rebuild(&raw, mt::OCI_INDEX, &[]).is_err(),
            "{what}: rebuilt"
        );
    }
    let e = plan(&index_with(vec![one.clone(), one]), &Selection::All).unwrap_err();
    assert!(e.to_string().contains("more than once"), "{e}");
}

fn descriptors(raw: &[u8]) -> Vec<Descriptor> {
    plan(raw, &Selection::All).unwrap()
}

fn renamed(d: &Descriptor, seed: &str) -> Descriptor {
    Descriptor {
        digest: digest_of(seed),
        size: 7,
        ..d.clone()
    }
}

#[test]
fn an_unchanged_copy_keeps_the_index() {
    let raw = index();
    let pushed: Vec<(Descriptor, Descriptor)> = descriptors(&raw)
        .into_iter()
        .map(|d| (d.clone(), d))
        .collect();
    assert_eq!(rebuild(&raw, mt::OCI_INDEX, &pushed).unwrap(), None);
}

#[test]
fn a_subset_is_rebuilt_keeping_the_rest() {
    let raw = index();
    let chosen = plan(&raw, &platforms("linux/arm64,linux/amd64")).unwrap();
    let pushed: Vec<_> = chosen.iter().map(|d| (d.clone(), d.clone())).collect();
    let new = rebuild(&raw, mt::OCI_INDEX, &pushed).unwrap().unwrap();
    assert_eq!(new.media_type, mt::OCI_INDEX);
    let doc: Value = serde_json::from_slice(&new.raw).unwrap();
    let original: Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(doc["annotations"], original["annotations"]);
    assert_eq!(doc["schemaVersion"], 2);
    assert_eq!(doc["mediaType"], mt::OCI_INDEX);
    let list = doc["manifests"].as_array().unwrap();
    assert_eq!(list.len(), 3);
    for (i, orig) in [0, 1, 3].into_iter().enumerate() {
        assert_eq!(
            list[i], original["manifests"][orig],
            "entry {i} kept as it was"
        );
    }
    // Keys keep their order: the document reads as the original did.
    let keys: Vec<&String> = doc.as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        ["schemaVersion", "mediaType", "manifests", "annotations"]
    );
    // Deterministic.
    assert_eq!(
        rebuild(&raw, mt::OCI_INDEX, &pushed).unwrap().unwrap().raw,
        new.raw
    );
}

#[test]
fn new_digests_replace_old_and_orphaned_attestations_go() {
    let raw = index();
    let all = descriptors(&raw);
    // amd64 was filtered into new bytes; its attestation is about the old.
    let mut new_amd64 = renamed(&all[0], "amd64-filtered");
    new_amd64.media_type = mt::DOCKER_MANIFEST.into();
    let pushed = vec![
        (all[0].clone(), new_amd64),
        (all[1].clone(), all[1].clone()),
        (all[3].clone(), all[3].clone()),
    ];
    let new = rebuild(&raw, mt::OCI_INDEX, &pushed).unwrap().unwrap();
    let doc: Value = serde_json::from_slice(&new.raw).unwrap();
    let list = doc["manifests"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{doc}");
    assert_eq!(list[0]["digest"], digest_of("amd64-filtered").to_string());
    assert_eq!(list[0]["size"], 7);
    assert_eq!(list[0]["mediaType"], mt::DOCKER_MANIFEST);
    assert_eq!(list[0]["platform"]["architecture"], "amd64");
    assert_eq!(list[0]["annotations"]["note"], "amd64");
    assert_eq!(list[1]["digest"], all[1].digest.to_string());
}

#[test]
fn a_docker_list_of_oci_children_becomes_an_oci_index() {
    let mut c = child("a", plat("linux", "amd64", None));
    c["mediaType"] = json!(mt::DOCKER_MANIFEST);
    let raw = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": mt::DOCKER_MANIFEST_LIST,
        "manifests": [c],
    }))
    .unwrap();
    let old = descriptors(&raw).remove(0);
    let mut new = renamed(&old, "a-zstd");
    new.media_type = mt::OCI_MANIFEST.into();
    let got = rebuild(&raw, mt::DOCKER_MANIFEST_LIST, &[(old.clone(), new)])
        .unwrap()
        .unwrap();
    assert_eq!(got.media_type, mt::OCI_INDEX);
    let doc: Value = serde_json::from_slice(&got.raw).unwrap();
    assert_eq!(doc["mediaType"], mt::OCI_INDEX);
    // Docker children keep the Docker list.
    let new = renamed(&old, "a-filtered");
    let got = rebuild(&raw, mt::DOCKER_MANIFEST_LIST, &[(old, new)])
        .unwrap()
        .unwrap();
    assert_eq!(got.media_type, mt::DOCKER_MANIFEST_LIST);
}

#[test]
fn rebuild_refuses_what_is_not_in_the_index() {
    let raw = index();
    let stranger = renamed(&descriptors(&raw)[0], "stranger");
    assert!(rebuild(&raw, mt::OCI_INDEX, &[(stranger.clone(), stranger)]).is_err());
    assert!(rebuild(&raw, mt::OCI_INDEX, &[]).is_err(), "nothing copied");
    let d = descriptors(&raw).remove(0);
    assert!(rebuild(&raw, mt::OCI_MANIFEST, &[(d.clone(), d)]).is_err());
}

/// Bytes of a valid index cut, flipped and overwritten at random places:
/// planning and rebuilding return, whatever they return, and what they
/// accept still plans to children of the index.
#[test]
fn mangled_indexes_never_panic() {
    let raw = index();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let selections = [Selection::All, platforms("linux/arm64,linux/amd64")];
    for round in 0..2000 {
        let mut bad = raw.clone();
        let at = (next() as usize) % bad.len();
        match round % 3 {
            0 => bad.truncate(at),
            1 => bad[at] ^= 1 << (next() % 8),
            _ => bad[at] = b"{}[]\":,0-9ez "[(next() % 13) as usize],
        }
        for selection in &selections {
            if let Ok(children) = plan(&bad, selection) {
                assert!(!children.is_empty());
                let pushed: Vec<_> = children.iter().map(|d| (d.clone(), d.clone())).collect();
                let _ = rebuild(&bad, mt::OCI_INDEX, &pushed);
            }
        }
    }
}
