//! The push path: a client's manifest PUT. The manifest is checked (a
//! known media type, its digest when pushed by one, every blob it names
//! at hand) before any work; then the image is copied from the staging
//! area through the filters into downstream, and the client is answered
//! with what downstream now has.
//!
//! An index's children arrive first, each its own PUT by digest. What each
//! became downstream is remembered here (in memory, bounded by count and
//! bytes, oldest first out), so that the index that follows is rebuilt
//! with their new digests without copying them again.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::StreamExt;

use crate::digest::{Digest, Hasher};
use crate::error::{Error, Result};
use crate::image::media_type as mt;
use crate::wire::index_plan::Selection;
use crate::wire::{Descriptor, Index, Kind, Manifest, classify};

use super::copy::{self, Target};
use super::error::{ApiError, ApiResult};
use super::route::ManifestRef;
use super::staged::{Doc, StagedSource};
use super::{Proxy, ProxyConfig};

/// Pushes remembered at most.
const MAX_RECORDS: usize = 512;
/// Bytes of remembered manifests at most.
const MAX_RECORD_BYTES: usize = 32 << 20;
/// Blobs (config and layers) one manifest may name: each staged one is
/// held open while its image is copied.
pub const MAX_BLOBS: usize = 256;
/// Manifests one index may name.
pub const MAX_CHILDREN: usize = 256;
/// Bytes of an index's children read from downstream at most.
const MAX_CHILD_BYTES: usize = 64 << 20;
/// Blob checks against downstream at once.
const CHECKS_AT_ONCE: usize = 8;
/// Other repositories offered to the sink to mount blobs from.
const MOUNT_CANDIDATES: usize = 3;

/// What a manifest PUT stored downstream.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The digest of the manifest stored downstream.
    pub digest: Digest,
    /// Its media type.
    pub media_type: String,
    /// Its size.
    pub size: u64,
}

/// A manifest a client pushed, and what it became downstream.
#[derive(Debug, Clone)]
pub struct Pushed {
    /// The client's repository.
    pub name: String,
    /// The document as the client sent it (its digest is the client's).
    pub doc: Doc,
    /// What downstream stores for it.
    pub stored: Descriptor,
}

/// The manifests clients pushed and what each became downstream, and the
/// per-reference locks that keep two PUTs of one reference apart.
#[derive(Default)]
pub struct PushState {
    records: Mutex<VecDeque<Pushed>>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl PushState {
    /// Empty.
    pub fn new(_config: &ProxyConfig) -> Result<PushState> {
        Ok(PushState::default())
    }

    /// What the client's manifest `digest`, pushed to `name`, became.
    pub fn lookup(&self, name: &str, digest: &Digest) -> Option<Pushed> {
        let records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        records
            .iter()
            .rev()
            .find(|r| r.name == name && &r.doc.digest == digest)
            .cloned()
    }

    /// Remembers a push, the oldest going when over the bounds. A document
    /// larger than a quarter of the byte bound is not kept.
    pub fn record(&self, pushed: Pushed) {
        let size = pushed.doc.raw.len();
        if size > MAX_RECORD_BYTES / 4 {
            return;
        }
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        records.retain(|r| !(r.name == pushed.name && r.doc.digest == pushed.doc.digest));
        records.push_back(pushed);
        let mut bytes: usize = records.iter().map(|r| r.doc.raw.len()).sum();
        while records.len() > MAX_RECORDS || bytes > MAX_RECORD_BYTES {
            match records.pop_front() {
                Some(old) => bytes -= old.doc.raw.len(),
                None => break,
            }
        }
    }

    /// How many pushes are remembered.
    pub fn len(&self) -> usize {
        self.records.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The client repositories other than `name` pushed to most recently,
    /// newest first.
    fn recent_names(&self, name: &str, n: usize) -> Vec<String> {
        let records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<String> = Vec::new();
        for r in records.iter().rev() {
            if out.len() == n {
                break;
            }
            if r.name != name && !out.contains(&r.name) {
                out.push(r.name.clone());
            }
        }
        out
    }

    /// Waits until no other PUT of `key` is running; the guard holds it.
    pub async fn lock(&self, key: String) -> RefGuard<'_> {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            locks.entry(key.clone()).or_default().clone()
        };
        let guard = lock.clone().lock_owned().await;
        RefGuard {
            state: self,
            key,
            lock,
            _guard: guard,
        }
    }

