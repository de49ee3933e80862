//! Scrubbing resolved secret values out of text before it is recorded, sent or logged.
//!
//! A hook that prints its secret (`set -x` is enough) must not put the value into events, target errors, webhook
//! payloads or the database. Whatever an executor returns is passed through a [`Scrubber`] built from the values
//! resolved for that call, which replaces each value with [`REDACTED`].
//!
//! Rather than listing the encodings a program might print a value in, the scrubber **normalises the text, then
//! matches**: it reads the text through several decoding views (as is; percent-decoded in either case, with and without
//! `+` as a space; JSON-unescaped; shell-unquoted line by line, as `set -x` quotes; with line breaks removed, for
//! wrapped base64; and JSON-unescaped then percent-decoded or unwrapped), looks for the value (and, in the views that
//! keep base64 intact, its base64 encodings at every alignment) in each view, and redacts the span of the original text
//! every match came from.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};

use super::{ResolvedSecrets, SecretValue};

/// What a scrubbed value is replaced with.
pub const REDACTED: &str = "***";

/// Values shorter than this are not scrubbed: they would match ordinary text everywhere, and are no secret.
const MIN_LEN: usize = 4;

/// Shorter base64 fragments are not scrubbed on their own (they would match ordinary words).
const MIN_BASE64_CORE: usize = 6;

/// Replaces secret values in text, whatever common encoding they were printed in: as is, percent-encoded (any case,
/// any set of characters left alone), JSON-escaped (`\u00e4` included), shell-quoted (`'it'\''s'`), and in base64
/// (standard and URL-safe alphabets, at any alignment in a longer run, wrapped across lines or not).
///
/// ```
/// use deploy_core::{Scrubber, SecretValue};
/// let scrubber = Scrubber::new([&SecretValue::new("hunter2!")]);
/// assert_eq!(scrubber.scrub("pw=hunter2! q=hunter2%21 b=aHVudGVyMiE="), "pw=*** q=*** b=***");
/// assert_eq!(scrubber.scrub("u=%68%75%6e%74%65%72%32%21"), "u=***");
/// ```
#[derive(Debug, Clone, Default)]
pub struct Scrubber {
    /// The values, as bytes.
    values: Vec<Vec<u8>>,
    /// Their base64 forms (whole encodings and alignment-independent cores).
    encoded: Vec<Vec<u8>>,
}

impl Scrubber {
    /// A scrubber of `values` (values shorter than four bytes are left alone).
    #[must_use]
    pub fn new<'a>(values: impl IntoIterator<Item = &'a SecretValue>) -> Self {
        let mut out = Self::default();
        for value in values {
            let v = value.expose();
            if v.len() < MIN_LEN {
                continue;
            }
            out.values.push(v.as_bytes().to_vec());
            for form in [STANDARD.encode(v), URL_SAFE.encode(v)]
                .into_iter()
                .chain(base64_cores(v.as_bytes()).into_iter().filter(|c| c.len() >= MIN_BASE64_CORE))
            {
                out.encoded.push(form.into_bytes());
            }
        }
        out.normalise();
        out
    }

    /// A scrubber of the secrets resolved for one call.
    #[must_use]
    pub fn of(secrets: &ResolvedSecrets) -> Self {
        Self::new(secrets.values())
    }

    /// Adds the values of another scrubber.
    #[must_use]
    pub fn and(mut self, other: &Self) -> Self {
        self.values.extend(other.values.iter().cloned());
        self.encoded.extend(other.encoded.iter().cloned());
        self.normalise();
        self
    }

    fn normalise(&mut self) {
        for list in [&mut self.values, &mut self.encoded] {
            list.retain(|n| n.len() >= MIN_LEN);
            list.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
            list.dedup();
        }
    }

    /// The values it scrubs, for handing them to another process that scrubs for this one (a log relay). Never log,
    /// store or print them.
    pub fn expose_values(&self) -> impl Iterator<Item = &[u8]> {
        self.values.iter().map(Vec::as_slice)
    }

    /// Whether there is nothing to scrub.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The longest run of text one value can take in any form this scrubber knows (a generous bound: escapes make
    /// a byte up to twelve). A reader that scrubs a stream in pieces keeps this much of each piece for the next, so
    /// a value cut at a piece's boundary is still found.
    #[must_use]
    pub fn reach(&self) -> usize {
        let longest = self.values.iter().map(Vec::len).max().unwrap_or(0);
        // `\ud83d\ude00` spells four bytes in twelve characters; base64 wrapped at 76 columns adds a break per 76.
        longest * 12 + 64
    }

    /// `text` with every form of every value replaced by [`REDACTED`].
    #[must_use]
    pub fn scrub(&self, text: &str) -> String {
        redact(text, self.spans(text))
    }

    /// Scrubs in place.
    pub fn scrub_in_place(&self, text: &mut String) {
        if !self.is_empty() && !self.spans(text).is_empty() {
            *text = self.scrub(text);
        }
    }

    /// The byte ranges of `text` that spell a value in some view, widened to character boundaries, merged, in
    /// order.
    fn spans(&self, text: &str) -> Vec<(usize, usize)> {
        if self.is_empty() || text.len() < MIN_LEN {
            return Vec::new();
        }
        let raw = View::of(text.as_bytes());
        let json = raw.json_unescaped();
        let views = [
            (raw.percent_decoded(false), false),
            (raw.percent_decoded(true), false),
            (raw.shell_unquoted(), false),
            (raw.single_quotes_dropped(), false),
            (raw.double_quotes_dropped(), false),
            (raw.unwrapped(), true),
            (json.percent_decoded(false), false),
            (json.unwrapped(), true),
            (json, true),
            (raw, true),
        ];
        let mut spans = Vec::new();
        for (view, with_base64) in &views {
            let bytes: Vec<u8> = view.bytes().collect();
            let needles = self.values.iter().chain(self.encoded.iter().filter(|_| *with_base64));
            for needle in needles {
                view.find_all(&bytes, needle, &mut spans);
            }
        }
        merge(text, spans)
    }
}

