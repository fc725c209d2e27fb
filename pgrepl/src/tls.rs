//! TLS for the connection (protocol section "SSL Session Encryption"; libpq "SSL Support").
//!
//! How each `sslmode` verifies the server, with rustls and the ring provider:
//! - `prefer`, `allow`, `require`: encryption only, any certificate is accepted (but the
//!   handshake's signatures are still checked), as libpq does. If a root certificate file is
//!   configured or present at libpq's default place, `require` behaves as `verify-ca`
//!   (libpq: "for backwards compatibility ... if a root CA file exists").
//! - `verify-ca`: the chain must lead to a certificate of `sslrootcert`; the name is not checked.
//! - `verify-full`: chain and host name (`host`, or `hostaddr` when no host is given).
//!
//! The handshake starts right after the server's single 'S' byte. Nothing is read before the
//! handshake beyond that byte, so a man in the middle cannot inject plaintext that would later
//! be taken as coming from inside the encrypted session (CVE-2021-23222).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::crypto::{
    verify_tls12_signature, verify_tls13_signature, CryptoProvider,
};
use tokio_rustls::rustls::{
    self, CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_rustls::TlsConnector;

use crate::conninfo::{ConnInfo, SslMode};
use crate::error::ReplError;

/// The SSLRequest code, 1234 in the high 16 bits and 5679 in the low ("Message Formats",
/// SSLRequest).
const SSL_REQUEST_CODE: i32 = 80_877_103;

/// What the server answered to SSLRequest.
pub(crate) enum Negotiated {
    Tls(Box<TlsStream<TcpStream>>),
    /// 'N': the server does not do TLS on this connection; the socket continues in plain text.
    Refused(TcpStream),
}

/// Sends SSLRequest and, on 'S', performs the TLS handshake.
pub(crate) async fn negotiate(
    mut tcp: TcpStream,
    info: &ConnInfo,
    target: &str,
) -> Result<Negotiated, ReplError> {
    let mut req = [0u8; 8];
    req[..4].copy_from_slice(&8i32.to_be_bytes());
    req[4..].copy_from_slice(&SSL_REQUEST_CODE.to_be_bytes());
    let connect_err = |source| ReplError::Connect {
        target: target.to_string(),
        source,
    };
    tcp.write_all(&req).await.map_err(connect_err)?;
    // Exactly one byte: 'S' (go ahead), 'N' (no TLS), or 'E' from a server that predates
    // SSLRequest (then an error message follows, which must not be trusted or shown).
    let answer = tcp.read_u8().await.map_err(connect_err)?;
    match answer {
        b'S' => {}
        b'N' => return Ok(Negotiated::Refused(tcp)),
        b'E' => {
            return Err(ReplError::Tls {
                message: "the server answered the SSL request with an error (a server too old \
                          for this protocol?)"
                    .to_string(),
            })
        }
        other => {
            return Err(ReplError::protocol(format!(
                "unexpected answer {other:#04x} to SSLRequest"
            )))
        }
    }
    let config = client_config(info)?;
    let name = server_name(info)?;
    let tls = TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| {
            // rustls reports certificate and handshake failures as InvalidData carrying a
            // rustls::Error; anything else is the network.
            match e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            {
                Some(tls_err) => ReplError::Tls {
                    message: format!("TLS handshake with {target} failed: {tls_err}"),
                },
                None => connect_err(e),
            }
        })?;
    Ok(Negotiated::Tls(Box::new(tls)))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// libpq's default root certificate file, `~/.postgresql/root.crt`.
fn default_root_cert() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".postgresql/root.crt"))
}

fn client_config(info: &ConnInfo) -> Result<Arc<ClientConfig>, ReplError> {
    let provider = provider();
    let root_file = info
        .sslrootcert
        .clone()
        .or_else(|| default_root_cert().filter(|p| p.is_file()));
    let verifier: Arc<dyn ServerCertVerifier> = match info.sslmode {
        SslMode::VerifyFull | SslMode::VerifyCa | SslMode::Require if root_file.is_some() => {
            let file = root_file.unwrap_or_default();
            let roots = load_roots(&file)?;
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| ReplError::Tls {
                        message: format!("cannot use root certificates of {}: {e}", file.display()),
                    })?;
            if info.sslmode == SslMode::VerifyFull {
                webpki
            } else {
                Arc::new(ChainOnly { inner: webpki })
            }
        }
        SslMode::VerifyFull | SslMode::VerifyCa => {
            return Err(ReplError::Tls {
                message: format!(
                    "sslmode={} needs a root certificate file: set sslrootcert (libpq's default \
                     ~/.postgresql/root.crt does not exist), or use sslmode=require to encrypt \
                     without verifying the server",
                    info.sslmode.as_str()
                ),
            })
        }
        _ => Arc::new(EncryptOnly {
            provider: provider.clone(),
        }),
    };
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ReplError::Tls {
            message: format!("TLS configuration: {e}"),
        })?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn load_roots(file: &Path) -> Result<RootCertStore, ReplError> {
    let tls_err = |what: String| ReplError::Tls { message: what };
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(file).map_err(|e| {
        tls_err(format!(
            "cannot read root certificate file {}: {e}",
            file.display()
        ))
    })?;
    for cert in certs {
        let cert = cert.map_err(|e| {
            tls_err(format!(
                "cannot parse root certificate file {}: {e}",
                file.display()
            ))
        })?;
        roots
            .add(cert)
            .map_err(|e| tls_err(format!("unusable certificate in {}: {e}", file.display())))?;
    }
    if roots.is_empty() {
        return Err(tls_err(format!(
            "root certificate file {} holds no certificate",
            file.display()
        )));
    }
    Ok(roots)
}

