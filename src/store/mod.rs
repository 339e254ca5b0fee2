//! Image stores (DESIGN §3): Glance v1/v2 over HTTP(S) ([`glance`]), and a local store
//! for admins and the demo (`file:///path/image.tgz`, `-` for stdin). What every store
//! shares lives here: the pass-through hashing of the bytes on the wire, the checksums
//! the store declares and their comparison, and the error classes.

pub mod clouds;
pub mod glance;
pub mod keystone;
mod remote;
mod resume;

pub use remote::Remote;

use std::fs::File;
use std::io::{self, Read};
use std::path::PathBuf;

use md5::Md5;
use sha2::{Digest, Sha512};

use crate::error::{ErrorKind, Kind};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The endpoint as [`redact`] shows it.
    #[error("endpoint {0:?}: expected http(s)://host[:port][/prefix], file:///path or -")]
    Unsupported(String),
    /// The store's configuration (an endpoint with a password, a CA file without a
    /// certificate, a header that would break the request's framing): refused before
    /// anything is sent, and resending the same can never succeed.
    #[error("{0}")]
    Config(String),
    #[error("{url}: HTTP {status}{}", if body.is_empty() { String::new() } else { format!(": {body}") })]
    Http {
        url: String,
        status: u16,
        body: String,
        /// Upload and download classify statuses differently (DESIGN §3).
        upload: bool,
    },
    #[error("image {id} is {status:?}, not \"queued\": it cannot take data")]
    NotQueued { id: String, status: String },
    #[error("{}: cannot write the image", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{url}")]
    Transport {
        url: String,
        #[source]
        source: ureq::Error,
    },
    /// TLS verification failed: the same next time, and the admin's fix is the CA.
    #[error("{url}: the server's certificate cannot be verified: is its CA given (--cacert, OS_CACERT or the cloud's cacert), and does it name the URL's host?")]
    Certificate {
        url: String,
        #[source]
        source: ureq::Error,
    },
    #[error("image {0} has no data yet (HTTP 204)")]
    NoData(String),
    #[error("{0}")]
    Protocol(String),
    #[error("{}: cannot open the image", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "checksum mismatch: the store declares {expected}, the bytes received hash to {actual}"
    )]
    Checksum { expected: String, actual: String },
    /// Keystone refused the credentials: the same answer every time.
    #[error("authentication failed at {auth_url} ({method}){}", if detail.is_empty() { String::new() } else { format!(": {detail}") })]
    Auth {
        /// Redacted.
        auth_url: String,
        method: &'static str,
        /// Keystone's message (never the secret: Keystone does not echo it).
        detail: String,
    },
    /// The store refused a token we had just made fresh, on a request that cannot be
    /// sent again (a streamed upload): the next attempt signs in again.
    #[error("{0}: HTTP 401: the store refused a fresh token; signing in again")]
    TokenRefused(String),
}

impl StoreError {
    pub fn transport(url: &str, source: ureq::Error) -> StoreError {
        let url = url.to_string();
        if is_certificate_error(&source) {
            StoreError::Certificate { url, source }
        } else {
            StoreError::Transport { url, source }
        }
    }

    /// An unexpected status, with the start of the body for the message.
    pub fn http(url: &str, status: u16, resp: ureq::http::Response<ureq::Body>) -> StoreError {
        let mut body = String::new();
        let _ = resp
            .into_body()
            .into_with_config()
            .limit(4096)
            .reader()
            .take(512)
            .read_to_string(&mut body);
        let body = summarize_body(&body);
        StoreError::Http {
            url: url.to_string(),
            status,
            body,
            upload: false,
        }
    }

    /// The same failure, classed as a download's (DESIGN §3).
    pub fn as_download(self) -> StoreError {
        match self {
            StoreError::Http {
                url, status, body, ..
            } => StoreError::Http {
                url,
                status,
                body,
                upload: false,
            },
            e => e,
        }
    }