/// Scrubs a stream of output (a program's stdout, read in pieces) before any of it is written anywhere: each piece is
/// scrubbed in the context of what follows it, so a value cut at a piece's boundary is still found whole. Holds back
/// at most [`Scrubber::reach`] bytes (and an incomplete UTF-8 sequence) until more arrives or the stream ends.
///
/// ```
/// use deploy_core::{Scrubber, SecretValue};
/// let mut stream = Scrubber::new([&SecretValue::new("hunter2-secret")]).stream();
/// let mut out = stream.push(b"password: hunter");
/// out.push_str(&stream.push(b"2-secret, done\n"));
/// out.push_str(&stream.finish());
/// assert_eq!(out, "password: ***, done\n");
/// ```
#[derive(Debug, Clone)]
pub struct ScrubbingStream {
    scrubber: Scrubber,
    /// Text read but not yet let out.
    pending: String,
    /// The start of an incomplete UTF-8 sequence at the end of what was read.
    partial: Vec<u8>,
}

impl Scrubber {
    /// A stream scrubber over this scrubber's values.
    #[must_use]
    pub fn stream(&self) -> ScrubbingStream {
        ScrubbingStream { scrubber: self.clone(), pending: String::new(), partial: Vec::new() }
    }
}

impl ScrubbingStream {
    /// Takes the next piece of the stream; returns the scrubbed text that may be let out now (possibly empty).
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.partial.extend_from_slice(bytes);
        let taken = std::mem::take(&mut self.partial);
        let (text, rest) = match std::str::from_utf8(&taken) {
            Ok(text) => (text.to_owned(), Vec::new()),
            Err(e) if e.error_len().is_none() => {
                let (valid, rest) = taken.split_at(e.valid_up_to());
                (String::from_utf8_lossy(valid).into_owned(), rest.to_vec())
            }
            Err(_) => (String::from_utf8_lossy(&taken).into_owned(), Vec::new()),
        };
        self.partial = rest;
        self.pending.push_str(&text);
        let keep = self.scrubber.reach();
        if self.scrubber.is_empty() {
            return std::mem::take(&mut self.pending);
        }
        if self.pending.len() <= keep {
            return String::new();
        }
        // Cut at a line's end when one is near: a view that reads lines (shell quoting) must see each line whole.
        let cut = self.pending.len() - keep;
        let floor = cut.saturating_sub(keep);
        let cut = self.pending.get(floor..cut).and_then(|s| s.rfind('\n')).map_or(cut, |at| floor + at + 1);
        self.release(cut)
    }

    /// Lets out every complete line held back, scrubbed: for a pause in the stream, so a log is not left behind by
    /// what a quiet program printed last. Only the unfinished last line stays held (a value being printed in two
    /// writes is never split).
    ///
    /// Trailing lines that could be the start of an encoding wrapped over several lines (only base64, hex or
    /// percent-encoding characters, as `base64` prints 76 at a time) are held too, until what follows them arrives.
    pub fn flush_lines(&mut self) -> String {
        let Some(mut cut) = self.pending.rfind('\n').map(|at| at + 1) else { return String::new() };
        while cut > 0 {
            let line_start = self.pending[..cut - 1].rfind('\n').map_or(0, |at| at + 1);
            let line = self.pending[line_start..cut - 1].trim_end_matches('\r');
            let encoded_like = line.len() >= MIN_BASE64_CORE
                && line.bytes().all(|b| b.is_ascii_alphanumeric() || b"+/=-_%".contains(&b));
            if !encoded_like {
                break;
            }
            cut = line_start;
        }
        self.release(cut)
    }

    /// Lets out what is held before `cut` (moved back so no value is split), scrubbed in the context of all held.
    fn release(&mut self, cut: usize) -> String {
        let spans = self.scrubber.spans(&self.pending);
        let mut cut = cut.min(self.pending.len());
        // A value that starts before the cut ends before the end of what is held: never split one.
        if let Some(&(start, _)) = spans.iter().find(|(start, end)| *start < cut && *end > cut) {
            cut = start;
        }
        while !self.pending.is_char_boundary(cut) {
            cut -= 1;
        }
        let rest = self.pending.split_off(cut);
        let out = redact(&self.pending, spans.iter().copied().filter(|&(_, end)| end <= cut));
        self.pending = rest;
        out
    }

    /// What is held back, scrubbed, as it would end if nothing more came, without ending the stream: for a look at
    /// the output while the program still runs. The last [`Scrubber::reach`] bytes are left out (they may be the
    /// start of a value whose rest is not printed yet).
    #[must_use]
    pub fn peek(&self) -> String {
        let keep = self.scrubber.reach();
        if self.scrubber.is_empty() {
            return self.pending.clone();
        }
        let mut cut = self.pending.len().saturating_sub(keep);
        while !self.pending.is_char_boundary(cut) {
            cut -= 1;
        }
        self.scrubber.scrub(self.pending.get(..cut).unwrap_or_default())
    }

    /// Ends the stream: the rest, scrubbed.
    #[must_use]
    pub fn finish(mut self) -> String {
        if !self.partial.is_empty() {
            self.pending.push_str(&String::from_utf8_lossy(&self.partial));
        }
        self.scrubber.scrub(&self.pending)
    }
}

