//! `inspect:file=PATH`: appends what the image looks like to a JSON Lines
//! file, one line per image.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;

use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::filter::{Filter, FilterContext, FilterSpec};
use crate::image::{Image, Layer};

/// Observes only: at the end of the run it appends one JSON object per
/// image, on one line, to a file (created if missing).
///
/// It records the image as the whole chain left it, wherever it stands in
/// the chain: after `normalize-timestamps` or `exclude` the layers carry
/// their new diff_ids and the config its new digest. The object holds
/// `name` (`repository:tag`, or `repository@digest`), `repository`, `tag`,
/// `manifest_digest` (null once a filter has changed the image, since the
/// source's manifest no longer describes it), `config_digest`, and
/// `layers`, bottom first, each with `index`, `digest`, `size` and
/// `media_type` (of the blob as the destination receives it), `diff_id`,
/// and `created`, `created_by`, `comment` and `empty_layer` from the config
/// history entry that made the layer (history entries marked
/// `empty_layer` make none; the fields are null when the history is short).
///
/// The file is opened (`O_APPEND`) before any layer is fetched, so a path
/// that cannot be written fails the run at once, and the line is written
/// with one `write` call, so runs appending to the same file at once do
/// not interleave.
#[derive(Debug)]
pub struct Inspect {
    file: PathBuf,
    handle: Option<File>,
}

impl Inspect {
    /// A filter appending to `file`.
    pub fn new(file: impl Into<PathBuf>) -> Inspect {
        Inspect {
            file: file.into(),
            handle: None,
        }
    }

    fn open(&self) -> Result<File> {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.file)
            .map_err(|e| Error::io("opening", &self.file, e))
    }

    /// Builds the filter from `-f inspect:file=PATH`.
    pub fn from_spec(spec: &FilterSpec) -> Result<Inspect> {
        spec.check_options(&["file"])?;
        match spec.get("file") {
            Some(f) if !f.is_empty() => Ok(Inspect::new(f)),
            _ => Err(Error::Usage(
                "inspect needs a file to append to (inspect:file=PATH)".into(),
            )),
        }
    }
}

/// The JSON object describing `image` (see [`Inspect`]).
pub fn describe(image: &Image) -> Value {
    let history: Vec<Value> = image
        .config_json()
        .ok()
        .and_then(|c| c.get("history").and_then(Value::as_array).cloned())
        .unwrap_or_default();
    // Each history entry not marked empty_layer made the next layer.
    let mut layer_history = history.iter().filter(|h| {
        !h.get("empty_layer")
            .and_then(Value::as_bool)
            .unwrap_or(false)
    });
    let layers: Vec<Value> = image
        .layers
        .iter()
        .map(|l| {
            let h = layer_history.next();
            let field = |k: &str| h.and_then(|h| h.get(k)).cloned().unwrap_or(Value::Null);
            json!({
                "index": l.index,
                "digest": l.digest,
                "diff_id": l.diff_id,
                "size": l.size,
                "media_type": l.media_type,
                "created": field("created"),
                "created_by": field("created_by"),
                "comment": field("comment"),
                "empty_layer": h.map(|h| h.get("empty_layer").cloned().unwrap_or(Value::Bool(false))),
            })
        })
        .collect();
    let name = match (&image.tag, &image.manifest) {
        (Some(t), _) => format!("{}:{t}", image.name),
        (None, Some(m)) => format!("{}@{}", image.name, m.digest),
        (None, None) => image.name.clone(),
    };
    json!({
        "name": name,
        "repository": image.name,
        "tag": image.tag,
        "manifest_digest": image.manifest.as_ref().map(|m| m.digest.to_string()),
        "config_digest": image.config_digest,
        "layers": layers,
    })
}

