//! The JSON message streams an engine answers a load or a push with: one
//! object after another (`{"stream": "Loaded image: …"}`, `{"status": …}`,
//! `{"errorDetail": {…}, "error": "…"}`), read as they come.

use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde::Deserialize;

use super::Engine;
use crate::error::Result;

/// Largest single message kept; an engine's are a few hundred bytes.
const MESSAGE_LIMIT: usize = 1 << 20;

/// How many `stream` lines are kept for the report.
const KEEP: usize = 64;

#[derive(Deserialize)]
struct Message {
    #[serde(default)]
    stream: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(rename = "errorDetail", default)]
    error_detail: Option<ErrorDetail>,
}

#[derive(Deserialize)]
struct ErrorDetail {
    #[serde(default)]
    message: Option<String>,
}

/// Reads a message stream to its end. Returns the `stream` lines (`Loaded
/// image: app:v1`), trimmed and without empty ones; an `error` message
/// fails with the engine's words.
pub async fn read_messages(
    engine: &Engine,
    operation: &str,
    mut body: Incoming,
) -> Result<Vec<String>> {
    let mut buf: Vec<u8> = Vec::new();
    let mut lines = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| engine.error(operation, format!("reading the answer: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buf.extend_from_slice(&data);
        let used = take_messages(engine, operation, &buf, &mut lines)?;
        buf.drain(..used);
        if buf.len() > MESSAGE_LIMIT {
            return Err(engine.error(
                operation,
                format!("a message of the answer is over {MESSAGE_LIMIT} bytes"),
            ));
        }
    }
    let used = take_messages(engine, operation, &buf, &mut lines)?;
    if buf[used..].iter().any(|b| !b.is_ascii_whitespace()) {
        // Not JSON at all: an engine that answers in text.
        let text = String::from_utf8_lossy(&buf[used..]).trim().to_string();
        lines.push(text);
    }
    Ok(lines)
}

/// Takes every whole message at the front of `buf`; returns how many bytes
/// they used.
fn take_messages(
    engine: &Engine,
    operation: &str,
    buf: &[u8],
    lines: &mut Vec<String>,
) -> Result<usize> {
    let mut stream = serde_json::Deserializer::from_slice(buf).into_iter::<Message>();
    let mut used = 0;
    loop {
        match stream.next() {
            Some(Ok(m)) => {
                used = stream.byte_offset();
                if let Some(e) = m.error_detail.and_then(|d| d.message).or(m.error) {
                    return Err(engine.error(operation, e.trim().to_string()));
                }
                if let Some(s) = m.stream.or(m.status.filter(|s| s.starts_with("Loaded"))) {
                    let s = s.trim();
                    if !s.is_empty() && lines.len() < KEEP {
                        lines.push(s.to_string());
                    }
                }
            }
            // An incomplete message waits for more bytes; a broken one is
            // left for the caller to report at the end.
            Some(Err(e)) if e.is_eof() => return Ok(used),
            Some(Err(_)) | None => return Ok(used),
        }
    }
}
