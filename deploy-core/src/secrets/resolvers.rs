//! The resolvers this crate ships: `env://` under a prefix, `file://` inside one directory, and a router by scheme.
//!
//! Both refuse to read anything the operator did not set aside for deployments: a deployer chooses the reference, so a
//! resolver that read any variable or any file would hand them the server's own credentials.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;

use super::{SecretError, SecretRef, SecretResolver, SecretValue};

/// The prefix a variable needs before [`EnvSecretResolver`] resolves it, unless configured otherwise.
pub const DEFAULT_ENV_PREFIX: &str = "DEPLOY_SECRET_";

/// Resolves `env://NAME` from the process environment, for variables whose name starts with its prefix
/// ([`DEFAULT_ENV_PREFIX`] unless configured); refuses every other variable and every other scheme.
///
/// ```
/// # use deploy_core::{EnvSecretResolver, SecretRef, SecretResolver, SecretError};
/// # tokio_test_block_on(async {
/// let resolver = EnvSecretResolver::default();
/// let path = SecretRef::parse("env://PATH").unwrap();
/// assert!(matches!(resolver.resolve(&path).await, Err(SecretError::Forbidden { .. })));
/// # });
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvSecretResolver {
    prefix: String,
}

impl Default for EnvSecretResolver {
    fn default() -> Self {
        Self { prefix: DEFAULT_ENV_PREFIX.to_owned() }
    }
}

impl EnvSecretResolver {
    /// A resolver of variables whose name starts with `prefix`. An empty prefix is refused (it would expose every
    /// variable of the process): [`DEFAULT_ENV_PREFIX`] is used instead.
    #[must_use]
    pub fn with_prefix(prefix: impl Into<String>) -> Self {
        let prefix = prefix.into();
        if prefix.is_empty() { Self::default() } else { Self { prefix } }
    }

    /// The prefix a variable needs.
    #[must_use]
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

#[async_trait]
impl SecretResolver for EnvSecretResolver {
    async fn resolve(&self, reference: &SecretRef) -> Result<SecretValue, SecretError> {
        if reference.scheme() != "env" {
            return Err(SecretError::UnsupportedScheme { scheme: reference.scheme().to_owned() });
        }
        let name = reference.location();
        if !name.starts_with(&self.prefix) || name.len() == self.prefix.len() {
            return Err(SecretError::Forbidden {
                reference: reference.as_str().to_owned(),
                reason: format!("only variables named {}* are resolvable", self.prefix),
            });
        }
        std::env::var(name)
            .map(SecretValue::new)
            .map_err(|_| SecretError::NotFound { reference: reference.as_str().to_owned() })
    }
}

/// Resolves `file://NAME` (a relative path) to the contents of that file inside one directory, without its final
/// line break. Absolute paths, `..`, and links that lead out of the directory are refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSecretResolver {
    dir: PathBuf,
}

/// The largest secret file read.
const MAX_FILE: u64 = 64 * 1024;

impl FileSecretResolver {
    /// A resolver of files under `dir`.
    #[must_use]
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn refuse(reference: &SecretRef, reason: &str) -> SecretError {
        SecretError::Forbidden { reference: reference.as_str().to_owned(), reason: reason.to_owned() }
    }
}

#[async_trait]
impl SecretResolver for FileSecretResolver {
    async fn resolve(&self, reference: &SecretRef) -> Result<SecretValue, SecretError> {
        if reference.scheme() != "file" {
            return Err(SecretError::UnsupportedScheme { scheme: reference.scheme().to_owned() });
        }
        let relative = Path::new(reference.location());
        if !relative.components().all(|c| matches!(c, Component::Normal(_))) {
            return Err(Self::refuse(reference, "use a relative path without '..' inside the secrets directory"));
        }
        let not_found = || SecretError::NotFound { reference: reference.as_str().to_owned() };
        let unavailable = |e: std::io::Error| SecretError::Unavailable {
            reference: reference.as_str().to_owned(),
            reason: format!("the secrets directory cannot be read: {}", e.kind()),
        };
        let dir = tokio::fs::canonicalize(&self.dir).await.map_err(unavailable)?;
        // Links are followed, then the real path must still be inside the directory.
        let path = match tokio::fs::canonicalize(dir.join(relative)).await {
            Ok(p) => p,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(not_found()),
            Err(e) => return Err(unavailable(e)),
        };
        if !path.starts_with(&dir) {
            return Err(Self::refuse(reference, "the path leads out of the secrets directory"));
        }
        let meta = tokio::fs::metadata(&path).await.map_err(|_| not_found())?;
        if !meta.is_file() {
            return Err(not_found());
        }
        if meta.len() > MAX_FILE {
            return Err(Self::refuse(reference, "secret files are at most 64 KiB"));
        }
        let bytes = tokio::fs::read(&path).await.map_err(unavailable)?;
        let mut text = String::from_utf8(bytes).map_err(|_| Self::refuse(reference, "the file is not UTF-8"))?;
        if text.ends_with('\n') {
            text.pop();
            if text.ends_with('\r') {
                text.pop();
            }
        }
        Ok(SecretValue::new(text))
    }
}

