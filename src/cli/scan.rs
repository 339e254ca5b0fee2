//! After a CLI download: tell xapi, so that `xe vdi-list` shows the new VDIs at once
//! under a name people recognise. A file SR learns of a VHD only when it is scanned;
//! the plugin's caller (Nova) scans itself, an admin at a shell would have to run
//! `xe sr-scan` and `xe vdi-param-set` by hand.
//!
//! The steps, on xapi's local Unix socket ([`crate::xenapi`]): a root session of our
//! own, `SR.get_by_uuid` (the SR directory's name), `SR.scan` (xapi asks the storage
//! manager to introduce every `<uuid>.vhd` it does not know yet), then for the new leaf
//! `VDI.get_by_uuid`, `VDI.set_name_label`, `VDI.set_name_description`, and
//! `session.logout` — also when a step fails.
//!
//! **A failure here does not fail the download.** By then the chain is complete in the
//! SR and its UUIDs are the result; an exit code other than 0 would tell a script or a
//! cron wrapper that the download failed, and a retry would import a second copy. So:
//! exit 0, the UUIDs on stdout as always, a warning on stderr (not with `--quiet`) and
//! always in syslog, naming the step that failed and the command that finishes the
//! job (`xe sr-scan`); `--json` carries the outcome in `xapi`. The VDIs are in the SR
//! either way: any later scan — xapi's, XenCenter's, the next run's — introduces them.

use super::output::say;
use crate::error::chain;
use crate::xenapi::xmlrpc::XValue;
use crate::xenapi::{self, XenApi, XenApiError};

/// What the `--json` document says about xapi (`"xapi": {…}`).
#[derive(Debug, Default, serde::Serialize)]
pub struct Outcome {
    /// Why xapi was not asked: `"--no-scan"` or `"no xapi socket"`.
    pub skipped: Option<&'static str>,
    /// `SR.scan` ran and succeeded: the VDIs are known to xapi.
    pub scanned: bool,
    /// The leaf VDI's description is set, and its name label if there is one.
    pub labelled: bool,
    /// The name label given to the leaf VDI (set if `labelled`).
    pub name_label: Option<String>,
    /// Its description (set if `labelled`).
    pub name_description: String,
    /// What failed, when something did (the download stands).
    pub warning: Option<String>,
}

/// The longest label taken from an image's name: Glance's own limit for a name.
const MAX_LABEL: usize = 255;

/// A name from the store made fit for a label: control characters (which `xe` would
/// print raw to a terminal) become `?`, and it is cut at [`MAX_LABEL`] characters.
pub fn printable(s: &str) -> String {
    s.chars()
        .take(MAX_LABEL)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// Tell xapi about the download into the SR `sr_uuid` whose leaf is `leaf`: scan, then
/// label (`label` `None`: the label stays as the scan made it). Never fails: the outcome
/// is reported (stderr, syslog) and returned.
pub fn tell_xapi(
    no_scan: bool,
    sr_uuid: &str,
    leaf: &str,
    label: Option<String>,
    description: String,
) -> Outcome {
    let mut out = Outcome {
        name_label: label,
        name_description: description,
        ..Outcome::default()
    };
    if no_scan {
        out.skipped = Some("--no-scan");
        return out;
    }
    let Some(socket) = xenapi::socket() else {
        say(
            1,
            &format!(
                "no xapi socket: SR {sr_uuid} not scanned (the VDIs appear at its next scan, e.g. xe sr-scan uuid={sr_uuid})"
            ),
        );
        out.skipped = Some("no xapi socket");
        return out;
    };
    say(
        1,
        &format!("xapi: scanning SR {sr_uuid} ({})", socket.display()),
    );
    if let Err(e) = run(socket, sr_uuid, leaf, &mut out) {
        let step = if out.scanned {
            format!("the new VDI {leaf} is in xapi, but not labelled")
        } else {
            format!("xapi does not know the new VDIs yet (xe sr-scan uuid={sr_uuid})")
        };
        let w = format!("downloaded, but {step}: {}", chain(&e));
        say(0, &format!("warning: {w}"));
        crate::log::syslog(crate::log::Level::Warning, &format!("download: {w}"));
        out.warning = Some(w);
        return out;
    }
    match &out.name_label {
        Some(l) => say(
            0,
            &format!("xapi: SR {sr_uuid} scanned; VDI {leaf} is {l:?}"),
        ),
        None => say(0, &format!("xapi: SR {sr_uuid} scanned")),
    }
    out
}

/// The calls, in order; `out` records how far they got. The session is logged out on
/// every path (explicitly here, by its `Drop` on an error).
fn run(
    socket: std::path::PathBuf,
    sr_uuid: &str,
    leaf: &str,
    out: &mut Outcome,
) -> Result<(), XenApiError> {
    let s = |v: &str| XValue::Str(v.to_string());
    let api = XenApi::login_local(socket, "glance-vhd")?;
    let sr = api.call_str("SR.get_by_uuid", vec![s(sr_uuid)])?;
    api.call("SR.scan", vec![s(&sr)])?;
    out.scanned = true;
    let vdi = api.call_str("VDI.get_by_uuid", vec![s(leaf)])?;
    if let Some(l) = &out.name_label {
        api.call("VDI.set_name_label", vec![s(&vdi), s(l)])?;
    }
    api.call(
        "VDI.set_name_description",
        vec![s(&vdi), s(&out.name_description)],
    )?;
    out.labelled = true;
    if let Err(e) = api.logout() {
        // The work is done; a session xapi already dropped is no one's problem.
        say(1, &format!("xapi: session.logout: {}", chain(&e)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn labels() {
        assert_eq!(super::printable("web\x1b[31m\nserver"), "web?[31m?server");
        assert_eq!(super::printable(&"é".repeat(300)).chars().count(), 255);
    }
}
