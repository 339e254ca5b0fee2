//! Glance over HTTP(S) (DESIGN §3): v2 (`/v2/images/{id}`, `/v2/images/{id}/file`),
//! v1 (`/v1/images/{id}`) and Diablo's v1 without the version prefix (`/images/{id}`).
//!
//! Blocking `ureq` with rustls. Certificates are verified against the system bundle
//! (plus `--cacert`); `--insecure` is explicit. Every request carries the caller's extra
//! headers (`X-Auth-Token`, …). Timeouts: connect, idle (per read and per write),
//! optional deadline.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ureq::tls::{Certificate, RootCerts, TlsConfig};

use super::keystone::Session;
use super::{Expected, StoreError};

/// Which Glance API to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    V1,
    /// Diablo: v1 semantics at `/images/{id}`.
    V1Diablo,
    /// The original plugin's store (Bexar): `/images/{id}` as [`Api::V1Diablo`], and an
    /// upload with the headers it sent — `x-image-meta-is_public: True`,
    /// `x-image-meta-status: queued`, `x-image-meta-type: vhd` — and none of ours
    /// (properties only if the call gave some).
    V1Seed,
    V2,
}

/// How to reach the store.
#[derive(Debug, Clone)]
pub struct GlanceConfig {
    /// `http(s)://host:port[/prefix]`, with or without a trailing slash.
    pub endpoint: String,
    pub api: Api,
    pub headers: Vec<(String, String)>,
    pub cacert: Option<PathBuf>,
    pub insecure: bool,
    pub connect_timeout: Duration,
    /// No byte for this long on an open connection: give up.
    pub idle_timeout: Duration,
    /// The whole transfer must finish within this, if set.
    pub deadline: Option<Duration>,
    /// A Keystone session: every request carries its current token as `X-Auth-Token`,
    /// renewed when it nears its expiry, and once more after a 401.
    pub auth: Option<Arc<Session>>,
}

/// How long to wait for a connection, by default (`--connect-timeout`).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a transfer may go without a byte, by default (`--idle-timeout`).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

impl GlanceConfig {
    pub fn new(endpoint: &str, api: Api) -> GlanceConfig {
        GlanceConfig {
            endpoint: endpoint.to_string(),
            api,
            headers: Vec::new(),
            cacert: None,
            insecure: false,
            connect_timeout: CONNECT_TIMEOUT,
            idle_timeout: IDLE_TIMEOUT,
            deadline: None,
            auth: None,
        }
    }
}

/// CA bundles of the distributions dom0 runs on (CentOS/XenServer first).
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/ssl/ca-bundle.pem",
];

/// A client: cheap to clone (the agent's connection pool and the session are shared), so
/// a resuming body can own one.
#[derive(Clone)]
pub struct Glance {
    agent: ureq::Agent,
    cfg: GlanceConfig,
}