    /// [`StoreError::http`], classified as an upload status.
    pub fn http_upload(
        url: &str,
        status: u16,
        resp: ureq::http::Response<ureq::Body>,
    ) -> StoreError {
        match StoreError::http(url, status, resp) {
            StoreError::Http {
                url, status, body, ..
            } => StoreError::Http {
                url,
                status,
                body,
                upload: true,
            },
            other => other,
        }
    }
}

impl Kind for StoreError {
    fn kind(&self) -> ErrorKind {
        match self {
            StoreError::Unsupported(_) | StoreError::Protocol(_) => ErrorKind::InvalidInput,
            // Upload classes: the table Nova relies on (DESIGN §3); 404 is ImageNotFound.
            StoreError::Http {
                status,
                upload: true,
                ..
            } => match status {
                404 => ErrorKind::NotFound,
                400..=403 | 405..=407 | 409..=417 | 422..=424 | 426 | 501 | 505 | 510 => {
                    ErrorKind::Permanent
                }
                _ => ErrorKind::Retryable,
            },
            // Download classes: 404 not found; 408 and 429 (the server asks us to come
            // back) retryable; other 4xx permanent (the old plugin retried 401/403
            // pointlessly); 5xx and the network retryable.
            StoreError::Http { status: 404, .. } => ErrorKind::NotFound,
            StoreError::Http {
                status: 408 | 429, ..
            } => ErrorKind::Retryable,
            StoreError::Http { status, .. } if (400..500).contains(status) => ErrorKind::Permanent,
            // A certificate that fails verification fails the same way next time.
            StoreError::Certificate { .. } => ErrorKind::Permanent,
            StoreError::Http { .. } | StoreError::Transport { .. } => ErrorKind::Retryable,
            StoreError::NoData(_) | StoreError::NotQueued { .. } => ErrorKind::Permanent,
            StoreError::Write { .. } => ErrorKind::Io,
            StoreError::Open { source, .. } if source.kind() == io::ErrorKind::NotFound => {
                ErrorKind::NotFound
            }
            StoreError::Open { .. } => ErrorKind::Io,
            StoreError::Checksum { .. } => ErrorKind::Retryable,
            StoreError::Config(_) | StoreError::Auth { .. } => ErrorKind::Permanent,
            StoreError::TokenRefused(_) => ErrorKind::Retryable,
        }
    }
}

/// Headers the HTTP layer owns: the message framing (`Content-Length`,
/// `Transfer-Encoding`), the connection and the hop-by-hop headers of RFC 9110 §7.6.1,
/// `Host`, and `Expect`. A second `Transfer-Encoding` or a wrong `Content-Length` from a
/// caller would make the request ambiguous (two framings) or hang it.
const RESERVED_HEADERS: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
    "host",
    "expect",
];

/// The answer to `method url`, traced for `-vv` ([`crate::log::trace`]): the method,
/// the URL and the status or transport error — never a header (the token is one) or a
/// body.
pub(super) fn traced(
    method: &str,
    url: &str,
    answer: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<ureq::http::Response<ureq::Body>, StoreError> {
    let url_shown = redact(url);
    match &answer {
        Ok(resp) => crate::log::trace(&format!("{method} {url_shown} -> {}", resp.status())),
        Err(e) => crate::log::trace(&format!("{method} {url_shown} -> no answer: {e}")),
    }
    answer.map_err(|e| StoreError::transport(url, e))
}

/// The one rule for a request header, whoever supplies it (`--header`, `--token`,
/// `OS_AUTH_TOKEN`, the plugin's `extra_headers` and `auth_token`): a token name
/// (letters, digits, `-`, `_`) that is not one the HTTP layer owns
/// ([`RESERVED_HEADERS`]), and a value without CR, LF, NUL or other control characters
/// but tab — anything else could end the header early and inject another. The error
/// names the header, never its value (often a token).
pub fn check_header(name: &str, value: &str) -> Result<(), String> {
    let name_ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !name_ok {
        return Err(format!(
            "{:?} is not a header name",
            crate::error::cap(name)
        ));
    }
    if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
        return Err(format!(
            "header {name} frames or routes the request and is set by glance-vhd itself; it cannot be given"
        ));
    }
    if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        // The value itself is not echoed: it is often a token.
        return Err(format!(
            "the value of header {name} holds a control character (CR, LF, NUL…)"
        ));
    }
    Ok(())
}