/// `text` with every span replaced by [`REDACTED`].
fn redact(text: &str, spans: impl IntoIterator<Item = (usize, usize)>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (start, end) in spans {
        out.push_str(text.get(at..start).unwrap_or_default());
        out.push_str(REDACTED);
        at = end;
    }
    out.push_str(text.get(at..).unwrap_or_default());
    out
}

/// One decoded byte and the range of the original text it came from.
#[derive(Debug, Clone, Copy)]
struct Unit {
    byte: u8,
    start: usize,
    end: usize,
}

/// The text read through one decoding: its bytes, each with where it came from.
#[derive(Debug, Clone)]
struct View(Vec<Unit>);

impl View {
    fn of(bytes: &[u8]) -> Self {
        Self(bytes.iter().enumerate().map(|(i, &byte)| Unit { byte, start: i, end: i + 1 }).collect())
    }

    fn bytes(&self) -> impl Iterator<Item = u8> + '_ {
        self.0.iter().map(|u| u.byte)
    }

    /// `%xx` in either case decodes to its byte; with `plus`, `+` is a space (HTML forms).
    fn percent_decoded(&self, plus: bool) -> Self {
        let u = &self.0;
        let mut out = Vec::with_capacity(u.len());
        let mut i = 0;
        while let Some(&unit) = u.get(i) {
            if unit.byte == b'%'
                && let (Some(high), Some(low)) = (u.get(i + 1), u.get(i + 2))
                && let (Some(h), Some(l)) = (hex(high.byte), hex(low.byte))
            {
                out.push(Unit { byte: h << 4 | l, start: unit.start, end: low.end });
                i += 3;
                continue;
            }
            out.push(if plus && unit.byte == b'+' { Unit { byte: b' ', ..unit } } else { unit });
            i += 1;
        }
        Self(out)
    }

    /// JSON string escapes decoded: `\n`, `\"`, `\\`, `\/`, and `\uXXXX` (surrogate pairs joined) as UTF-8.
    fn json_unescaped(&self) -> Self {
        let u = &self.0;
        let mut out = Vec::with_capacity(u.len());
        let mut i = 0;
        while let Some(&unit) = u.get(i) {
            if unit.byte == b'\\'
                && let Some(next) = u.get(i + 1)
            {
                let simple = match next.byte {
                    b'n' => Some(b'\n'),
                    b't' => Some(b'\t'),
                    b'r' => Some(b'\r'),
                    b'b' => Some(8),
                    b'f' => Some(12),
                    b'"' | b'\\' | b'/' => Some(next.byte),
                    _ => None,
                };
                if let Some(byte) = simple {
                    out.push(Unit { byte, start: unit.start, end: next.end });
                    i += 2;
                    continue;
                }
                if next.byte == b'u'
                    && let Some((c, used)) = json_char(u, i)
                    && let Some(last) = u.get(i + used - 1)
                {
                    let mut buf = [0u8; 4];
                    let end = last.end;
                    for &byte in c.encode_utf8(&mut buf).as_bytes() {
                        out.push(Unit { byte, start: unit.start, end });
                    }
                    i += used;
                    continue;
                }
            }
            out.push(unit);
            i += 1;
        }
        Self(out)
    }

    /// Each line read as a shell would read words: quotes removed, `\x` as `x` outside single quotes (and `\"`,
    /// `\\`, `\$`, `` \` `` inside double quotes). `set -x` prints `it's` as `'it'\''s'`.
    fn shell_unquoted(&self) -> Self {
        #[derive(PartialEq)]
        enum Q {
            None,
            Single,
            Double,
        }
        let u = &self.0;
        let mut out = Vec::with_capacity(u.len());
        let mut state = Q::None;
        let mut i = 0;
        while let Some(&unit) = u.get(i) {
            let next = u.get(i + 1).copied();
            match (&state, unit.byte) {
                (_, b'\n') => {
                    state = Q::None;
                    out.push(unit);
                }
                (Q::None, b'\'') => state = Q::Single,
                (Q::None, b'"') => state = Q::Double,
                (Q::Single, b'\'') | (Q::Double, b'"') => state = Q::None,
                (Q::None, b'\\') if next.is_some_and(|n| n.byte != b'\n') => {
                    if let Some(n) = next {
                        out.push(Unit { byte: n.byte, start: unit.start, end: n.end });
                    }
                    i += 1;
                }
                (Q::Double, b'\\') if next.is_some_and(|n| matches!(n.byte, b'"' | b'\\' | b'$' | b'`')) => {
                    if let Some(n) = next {
                        out.push(Unit { byte: n.byte, start: unit.start, end: n.end });
                    }
                    i += 1;
                }
                _ => out.push(unit),
            }
            i += 1;
        }
        Self(out)
    }

    /// Single quotes dropped, except `'\''` (how a shell embeds one in a single-quoted word), which reads `'`: bash's
    /// `set -x` quoting read without tracking where quoted words start (they may span lines, after prose whose
    /// apostrophes would mislead a reader that did).
    fn single_quotes_dropped(&self) -> Self {
        let u = &self.0;
        let mut out = Vec::with_capacity(u.len());
        let mut i = 0;
        while let Some(&unit) = u.get(i) {
            if unit.byte == b'\'' {
                // `'\''`: a quote ends the word, an escaped quote, a quote opens the word again.
                if let Some([a, b, c]) = u.get(i + 1..i + 4)
                    && (a.byte, b.byte, c.byte) == (b'\\', b'\'', b'\'')
                {
                    out.push(Unit { byte: b'\'', start: unit.start, end: c.end });
                    i += 4;
                    continue;
                }
                i += 1;
                continue;
            }
            out.push(unit);
            i += 1;
        }
        Self(out)
    }

    /// Double quotes dropped and `\x` read as `x`: a double-quoted word (`"a\"b"`) read without tracking quotes.
    fn double_quotes_dropped(&self) -> Self {
        let u = &self.0;
        let mut out = Vec::with_capacity(u.len());
        let mut i = 0;
        while let Some(&unit) = u.get(i) {
            match (unit.byte, u.get(i + 1)) {
                (b'"', _) => {}
                (b'\\', Some(next)) => {
                    out.push(Unit { byte: next.byte, start: unit.start, end: next.end });
                    i += 1;
                }
                _ => out.push(unit),
            }
            i += 1;
        }
        Self(out)
    }

    /// Line breaks removed, so base64 wrapped at any width reads as one run.
    fn unwrapped(&self) -> Self {
        Self(self.0.iter().copied().filter(|u| u.byte != b'\n' && u.byte != b'\r').collect())
    }

    /// Adds the original span of every occurrence of `needle` in `bytes` (this view's bytes, read once per view).
    fn find_all(&self, bytes: &[u8], needle: &[u8], spans: &mut Vec<(usize, usize)>) {
        let units = &self.0;
        let mut i = 0;
        while let Some(window) = bytes.get(i..i + needle.len()) {
            if !needle.is_empty()
                && window == needle
                && let (Some(first), Some(last)) = (units.get(i), units.get(i + needle.len() - 1))
            {
                spans.push((first.start, last.end));
                i += needle.len();
            } else {
                i += 1;
            }
        }
    }
}

