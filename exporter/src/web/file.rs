//! The `--web.config.file` YAML, as Prometheus' exporter-toolkit defines it
//! (`docs/web-configuration.md` in prometheus/exporter-toolkit): `tls_server_config`,
//! `http_server_config` and `basic_auth_users`. Unknown keys are errors, as the toolkit's strict
//! unmarshalling makes them, so a misspelt `client_ca_flie` is not silently ignored. This module
//! only reads and checks the shape; [`super::tls`] turns the TLS section into a rustls
//! configuration and [`super::auth`] checks passwords.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use hyper::header::{HeaderName, HeaderValue};
use serde::Deserialize;

use super::WebConfigError;

/// The file, and each certificate, key or CA file it names, is read up to this size: an
/// operator's CA bundle is a few hundred KiB at most.
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// At most this many `basic_auth_users`. The toolkit's own advice is "a few users"; more belong
/// in client certificates or a reverse proxy.
pub const MAX_USERS: usize = 1024;

/// A user name, or a header value, longer than this is refused.
pub const MAX_VALUE_BYTES: usize = 4096;

/// The whole file. Every section is optional: an empty file serves plain HTTP without
/// authentication, as the toolkit does.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebConfigFile {
    #[serde(default)]
    pub tls_server_config: TlsServerConfig,
    #[serde(default)]
    pub http_server_config: HttpServerConfig,
    /// User name -> bcrypt hash.
    #[serde(default)]
    pub basic_auth_users: BTreeMap<String, String>,
    /// The toolkit's request rate limiter: not implemented here, refused when set (see
    /// [`WebConfigFile::check`]).
    #[serde(default)]
    pub rate_limit: Option<serde_yaml_ng::Value>,
}

/// `tls_server_config`: the toolkit's keys, named as it names them.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsServerConfig {
    /// Inline PEM certificate (instead of `cert_file`).
    pub cert: Option<String>,
    /// Inline PEM key (instead of `key_file`).
    pub key: Option<String>,
    /// Inline PEM client CA (instead of `client_ca_file`).
    pub client_ca: Option<String>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Go's `tls.ClientAuthType` names; `NoClientCert` when absent.
    pub client_auth_type: Option<String>,
    pub client_ca_file: Option<PathBuf>,
    pub client_allowed_sans: Option<Vec<String>>,
    /// `TLS10` .. `TLS13`; `TLS12` when absent.
    pub min_version: Option<String>,
    /// `TLS10` .. `TLS13`; `TLS13` when absent.
    pub max_version: Option<String>,
    /// Go's cipher suite names (TLS 1.2 only: TLS 1.3 suites are not configurable, in Go either).
    #[serde(default)]
    pub cipher_suites: Vec<String>,
    /// `true` when absent, as in the toolkit.
    pub prefer_server_cipher_suites: Option<bool>,
    /// Go's curve names: `CurveP256`, `CurveP384`, `CurveP521`, `X25519`.
    #[serde(default)]
    pub curve_preferences: Vec<String>,
}

impl TlsServerConfig {
    /// Whether the section asks for TLS at all: the toolkit's test (any certificate, key, client
    /// CA or client auth key set). Without it the server speaks plain HTTP.
    pub fn is_enabled(&self) -> bool {
        self.cert.is_some()
            || self.key.is_some()
            || self.client_ca.is_some()
            || self.cert_file.is_some()
            || self.key_file.is_some()
            || self.client_ca_file.is_some()
            || self.client_auth_type.is_some()
    }

    /// Relative file names are relative to the web config file's directory, as in the toolkit.
    fn resolve_paths(&mut self, dir: &Path) {
        for p in [
            &mut self.cert_file,
            &mut self.key_file,
            &mut self.client_ca_file,
        ]
        .into_iter()
        .flatten()
        {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        }
    }
}

/// `http_server_config`.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpServerConfig {
    /// Accepted for compatibility; kvmio serves HTTP/1.1 only (TLS offers ALPN `http/1.1`),
    /// which every Prometheus speaks.
    pub http2: Option<bool>,
    /// Extra response headers, from the toolkit's fixed list.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// The headers the toolkit lets a file set, with the values it allows (`None`: any value).
