use std::path::Path;

use super::*;

fn digest(n: u32) -> Digest {
    Digest::sha256_of(&n.to_be_bytes())
}

fn key(n: u32) -> CacheKey {
    let specs = [FilterSpec::parse("normalize-timestamps:ts=0").unwrap()];
    CacheKey::new(digest(n), &specs, Encoding::Gzip, None)
}

fn layer(n: u32) -> CachedLayer {
    CachedLayer {
        digest: digest(n + 1_000_000),
        size: u64::from(n) + 10,
        diff_id: digest(n + 2_000_000),
        media_type: Encoding::Gzip.media_type(true).to_string(),
        repositories: Vec::new(),
    }
}

fn open_err(path: &Path) -> String {
    let e = LayerCache::open(path).unwrap_err();
    assert!(matches!(e, Error::LayerCache { .. }), "{e:?}");
    e.to_string()
}

#[test]
fn missing_file_is_empty_and_saves_round_trip() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("cache.json");
    let cache = LayerCache::open(&path).unwrap();
    assert!(cache.is_empty());
    assert_eq!(cache.lookup(&key(1)), None);
    // Nothing inserted: nothing written.
    cache.save().unwrap();
    assert!(!path.exists());
    assert!(cache.insert(key(1), layer(1)));
    assert_eq!(cache.lookup(&key(1)), Some(layer(1)));
    cache.save().unwrap();
    let again = LayerCache::open(&path).unwrap();
    assert_eq!(again.lookup(&key(1)), Some(layer(1)));
    assert_eq!(again.lookup(&key(2)), None);
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(json["version"], 1);
    assert_eq!(json["layers"][0]["source"], digest(1).to_string());
    assert_eq!(json["layers"][0]["compression"], "gzip:6");
    assert_eq!(
        json["layers"][0]["chain"],
        r#"[["normalize-timestamps",[["ts","0"]]]]"#
    );
    // The lock file sits beside it; no temp file is left.
    let mut names: Vec<String> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["cache.json", "cache.json.lock"]);
}

#[test]
fn keys_tell_chains_and_compressions_apart() {
    let src = digest(7);
    let norm = [FilterSpec::parse("normalize-timestamps").unwrap()];
    let norm1 = [FilterSpec::parse("normalize-timestamps:ts=1").unwrap()];
    let a = CacheKey::new(src.clone(), &norm, Encoding::Gzip, None);
    assert_eq!(
        a,
        CacheKey::new(src.clone(), &norm, Encoding::Gzip, Some(6))
    );
    for other in [
        CacheKey::new(src.clone(), &norm, Encoding::Gzip, Some(9)),
        CacheKey::new(src.clone(), &norm, Encoding::Zstd, None),
        CacheKey::new(src.clone(), &norm1, Encoding::Gzip, None),
        CacheKey::new(digest(8), &norm, Encoding::Gzip, None),
    ] {
        assert_ne!(a, other);
    }
    let d = tempfile::tempdir().unwrap();
    let cache = LayerCache::open(&d.path().join("c.json")).unwrap();
    cache.insert(a.clone(), layer(1));
    assert_eq!(
        cache.lookup(&CacheKey::new(src.clone(), &norm1, Encoding::Gzip, None)),
        None
    );
    assert_eq!(cache.lookup(&a), Some(layer(1)));
}

#[test]
fn saves_merge_with_what_others_wrote() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("cache.json");
    let one = LayerCache::open(&path).unwrap();
    let two = LayerCache::open(&path).unwrap();
    one.insert(key(1), layer(1));
    two.insert(key(2), layer(2));
    one.save().unwrap();
    two.save().unwrap();
    // A later value for the same key replaces the earlier one.
    one.insert(key(2), layer(20));
    one.save().unwrap();
    let all = LayerCache::open(&path).unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all.lookup(&key(1)), Some(layer(1)));
    assert_eq!(all.lookup(&key(2)), Some(layer(20)));
    // The second saver learnt the first's entries too.
    assert_eq!(two.lookup(&key(1)), Some(layer(1)));
}

/// Saves `count` distinct entries starting at `base`, one save each.
fn writer(path: &Path, base: u32, count: u32) {
    let cache = LayerCache::open(path).unwrap();
    for n in base..base + count {
        assert!(cache.insert(key(n), layer(n)));
        cache.save().unwrap();
    }
}