impl Glance {
    pub fn new(cfg: GlanceConfig) -> Result<Glance, StoreError> {
        if !(cfg.endpoint.starts_with("http://") || cfg.endpoint.starts_with("https://")) {
            return Err(StoreError::Unsupported(super::redact(&cfg.endpoint)));
        }
        super::check_endpoint(&cfg.endpoint).map_err(StoreError::Config)?;
        for (k, v) in &cfg.headers {
            super::check_header(k, v).map_err(StoreError::Config)?;
        }
        if cfg.auth.is_some()
            && cfg
                .headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("x-auth-token"))
        {
            return Err(StoreError::Config(
                "an X-Auth-Token header and a Keystone sign-in are both given: use one".into(),
            ));
        }
        let agent = agent(&cfg)?;
        Ok(Glance { agent, cfg })
    }

    /// Send a request that can be sent again (no streamed body) with the session's token:
    /// after a 401, once more with a new token. Without a session, as it is.
    fn authed(
        &self,
        method: &str,
        url: &str,
        send: impl Fn(Option<&str>) -> Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<ureq::http::Response<ureq::Body>, StoreError> {
        let Some(auth) = &self.cfg.auth else {
            return super::traced(method, url, send(None));
        };
        let token = auth.token()?;
        let resp = super::traced(method, url, send(Some(token.expose())))?;
        if resp.status().as_u16() != 401 {
            return Ok(resp);
        }
        // Refused before its time (revoked, or the clocks disagree): one new token. A
        // second 401 is the store's final word.
        crate::log::trace(&format!(
            "{}: HTTP 401: signing in again",
            super::redact(url)
        ));
        let token = auth.renew()?;
        super::traced(method, url, send(Some(token.expose())))
    }

    /// How long a body may go without a byte (for the message when it fires).
    pub(super) fn idle_timeout(&self) -> Duration {
        self.cfg.idle_timeout
    }

    /// `endpoint` + `path`, without `//` whatever the endpoint's trailing slash.
    pub fn url(&self, path: &str) -> String {
        join_url(&self.cfg.endpoint, path)
    }

    fn image_path(&self, id: &str) -> String {
        match self.cfg.api {
            Api::V1 => format!("v1/images/{id}"),
            Api::V1Diablo | Api::V1Seed => format!("images/{id}"),
            Api::V2 => format!("v2/images/{id}"),
        }
    }

    fn get(&self, url: &str) -> Result<ureq::http::Response<ureq::Body>, StoreError> {
        self.get_from(url, None)
    }

    /// `GET url`, from byte `from` on (`Range: bytes=N-`) if given: the same
    /// authenticated path as every request (the session's token, renewed after a 401).
    pub(super) fn get_from(
        &self,
        url: &str,
        from: Option<u64>,
    ) -> Result<ureq::http::Response<ureq::Body>, StoreError> {
        let range = from.map(|n| format!("bytes={n}-"));
        self.authed("GET", url, |token| {
            let mut req = self.agent.get(url);
            for (k, v) in self.headers(token) {
                req = req.header(k, v);
            }
            if let Some(r) = &range {
                req = req.header("Range", r.as_str());
            }
            req.call()
        })
    }

    /// The caller's headers, and the session's token.
    fn headers<'a>(&'a self, token: Option<&'a str>) -> impl Iterator<Item = (&'a str, &'a str)> {
        self.cfg
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .chain(token.map(|t| ("X-Auth-Token", t)))
    }

    /// Open the image body for download, with what the store says it should hash to
    /// and, for v2, the image record the body belongs to (what a resume must find again:
    /// `store::resume`).
    pub(super) fn open_image(
        &self,
        image_id: &str,
    ) -> Result<(NetBody, Expected, Option<Record>), StoreError> {
        check_id(image_id)?;
        let mut expected = Expected::default();
        let mut pinned = None;
        let url = match self.cfg.api {
            Api::V2 => {
                let meta_url = self.url(&self.image_path(image_id));
                let resp = self.get(&meta_url)?;
                let status = resp.status().as_u16();
                if status != 200 {
                    return Err(StoreError::http(&meta_url, status, resp));
                }
                let json = Glance::json_of(&meta_url, resp)?;
                let rec = Record::from_json(&json);
                expected.md5 = rec.checksum.clone();
                expected.sha512 = rec
                    .os_hash_value
                    .clone()
                    .filter(|_| rec.os_hash_algo.as_deref() == Some("sha512"));
                expected.size = rec.size;
                expected.name = json["name"].as_str().map(str::to_string);
                pinned = Some(rec);
                self.url(&format!("{}/file", self.image_path(image_id)))
            }
            Api::V1 | Api::V1Diablo | Api::V1Seed => self.url(&self.image_path(image_id)),
        };
        let resp = self.get(&url)?;
        let status = resp.status().as_u16();
        match status {
            200 => {}
            204 => return Err(StoreError::NoData(image_id.to_string())),
            _ => return Err(StoreError::http(&url, status, resp)),
        }
        let h = resp.headers();
        let header = |name: &str| {
            h.get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        // v1 declares the checksum in headers; Glance v2 sends Content-MD5 too.
        let declared = header("x-image-meta-checksum")
            .or_else(|| header("content-md5"))
            .or_else(|| header("etag").map(|e| e.trim_matches('"').to_string()))
            .map(|s| s.to_lowercase())
            .filter(|s| s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit()));
        match (&expected.md5, declared) {
            (Some(a), Some(b)) if *a != b => {
                return Err(StoreError::Protocol(format!(
                    "{url}: the image record says checksum {a}, the response header {b}"
                )))
            }
            (None, Some(b)) => expected.md5 = Some(b),
            _ => {}
        }
        if expected.size.is_none() {
            expected.size = header("x-image-meta-size").and_then(|s| s.parse().ok());
        }
        if expected.name.is_none() {
            expected.name = header("x-image-meta-name");
        }
        let length = header("content-length").and_then(|s| s.parse().ok());
        let want = expected.size.or(length);
        Ok((
            NetBody::new(resp, url, 0, want, self.cfg.idle_timeout),
            expected,
            pinned,
        ))
    }
}

