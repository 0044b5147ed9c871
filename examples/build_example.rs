//! Builds the sample image `hello:latest` from scratch and saves it as a
//! docker-save tarball through the library's docker-archive sink.
//!
//! ```text
//! cargo run --example build_example -- examples/hello.tar
//! docker load -i examples/hello.tar   # or: podman load, skopeo copy docker-archive:...
//! ```
//!
//! Every timestamp and owner is fixed, so the tarball is byte-for-byte
//! reproducible and can be committed.

use std::path::PathBuf;
use std::sync::Arc;

use occystrap::digest::Digest;
use occystrap::image::{FileSlice, Image, Layer, LayerInfo, media_type};
use occystrap::sink::Sink;
use occystrap::sink::docker_archive::DockerArchiveSink;

/// 2024-01-01T00:00:00Z, the mtime of every file in the layers.
const MTIME: u64 = 1_704_067_200;
const CREATED: &str = "2024-01-01T00:00:00Z";

/// One entry of a layer tarball.
enum Entry<'a> {
    Dir(&'a str),
    File(&'a str, u32, &'a [u8]),
    Symlink(&'a str, &'a str),
}

fn layer_tar(entries: &[Entry]) -> std::io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut h = tar::Header::new_ustar();
        h.set_mtime(MTIME);
        h.set_uid(0);
        h.set_gid(0);
        h.set_username("root")?;
        h.set_groupname("root")?;
        match entry {
            Entry::Dir(path) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                builder.append_data(&mut h, path, std::io::empty())?;
            }
            Entry::File(path, mode, data) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                builder.append_data(&mut h, path, *data)?;
            }
            Entry::Symlink(path, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                builder.append_link(&mut h, path, target)?;
            }
        }
    }
    builder.into_inner()
}

/// A README long enough to make the layer more than a couple of blocks.
fn readme() -> Vec<u8> {
    let mut text = String::from(
        "hello\n=====\n\nThis is the sample image that ships with occystrap. It has two\n\
         layers: this one adds a config file, this README, a directory and a\n\
         symlink; the next one changes the config file and deletes this README\n\
         with a whiteout, so tools that flatten or extract images have\n\
         something to get right.\n\n",
    );
    for i in 1..=40 {
        text.push_str(&format!(
            "Line {i:02}: the quick brown fox jumps over the lazy dog.\n"
        ));
    }
    text.into_bytes()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(
        std::env::args_os()
            .nth(1)
            .ok_or("usage: build_example OUTPUT.tar")?,
    );

    let readme = readme();
    let layers = [
        layer_tar(&[
            Entry::Dir("etc/"),
            Entry::File(
                "etc/hello.conf",
                0o644,
                b"# hello configuration\ngreeting = Hello\ntarget = world\n",
            ),
            Entry::Dir("usr/"),
            Entry::Dir("usr/bin/"),
            Entry::Symlink("usr/bin/hello-link", "../share/hello/README"),
            Entry::Dir("usr/share/"),
            Entry::Dir("usr/share/hello/"),
            Entry::File("usr/share/hello/README", 0o644, &readme),
            Entry::Dir("var/"),
            Entry::Dir("var/lib/"),
            Entry::Dir("var/lib/hello/"),
        ])?,
        layer_tar(&[
            Entry::Dir("etc/"),
            Entry::File(
                "etc/hello.conf",
                0o644,
                b"# hello configuration (layer 2)\ngreeting = Hi\ntarget = occystrap\n",
            ),
            Entry::Dir("usr/share/hello/"),
            Entry::File("usr/share/hello/.wh.README", 0o644, b""),
        ])?,
    ];
    let diff_ids: Vec<Digest> = layers.iter().map(|t| Digest::sha256_of(t)).collect();

    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "created": CREATED,
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/usr/bin/hello-link"],
            "WorkingDir": "/var/lib/hello",
        },
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
        "history": [
            {
                "created": CREATED,
                "created_by": "COPY etc/hello.conf usr/ /  # occystrap build_example",
            },
            {
                "created": CREATED,
                "created_by": "RUN sed -i s/Hello/Hi/ /etc/hello.conf && rm /usr/share/hello/README",
            },
        ],
    });
    let config_raw = serde_json::to_vec(&config)?;

    let infos: Vec<LayerInfo> = layers
        .iter()
        .zip(&diff_ids)
        .enumerate()
        .map(|(index, (tar, diff_id))| LayerInfo {
            index,
            digest: diff_id.clone(),
            size: tar.len() as u64,
            media_type: media_type::OCI_LAYER_TAR.to_string(),
            diff_id: diff_id.clone(),
        })
        .collect();
    let image = Image {
        name: "hello".into(),
        tag: Some("latest".into()),
        manifest: None,
        config_digest: Digest::sha256_of(&config_raw),
        config_raw,
        config_media_type: media_type::DOCKER_CONFIG.into(),
        layers: infos.clone(),
    };

    // The sink reads layers from files, as they come from real sources.
    let scratch = tempfile::tempdir()?;
    let mut sink: Box<dyn Sink> = Box::new(DockerArchiveSink::new(&out)?);
    sink.begin(&image)?;
    for (info, tar) in infos.into_iter().zip(&layers) {
        let path = scratch.path().join(format!("layer-{}.tar", info.index));
        std::fs::write(&path, tar)?;
        let tar = FileSlice::range(Arc::new(path), 0, tar.len() as u64);
        sink.layer(Layer::files(info, Some(tar), None))?;
    }
    let report = sink.finish(&image)?;
    println!(
        "wrote hello:latest to {} ({} bytes, {} layers)",
        report.output,
        report.bytes_written,
        layers.len()
    );
    Ok(())
}