fn assert_holds(path: &Path, ranges: &[(u32, u32)]) {
    let cache = LayerCache::open(path).unwrap();
    let total: u32 = ranges.iter().map(|r| r.1).sum();
    assert_eq!(cache.len(), total as usize);
    for &(base, count) in ranges {
        for n in base..base + count {
            assert_eq!(cache.lookup(&key(n)), Some(layer(n)), "entry {n} lost");
        }
    }
}

#[test]
fn concurrent_threads_lose_no_entries() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("cache.json");
    std::thread::scope(|s| {
        for t in 0..3 {
            let path = &path;
            s.spawn(move || writer(path, t * 1000, 25));
        }
    });
    assert_holds(&path, &[(0, 25), (1000, 25), (2000, 25)]);
}

/// The child side of [`concurrent_processes_lose_no_entries`]; does
/// nothing when run on its own.
#[test]
fn child_writer() {
    let Ok(spec) = std::env::var("OCCYSTRAP_TEST_CACHE_CHILD") else {
        return;
    };
    let (path, base) = spec.rsplit_once('|').unwrap();
    writer(Path::new(path), base.parse().unwrap(), 40);
}

#[test]
fn concurrent_processes_lose_no_entries() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("cache.json");
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = [0u32, 5000]
        .iter()
        .map(|base| {
            std::process::Command::new(&exe)
                .args([
                    "--exact",
                    "layer_cache::tests::child_writer",
                    "--test-threads=1",
                ])
                .env(
                    "OCCYSTRAP_TEST_CACHE_CHILD",
                    format!("{}|{base}", path.display()),
                )
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut child in children {
        assert!(child.wait().unwrap().success());
    }
    assert_holds(&path, &[(0, 40), (5000, 40)]);
}

#[test]
fn oldest_entries_go_past_the_cap() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("cache.json");
    let n = MAX_ENTRIES as u32;
    let file = CacheFile {
        version: VERSION,
        layers: (0..n).map(|i| Entry::new(&key(i), &layer(i))).collect(),
    };
    std::fs::write(&path, serde_json::to_vec(&file).unwrap()).unwrap();
    let cache = LayerCache::open(&path).unwrap();
    assert_eq!(cache.len(), MAX_ENTRIES);
    cache.insert(key(n), layer(n));
    cache.save().unwrap();
    let again = LayerCache::open(&path).unwrap();
    assert_eq!(again.len(), MAX_ENTRIES);
    assert_eq!(again.lookup(&key(0)), None);
    assert_eq!(again.lookup(&key(1)), Some(layer(1)));
    assert_eq!(again.lookup(&key(n)), Some(layer(n)));
}

#[test]
fn refuses_bad_files() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("cache.json");
    let good = serde_json::to_value(CacheFile {
        version: VERSION,
        layers: vec![Entry::new(&key(1), &layer(1))],
    })
    .unwrap();
    let mut bad_digest = good.clone();
    bad_digest["layers"][0]["digest"] = "sha256:../../etc".into();
    let mut bad_type = good.clone();
    bad_type["layers"][0]["media_type"] = "text/html\u{1b}[31m".into();
    let mut long_chain = good.clone();
    long_chain["layers"][0]["chain"] = "x".repeat(MAX_CHAIN_BYTES + 1).into();
    let mut newer = good.clone();
    newer["version"] = 2.into();
    let mut bad_repo = good.clone();
    bad_repo["layers"][0]["repositories"] = serde_json::json!(["host/app\u{1b}[2J"]);
    let mut many_repos = good.clone();
    many_repos["layers"][0]["repositories"] = (0..=MAX_REPOSITORIES)
        .map(|i| format!("h/r{i}"))
        .collect::<Vec<_>>()
        .into();
    let mut extra = good.clone();
    extra["layers"][0]["surprise"] = 1.into();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "truncated",
            br#"{"version":1,"layers":[{"#.to_vec(),
            "not a layer cache",
        ),
        ("not json", b"\x00\xffgarbage".to_vec(), "not a layer cache"),
        ("array", b"[]".to_vec(), "not a layer cache"),
        (
            "bad digest",
            serde_json::to_vec(&bad_digest).unwrap(),
            "invalid digest",
        ),
        (
            "bad media type",
            serde_json::to_vec(&bad_type).unwrap(),
            "entry 0: media type",
        ),
        (
            "long chain",
            serde_json::to_vec(&long_chain).unwrap(),
            "entry 0: a filter chain",
        ),
        (
            "newer",
            serde_json::to_vec(&newer).unwrap(),
            "format version 2",
        ),
        (
            "unknown field",
            serde_json::to_vec(&extra).unwrap(),
            "not a layer cache",
        ),
    ];
    for (what, data, expect) in cases {
        std::fs::write(&path, &data).unwrap();
        let msg = open_err(&path);
        assert!(msg.contains(expect), "{what}: {msg}");
        assert!(msg.contains("cache.json"), "{what}: {msg}");
        // No control character reaches the message.
        assert!(!msg.contains('\u{1b}'), "{what}: {msg}");
    }
    std::fs::write(&path, serde_json::to_vec(&good).unwrap()).unwrap();
    assert_eq!(LayerCache::open(&path).unwrap().len(), 1);
    // Larger than the cap: refused before it is parsed.
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(MAX_FILE_BYTES + 1).unwrap();
    assert!(open_err(&path).contains("bytes allowed"));
}