/// An endpoint with its password (URL userinfo) replaced by `***`, for messages.
pub fn redact(endpoint: &str) -> String {
    let Some((scheme, rest)) = endpoint.split_once("://") else {
        return endpoint.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => endpoint.to_string(),
    }
}

/// The one rule for an endpoint, whoever supplies it (`--endpoint`, `OS_IMAGE_URL`, the
/// plugin's `endpoint`): no user information (`user:password@`). Glance authenticates
/// with Keystone tokens (`X-Auth-Token`), never with HTTP basic auth, so a password in
/// the URL has no use here — and a URL is what every message, log line, `--json`
/// summary and `ps` listing shows. Refused, with the password left out of the message.
pub fn check_endpoint(endpoint: &str) -> Result<(), String> {
    if redact(endpoint) != endpoint {
        return Err(format!(
            "endpoint {:?}: a user name or password in the URL is not accepted (Glance takes a Keystone token: --token or OS_AUTH_TOKEN)",
            crate::error::cap(&redact(endpoint))
        ));
    }
    Ok(())
}

/// Whether a transport error is a TLS certificate that failed verification (unknown
/// issuer, wrong name, expired…): permanent, not a network hiccup.
fn is_certificate_error(e: &ureq::Error) -> bool {
    let tls = match e {
        ureq::Error::Rustls(t) => Some(t),
        ureq::Error::Io(io) => io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()),
        _ => None,
    };
    matches!(
        tls,
        Some(rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented)
    )
}

/// The one rule for an image property name (`--property`, the plugin's `properties`):
/// Glance v1 sends properties as `x-image-meta-property-<name>` headers.
pub fn check_property_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.:".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!("{name:?} is not a property name"))
    }
}

/// Add the Keystone token as `X-Auth-Token`, unless the caller's headers already carry
/// one (an explicit header wins, as in the old plugins).
pub fn merge_token(headers: &mut Vec<(String, String)>, token: Option<&str>) {
    let Some(t) = token.filter(|t| !t.is_empty()) else {
        return;
    };
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("x-auth-token"))
    {
        headers.push(("X-Auth-Token".into(), t.to_string()));
    }
}

/// The start of an error body, for a one-line message: the text of an HTML page
/// (Glance's errors are `<title>404 Not Found</title>…<h1>404 Not Found</h1> No image
/// found…`) without its tags and repeated headings, whitespace collapsed.
fn summarize_body(body: &str) -> String {
    if !body.trim_start().starts_with('<') {
        return body.split_whitespace().collect::<Vec<_>>().join(" ");
    }
    let mut parts: Vec<String> = Vec::new();
    let mut text = String::new();
    let mut in_tag = false;
    let flush = |text: &mut String, parts: &mut Vec<String>| {
        let t = text.split_whitespace().collect::<Vec<_>>().join(" ");
        if !t.is_empty() && parts.last() != Some(&t) {
            parts.push(t);
        }
        text.clear();
    };
    for c in body.chars() {
        match c {
            '<' => {
                in_tag = true;
                flush(&mut text, &mut parts);
            }
            '>' if in_tag => in_tag = false,
            _ if !in_tag => text.push(c),
            _ => {}
        }
    }
    flush(&mut text, &mut parts);
    parts.join(": ")
}

/// Where an image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    File(PathBuf),
    Stdin,
}

impl Location {
    pub fn parse(endpoint: &str) -> Result<Location, StoreError> {
        if endpoint == "-" {
            return Ok(Location::Stdin);
        }
        match endpoint.strip_prefix("file://") {
            Some(p) if p.starts_with('/') => Ok(Location::File(PathBuf::from(p))),
            _ => Err(StoreError::Unsupported(redact(endpoint))),
        }
    }

