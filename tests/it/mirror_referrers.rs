//! `copy_raw` and `copy_referrers` between two real registries (distribution
//! 2.8, which has no referrers API: the fallback tag schema is what runs for
//! real), plus the referrers-API path through the test proxy answering
//! `/referrers/` itself. Artifacts are pushed with our own client: a cosign
//! `.sig` (an OCI manifest with a non-tar layer) and OCI referrers with a
//! `subject`, listed under the fallback tag `sha256-<hex>`.

use std::io::{Cursor, Read};
use std::sync::Arc;

use occystrap::digest::Digest;
use occystrap::error::Error;
use occystrap::mirror::raw::copy_raw;
use occystrap::mirror::referrers::{copy_referrers, fallback_tag};
use occystrap::registry::{Client, ClientOptions, Repository, deletes_disabled};
use serde_json::{Value, json};

use crate::support::images::{platform_image, pseudo_random};
use crate::support::proxy::{Fault, Proxy};
use crate::support::push::{PushFormat, push_index};
use crate::support::{Registry, TestEnv};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn repo(host: &str, name: &str) -> Repository {
    let options = ClientOptions {
        insecure: true,
        retries: 0,
        ..ClientOptions::default()
    };
    Client::standalone(host, options).unwrap().repo(name)
}

/// Uploads `data`; its descriptor with `media_type`.
async fn blob(repo: &Repository, media_type: &str, data: &[u8]) -> Value {
    let d = Digest::sha256_of(data);
    let body = Arc::new(data.to_vec());
    let open = Arc::new(move || Ok(Box::new(Cursor::new((*body).clone())) as Box<dyn Read + Send>));
    repo.upload_blob(&d, data.len() as u64, open).await.unwrap();
    json!({"mediaType": media_type, "digest": d.to_string(), "size": data.len()})
}

/// PUTs `doc` as `reference` (its digest when `None`); its descriptor.
async fn manifest(repo: &Repository, reference: Option<&str>, doc: &Value) -> (Digest, Value) {
    let bytes = serde_json::to_vec(doc).unwrap();
    let d = Digest::sha256_of(&bytes);
    let media_type = doc["mediaType"].as_str().unwrap().to_string();
    let target = reference.map_or_else(|| d.to_string(), str::to_string);
    repo.put_manifest(&target, &media_type, bytes.clone())
        .await
        .unwrap();
    let mut desc = json!({"mediaType": media_type, "digest": d.to_string(), "size": bytes.len()});
    if let Some(t) = doc.get("artifactType") {
        desc["artifactType"] = t.clone();
    }
    (d, desc)
}

/// An OCI artifact about `subject` (none: a cosign-style one), with one
/// layer of `payload` as `layer_type`.
async fn artifact(
    repo: &Repository,
    reference: Option<&str>,
    subject: Option<&Value>,
    artifact_type: &str,
    layer_type: &str,
    payload: &[u8],
) -> (Digest, Value) {
    let config = blob(repo, "application/vnd.oci.empty.v1+json", b"{}").await;
    let layer = blob(repo, layer_type, payload).await;
    let mut doc = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": config,
        "layers": [layer],
    });
    if let Some(s) = subject {
        doc["subject"] = s.clone();
    }
    manifest(repo, reference, &doc).await
}

fn index_of(descs: &[&Value]) -> Value {
    json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descs})
}

async fn digest_of(repo: &Repository, reference: &str) -> Option<Digest> {
    repo.manifest_digest(reference).await.unwrap()
}

/// A two-platform image pushed as `app:v1` to `reg`; its index descriptor.
async fn seed_image(env: &TestEnv, reg: &Registry, src: &Repository) -> Value {
    let imgs = [
        platform_image("linux/amd64", crate::support::images::Compression::Gzip),
        platform_image("linux/arm64", crate::support::images::Compression::Gzip),
    ];
    push_index(env, reg, "app:v1", &imgs, PushFormat::Preserve);
    let (bytes, _) = src.get_manifest("v1").await.unwrap();
    json!({"mediaType": OCI_INDEX, "digest": Digest::sha256_of(&bytes).to_string(), "size": bytes.len()})
}

