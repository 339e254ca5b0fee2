//! Keystone v3 sign-in (`POST /v3/auth/tokens`): a password, an application credential
//! or an existing token becomes a project-scoped token and a service catalog, and the
//! token is renewed before it expires.
//!
//! Why inside the tool: dom0 has no `openstack` CLI, and a fixed `OS_AUTH_TOKEN` dies
//! after an hour (Keystone's default), so a nightly job must sign in itself.
//!
//! Renewal. A token's life is taken from Keystone's own `issued_at`/`expires_at` and
//! counted on our monotonic clock from the moment we asked, so a dom0 clock that is off
//! does not matter. [`Session::token`] hands out the current token while more than
//! [`margin`] of its life is left, else signs in again: the callers ask before every
//! request, so a token is fresh before each attempt and before the check that follows a
//! long upload. Glance validates a token when a request starts (an upload that outlives
//! its token is accepted), so a request never needs a token that lasts for its whole
//! duration. A 401 despite that (revoked, clocks) gets one new token ([`Session::renew`]).
//!
//! Secrets (passwords, application credential secrets, tokens) are [`Secret`]s: their
//! `Debug` prints `***`, and no message of this module contains one.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::StoreError;

/// A password, secret or token: kept out of `Debug` output and messages.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// A domain, by id or by name (id wins, as in keystoneauth).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Domain {
    pub id: Option<String>,
    pub name: Option<String>,
}

impl Domain {
    fn json(&self) -> Option<serde_json::Value> {
        match (&self.id, &self.name) {
            (Some(id), _) => Some(serde_json::json!({ "id": id })),
            (None, Some(name)) => Some(serde_json::json!({ "name": name })),
            (None, None) => None,
        }
    }
}

/// A user or a project: by id, or by name within a domain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Named {
    pub id: Option<String>,
    pub name: Option<String>,
    pub domain: Domain,
}

impl Named {
    fn json(&self, what: &str) -> Result<serde_json::Value, String> {
        let mut v = serde_json::Map::new();
        match (&self.id, &self.name) {
            (Some(id), _) => {
                v.insert("id".into(), id.as_str().into());
            }
            (None, Some(name)) => {
                v.insert("name".into(), name.as_str().into());
                let domain = self.domain.json().ok_or_else(|| {
                    format!("the {what} {name:?} is given by name without a domain (set the {what} domain name or id, or OS_DEFAULT_DOMAIN)")
                })?;
                v.insert("domain".into(), domain);
            }
            (None, None) => return Err(format!("no {what} name or id")),
        }
        Ok(serde_json::Value::Object(v))
    }
}

/// How to prove who we are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    Password {
        user: Named,
        password: Secret,
    },
    /// By id, or by name with its user; never scoped (the credential carries its project).
    ApplicationCredential {
        id: Option<String>,
        name: Option<String>,
        user: Named,
        secret: Secret,
    },
    /// An existing token, exchanged for one with a catalog (`v3token`).
    Token(Secret),
}

impl Method {
    /// `password`, `v3applicationcredential`, `v3token`: the names `OS_AUTH_TYPE` uses.
    pub fn name(&self) -> &'static str {
        match self {
            Method::Password { .. } => "password",
            Method::ApplicationCredential { .. } => "v3applicationcredential",
            Method::Token(_) => "v3token",
        }
    }
}

/// Everything a sign-in needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignIn {
    /// The identity endpoint as given (`…/v3`, or unversioned: `/v3` is added).
    pub auth_url: String,
    pub method: Method,
    /// The project to scope to (password and token sign-ins).
    pub project: Option<Named>,
    /// Which image endpoint of the catalog: region (any if unset) and interface.
    pub region: Option<String>,
    pub interface: String,
}