    /// Open the image body for reading, with its size when it is a file (a progress
    /// total, and the byte count the read must reach).
    pub fn open(&self) -> Result<(Box<dyn Read + Send>, Option<u64>), StoreError> {
        match self {
            Location::Stdin => Ok((Box::new(io::stdin()), None)),
            Location::File(p) => {
                let err = |source| StoreError::Open {
                    path: p.clone(),
                    source,
                };
                let f = File::open(p).map_err(err)?;
                let size = f.metadata().map_err(err)?.len();
                Ok((Box::new(f), Some(size)))
            }
        }
    }
}

/// What the store says the image body hashes to (lowercase hex), when it says; and
/// what it calls the image.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Expected {
    pub md5: Option<String>,
    pub sha512: Option<String>,
    pub size: Option<u64>,
    /// The image's name as the store gives it (Glance v2's `name`, v1's
    /// `x-image-meta-name`; a local file's file name), unchecked: a label for people, never
    /// part of the verification. Whoever shows it must treat it as untrusted text.
    pub name: Option<String>,
}

impl Expected {
    /// Compare with what was received; the first difference is the error.
    pub fn verify(&self, got: &Digests) -> Result<(), StoreError> {
        if let Some(w) = &self.md5 {
            if *w != got.md5 {
                return Err(StoreError::Checksum {
                    expected: format!("MD5 {w}"),
                    actual: got.md5.clone(),
                });
            }
        }
        if let Some(w) = &self.sha512 {
            // A declared SHA-512 is always hashed ([`Source::hashes_sha512`]); one that
            // was not is never taken as a match.
            let Some(have) = &got.sha512 else {
                return Err(StoreError::Protocol(
                    "the store declares a SHA-512 that was not computed".into(),
                ));
            };
            if w != have {
                return Err(StoreError::Checksum {
                    expected: format!("SHA-512 {w}"),
                    actual: have.clone(),
                });
            }
        }
        if let Some(n) = self.size {
            if n != got.bytes {
                return Err(StoreError::Checksum {
                    expected: format!("{n} bytes"),
                    actual: format!("{} bytes", got.bytes),
                });
            }
        }
        Ok(())
    }
}

/// An image to download: a local file or stdin, or an image in Glance.
pub enum Source {
    Local(Location),
    Glance(glance::Glance, String),
}

impl Source {
    /// Whether a download from here hashes SHA-512 besides MD5: only where the result is
    /// compared — a record that declares `os_hash_algo` sha512 — or shown — a local
    /// store declares nothing, and the summary's digests are the only ones its user
    /// gets. SHA-512 costs more CPU per byte than MD5 (in dom0, where every core serves
    /// the guests' backends), and a Glance v1 record, or a v2 one with another
    /// algorithm, has nothing to compare it with. MD5 is always hashed: every Glance
    /// declares it.
    pub fn hashes_sha512(&self, expected: &Expected) -> bool {
        matches!(self, Source::Local(_)) || expected.sha512.is_some()
    }

    /// Open the body, with the checksums the store declares. With a `resume` budget, a
    /// Glance v2 body that breaks resumes in place while the budget lasts.
    pub fn open(
        &self,
        resume: Option<std::sync::Arc<crate::retry::Budget>>,
    ) -> Result<(Box<dyn Read + Send>, Expected), StoreError> {
        match self {
            Source::Local(l) => {
                let (body, size) = l.open()?;
                let name = match l {
                    Location::File(p) => p.file_name().map(|n| n.to_string_lossy().into_owned()),
                    Location::Stdin => None,
                };
                Ok((
                    body,
                    Expected {
                        size,
                        name,
                        ..Expected::default()
                    },
                ))
            }
            Source::Glance(g, id) => {
                let (body, expected, record) = g.open_image(id)?;
                let body: Box<dyn Read + Send> = match (resume, record) {
                    (Some(budget), Some(rec)) => {
                        resume::Resuming::wrap(g.clone(), id, rec, budget, body)
                    }
                    // v1 has no ranges to ask for: a break starts over, as it always did.
                    _ => Box::new(body),
                };
                Ok((body, expected))
            }
        }
    }
}