/// An image body off the network. Every read error is the network's — a cut, a reset, a
/// timeout — so it classifies as retryable rather than as "a broken image" when the
/// inflater reports it; and a body that ends before the size the store declared is such
/// an error too, never a short image that happens to inflate.
pub(super) struct NetBody<R = ureq::BodyReader<'static>> {
    inner: R,
    pub(super) url: String,
    /// Bytes of the image passed on, counted from its first byte (a resumed body starts
    /// at its range's first byte).
    pub(super) got: u64,
    want: Option<u64>,
    /// The idle limit, for the message when it fires.
    idle: Duration,
}

impl NetBody {
    /// The body of `resp`, the bytes from `got` on of an image of `want` bytes.
    pub(super) fn new(
        resp: ureq::http::Response<ureq::Body>,
        url: String,
        got: u64,
        want: Option<u64>,
        idle: Duration,
    ) -> NetBody {
        NetBody {
            inner: resp.into_body().into_reader(),
            url,
            got,
            want,
            idle,
        }
    }
}

impl<R: Read> Read for NetBody<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::io::{Error, ErrorKind};
        match self.inner.read(buf) {
            Ok(0) => match self.want {
                Some(w) if self.got < w => Err(Error::new(
                    ErrorKind::ConnectionAborted,
                    format!(
                        "{}: the connection ended after {} of {w} bytes",
                        self.url, self.got
                    ),
                )),
                _ => Ok(0),
            },
            Ok(n) => {
                self.got += n as u64;
                Ok(n)
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => Err(e),
            // ureq's timeouts come as "other" errors wrapping its own: say which limit
            // ended the transfer, in words an admin can match to the setting.
            Err(e) if timeout_of(&e).is_some() => {
                let what = match timeout_of(&e) {
                    Some(ureq::Timeout::PerRead) => {
                        format!(
                            "no data for {} s (the idle timeout)",
                            self.idle.as_secs_f64()
                        )
                    }
                    Some(ureq::Timeout::Global) => "the deadline passed".to_string(),
                    _ => e.to_string(),
                };
                Err(Error::new(
                    ErrorKind::TimedOut,
                    format!("{} after {} bytes: {what}", self.url, self.got),
                ))
            }
            Err(e) => {
                let kind = match e.kind() {
                    k @ (ErrorKind::TimedOut
                    | ErrorKind::ConnectionReset
                    | ErrorKind::ConnectionAborted) => k,
                    _ => ErrorKind::ConnectionAborted,
                };
                Err(Error::new(
                    kind,
                    format!("{} after {} bytes: {e}", self.url, self.got),
                ))
            }
        }
    }
}

/// The ureq timeout inside an I/O error from a body, if that is what it is.
fn timeout_of(e: &std::io::Error) -> Option<ureq::Timeout> {
    match e.get_ref()?.downcast_ref::<ureq::Error>()? {
        ureq::Error::Timeout(t) => Some(*t),
        _ => None,
    }
}

/// What Glance says about an image (the fields an upload checks).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Record {
    pub id: String,
    pub status: String,
    pub checksum: Option<String>,
    pub os_hash_algo: Option<String>,
    pub os_hash_value: Option<String>,
    pub size: Option<u64>,
}

impl Record {
    fn from_json(v: &serde_json::Value) -> Record {
        let s = |k: &str| v[k].as_str().map(str::to_string);
        Record {
            id: s("id").unwrap_or_default(),
            status: s("status").unwrap_or_default(),
            checksum: s("checksum").map(|c| c.to_lowercase()),
            os_hash_algo: s("os_hash_algo"),
            os_hash_value: s("os_hash_value").map(|c| c.to_lowercase()),
            size: v["size"].as_u64(),
        }
    }
}

const JSON_PATCH: &str = "application/openstack-images-v2.1-json-patch";