const SETTABLE_HEADERS: &[(&str, Option<&[&str]>)] = &[
    ("Strict-Transport-Security", None),
    ("X-Content-Type-Options", Some(&["nosniff"])),
    ("X-Frame-Options", Some(&["deny", "sameorigin"])),
    ("X-XSS-Protection", None),
    ("Content-Security-Policy", None),
];

/// Reads `path` whole, refusing more than [`MAX_FILE_BYTES`] before allocating for it.
pub fn read_bounded(path: &Path, what: &'static str) -> Result<Vec<u8>, WebConfigError> {
    let read_error = |source| WebConfigError::Read {
        what,
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(WebConfigError::TooLarge {
            what,
            path: path.to_owned(),
            limit: MAX_FILE_BYTES,
        });
    }
    Ok(bytes)
}

impl WebConfigFile {
    /// Parses the file's text (file names still relative to `dir`) and checks it.
    pub fn parse(text: &[u8], dir: &Path) -> Result<WebConfigFile, WebConfigError> {
        let text = std::str::from_utf8(text).map_err(WebConfigError::NotUtf8)?;
        // An empty file (or one with only comments) is a valid, empty configuration, as for
        // the toolkit; serde_yaml_ng calls an empty document an error.
        let mut file: WebConfigFile = if text
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
        {
            WebConfigFile::default()
        } else {
            serde_yaml_ng::from_str(text).map_err(WebConfigError::Yaml)?
        };
        file.tls_server_config.resolve_paths(dir);
        file.check()?;
        Ok(file)
    }

    /// What the shape alone can tell: bounds, header names and values, bcrypt hashes, keys this
    /// implementation does not honour.
    fn check(&self) -> Result<(), WebConfigError> {
        if self.rate_limit.is_some() {
            return Err(WebConfigError::Unsupported(
                "rate_limit: kvmio-exporter has no request rate limiter (a scrape is already \
                 bounded by --scrape.timeout); remove the key",
            ));
        }
        if self.basic_auth_users.len() > MAX_USERS {
            return Err(WebConfigError::TooManyUsers { limit: MAX_USERS });
        }
        for (user, hash) in &self.basic_auth_users {
            if user.len() > MAX_VALUE_BYTES || user.contains(':') {
                return Err(WebConfigError::BadUser {
                    user: user.chars().take(64).collect(),
                });
            }
            hash.parse::<bcrypt::HashParts>()
                .map_err(|source| WebConfigError::BadHash {
                    user: user.clone(),
                    source,
                })?;
        }
        self.headers()?;
        Ok(())
    }

    /// `http_server_config.headers` as header pairs, checked against the toolkit's list.
    pub fn headers(&self) -> Result<Vec<(HeaderName, HeaderValue)>, WebConfigError> {
        let mut out = Vec::new();
        for (name, value) in &self.http_server_config.headers {
            let Some((canonical, allowed)) = SETTABLE_HEADERS.iter().find(|(n, _)| n == name)
            else {
                return Err(WebConfigError::HeaderNotSettable { name: name.clone() });
            };
            if allowed.is_some_and(|allowed| !allowed.contains(&value.as_str())) {
                return Err(WebConfigError::HeaderValue {
                    name: name.clone(),
                    allowed: allowed.unwrap_or_default().join(", "),
                });
            }
            if value.is_empty() {
                // "Unset if blank", as the toolkit documents.
                continue;
            }
            let header_value = HeaderValue::from_str(value)
                .ok()
                .filter(|_| value.len() <= MAX_VALUE_BYTES)
                .ok_or_else(|| WebConfigError::HeaderValue {
                    name: name.clone(),
                    allowed: "printable ASCII, at most 4096 bytes".to_owned(),
                })?;
            out.push((
                HeaderName::from_static(canonical_lower(canonical)),
                header_value,
            ));
        }
        Ok(out)
    }
}

