//! `tls_server_config` as a rustls [`ServerConfig`] (on the `ring` provider), and the few PEM
//! helpers a TLS client of the exporter needs too (`kvmio top`, the tests): [`crypto_provider`],
//! [`read_certificates`], [`read_private_key`], [`root_store`].
//!
//! What rustls cannot do as Go's crypto/tls does is refused with a message that says so, never
//! silently weakened or strengthened:
//! - TLS 1.0 and 1.1 (rustls implements 1.2 and 1.3 only);
//! - CBC and RSA-key-exchange cipher suites (rustls offers ECDHE with AES-GCM or
//!   ChaCha20-Poly1305 only), and the P-521 curve (not in ring);
//! - `RequestClientCert` and `RequireAnyClientCert` (certificates asked for but never
//!   verified): use `RequireAndVerifyClientCert`, or `VerifyClientCertIfGiven`;
//! - `client_allowed_sans`.
//!
//! As in Go, `cipher_suites` only selects TLS 1.2 suites: TLS 1.3's are always offered.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::{ring, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, SupportedCipherSuite, SupportedProtocolVersion};

use super::file::{read_bounded, TlsServerConfig};
use super::WebConfigError;

/// The crypto provider kvmio's servers and clients use: rustls' `ring` backend.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

/// Every certificate in a PEM file (read bounded), in file order.
pub fn read_certificates(
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, WebConfigError> {
    pem_certificates(&read_bounded(path, what)?, what)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in a PEM file (read bounded).
pub fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, WebConfigError> {
    pem_private_key(&read_bounded(path, "key_file")?)
}

/// A root store of every certificate in a PEM file (a CA bundle).
pub fn root_store(path: &Path, what: &'static str) -> Result<RootCertStore, WebConfigError> {
    roots(read_certificates(path, what)?, what)
}

fn pem_certificates(
    pem: &[u8],
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, WebConfigError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| WebConfigError::Pem { what, source })?;
    if certs.is_empty() {
        return Err(WebConfigError::NoCertificate { what });
    }
    Ok(certs)
}

fn pem_private_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, WebConfigError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|source| WebConfigError::Pem {
        what: "key_file",
        source,
    })
}

fn roots(
    certs: Vec<CertificateDer<'static>>,
    what: &'static str,
) -> Result<RootCertStore, WebConfigError> {
    let mut store = RootCertStore::empty();
    for cert in certs {
        store
            .add(cert)
            .map_err(|source| WebConfigError::Tls { what, source })?;
    }
    Ok(store)
}

/// The PEM inputs of a TLS configuration, read from their files (or taken inline): what
/// [`super::WebConfig`] compares to tell whether anything changed since the last connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsMaterial {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
    pub client_ca: Option<Vec<u8>>,
}

impl TlsMaterial {
    /// Reads the certificate, key and client CA the section names (bounded), or takes the
    /// inline PEM. A file and inline PEM for the same thing is an error, not a guess.
    pub fn read(c: &TlsServerConfig) -> Result<TlsMaterial, WebConfigError> {
        let pick = |inline: &Option<String>,
                    file: &Option<std::path::PathBuf>,
                    what: &'static str|
         -> Result<Option<Vec<u8>>, WebConfigError> {
            match (inline, file) {
                (Some(_), Some(_)) => Err(WebConfigError::Invalid(format!(
                    "both {what} and {what}_file are set: give one"
                ))),
                (Some(text), None) => Ok(Some(text.as_bytes().to_vec())),
                (None, Some(path)) => Ok(Some(read_bounded(path, file_what(what))?)),
                (None, None) => Ok(None),
            }
        };
        let cert = pick(&c.cert, &c.cert_file, "cert")?
            .ok_or_else(|| WebConfigError::Invalid("missing one of cert or cert_file".into()))?;
        let key = pick(&c.key, &c.key_file, "key")?
            .ok_or_else(|| WebConfigError::Invalid("missing one of key or key_file".into()))?;
        let client_ca = pick(&c.client_ca, &c.client_ca_file, "client_ca")?;
        Ok(TlsMaterial {
            cert,
            key,
            client_ca,
        })
    }
}

