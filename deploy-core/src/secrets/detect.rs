//! Recognising a secret written in clear, by the name it is stored under and by the shape of the value.
//!
//! Both checks are heuristics with one purpose: a deployment payload or a target definition that holds a credential in
//! clear is refused (`422 hardcoded-secret`) before it is stored, so the value never reaches the database, the events
//! or a viewer. A value is never echoed in the reason.

/// Words that, found anywhere in a normalized key (lowercase, letters and digits only), say it names a secret: in
/// English and in the languages teams commonly name variables in (German, French, Spanish, Portuguese, Dutch, Polish,
/// Finnish, Swedish, Danish/Norwegian, Czech, Hungarian, Italian).
const SECRET_WORDS: &[&str] = &[
    "password",
    "passwd",
    "passphrase",
    "pwd",
    "secret",
    "token",
    "apikey",
    "privatekey",
    "private",
    "credential",
    "passwort",
    "kennwort",
    "geheim",
    "motdepasse",
    "contrasena",
    "contrasenya",
    "wachtwoord",
    "salasana",
    "losenord",
    "adgangskode",
    "jelszo",
];

/// What may follow `key` in a name that still names the key itself (`SIGNING_KEY_B64`), not something about it
/// (`SIGNING_KEY_ID`, `KEY_FILE`).
const KEY_ENCODINGS: &[&str] = &["b64", "base64", "hex", "pem", "der", "raw", "bytes", "material", "value"];

/// Words that name a secret when they are a whole segment of the key (`DB_PASS`), but not inside another word
/// (`PASSENGERS`).
const SECRET_SEGMENTS: &[&str] = &["pass", "pw", "haslo", "senha", "heslo"];

/// Whether a key's name says it holds a secret: `DB_PASSWORD`, `DB_PWD`, `PASSPHRASE`, `apiKey`, `github-token`,
/// `SIGNING_KEY`, `aws_credentials`, `ssh-private`, ...
#[must_use]
pub fn is_sensitive_key(key: &str) -> bool {
    // Accents dropped (`LÖSENORD`, `CONTRASEÑA`, `HASŁO` read as `losenord`, `contrasena`, `haslo`), then letters and
    // digits only.
    let normalized: String = key.chars().filter_map(fold).filter(char::is_ascii_alphanumeric).collect();
    if SECRET_WORDS.iter().any(|word| normalized.contains(word)) {
        return true;
    }
    let segments = segments(key);
    // `*_key`: a key of something (`SIGNING_KEY`, `encryptionKey`, `SIGNING_KEY_B64`), not `KEY` alone, `KEYBOARD`
    // or `KEY_ID`.
    let key_of_something = segments
        .iter()
        .enumerate()
        .skip(1)
        .any(|(i, s)| s == "key" && segments.iter().skip(i + 1).all(|rest| KEY_ENCODINGS.contains(&rest.as_str())));
    key_of_something || segments.iter().any(|seg| SECRET_SEGMENTS.contains(&seg.as_str()))
}

/// A character as ASCII lowercase, accents dropped (`Ö` → `o`, `ñ` → `n`, `ł` → `l`); `None` for what has no ASCII
/// letter.
fn fold(c: char) -> Option<char> {
    if c.is_ascii() {
        return Some(c.to_ascii_lowercase());
    }
    let lower = c.to_lowercase().next().unwrap_or(c);
    let base = match lower {
        'à' | 'á' | 'â' | 'ã' | 'ä' | 'å' | 'ą' => 'a',
        'ç' | 'ć' | 'č' => 'c',
        'è' | 'é' | 'ê' | 'ë' | 'ę' | 'ě' => 'e',
        'ì' | 'í' | 'î' | 'ï' => 'i',
        'ñ' | 'ń' | 'ň' => 'n',
        'ò' | 'ó' | 'ô' | 'õ' | 'ö' | 'ø' | 'ő' => 'o',
        'ù' | 'ú' | 'û' | 'ü' | 'ů' | 'ű' => 'u',
        'ý' | 'ÿ' => 'y',
        'ł' => 'l',
        'ś' | 'š' | 'ş' => 's',
        'ź' | 'ż' | 'ž' => 'z',
        'ř' => 'r',
        'ğ' => 'g',
        _ => return None,
    };
    Some(base)
}

