//! Copying an index, through the library: the sources' `index` and `child`
//! (an OCI layout, a real registry) and the `copy_index` driver with a
//! closure standing in for the registry push.

use std::path::Path;
use std::sync::{Arc, Mutex};

use occystrap::digest::Digest;
use occystrap::error::Error;
use occystrap::image::Platform as LibPlatform;
use occystrap::pipeline::index::{IndexCopy, IndexOutcome, copy_index};
use occystrap::pipeline::{self, RunOptions};
use occystrap::progress::Silent;
use occystrap::registry::{Client, ClientOptions, Context, ContextOptions};
use occystrap::sink::oci_layout::OciLayoutSink;
use occystrap::source::oci_layout::OciLayoutSource;
use occystrap::source::registry::RegistrySource;
use occystrap::source::{FetchContext, Source};
use occystrap::wire::Descriptor;
use occystrap::wire::index_plan::Selection;
use occystrap::{CancelToken, Reference};
use serde_json::Value;

use crate::support::images::{BuiltImage, platform_image, unique_dir};
use crate::support::push::{PushFormat, push_index};
use crate::support::{Compression, OciLayout, Registry, TestEnv};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn ctx(env: &TestEnv) -> FetchContext {
    FetchContext::new(env.work(""), Arc::new(Silent))
}

fn lib_platform(s: &str) -> LibPlatform {
    occystrap::wire::index_plan::parse_platform(s).unwrap()
}

const THREE: [&str; 3] = ["linux/amd64", "linux/arm64/v8", "linux/arm/v7"];

/// A layout holding tag `t`: an index over one image per platform.
fn layout_with_index(
    env: &TestEnv,
    platforms: &[&str],
) -> (std::path::PathBuf, Vec<u8>, Vec<BuiltImage>) {
    let built: Vec<BuiltImage> = platforms
        .iter()
        .map(|p| platform_image(p, Compression::Gzip).build())
        .collect();
    let dir = unique_dir(&env.work(""), "src-layout");
    let index = OciLayout::create(&dir).add_index("t", &built);
    (dir, index, built)
}

fn open_layout(dir: &Path) -> Arc<dyn Source> {
    Arc::new(OciLayoutSource::open(dir, Some("t"), &LibPlatform::host()).unwrap())
}

fn copied(outcome: IndexOutcome) -> IndexCopy {
    match outcome {
        IndexOutcome::Copied(c) => c,
        IndexOutcome::NotAnIndex => panic!("the source named an index"),
    }
}

fn digest(s: &str) -> Digest {
    s.parse().unwrap()
}

/// The descriptor of tag `tag` in the layout at `dir`.
fn tagged(dir: &Path, tag: &str) -> Descriptor {
    let index: Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let entry = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap();
    serde_json::from_value(entry.clone()).unwrap()
}

/// Every platform runs through a real pipeline into an OCI layout, one
/// child at a time and in index order; unfiltered, the index comes back
/// byte for byte and every child it lists is in the output.
#[test]
fn all_platforms_of_a_layout_keep_the_index() {
    let env = TestEnv::new();
    let (dir, index, built) = layout_with_index(&env, &THREE);
    let out = unique_dir(&env.work(""), "out-layout");
    let ran = Arc::new(Mutex::new(Vec::new()));
    let copy = runtime().block_on(async {
        let (ran, out) = (ran.clone(), out.clone());
        copy_index(
            open_layout(&dir),
            &ctx(&env),
            &Selection::All,
            move |child, d| {
                let (ran, out) = (ran.clone(), out.clone());
                async move {
                    let tag = d.digest.hex()[..12].to_string();
                    let image = child.resolve(&ctx(&TestEnv::new())).await?;
                    ran.lock()
                        .unwrap()
                        .push((d.digest.clone(), image.manifest.unwrap().digest));
                    let sink = OciLayoutSink::new(&out, Some(&tag), CancelToken::new())?;
                    pipeline::run(child, Box::new(sink), RunOptions::default()).await?;
                    Ok(tagged(&out, &tag))
                }
            },
        )
        .await
    });
    let copy = copied(copy.unwrap());
    assert!(copy.unchanged);
    assert_eq!(copy.raw, index);
    assert_eq!(copy.digest, Digest::sha256_of(&index));
    assert_eq!(copy.media_type, "application/vnd.oci.image.index.v1+json");
    let want: Vec<Digest> = built.iter().map(|b| digest(&b.manifest_digest)).collect();
    let ran = ran.lock().unwrap().clone();
    assert_eq!(ran.iter().map(|r| r.0.clone()).collect::<Vec<_>>(), want);
    assert!(
        ran.iter().all(|(d, resolved)| d == resolved),
        "each child source is its own manifest"
    );
    for (old, new) in &copy.children {
        assert_eq!(old.digest, new.digest);
        assert!(out.join("blobs/sha256").join(new.digest.hex()).is_file());
    }
    assert!(copy.skipped.is_empty());
}

/// Pushes nothing: answers each child with its own descriptor.
async fn same(_child: Arc<dyn Source>, d: Descriptor) -> occystrap::Result<Descriptor> {
    Ok(d)
}