    /// How many references have a lock (held or waited for).
    pub fn locks_held(&self) -> usize {
        self.locks.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// A held per-reference lock; its entry goes when nobody else wants it,
/// also when the request is dropped half-way.
pub struct RefGuard<'a> {
    state: &'a PushState,
    key: String,
    lock: Arc<tokio::sync::Mutex<()>>,
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

impl Drop for RefGuard<'_> {
    fn drop(&mut self) {
        let mut locks = self.state.locks.lock().unwrap_or_else(|p| p.into_inner());
        // Ours, the map's, and the owned guard's: nobody else waits.
        if Arc::strong_count(&self.lock) <= 3 {
            locks.remove(&self.key);
        }
    }
}

/// What a PUT body is, checked before anything is read or copied.
#[derive(Debug)]
pub(crate) enum Checked {
    /// An image manifest.
    Image(Doc, Manifest),
    /// An index.
    Index(Doc, Index),
}

/// Reads `body` as a manifest or index: JSON of a known media type (the
/// `Content-Type`, else the body's `mediaType`; the two must agree), whose
/// digest is `reference` when that is a digest.
pub(crate) fn check_body(
    reference: &ManifestRef,
    content_type: Option<&str>,
    body: &[u8],
) -> ApiResult<Checked> {
    if let ManifestRef::Digest(want) = reference {
        let mut h = Hasher::new(want.algorithm());
        h.update(body);
        let found = h.finish();
        if &found != want {
            return Err(ApiError::digest_invalid(format!(
                "the manifest's digest is {found}, not {want}"
            )));
        }
    }
    let content_type = content_type.map(mt::essence).filter(|c| !c.is_empty());
    let (kind, media_type) = classify(content_type, body).map_err(|e| invalid(&e))?;
    let declared: Option<String> = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.get("mediaType")
                .and_then(|m| m.as_str())
                .map(str::to_string)
        });
    if let Some(declared) = declared
        && mt::essence(&declared) != media_type
    {
        return Err(ApiError::manifest_invalid(format!(
            "the manifest says it is {declared}, but was sent as {media_type}"
        )));
    }
    let doc = Doc::new(Arc::new(body.to_vec()), &media_type);
    match kind {
        Kind::Schema1 => Err(ApiError::manifest_invalid(
            "Docker schema 1 manifests are not supported",
        )),
        Kind::Manifest => {
            let m: Manifest = serde_json::from_slice(body)
                .map_err(|e| ApiError::manifest_invalid(format!("invalid image manifest: {e}")))?;
            if m.schema_version != 2 {
                return Err(ApiError::manifest_invalid(format!(
                    "schemaVersion {} is not supported",
                    m.schema_version
                )));
            }
            if m.layers.len() + 1 > MAX_BLOBS {
                return Err(ApiError::manifest_invalid(format!(
                    "the manifest names {} blobs; at most {MAX_BLOBS} are accepted",
                    m.layers.len() + 1
                )));
            }
            Ok(Checked::Image(doc, m))
        }
        Kind::Index => {
            let i: Index = serde_json::from_slice(body)
                .map_err(|e| ApiError::manifest_invalid(format!("invalid image index: {e}")))?;
            if i.schema_version != 2 {
                return Err(ApiError::manifest_invalid(format!(
                    "schemaVersion {} is not supported",
                    i.schema_version
                )));
            }
            if i.manifests.len() > MAX_CHILDREN {
                return Err(ApiError::manifest_invalid(format!(
                    "the index names {} manifests; at most {MAX_CHILDREN} are accepted",
                    i.manifests.len()
                )));
            }
            if let Some(nested) = i.manifests.iter().find(|d| {
                matches!(
                    mt::essence(&d.media_type),
                    mt::OCI_INDEX | mt::DOCKER_MANIFEST_LIST
                )
            }) {
                return Err(ApiError::manifest_invalid(format!(
                    "{} is an index inside the index, which is not supported",
                    nested.digest
                )));
            }
            Ok(Checked::Index(doc, i))
        }
    }
}

/// A classification failure as the client's error: the body is no
/// manifest we take.
fn invalid(e: &Error) -> ApiError {
    ApiError::manifest_invalid(super::error::chain(e))
}