/// The key's words, split on separators and on lower-to-upper case changes (`apiKey` is `api`, `key`).
fn segments(key: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut previous_lower = false;
    for c in key.chars() {
        // An accented letter reads as its base letter, in lowercase (`HASŁO` is `haslo`).
        let c = match (c.is_ascii(), fold(c)) {
            (true, _) => c,
            (false, Some(base)) if c.is_uppercase() => base.to_ascii_uppercase(),
            (false, Some(base)) => base,
            (false, None) => ' ',
        };
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

/// Prefixes of well-known credential formats (GitHub, GitLab, Slack, Stripe live and test keys, npm, PyPI, Hugging
/// Face, SendGrid, OpenAI/Anthropic-style keys, this project's own API keys and webhook secrets).
const TOKEN_PREFIXES: &[&str] = &[
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
    "sk_test_",
    "rk_test_",
    "whsec_",
    "sk-ant-",
    "sk-proj-",
    "npm_",
    "pypi-",
    "hf_",
    "SG.",
    "dk_",
];

/// Query parameters and connection-string keys whose value is a credential (compared lowercase, `-` and `_`
/// dropped): presigned URLs (`X-Amz-Signature`, `X-Goog-Signature`, Azure SAS `sig`), OAuth tokens in URLs,
/// connection strings (`Password=`, `Pwd=`, `AccountKey=`, `SharedAccessKey=`).
const CREDENTIAL_PARAMS: &[&str] = &[
    "accesstoken",
    "token",
    "apikey",
    "sig",
    "signature",
    "xamzsignature",
    "xamzsecuritytoken",
    "xgoogsignature",
    "xgoogcredential",
    "password",
    "pwd",
    "secret",
    "clientsecret",
    "accountkey",
    "sharedaccesskey",
];

/// Tokens shorter than this are never judged by their entropy.
const OPAQUE_MIN_LEN: usize = 32;

/// Shannon entropy (bits per character) from which a long token of mixed letters and digits is taken for a key.
const OPAQUE_MIN_ENTROPY: f64 = 4.2;

/// What a value looks like when it looks like a credential: `Some(kind)` names the kind (never the value).
///
/// Every token of the value is looked at (split on spaces, quotes and URL and assignment punctuation), so a token
/// inside free text (`Bearer ghp_...`, `--auth=ghp_...`, `https://ghp_...@host`) is found; so are URLs with a password
/// or a credential in their query, connection strings with a password, Slack webhook URLs, PEM private keys in any
/// case, and long opaque tokens (high entropy, letters and digits mixed; hex digests, UUIDs and certificates pass).
///
/// ```
/// use deploy_core::secret_shape;
/// assert_eq!(secret_shape("info"), None);
/// assert_eq!(secret_shape("postgres://app:hunter2@db/app"), Some("a URL with a password"));
/// assert_eq!(secret_shape("ghp_0123456789abcdefghijABCDEFGHIJ012345"), Some("an access token"));
/// assert_eq!(secret_shape("curl -H 'Authorization: Bearer ghp_0123456789abcdefghijABCDEFGHIJ012345'"), Some("an access token"));
/// assert_eq!(secret_shape("rotate the deploy key before friday"), None);
/// ```
#[must_use]
pub fn secret_shape(value: &str) -> Option<&'static str> {
    let trimmed = value.trim();
    let lower = trimmed.to_ascii_lowercase();
    if lower.contains("-----begin") && lower.contains("private key") {
        return Some("a PEM private key");
    }
    if lower.contains("hooks.slack.com/services/") || lower.contains("hooks.slack.com/workflows/") {
        return Some("a Slack webhook URL");
    }
    if connection_string_with_password(trimmed) {
        return Some("a connection string with a password");
    }
    let certificate = lower.contains("-----begin certificate") || lower.contains("public key-----");
    for word in
        trimmed.split(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '`' | '(' | ')' | '<' | '>' | ','))
    {
        if url_with_password(word) {
            return Some("a URL with a password");
        }
        if url_with_credential_query(word) {
            return Some("a URL with a credential in its query");
        }
        // A digest's name says what follows it is a digest (`sha512-...` integrity hashes hold `/` and `+`).
        let digest = ["sha1-", "sha256-", "sha384-", "sha512-", "sha256:", "sha512:"]
            .iter()
            .any(|p| word.get(..p.len()).is_some_and(|w| w.eq_ignore_ascii_case(p)));
        for token in word.split(['=', ':', '/', '@', '?', '&', '#', ';', '[', ']', '{', '}']) {
            if let Some(kind) = token_shape(token) {
                return Some(kind);
            }
            if !certificate && !digest && opaque(token) {
                return Some("a long random token");
            }
        }
    }
    None
}