#[test]
fn a_subset_gets_an_index_of_its_own() {
    let env = TestEnv::new();
    let (dir, index, built) = layout_with_index(&env, &THREE);
    let selection = Selection::parse_platforms("linux/arm/v7,linux/amd64").unwrap();
    let copy = runtime()
        .block_on(copy_index(open_layout(&dir), &ctx(&env), &selection, same))
        .unwrap();
    let copy = copied(copy);
    assert!(!copy.unchanged);
    assert_eq!(copy.digest, Digest::sha256_of(&copy.raw));
    let doc: Value = serde_json::from_slice(&copy.raw).unwrap();
    let original: Value = serde_json::from_slice(&index).unwrap();
    let list = doc["manifests"].as_array().unwrap();
    // Index order, not the order asked in.
    assert_eq!(
        list,
        &[
            original["manifests"][0].clone(),
            original["manifests"][2].clone()
        ]
    );
    assert_eq!(list[1]["digest"], built[2].manifest_digest.as_str());
    assert_eq!(doc["mediaType"], original["mediaType"]);
    assert_eq!(copy.children.len(), 2);
}

#[test]
fn a_filtered_child_is_listed_by_its_new_digest() {
    let env = TestEnv::new();
    let (dir, _, built) = layout_with_index(&env, &THREE);
    let new_digest = Digest::sha256_of(b"rewritten");
    let rewrite = {
        let new_digest = new_digest.clone();
        move |_child: Arc<dyn Source>, d: Descriptor| {
            let new_digest = new_digest.clone();
            async move {
                Ok(if d.platform.as_ref().unwrap().architecture == "arm64" {
                    Descriptor {
                        digest: new_digest,
                        size: 9,
                        ..d
                    }
                } else {
                    d
                })
            }
        }
    };
    let copy = runtime()
        .block_on(copy_index(
            open_layout(&dir),
            &ctx(&env),
            &Selection::All,
            rewrite,
        ))
        .unwrap();
    let copy = copied(copy);
    assert!(!copy.unchanged);
    let doc: Value = serde_json::from_slice(&copy.raw).unwrap();
    let digests: Vec<&str> = doc["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["digest"].as_str().unwrap())
        .collect();
    let new_digest = new_digest.to_string();
    assert_eq!(
        digests,
        [
            built[0].manifest_digest.as_str(),
            new_digest.as_str(),
            built[2].manifest_digest.as_str()
        ]
    );
    assert_eq!(doc["manifests"][1]["size"], 9);
}

#[test]
fn a_failing_child_stops_the_copy() {
    let env = TestEnv::new();
    let (dir, _, _) = layout_with_index(&env, &THREE);
    let calls = Arc::new(Mutex::new(0));
    let fetch = ctx(&env);
    let result = runtime().block_on({
        let calls = calls.clone();
        copy_index(open_layout(&dir), &fetch, &Selection::All, move |_, d| {
            let calls = calls.clone();
            async move {
                *calls.lock().unwrap() += 1;
                if *calls.lock().unwrap() == 2 {
                    return Err(Error::Unsupported("push refused".into()));
                }
                Ok(d)
            }
        })
    });
    assert!(result.unwrap_err().to_string().contains("push refused"));
    assert_eq!(*calls.lock().unwrap(), 2, "no child after the failed one");
}

/// An index without this machine's platform can still be copied whole,
/// though it cannot be resolved as one image.
#[test]
fn an_index_without_the_host_platform_still_copies() {
    let env = TestEnv::new();
    let (dir, index, _) = layout_with_index(&env, &["plan9/mips", "plan9/riscv64"]);
    let source = open_layout(&dir);
    let rt = runtime();
    let e = rt
        .block_on(source.resolve(&ctx(&env)))
        .unwrap_err()
        .to_string();
    assert!(e.contains("plan9/mips"), "{e}");
    let copy = copied(
        rt.block_on(copy_index(source, &ctx(&env), &Selection::All, same))
            .unwrap(),
    );
    assert!(copy.unchanged);
    assert_eq!(copy.raw, index);
    let e = rt
        .block_on(copy_index(
            open_layout(&dir),
            &ctx(&env),
            &Selection::parse_platforms("linux/s390x").unwrap(),
            same,
        ))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("linux/s390x") && e.contains("plan9/riscv64"),
        "{e}"
    );
}

#[test]
fn a_single_image_is_not_an_index() {
    let env = TestEnv::new();
    let dir = unique_dir(&env.work(""), "single");
    OciLayout::create(&dir).add_image(
        "t",
        &platform_image("linux/amd64", Compression::Gzip).build(),
    );
    let rt = runtime();
    let source = open_layout(&dir);
    assert!(rt.block_on(source.index(&ctx(&env))).unwrap().is_none());
    let outcome = rt.block_on(copy_index(
        source.clone(),
        &ctx(&env),
        &Selection::All,
        same,
    ));
    assert!(matches!(outcome, Ok(IndexOutcome::NotAnIndex)));
    let selection = Selection::parse_platforms("linux/amd64").unwrap();
    assert!(
        rt.block_on(copy_index(source, &ctx(&env), &selection, same))
            .is_err()
    );
}

