//! Keeping text that came from an image or a registry (tags, history, Env,
//! labels, entry names, link targets, error messages) from acting on a
//! terminal: every control character and every invisible formatting
//! character is shown as a visible escape, and a value cannot start a new
//! output line.
//!
//! Two mechanisms, sharing one idea of what is unsafe:
//!
//! - [`TextOut`] wraps a text stream (stdout, the `error:` line, log lines).
//!   Each write is one piece of text — with `write!`/`writeln!`, one
//!   formatted piece — whose control characters are all escaped except a
//!   newline that ends the piece. So `writeln!(out, "  {path}")` prints one
//!   line whatever `path` holds.
//! - The JSON writers ([`to_writer_pretty`], [`to_vec`], [`to_string`]) are
//!   serde_json with strings also escaping DEL, the C1 controls and the
//!   formatting characters as `\uXXXX` (serde_json itself escapes only
//!   U+0000–U+001F), so the output is plain JSON and every string
//!   round-trips exactly.
//!
//! The escapes: `\n`, `\r`, `\t`; `\xNN` for the other C0 controls and DEL
//! (`\x1b`); `\u{NN}` for C1 controls and formatting characters (`\u{9b}`,
//! `\u{202e}`); `\xNN` with NN ≥ 80 for a byte that is not UTF-8. [`Escaped`]
//! also writes a backslash as `\\`, so that its output can be read back
//! unambiguously (script-friendly output uses it); the stream wrapper does
//! not, since it also carries text of our own.

use std::borrow::Cow;
use std::fmt;
use std::io;

use serde::Serialize;

/// Whether `c` must not reach a terminal as it is: a control character
/// (C0, DEL, C1) or an invisible formatting character (bidi embeddings,
/// overrides and isolates, zero-width characters, line and paragraph
/// separators, tags), which can reorder or hide what is shown.
pub fn is_unsafe(c: char) -> bool {
    c.is_control() || is_format(c)
}

/// Unicode general category Cf (as of Unicode 15), plus the line and
/// paragraph separators (Zl, Zp) that some terminals and viewers break on.
fn is_format(c: char) -> bool {
    matches!(
        c as u32,
        0x00AD
            | 0x0600..=0x0605
            | 0x061C
            | 0x06DD
            | 0x070F
            | 0x0890..=0x0891
            | 0x08E2
            | 0x180E
            | 0x200B..=0x200F
            | 0x2028..=0x202E
            | 0x2060..=0x2064
            | 0x2066..=0x206F
            | 0xFEFF
            | 0xFFF9..=0xFFFB
            | 0x110BD
            | 0x110CD
            | 0x13430..=0x1343F
            | 0x1BCA0..=0x1BCA3
            | 0x1D173..=0x1D17A
            | 0xE0001
            | 0xE0020..=0xE007F
    )
}

/// Writes the visible escape of an unsafe `c`.
fn write_escape(out: &mut impl fmt::Write, c: char) -> fmt::Result {
    match c {
        '\n' => out.write_str("\\n"),
        '\r' => out.write_str("\\r"),
        '\t' => out.write_str("\\t"),
        c if (c as u32) < 0x80 => write!(out, "\\x{:02x}", c as u32),
        c => write!(out, "\\u{{{:x}}}", c as u32),
    }
}

/// Writes `s` with its unsafe characters escaped; with `backslash`, a
/// backslash too. `keep` is a character position exempt from escaping (the
/// newline ending a piece of text).
fn write_str_escaped(
    out: &mut impl fmt::Write,
    s: &str,
    backslash: bool,
    keep: Option<usize>,
) -> fmt::Result {
    let mut start = 0;
    for (i, c) in s.char_indices() {
        let esc = (is_unsafe(c) && keep != Some(i)) || (backslash && c == '\\');
        if esc {
            out.write_str(&s[start..i])?;
            if c == '\\' {
                out.write_str("\\\\")?;
            } else {
                write_escape(out, c)?;
            }
            start = i + c.len_utf8();
        }
    }
    out.write_str(&s[start..])
}