/// Where an upload goes.
// One per job, never in a collection: boxing the Glance client would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum Target {
    /// `file:///path/image.tgz` (temp name, fsync, rename) or `-` (stdout).
    Local(Location),
    Glance {
        glance: glance::Glance,
        image_id: String,
        properties: Vec<(String, String)>,
    },
}

impl Target {
    /// Checks before any data flows: the image exists and is `queued`; formats and
    /// properties are set (v2).
    pub fn prepare(&self) -> Result<(), StoreError> {
        match self {
            Target::Local(_) => Ok(()),
            Target::Glance {
                glance,
                image_id,
                properties,
            } => glance.prepare_upload(image_id, properties),
        }
    }

    /// Send the whole body; `Ok` only if the store accepted a complete image.
    pub fn send(&self, body: &mut dyn Read) -> Result<Option<glance::Record>, StoreError> {
        match self {
            Target::Local(Location::Stdin) => {
                let mut out = io::stdout().lock();
                copy_large(body, &mut out).map_err(|source| StoreError::Write {
                    path: "<stdout>".into(),
                    source,
                })?;
                io::Write::flush(&mut out).map_err(|source| StoreError::Write {
                    path: "<stdout>".into(),
                    source,
                })?;
                Ok(None)
            }
            Target::Local(Location::File(path)) => {
                write_atomically(path, body)?;
                Ok(None)
            }
            Target::Glance {
                glance,
                image_id,
                properties,
            } => glance.put_data(image_id, properties, body),
        }
    }

    /// Whether an upload to here hashes SHA-512 besides MD5: only for a local target,
    /// whose summary digests are all its user gets. Glance computes its own
    /// `os_hash_value` as the data arrives; MD5 and the size, compared with the record
    /// afterwards, already show it holds exactly the bytes sent, and SHA-512 over the
    /// gzipped stream cost about as much CPU again as MD5 (in dom0, where every core
    /// serves the guests' backends).
    pub fn hashes_sha512(&self) -> bool {
        matches!(self, Target::Local(_))
    }

    /// Is the image already active with exactly `sent` (an earlier attempt whose answer
    /// was lost)? Only then may a retry call the upload done.
    pub fn completed_by(&self, sent: &Digests) -> bool {
        matches!(self, Target::Glance { .. }) && self.verify(sent, None).is_ok()
    }

    /// After the upload: the store's record must match what we sent.
    pub fn verify(
        &self,
        sent: &Digests,
        v1_answer: Option<glance::Record>,
    ) -> Result<(), StoreError> {
        let Target::Glance {
            glance, image_id, ..
        } = self
        else {
            return Ok(());
        };
        let rec = match v1_answer {
            Some(r) => r,
            None => glance.record(image_id)?,
        };
        if !rec.status.is_empty() && rec.status != "active" {
            return Err(StoreError::Protocol(format!(
                "image {image_id} is {:?} after the upload, not \"active\"",
                rec.status
            )));
        }
        let expected = Expected {
            md5: rec.checksum,
            // Compared when we hashed it too ([`Target::hashes_sha512`]: not for Glance);
            // MD5 and the size are always compared.
            sha512: rec
                .os_hash_value
                .filter(|_| rec.os_hash_algo.as_deref() == Some("sha512"))
                .filter(|_| sent.sha512.is_some()),
            size: rec.size,
            name: None,
        };
        if expected.md5.is_none() {
            return Err(StoreError::Protocol(format!(
                "image {image_id}: the store reports no checksum to verify the upload against"
            )));
        }
        expected.verify(sent)
    }
}

/// `io::copy` with 1 MiB writes instead of 8 KiB ones.
fn copy_large(from: &mut dyn Read, to: &mut dyn io::Write) -> io::Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
        total += n as u64;
    }
}

/// Write `body` to `path` atomically ([`crate::fsutil::write_atomically`]: a temporary
/// name beside it, fsync, rename, fsync the directory): a reader of `path` sees the old
/// file or the whole new one. Mode 0600: the file is a whole VM disk, for root's eyes
/// only (an admin who wants to share it can chmod it; one who did not want to cannot
/// take back what another user already read).
fn write_atomically(path: &std::path::Path, body: &mut dyn Read) -> Result<(), StoreError> {
    crate::fsutil::write_atomically::<io::Error>(path, 0o600, |f| copy_large(body, f).map(drop))
        .map_err(|source| StoreError::Write {
            path: path.to_path_buf(),
            source,
        })
}

