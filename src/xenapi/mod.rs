//! Talking to xapi: the XML-RPC codec ([`xmlrpc`], which the plugin protocol speaks
//! too) and a minimal XenAPI client — XML-RPC over HTTP/1.0 on xapi's local Unix socket.
//!
//! Two ways to hold a session: the plugin reuses its caller's ([`XenApi::local`]: xapi
//! hands the plugin a session and the plugin never logs in), the CLI logs in itself
//! ([`XenApi::login_local`]) and logs out when done, also on error ([`LocalSession`]).
//!
//! The socket is `/var/lib/xcp/xapi` (XenServer 6.1+, XCP-ng), else `/var/xapi/xapi`
//! (older); `GLANCE_VHD_XAPI_SOCKET` overrides both (tests).

pub mod xmlrpc;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::{ErrorKind, Kind};
use xmlrpc::{Response, XValue, XmlRpcError};

const SOCKETS: &[&str] = &["/var/lib/xcp/xapi", "/var/xapi/xapi"];
/// `VBD.plug` may wait for a slow storage backend.
const TIMEOUT: Duration = Duration::from_secs(600);
/// No XenAPI answer of the calls we make is near this.
const MAX_ANSWER: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum XenApiError {
    #[error("no xapi socket at {0}")]
    NoSocket(String),
    #[error("{}: cannot talk to xapi", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("xapi answered {0:?}")]
    Http(String),
    #[error("xapi's answer to {method}")]
    Answer {
        method: String,
        #[source]
        source: XmlRpcError,
    },
    #[error("{method} failed: {details:?}")]
    Failure {
        method: String,
        details: Vec<String>,
    },
    #[error("{method}: unexpected answer: {what}")]
    Unexpected { method: String, what: String },
}

impl Kind for XenApiError {
    fn kind(&self) -> ErrorKind {
        match self {
            XenApiError::NoSocket(_) | XenApiError::Io { .. } => ErrorKind::Io,
            XenApiError::Http(_) | XenApiError::Answer { .. } | XenApiError::Unexpected { .. } => {
                ErrorKind::Permanent
            }
            XenApiError::Failure { .. } => ErrorKind::Permanent,
        }
    }
}

impl XenApiError {
    /// The XenAPI error code (`DEVICE_DETACH_REJECTED`, …) of a failure.
    pub fn code(&self) -> Option<&str> {
        match self {
            XenApiError::Failure { details, .. } => details.first().map(String::as_str),
            _ => None,
        }
    }
}

pub struct XenApi {
    socket: PathBuf,
    session: String,
}

/// xapi's socket on this host: `GLANCE_VHD_XAPI_SOCKET` if set, else the first of the
/// standard places that exists; `None` when there is none (not a dom0, or xapi is
/// down). A socket named by the hook that does not exist is none too.
pub fn socket() -> Option<PathBuf> {
    match crate::testhooks::path(crate::testhooks::XAPI_SOCKET) {
        Some(p) => p.exists().then_some(p),
        None => SOCKETS.iter().map(PathBuf::from).find(|p| p.exists()),
    }
}

/// The version `session.login_with_password` is given: xapi does not look at it
/// ("!!! Do something with the version number" in `xapi_session.ml`); XenAPI.py's
/// oldest is "1.0".
const API_VERSION: &str = "1.0";

impl XenApi {
    /// Use the caller's session on the local xapi.
    pub fn local(session: &str) -> Result<XenApi, XenApiError> {
        let socket = match crate::testhooks::path(crate::testhooks::XAPI_SOCKET) {
            Some(p) => p,
            None => SOCKETS
                .iter()
                .map(PathBuf::from)
                .find(|p| p.exists())
                .ok_or_else(|| XenApiError::NoSocket(SOCKETS.join(" or ")))?,
        };
        Ok(XenApi {
            socket,
            session: session.to_string(),
        })
    }

    /// Log in as root on the local Unix socket `socket`, as `originator` (xapi records
    /// it with the session; `xe session-list`-style audits show it).
    ///
    /// No password: xapi trusts a login that arrives on its local Unix socket (only root
    /// can open it) and skips authentication — `Context.preauth = Some `root` in
    /// `xapi_session.ml`, "we trust requests from local unix filename sockets" — which is
    /// also how the storage manager logs in (`sm`'s `util.get_localAPI_session`:
    /// `login_with_password('root', '', '', 'SM')`). Over TCP the same call would be a
    /// password check, and would fail.
    pub fn login_local(socket: PathBuf, originator: &str) -> Result<LocalSession, XenApiError> {
        let mut api = XenApi {
            socket,
            session: String::new(),
        };
        let params = ["root", "", API_VERSION, originator]
            .map(|s| XValue::Str(s.to_string()))
            .to_vec();
        api.session = api.str_of(
            "session.login_with_password",
            api.rpc("session.login_with_password", params)?,
        )?;
        Ok(LocalSession { api: Some(api) })
    }

    pub fn session(&self) -> &str {
        &self.session
    }

    /// `method(session, args…)`; the `Value` of a `Success`, the `ErrorDescription` of a
    /// `Failure` as an error.
    pub fn call(&self, method: &str, args: Vec<XValue>) -> Result<XValue, XenApiError> {
        let mut params = vec![XValue::Str(self.session.clone())];
        params.extend(args);
        self.rpc(method, params)
    }