/// A client's `PUT /v2/<name>/manifests/<reference>` with `body` (already
/// read, within the manifest size limit).
pub async fn put_manifest(
    proxy: &Proxy,
    name: &str,
    reference: &ManifestRef,
    content_type: Option<&str>,
    body: Bytes,
) -> ApiResult<Stored> {
    let checked = check_body(reference, content_type, &body)?;
    let _held = proxy.pushes.lock(format!("{name}\n{reference}")).await;
    let (target, tag) = match reference {
        ManifestRef::Tag(t) => (Target::Tag(t.clone()), Some(t.as_str())),
        ManifestRef::Digest(_) => (Target::Digest, None),
    };
    let mount_from: Vec<String> = proxy
        .pushes
        .recent_names(name, MOUNT_CANDIDATES)
        .iter()
        .map(|n| proxy.config.downstream.name(n))
        .collect();
    let (doc, stored) = match checked {
        Checked::Image(doc, manifest) => {
            let source = StagedSource::new(proxy, name, tag, doc.clone());
            require_blobs(proxy, name, &source, &manifest).await?;
            let stored =
                copy::copy_image(proxy, Arc::new(source), name, &target, mount_from).await?;
            (doc, stored)
        }
        Checked::Index(doc, index) => {
            let (source, mapped) = index_source(proxy, name, tag, doc.clone(), &index).await?;
            let lookup = |d: &Descriptor| mapped.get(&d.digest).cloned();
            let copied = copy::copy_any(
                proxy,
                Arc::new(source),
                name,
                &target,
                &Selection::All,
                mount_from,
                &lookup,
            )
            .await?;
            (doc, copied.descriptor)
        }
    };
    proxy.pushes.record(Pushed {
        name: name.to_string(),
        doc,
        stored: stored.clone(),
    });
    Ok(Stored {
        digest: stored.digest,
        media_type: stored.media_type,
        size: stored.size,
    })
}