/// MD5 (Glance `checksum`) and, when asked, SHA-512 (`os_hash_value`) of what passes
/// through, and the byte count: a pass-through `Read` wrapper.
pub struct HashingReader<R> {
    inner: R,
    md5: Md5,
    sha512: Option<Sha512>,
    bytes: u64,
    eof: bool,
}

/// The digests of a finished stream, lowercase hex. `sha512` is `None` when it was not
/// computed ([`Source::hashes_sha512`], [`Target::hashes_sha512`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Digests {
    pub md5: String,
    pub sha512: Option<String>,
    pub bytes: u64,
}

impl<R: Read> HashingReader<R> {
    /// Hash MD5, and SHA-512 too when `sha512`.
    pub fn new(inner: R, sha512: bool) -> Self {
        HashingReader {
            inner,
            md5: Md5::new(),
            sha512: sha512.then(Sha512::new),
            bytes: 0,
            eof: false,
        }
    }

    /// The inner reader said end of stream: every byte went through.
    pub fn at_eof(&self) -> bool {
        self.eof
    }

    /// The digests of everything read so far.
    pub fn digests(&self) -> Digests {
        Digests {
            md5: hex(&self.md5.clone().finalize()),
            sha512: self.sha512.as_ref().map(|h| hex(&h.clone().finalize())),
            bytes: self.bytes,
        }
    }

    pub fn finish(self) -> Digests {
        self.digests()
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.eof |= n == 0 && !buf.is_empty();
        self.md5.update(&buf[..n]);
        if let Some(h) = &mut self.sha512 {
            h.update(&buf[..n]);
        }
        self.bytes += n as u64;
        Ok(n)
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_known_values() {
        let mut r = HashingReader::new(&b"abc"[..], true);
        io::copy(&mut r, &mut io::sink()).unwrap();
        let d = r.finish();
        assert_eq!(d.md5, "900150983cd24fb0d6963f7d28e17f72");
        assert!(d.sha512.unwrap().starts_with("ddaf35a193617aba"));
        assert_eq!(d.bytes, 3);
        let mut r = HashingReader::new(&b"abc"[..], false);
        io::copy(&mut r, &mut io::sink()).unwrap();
        let d = r.finish();
        assert_eq!(d.md5, "900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(d.sha512, None);
    }

    #[test]
    fn a_declared_sha512_never_matches_one_not_computed() {
        let got = HashingReader::new(&b"abc"[..], false).finish();
        let want = Expected {
            md5: Some(got.md5.clone()),
            sha512: Some("ddaf35a1".into()),
            ..Expected::default()
        };
        assert!(want.verify(&got).is_err());
        let want = Expected {
            sha512: None,
            ..want
        };
        assert!(want.verify(&got).is_ok());
    }

    #[test]
    fn error_pages_read_as_one_line() {
        let page = "<html>\n <head>\n  <title>404 Not Found</title>\n </head>\n <body>\n  \
                    <h1>404 Not Found</h1>\n  No image found with ID x<br /><br />\n\n </body>\n</html>";
        assert_eq!(
            summarize_body(page),
            "404 Not Found: No image found with ID x"
        );
        assert_eq!(summarize_body(" plain  text\n"), "plain text");
        assert_eq!(
            summarize_body(r#"{"error": "a < b"}"#),
            r#"{"error": "a < b"}"#
        );
    }

    #[test]
    fn locations() {
        assert_eq!(Location::parse("-").unwrap(), Location::Stdin);
        assert_eq!(
            Location::parse("file:///x/y.tgz").unwrap(),
            Location::File("/x/y.tgz".into())
        );
        assert!(Location::parse("file://relative").is_err());
        assert!(Location::parse("http://glance:9292").is_err());
    }
}