/// `HeaderName::from_static` wants lower case.
fn canonical_lower(name: &str) -> &'static str {
    match name {
        "Strict-Transport-Security" => "strict-transport-security",
        "X-Content-Type-Options" => "x-content-type-options",
        "X-Frame-Options" => "x-frame-options",
        "X-XSS-Protection" => "x-xss-protection",
        _ => "content-security-policy",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bcrypt hash (cost 4) in the `$2y$` spelling `htpasswd -B` writes.
    fn hash() -> String {
        bcrypt::hash("test", 4).unwrap().replacen("$2b$", "$2y$", 1)
    }

    fn parse(text: &str) -> Result<WebConfigFile, WebConfigError> {
        WebConfigFile::parse(text.as_bytes(), Path::new("/etc/kvmio"))
    }

    #[test]
    fn the_toolkits_sample_shape() {
        let hash = hash();
        // The shape of exporter-toolkit's docs/web-config.yml and its testdata.
        let f = parse(&format!(
            "tls_server_config:
  cert_file: server.crt
  key_file: /etc/tls/server.key
  client_auth_type: RequireAndVerifyClientCert
  client_ca_file: ca.crt
  min_version: TLS12
  max_version: TLS13
  cipher_suites:
    - TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
  prefer_server_cipher_suites: true
  curve_preferences: [CurveP256, X25519]
http_server_config:
  http2: false
  headers:
    X-Frame-Options: deny
    X-Content-Type-Options: nosniff
    Strict-Transport-Security: max-age=31536000
basic_auth_users:
  alice: '{hash}'
  bob: {hash}
"
        ))
        .unwrap();
        let tls = &f.tls_server_config;
        assert!(tls.is_enabled());
        assert_eq!(tls.cert_file, Some(PathBuf::from("/etc/kvmio/server.crt")));
        assert_eq!(tls.key_file, Some(PathBuf::from("/etc/tls/server.key")));
        assert_eq!(tls.client_ca_file, Some(PathBuf::from("/etc/kvmio/ca.crt")));
        assert_eq!(
            tls.client_auth_type.as_deref(),
            Some("RequireAndVerifyClientCert")
        );
        assert_eq!(tls.curve_preferences, ["CurveP256", "X25519"]);
        assert_eq!(f.http_server_config.http2, Some(false));
        assert_eq!(f.headers().unwrap().len(), 3);
        assert_eq!(f.basic_auth_users.len(), 2);
        assert_eq!(f.basic_auth_users["bob"], hash);
    }

    #[test]
    fn auth_only_and_empty_files_serve_plain_http() {
        let f = parse(&format!("basic_auth_users:\n  alice: {}\n", hash())).unwrap();
        assert!(!f.tls_server_config.is_enabled());
        for empty in ["", "\n", "# nothing yet\n", "tls_server_config: {}\n"] {
            let f = parse(empty).unwrap();
            assert!(!f.tls_server_config.is_enabled(), "{empty:?}");
            assert!(f.basic_auth_users.is_empty());
        }
        // Inline PEM counts as TLS too.
        assert!(parse("tls_server_config:\n  cert: x\n  key: y\n")
            .unwrap()
            .tls_server_config
            .is_enabled());
    }

    #[test]
    fn wrong_shapes_are_refused() {
        for (text, expect) in [
            ("tls_server_config:\n  cert_flie: a\n", "unknown field"),
            ("basic_auth_user:\n  a: b\n", "unknown field"),
            ("basic_auth_users:\n  alice: secret\n", "bcrypt"),
            ("basic_auth_users: [alice]\n", "YAML"),
            (
                "http_server_config:\n  headers:\n    X-Powered-By: kvmio\n",
                "X-Powered-By",
            ),
            (
                "http_server_config:\n  headers:\n    X-Frame-Options: allow\n",
                "deny, sameorigin",
            ),
            ("rate_limit:\n  interval: 1s\n  burst: 5\n", "rate_limit"),
            ("tls_server_config: [\n", "YAML"),
        ] {
            let e = crate::errors::chain(&parse(text).unwrap_err());
            assert!(e.contains(expect), "{text:?}: {e}");
        }
        let mut many = String::from("basic_auth_users:\n");
        let hash = hash();
        for i in 0..=MAX_USERS {
            many.push_str(&format!("  u{i}: {hash}\n"));
        }
        assert!(matches!(
            parse(&many),
            Err(WebConfigError::TooManyUsers { .. })
        ));
    }

    #[test]
    fn files_are_read_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.yml");
        std::fs::write(&big, vec![b'#'; MAX_FILE_BYTES as usize + 1]).unwrap();
        assert!(matches!(
            read_bounded(&big, "web config file"),
            Err(WebConfigError::TooLarge { .. })
        ));
        let missing = read_bounded(&dir.path().join("nope"), "web config file").unwrap_err();
        assert!(crate::errors::chain(&missing).contains("nope"));
    }
}