fn hex(b: u8) -> Option<u8> {
    char::from(b).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

/// The character a `\uXXXX` escape at `i` spells (joining a surrogate pair), and how many units it used.
fn json_char(u: &[Unit], i: usize) -> Option<(char, usize)> {
    let code = |at: usize| -> Option<u32> {
        if u.get(at)?.byte != b'\\' || u.get(at + 1)?.byte != b'u' {
            return None;
        }
        (0..4).try_fold(0u32, |acc, k| Some(acc * 16 + u32::from(hex(u.get(at + 2 + k)?.byte)?)))
    };
    let high = code(i)?;
    if (0xD800..0xDC00).contains(&high) {
        let low = code(i + 6)?;
        if !(0xDC00..0xE000).contains(&low) {
            return None;
        }
        let c = 0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00);
        return char::from_u32(c).map(|c| (c, 12));
    }
    char::from_u32(high).map(|c| (c, 6))
}

/// Spans widened to character boundaries of `text`, sorted and merged where they touch or overlap.
fn merge(text: &str, mut spans: Vec<(usize, usize)>) -> Vec<(usize, usize)> {
    for (start, end) in &mut spans {
        while *start > 0 && !text.is_char_boundary(*start) {
            *start -= 1;
        }
        while *end < text.len() && !text.is_char_boundary(*end) {
            *end += 1;
        }
    }
    spans.sort_unstable();
    let mut out: Vec<(usize, usize)> = Vec::with_capacity(spans.len());
    for (start, end) in spans {
        match out.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => out.push((start, end)),
        }
    }
    out
}

