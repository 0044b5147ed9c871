//! TLS for the listener (`--tls-cert/--tls-key`): PEM files to a rustls
//! server configuration on the ring provider, offering HTTP/2 and
//! HTTP/1.1 by ALPN.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::{Error, Result};

/// The largest PEM file read: a chain of a few certificates is a few KiB.
const MAX_PEM_BYTES: u64 = 1 << 20;

/// A server configuration from PEM files: a certificate chain (leaf first)
/// and its private key (PKCS#8, PKCS#1 or SEC1, unencrypted).
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>> {
    let cert_pem = read(cert, "--tls-cert")?;
    let certs = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad("--tls-cert", cert, &pem_problem(&e)))?;
    if certs.is_empty() {
        return Err(bad(
            "--tls-cert",
            cert,
            "no PEM CERTIFICATE block in the file",
        ));
    }
    let key_pem = read(key, "--tls-key")?;
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        let what = match e {
            pem::Error::NoItemsFound if contains(&key_pem, b"ENCRYPTED PRIVATE KEY") => {
                "the key is encrypted; give it unencrypted (openssl pkey -in KEY -out PLAIN)"
                    .to_string()
            }
            pem::Error::NoItemsFound => {
                "no PEM private key (PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY) in the file"
                    .to_string()
            }
            e => pem_problem(&e),
        };
        bad("--tls-key", key, &what)
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Usage(format!("TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, private)
        .map_err(|e| {
            Error::Usage(format!(
                "--tls-cert {} with --tls-key {}: {e}",
                cert.display(),
                key.display()
            ))
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The whole of a PEM file, bounded.
fn read(path: &Path, flag: &str) -> Result<Vec<u8>> {
    use std::io::Read as _;
    let file = std::fs::File::open(path).map_err(|e| Error::io("opening", path, e))?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io("reading", path, e))?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(bad(flag, path, "larger than 1 MiB"));
    }
    Ok(bytes)
}

fn bad(flag: &str, path: &Path, what: &str) -> Error {
    Error::Usage(format!("{flag} {}: {what}", path.display()))
}

/// What is wrong with a PEM file, without echoing its bytes.
fn pem_problem(e: &pem::Error) -> String {
    match e {
        pem::Error::MissingSectionEnd { .. } => "a PEM block has no END line".into(),
        pem::Error::IllegalSectionStart { .. } => "a malformed PEM BEGIN line".into(),
        pem::Error::Base64Decode(_) => "a PEM block is not valid base64".into(),
        pem::Error::NoItemsFound => "no PEM block of the expected kind".into(),
        pem::Error::SectionTooLarge => "a PEM block is too large".into(),
        _ => "not a PEM file".into(),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::path::PathBuf;
    use std::process::Command;

    /// Runs openssl in `dir`.
    fn openssl(dir: &Path, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A self-signed certificate and its key (`kind`: openssl's -newkey
    /// argument), the key as openssl writes it (PKCS#8).
    fn self_signed(dir: &Path, name: &str, kind: &[&str]) -> (PathBuf, PathBuf) {
        let (cert, key) = (format!("{name}.pem"), format!("{name}.key"));
        let mut args = vec!["req", "-x509", "-nodes", "-days", "2"];
        args.extend(kind);
        args.extend([
            "-keyout",
            &key,
            "-out",
            &cert,
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ]);
        openssl(dir, &args);
        (dir.join(cert), dir.join(key))
    }

    fn ec(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        self_signed(
            dir,
            name,
            &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
        )
    }

    #[test]
    fn pkcs8_pkcs1_and_sec1_keys_load_with_alpn() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (cert, key) = ec(d, "ec");
        assert!(
            std::fs::read_to_string(&key)
                .unwrap()
                .contains("BEGIN PRIVATE KEY")
        );
        let config = server_config(&cert, &key).unwrap();
        assert_eq!(
            config.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        // SEC1: EC PRIVATE KEY.
        openssl(d, &["ec", "-in", "ec.key", "-out", "ec-sec1.key"]);
        let sec1 = d.join("ec-sec1.key");
        assert!(
            std::fs::read_to_string(&sec1)
                .unwrap()
                .contains("BEGIN EC PRIVATE KEY")
        );
        server_config(&cert, &sec1).unwrap();
        // PKCS#1: RSA PRIVATE KEY.
        let (rsa_cert, rsa_key) = self_signed(d, "rsa", &["-newkey", "rsa:2048"]);
        openssl(
            d,
            &[
                "rsa",
                "-in",
                "rsa.key",
                "-traditional",
                "-out",
                "rsa-pkcs1.key",
            ],
        );
        let pkcs1 = d.join("rsa-pkcs1.key");
        assert!(
            std::fs::read_to_string(&pkcs1)
                .unwrap()
                .contains("BEGIN RSA PRIVATE KEY")
        );
        server_config(&rsa_cert, &pkcs1).unwrap();
        server_config(&rsa_cert, &rsa_key).unwrap();
    }

    #[test]
    fn problems_name_the_file_on_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (cert, key) = ec(d, "a");
        let (_, other_key) = ec(d, "b");
        let err = |c: &Path, k: &Path| {
            let e = server_config(c, k).unwrap_err();
            let text = crate::proxy::error::chain(&e);
            assert!(!text.contains('\n'), "{text}");
            text
        };
        // Swapped: the key file has no certificate.
        let e = err(&key, &cert);
        assert!(e.contains("--tls-cert") && e.contains("a.key"), "{e}");
        assert!(e.contains("no PEM CERTIFICATE"), "{e}");
        // A certificate where the key should be.
        let e = err(&cert, &cert);
        assert!(e.contains("--tls-key") && e.contains("a.pem"), "{e}");
        assert!(e.contains("no PEM private key"), "{e}");
        // The key of another certificate.
        let e = err(&cert, &other_key);
        assert!(e.contains("b.key"), "{e}");
        // Missing files.
        let e = err(&d.join("nope.pem"), &key);
        assert!(e.contains("nope.pem"), "{e}");
        let e = err(&cert, &d.join("nope.key"));
        assert!(e.contains("nope.key"), "{e}");
        // An encrypted key.
        openssl(
            d,
            &[
                "pkey", "-in", "a.key", "-aes256", "-passout", "pass:x", "-out", "enc.key",
            ],
        );
        let e = err(&cert, &d.join("enc.key"));
        assert!(e.contains("encrypted"), "{e}");
        // Broken PEM, without its bytes in the message.
        let broken = d.join("broken.pem");
        std::fs::write(&broken, "-----BEGIN CERTIFICATE-----\n@@@@\n").unwrap();
        let e = err(&broken, &key);
        assert!(e.contains("broken.pem") && !e.contains("@@@@"), "{e}");
        // Too large.
        let big = d.join("big.pem");
        std::fs::write(&big, vec![b'\n'; (MAX_PEM_BYTES + 1) as usize]).unwrap();
        let e = err(&big, &key);
        assert!(e.contains("larger than 1 MiB"), "{e}");
    }
}