/// The kind of credential one token is, judged by its format.
fn token_shape(token: &str) -> Option<&'static str> {
    if is_jwt(token) {
        return Some("a JSON Web Token");
    }
    if is_cloud_key(token) {
        return Some("a cloud access key");
    }
    let prefixed = TOKEN_PREFIXES.iter().any(|p| {
        token.strip_prefix(p).is_some_and(|rest| {
            rest.len() >= 16 && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        })
    });
    // OpenAI-style `sk-` keys: 32 or more letters and digits, no more dashes (`sk-eu-west-1` is a name).
    let sk = token
        .strip_prefix("sk-")
        .is_some_and(|rest| rest.len() >= 32 && rest.bytes().all(|b| b.is_ascii_alphanumeric()));
    (prefixed || sk).then_some("an access token")
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

/// A query (`?a=b&c=d`, in a URL or alone) with a non-empty credential parameter.
fn url_with_credential_query(value: &str) -> bool {
    let Some((_, query)) = value.split_once('?') else { return false };
    let query = query.split('#').next().unwrap_or_default();
    query.split(['&', ';']).any(|pair| {
        pair.split_once('=').is_some_and(|(k, v)| !v.is_empty() && CREDENTIAL_PARAMS.contains(&param_name(k).as_str()))
    })
}

/// `Server=db;User Id=app;Password=hunter2;` (ADO.NET, JDBC properties, Azure): a `;`-separated list of `key=value`
/// with a non-empty credential key.
fn connection_string_with_password(value: &str) -> bool {
    value.contains(';')
        && value.split(';').any(|pair| {
            pair.split_once('=').is_some_and(|(k, v)| {
                let k = param_name(k);
                !v.trim().is_empty() && k != "token" && CREDENTIAL_PARAMS.contains(&k.as_str())
            })
        })
}

/// A parameter's name compared loosely: lowercase, without spaces, `-` and `_`.
fn param_name(name: &str) -> String {
    name.chars().filter(|c| c.is_ascii_alphanumeric()).map(|c| c.to_ascii_lowercase()).collect()
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

/// A long token that looks random: of base64-like characters, with upper- and lower-case letters and digits, and an
/// entropy per character only random strings reach. Hex (digests, commit ids, UUIDs) and names of digests
/// (`sha512-...`, integrity hashes) are not judged.
fn opaque(token: &str) -> bool {
    if token.len() < OPAQUE_MIN_LEN || !token.bytes().all(|b| b.is_ascii_alphanumeric() || b"+-_.~".contains(&b)) {
        return false;
    }
    if token.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
        return false;
    }
    let has = |f: fn(&u8) -> bool| token.as_bytes().iter().any(f);
    if !(has(u8::is_ascii_uppercase) && has(u8::is_ascii_lowercase) && has(u8::is_ascii_digit)) {
        return false;
    }
    entropy(token) >= OPAQUE_MIN_ENTROPY
}