/// How long an image may stay `saving` before an upload gives up on it, and how often
/// it is looked at meanwhile. Glance puts an image back to `queued` only once it has
/// noticed that the body it was receiving broke, which may come after our retry asks
/// (it did, 0.1 s after a cut, in `cli::retries`); an upload by another client ends
/// `active` or `queued` too.
const SAVING_WAIT: Duration = Duration::from_secs(30);
const SAVING_POLL: Duration = Duration::from_millis(250);

impl Glance {
    fn request(
        &self,
        method: &str,
        url: &str,
        token: Option<&str>,
    ) -> ureq::RequestBuilder<ureq::typestate::WithBody> {
        let mut req = match method {
            "PUT" => self.agent.put(url),
            "PATCH" => self.agent.patch(url),
            _ => self.agent.post(url),
        };
        for (k, v) in self.headers(token) {
            req = req.header(k, v);
        }
        req
    }

    fn json_of(
        url: &str,
        resp: ureq::http::Response<ureq::Body>,
    ) -> Result<serde_json::Value, StoreError> {
        let body = resp
            .into_body()
            .with_config()
            .limit(1 << 20)
            .read_to_string()
            .map_err(|e| StoreError::transport(url, e))?;
        serde_json::from_str(&body)
            .map_err(|e| StoreError::Protocol(format!("{url}: answer is not JSON: {e}")))
    }

    /// The v2 record once it is not `saving` (at most [`SAVING_WAIT`]; then as it is).
    fn settled_record(&self, image_id: &str) -> Result<Record, StoreError> {
        let until = std::time::Instant::now() + SAVING_WAIT;
        let mut said = false;
        loop {
            let rec = self.record(image_id)?;
            if rec.status != "saving" || std::time::Instant::now() >= until {
                return Ok(rec);
            }
            if !said {
                crate::log::step(&format!(
                    "image {image_id} is saving (an upload being undone or finished); waiting up to {} s",
                    SAVING_WAIT.as_secs()
                ));
                said = true;
            }
            std::thread::sleep(SAVING_POLL);
        }
    }

    /// The v2 image record (`GET /v2/images/{id}`). A refusal is classed as an upload's
    /// (the record is read before and after one); a download's reader reclasses it.
    pub fn record(&self, image_id: &str) -> Result<Record, StoreError> {
        check_id(image_id)?;
        let url = self.url(&format!("v2/images/{image_id}"));
        let resp = self.get(&url)?;
        let status = resp.status().as_u16();
        if status != 200 {
            return Err(StoreError::http_upload(&url, status, resp));
        }
        Ok(Record::from_json(&Glance::json_of(&url, resp)?))
    }

    /// `POST /v2/images`: a new, queued image record for a VHD tarball; its id.
    pub fn create(
        &self,
        name: &str,
        properties: &[(String, String)],
    ) -> Result<String, StoreError> {
        let url = self.url("v2/images");
        let mut body = serde_json::Map::new();
        body.insert("name".into(), name.into());
        body.insert("disk_format".into(), "vhd".into());
        body.insert("container_format".into(), "ovf".into());
        for (k, v) in properties {
            body.entry(k.clone()).or_insert_with(|| v.clone().into());
        }
        let body = serde_json::Value::Object(body).to_string();
        let resp = self.authed("POST", &url, |token| {
            self.request("POST", &url, token)
                .header("Content-Type", "application/json")
                .send(&body)
        })?;
        let status = resp.status().as_u16();
        if status != 201 {
            return Err(StoreError::http_upload(&url, status, resp));
        }
        let rec = Record::from_json(&Glance::json_of(&url, resp)?);
        check_id(&rec.id)?;
        Ok(rec.id)
    }

