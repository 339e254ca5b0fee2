//! A Glance v2 download that continues where it broke, instead of starting over: a
//! connection lost at 90 % of a 20 GB image costs the last 10 %, not the whole image.
//!
//! When the body breaks (a cut, a reset, an idle timeout, a body shorter than declared)
//! at byte N, and the job's retry budget ([`Budget`]) has an attempt left: wait that
//! attempt's pause, read the image record again — still `active`, with the same size,
//! `checksum`, `os_hash_algo` and `os_hash_value` as when the transfer began — and ask
//! for `Range: bytes=N-`. Glance (checked against Glance 33) answers `206 Partial
//! Content` with `Content-Range: bytes N-(size-1)/size`; only that exact answer is
//! spliced on, and the bytes go on into the **same** reader above us (the hashes, the
//! gunzip and tar stream, which never see the break). Anything else — a `200` (a store
//! or proxy that ignores ranges), a range that does not start at N or end at the image's
//! end, a changed or missing record — is refused: the retry is given back
//! ([`Budget::give_back`]) and the error makes the caller start over, as before. A resume
//! whose own requests fail on the network takes the next attempt and resumes again.
//!
//! Nothing is buffered (memory stays what one read needs) and a hostile `Content-Range`
//! is parsed with checked arithmetic: at worst it is refused.

use std::io::{self, Read};
use std::sync::Arc;

use super::glance::{Glance, NetBody, Record};
use super::StoreError;
use crate::error::{ErrorKind, Kind};
use crate::log::{self, Level};
use crate::retry::Budget;

/// An image body that resumes in place (see the module's documentation).
pub(super) struct Resuming {
    glance: Glance,
    image_id: String,
    /// The record the transfer began with: a resume needs the same image.
    pinned: Record,
    size: u64,
    budget: Arc<Budget>,
    body: NetBody,
}

impl Resuming {
    /// `body` (the whole image, from its first byte), resuming if the record says
    /// enough to recognise the same image again: `active`, a size, and a checksum or a
    /// multihash. Otherwise `body` as it is.
    pub(super) fn wrap(
        glance: Glance,
        image_id: &str,
        pinned: Record,
        budget: Arc<Budget>,
        body: NetBody,
    ) -> Box<dyn Read + Send> {
        let identifiable = pinned.status == "active"
            && (pinned.checksum.is_some() || pinned.os_hash_value.is_some());
        match pinned.size {
            Some(size) if identifiable => Box::new(Resuming {
                glance,
                image_id: image_id.to_string(),
                pinned,
                size,
                budget,
                body,
            }),
            _ => Box::new(body),
        }
    }

    /// The body broke at `self.body.got` with `cause`: resume, or say why not.
    fn resume(&mut self, mut cause: io::Error) -> io::Result<()> {
        let at = self.body.got;
        let total = u64::from(self.budget.policy().retries) + 1;
        let id = &self.image_id;
        loop {
            let Some((n, pause)) = self.budget.take() else {
                return Err(cause);
            };
            let line = format!(
                "image {id}: the transfer broke at byte {at} of {} ({cause}); resuming in {:.1} s (attempt {} of {total})",
                self.size,
                pause.as_secs_f64(),
                u64::from(n) + 1
            );
            log::step(&line);
            log::syslog(Level::Warning, &line);
            std::thread::sleep(pause);
            match self.reopen(at) {
                Ok(body) => {
                    self.body = body;
                    let line = format!(
                        "image {id}: resumed at byte {at} of {} (attempt {} of {total})",
                        self.size,
                        u64::from(n) + 1
                    );
                    log::step(&line);
                    log::syslog(Level::Info, &line);
                    return Ok(());
                }
                // The network again, on the resume's own requests: the next attempt
                // resumes from the same byte.
                Err(Reopen::Again(e)) => {
                    cause =
                        io::Error::new(io::ErrorKind::ConnectionAborted, crate::error::chain(&e))
                }
                Err(Reopen::Refused(why)) => {
                    self.budget.give_back();
                    let line =
                        format!("image {id}: cannot resume at byte {at}: {why}; starting over");
                    log::step(&line);
                    log::syslog(Level::Warning, &line);
                    // Retryable (the kind bundle gives a broken connection): the caller's
                    // retry loop starts over with the attempt just given back.
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        format!(
                            "{}: the transfer broke at byte {at} and cannot resume: {why}",
                            self.body.url
                        ),
                    ));
                }
            }
        }
    }

    /// The rest of the image from byte `at`, if the store still has the same image and
    /// gives exactly that range.
    fn reopen(&self, at: u64) -> Result<NetBody, Reopen> {
        // A download's classes: a 4xx on the record will not change on a retry.
        let rec = self
            .glance
            .record(&self.image_id)
            .map_err(|e| Reopen::from(e.as_download()))?;
        if let Some(why) = changed(&self.pinned, &rec) {
            return Err(Reopen::Refused(why));
        }
        let url = self.body.url.clone();
        let resp = self.glance.get_from(&url, Some(at)).map_err(Reopen::from)?;
        let status = resp.status().as_u16();
        match status {
            206 => {}
            200 => {
                return Err(Reopen::Refused(
                    "the store answered the range request with the whole image (HTTP 200)".into(),
                ))
            }
            _ => return Err(Reopen::from(StoreError::http(&url, status, resp))),
        }
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let range = header("content-range").unwrap_or_default();
        check_range(&range, at, self.size).map_err(Reopen::Refused)?;
        // A length that disagrees with the range would end the body early or late.
        if let Some(len) = header("content-length") {
            let want = self.size - at; // at < size: check_range
            if len.trim().parse::<u64>().ok() != Some(want) {
                return Err(Reopen::Refused(format!(
                    "Content-Length {:?} for a range of {want} bytes",
                    crate::error::cap(&len)
                )));
            }
        }
        Ok(NetBody::new(
            resp,
            url,
            at,
            Some(self.size),
            self.glance.idle_timeout(),
        ))
    }
}

