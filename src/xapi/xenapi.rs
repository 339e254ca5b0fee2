//! A minimal XenAPI client for the kernel calls: XML-RPC over HTTP/1.0 on xapi's local
//! Unix socket, reusing the caller's session (the plugin never logs in).
//!
//! The socket is `/var/lib/xcp/xapi` (XenServer 6.1+, XCP-ng), else `/var/xapi/xapi`
//! (older); `GLANCE_VHD_XAPI_SOCKET` overrides both (tests).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use super::xmlrpc::{self, Response, XValue, XmlRpcError};
use crate::error::{ErrorKind, Kind};

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

    pub fn session(&self) -> &str {
        &self.session
    }

    /// `method(session, args…)`; the `Value` of a `Success`, the `ErrorDescription` of a
    /// `Failure` as an error.
    pub fn call(&self, method: &str, args: Vec<XValue>) -> Result<XValue, XenApiError> {
        let mut params = vec![XValue::Str(self.session.clone())];
        params.extend(args);
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
        match self.call(method, args)? {
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
