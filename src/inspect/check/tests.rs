//! The check driver over a fake source: failures stay per layer, typed.

use super::*;
use crate::inspect::testsource::{FakeSource, Serve, options, tar_of};

fn run(source: Arc<FakeSource>, fast: bool) -> CheckReport {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(check(source, fast, options()))
}

fn verify_findings(r: &CheckReport) -> Vec<(Option<usize>, String)> {
    r.findings
        .iter()
        .filter(|f| f.check == "layer-verify")
        .map(|f| (f.layer, f.message.clone()))
        .collect()
}

#[test]
fn each_failed_layer_is_a_finding_of_its_kind_and_the_rest_are_checked() {
    let kinds = [
        (Mismatch::DiffId, "diff_id does not match"),
        (Mismatch::BlobDigest, "blob digest does not match"),
        (Mismatch::BlobSize, "blob size does not match"),
        (Mismatch::Manifest, "blob digest does not match"),
    ];
    for (kind, says) in kinds {
        // Layers 1 and 3 fail; 0 is the slowest to arrive.
        let layers = vec![
            Serve::Tar(tar_of(&["a"]), 150),
            Serve::Fail(kind),
            Serve::Tar(tar_of(&["b", "c"]), 0),
            Serve::Fail(kind),
        ];
        let r = run(FakeSource::new(layers, true), false);
        assert!(!r.ok);
        assert_eq!(r.layers, 4);
        assert_eq!(r.layers_checked, 2);
        let v = verify_findings(&r);
        assert_eq!(v.len(), 2, "{r:?}");
        assert_eq!(v[0].0, Some(1));
        assert_eq!(v[1].0, Some(3));
        assert!(v.iter().all(|(_, m)| m.contains(says)), "{kind:?}: {v:?}");
        // Layer findings come in layer order, after the metadata.
        let layers: Vec<usize> = r.findings.iter().filter_map(|f| f.layer).collect();
        assert!(layers.windows(2).all(|w| w[0] <= w[1]), "{layers:?}");
        let layer_errors = r
            .findings
            .iter()
            .filter(|f| f.layer.is_some() && f.severity == Severity::Error)
            .count();
        assert_eq!(layer_errors, 2, "{r:?}");
    }
}

#[test]
fn fast_fetches_nothing_and_blobs_are_asked_only_with_a_manifest() {
    let layers = || vec![Serve::Tar(tar_of(&["a"]), 0), Serve::Tar(tar_of(&["b"]), 0)];
    let src = FakeSource::new(layers(), true);
    let r = run(src.clone(), true);
    assert_eq!((r.mode, r.layers, r.layers_checked), ("fast", 2, 0));
    assert!(src.asked.lock().unwrap().is_empty());

    for manifest in [true, false] {
        let src = FakeSource::new(layers(), manifest);
        let r = run(src.clone(), false);
        assert_eq!(r.layers_checked, 2, "{r:?}");
        let asked = src.asked.lock().unwrap();
        assert_eq!(asked.len(), 2);
        let mut sink = CheckSink {
            report: CheckReport::new("fake".into(), false),
            declared: false,
            by_layer: BTreeMap::new(),
            slot: Slot::default(),
        };
        let ctx = FetchContext::new(std::env::temp_dir(), Arc::new(crate::progress::Silent));
        let image = tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(src.resolve(&ctx))
            .unwrap();
        sink.begin(&image).unwrap();
        assert_eq!(
            sink.needs(),
            LayerNeeds {
                tar: true,
                blob: manifest
            }
        );
        // The layer summary of each layer is there.
        let infos = r.findings.iter().filter(|f| f.check == "layer").count();
        assert_eq!(infos, 2, "{r:?}");
    }
}

#[test]
fn a_source_that_does_not_resolve_is_one_finding() {
    struct Broken;
    impl Source for Broken {
        fn describe(&self) -> String {
            "broken".into()
        }
        fn resolve<'a>(&'a self, _: &'a FetchContext) -> BoxFuture<'a, Result<Image>> {
            Box::pin(async { Err(Error::InvalidImage("no manifest here".into())) })
        }
        fn fetch<'a>(
            &'a self,
            _: &'a LayerInfo,
            _: &'a FetchContext,
        ) -> BoxFuture<'a, Result<LayerBlob>> {
            unreachable!("nothing resolved, nothing fetched")
        }
    }
    for fast in [true, false] {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let r = rt.block_on(check(Arc::new(Broken), fast, options()));
        assert!(!r.ok);
        assert_eq!(r.image, None);
        assert_eq!(r.findings.len(), 1);
        assert_eq!(r.findings[0].check, "resolve");
        assert!(r.findings[0].message.contains("no manifest here"));
    }
    // A temp dir that cannot be made: unreadable, before any resolve.
    let mut o = options();
    o.temp_dir = Some("/proc/no/such/dir".into());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let r = rt.block_on(check(Arc::new(Broken), false, o));
    assert_eq!(r.findings[0].check, "open", "{r:?}");
}