    /// `method(params…)` as given (the login takes no session).
    fn rpc(&self, method: &str, params: Vec<XValue>) -> Result<XValue, XenApiError> {
        let body = xmlrpc::write_call(method, &params);
        let answer = self.post(&body)?;
        let answer_err = |source| XenApiError::Answer {
            method: method.to_string(),
            source,
        };
        let unexpected = |what: String| XenApiError::Unexpected {
            method: method.to_string(),
            what,
        };
        let v = match xmlrpc::parse_response(&answer).map_err(answer_err)? {
            Response::Value(v) => v,
            Response::Fault(f) => return Err(unexpected(format!("fault {f:?}"))),
        };
        match v.member("Status").and_then(XValue::as_str) {
            Some("Success") => v
                .member("Value")
                .cloned()
                .ok_or_else(|| unexpected("Success without a Value".into())),
            Some("Failure") => {
                let details = match v.member("ErrorDescription") {
                    Some(XValue::Array(items)) => items
                        .iter()
                        .map(|i| match i {
                            XValue::Str(s) => s.clone(),
                            other => format!("{other:?}"),
                        })
                        .collect(),
                    _ => Vec::new(),
                };
                Err(XenApiError::Failure {
                    method: method.to_string(),
                    details,
                })
            }
            _ => Err(unexpected("no Status".into())),
        }
    }

    /// A call whose value is a string (a ref, a UUID, a device name).
    pub fn call_str(&self, method: &str, args: Vec<XValue>) -> Result<String, XenApiError> {
        self.str_of(method, self.call(method, args)?)
    }

    fn str_of(&self, method: &str, v: XValue) -> Result<String, XenApiError> {
        match v {
            XValue::Str(s) => Ok(s),
            other => Err(XenApiError::Unexpected {
                method: method.to_string(),
                what: format!("{other:?} where a string belongs"),
            }),
        }
    }

    /// One HTTP/1.0 POST: the server closes after the answer.
    fn post(&self, body: &str) -> Result<String, XenApiError> {
        let io = |source| XenApiError::Io {
            path: self.socket.clone(),
            source,
        };
        let mut s = UnixStream::connect(&self.socket).map_err(io)?;
        s.set_read_timeout(Some(TIMEOUT)).map_err(io)?;
        s.set_write_timeout(Some(TIMEOUT)).map_err(io)?;
        let head = format!(
            "POST / HTTP/1.0\r\nHost: localhost\r\nUser-Agent: glance-vhd\r\nContent-Type: text/xml\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).map_err(io)?;
        s.write_all(body.as_bytes()).map_err(io)?;
        let mut raw = Vec::new();
        s.take(MAX_ANSWER).read_to_end(&mut raw).map_err(io)?;
        let text = String::from_utf8(raw)
            .map_err(|_| XenApiError::Http("an answer that is not UTF-8".into()))?;
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| XenApiError::Http("an answer without headers".into()))?;
        let status = head.lines().next().unwrap_or("");
        if status.split_whitespace().nth(1) != Some("200") {
            return Err(XenApiError::Http(status.to_string()));
        }
        let chunked = head.lines().any(|l| {
            let l = l.to_ascii_lowercase();
            l.starts_with("transfer-encoding:") && l.contains("chunked")
        });
        if chunked {
            return dechunk(body)
                .ok_or_else(|| XenApiError::Http("a broken chunked answer".into()));
        }
        Ok(body.to_string())
    }
}

/// A session this process logged in ([`XenApi::login_local`]): logged out by
/// [`LocalSession::logout`], or when dropped (on an error path): a nightly job must not
/// leave a session behind in xapi's database every run.
pub struct LocalSession {
    api: Option<XenApi>,
}

impl std::ops::Deref for LocalSession {
    type Target = XenApi;
    fn deref(&self) -> &XenApi {
        self.api.as_ref().expect("a live session until logout")
    }
}

impl LocalSession {
    /// `session.logout`, with its outcome.
    pub fn logout(mut self) -> Result<(), XenApiError> {
        match self.api.take() {
            Some(api) => api.call("session.logout", Vec::new()).map(drop),
            None => Ok(()),
        }
    }
}

impl Drop for LocalSession {
    fn drop(&mut self) {
        if let Some(api) = self.api.take() {
            // Best effort: the error that brought us here is the one to report.
            let _ = api.call("session.logout", Vec::new());
        }
    }
}

fn dechunk(mut body: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (line, rest) = body.split_once("\r\n")?;
        let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(rest.get(..size)?);
        body = rest.get(size..)?.strip_prefix("\r\n")?;
    }
}

/// Build a XenAPI struct from string pairs.
pub fn record(fields: Vec<(&str, XValue)>) -> XValue {
    XValue::Struct(
        fields
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn dechunk() {
        assert_eq!(
            super::dechunk("3\r\nabc\r\n1\r\nd\r\n0\r\n\r\n").as_deref(),
            Some("abcd")
        );
        assert_eq!(super::dechunk("5\r\nab"), None);
    }
}
