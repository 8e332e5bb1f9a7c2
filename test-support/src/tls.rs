//! TLS for the tests: a throw-away PKI made with rcgen (a CA, a server certificate for
//! `127.0.0.1` and `localhost`, a client certificate, and a client certificate from another CA
//! that the server must refuse), written as PEM files; and a blocking HTTPS `GET` through
//! rustls (ring), optionally with a client certificate and basic authentication.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedKey, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// The PEM files of a test PKI, in one directory.
#[derive(Debug, Clone)]
pub struct TestPki {
    /// The CA that signed the server and client certificates.
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// A client certificate signed by another CA.
    pub rogue_client_cert: PathBuf,
    pub rogue_client_key: PathBuf,
}

fn ca(name: &str) -> CertifiedKey {
    let key = KeyPair::generate().expect("CA key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key).expect("self-signed CA");
    CertifiedKey {
        cert,
        key_pair: key,
    }
}

fn leaf(
    issuer: &CertifiedKey,
    names: &[&str],
    usage: ExtendedKeyUsagePurpose,
    common_name: &str,
) -> CertifiedKey {
    let key = KeyPair::generate().expect("leaf key");
    let mut params =
        CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .expect("leaf params");
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.extended_key_usages = vec![usage];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let cert = params
        .signed_by(&key, &issuer.cert, &issuer.key_pair)
        .expect("signed leaf");
    CertifiedKey {
        cert,
        key_pair: key,
    }
}

fn write(dir: &Path, name: &str, pem: String) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, pem).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}

impl TestPki {
    /// Makes the PKI and writes it to `dir` (`ca.crt`, `server.crt`, `server.key`, ...).
    pub fn new(dir: &Path) -> TestPki {
        let rogue_ca = ca("rogue CA");
        let ca = ca("kvmio test CA");
        let server = leaf(
            &ca,
            &["127.0.0.1", "localhost"],
            ExtendedKeyUsagePurpose::ServerAuth,
            "kvmio-exporter",
        );
        let client = leaf(&ca, &[], ExtendedKeyUsagePurpose::ClientAuth, "prometheus");
        let rogue = leaf(&rogue_ca, &[], ExtendedKeyUsagePurpose::ClientAuth, "rogue");
        TestPki {
            ca: write(dir, "ca.crt", ca.cert.pem()),
            server_cert: write(dir, "server.crt", server.cert.pem()),
            server_key: write(dir, "server.key", server.key_pair.serialize_pem()),
            client_cert: write(dir, "client.crt", client.cert.pem()),
            client_key: write(dir, "client.key", client.key_pair.serialize_pem()),
            rogue_client_cert: write(dir, "rogue.crt", rogue.cert.pem()),
            rogue_client_key: write(dir, "rogue.key", rogue.key_pair.serialize_pem()),
        }
    }
}

fn pem_certs(path: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A TLS client configuration trusting `ca` (PEM file), with a client certificate if given.
pub fn client_config(ca: &Path, client: Option<(&Path, &Path)>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in pem_certs(ca) {
        roots.add(cert).expect("CA certificate");
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots);
    let config = match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                pem_certs(cert),
                PrivateKeyDer::from_pem_file(key)
                    .unwrap_or_else(|e| panic!("{}: {e}", key.display())),
            )
            .expect("client certificate"),
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

/// A bcrypt hash of `password` as `htpasswd -nB` writes it (`$2y$`), at cost 4 to keep tests
/// quick (the exporter takes any cost).
pub fn bcrypt_hash(password: &str) -> String {
    bcrypt::hash(password, 4)
        .expect("bcrypt")
        .replacen("$2b$", "$2y$", 1)
}

/// An HTTP answer: status, headers (names lower-cased), body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    /// The first header of that (lower-case) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

fn parse_answer(raw: &[u8]) -> std::io::Result<Answer> {
    let invalid = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| invalid("no end of headers"))?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid("no status code"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok(Answer {
        status,
        headers,
        body: body.to_owned(),
    })
}

fn request(addr: &str, path: &str, basic_auth: Option<(&str, &str)>) -> String {
    use base64::Engine;
    let auth = basic_auth
        .map(|(u, p)| {
            format!(
                "Authorization: Basic {}\r\n",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            )
        })
        .unwrap_or_default();
    // HTTP/1.0: the answer ends with the connection and is never chunked.
    format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}\r\n")
}

/// `GET path` over TLS from `addr` (`127.0.0.1:PORT`; the certificate must name 127.0.0.1),
/// with basic authentication if given. An error if the handshake fails (e.g. the server wants a
/// client certificate) or no complete answer comes within `timeout`.
pub fn https_get(
    addr: &str,
    path: &str,
    tls: &Arc<rustls::ClientConfig>,
    basic_auth: Option<(&str, &str)>,
    timeout: Duration,
) -> std::io::Result<Answer> {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h).to_owned();
    let name = ServerName::try_from(host)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let conn = rustls::ClientConnection::new(tls.clone(), name).map_err(std::io::Error::other)?;
    let tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(timeout))?;
    tcp.set_write_timeout(Some(timeout))?;
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    stream.write_all(request(addr, path, basic_auth).as_bytes())?;
    let mut raw = Vec::new();
    match stream.read_to_end(&mut raw) {
        Ok(_) => {}
        // A peer that closes without close_notify after a complete answer.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
        Err(e) => return Err(e),
    }
    parse_answer(&raw)
}

/// `GET path` in plain HTTP (e.g. to a TLS port), with basic authentication if given: the raw
/// answer bytes, whatever they are (possibly none).
pub fn plain_get_raw(
    addr: &str,
    path: &str,
    basic_auth: Option<(&str, &str)>,
    timeout: Duration,
) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(request(addr, path, basic_auth).as_bytes())?;
    let mut raw = Vec::new();
    match s.read_to_end(&mut raw) {
        Ok(_) => Ok(raw),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(raw),
        Err(e) => Err(e),
    }
}

/// Parses a raw HTTP answer (as [`plain_get_raw`] returns it).
pub fn parse(raw: &[u8]) -> std::io::Result<Answer> {
    parse_answer(raw)
}