#[test]
fn signatures_and_fallback_referrers_copy_exactly() {
    let env = TestEnv::new();
    let (a, b) = (Registry::start(), Registry::start());
    let rt = runtime();
    let (src, dst) = (repo(&a.host(), "app"), repo(&b.host(), "app"));
    let tmp = env.tmp_dir();
    rt.block_on(async {
        let image = seed_image(&env, &a, &src).await;
        let subject: Digest = image["digest"].as_str().unwrap().parse().unwrap();
        let fallback = fallback_tag(&subject).unwrap();
        let sig_tag = format!("{fallback}.sig");
        let payload = br#"{"critical":{"identity":{"docker-reference":"app"}}}"#;
        let (sig, _) = artifact(
            &src,
            Some(&sig_tag),
            None,
            "application/vnd.dev.cosign.artifact.sig.v1+json",
            "application/vnd.dev.cosign.simplesigning.v1+json",
            payload,
        )
        .await;
        // Big enough to be spooled to a file rather than held in memory.
        let sbom = pseudo_random(3 << 20, 7);
        let (r1, r1_desc) = artifact(
            &src,
            None,
            Some(&image),
            "application/spdx+json",
            "application/spdx+json",
            &sbom,
        )
        .await;
        manifest(&src, Some(&fallback), &index_of(&[&r1_desc])).await;
        // A signature on the SBOM: a referrer of a referrer, found through
        // the tag list.
        let sbom_sig_tag = format!("{}.sig", fallback_tag(&r1).unwrap());
        let (sbom_sig, _) = artifact(
            &src,
            Some(&sbom_sig_tag),
            None,
            "application/vnd.dev.cosign.artifact.sig.v1+json",
            "application/vnd.dev.cosign.simplesigning.v1+json",
            b"signed the sbom",
        )
        .await;

        let copied = copy_raw(&src, &dst, "v1", Some("v1"), &tmp).await.unwrap();
        assert_eq!(copied.digest, subject);
        assert_eq!(copied.manifests, 3, "{copied:?}");
        assert_eq!(digest_of(&dst, "v1").await, Some(subject.clone()));

        let tags = src.client().tags("app").await.unwrap();
        let got = copy_referrers(&src, &dst, std::slice::from_ref(&subject), &tags, &tmp)
            .await
            .unwrap();
        assert_eq!(got.found, 3, "{got:?}");
        assert_eq!(
            got.tags,
            [sig_tag.clone(), fallback.clone(), sbom_sig_tag.clone()],
            "{got:?}"
        );
        // The empty config the two share goes once.
        let want = (sbom.len() + payload.len() + b"signed the sbom".len() + 2) as u64;
        assert_eq!(got.bytes, want, "{got:?}");
        for t in [&sig_tag, &fallback, &sbom_sig_tag] {
            assert_eq!(
                digest_of(&dst, t).await,
                digest_of(&src, t).await,
                "tag {t}"
            );
        }
        assert_eq!(digest_of(&dst, &sig_tag).await, Some(sig));
        assert_eq!(digest_of(&dst, &sbom_sig_tag).await, Some(sbom_sig));
        assert_eq!(digest_of(&dst, &r1.to_string()).await, Some(r1.clone()));

        // Warm: nothing is written.
        let again = copy_referrers(&src, &dst, std::slice::from_ref(&subject), &tags, &tmp)
            .await
            .unwrap();
        assert_eq!((again.manifests, again.blobs, again.tags.len()), (0, 0, 0));

        // The destination lists a referrer of its own; the source gains
        // another. The destination ends up listing all three.
        let (r2, r2_desc) = artifact(
            &dst,
            None,
            Some(&image),
            "application/vnd.example.note",
            "text/plain",
            b"dst only",
        )
        .await;
        manifest(&dst, Some(&fallback), &index_of(&[&r1_desc, &r2_desc])).await;
        let (r3, r3_desc) = artifact(
            &src,
            None,
            Some(&image),
            "application/vnd.in-toto+json",
            "application/vnd.in-toto+json",
            b"{\"predicate\":{}}",
        )
        .await;
        manifest(&src, Some(&fallback), &index_of(&[&r1_desc, &r3_desc])).await;
        let merged = copy_referrers(&src, &dst, std::slice::from_ref(&subject), &tags, &tmp)
            .await
            .unwrap();
        assert_eq!(merged.tags, std::slice::from_ref(&fallback), "{merged:?}");
        let (bytes, _) = dst.get_manifest(&fallback).await.unwrap();
        let listed: Vec<String> = serde_json::from_slice::<Value>(&bytes).unwrap()["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["digest"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(listed, [r1.to_string(), r2.to_string(), r3.to_string()]);
        assert_eq!(digest_of(&dst, &r3.to_string()).await, Some(r3));
    });
}

#[test]
fn referrers_api_listing_becomes_a_fallback_tag() {
    let env = TestEnv::new();
    let (a, b) = (Registry::start(), Registry::start());
    let rt = runtime();
    let proxy = Proxy::start(&a.host());
    let (seed, dst) = (repo(&a.host(), "app"), repo(&b.host(), "app"));
    let src = repo(&proxy.host(), "app");
    let tmp = env.tmp_dir();
    rt.block_on(async {
        let image = seed_image(&env, &a, &seed).await;
        let subject: Digest = image["digest"].as_str().unwrap().parse().unwrap();
        let (r1, mut r1_desc) = artifact(
            &seed,
            None,
            Some(&image),
            "application/spdx+json",
            "application/spdx+json",
            b"{\"spdxVersion\":\"SPDX-2.3\"}",
        )
        .await;
        r1_desc["annotations"] =
            json!({"org.opencontainers.image.created": "2026-01-01T00:00:00Z"});
        proxy.always(
            "/referrers/",
            Fault::Serve {
                content_type: OCI_INDEX.into(),
                body: serde_json::to_vec(&index_of(&[&r1_desc])).unwrap(),
                content_length: true,
            },
        );
        copy_raw(&src, &dst, "v1", Some("v1"), &tmp).await.unwrap();
        let got = copy_referrers(
            &src,
            &dst,
            std::slice::from_ref(&subject),
            &["v1".into()],
            &tmp,
        )
        .await
        .unwrap();
        assert_eq!(got.found, 1, "{got:?}");
        assert_eq!(proxy.requests_to("/referrers/").len(), 1);
        assert_eq!(digest_of(&dst, &r1.to_string()).await, Some(r1.clone()));
        let fallback = fallback_tag(&subject).unwrap();
        let (bytes, ct) = dst.get_manifest(&fallback).await.unwrap();
        assert_eq!(ct.as_deref(), Some(OCI_INDEX));
        let index: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(index["manifests"], json!([r1_desc]), "{index}");

        // Warm: the listing matches; no PUT.
        let again = copy_referrers(&src, &dst, &[subject], &["v1".into()], &tmp)
            .await
            .unwrap();
        assert_eq!((again.manifests, again.tags.len()), (0, 0), "{again:?}");
    });
}

#[test]
fn lying_descriptors_get_no_manifest_written() {
    let env = TestEnv::new();
    let (a, b) = (Registry::start(), Registry::start());
    let rt = runtime();
    let (src, dst) = (repo(&a.host(), "app"), repo(&b.host(), "app"));
    let tmp = env.tmp_dir();
    rt.block_on(async {
        // A descriptor that says 10 bytes of a 20-byte blob.
        let config = blob(&src, "application/vnd.oci.empty.v1+json", b"{}").await;
        let mut layer = blob(&src, "text/plain", b"twenty bytes of text").await;
        layer["size"] = json!(10);
        let doc = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": config, "layers": [layer]});
        let (short, _) = manifest(&src, Some("short"), &doc).await;
        let e = copy_raw(&src, &dst, "short", Some("short"), &tmp)
            .await
            .unwrap_err();
        assert!(
            matches!(e, Error::SizeMismatch { .. } | Error::InvalidImage(_)),
            "{e}"
        );
        assert_eq!(digest_of(&dst, "short").await, None);
        assert_eq!(digest_of(&dst, &short.to_string()).await, None);

        // Blobs whose stored bytes are not their digest, small and spooled.
        for (tag, len) in [("small", 64usize), ("big", 2 << 20)] {
            let data = pseudo_random(len, len as u64);
            let layer = blob(&src, "application/octet-stream", &data).await;
            let d = layer["digest"].as_str().unwrap().to_string();
            let mut evil = data.clone();
            evil[len / 2] ^= 0xff;
            std::fs::write(a.blob_data_path(&d), &evil).unwrap();
            let doc = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": config, "layers": [layer]});
            let (m, _) = manifest(&src, Some(tag), &doc).await;
            let e = copy_raw(&src, &dst, &m.to_string(), Some(tag), &tmp)
                .await
                .unwrap_err();
            assert!(matches!(e, Error::DigestMismatch { .. }), "{tag}: {e}");
            assert_eq!(digest_of(&dst, tag).await, None, "{tag}");
            assert_eq!(dst.blob_exists(&d.parse().unwrap()).await.unwrap(), None);
        }

        // A manifest asked for by a digest it does not have.
        let other = Digest::sha256_of(b"something else");
        let e = copy_raw(&src, &dst, &other.to_string(), None, &tmp)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("MANIFEST_UNKNOWN"), "{e}");
    });
    assert!(
        std::fs::read_dir(env.tmp_dir()).unwrap().next().is_none(),
        "spooled blobs are cleaned up"
    );
}

#[test]
fn deletes_and_registries_that_disable_them() {
    let env = TestEnv::new();
    let reg = Registry::start();
    let rt = runtime();
    let proxy = Proxy::start(&reg.host());
    let direct = repo(&reg.host(), "app");
    let proxied = repo(&proxy.host(), "app");
    let _ = env;
    rt.block_on(async {
        let (d, _) = artifact(&direct, Some("gone"), None, "x/y", "text/plain", b"bye").await;
        assert!(direct.delete_manifest(&d).await.unwrap());
        assert_eq!(digest_of(&direct, "gone").await, None);
        assert!(!direct.delete_manifest(&d).await.unwrap());

        let (d, _) = artifact(&direct, Some("kept"), None, "x/y", "text/plain", b"hi").await;
        proxy.method(
            "DELETE",
            None,
            "/manifests/",
            Fault::Status {
                status: 405,
                retry_after: None,
                code: Some("UNSUPPORTED".into()),
            },
        );
        let e = proxied.delete_manifest(&d).await.unwrap_err();
        assert!(deletes_disabled(&e), "{e}");
        assert!(e.to_string().contains("deletes are disabled"), "{e}");
        assert_eq!(digest_of(&direct, "kept").await, Some(d));
    });
}