impl SignIn {
    /// `…/v3/auth/tokens`. An unversioned URL gets `/v3`; a v2.0 one is refused
    /// (Keystone removed v2.0 in Queens).
    pub fn tokens_url(&self) -> Result<String, String> {
        let base = self.auth_url.trim_end_matches('/');
        let last = base.rsplit('/').next().unwrap_or("");
        if last == "v3" {
            Ok(format!("{base}/auth/tokens"))
        } else if last.starts_with("v2") {
            Err(format!(
                "auth URL {}: Keystone v2.0 is not supported; give the v3 endpoint",
                super::redact(&self.auth_url)
            ))
        } else {
            Ok(format!("{base}/v3/auth/tokens"))
        }
    }

    /// The request body. Application credentials are never scoped (Keystone refuses it).
    fn body(&self) -> Result<serde_json::Value, String> {
        let identity = match &self.method {
            Method::Password { user, password } => {
                let mut u = user.json("user")?;
                u["password"] = password.expose().into();
                serde_json::json!({ "methods": ["password"], "password": { "user": u } })
            }
            Method::ApplicationCredential {
                id,
                name,
                user,
                secret,
            } => {
                let mut c = serde_json::Map::new();
                match (id, name) {
                    (Some(id), _) => {
                        c.insert("id".into(), id.as_str().into());
                    }
                    (None, Some(name)) => {
                        c.insert("name".into(), name.as_str().into());
                        c.insert("user".into(), user.json("user")?);
                    }
                    (None, None) => {
                        return Err(
                            "an application credential needs its id, or its name and user".into(),
                        )
                    }
                }
                c.insert("secret".into(), secret.expose().into());
                serde_json::json!({ "methods": ["application_credential"], "application_credential": c })
            }
            Method::Token(t) => {
                serde_json::json!({ "methods": ["token"], "token": { "id": t.expose() } })
            }
        };
        let mut auth = serde_json::json!({ "identity": identity });
        if !matches!(self.method, Method::ApplicationCredential { .. }) {
            if let Some(p) = &self.project {
                auth["scope"] = serde_json::json!({ "project": p.json("project")? });
            }
        }
        Ok(serde_json::json!({ "auth": auth }))
    }
}

/// A token and what came with it.
struct Token {
    id: Secret,
    /// When it expires, on our clock.
    expires: Instant,
    /// How long it lived when issued.
    life: Duration,
    /// Image endpoints of the catalog that match the region and interface.
    image_endpoints: Vec<String>,
}

/// Renew when less than this much of a token's life is left: two minutes (a request and
/// the answer's round trip, with room), or half the life of a short-lived token.
fn margin(life: Duration) -> Duration {
    (life / 2).min(Duration::from_secs(120))
}

/// A signed-in identity, shared by every request of a job.
pub struct Session {
    sign_in: SignIn,
    tokens_url: String,
    agent: ureq::Agent,
    current: Mutex<Option<Token>>,
    /// How many sign-ins were made (for `-v` and the tests' transcripts).
    sign_ins: std::sync::atomic::AtomicU32,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("auth_url", &super::redact(&self.sign_in.auth_url))
            .field("method", &self.sign_in.method.name())
            .finish()
    }
}

/// Answers larger than this are not a token (a catalog of a big cloud is ~100 KiB).
const MAX_ANSWER: u64 = 8 << 20;

impl Session {
    /// No request yet: the first [`Session::token`] signs in.
    pub fn new(sign_in: SignIn, agent: ureq::Agent) -> Result<Session, StoreError> {
        super::check_endpoint(&sign_in.auth_url).map_err(StoreError::Config)?;
        if !(sign_in.auth_url.starts_with("http://") || sign_in.auth_url.starts_with("https://")) {
            return Err(StoreError::Config(format!(
                "auth URL {}: expected http(s)://host[:port][/v3]",
                super::redact(&sign_in.auth_url)
            )));
        }
        let tokens_url = sign_in.tokens_url().map_err(StoreError::Config)?;
        // A body that cannot be built (no user, no domain) is a configuration error now,
        // not a failed first attempt.
        sign_in.body().map_err(StoreError::Config)?;
        Ok(Session {
            sign_in,
            tokens_url,
            agent,
            current: Mutex::new(None),
            sign_ins: Default::default(),
        })
    }