/// Sends each reference to the resolver of its scheme.
///
/// ```
/// use std::sync::Arc;
/// use deploy_core::{EnvSecretResolver, FileSecretResolver, SchemeResolver};
/// let resolver = SchemeResolver::new()
///     .with("env", Arc::new(EnvSecretResolver::default()))
///     .with("file", Arc::new(FileSecretResolver::new("/run/deploy-secrets")));
/// assert_eq!(resolver.schemes(), ["env", "file"]);
/// ```
#[derive(Clone, Default)]
pub struct SchemeResolver {
    by_scheme: BTreeMap<String, Arc<dyn SecretResolver>>,
}

impl fmt::Debug for SchemeResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SchemeResolver").field("schemes", &self.schemes()).finish()
    }
}

impl SchemeResolver {
    /// A router with no schemes.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the resolver of `scheme`.
    #[must_use]
    pub fn with(mut self, scheme: impl Into<String>, resolver: Arc<dyn SecretResolver>) -> Self {
        self.by_scheme.insert(scheme.into(), resolver);
        self
    }

    /// The schemes it resolves, sorted.
    #[must_use]
    pub fn schemes(&self) -> Vec<String> {
        self.by_scheme.keys().cloned().collect()
    }
}

#[async_trait]
impl SecretResolver for SchemeResolver {
    async fn resolve(&self, reference: &SecretRef) -> Result<SecretValue, SecretError> {
        match self.by_scheme.get(reference.scheme()) {
            Some(r) => r.resolve(reference).await,
            None => Err(SecretError::UnsupportedScheme { scheme: reference.scheme().to_owned() }),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn r(s: &str) -> SecretRef {
        SecretRef::parse(s).unwrap()
    }

    #[tokio::test]
    async fn env_resolves_only_under_its_prefix() {
        let resolver = EnvSecretResolver::default();
        // PATH and HOME exist in every test process: refused, not "not found".
        for name in ["env://PATH", "env://HOME", "env://DEPLOY_SECRET_", "env://DEPLOYD_BOOTSTRAP_ADMIN_KEY"] {
            assert!(matches!(resolver.resolve(&r(name)).await, Err(SecretError::Forbidden { .. })), "{name}");
        }
        let missing = r("env://DEPLOY_SECRET_SURELY_UNSET_IN_TESTS");
        assert!(matches!(resolver.resolve(&missing).await, Err(SecretError::NotFound { .. })));
        assert!(matches!(resolver.resolve(&r("vault://x")).await, Err(SecretError::UnsupportedScheme { .. })));
        let own = EnvSecretResolver::with_prefix("PAT");
        assert!(own.resolve(&r("env://PATH")).await.is_ok(), "a configured prefix is honoured");
        assert_eq!(EnvSecretResolver::with_prefix("").prefix(), DEFAULT_ENV_PREFIX, "an empty prefix is not 'all'");
    }

    #[tokio::test]
    async fn files_resolve_inside_their_directory_only() {
        let root = std::env::temp_dir().join(format!("deploy-core-file-secrets-{}", uuid::Uuid::now_v7()));
        let dir = root.join("secrets");
        std::fs::create_dir_all(dir.join("db")).unwrap();
        std::fs::write(dir.join("db/password"), "s3cret-value\n").unwrap();
        std::fs::write(root.join("outside"), "not-for-you").unwrap();
        std::os::unix::fs::symlink(root.join("outside"), dir.join("escape")).unwrap();
        let resolver = FileSecretResolver::new(&dir);

        assert_eq!(resolver.resolve(&r("file://db/password")).await.unwrap().expose(), "s3cret-value");
        for bad in ["file://../outside", "file:///etc/passwd", "file://db/../../outside", "file://escape"] {
            assert!(matches!(resolver.resolve(&r(bad)).await, Err(SecretError::Forbidden { .. })), "{bad}");
        }
        assert!(matches!(resolver.resolve(&r("file://db/missing")).await, Err(SecretError::NotFound { .. })));
        assert!(matches!(resolver.resolve(&r("file://db")).await, Err(SecretError::NotFound { .. })), "a directory");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[tokio::test]
    async fn the_router_sends_each_scheme_to_its_resolver() {
        let router = SchemeResolver::new().with("env", Arc::new(EnvSecretResolver::with_prefix("PAT")));
        assert!(router.resolve(&r("env://PATH")).await.is_ok());
        assert!(matches!(router.resolve(&r("file://x")).await, Err(SecretError::UnsupportedScheme { .. })));
    }
}