impl Filter for Inspect {
    fn name(&self) -> &'static str {
        "inspect"
    }

    fn begin(&mut self, _image: &Image) -> Result<()> {
        self.handle = Some(self.open()?);
        Ok(())
    }

    /// Reads no layer's bytes: an observer that looks at nothing lets
    /// layers stream past it.
    fn observer(&self) -> Option<crate::filter::LayerObserver> {
        Some(std::sync::Arc::new(|_, _| Ok(())))
    }

    fn layer(&mut self, layer: Layer, _ctx: &FilterContext) -> Result<Layer> {
        Ok(layer)
    }

    fn finish(&mut self, image: &Image) -> Result<()> {
        // Control characters escaped by JSON's rules, C1 and the like too:
        // the file is meant to be read, by people as well.
        let mut line = crate::escape::to_vec(&describe(image))
            .map_err(|e| Error::InvalidImage(format!("inspect: encoding JSON: {e}")))?;
        line.push(b'\n');
        let mut f = match self.handle.take() {
            Some(f) => f,
            None => self.open()?,
        };
        // One write call: with O_APPEND the kernel places it whole at the end.
        f.write_all(&line)
            .map_err(|e| Error::io("appending to", &self.file, e))?;
        tracing::info!(
            "inspect: wrote {} layers of {} to {}",
            image.layers.len(),
            image.name,
            self.file.display()
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;
    use crate::image::LayerInfo;

    fn image(layers: usize) -> Image {
        let config = json!({
            "rootfs": {"type": "layers", "diff_ids": []},
            "history": [
                {"created": "2023-01-01T00:00:00Z", "created_by": "ADD base /", "comment": "base"},
                {"created": "2023-01-02T00:00:00Z", "created_by": "ENV A=1", "empty_layer": true},
                {"created": "2023-01-03T00:00:00Z", "created_by": "RUN make", "empty_layer": false},
                {"created": "2023-01-04T00:00:00Z", "created_by": "CMD sh", "empty_layer": true},
            ],
        });
        let config_raw = serde_json::to_vec(&config).unwrap();
        Image {
            name: "127.0.0.1:5000/team/app".into(),
            tag: Some("v1".into()),
            manifest: None,
            config_digest: Digest::sha256_of(&config_raw),
            config_raw,
            config_media_type: crate::image::media_type::OCI_CONFIG.into(),
            layers: (0..layers)
                .map(|i| LayerInfo {
                    index: i,
                    digest: Digest::sha256_of(format!("blob {i}").as_bytes()),
                    size: 1000 + i as u64,
                    media_type: crate::image::media_type::OCI_LAYER_GZIP.into(),
                    diff_id: Digest::sha256_of(format!("tar {i}").as_bytes()),
                })
                .collect(),
        }
    }

    #[test]
    fn history_matches_layers_past_empty_entries() {
        let img = image(3);
        let v = describe(&img);
        assert_eq!(v["name"], "127.0.0.1:5000/team/app:v1");
        assert_eq!(v["repository"], "127.0.0.1:5000/team/app");
        assert_eq!(v["tag"], "v1");
        assert_eq!(v["manifest_digest"], Value::Null);
        assert_eq!(v["config_digest"], img.config_digest.to_string());
        let l = v["layers"].as_array().unwrap();
        assert_eq!(l.len(), 3);
        assert_eq!(l[0]["created_by"], "ADD base /");
        assert_eq!(l[0]["comment"], "base");
        assert_eq!(l[0]["empty_layer"], false);
        assert_eq!(l[1]["created_by"], "RUN make");
        assert_eq!(l[1]["created"], "2023-01-03T00:00:00Z");
        assert_eq!(l[1]["comment"], Value::Null);
        assert_eq!(l[1]["diff_id"], img.layers[1].diff_id.to_string());
        assert_eq!(l[1]["digest"], img.layers[1].digest.to_string());
        assert_eq!(l[1]["size"], 1001);
        assert_eq!(l[1]["media_type"], crate::image::media_type::OCI_LAYER_GZIP);
        // More layers than history: nulls, not a failure.
        assert_eq!(l[2]["created_by"], Value::Null);
        assert_eq!(l[2]["empty_layer"], Value::Null);
    }

    #[test]
    fn options() {
        let ok = FilterSpec::parse("inspect:file=/tmp/x.jsonl").unwrap();
        assert_eq!(
            Inspect::from_spec(&ok).unwrap().file,
            PathBuf::from("/tmp/x.jsonl")
        );
        assert!(!Inspect::from_spec(&ok).unwrap().rewrites());
        for bad in ["inspect", "inspect:file=", "inspect:path=x"] {
            let e = Inspect::from_spec(&FilterSpec::parse(bad).unwrap()).unwrap_err();
            assert!(e.is_usage(), "{bad}: {e}");
        }
    }

    #[test]
    fn concurrent_appends_do_not_interleave() {
        let dir = tempfile::tempdir().unwrap();
        let img = image(200);
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let img = img.clone();
                let file = dir.path().join("out.jsonl");
                std::thread::spawn(move || {
                    let mut f = Inspect::new(file);
                    for _ in 0..10 {
                        f.finish(&img).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let text = std::fs::read_to_string(dir.path().join("out.jsonl")).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 80);
        // Far beyond PIPE_BUF, where atomicity would be a given anyway.
        assert!(lines[0].len() > 16 * 1024);
        for l in lines {
            let v: Value = serde_json::from_str(l).unwrap();
            assert_eq!(v["layers"].as_array().unwrap().len(), 200);
        }
        // A file that cannot be created is an error naming it.
        let mut f = Inspect::new(dir.path().join("no/such/dir/x.jsonl"));
        let e = f.finish(&img).unwrap_err().to_string();
        assert!(e.contains("x.jsonl"), "{e}");
    }
}
