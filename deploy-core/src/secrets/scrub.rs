//! Scrubbing resolved secret values out of text before it is recorded, sent or logged.
//!
//! A hook that prints its secret (`set -x` is enough) must not put the value into events, target errors, webhook
//! payloads or the database. Whatever an executor returns is passed through a [`Scrubber`] built from the values
//! resolved for that call, which replaces each value, and the forms a program commonly prints it in, with
//! [`REDACTED`].

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};

use super::{ResolvedSecrets, SecretValue};

/// What a scrubbed value is replaced with.
pub const REDACTED: &str = "***";

/// Values shorter than this are not scrubbed: they would match ordinary text everywhere, and are no secret.
const MIN_LEN: usize = 4;

/// Shorter base64 fragments are not scrubbed on their own (they would match ordinary words).
const MIN_BASE64_CORE: usize = 6;

/// Replaces secret values in text: each value as is, JSON-escaped, URL-encoded (`%XX` and `+`), and in base64
/// (standard and URL-safe alphabets, at any alignment in a longer encoded run).
///
/// ```
/// use deploy_core::{Scrubber, SecretValue};
/// let scrubber = Scrubber::new([&SecretValue::new("hunter2!")]);
/// assert_eq!(scrubber.scrub("pw=hunter2! q=hunter2%21 b=aHVudGVyMiE="), "pw=*** q=*** b=***");
/// ```
#[derive(Debug, Clone, Default)]
pub struct Scrubber {
    /// Every form to replace, longest first so a longer form is never cut by a shorter one it contains.
    needles: Vec<String>,
}

impl Scrubber {
    /// A scrubber of `values` (values shorter than four bytes are left alone).
    #[must_use]
    pub fn new<'a>(values: impl IntoIterator<Item = &'a SecretValue>) -> Self {
        let mut needles = Vec::new();
        for value in values {
            let v = value.expose();
            if v.len() < MIN_LEN {
                continue;
            }
            needles.push(v.to_owned());
            if let Ok(json) = serde_json::to_string(v)
                && let Some(inner) = json.get(1..json.len().saturating_sub(1))
            {
                needles.push(inner.to_owned());
            }
            needles.push(url_encoded(v, false));
            needles.push(url_encoded(v, true));
            needles.push(STANDARD.encode(v));
            needles.push(URL_SAFE.encode(v));
            needles.extend(base64_cores(v.as_bytes()).into_iter().filter(|c| c.len() >= MIN_BASE64_CORE));
        }
        needles.retain(|n| n.len() >= MIN_LEN);
        needles.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        needles.dedup();
        Self { needles }
    }

    /// A scrubber of the secrets resolved for one call.
    #[must_use]
    pub fn of(secrets: &ResolvedSecrets) -> Self {
        Self::new(secrets.values())
    }

    /// Adds the values of another scrubber.
    #[must_use]
    pub fn and(mut self, other: &Self) -> Self {
        self.needles.extend(other.needles.iter().cloned());
        self.needles.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        self.needles.dedup();
        self
    }

    /// Whether there is nothing to scrub.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.needles.is_empty()
    }

    /// `text` with every form of every value replaced by [`REDACTED`].
    #[must_use]
    pub fn scrub(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for needle in &self.needles {
            if out.contains(needle.as_str()) {
                out = out.replace(needle.as_str(), REDACTED);
            }
        }
        out
    }

    /// Scrubs in place.
    pub fn scrub_in_place(&self, text: &mut String) {
        if self.needles.iter().any(|n| text.contains(n.as_str())) {
            *text = self.scrub(text);
        }
    }
}

/// Percent-encoding of everything but RFC 3986's unreserved characters; `plus` encodes spaces as `+` (forms).
fn url_encoded(value: &str, plus: bool) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else if plus && b == b' ' {
            out.push('+');
        } else {
            out.push_str(&format!("%{b:02X}"));
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

    #[test]
    fn every_common_form_is_replaced() {
        let secret = "p@ss w0rd/\"quoted\"+end";
        let s = scrubber(&[secret]);
        let json = serde_json::to_string(secret).unwrap();
        let forms = [
            secret.to_owned(),
            json.clone(),
            url_encoded(secret, false),
            url_encoded(secret, true),
            STANDARD_NO_PAD.encode(secret),
            URL_SAFE_NO_PAD.encode(secret),
            base64::engine::general_purpose::STANDARD.encode(format!("user:{secret}")),
            base64::engine::general_purpose::STANDARD.encode(format!("ab{secret}cd")),
        ];
        for form in forms {
            let text = format!("before {form} after");
            let scrubbed = s.scrub(&text);
            assert!(scrubbed.contains(REDACTED), "{form} -> {scrubbed}");
            assert!(!scrubbed.contains(secret), "{scrubbed}");
            assert!(!scrubbed.contains(form.trim_end_matches('=')), "{form} survived in {scrubbed}");
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
}