/// The name the certificate must carry (verify-full) and the SNI sent.
fn server_name(info: &ConnInfo) -> Result<ServerName<'static>, ReplError> {
    let host = match (&info.host, info.hostaddr) {
        (Some(h), _) => h.clone(),
        (None, Some(a)) => a.to_string(),
        (None, None) => "localhost".to_string(),
    };
    ServerName::try_from(host.clone()).map_err(|_| {
        ReplError::config(format!(
            "host {host:?} is not a valid DNS name or IP address for TLS"
        ))
    })
}

/// sslmode=require without root certificates: accept any certificate, still check handshake
/// signatures so the session keys belong to whoever holds the certificate's key.
#[derive(Debug)]
struct EncryptOnly {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// sslmode=verify-ca: the webpki verifier, except that a certificate valid for another name is
/// accepted. webpki checks the name last, after the chain, so a name error implies a good chain.
#[derive(Debug)]
struct ChainOnly {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The `tls-server-end-point` channel binding data (RFC 5929 section 4.1) of the server's
/// certificate: its hash with the certificate's signature hash algorithm, SHA-256 for MD5 and
/// SHA-1 — what PostgreSQL's `be_tls_get_certificate_hash` computes. `None` for algorithms
/// without a single hash (Ed25519, RSA-PSS), for which the server cannot bind either.
pub(crate) fn tls_server_end_point(cert_der: &[u8]) -> Option<Vec<u8>> {
    let oid = signature_algorithm_oid(cert_der)?;
    // DER contents of the OIDs (without tag and length).
    const SHA1_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x05];
    const MD5_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x04];
    const SHA256_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b];
    const SHA384_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c];
    const SHA512_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d];
    const SHA224_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0e];
    const ECDSA_SHA1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01];
    const ECDSA_SHA224: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x01];
    const ECDSA_SHA256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
    const ECDSA_SHA384: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03];
    const ECDSA_SHA512: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04];
    match oid {
        o if o == SHA1_RSA || o == MD5_RSA || o == ECDSA_SHA1 => {
            Some(sha2::Sha256::digest(cert_der).to_vec())
        }
        o if o == SHA256_RSA || o == ECDSA_SHA256 => Some(sha2::Sha256::digest(cert_der).to_vec()),
        o if o == SHA224_RSA || o == ECDSA_SHA224 => Some(sha2::Sha224::digest(cert_der).to_vec()),
        o if o == SHA384_RSA || o == ECDSA_SHA384 => Some(sha2::Sha384::digest(cert_der).to_vec()),
        o if o == SHA512_RSA || o == ECDSA_SHA512 => Some(sha2::Sha512::digest(cert_der).to_vec()),
        _ => None,
    }
}

/// `Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm AlgorithmIdentifier, ... }`,
/// `AlgorithmIdentifier ::= SEQUENCE { algorithm OBJECT IDENTIFIER, parameters ANY OPTIONAL }`:
/// the contents of that OBJECT IDENTIFIER.
fn signature_algorithm_oid(der: &[u8]) -> Option<&[u8]> {
    let (tag, cert, _) = der_tlv(der)?;
    if tag != 0x30 {
        return None;
    }
    let (_, _, after_tbs) = der_tlv(cert)?;
    let (tag, alg, _) = der_tlv(after_tbs)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, oid, _) = der_tlv(alg)?;
    (tag == 0x06).then_some(oid)
}

/// One DER tag-length-value: (tag, contents, rest).
fn der_tlv(buf: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *buf.first()?;
    let first = *buf.get(1)?;
    let (len, header) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | usize::from(*buf.get(2 + i)?);
        }
        (len, 2 + n)
    };
    let end = header.checked_add(len)?;
    let contents = buf.get(header..end)?;
    Some((tag, contents, &buf[end..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_binding_hash_of_an_ecdsa_sha256_certificate() -> Result<(), rcgen::Error> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let cert =
            rcgen::CertificateParams::new(vec!["localhost".to_string()])?.self_signed(&key)?;
        let der = cert.der().to_vec();
        assert_eq!(
            tls_server_end_point(&der),
            Some(sha2::Sha256::digest(&der).to_vec())
        );
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384)?;
        let cert =
            rcgen::CertificateParams::new(vec!["localhost".to_string()])?.self_signed(&key)?;
        let der = cert.der().to_vec();
        assert_eq!(
            tls_server_end_point(&der),
            Some(sha2::Sha384::digest(&der).to_vec())
        );
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
        let cert =
            rcgen::CertificateParams::new(vec!["localhost".to_string()])?.self_signed(&key)?;
        assert_eq!(tls_server_end_point(cert.der()), None);
        Ok(())
    }

    #[test]
    fn der_parsing_never_panics_on_garbage() {
        for len in 0..64 {
            let junk: Vec<u8> = (0..len).map(|i| (i * 37 + 0x30) as u8).collect();
            let _ = tls_server_end_point(&junk);
        }
        assert_eq!(der_tlv(&[0x30, 0x85, 1, 2, 3, 4, 5]), None);
        assert_eq!(der_tlv(&[0x30, 0x81]), None);
    }
}