/// Writes `bytes` as text: UTF-8 runs escaped as [`write_str_escaped`]
/// does, each byte that is not UTF-8 as `\xNN`. A final `\n` is kept when
/// `keep_final_newline`.
fn write_bytes_escaped(
    out: &mut impl fmt::Write,
    bytes: &[u8],
    backslash: bool,
    keep_final_newline: bool,
) -> fmt::Result {
    let keep_at = (keep_final_newline && bytes.last() == Some(&b'\n')).then(|| bytes.len() - 1);
    let mut rest = bytes;
    let mut offset = 0;
    while !rest.is_empty() {
        let (valid, bad) = match std::str::from_utf8(rest) {
            Ok(s) => (s, 0),
            Err(e) => {
                let (v, _) = rest.split_at(e.valid_up_to());
                // from_utf8 has just said these bytes are UTF-8.
                let v = std::str::from_utf8(v).unwrap_or_default();
                (v, e.error_len().unwrap_or(rest.len() - e.valid_up_to()))
            }
        };
        let keep = keep_at.and_then(|k| k.checked_sub(offset));
        write_str_escaped(out, valid, backslash, keep)?;
        let after = valid.len();
        for b in &rest[after..after + bad] {
            write!(out, "\\x{b:02x}")?;
        }
        offset += after + bad;
        rest = &rest[after + bad..];
    }
    Ok(())
}

/// Shows a string with every unsafe character and backslash escaped: one
/// line of printable text that can be decoded back to the original.
#[derive(Clone, Copy, Debug)]
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_str_escaped(f, self.0, true, None)
    }
}

/// Shows bytes as [`Escaped`] does, with each byte that is not UTF-8 as
/// `\xNN`.
#[derive(Clone, Copy, Debug)]
pub struct EscapedBytes<'a>(pub &'a [u8]);

impl fmt::Display for EscapedBytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_bytes_escaped(f, self.0, true, false)
    }
}

/// `s` as [`Escaped`] shows it, borrowed when nothing needed escaping.
pub fn escape(s: &str) -> Cow<'_, str> {
    if s.chars().any(|c| is_unsafe(c) || c == '\\') {
        Cow::Owned(Escaped(s).to_string())
    } else {
        Cow::Borrowed(s)
    }
}

/// `s` with its unsafe characters escaped (not backslashes): for a message
/// that mixes our text with foreign text, such as an error chain.
pub fn escape_controls(s: &str) -> Cow<'_, str> {
    if s.chars().any(is_unsafe) {
        let mut out = String::with_capacity(s.len() + 8);
        let _ = write_str_escaped(&mut out, s, false, None);
        Cow::Owned(out)
    } else {
        Cow::Borrowed(s)
    }
}

/// A text stream that escapes what it is given (see the module docs): each
/// `write` call, or each `write!`/`writeln!`, is one piece of text whose
/// control and formatting characters are escaped, except a newline that
/// ends it; bytes that are not UTF-8 become `\xNN`. Do not put a buffer
/// between this and its callers: it would merge pieces.
#[derive(Debug)]
pub struct TextOut<W: io::Write> {
    inner: W,
    buf: String,
}

impl<W: io::Write> TextOut<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> TextOut<W> {
        TextOut {
            inner,
            buf: String::new(),
        }
    }

    /// The wrapped stream.
    pub fn into_inner(self) -> W {
        self.inner
    }
}

impl<W: io::Write> io::Write for TextOut<W> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.buf.clear();
        let _ = write_bytes_escaped(&mut self.buf, bytes, false, true);
        self.inner.write_all(self.buf.as_bytes())?;
        Ok(bytes.len())
    }

    /// One formatted piece, whole (the default would write each argument
    /// separately, and a value ending in a newline would end a line).
    fn write_fmt(&mut self, args: fmt::Arguments<'_>) -> io::Result<()> {
        let piece = match args.as_str() {
            Some(s) => Cow::Borrowed(s),
            None => Cow::Owned(fmt::format(args)),
        };
        io::Write::write_all(self, piece.as_bytes())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// serde_json's formatting, with DEL, C1 controls and formatting characters
/// in strings escaped as `\uXXXX` too.
struct SafeFormatter<F>(F);

macro_rules! delegate {
    ($($name:ident($($arg:ident: $ty:ty),*);)*) => {$(
        fn $name<W: ?Sized + io::Write>(&mut self, w: &mut W $(, $arg: $ty)*) -> io::Result<()> {
            self.0.$name(w $(, $arg)*)
        }
    )*};
}

impl<F: serde_json::ser::Formatter> serde_json::ser::Formatter for SafeFormatter<F> {
    delegate! {
        begin_array();
        end_array();
        begin_array_value(first: bool);
        end_array_value();
        begin_object();
        end_object();
        begin_object_key(first: bool);
        end_object_key();
        begin_object_value();
        end_object_value();
    }

    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            if is_unsafe(c) {
                w.write_all(&fragment.as_bytes()[start..i])?;
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    write!(w, "\\u{u:04x}")?;
                }
                start = i + c.len_utf8();
            }
        }
        w.write_all(&fragment.as_bytes()[start..])
    }
}