/// Fails with `MANIFEST_BLOB_UNKNOWN` unless every blob `manifest` names
/// is staged (at the size it names) or present downstream in `name`.
async fn require_blobs(
    proxy: &Proxy,
    name: &str,
    source: &StagedSource,
    manifest: &Manifest,
) -> ApiResult<()> {
    let mut wanted: Vec<&Descriptor> = Vec::new();
    for d in std::iter::once(&manifest.config).chain(&manifest.layers) {
        if !wanted.iter().any(|w| w.digest == d.digest) {
            wanted.push(d);
        }
    }
    let mut remote: Vec<Digest> = Vec::new();
    for d in wanted {
        match source.staged_size(&d.digest) {
            None => remote.push(d.digest.clone()),
            Some(n) if n != d.size => {
                return Err(ApiError::manifest_invalid(format!(
                    "blob {} is {n} bytes, not the {} the manifest says",
                    d.digest, d.size
                )));
            }
            Some(_) => {}
        }
    }
    let repo = proxy.config.downstream.repo(name);
    let mut checks = futures_util::stream::iter(remote)
        .map(move |digest| {
            let repo = repo.clone();
            async move {
                let found = repo.blob_exists(&digest).await;
                (digest, found)
            }
        })
        .buffer_unordered(CHECKS_AT_ONCE);
    while let Some((digest, found)) = checks.next().await {
        match found {
            Ok(Some(_)) => {}
            Ok(None) => {
                return Err(ApiError::manifest_blob_unknown(format!(
                    "blob {digest} was not pushed"
                )));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// A source of the index, with a source of every child it names: the one
/// the client pushed to `name` (remembered here), else downstream's.
/// Returns it with what the remembered children became downstream.
async fn index_source(
    proxy: &Proxy,
    name: &str,
    tag: Option<&str>,
    doc: Doc,
    index: &Index,
) -> ApiResult<(StagedSource, HashMap<Digest, Descriptor>)> {
    let mut source = StagedSource::new(proxy, name, tag, doc);
    let mut mapped = HashMap::new();
    let mut seen: Vec<&Digest> = Vec::new();
    let mut fetched = 0usize;
    let repo = proxy.config.downstream.repo(name);
    for d in &index.manifests {
        if seen.contains(&&d.digest) {
            continue;
        }
        seen.push(&d.digest);
        let child = match proxy.pushes.lookup(name, &d.digest) {
            Some(p) => {
                mapped.insert(d.digest.clone(), p.stored.clone());
                p.doc
            }
            None => {
                let (raw, ct) = match repo.get_manifest(&d.digest.to_string()).await {
                    Ok(found) => found,
                    Err(Error::Registry {
                        status: Some(404), ..
                    }) => {
                        return Err(ApiError::manifest_blob_unknown(format!(
                            "manifest {} of the index was not pushed",
                            d.digest
                        )));
                    }
                    Err(e) => return Err(e.into()),
                };
                fetched += raw.len();
                if fetched > MAX_CHILD_BYTES {
                    return Err(ApiError::manifest_invalid(format!(
                        "the index's manifests are over {MAX_CHILD_BYTES} bytes"
                    )));
                }
                let declared = Some(d.media_type.as_str()).filter(|m| !m.is_empty());
                let (_, media_type) = classify(ct.as_deref().or(declared), &raw)?;
                let doc = Doc::new(Arc::new(raw), &media_type);
                if doc.digest != d.digest {
                    return Err(ApiError::upstream(format!(
                        "downstream answered manifest {} with {}",
                        d.digest, doc.digest
                    )));
                }
                doc
            }
        };
        source = source.with_child(StagedSource::unopened(proxy, name, None, child));
    }
    Ok((source, mapped))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u8) -> String {
        format!("sha256:{}", hex::encode([n; 32]))
    }

    fn manifest_json(media: Option<&str>) -> Vec<u8> {
        let mut v = serde_json::json!({
            "schemaVersion": 2,
            "config": {"mediaType": mt::OCI_CONFIG, "digest": digest(1), "size": 10},
            "layers": [{"mediaType": mt::OCI_LAYER_GZIP, "digest": digest(2), "size": 20}],
        });
        if let Some(m) = media {
            v["mediaType"] = m.into();
        }
        serde_json::to_vec(&v).unwrap()
    }

    fn tag() -> ManifestRef {
        ManifestRef::Tag("v1".into())
    }

    fn code(r: ApiResult<Checked>) -> &'static str {
        r.map(|_| ()).unwrap_err().code
    }

    #[test]
    fn a_manifest_is_known_by_its_content_type_or_its_media_type() {
        let body = manifest_json(None);
        match check_body(&tag(), Some(mt::OCI_MANIFEST), &body).unwrap() {
            Checked::Image(doc, m) => {
                assert_eq!(doc.media_type, mt::OCI_MANIFEST);
                assert_eq!(doc.digest, Digest::sha256_of(&body));
                assert_eq!(m.layers.len(), 1);
            }
            other => panic!("{other:?}"),
        }
        let body = manifest_json(Some(mt::DOCKER_MANIFEST));
        let checked = check_body(&tag(), Some("application/json"), &body).unwrap();
        assert!(matches!(checked, Checked::Image(d, _) if d.media_type == mt::DOCKER_MANIFEST));
        // Parameters on the Content-Type are not part of the type.
        let ct = format!("{}; charset=utf-8", mt::OCI_MANIFEST);
        assert!(check_body(&tag(), Some(&ct), &manifest_json(None)).is_ok());
    }

    #[test]
    fn bad_bodies_are_manifest_invalid() {
        assert_eq!(
            code(check_body(&tag(), None, b"{not json")),
            "MANIFEST_INVALID"
        );
        assert_eq!(code(check_body(&tag(), None, b"")), "MANIFEST_INVALID");
        assert_eq!(code(check_body(&tag(), None, b"{}")), "MANIFEST_INVALID");
        // A type we do not take, and a Content-Type the body contradicts.
        let body = manifest_json(None);
        let r = check_body(&tag(), Some("application/vnd.example+json"), &body);
        assert_eq!(code(r), "MANIFEST_INVALID");
        let body = manifest_json(Some(mt::DOCKER_MANIFEST));
        let r = check_body(&tag(), Some(mt::OCI_MANIFEST), &body);
        assert_eq!(code(r), "MANIFEST_INVALID");
        // Shaped as a manifest, but missing its layers.
        let r = check_body(
            &tag(),
            Some(mt::OCI_MANIFEST),
            br#"{"schemaVersion":2,"config":{}}"#,
        );
        assert_eq!(code(r), "MANIFEST_INVALID");
        let schema1 = br#"{"schemaVersion":1,"name":"a","tag":"b","fsLayers":[]}"#;
        assert_eq!(code(check_body(&tag(), None, schema1)), "MANIFEST_INVALID");
    }

    #[test]
    fn a_digest_reference_must_be_the_body_digest() {
        let body = manifest_json(None);
        let right = ManifestRef::Digest(Digest::sha256_of(&body));
        assert!(check_body(&right, Some(mt::OCI_MANIFEST), &body).is_ok());
        let wrong = ManifestRef::Digest(digest(9).parse().unwrap());
        let err = check_body(&wrong, Some(mt::OCI_MANIFEST), &body)
            .map(|_| ())
            .unwrap_err();
        assert_eq!(err.code, "DIGEST_INVALID");
        assert_eq!(err.status, http::StatusCode::BAD_REQUEST);
    }

    #[test]
    fn too_many_blobs_or_children_and_nested_indexes_are_refused() {
        let layer =
            serde_json::json!({"mediaType": mt::OCI_LAYER_GZIP, "digest": digest(2), "size": 1});
        let body = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": mt::OCI_MANIFEST,
            "config": {"mediaType": mt::OCI_CONFIG, "digest": digest(1), "size": 1},
            "layers": vec![layer; MAX_BLOBS],
        }))
        .unwrap();
        assert_eq!(code(check_body(&tag(), None, &body)), "MANIFEST_INVALID");
        let child =
            serde_json::json!({"mediaType": mt::OCI_MANIFEST, "digest": digest(3), "size": 1});
        let index = |children: Vec<serde_json::Value>| {
            serde_json::to_vec(&serde_json::json!({
                "schemaVersion": 2, "mediaType": mt::OCI_INDEX, "manifests": children,
            }))
            .unwrap()
        };
        assert!(matches!(
            check_body(&tag(), None, &index(vec![child.clone(); 3])).unwrap(),
            Checked::Index(d, i) if d.is_index() && i.manifests.len() == 3
        ));
        let many = index(vec![child; MAX_CHILDREN + 1]);
        assert_eq!(code(check_body(&tag(), None, &many)), "MANIFEST_INVALID");
        let nested =
            serde_json::json!({"mediaType": mt::OCI_INDEX, "digest": digest(4), "size": 1});
        assert_eq!(
            code(check_body(&tag(), None, &index(vec![nested]))),
            "MANIFEST_INVALID"
        );
    }

    fn pushed(name: &str, raw: Vec<u8>) -> Pushed {
        let doc = Doc::new(Arc::new(raw), mt::OCI_MANIFEST);
        Pushed {
            name: name.into(),
            stored: Descriptor {
                media_type: mt::OCI_MANIFEST.into(),
                digest: digest(7).parse().unwrap(),
                size: 1,
                platform: None,
                urls: None,
            },
            doc,
        }
    }

    #[test]
    fn records_are_per_repository_and_bounded() {
        let state = PushState::default();
        let p = pushed("team/app", b"one".to_vec());
        let d = p.doc.digest.clone();
        state.record(p.clone());
        state.record(p);
        assert_eq!(state.len(), 1, "the same push twice is one record");
        assert!(state.lookup("team/app", &d).is_some());
        assert!(state.lookup("team/other", &d).is_none());
        for i in 0..MAX_RECORDS + 10 {
            state.record(pushed("team/many", i.to_string().into_bytes()));
        }
        assert_eq!(state.len(), MAX_RECORDS);
        assert!(
            state.lookup("team/app", &d).is_none(),
            "the oldest went first"
        );
        assert!(
            state
                .lookup("team/many", &Digest::sha256_of(b"0"))
                .is_none()
        );
        let last = (MAX_RECORDS + 9).to_string();
        assert!(
            state
                .lookup("team/many", &Digest::sha256_of(last.as_bytes()))
                .is_some()
        );
        // Bytes bound too: big documents push the small ones out.
        let big = vec![b' '; MAX_RECORD_BYTES / 4];
        for i in 0..5u8 {
            let mut raw = big.clone();
            raw[0] = i;
            state.record(pushed("team/big", raw));
        }
        assert!(state.len() <= 4, "{} records", state.len());
        // One over a quarter of the budget is not kept at all.
        state.record(pushed("team/huge", vec![0; MAX_RECORD_BYTES / 4 + 1]));
        assert!(state.recent_names("x", 9).iter().all(|n| n != "team/huge"));
        assert_eq!(state.recent_names("team/big", 3), Vec::<String>::new());
    }

    #[test]
    fn recent_names_are_newest_first_without_the_asker() {
        let state = PushState::default();
        for (i, n) in ["a", "b", "a", "c", "d"].iter().enumerate() {
            state.record(pushed(n, vec![i as u8]));
        }
        assert_eq!(state.recent_names("c", 3), vec!["d", "a", "b"]);
    }

    #[tokio::test]
    async fn puts_of_one_reference_take_turns_and_leave_no_lock_behind() {
        let state = Arc::new(PushState::default());
        let running = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (state, running) = (state.clone(), running.clone());
            tasks.push(tokio::spawn(async move {
                let _g = state.lock("team/app\nv1".into()).await;
                let now = running.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                assert_eq!(now, 0, "two PUTs of one reference at once");
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                running.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            }));
        }
        // Another reference is not held up by them.
        let other = tokio::time::timeout(
            std::time::Duration::from_millis(20),
            state.lock("team/app\nv2".into()),
        )
        .await;
        assert!(other.is_ok());
        drop(other);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(state.locks_held(), 0);
        // A PUT dropped while waiting leaves nothing either.
        let held = state.lock("k".into()).await;
        let waiting =
            tokio::time::timeout(std::time::Duration::from_millis(10), state.lock("k".into()))
                .await;
        assert!(waiting.is_err());
        drop(held);
        assert_eq!(state.locks_held(), 0);
    }
}