#[test]
fn refuses_what_is_not_a_file() {
    let d = tempfile::tempdir().unwrap();
    let fifo = d.path().join("fifo.json");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    // Refused at once rather than waiting for a writer.
    assert!(open_err(&fifo).contains("FIFO"));
    let dir = d.path().join("dir.json");
    std::fs::create_dir(&dir).unwrap();
    assert!(LayerCache::open(&dir).is_err());
    assert!(LayerCache::open(&d.path().join("missing/cache.json")).is_err());
}

#[test]
fn insert_refuses_what_the_file_could_not_hold() {
    let d = tempfile::tempdir().unwrap();
    let cache = LayerCache::open(&d.path().join("c.json")).unwrap();
    let mut long = key(1);
    long.chain = "x".repeat(MAX_CHAIN_BYTES + 1);
    assert!(!cache.insert(long.clone(), layer(1)));
    let mut plain = layer(2);
    plain.media_type = media_type::OCI_LAYER_TAR.to_string();
    assert!(!cache.insert(key(2), plain));
    assert!(cache.is_empty());
}

#[test]
fn layer_info_from_an_entry() {
    let e = crate::compress::encode(&b"tar"[..], std::io::sink(), Encoding::Zstd, None).unwrap();
    let cached = CachedLayer::from_encoded(&e, Encoding::Zstd.media_type(false));
    let info = cached.to_layer_info(3);
    assert_eq!(info.index, 3);
    assert_eq!(info.digest, e.digest);
    assert_eq!(info.size, e.size);
    assert_eq!(info.diff_id, e.diff_id);
    assert_eq!(info.media_type, media_type::OCI_LAYER_ZSTD);
}

#[test]
fn repositories_are_kept_and_merged() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("cache.json");
    let one = LayerCache::open(&path).unwrap();
    let two = LayerCache::open(&path).unwrap();
    let mut a = layer(1);
    a.add_repository("reg:5000/team/a");
    let mut b = layer(1);
    b.add_repository("reg:5000/team/b");
    one.insert(key(1), a);
    two.insert(key(1), b);
    one.save().unwrap();
    two.save().unwrap();
    // Same blob from both runs: both places are remembered, newest last.
    let got = LayerCache::open(&path).unwrap().lookup(&key(1)).unwrap();
    assert_eq!(got.repositories, ["reg:5000/team/a", "reg:5000/team/b"]);
    assert_eq!(two.lookup(&key(1)).unwrap().repositories, got.repositories);
    // Another blob for the key replaces the entry, places and all.
    let mut c = layer(5);
    c.add_repository("reg:5000/team/c");
    one.insert(key(1), c.clone());
    one.save().unwrap();
    assert_eq!(LayerCache::open(&path).unwrap().lookup(&key(1)), Some(c));
    // An entry without repositories is written without the field.
    one.insert(key(2), layer(2));
    one.save().unwrap();
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert!(json["layers"][1].get("repositories").is_none());
}

#[test]
fn add_repository_keeps_the_newest() {
    let mut l = layer(1);
    for i in 0..MAX_REPOSITORIES + 3 {
        l.add_repository(&format!("h/r{i}"));
    }
    l.add_repository("h/r5");
    assert_eq!(l.repositories.len(), MAX_REPOSITORIES);
    assert_eq!(l.repositories.last().unwrap(), "h/r5");
    assert_eq!(l.repositories[0], "h/r3");
    assert_eq!(l.repositories.iter().filter(|r| *r == "h/r5").count(), 1);
}