fn file_what(what: &'static str) -> &'static str {
    match what {
        "cert" => "cert_file",
        "key" => "key_file",
        _ => "client_ca_file",
    }
}

/// Go's `tls.VersionTLS1x` names.
fn version(name: &str, key: &str) -> Result<&'static SupportedProtocolVersion, WebConfigError> {
    match name {
        "TLS12" => Ok(&rustls::version::TLS12),
        "TLS13" => Ok(&rustls::version::TLS13),
        "TLS10" | "TLS11" => Err(WebConfigError::Invalid(format!(
            "{key}: {name}: rustls implements TLS 1.2 and 1.3 only; use TLS12 or TLS13"
        ))),
        other => Err(WebConfigError::Invalid(format!(
            "{key}: unknown TLS version {other:?} (TLS12 or TLS13)"
        ))),
    }
}

/// Go's names of the TLS 1.3 suites, which Go (and so the toolkit) accepts in `cipher_suites`
/// and ignores: TLS 1.3 suites are not configurable there.
const GO_TLS13_SUITES: &[&str] = &[
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
];

/// The provider's suites for `cipher_suites`: TLS 1.3's, then the named TLS 1.2 ones in the
/// file's order. Empty list: the provider's defaults.
fn cipher_suites(
    all: &[SupportedCipherSuite],
    names: &[String],
) -> Result<Vec<SupportedCipherSuite>, WebConfigError> {
    if names.is_empty() {
        return Ok(all.to_vec());
    }
    let mut out: Vec<SupportedCipherSuite> = all
        .iter()
        .filter(|s| matches!(s, SupportedCipherSuite::Tls13(_)))
        .copied()
        .collect();
    for name in names {
        if GO_TLS13_SUITES.contains(&name.as_str()) {
            continue;
        }
        let suite = all
            .iter()
            .find(|s| {
                matches!(s, SupportedCipherSuite::Tls12(_))
                    && s.suite().as_str() == Some(name.as_str())
            })
            .ok_or_else(|| {
                WebConfigError::Invalid(format!(
                    "cipher_suites: {name:?} is not one rustls implements (TLS 1.2: {})",
                    all.iter()
                        .filter(|s| matches!(s, SupportedCipherSuite::Tls12(_)))
                        .filter_map(|s| s.suite().as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
        if !out.contains(suite) {
            out.push(*suite);
        }
    }
    Ok(out)
}

/// Go's curve names.
fn kx_group(name: &str) -> Result<&'static dyn rustls::crypto::SupportedKxGroup, WebConfigError> {
    match name {
        "X25519" => Ok(ring::kx_group::X25519),
        "CurveP256" => Ok(ring::kx_group::SECP256R1),
        "CurveP384" => Ok(ring::kx_group::SECP384R1),
        "CurveP521" => Err(WebConfigError::Invalid(
            "curve_preferences: CurveP521 is not implemented by rustls' ring provider \
             (X25519, CurveP256, CurveP384)"
                .into(),
        )),
        other => Err(WebConfigError::Invalid(format!(
            "curve_preferences: unknown curve {other:?} (X25519, CurveP256, CurveP384)"
        ))),
    }
}

/// How client certificates are asked for (`client_auth_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientAuth {
    None,
    VerifyIfGiven,
    RequireAndVerify,
}

fn client_auth(name: Option<&str>) -> Result<ClientAuth, WebConfigError> {
    match name.unwrap_or("NoClientCert") {
        "" | "NoClientCert" => Ok(ClientAuth::None),
        "VerifyClientCertIfGiven" => Ok(ClientAuth::VerifyIfGiven),
        "RequireAndVerifyClientCert" => Ok(ClientAuth::RequireAndVerify),
        unverified @ ("RequestClientCert" | "RequireAnyClientCert" | "RequireClientCert") => {
            Err(WebConfigError::Invalid(format!(
                "client_auth_type: {unverified} accepts certificates without verifying them; \
                 kvmio-exporter verifies every client certificate: use \
                 RequireAndVerifyClientCert (or VerifyClientCertIfGiven) with client_ca_file"
            )))
        }
        other => Err(WebConfigError::Invalid(format!(
            "client_auth_type: unknown value {other:?} (NoClientCert, VerifyClientCertIfGiven, \
             RequireAndVerifyClientCert)"
        ))),
    }
}

/// Builds the server configuration from the section and its PEM material.
pub fn server_config(
    c: &TlsServerConfig,
    material: &TlsMaterial,
) -> Result<ServerConfig, WebConfigError> {
    if c.client_allowed_sans.is_some() {
        return Err(WebConfigError::Unsupported(
            "client_allowed_sans: not implemented by kvmio-exporter; restrict clients with \
             a dedicated client CA (client_ca_file) instead",
        ));
    }
    let min = version(c.min_version.as_deref().unwrap_or("TLS12"), "min_version")?;
    let max = version(c.max_version.as_deref().unwrap_or("TLS13"), "max_version")?;
    let versions: Vec<&'static SupportedProtocolVersion> =
        [&rustls::version::TLS12, &rustls::version::TLS13]
            .into_iter()
            .filter(|v| {
                let n = u16::from(v.version);
                n >= u16::from(min.version) && n <= u16::from(max.version)
            })
            .collect();
    if versions.is_empty() {
        return Err(WebConfigError::Invalid(
            "min_version is above max_version".into(),
        ));
    }

    let mut provider = ring::default_provider();
    provider.cipher_suites = cipher_suites(&provider.cipher_suites, &c.cipher_suites)?;
    if !c.curve_preferences.is_empty() {
        provider.kx_groups = c
            .curve_preferences
            .iter()
            .map(|n| kx_group(n))
            .collect::<Result<_, _>>()?;
    }
    let provider = Arc::new(provider);

    let auth = client_auth(c.client_auth_type.as_deref())?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|source| WebConfigError::Tls {
            what: "tls_server_config (versions and cipher suites)",
            source,
        })?;
    let builder = match (auth, &material.client_ca) {
        (ClientAuth::None, None) => builder.with_no_client_auth(),
        (ClientAuth::None, Some(_)) => {
            return Err(WebConfigError::Invalid(
                "a client CA is configured without a client_auth_type: set \
                 RequireAndVerifyClientCert (or VerifyClientCertIfGiven)"
                    .into(),
            ))
        }
        (_, None) => {
            return Err(WebConfigError::Invalid(
                "client_auth_type verifies client certificates: give the CA in \
                 client_ca_file (or client_ca)"
                    .into(),
            ))
        }
        (auth, Some(ca)) => {
            let store = roots(pem_certificates(ca, "client_ca_file")?, "client_ca_file")?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(store), provider);
            let verifier = if auth == ClientAuth::VerifyIfGiven {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            builder.with_client_cert_verifier(
                verifier
                    .build()
                    .map_err(|source| WebConfigError::ClientVerifier { source })?,
            )
        }
    };
    let mut config = builder
        .with_single_cert(
            pem_certificates(&material.cert, "cert_file")?,
            pem_private_key(&material.key)?,
        )
        .map_err(|source| WebConfigError::Tls {
            what: "cert_file and key_file",
            source,
        })?;
    config.ignore_client_order = c.prefer_server_cipher_suites.unwrap_or(true);
    // HTTP/1.1 only: the server is hyper's http1 (see HttpServerConfig::http2).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn cipher_suites_map_go_names() {
        let all = ring::default_provider().cipher_suites;
        let picked = cipher_suites(
            &all,
            &names(&[
                "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
                "TLS_AES_128_GCM_SHA256",
                "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
            ]),
        )
        .unwrap();
        let tls12: Vec<_> = picked
            .iter()
            .filter(|s| matches!(s, SupportedCipherSuite::Tls12(_)))
            .map(|s| s.suite().as_str().unwrap())
            .collect();
        assert_eq!(
            tls12,
            [
                "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
                "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"
            ]
        );
        assert!(picked
            .iter()
            .any(|s| matches!(s, SupportedCipherSuite::Tls13(_))));
        let e = cipher_suites(&all, &names(&["TLS_RSA_WITH_AES_128_CBC_SHA"])).unwrap_err();
        assert!(e.to_string().contains("not one rustls implements"), "{e}");
    }

    #[test]
    fn versions_curves_and_client_auth() {
        assert!(version("TLS12", "min_version").is_ok());
        assert!(version("TLS10", "min_version")
            .unwrap_err()
            .to_string()
            .contains("1.2 and 1.3 only"));
        assert!(version("SSL3", "min_version").is_err());
        assert!(kx_group("CurveP521").is_err());
        assert!(kx_group("X25519").is_ok());
        assert_eq!(client_auth(None).unwrap(), ClientAuth::None);
        assert_eq!(
            client_auth(Some("RequireAndVerifyClientCert")).unwrap(),
            ClientAuth::RequireAndVerify
        );
        assert!(client_auth(Some("RequireAnyClientCert"))
            .unwrap_err()
            .to_string()
            .contains("without verifying"));
        assert!(client_auth(Some("Sometimes")).is_err());
    }
}
