//! One scrape of the exporter: `GET /metrics` over HTTP or HTTPS (rustls; CA file, client
//! certificate, basic auth), bounded in time and size, parsed by the exporter's own text-format
//! parser and bounded in samples.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use base64::Engine as _;
use kvmio_exporter::textformat::{self, Sample};
use ureq::tls::{Certificate, ClientCert, PemItem, PrivateKey, RootCerts, TlsConfig};

use crate::cli::{Cli, TlsArgs};

/// Certificate, key and password files are small; a bigger one is not what the flag names.
const MAX_CREDENTIAL_FILE: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    #[error("cannot read {what} {path}")]
    ReadFile {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is larger than {MAX_CREDENTIAL_FILE} bytes: is it the {what}?")]
    FileTooLarge { what: &'static str, path: PathBuf },
    #[error("{path} holds no PEM {what}")]
    NoPem { what: &'static str, path: PathBuf },
    #[error("cannot parse the PEM in {path}")]
    Pem {
        path: PathBuf,
        #[source]
        source: ureq::Error,
    },
    #[error("GET {url}")]
    Request {
        url: String,
        #[source]
        source: Box<ureq::Error>,
    },
    #[error("GET {url}: HTTP {status}{hint}")]
    Status {
        url: String,
        status: u16,
        hint: &'static str,
    },
    #[error("reading the answer of {url} (at most {limit} bytes, --max-bytes)")]
    Body {
        url: String,
        limit: u64,
        #[source]
        source: Box<ureq::Error>,
    },
    #[error("{url} answered more than {limit} samples (--max-series)")]
    TooManySamples { url: String, limit: usize },
}

/// The samples of one answer, when it was read, and the lines the parser skipped.
#[derive(Debug)]
pub struct Scrape {
    pub at: Instant,
    pub samples: Vec<Sample>,
    /// Lines the parser refused (kept out of the view, counted in the status line).
    pub skipped_lines: usize,
}

/// The exporter's address and how to reach it.
#[derive(Debug)]
pub struct Scraper {
    url: String,
    agent: ureq::Agent,
    authorization: Option<String>,
    max_bytes: u64,
    max_series: usize,
}

impl Scraper {
    pub fn new(cli: &Cli) -> Result<Scraper, ScrapeError> {
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(cli.timeout))
            .http_status_as_error(false)
            .tls_config(tls_config(&cli.tls)?)
            .build();
        Ok(Scraper {
            url: cli.url.clone(),
            agent: config.into(),
            authorization: authorization(&cli.tls)?,
            max_bytes: cli.max_bytes,
            max_series: cli.max_series,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// One `GET`, parsed.
    pub fn scrape(&self) -> Result<Scrape, ScrapeError> {
        let mut request = self.agent.get(&self.url);
        if let Some(a) = &self.authorization {
            request = request.header("Authorization", a);
        }
        let mut response = request.call().map_err(|e| ScrapeError::Request {
            url: self.url.clone(),
            source: Box::new(e),
        })?;
        let at = Instant::now();
        let status = response.status().as_u16();
        if status != 200 {
            return Err(ScrapeError::Status {
                url: self.url.clone(),
                status,
                hint: match status {
                    401 => " (pass --auth.username and --auth.password-file)",
                    403 => " (the exporter refused these credentials)",
                    404 => " (is the URL's path the exporter's --web.telemetry-path?)",
                    _ => "",
                },
            });
        }
        let body = response
            .body_mut()
            .with_config()
            .limit(self.max_bytes)
            .read_to_string()
            .map_err(|e| ScrapeError::Body {
                url: self.url.clone(),
                limit: self.max_bytes,
                source: Box::new(e),
            })?;
        parse(&body, self.max_series)
            .ok_or_else(|| ScrapeError::TooManySamples {
                url: self.url.clone(),
                limit: self.max_series,
            })
            .map(|(samples, skipped_lines)| Scrape {
                at,
                samples,
                skipped_lines,
            })
    }
}

/// The samples of a `/metrics` answer and the number of refused lines; `None` over `max_series`
/// samples.
pub fn parse(body: &str, max_series: usize) -> Option<(Vec<Sample>, usize)> {
    let parsed = textformat::parse(body);
    let total: usize = parsed.families.iter().map(|f| f.samples.len()).sum();
    if total > max_series {
        return None;
    }
    let samples = parsed
        .families
        .into_iter()
        .flat_map(|f| f.samples)
        .collect();
    Some((samples, parsed.errors.len()))
}

fn read_file(what: &'static str, path: &Path) -> Result<Vec<u8>, ScrapeError> {
    let meta = std::fs::metadata(path).map_err(|source| ScrapeError::ReadFile {
        what,
        path: path.to_owned(),
        source,
    })?;
    if meta.len() > MAX_CREDENTIAL_FILE {
        return Err(ScrapeError::FileTooLarge {
            what,
            path: path.to_owned(),
        });
    }
    std::fs::read(path).map_err(|source| ScrapeError::ReadFile {
        what,
        path: path.to_owned(),
        source,
    })
}

fn pem_items(what: &'static str, path: &Path) -> Result<Vec<PemItem<'static>>, ScrapeError> {
    let bytes = read_file(what, path)?;
    ureq::tls::parse_pem(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| ScrapeError::Pem {
            path: path.to_owned(),
            source,
        })
}

fn certificates(what: &'static str, path: &Path) -> Result<Vec<Certificate<'static>>, ScrapeError> {
    let certs: Vec<Certificate<'static>> = pem_items(what, path)?
        .into_iter()
        .filter_map(|i| match i {
            PemItem::Certificate(c) => Some(c),
            _ => None,
        })
        .collect();
    if certs.is_empty() {
        return Err(ScrapeError::NoPem {
            what,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKey<'static>, ScrapeError> {
    pem_items("private key", path)?
        .into_iter()
        .find_map(|i| match i {
            PemItem::PrivateKey(k) => Some(k),
            _ => None,
        })
        .ok_or_else(|| ScrapeError::NoPem {
            what: "private key",
            path: path.to_owned(),
        })
}

fn tls_config(args: &TlsArgs) -> Result<TlsConfig, ScrapeError> {
    let mut tls = TlsConfig::builder();
    if let Some(ca) = &args.ca_file {
        tls = tls.root_certs(RootCerts::Specific(Arc::new(certificates(
            "CA certificate",
            ca,
        )?)));
    }
    if let (Some(cert), Some(key)) = (&args.cert_file, &args.key_file) {
        let chain = certificates("client certificate", cert)?;
        tls = tls.client_cert(Some(ClientCert::new_with_certs(&chain, private_key(key)?)));
    }
    Ok(tls.build())
}

/// `Basic base64(user:password)`, the password from its file (first line) or the flag/env.
fn authorization(args: &TlsArgs) -> Result<Option<String>, ScrapeError> {
    let Some(user) = &args.username else {
        return Ok(None);
    };
    let password = match &args.password_file {
        Some(path) => {
            let raw = read_file("password file", path)?;
            String::from_utf8_lossy(&raw)
                .lines()
                .next()
                .unwrap_or("")
                .to_owned()
        }
        None => args.password.clone().unwrap_or_default(),
    };
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    Ok(Some(format!("Basic {token}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_bound_is_an_error_not_a_cut() {
        let body = "# TYPE a gauge\na{x=\"1\"} 1\na{x=\"2\"} 2\n# TYPE b counter\nb_total 3\n";
        let (samples, skipped) = parse(body, 3).unwrap();
        assert_eq!((samples.len(), skipped), (3, 0));
        assert!(parse(body, 2).is_none());
        let (_, skipped) = parse("a{x=\"1\" 1\nb 2\n", 10).unwrap();
        assert_eq!(skipped, 1);
    }

    #[test]
    fn basic_auth_header() {
        let dir = std::env::temp_dir().join(format!("kvmio-top-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pw");
        std::fs::write(&file, "s3cret\nignored\n").unwrap();
        let args = TlsArgs {
            ca_file: None,
            cert_file: None,
            key_file: None,
            username: Some("prom".into()),
            password_file: Some(file),
            password: None,
        };
        // base64("prom:s3cret")
        assert_eq!(
            authorization(&args).unwrap().as_deref(),
            Some("Basic cHJvbTpzM2NyZXQ=")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