    /// Before any data: set the formats and properties (v2 PATCH), and make sure the
    /// image is `queued` — an active image must never be overwritten or half-written.
    pub fn prepare_upload(
        &self,
        image_id: &str,
        properties: &[(String, String)],
    ) -> Result<(), StoreError> {
        check_id(image_id)?;
        match self.cfg.api {
            Api::V2 => {
                // Status first: Glance refuses to PATCH formats of a non-queued image with
                // a bare 403, and "image is active" is the message an admin needs.
                let rec = self.settled_record(image_id)?;
                if rec.status != "queued" {
                    return Err(StoreError::NotQueued {
                        id: image_id.to_string(),
                        status: rec.status,
                    });
                }
                let url = self.url(&format!("v2/images/{image_id}"));
                let mut ops = vec![
                    serde_json::json!({"op": "replace", "path": "/disk_format", "value": "vhd"}),
                    serde_json::json!({"op": "replace", "path": "/container_format", "value": "ovf"}),
                ];
                for (k, v) in properties {
                    ops.push(serde_json::json!({"op": "add", "path": format!("/{}", json_pointer_escape(k)), "value": v}));
                }
                let body = serde_json::Value::Array(ops).to_string();
                let resp = self.authed("PATCH", &url, |token| {
                    self.request("PATCH", &url, token)
                        .header("Content-Type", JSON_PATCH)
                        .send(&body)
                })?;
                let status = resp.status().as_u16();
                if status != 200 {
                    return Err(StoreError::http_upload(&url, status, resp));
                }
                Ok(())
            }
            Api::V1 | Api::V1Diablo | Api::V1Seed => {
                let url = self.url(&self.image_path(image_id));
                let resp = self.authed("HEAD", &url, |token| {
                    let mut req = self.agent.head(&url);
                    for (k, v) in self.headers(token) {
                        req = req.header(k, v);
                    }
                    req.call()
                })?;
                let status = resp.status().as_u16();
                if status != 200 {
                    return Err(StoreError::http_upload(&url, status, resp));
                }
                let st = resp
                    .headers()
                    .get("x-image-meta-status")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                if st != "queued" {
                    return Err(StoreError::NotQueued {
                        id: image_id.to_string(),
                        status: st,
                    });
                }
                Ok(())
            }
        }
    }

    /// Stream `body` as the image data with chunked transfer encoding. If `body` fails,
    /// ureq stops without the terminating chunk, so Glance sees a broken upload and
    /// never a short "complete" image.
    pub fn put_data(
        &self,
        image_id: &str,
        properties: &[(String, String)],
        body: &mut dyn Read,
    ) -> Result<Option<Record>, StoreError> {
        check_id(image_id)?;
        let (url, ok) = match self.cfg.api {
            Api::V2 => (self.url(&format!("v2/images/{image_id}/file")), 204),
            Api::V1 | Api::V1Diablo | Api::V1Seed => (self.url(&self.image_path(image_id)), 200),
        };
        // The body streams and cannot be sent twice: the token is made fresh first
        // (Glance checks it when the request starts, so it may expire during the upload).
        let token = match &self.cfg.auth {
            Some(auth) => Some(auth.token()?),
            None => None,
        };
        let mut req = self
            .request("PUT", &url, token.as_ref().map(|t| t.expose()))
            // No length: ureq sends it chunked.
            .header("Content-Type", "application/octet-stream");
        if self.cfg.api == Api::V1Seed {
            // What the original `_upload_tarball` put, as it put it.
            req = req
                .header("x-image-meta-is_public", "True")
                .header("x-image-meta-status", "queued")
                .header("x-image-meta-type", "vhd");
            for (k, v) in properties {
                req = req.header(format!("x-image-meta-property-{k}").as_str(), v.as_str());
            }
        } else if self.cfg.api != Api::V2 {
            req = req
                .header("x-image-meta-disk-format", "vhd")
                .header("x-image-meta-container-format", "ovf")
                .header("x-image-meta-is-public", "False")
                .header("x-image-meta-status", "queued")
                .header("x-glance-registry-purge-props", "False");
            for (k, v) in properties {
                req = req.header(format!("x-image-meta-property-{k}").as_str(), v.as_str());
            }
        }
        let resp = super::traced("PUT", &url, req.send(ureq::SendBody::from_reader(body)))?;
        let status = resp.status().as_u16();
        if status == 401 && self.cfg.auth.is_some() {
            // A fresh token refused: the next attempt signs in again (a wrong password
            // fails that sign-in for good).
            return Err(StoreError::TokenRefused(url));
        }
        if status != ok {
            return Err(StoreError::http_upload(&url, status, resp));
        }
        if self.cfg.api == Api::V2 {
            return Ok(None);
        }
        // v1 answers with the image's metadata.
        let v = Glance::json_of(&url, resp)?;
        Ok(Some(Record::from_json(&v["image"])))
    }
}