fn serialize<W: io::Write, F: serde_json::ser::Formatter, T: Serialize + ?Sized>(
    w: W,
    f: F,
    value: &T,
) -> serde_json::Result<()> {
    let mut ser = serde_json::Serializer::with_formatter(w, SafeFormatter(f));
    value.serialize(&mut ser)
}

/// `serde_json::to_writer_pretty`, with the extra escapes.
pub fn to_writer_pretty<W: io::Write, T: Serialize + ?Sized>(
    w: W,
    value: &T,
) -> serde_json::Result<()> {
    serialize(w, serde_json::ser::PrettyFormatter::new(), value)
}

/// `serde_json::to_vec` (compact, one line), with the extra escapes.
pub fn to_vec<T: Serialize + ?Sized>(value: &T) -> serde_json::Result<Vec<u8>> {
    let mut out = Vec::new();
    serialize(&mut out, serde_json::ser::CompactFormatter, value)?;
    Ok(out)
}

/// `serde_json::to_string` (compact, one line), with the extra escapes.
pub fn to_string<T: Serialize + ?Sized>(value: &T) -> serde_json::Result<String> {
    // The output is ASCII apart from characters serde_json left as they were.
    to_vec(value).map(|v| String::from_utf8(v).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn text_out(pieces: &[&[u8]]) -> String {
        let mut t = TextOut::new(Vec::new());
        for p in pieces {
            t.write_all(p).unwrap();
        }
        String::from_utf8(t.into_inner()).unwrap()
    }

    /// Nothing a terminal could act on: only printable ASCII, non-control
    /// non-format characters, and the newlines allowed.
    fn assert_inert(s: &str, newlines: usize) {
        assert!(
            !s.chars().any(|c| is_unsafe(c) && c != '\n'),
            "unsafe character left in {s:?}"
        );
        assert_eq!(s.matches('\n').count(), newlines, "{s:?}");
    }

    #[test]
    fn every_c0_del_and_c1_is_escaped() {
        for cp in (0u32..0x20).chain([0x7f]).chain(0x80..0xa0) {
            let c = char::from_u32(cp).unwrap();
            let s = format!("a{c}b");
            let e = Escaped(&s).to_string();
            assert_inert(&e, 0);
            let expect = match c {
                '\n' => "a\\nb".to_string(),
                '\r' => "a\\rb".to_string(),
                '\t' => "a\\tb".to_string(),
                c if cp < 0x80 => format!("a\\x{:02x}b", c as u32),
                _ => format!("a\\u{{{cp:x}}}b"),
            };
            assert_eq!(e, expect);
            assert_eq!(escape_controls(&s), expect);
            assert_eq!(text_out(&[s.as_bytes()]), expect);
            // JSON: plain JSON, the string comes back whole, no raw control.
            let j = to_string(&s).unwrap();
            assert!(j.is_ascii(), "{j:?}");
            assert!(!j.bytes().any(|b| b < 0x20 || b == 0x7f), "{j:?}");
            let back: String = serde_json::from_str(&j).unwrap();
            assert_eq!(back, s);
        }
    }

    #[test]
    fn escape_sequences_are_shown_not_sent() {
        let cases = [
            ("\x1b]52;c;cHduZWQ=\x07", "\\x1b]52;c;cHduZWQ=\\x07"),
            ("\x1b]0;owned\x07title", "\\x1b]0;owned\\x07title"),
            ("\x1b]0;owned\x1b\\", "\\x1b]0;owned\\x1b\\\\"),
            ("\x1b[2J\x1b[H", "\\x1b[2J\\x1b[H"),
            ("\u{9b}2J", "\\u{9b}2J"),
            ("\u{9d}0;t\u{9c}", "\\u{9d}0;t\\u{9c}"),
        ];
        for (raw, shown) in cases {
            assert_eq!(Escaped(raw).to_string(), shown);
            assert_eq!(escape(raw), shown);
            assert_inert(&text_out(&[raw.as_bytes()]), 0);
            let j = to_string(raw).unwrap();
            assert!(!j.contains('\x1b') && !j.contains('\u{9b}'), "{j}");
            assert_eq!(serde_json::from_str::<String>(&j).unwrap(), raw);
        }
        // C1 as raw single bytes is not UTF-8: shown as bytes.
        assert_eq!(EscapedBytes(b"\x9b2J").to_string(), "\\x9b2J");
        assert_eq!(text_out(&[b"\x9b2J\n"]), "\\x9b2J\n");
    }

    #[test]
    fn bidi_and_invisible_characters_are_escaped() {
        for cp in [
            0x202a, 0x202b, 0x202c, 0x202d, 0x202e, 0x2066, 0x2067, 0x2068, 0x2069, 0x200e, 0x200f,
            0x061c, 0x200b, 0x200d, 0x2060, 0xfeff, 0x00ad, 0x2028, 0x2029, 0xe0001, 0xe0041,
        ] {
            let c = char::from_u32(cp).unwrap();
            let s = format!("evil{c}txt.exe");
            let e = Escaped(&s).to_string();
            assert_eq!(e, format!("evil\\u{{{cp:x}}}txt.exe"));
            assert_inert(&text_out(&[s.as_bytes()]), 0);
            let j = to_string(&s).unwrap();
            assert!(j.is_ascii(), "{j}");
            assert_eq!(serde_json::from_str::<String>(&j).unwrap(), s);
        }
    }

    #[test]
    fn invalid_utf8_is_shown_as_bytes() {
        assert_eq!(EscapedBytes(b"a\xffb").to_string(), "a\\xffb");
        assert_eq!(EscapedBytes(b"\xc3").to_string(), "\\xc3");
        assert_eq!(EscapedBytes(b"\xe2\x80").to_string(), "\\xe2\\x80");
        assert_eq!(
            EscapedBytes(b"\xed\xa0\x80x").to_string(),
            "\\xed\\xa0\\x80x"
        );
        assert_eq!(EscapedBytes("é\x1b".as_bytes()).to_string(), "é\\x1b");
        assert_eq!(text_out(&[b"x\xfe\n"]), "x\\xfe\n");
    }

    #[test]
    fn newlines_cannot_forge_lines() {
        let tag = "v1\nerror: fake line\r\n";
        assert_eq!(Escaped(tag).to_string(), "v1\\nerror: fake line\\r\\n");
        // One writeln! is one line whatever the value holds, including a
        // value that itself ends in a newline.
        let mut t = TextOut::new(Vec::new());
        writeln!(t, "tag {tag}").unwrap();
        let value = String::from("a\n");
        writeln!(t, "{value}").unwrap();
        writeln!(t).unwrap();
        write!(t, "no newline\n\n").unwrap();
        let s = String::from_utf8(t.into_inner()).unwrap();
        assert_eq!(
            s,
            "tag v1\\nerror: fake line\\r\\n\na\\n\n\nno newline\\n\n"
        );
        assert_inert(&s, 4);
    }

    #[test]
    fn plain_text_is_unchanged() {
        for s in [
            "",
            "team/app:v1",
            "usr/bin/bash -> /bin/busybox",
            "café naïve é",
            "日本語のファイル",
            "emoji 🦀 and ü",
            "PATH=/usr/local/sbin:/usr/bin",
            "\"quoted\" {json}",
        ] {
            assert!(matches!(escape(s), Cow::Borrowed(_)), "{s}");
            assert_eq!(Escaped(s).to_string(), s);
            assert_eq!(EscapedBytes(s.as_bytes()).to_string(), s);
            assert!(matches!(escape_controls(s), Cow::Borrowed(_)));
            assert_eq!(text_out(&[s.as_bytes(), b"\n"]), format!("{s}\n"));
            let j = to_string(s).unwrap();
            assert_eq!(j, serde_json::to_string(s).unwrap());
        }
    }

    #[test]
    fn backslashes_make_the_escape_reversible() {
        // A name that spells an escape is told apart from one that holds it.
        assert_eq!(Escaped("a\\x1b").to_string(), "a\\\\x1b");
        assert_eq!(Escaped("a\x1b").to_string(), "a\\x1b");
        // The stream wrapper leaves backslashes of our own text alone.
        assert_eq!(text_out(&[b"\"a\\\"b\"\n"]), "\"a\\\"b\"\n");
        assert_eq!(escape_controls("C:\\x"), "C:\\x");
    }

    /// Reads [`EscapedBytes`]' output back into bytes.
    fn decode(s: &str) -> Vec<u8> {
        let mut out = Vec::new();
        let mut chars = s.chars();
        while let Some(c) = chars.next() {
            if c != '\\' {
                out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                continue;
            }
            match chars.next().unwrap() {
                '\\' => out.push(b'\\'),
                'n' => out.push(b'\n'),
                'r' => out.push(b'\r'),
                't' => out.push(b'\t'),
                'x' => {
                    let hex: String = chars.by_ref().take(2).collect();
                    out.push(u8::from_str_radix(&hex, 16).unwrap());
                }
                'u' => {
                    assert_eq!(chars.next(), Some('{'));
                    let hex: String = chars.by_ref().take_while(|&c| c != '}').collect();
                    let c = char::from_u32(u32::from_str_radix(&hex, 16).unwrap()).unwrap();
                    out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                }
                other => panic!("unknown escape \\{other} in {s:?}"),
            }
        }
        out
    }

    proptest::proptest! {
        #[test]
        fn any_input_is_one_inert_line_that_decodes_back(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
            text in "\\PC*|[\\x00-\\x7f\u{80}-\u{9f}\u{2028}-\u{202e}\\\\]*",
        ) {
            let shown = EscapedBytes(&bytes).to_string();
            assert_inert(&shown, 0);
            proptest::prop_assert_eq!(decode(&shown), bytes.clone());
            let shown = Escaped(&text).to_string();
            assert_inert(&shown, 0);
            proptest::prop_assert_eq!(decode(&shown), text.as_bytes().to_vec());
            // The stream: one line per piece, whatever the piece holds.
            let mut piece = bytes.clone();
            piece.push(b'\n');
            // Each piece keeps only a newline that ends it.
            let pieces: [&[u8]; 3] = [&piece, text.as_bytes(), b"\n"];
            assert_inert(&text_out(&pieces), 2 + usize::from(text.ends_with('\n')));
            let j = to_string(&text).unwrap();
            assert_inert(&j, 0);
            proptest::prop_assert_eq!(serde_json::from_str::<String>(&j).unwrap(), text);
        }
    }

    #[test]
    fn json_keeps_its_structure_and_round_trips() {
        let v = serde_json::json!({
            "k\u{1b}]0;t\u{7}": ["\u{7f}", "\u{85}", "\u{202e}abc", "plain é 日本"],
            "n": 1, "b": true, "z": null, "o": {"x": [1, 2]}
        });
        for bytes in [to_vec(&v).unwrap(), {
            let mut p = Vec::new();
            to_writer_pretty(&mut p, &v).unwrap();
            p
        }] {
            let s = String::from_utf8(bytes).unwrap();
            assert!(!s.chars().any(|c| is_unsafe(c) && c != '\n'), "{s}");
            let back: serde_json::Value = serde_json::from_str(&s).unwrap();
            assert_eq!(back, v);
        }
        let mut p = Vec::new();
        to_writer_pretty(&mut p, &v).unwrap();
        let mut q = Vec::new();
        serde_json::to_writer_pretty(&mut q, &serde_json::json!({"n": 1, "o": {"x": [1]}}))
            .unwrap();
        let mut r = Vec::new();
        to_writer_pretty(&mut r, &serde_json::json!({"n": 1, "o": {"x": [1]}})).unwrap();
        assert_eq!(q, r, "same layout as serde_json's pretty printer");
        assert_eq!(to_string(&"\u{10ffff}").unwrap(), "\"\u{10ffff}\"");
        assert_eq!(to_string(&"\u{e0041}").unwrap(), "\"\\udb40\\udc41\"");
    }
}