    pub fn auth_url(&self) -> String {
        super::redact(&self.sign_in.auth_url)
    }

    /// A token with more than [`margin`] of its life left: the current one, or a new one.
    pub fn token(&self) -> Result<Secret, StoreError> {
        let mut cur = self.lock();
        if let Some(t) = cur.as_ref() {
            if t.expires.saturating_duration_since(Instant::now()) > margin(t.life) {
                return Ok(t.id.clone());
            }
        }
        let t = self.sign_in()?;
        let id = t.id.clone();
        *cur = Some(t);
        Ok(id)
    }

    /// A new token whatever the current one's age (after a 401).
    pub fn renew(&self) -> Result<Secret, StoreError> {
        let mut cur = self.lock();
        let t = self.sign_in()?;
        let id = t.id.clone();
        *cur = Some(t);
        Ok(id)
    }

    /// The image endpoints of the catalog (signing in first if need be), in catalog order.
    pub fn image_endpoints(&self) -> Result<Vec<String>, StoreError> {
        self.token()?;
        let eps = self
            .lock()
            .as_ref()
            .map(|t| t.image_endpoints.clone())
            .unwrap_or_default();
        if eps.is_empty() {
            return Err(StoreError::Config(format!(
                "the service catalog of {} has no image endpoint for interface {:?}{} (give --endpoint or OS_IMAGE_URL, or check OS_REGION_NAME/OS_INTERFACE)",
                self.auth_url(),
                self.sign_in.interface,
                self.sign_in
                    .region
                    .as_ref()
                    .map(|r| format!(" in region {r:?}"))
                    .unwrap_or_default()
            )));
        }
        Ok(eps)
    }

    pub fn sign_ins(&self) -> u32 {
        self.sign_ins.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Token>> {
        // A panic elsewhere while holding it leaves at worst a stale token: renewed.
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn sign_in(&self) -> Result<Token, StoreError> {
        self.sign_ins
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let body = self.sign_in.body().map_err(StoreError::Config)?;
        let url = &self.tokens_url;
        let asked = Instant::now();
        let resp = self
            .agent
            .post(url)
            .header("Content-Type", "application/json")
            .send(body.to_string());
        let resp = super::traced("POST", url, resp)?;
        let status = resp.status().as_u16();
        match status {
            201 | 200 => {}
            // Wrong password, secret, user, project or an expired token: the same answer
            // next time. Keystone's message says which rule, never the secret.
            401 | 403 | 404 => {
                let err = StoreError::http(url, status, resp);
                let detail = match &err {
                    StoreError::Http { body, .. } => keystone_message(body),
                    _ => String::new(),
                };
                return Err(StoreError::Auth {
                    auth_url: self.auth_url(),
                    method: self.sign_in.method.name(),
                    detail,
                });
            }
            _ => return Err(StoreError::http(url, status, resp)),
        }
        let id = resp
            .headers()
            .get("x-subject-token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .filter(|t| super::check_header("X-Auth-Token", t).is_ok())
            .ok_or_else(|| {
                StoreError::Protocol(format!(
                    "{url}: Keystone answered {status} without a usable X-Subject-Token"
                ))
            })?;
        let text = resp
            .into_body()
            .with_config()
            .limit(MAX_ANSWER)
            .read_to_string()
            .map_err(|e| StoreError::transport(url, e))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| StoreError::Protocol(format!("{url}: the token is not JSON: {e}")))?;
        let life =
            token_life(&v["token"]).map_err(|e| StoreError::Protocol(format!("{url}: {e}")))?;
        let image_endpoints = image_endpoints(
            &v["token"]["catalog"],
            self.sign_in.region.as_deref(),
            &self.sign_in.interface,
        );
        Ok(Token {
            id: Secret::new(id),
            expires: asked + life,
            life,
            image_endpoints,
        })
    }
}

/// `{"error": {"message": …}}` → the message; else the summarized body.
fn keystone_message(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| body.to_string())
}

/// `expires_at - issued_at` (Keystone's clock for both), or from now if `issued_at` is
/// missing. A token that is already expired or has no expiry is refused.
fn token_life(token: &serde_json::Value) -> Result<Duration, String> {
    let ts = |k: &str| -> Result<Option<jiff::Timestamp>, String> {
        match token[k].as_str() {
            None => Ok(None),
            Some(s) => s
                .parse::<jiff::Timestamp>()
                .map(Some)
                .map_err(|e| format!("token {k} {s:?} is not an RFC 3339 time: {e}")),
        }
    };
    let expires = ts("expires_at")?.ok_or("the token has no expires_at")?;
    let issued = ts("issued_at")?.unwrap_or_else(jiff::Timestamp::now);
    let life = expires.duration_since(issued);
    Duration::try_from(life)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("the token expires ({expires}) before it was issued ({issued})"))
}