/// RFC 6901: `~` → `~0`, `/` → `~1`.
fn json_pointer_escape(k: &str) -> String {
    k.replace('~', "~0").replace('/', "~1")
}

/// Image ids go into URL paths: refuse anything that could change the path.
fn check_id(id: &str) -> Result<(), StoreError> {
    let ok = !id.is_empty()
        && id.len() <= 255
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && id != "."
        && id != "..";
    if ok {
        Ok(())
    } else {
        Err(StoreError::Protocol(format!(
            "image id {id:?} is not a valid id"
        )))
    }
}

pub fn join_url(endpoint: &str, path: &str) -> String {
    format!(
        "{}/{}",
        endpoint.trim_end_matches('/'),
        path.trim_start_matches('/')
    )
}

/// The HTTP client for `cfg`: TLS roots, timeouts, no redirects (a redirect could carry
/// the token elsewhere), statuses as answers. Keystone's sign-in uses the same.
pub(super) fn agent(cfg: &GlanceConfig) -> Result<ureq::Agent, StoreError> {
    let tls = tls_config(cfg)?;
    Ok(ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .tls_config(tls)
        .timeout_connect(Some(cfg.connect_timeout))
        .timeout_per_read(Some(cfg.idle_timeout))
        // An upload into a server that stopped reading stalls in write(2): the same
        // idle limit applies.
        .timeout_per_write(Some(cfg.idle_timeout))
        .timeout_global(cfg.deadline)
        .user_agent(concat!("glance-vhd/", env!("CARGO_PKG_VERSION")))
        .build()
        .new_agent())
}

fn tls_config(cfg: &GlanceConfig) -> Result<TlsConfig, StoreError> {
    if cfg.insecure {
        return Ok(TlsConfig::builder().disable_verification(true).build());
    }
    let mut certs: Vec<Certificate<'static>> = Vec::new();
    // The system bundle: its first file that exists, best effort (a dom0 without one
    // still works with --cacert).
    if let Some(bundle) = SYSTEM_BUNDLES.iter().map(Path::new).find(|p| p.exists()) {
        if let Ok(pem) = std::fs::read(bundle) {
            certs.extend(ureq::tls::parse_pem(&pem).filter_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                _ => None,
            }));
        }
    }
    if let Some(ca) = &cfg.cacert {
        certs.extend(load_cacert(ca).map_err(StoreError::Config)?);
    }
    let roots = if certs.is_empty() {
        RootCerts::WebPki
    } else {
        RootCerts::new_with_certs(&certs)
    };
    Ok(TlsConfig::builder().root_certs(roots).build())
}

/// The certificates of a CA file (`--cacert`, `OS_CACERT`): PEM, at least one
/// certificate, and no private key — a key in a file meant to be shared says the wrong
/// file was given. The error names the file and what is wrong, never its content.
pub fn load_cacert(path: &Path) -> Result<Vec<Certificate<'static>>, String> {
    let pem = std::fs::read(path)
        .map_err(|e| format!("--cacert {}: cannot read the CA file: {e}", path.display()))?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => certs.push(c),
            Ok(ureq::tls::PemItem::PrivateKey(_)) => {
                return Err(format!(
                    "--cacert {}: the file holds a private key; give the CA's certificate only",
                    path.display()
                ))
            }
            Ok(_) => {}
            Err(_) => {
                return Err(format!(
                    "--cacert {}: not a PEM file (expected -----BEGIN CERTIFICATE-----)",
                    path.display()
                ))
            }
        }
    }
    if certs.is_empty() {
        return Err(format!(
            "--cacert {}: no PEM certificate in the CA file",
            path.display()
        ));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_join_without_double_slashes() {
        assert_eq!(
            join_url("http://g:9292/", "v2/images/x"),
            "http://g:9292/v2/images/x"
        );
        assert_eq!(
            join_url("http://g:9292", "/v2/images/x"),
            "http://g:9292/v2/images/x"
        );
        assert_eq!(
            join_url("https://cloud/image/", "v1/images/x"),
            "https://cloud/image/v1/images/x"
        );
    }

    #[test]
    fn ids_cannot_escape_the_path() {
        assert!(check_id("6a0a2c5f-7b5e-4d36-9a5e-0f1c2d3e4f50").is_ok());
        for bad in ["", "..", "a/b", "x?y", "x#", "a b"] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
    }
}
