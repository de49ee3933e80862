//! Recognising a secret written in clear, by the name it is stored under and by the shape of the value.
//!
//! Both checks are heuristics with one purpose: a deployment payload or a target definition that holds a credential in
//! clear is refused (`422 hardcoded-secret`) before it is stored, so the value never reaches the database, the events
//! or a viewer. A value is never echoed in the reason.

/// Words that, found anywhere in a normalized key (lowercase, letters and digits only), say it names a secret.
const SECRET_WORDS: [&str; 10] =
    ["password", "passwd", "passphrase", "pwd", "secret", "token", "apikey", "privatekey", "private", "credential"];

/// Words that name a secret when they are a whole segment of the key (`DB_PASS`), but not inside another word
/// (`PASSENGERS`).
const SECRET_SEGMENTS: [&str; 2] = ["pass", "pw"];

/// Whether a key's name says it holds a secret: `DB_PASSWORD`, `DB_PWD`, `PASSPHRASE`, `apiKey`, `github-token`,
/// `SIGNING_KEY`, `aws_credentials`, `ssh-private`, ...
#[must_use]
pub fn is_sensitive_key(key: &str) -> bool {
    let normalized: String = key.chars().filter(char::is_ascii_alphanumeric).map(|c| c.to_ascii_lowercase()).collect();
    if SECRET_WORDS.iter().any(|word| normalized.contains(word)) {
        return true;
    }
    let segments = segments(key);
    // `*_key`: a key of something (`SIGNING_KEY`, `encryptionKey`), not `KEY` alone or `KEYBOARD`.
    let key_of_something = segments.len() > 1 && segments.last().is_some_and(|s| s == "key");
    key_of_something || segments.iter().any(|seg| SECRET_SEGMENTS.contains(&seg.as_str()))
}

/// The key's words, split on separators and on lower-to-upper case changes (`apiKey` is `api`, `key`).
fn segments(key: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut previous_lower = false;
    for c in key.chars() {
        if !c.is_ascii_alphanumeric() {
            if !current.is_empty() {
                out.push(std::mem::take(&mut current));
            }
            previous_lower = false;
            continue;
        }
        if c.is_ascii_uppercase() && previous_lower && !current.is_empty() {
            out.push(std::mem::take(&mut current));
        }
        previous_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
        current.push(c.to_ascii_lowercase());
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// Prefixes of well-known credential formats (GitHub, GitLab, Slack, Stripe, npm, PyPI, Hugging Face, SendGrid,
/// OpenAI/Anthropic-style keys, this project's own API keys and webhook secrets).
const TOKEN_PREFIXES: [&str; 22] = [
    "ghp_",
    "gho_",
    "ghu_",
    "ghs_",
    "ghr_",
    "github_pat_",
    "glpat-",
    "xoxb-",
    "xoxp-",
    "xoxa-",
    "xoxs-",
    "xapp-",
    "sk_live_",
    "rk_live_",
    "sk-ant-",
    "sk-proj-",
    "npm_",
    "pypi-",
    "hf_",
    "SG.",
    "dk_",
    "whsec_",
];

/// What a value looks like when it looks like a credential: `Some(kind)` names the kind (never the value).
///
/// ```
/// use deploy_core::secret_shape;
/// assert_eq!(secret_shape("info"), None);
/// assert_eq!(secret_shape("postgres://app:hunter2@db/app"), Some("a URL with a password"));
/// assert_eq!(secret_shape("ghp_0123456789abcdefghijABCDEFGHIJ012345"), Some("an access token"));
/// ```
#[must_use]
pub fn secret_shape(value: &str) -> Option<&'static str> {
    let trimmed = value.trim();
    if trimmed.contains("-----BEGIN") && trimmed.contains("PRIVATE KEY") {
        return Some("a PEM private key");
    }
    if url_with_password(trimmed) {
        return Some("a URL with a password");
    }
    if is_jwt(trimmed) {
        return Some("a JSON Web Token");
    }
    if is_cloud_key(trimmed) {
        return Some("a cloud access key");
    }
    if TOKEN_PREFIXES.iter().any(|p| {
        trimmed.strip_prefix(p).is_some_and(|rest| {
            rest.len() >= 16 && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        })
    }) {
        return Some("an access token");
    }
    None
}

/// `scheme://user:password@host...` with a non-empty password.
fn url_with_password(value: &str) -> bool {
    let Some((scheme, rest)) = value.split_once("://") else { return false };
    if scheme.is_empty() || !scheme.bytes().all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b)) {
        return false;
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let Some((userinfo, _host)) = authority.rsplit_once('@') else { return false };
    userinfo.split_once(':').is_some_and(|(_, password)| !password.is_empty())
}

/// Three base64url segments, the first a JSON object (`eyJ`).
fn is_jwt(value: &str) -> bool {
    let parts: Vec<&str> = value.split('.').collect();
    parts.len() == 3
        && parts.first().is_some_and(|h| h.starts_with("eyJ") && h.len() >= 10)
        && parts.get(1).is_some_and(|p| p.len() >= 10)
        && parts.iter().all(|p| p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
}

/// AWS access key ids (`AKIA` / `ASIA` + 16 upper-case letters or digits) and Google API keys (`AIza` + 35).
fn is_cloud_key(value: &str) -> bool {
    let upper_alnum = |s: &str| s.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
    let aws = ["AKIA", "ASIA"].iter().any(|p| value.strip_prefix(p).is_some_and(|r| r.len() == 16 && upper_alnum(r)));
    let google = value
        .strip_prefix("AIza")
        .is_some_and(|r| r.len() == 35 && r.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    aws || google
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names_that_hold_secrets() {
        for k in [
            "DB_PASSWORD",
            "password",
            "apiKey",
            "API-KEY",
            "x_secret_y",
            "TOKEN",
            "ssh_private_key",
            "PASSWD",
            "DB_PWD",
            "PASSPHRASE",
            "SIGNING_KEY",
            "signingKey",
            "DB_PASS",
            "aws_credentials",
            "private",
            "encryptionKey",
        ] {
            assert!(is_sensitive_key(k), "{k}");
        }
        for k in ["LOG_LEVEL", "PORT", "TOKE", "PASSENGERS", "KEYBOARD", "MONKEY", "BYPASS_CACHE", "KEY", "KEY_ID"] {
            assert!(!is_sensitive_key(k), "{k}");
        }
    }

    #[test]
    fn values_shaped_like_credentials() {
        let cases = [
            ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----", true),
            ("-----BEGIN RSA PRIVATE KEY-----", true),
            ("-----BEGIN CERTIFICATE-----", false),
            ("ghp_0123456789abcdefghijABCDEFGHIJ012345", true),
            ("github_pat_11ABCDEFG0123456789_abcdefghijklmnop", true),
            ("glpat-abcdefghij0123456789", true),
            ("xoxb-1234567890-abcdefghijkl", true),
            ("sk_live_0123456789abcdefABCDEF", true),
            ("dk_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", true),
            ("AKIAIOSFODNN7EXAMPLE", true),
            ("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.c2lnbmF0dXJlLXNpZ25hdHVyZQ", true),
            ("postgres://app:hunter2@db.internal:5432/app", true),
            ("https://user@example.com/", false),
            ("https://example.com/a:b@c", false),
            ("ghp_", false),
            ("info", false),
            ("1.2.3", false),
            ("https://registry.example.com/checkout:2.0.1", false),
            ("dk_short", false),
        ];
        for (value, secret) in cases {
            assert_eq!(secret_shape(value).is_some(), secret, "{value}");
        }
    }
}