impl Read for Resuming {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.body.read(buf) {
                Err(e) if e.kind() != io::ErrorKind::Interrupted => self.resume(e)?,
                r => return r,
            }
        }
    }
}

/// Why a resume did not happen.
enum Reopen {
    /// The network or a busy store: another attempt may resume.
    Again(StoreError),
    /// The store cannot give the rest of the same image: start over.
    Refused(String),
}

impl From<StoreError> for Reopen {
    fn from(e: StoreError) -> Reopen {
        if e.kind() == ErrorKind::Retryable {
            Reopen::Again(e)
        } else {
            Reopen::Refused(crate::error::chain(&e))
        }
    }
}

/// How the record now differs from the one the transfer began with, if it does.
fn changed(then: &Record, now: &Record) -> Option<String> {
    if now.status != "active" {
        return Some(format!("the image is now {:?}, not \"active\"", now.status));
    }
    let fields = [
        (
            "size",
            then.size.map(|s| s.to_string()),
            now.size.map(|s| s.to_string()),
        ),
        ("checksum", then.checksum.clone(), now.checksum.clone()),
        (
            "os_hash_algo",
            then.os_hash_algo.clone(),
            now.os_hash_algo.clone(),
        ),
        (
            "os_hash_value",
            then.os_hash_value.clone(),
            now.os_hash_value.clone(),
        ),
    ];
    fields
        .into_iter()
        .find(|(_, a, b)| a != b)
        .map(|(what, _, _)| format!("the image record's {what} changed"))
}

/// `Content-Range` must be `bytes AT-(SIZE-1)/SIZE`: the rest of this image from the byte
/// we stopped at, nothing else (RFC 9110 §14.4).
fn check_range(value: &str, at: u64, size: u64) -> Result<(), String> {
    let shown = crate::error::cap(value);
    let bad = || format!("Content-Range {shown:?} is not the rest of the image from byte {at}");
    let last = size.checked_sub(1).filter(|l| at <= *l).ok_or_else(bad)?;
    let spec = value.trim().strip_prefix("bytes ").ok_or_else(bad)?;
    let (span, len) = spec.split_once('/').ok_or_else(bad)?;
    let (first, end) = span.split_once('-').ok_or_else(bad)?;
    let num = |s: &str| -> Option<u64> {
        // Digits only: `parse` would take a `+`.
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (num(first), num(end), num(len)) {
        (Some(f), Some(e), Some(l)) if f == at && e == last && l == size => Ok(()),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_rest_is_accepted() {
        assert!(check_range("bytes 90000-99999/100000", 90000, 100000).is_ok());
        assert!(check_range("bytes 0-0/1", 0, 1).is_ok());
        for bad in [
            "bytes 0-99999/100000",      // from the start: a splice would repeat bytes
            "bytes 90001-99999/100000",  // starts later: a splice would skip bytes
            "bytes 90000-99998/100000",  // stops short
            "bytes 90000-99999/100001",  // another image
            "bytes 90000-99999/*",       // size unknown
            "bytes */100000",            // unsatisfied
            "bytes +90000-99999/100000", // not digits
            "bytes 90000-99999",
            "items 90000-99999/100000",
            "bytes 90000-18446744073709551616/100000", // overflows
            "bytes 99999999999999999999999-1/2",
            "",
            "bytes --/",
        ] {
            assert!(check_range(bad, 90000, 100000).is_err(), "{bad:?}");
        }
        // Nothing left to ask for, or an empty image: refused, never an underflow.
        assert!(check_range("bytes 0--1/0", 0, 0).is_err());
        assert!(check_range("bytes 5-4/5", 5, 5).is_err());
        assert!(check_range(
            "bytes 18446744073709551615-18446744073709551614/18446744073709551615",
            u64::MAX,
            u64::MAX
        )
        .is_err());
    }

    #[test]
    fn a_changed_record_is_named() {
        let then = Record {
            id: "x".into(),
            status: "active".into(),
            checksum: Some("aa".into()),
            os_hash_algo: Some("sha512".into()),
            os_hash_value: Some("bb".into()),
            size: Some(10),
        };
        assert_eq!(changed(&then, &then.clone()), None);
        let mut now = then.clone();
        now.status = "deactivated".into();
        assert!(changed(&then, &now).unwrap().contains("deactivated"));
        let mut now = then.clone();
        now.size = Some(11);
        assert!(changed(&then, &now).unwrap().contains("size"));
        let mut now = then.clone();
        now.os_hash_value = Some("cc".into());
        assert!(changed(&then, &now).unwrap().contains("os_hash_value"));
        let mut now = then.clone();
        now.checksum = None;
        assert!(changed(&then, &now).unwrap().contains("checksum"));
    }
}
