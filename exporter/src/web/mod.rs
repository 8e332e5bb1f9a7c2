//! `--web.config.file`: TLS, client certificates, basic authentication and response headers in
//! Prometheus' exporter-toolkit format ([`file`]), served through rustls ([`tls`]) with bcrypt
//! passwords ([`auth`]).
//!
//! **When the file is read.** As exporter-toolkit does: at every new connection (the TLS
//! handshake takes its certificate from the files as they are now) and at every request
//! (users and headers), so that a renewed certificate or a changed password applies without a
//! restart or a signal — a certificate renewal tool only has to replace the files. A re-read
//! costs a few small file reads; the YAML is parsed again, and the TLS configuration rebuilt,
//! only when some byte changed ([`WebConfig::current`]). Unlike the toolkit, whose requests fail
//! with 500 while the file is broken, a file that breaks later keeps the last good
//! configuration in force and is logged once per distinct error; a broken file at start-up is
//! an error that stops the exporter. Switching between TLS and plain HTTP needs a restart (the
//! listener's protocol is chosen at start-up): such an edit is reported and not applied.

pub mod auth;
pub mod file;
pub mod tls;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use hyper::header::{HeaderName, HeaderValue};

use crate::errors::chain;
use auth::BasicAuth;
use file::{read_bounded, WebConfigFile};
use tls::TlsMaterial;

/// Why a web configuration file cannot be used. Each variant is one failing step; inner errors
/// are only in `#[source]`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WebConfigError {
    #[error("cannot read the {what} {}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the {what} {} is larger than {limit} bytes", path.display())]
    TooLarge {
        what: &'static str,
        path: PathBuf,
        limit: u64,
    },
    #[error("the web configuration is not UTF-8")]
    NotUtf8(#[source] std::str::Utf8Error),
    #[error("the web configuration is not valid YAML of exporter-toolkit's format")]
    Yaml(#[source] serde_yaml_ng::Error),
    #[error("{0}")]
    Unsupported(&'static str),
    #[error("tls_server_config: {0}")]
    Invalid(String),
    #[error("basic_auth_users: more than {limit} users")]
    TooManyUsers { limit: usize },
    #[error("basic_auth_users: user name {user:?} is too long or contains ':'")]
    BadUser { user: String },
    #[error("basic_auth_users: {user}'s password is not a bcrypt hash (htpasswd -nBC 10 \"\" | tr -d ':\\n' makes one)")]
    BadHash {
        user: String,
        #[source]
        source: bcrypt::BcryptError,
    },
    #[error("http_server_config.headers: {name} cannot be set (Strict-Transport-Security, X-Content-Type-Options, X-Frame-Options, X-XSS-Protection, Content-Security-Policy)")]
    HeaderNotSettable { name: String },
    #[error("http_server_config.headers: {name}: the value must be one of: {allowed}")]
    HeaderValue { name: String, allowed: String },
    #[error("{what}: not PEM")]
    Pem {
        what: &'static str,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{what}: no certificate in the PEM")]
    NoCertificate { what: &'static str },
    #[error("{what} refused by rustls")]
    Tls {
        what: &'static str,
        #[source]
        source: rustls::Error,
    },
    #[error("client_ca_file: cannot verify clients with these CAs")]
    ClientVerifier {
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
    #[error("the edit turns TLS {}; that needs a restart of the exporter", if *.now { "on" } else { "off" })]
    TlsSwitched { now: bool },
}

/// What a connection or request is served with: one consistent reading of the file.
#[derive(Debug)]
pub struct Settings {
    /// TLS configuration; `None` for plain HTTP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// User name -> bcrypt hash; empty: no authentication.
    pub users: BTreeMap<String, String>,
    /// `http_server_config.headers`, added to every response.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// The last good reading and the bytes it was made from.
#[derive(Debug)]
struct State {
    text: Vec<u8>,
    file: WebConfigFile,
    material: Option<TlsMaterial>,
    settings: Arc<Settings>,
    /// The error last logged, so that a broken file is logged once, not at every request.
    last_error: Option<String>,
}

/// The web configuration file, re-read at every connection and request ([`WebConfig::current`]).
#[derive(Debug)]
pub struct WebConfig {
    path: PathBuf,
    tls: bool,
    state: Mutex<State>,
    auth: BasicAuth,
}

fn settings(
    file: &WebConfigFile,
    material: Option<&TlsMaterial>,
) -> Result<Settings, WebConfigError> {
    let tls = match material {
        Some(m) => Some(Arc::new(tls::server_config(&file.tls_server_config, m)?)),
        None => None,
    };
    Ok(Settings {
        tls,
        users: file.basic_auth_users.clone(),
        headers: file.headers()?,
    })
}

fn material(file: &WebConfigFile) -> Result<Option<TlsMaterial>, WebConfigError> {
    file.tls_server_config
        .is_enabled()
        .then(|| TlsMaterial::read(&file.tls_server_config))
        .transpose()
}

impl WebConfig {
    /// Reads and checks the file and everything it names. Errors here stop the exporter.
    pub fn load(path: &Path) -> Result<WebConfig, WebConfigError> {
        let text = read_bounded(path, "web config file")?;
        let file = WebConfigFile::parse(&text, dir_of(path))?;
        let material = material(&file)?;
        let settings = Arc::new(settings(&file, material.as_ref())?);
        Ok(WebConfig {
            path: path.to_owned(),
            tls: settings.tls.is_some(),
            state: Mutex::new(State {
                text,
                file,
                material,
                settings,
                last_error: None,
            }),
            auth: BasicAuth::default(),
        })
    }

    /// Whether the listener speaks TLS (fixed at start-up).
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The password checker (its cache lives as long as the server).
    pub fn auth(&self) -> &BasicAuth {
        &self.auth
    }

    /// The settings as the files are now: re-reads the file and the PEM files it names,
    /// rebuilds only if a byte changed, and keeps the last good settings (logging the error
    /// once) when the new ones cannot be used.
    pub fn current(&self) -> Arc<Settings> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match self.refresh(&mut state) {
            Ok(true) => {
                tracing::info!(file = %self.path.display(), "web config file reloaded");
                state.last_error = None;
            }
            Ok(false) => {
                if state.last_error.take().is_some() {
                    tracing::info!(file = %self.path.display(), "web config file usable again");
                }
            }
            Err(e) => {
                let message = chain(&e);
                if state.last_error.as_deref() != Some(message.as_str()) {
                    tracing::warn!(
                        file = %self.path.display(),
                        "web config file: {message}; the last good configuration stays in force"
                    );
                    state.last_error = Some(message);
                }
            }
        }
        state.settings.clone()
    }

    /// Ok(true): changed and applied; Ok(false): nothing changed.
    fn refresh(&self, state: &mut State) -> Result<bool, WebConfigError> {
        let text = read_bounded(&self.path, "web config file")?;
        let file = if text == state.text {
            state.file.clone()
        } else {
            WebConfigFile::parse(&text, dir_of(&self.path))?
        };
        if file.tls_server_config.is_enabled() != self.tls {
            return Err(WebConfigError::TlsSwitched { now: !self.tls });
        }
        let material = material(&file)?;
        if text == state.text && material == state.material {
            return Ok(false);
        }
        state.settings = Arc::new(settings(&file, material.as_ref())?);
        state.text = text;
        state.file = file;
        state.material = material;
        Ok(true)
    }
}

fn dir_of(path: &Path) -> &Path {
    path.parent().unwrap_or_else(|| Path::new("."))
}