/// The `image` service's URLs for `interface` (`public`, `internal`, `admin`) in `region`
/// (any region if `None`), versionless, without duplicates.
fn image_endpoints(
    catalog: &serde_json::Value,
    region: Option<&str>,
    interface: &str,
) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for svc in catalog.as_array().into_iter().flatten() {
        if svc["type"].as_str() != Some("image") {
            continue;
        }
        for ep in svc["endpoints"].as_array().into_iter().flatten() {
            let in_region = region.is_none_or(|r| {
                ep["region_id"].as_str() == Some(r) || ep["region"].as_str() == Some(r)
            });
            if ep["interface"].as_str() == Some(interface) && in_region {
                if let Some(url) = ep["url"].as_str() {
                    let url = unversioned(url);
                    if !out.contains(&url) {
                        out.push(url);
                    }
                }
            }
        }
    }
    out
}

/// An image endpoint without a trailing API version (`…:9292/v2` → `…:9292`): the client
/// adds the version of the API it speaks, so a versioned endpoint (the catalog's or
/// `--endpoint`'s) must not become `/v2/v2`.
pub fn unversioned(endpoint: &str) -> String {
    let trimmed = endpoint.trim_end_matches('/');
    if let Some((base, last)) = trimmed.rsplit_once('/') {
        let version = last.strip_prefix('v').is_some_and(|n| {
            !n.is_empty()
                && n.split('.')
                    .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        });
        // `http://v2` has no path: only a path segment is a version.
        if version && !base.ends_with('/') && base.contains("://") {
            return base.to_string();
        }
    }
    trimmed.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(name: &str, domain: &str) -> Named {
        Named {
            id: None,
            name: Some(name.into()),
            domain: Domain {
                id: None,
                name: Some(domain.into()),
            },
        }
    }

    #[test]
    fn versioned_endpoints_lose_their_version() {
        assert_eq!(unversioned("http://g:9292/v2"), "http://g:9292");
        assert_eq!(unversioned("http://g:9292/v2/"), "http://g:9292");
        assert_eq!(unversioned("http://g:9292/v2.1"), "http://g:9292");
        assert_eq!(unversioned("https://cloud/image/v2"), "https://cloud/image");
        assert_eq!(unversioned("http://g:9292/"), "http://g:9292");
        assert_eq!(unversioned("https://cloud/image"), "https://cloud/image");
        assert_eq!(unversioned("https://cloud/vx"), "https://cloud/vx");
        assert_eq!(unversioned("http://v2"), "http://v2");
    }

    #[test]
    fn tokens_url_adds_v3_once() {
        let s = |u: &str| SignIn {
            auth_url: u.into(),
            method: Method::Token(Secret::new("t")),
            project: None,
            region: None,
            interface: "public".into(),
        };
        assert_eq!(
            s("http://k:5000/v3").tokens_url().unwrap(),
            "http://k:5000/v3/auth/tokens"
        );
        assert_eq!(
            s("http://k:5000/v3/").tokens_url().unwrap(),
            "http://k:5000/v3/auth/tokens"
        );
        assert_eq!(
            s("http://k:5000").tokens_url().unwrap(),
            "http://k:5000/v3/auth/tokens"
        );
        assert_eq!(
            s("https://c/identity").tokens_url().unwrap(),
            "https://c/identity/v3/auth/tokens"
        );
        assert!(s("http://k:5000/v2.0").tokens_url().is_err());
    }

    #[test]
    fn bodies_are_keystone_v3_and_never_scope_application_credentials() {
        let pw = SignIn {
            auth_url: "http://k/v3".into(),
            method: Method::Password {
                user: named("demo", "Default"),
                password: Secret::new("pw"),
            },
            project: Some(named("demo", "Default")),
            region: None,
            interface: "public".into(),
        };
        let b = pw.body().unwrap();
        assert_eq!(b["auth"]["identity"]["methods"][0], "password");
        assert_eq!(b["auth"]["identity"]["password"]["user"]["name"], "demo");
        assert_eq!(
            b["auth"]["identity"]["password"]["user"]["domain"]["name"],
            "Default"
        );
        assert_eq!(b["auth"]["identity"]["password"]["user"]["password"], "pw");
        assert_eq!(b["auth"]["scope"]["project"]["domain"]["name"], "Default");
        let ac = SignIn {
            method: Method::ApplicationCredential {
                id: Some("abc".into()),
                name: None,
                user: Named::default(),
                secret: Secret::new("s"),
            },
            ..pw.clone()
        };
        let b = ac.body().unwrap();
        assert_eq!(b["auth"]["identity"]["application_credential"]["id"], "abc");
        assert!(b["auth"].get("scope").is_none());
        // A name without a domain is a configuration error, said up front.
        let bad = SignIn {
            method: Method::Password {
                user: Named {
                    name: Some("demo".into()),
                    ..Named::default()
                },
                password: Secret::new("pw"),
            },
            ..pw
        };
        let e = bad.body().unwrap_err();
        assert!(e.contains("without a domain"), "{e}");
        assert!(!e.contains("pw\""), "{e}");
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let m = Method::Password {
            user: named("demo", "Default"),
            password: Secret::new("hunter2"),
        };
        assert!(!format!("{m:?}").contains("hunter2"));
    }

    #[test]
    fn token_life_is_keystones_own_difference() {
        let v = serde_json::json!({
            "issued_at": "2026-12-02T01:00:00.000000Z",
            "expires_at": "2026-12-02T01:00:20.000000Z",
        });
        assert_eq!(token_life(&v).unwrap(), Duration::from_secs(20));
        let bad = serde_json::json!({
            "issued_at": "2026-12-02T01:00:20Z",
            "expires_at": "2026-12-02T01:00:00Z",
        });
        assert!(token_life(&bad).is_err());
        assert!(token_life(&serde_json::json!({})).is_err());
        assert_eq!(margin(Duration::from_secs(20)), Duration::from_secs(10));
        assert_eq!(margin(Duration::from_secs(3600)), Duration::from_secs(120));
    }

    #[test]
    fn catalog_picks_image_endpoints_by_interface_and_region() {
        let cat = serde_json::json!([
            {"type": "identity", "endpoints": [{"interface": "public", "region_id": "R1", "url": "http://k/v3"}]},
            {"type": "image", "endpoints": [
                {"interface": "admin", "region_id": "R1", "url": "http://admin:9292"},
                {"interface": "public", "region_id": "R1", "url": "http://g1:9292/v2"},
                {"interface": "public", "region_id": "R2", "url": "http://g2:9292"},
                {"interface": "public", "region": "R1", "url": "http://g1:9292/"},
            ]},
        ]);
        assert_eq!(
            image_endpoints(&cat, Some("R1"), "public"),
            vec!["http://g1:9292"]
        );
        assert_eq!(
            image_endpoints(&cat, None, "public"),
            vec!["http://g1:9292", "http://g2:9292"]
        );
        assert_eq!(
            image_endpoints(&cat, Some("R1"), "admin"),
            vec!["http://admin:9292"]
        );
        assert!(image_endpoints(&cat, Some("R3"), "public").is_empty());
        assert!(image_endpoints(&serde_json::json!(null), None, "public").is_empty());
    }
}