/// A layout's child must be what its descriptor says: a child listed with
/// the wrong size is refused when it is opened.
#[test]
fn a_layout_child_is_checked_against_its_descriptor() {
    let env = TestEnv::new();
    let (dir, index, _) = layout_with_index(&env, &THREE);
    let source = open_layout(&dir);
    let index: Value = serde_json::from_slice(&index).unwrap();
    let mut d: Descriptor = serde_json::from_value(index["manifests"][0].clone()).unwrap();
    assert!(source.child(&d).is_ok());
    d.size += 1;
    assert!(source.child(&d).is_err());
    d.size -= 1;
    d.media_type = "application/vnd.oci.image.index.v1+json".into();
    assert!(source.child(&d).is_err(), "an index inside the index");
}

/// The registry source reads the index as the registry serves it, and each
/// child by digest from the same repository.
#[test]
fn registry_index_and_children() {
    let env = TestEnv::new();
    let reg = Registry::start();
    registry_copy(
        &env,
        &reg,
        PushFormat::Oci,
        "application/vnd.oci.image.index.v1+json",
    );
    registry_copy(
        &env,
        &reg,
        PushFormat::Docker,
        "application/vnd.docker.distribution.manifest.list.v2+json",
    );
}

fn registry_copy(env: &TestEnv, reg: &Registry, format: PushFormat, media_type: &str) {
    let imgs: Vec<_> = THREE
        .iter()
        .map(|p| platform_image(p, Compression::Gzip))
        .collect();
    let built = push_index(env, reg, "team/multi:v1", &imgs, format);
    let (served, _) =
        crate::support::images::registry_manifest(&env.tool_tmp(), reg, "team/multi", "v1");
    let rt = runtime();
    let configs = Arc::new(Mutex::new(Vec::new()));
    let copy = rt.block_on(async {
        let context = Context::new(ContextOptions::default());
        let options = ClientOptions {
            insecure: true,
            retries: 0,
            ..ClientOptions::default()
        };
        let client = Client::new(&context, &reg.host(), options).unwrap();
        let reference = Reference::parse(&format!("{}/team/multi:v1", reg.host())).unwrap();
        let source: Arc<dyn Source> = Arc::new(RegistrySource::new(
            reference,
            lib_platform("linux/amd64"),
            client.repo("team/multi"),
        ));
        let info = source.index(&ctx(env)).await.unwrap().unwrap();
        assert_eq!(info.raw, served);
        assert_eq!(info.digest, Digest::sha256_of(&served));
        let configs = configs.clone();
        copy_index(source, &ctx(env), &Selection::All, move |child, d| {
            let configs = configs.clone();
            async move {
                let image = child.resolve(&ctx(&TestEnv::new())).await?;
                assert_eq!(image.manifest.as_ref().unwrap().digest, d.digest);
                assert!(child.describe().contains(&d.digest.to_string()));
                configs.lock().unwrap().push(image.config_raw);
                Ok(d)
            }
        })
        .await
    });
    let copy = copied(copy.unwrap());
    assert!(copy.unchanged);
    assert_eq!(copy.raw, served);
    assert_eq!(copy.media_type, media_type);
    assert_eq!(copy.children.len(), 3);
    if format == PushFormat::Docker {
        return;
    }
    let want: Vec<Vec<u8>> = built.iter().map(|b| b.config.clone()).collect();
    assert_eq!(
        *configs.lock().unwrap(),
        want,
        "each child is its platform's image"
    );
}

/// The flags parse, conflict, and refuse any destination but a registry
/// (usage errors: exit 2, one line, nothing written).
#[test]
fn platform_flags_need_a_registry_destination() {
    let env = TestEnv::new();
    let (dir, _, _) = layout_with_index(&env, &THREE);
    let src = format!("oci-layout://{}:t", dir.display());
    let out = env.out("x.tar");
    let dst = format!("tar://{}", out.display());
    let cases: [(&[&str], &str); 5] = [
        (
            &["--all-platforms"],
            "--all-platforms needs a registry:// destination",
        ),
        (
            &["--platforms", "linux/amd64,linux/arm64/v8"],
            "--platforms needs a registry:// destination",
        ),
        (&["--platforms", "linux"], "is not a platform"),
        (
            &["--platforms", "linux/amd64", "--all-platforms"],
            "cannot be used with",
        ),
        (&["--platforms", "linux/amd64/v1/x"], "is not a platform"),
    ];
    for (flags, want) in cases {
        let run = env.occy().args(flags).args(["process", &src, &dst]).run();
        assert_eq!(run.code, Some(2), "{flags:?}: {}", run.stderr);
        assert!(run.stderr.contains(want), "{flags:?}: {}", run.stderr);
        assert!(!out.exists(), "{flags:?} wrote the output");
    }
    let run = env.occy().args(["--all-platforms", "info", &src]).run();
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    // Without the flags the same copy runs.
    env.occy().args(["process", &src, &dst]).ok();
    assert!(out.exists());
}