/// The part of the value's base64 encoding that does not depend on what surrounds it, for each of the three
/// alignments it can have inside a longer encoded run, in both alphabets.
fn base64_cores(value: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    for offset in 0..3usize {
        let mut padded = vec![0u8; offset];
        padded.extend_from_slice(value);
        for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
            let encoded = engine.encode(&padded);
            // Characters mixing the filler bytes with the value's first byte are dropped, and so is a last
            // character mixing the value's last byte with whatever follows it.
            let skip = (offset * 8).div_ceil(6);
            let total_bits = padded.len() * 8;
            let keep_end = total_bits / 6;
            if let Some(core) = encoded.get(skip..keep_end.min(encoded.len())) {
                out.push(core.to_owned());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn scrubber(values: &[&str]) -> Scrubber {
        let values: Vec<SecretValue> = values.iter().map(|v| SecretValue::new(*v)).collect();
        Scrubber::new(values.iter())
    }

    /// Percent-encoding of every byte but `keep`, in upper or lower case.
    fn percent(value: &str, keep: &[u8], lower: bool) -> String {
        value
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || keep.contains(&b) {
                    char::from(b).to_string()
                } else if lower {
                    format!("%{b:02x}")
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect()
    }

    /// What bash's `set -x` prints for a word: single-quoted, with each `'` as `'\''`.
    fn bash_quoted(value: &str) -> String {
        format!("'{}'", value.replace('\'', "'\\''"))
    }

    /// GNU `base64` output: wrapped at 76 columns.
    fn wrapped_base64(value: &str) -> String {
        let one_line = STANDARD.encode(value);
        one_line.as_bytes().chunks(76).map(|c| String::from_utf8_lossy(c).into_owned()).collect::<Vec<_>>().join("\n")
    }

    #[test]
    fn every_common_form_is_replaced() {
        let secret = "p@ss w0rd/\"quoted\"+end's-ä";
        let s = scrubber(&[secret]);
        let json = serde_json::to_string(secret).unwrap();
        let ascii_json: String = secret
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c.to_string() } else { format!("\\u{:04x}", u32::from(c)) })
            .collect();
        let forms = [
            secret.to_owned(),
            json,
            ascii_json,
            percent(secret, b"-._~", false),
            percent(secret, b"-._~", true),
            percent(secret, b"-._~/", false),
            percent(secret, b"-._~/@+", true),
            percent(secret, b"-._~", false).replace("%20", "+"),
            bash_quoted(secret),
            format!("\"{}\"", secret.replace('"', "\\\"")),
            STANDARD_NO_PAD.encode(secret),
            URL_SAFE_NO_PAD.encode(secret),
            STANDARD.encode(format!("user:{secret}")),
            STANDARD.encode(format!("ab{secret}cd")),
        ];
        for form in forms {
            let text = format!("before {form} after");
            let scrubbed = s.scrub(&text);
            assert!(scrubbed.contains(REDACTED), "{form} -> {scrubbed}");
            assert!(!scrubbed.contains(secret), "{scrubbed}");
            assert!(scrubbed.starts_with("before ") && scrubbed.ends_with(" after"), "only the value: {scrubbed}");
        }
    }

    /// Finding: `set -x` quoting of a value with a quote, GNU base64 wrapped at 76 columns (values of 58 bytes or
    /// more), lowercase `%xx`, percent-encoding that leaves `/` alone, and JSON `\u00e4` escapes got through.
    #[test]
    fn the_forms_the_attack_review_found_are_replaced() {
        let quoted = "it's-a-secret-value";
        let long = "a-long-secret-value-of-more-than-fifty-eight-bytes-0123456789abcdef";
        let path = "secret/with/slashes-and spaces";
        let umlaut = "geheimnis-äöü-wert";
        let s = scrubber(&[quoted, long, path, umlaut]);
        let cases = [
            format!("+ echo {}", bash_quoted(quoted)),
            format!("it's prose\n+ printf 'a\nb' {} 'c'", bash_quoted(quoted)),
            format!("{}\n", wrapped_base64(long)),
            percent(path, b"", true),
            percent(path, b"/", false),
            serde_json::to_string(umlaut)
                .unwrap()
                .replace('ä', "\\u00e4")
                .replace('ö', "\\u00f6")
                .replace('ü', "\\u00fc"),
        ];
        for case in cases {
            let scrubbed = s.scrub(&case);
            assert!(scrubbed.contains(REDACTED), "{case:?} -> {scrubbed:?}");
            for v in [quoted, long, path, umlaut] {
                assert!(!scrubbed.contains(v), "{scrubbed}");
            }
            // Nothing left holds a piece of the value or of its base64.
            for v in [quoted, long, path, umlaut] {
                let b64 = STANDARD.encode(v);
                let pieces = v.as_bytes().windows(8).chain(b64.as_bytes().windows(12));
                for piece in pieces {
                    let piece = String::from_utf8_lossy(piece);
                    assert!(!scrubbed.contains(piece.as_ref()), "{case:?} -> {scrubbed:?} keeps {piece:?}");
                }
            }
        }
    }

    #[test]
    fn base64_of_a_value_inside_a_longer_payload_is_found_at_every_alignment() {
        let secret = "correct-horse-battery";
        let s = scrubber(&[secret]);
        for prefix in ["", "a", "ab", "abc", "abcd"] {
            let encoded = STANDARD_NO_PAD.encode(format!("{prefix}{secret}!!"));
            let scrubbed = s.scrub(&encoded);
            assert!(scrubbed.contains(REDACTED), "prefix {prefix:?}: {encoded} -> {scrubbed}");
            // What is left cannot be decoded back to the value.
            assert!(scrubbed.len() < encoded.len() - 20, "{scrubbed}");
        }
    }

    #[test]
    fn short_values_and_unrelated_text_are_left_alone() {
        let s = scrubber(&["abc", "longer-secret"]);
        assert_eq!(s.scrub("abc is everywhere"), "abc is everywhere");
        assert_eq!(s.scrub("nothing to see"), "nothing to see");
        assert_eq!(s.scrub("x=longer-secret;longer-secret"), "x=***;***");
        let ordinary = "it's 100% done: 'quoted' \"text\" \\n \\u00e4 %zz %4 + plus\nsecond line ü";
        assert_eq!(s.scrub(ordinary), ordinary, "decoding views never change text that holds no value");
        assert!(Scrubber::default().is_empty());
    }

    #[test]
    fn scrubbers_combine() {
        let a = scrubber(&["alpha-secret"]);
        let b = scrubber(&["bravo-secret"]);
        let both = a.and(&b);
        assert_eq!(both.scrub("alpha-secret bravo-secret"), "*** ***");
        let mut text = "bravo-secret".to_owned();
        both.scrub_in_place(&mut text);
        assert_eq!(text, REDACTED);
    }

    /// Finding: output kept as its last 1 KiB and scrubbed afterwards leaked the tail of a value cut at the boundary.
    /// A stream is scrubbed before anything is let out, wherever its pieces are cut.
    #[test]
    fn a_stream_cut_anywhere_lets_no_value_out() {
        let secret = "stream-secret-ünï-value";
        let s = scrubber(&[secret]);
        let text =
            format!("start {} middle {} then {} end", secret, percent(secret, b"", true), STANDARD.encode(secret));
        for piece in [1, 2, 3, 5, 7, 64, 1000] {
            let mut stream = s.stream();
            let mut out = String::new();
            for chunk in text.as_bytes().chunks(piece) {
                out.push_str(&stream.push(chunk));
                assert!(!stream.peek().contains("stream-secret"), "a look while it runs: {}", stream.peek());
            }
            out.push_str(&stream.finish());
            assert_eq!(out, "start *** middle *** then *** end", "pieces of {piece}");
        }
        let mut quiet = s.stream();
        assert_eq!(quiet.push(b"line one\nhalf of stream-sec"), "", "short output is held");
        assert_eq!(quiet.flush_lines(), "line one\n", "a pause lets complete lines out");
        assert_eq!(quiet.push(b"ret-\xc3\xbcn\xc3\xaf-value done\n"), "");
        assert_eq!(quiet.finish(), "half of *** done\n", "the value printed across the pause is still found");
        let long = "a-long-secret-value-of-more-than-fifty-eight-bytes-0123456789abcdef";
        let mut wrapped = scrubber(&[long]).stream();
        let lines = wrapped_base64(long);
        let (first, rest) = lines.split_once('\n').unwrap();
        assert_eq!(wrapped.push(format!("+ base64\n{first}\n").as_bytes()), "");
        assert_eq!(wrapped.flush_lines(), "+ base64\n", "a line that may be part of a wrapped encoding waits");
        assert_eq!(wrapped.push(format!("{rest}\n").as_bytes()), "");
        assert_eq!(wrapped.flush_lines(), "", "so does its last line, until more comes or the stream ends");
        assert_eq!(wrapped.finish(), "***\n");
        let mut plain = Scrubber::default().stream();
        assert_eq!(plain.push(b"no secrets "), "no secrets ", "without values nothing is held back");
    }

    #[test]
    fn reach_covers_the_longest_form_of_a_value() {
        let secret = "ünïcödé-secret";
        let s = scrubber(&[secret]);
        let escaped: String = secret.chars().map(|c| format!("\\u{:04x}", u32::from(c))).collect();
        assert!(s.reach() >= escaped.len() && s.reach() >= wrapped_base64(secret).len());
    }
}
