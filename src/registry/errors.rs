//! A registry's JSON error body (`{"errors":[{"code","message","detail"}]}`)
//! read into typed codes and a one-line message. Bodies are hostile: they
//! are capped, any shape is accepted or ignored, and nothing panics.

use crate::error::RegistryErrorCode;

/// Largest error body parsed; the reader stops there too.
pub(crate) const MAX_ERROR_BODY: usize = 64 << 10;
/// Errors of one body kept, in the message and in the codes.
const MAX_ERRORS: usize = 3;

/// What a registry's error body says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegistryErrorBody {
    /// The codes of its first few errors, in order; an error without a
    /// code adds none.
    pub codes: Vec<RegistryErrorCode>,
    /// `CODE: message` of each of those errors, `; `-joined, each part on
    /// one line and truncated; `None` when no error had a code or message.
    pub detail: Option<String>,
}

/// Reads an error body. Anything that is not the spec's shape (not JSON,
/// no `errors` array, entries that are not objects, codes that are not
/// strings) yields what could be read, possibly nothing; a body over the
/// cap yields nothing.
pub fn parse_error_body(body: &[u8]) -> RegistryErrorBody {
    let mut out = RegistryErrorBody::default();
    if body.len() > MAX_ERROR_BODY {
        return out;
    }
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return out;
    };
    let Some(errors) = v.get("errors").and_then(|e| e.as_array()) else {
        return out;
    };
    let mut parts = Vec::new();
    for e in errors.iter().take(MAX_ERRORS) {
        let code = e.get("code").and_then(|c| c.as_str()).unwrap_or("");
        let msg = e.get("message").and_then(|c| c.as_str()).unwrap_or("");
        if !code.is_empty() {
            out.codes.push(RegistryErrorCode::parse(code));
        }
        let s = match (code.is_empty(), msg.is_empty()) {
            (true, true) => continue,
            (false, true) => code.to_string(),
            (true, false) => msg.to_string(),
            (false, false) => format!("{code}: {msg}"),
        };
        parts.push(crate::digest::truncate_for_error(
            &s.replace(['\n', '\r'], " "),
        ));
    }
    out.detail = (!parts.is_empty()).then(|| parts.join("; "));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use RegistryErrorCode as C;

    fn body(code: &str, message: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "errors": [{"code": code, "message": message, "detail": {}}]
        }))
        .unwrap()
    }

    #[test]
    fn error_bodies() {
        let b =
            br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{}}]}"#;
        let p = parse_error_body(b);
        assert_eq!(
            p.detail.as_deref(),
            Some("MANIFEST_UNKNOWN: manifest unknown")
        );
        assert_eq!(p.codes, [C::ManifestUnknown]);
        assert_eq!(parse_error_body(b"<html>"), RegistryErrorBody::default());
    }

    #[test]
    fn every_spec_code_parses_and_prints_back() {
        let all = [
            ("BLOB_UNKNOWN", C::BlobUnknown),
            ("BLOB_UPLOAD_INVALID", C::BlobUploadInvalid),
            ("BLOB_UPLOAD_UNKNOWN", C::BlobUploadUnknown),
            ("DIGEST_INVALID", C::DigestInvalid),
            ("MANIFEST_BLOB_UNKNOWN", C::ManifestBlobUnknown),
            ("MANIFEST_INVALID", C::ManifestInvalid),
            ("MANIFEST_UNKNOWN", C::ManifestUnknown),
            ("NAME_INVALID", C::NameInvalid),
            ("NAME_UNKNOWN", C::NameUnknown),
            ("SIZE_INVALID", C::SizeInvalid),
            ("UNAUTHORIZED", C::Unauthorized),
            ("DENIED", C::Denied),
            ("UNSUPPORTED", C::Unsupported),
            ("TOOMANYREQUESTS", C::TooManyRequests),
        ];
        for (name, code) in all {
            let p = parse_error_body(&body(name, "words"));
            assert_eq!(p.codes, std::slice::from_ref(&code), "{name}");
            assert_eq!(p.detail, Some(format!("{name}: words")));
            assert_eq!(code.as_str(), name);
            assert_eq!(code.to_string(), name);
        }
    }

    #[test]
    fn unknown_codes_are_kept_and_capped() {
        for name in ["NOT_FOUND", "blob_unknown", "BLOB_UNKNOWN ", "ÜBER", ""] {
            let p = parse_error_body(&body(name, "m"));
            if name.is_empty() {
                assert!(p.codes.is_empty());
                assert_eq!(p.detail.as_deref(), Some("m"));
            } else {
                assert_eq!(p.codes, [C::Other(name.to_string())], "{name:?}");
            }
        }
        let long = "X".repeat(10_000);
        let p = parse_error_body(&body(&long, ""));
        match &p.codes[..] {
            [C::Other(s)] => assert!(s.chars().count() <= 101, "{}", s.len()),
            other => panic!("{other:?}"),
        }
        assert!(p.detail.unwrap().chars().count() <= 101);
    }

    #[test]
    fn several_errors_keep_the_first_few_in_order() {
        let b = serde_json::to_vec(&serde_json::json!({"errors": [
            {"code": "DENIED", "message": "no"},
            {"message": "only words"},
            {"code": "NAME_UNKNOWN"},
            {"code": "TOOMANYREQUESTS", "message": "past the cap"},
        ]}))
        .unwrap();
        let p = parse_error_body(&b);
        assert_eq!(p.codes, [C::Denied, C::NameUnknown]);
        assert_eq!(
            p.detail.as_deref(),
            Some("DENIED: no; only words; NAME_UNKNOWN")
        );
    }

    #[test]
    fn hostile_bodies_yield_nothing_or_what_is_readable() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let huge = format!(
            r#"{{"errors":[{{"code":"DENIED","message":"{}"}}]}}"#,
            "a".repeat(MAX_ERROR_BODY)
        );
        let mut invalid_utf8 = br#"{"errors":[{"code":"DENIED","message":"#.to_vec();
        invalid_utf8.extend_from_slice(b"\"\xff\xfe\"}]}");
        let garbage: Vec<Vec<u8>> = vec![
            Vec::new(),
            b"null".to_vec(),
            b"{}".to_vec(),
            b"{\"errors\":null}".to_vec(),
            b"{\"errors\":{\"code\":\"DENIED\"}}".to_vec(),
            b"{\"errors\":[1,\"x\",null,[]]}".to_vec(),
            b"{\"errors\":[{\"code\":7,\"message\":{}}]}".to_vec(),
            b"{\"errors\":[{\"code\":\"DENIED\"".to_vec(),
            deep.into_bytes(),
            huge.into_bytes(),
            invalid_utf8,
            (0..=255u8).cycle().take(50_000).collect(),
        ];
        for g in &garbage {
            let p = parse_error_body(g);
            assert_eq!(
                p,
                RegistryErrorBody::default(),
                "{:?}",
                String::from_utf8_lossy(&g[..g.len().min(60)])
            );
        }
        // Newlines in a message stay on one line.
        let p = parse_error_body(&body("DENIED", "a\nb\r\nc"));
        assert_eq!(p.detail.as_deref(), Some("DENIED: a b  c"));
    }
}