/// Shannon entropy of the characters of `s`, in bits per character.
fn entropy(s: &str) -> f64 {
    let mut counts = [0u32; 256];
    for b in s.bytes() {
        counts[usize::from(b)] += 1;
    }
    let n = f64::from(u32::try_from(s.len()).unwrap_or(u32::MAX));
    counts.iter().filter(|&&c| c > 0).map(|&c| f64::from(c) / n).map(|p| -p * p.log2()).sum()
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

    /// Finding: 20 of 31 tries got through: token prefixes not at the start of a value, a token as the version,
    /// non-English key names, `*_KEY_B64`, lowercase PEM headers, connection strings with `Password=`, Slack webhook
    /// URLs, `sk_test_` keys, presigned URLs, and a long opaque token.
    #[test]
    fn secrets_inside_free_text_and_in_other_shapes_are_found() {
        let token = "ghp_0123456789abcdefghijABCDEFGHIJ012345";
        let found = [
            format!("Bearer {token}"),
            format!("curl -H 'Authorization: Bearer {token}' https://api"),
            format!("--auth={token}"),
            format!("https://{token}@github.com/acme/app.git"),
            format!("https://x-access-token:{token}@github.com/acme/app.git"),
            "https://api.example.com/v1/items?page=2&access_token=abcdef0123456789".to_owned(),
            format!("rotate {token} today"),
            "-----begin rsa private key-----\nMIIEow...".to_owned(),
            "Server=db.internal;Database=app;User Id=app;Password=hunter2;".to_owned(),
            "Host=db;Port=5432;Pwd=s3cr3t".to_owned(),
            "DefaultEndpointsProtocol=https;AccountName=acme;AccountKey=bG9uZ2tleQ==;".to_owned(),
            "https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX".to_owned(),
            "sk_test_4eC39HqLyjWDarjtT1zdp7dc".to_owned(),
            "https://bucket.s3.amazonaws.com/app.tgz?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA%2F&X-Amz-Signature=fe5f80f77d5fa3beca038a248ff027d0445342fe2855ddc963176630326f1024".to_owned(),
            "https://acct.blob.core.windows.net/c/app.tgz?sv=2022-11-02&se=2026-12-31&sr=b&sp=r&sig=abcdEFGH%2Bijkl".to_owned(),
            "https://storage.googleapis.com/b/app.tgz?X-Goog-Algorithm=GOOG4-RSA-SHA256&X-Goog-Signature=0a1b2c3d".to_owned(),
            "sk-proj-abcdefghijklmnopqrstuvwxyz012345".to_owned(),
            "key: Zx9Qm2Lr7Vt4Np8Ks1Hd6Bw3Yc5Jf0Ga".to_owned(),
            "tok_9fKx2LmQ7rTz4VbN8wYp3HsJ6dGc1AeU".to_owned(),
        ];
        for value in &found {
            assert!(secret_shape(value).is_some(), "not found: {value}");
        }
        for key in ["DB_PASSWORT", "MOT_DE_PASSE", "SIGNING_KEY_B64", "contraseña", "LÖSENORD", "db_haslo", "KENNWORT"]
        {
            assert!(is_sensitive_key(key), "{key}");
        }
    }

    /// Ordinary values a deployment carries: none may be taken for a secret.
    #[test]
    fn ordinary_values_pass() {
        let ordinary = [
            "checkout",
            "2.0.1",
            "2.0.1-rc.1+build.5",
            "registry.example.com/team/checkout:2.0.1",
            "ghcr.io/acme/checkout@sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            "https://example.com/search?page=2&sort=desc&key=name",
            "release 2.0.1 fixes the login page",
            "it's 100% done; see OPS-1234",
            "rotate the deploy key before friday",
            "token bucket tuned to 200 requests per second",
            "0193a2b4-5c6d-7e8f-9a0b-1c2d3e4f5a6b",
            "e83c5163316f89bfbde7d9ab23ca2e25604af290",
            "sha512-z4PhNX7vuL3xVChQ1m2AB9Yg5AULVxXcg/SpIdNs6c5H0NE8XYXysP+DGNKHfuwvY7kxvUdBeoGlODJ6+SfaPg==",
            "-----BEGIN CERTIFICATE-----\nMIIBkTCB+wIJAKHHIG4P2hP0MA0GCSqGSIb3DQEBCwUAMBExDzANBgNVBAMMBnVudXNlZDAeFw0yNjAx\n-----END CERTIFICATE-----",
            "AppServiceConfigurationProfile",
            "arn:aws:iam::123456789012:role/DeployRole",
            "projects/my-project/locations/europe-west1/services/checkout",
            "sk-eu-west-production-cluster-01",
            "dk_production",
            "Server=db.internal;Database=app;User Id=app;",
            "--log-level=debug --max-connections=200",
            "SELECT id, name FROM users WHERE id = 1",
            "s3://my-bucket/releases/2.0.1/app.tar.gz",
            "checkout-7f9c8d6b5-x2k4p",
            "PASSENGERS",
            "/var/lib/deployd/releases/checkout/2.0.1/bin/checkout-server",
            "kube-system/coredns-5d78c9869d-4xkzq",
            "Europe/Berlin",
            "0 9 * * MON-FRI",
        ];
        for value in ordinary {
            assert_eq!(secret_shape(value), None, "taken for a secret: {value}");
        }
        for key in
            ["LOG_LEVEL", "PORT", "KEY_ID", "SIGNING_KEY_ID", "KEY_FILE", "hasLoaded", "THE_SLOW_MODE", "PASSENGERS"]
        {
            assert!(!is_sensitive_key(key), "{key}");
        }
    }
}
