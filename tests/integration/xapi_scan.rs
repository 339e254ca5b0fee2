//! Results xapi can see (issue 13, item 4): after a CLI download, `SR.scan` and the new
//! leaf VDI's name label and description through xapi, so `xe vdi-list` shows it; and
//! `--sr SR_UUID`. xapi is the stand-in (tests/plugin/xapi_standin.py), which scans a
//! file SR as sm does; the VDI list is read back through XenAPI by tests/plugin/xe.py,
//! as `xe vdi-list` reads it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use super::cli::Syslog;
use crate::helpers::{self, stderr, stdout, XapiStandin};

/// What a download must make xapi do, in this order (the stand-in's call log).
const SCAN_CALLS: [&str; 7] = [
    "session.login_with_password",
    "SR.get_by_uuid",
    "SR.scan",
    "VDI.get_by_uuid",
    "VDI.set_name_label",
    "VDI.set_name_description",
    "session.logout",
];

const TOKEN: &str = "tok-s3cr3t-xapi-13";

/// A scratch dom0: a mount root holding one SR (named by its UUID), a lock directory,
/// the tap chain as a tarball `web-base.tgz`, and the syslog socket.
struct Dom0 {
    dir: tempfile::TempDir,
    sr_uuid: String,
    syslog: Syslog,
}

impl Dom0 {
    fn new() -> Dom0 {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sr-mount")).unwrap();
        let sr = helpers::new_sr(&dir.path().join("sr-mount"));
        let sr_uuid = sr.file_name().unwrap().to_str().unwrap().to_string();
        let samples = helpers::unpacked_samples();
        helpers::gnu_tar(
            samples.path(),
            &helpers::TAP_CHAIN,
            &dir.path().join("web-base.tgz"),
        );
        let syslog = Syslog::bind(dir.path());
        Dom0 {
            dir,
            sr_uuid,
            syslog,
        }
    }

    fn sr(&self) -> PathBuf {
        self.dir.path().join("sr-mount").join(&self.sr_uuid)
    }

    fn tgz_url(&self) -> String {
        format!("file://{}", self.dir.path().join("web-base.tgz").display())
    }

    /// The stand-in, knowing this SR (`--sr UUID=DIR`), with `extra` arguments.
    fn xapi(&self, extra: &[&str]) -> XapiStandin {
        let sr = format!("{}={}", self.sr_uuid, self.sr().display());
        let mut args = vec!["--sr", sr.as_str()];
        args.extend_from_slice(extra);
        XapiStandin::start(&args)
    }

    /// `glance-vhd ARGS` with xapi's socket at `socket`, the mount root and the syslog
    /// socket pointed here.
    fn run(&self, socket: &Path, args: &[&str]) -> Output {
        Command::new(helpers::bin())
            .args(args)
            .current_dir(self.dir.path())
            .env("GLANCE_VHD_XAPI_SOCKET", socket)
            .env("GLANCE_VHD_SR_MOUNT", self.dir.path().join("sr-mount"))
            .env("GLANCE_VHD_SYSLOG_SOCKET", &self.syslog.path)
            .output()
            .unwrap()
    }

    /// A download of the tarball into this SR (`--sr-path`: the scan needs no new
    /// flag), then `extra`.
    fn download(&self, socket: &Path, extra: &[&str]) -> Output {
        let url = self.tgz_url();
        let lock = self.dir.path().join("lock");
        let sr = self.sr();
        let mut args = vec![
            "download",
            "--endpoint",
            &url,
            "--sr-path",
            sr.to_str().unwrap(),
            "--lock-dir",
            lock.to_str().unwrap(),
            "--no-lock",
        ];
        args.extend_from_slice(extra);
        self.run(socket, &args)
    }

    /// The `.vhd` files in the SR.
    fn vhds(&self) -> Vec<String> {
        helpers::listing(&self.sr())
            .into_iter()
            .filter(|n| n.ends_with(".vhd"))
            .collect()
    }
}

/// `xe vdi-list sr-uuid=SR` against the stand-in, through XenAPI (tests/plugin/xe.py):
/// the records, sorted by UUID.
fn vdi_list(x: &XapiStandin, sr_uuid: &str) -> Vec<Value> {
    let o = Command::new("python3")
        .arg(helpers::repo().join("tests/plugin/xe.py"))
        .arg(x.socket())
        .arg("vdi-list")
        .arg(format!("sr-uuid={sr_uuid}"))
        .arg("--json")
        .output()
        .unwrap();
    assert!(o.status.success(), "xe.py: {}", stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// The record of VDI `uuid` in `list`.
fn record<'a>(list: &'a [Value], uuid: &str) -> &'a Value {
    list.iter()
        .find(|r| r["uuid"] == uuid)
        .unwrap_or_else(|| panic!("VDI {uuid} is not in xapi's list: {list:#?}"))
}

/// Every call the stand-in answered succeeded, and none used a session after its
/// logout (the stand-in answers SESSION_INVALID then).
fn assert_all_succeeded(x: &XapiStandin) {
    for c in x.calls() {
        assert_eq!(c["result"]["Status"], "Success", "{c}");
    }
}

#[test]
fn download_appears_in_xapi_with_the_file_name() {
    let d = Dom0::new();
    let x = d.xapi(&[]);
    let o = d.download(&x.socket(), &["--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report: Value = serde_json::from_slice(&o.stdout).unwrap();
    let chain: Vec<String> = serde_json::from_value(report["chain"].clone()).unwrap();
    assert_eq!(chain.len(), 3);
    assert_eq!(x.methods(), SCAN_CALLS, "{}", stderr(&o));
    assert_all_succeeded(&x);
    assert_eq!(report["xapi"]["scanned"], true, "{report}");
    assert_eq!(report["xapi"]["labelled"], true, "{report}");
    assert_eq!(report["xapi"]["name_label"], "web-base.tgz", "{report}");

    let list = vdi_list(&x, &d.sr_uuid);
    assert_eq!(list.len(), 3, "{list:#?}");
    let leaf = record(&list, &chain[0]);
    assert_eq!(leaf["name_label"], "web-base.tgz");
    let desc = leaf["name_description"].as_str().unwrap();
    assert!(
        desc.starts_with(&format!(
            "Downloaded by glance-vhd from {} on 2",
            d.tgz_url()
        )),
        "{desc}"
    );
    assert_eq!(report["xapi"]["name_description"], desc);
    assert_eq!(leaf["managed"], true);
    // The parents are introduced by the scan, as sm does; only the leaf is named.
    for u in &chain[1..] {
        assert_eq!(record(&list, u)["name_label"], "", "{u}");
    }
    assert_eq!(
        record(&list, &chain[0])["sm_config"]["vhd-parent"],
        chain[1].as_str()
    );
    assert!(
        stderr(&o).contains(&format!(
            "xapi: SR {} scanned; VDI {} is \"web-base.tgz\"",
            d.sr_uuid, chain[0]
        )),
        "{}",
        stderr(&o)
    );

    // A scan forgets the VDIs whose files are gone, as xapi's does for a file SR.
    for u in &chain {
        std::fs::remove_file(d.sr().join(format!("{u}.vhd"))).unwrap();
    }
    let o = d.download(&x.socket(), &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let again: Vec<String> = stdout(&o).lines().map(str::to_string).collect();
    let mut listed: Vec<String> = vdi_list(&x, &d.sr_uuid)
        .iter()
        .map(|r| r["uuid"].as_str().unwrap().to_string())
        .collect();
    listed.sort();
    let mut want = again.clone();
    want.sort();
    assert_eq!(listed, want);
}

#[test]
fn glance_image_name_becomes_the_label() {
    let _turn = helpers::glance_turn();
    let d = Dom0::new();
    let id = helpers::glance_image(Some(&d.dir.path().join("web-base.tgz")));
    let name = helpers::glance_record(&id)["name"]
        .as_str()
        .unwrap()
        .to_string();
    let x = d.xapi(&[]);
    let lock = d.dir.path().join("lock");
    let sr = d.sr();
    let o = d.run(
        &x.socket(),
        &[
            "download",
            "--endpoint",
            helpers::glance_url(),
            "--token",
            TOKEN,
            "--image-id",
            &id,
            "--sr-path",
            sr.to_str().unwrap(),
            "--lock-dir",
            lock.to_str().unwrap(),
            "--no-lock",
            "--json",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let report: Value = serde_json::from_slice(&o.stdout).unwrap();
    let leaf = report["root"]["uuid"].as_str().unwrap();
    assert_eq!(x.methods(), SCAN_CALLS);
    let list = vdi_list(&x, &d.sr_uuid);
    let rec = record(&list, leaf);
    assert_eq!(rec["name_label"], name.as_str());
    let desc = rec["name_description"].as_str().unwrap();
    assert!(
        desc.starts_with(&format!(
            "Downloaded by glance-vhd from Glance image {id} at "
        )),
        "{desc}"
    );
    // Never a token: not in the description, the calls xapi saw, the output or syslog.
    let calls = std::fs::read_to_string(x.path("state.calls")).unwrap();
    let all = format!(
        "{calls}\n{}\n{}\n{}",
        stdout(&o),
        stderr(&o),
        d.syslog.lines().join("\n")
    );
    assert!(!all.contains(TOKEN), "the token leaked: {all}");
}

#[test]
fn name_label_flag() {
    let d = Dom0::new();
    let x = d.xapi(&[]);
    let o = d.download(&x.socket(), &["--name-label", "nightly web ☃"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let leaf = stdout(&o).lines().next().unwrap().to_string();
    assert_eq!(
        record(&vdi_list(&x, &d.sr_uuid), &leaf)["name_label"],
        "nightly web ☃"
    );

    // A control character (a terminal escape, a newline) is refused before anything runs.
    let before = d.vhds();
    for bad in ["two\nlines", "red\x1b[31m"] {
        let o = d.download(&x.socket(), &["--name-label", bad]);
        assert_eq!(o.status.code(), Some(2), "{bad:?}: {}", stderr(&o));
        assert!(stderr(&o).contains("control character"), "{}", stderr(&o));
    }
    assert_eq!(d.vhds(), before);
}

#[test]
fn no_scan_makes_no_xapi_call() {
    let d = Dom0::new();
    let x = d.xapi(&[]);
    let o = d.download(&x.socket(), &["--no-scan", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(x.methods(), Vec::<String>::new(), "xapi was called");
    let report: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["xapi"]["skipped"], "--no-scan");
    assert_eq!(report["xapi"]["scanned"], false);
    assert_eq!(d.vhds().len(), 3);
    assert_eq!(vdi_list(&x, &d.sr_uuid), Vec::<Value>::new());

    let o = d.download(&x.socket(), &["--no-scan", "--name-label", "x"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

#[test]
fn no_socket_downloads_without_a_scan() {
    let d = Dom0::new();
    let nowhere = d.dir.path().join("no-xapi.sock");
    let o = d.download(&nowhere, &["--json", "-v"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["xapi"]["skipped"], "no xapi socket", "{report}");
    assert_eq!(report["xapi"]["scanned"], false);
    assert_eq!(report["xapi"]["warning"], Value::Null);
    assert!(
        stderr(&o).contains(&format!("no xapi socket: SR {} not scanned", d.sr_uuid)),
        "{}",
        stderr(&o)
    );
    assert_eq!(d.vhds().len(), 3);
    // Not a warning: without -v nothing is said about it.
    let o = d.download(&nowhere, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stderr(&o).contains("xapi"), "{}", stderr(&o));
}

#[test]
fn failed_scan_warns_exits_0_and_keeps_the_vdis() {
    let d = Dom0::new();
    let x = d.xapi(&["--fail", "SR.scan"]);
    let o = d.download(&x.socket(), &["--json"]);
    // The download succeeded: exit 0, the result on stdout, the chain in the SR.
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let report: Value = serde_json::from_slice(&o.stdout).unwrap();
    let chain: Vec<String> = serde_json::from_value(report["chain"].clone()).unwrap();
    let mut files: Vec<String> = chain.iter().map(|u| format!("{u}.vhd")).collect();
    files.sort();
    assert_eq!(d.vhds(), files);
    assert_eq!(report["xapi"]["scanned"], false);
    assert_eq!(report["xapi"]["labelled"], false);
    let warning = report["xapi"]["warning"].as_str().unwrap();
    assert!(
        warning.contains(&format!(
            "downloaded, but xapi does not know the new VDIs yet (xe sr-scan uuid={})",
            d.sr_uuid
        )) && warning.contains("SR_BACKEND_FAILURE_40"),
        "{warning}"
    );
    assert!(
        stderr(&o).contains(&format!("warning: {warning}")),
        "{}",
        stderr(&o)
    );
    let syslog = d.syslog.lines().join("\n");
    assert!(syslog.contains(warning), "{syslog}");
    // The session is logged out after the failure too.
    assert_eq!(
        x.methods(),
        [
            "session.login_with_password",
            "SR.get_by_uuid",
            "SR.scan",
            "session.logout"
        ]
    );

    // The same with --quiet: nothing on stderr, still in syslog, still exit 0.
    let o = d.download(&x.socket(), &["--quiet"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stderr(&o), "");
    assert!(d
        .syslog
        .lines()
        .join("\n")
        .contains("SR_BACKEND_FAILURE_40"));
    assert_eq!(d.vhds().len(), 6);
}

#[test]
fn failed_label_and_unknown_sr_warn_and_exit_0() {
    let d = Dom0::new();
    let x = d.xapi(&["--fail", "VDI.set_name_label"]);
    let o = d.download(&x.socket(), &["--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let report: Value = serde_json::from_slice(&o.stdout).unwrap();
    let leaf = report["root"]["uuid"].as_str().unwrap();
    assert_eq!(report["xapi"]["scanned"], true);
    assert_eq!(report["xapi"]["labelled"], false);
    assert!(
        report["xapi"]["warning"]
            .as_str()
            .unwrap()
            .contains(&format!("the new VDI {leaf} is in xapi, but not labelled")),
        "{report}"
    );
    assert_eq!(x.methods().last().unwrap(), "session.logout");
    assert_eq!(vdi_list(&x, &d.sr_uuid).len(), 3);

    // An SR xapi does not know: UUID_INVALID, as xapi answers; the download stands.
    let other = XapiStandin::start(&[]);
    let o = d.download(&other.socket(), &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("UUID_INVALID") && stderr(&o).contains(&d.sr_uuid),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        other.methods(),
        [
            "session.login_with_password",
            "SR.get_by_uuid",
            "session.logout"
        ]
    );
    assert_eq!(d.vhds().len(), 6);
}

#[test]
fn sr_uuid_is_short_for_the_mount_path() {
    let d = Dom0::new();
    let nowhere = d.dir.path().join("no-xapi.sock");
    let url = d.tgz_url();
    let lock = d.dir.path().join("lock");
    let lock = lock.to_str().unwrap();
    let o = d.run(
        &nowhere,
        &[
            "download",
            "--endpoint",
            &url,
            "--sr",
            &d.sr_uuid,
            "--lock-dir",
            lock,
            "--no-lock",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let leaf = stdout(&o).lines().next().unwrap().to_string();
    assert!(d.sr().join(format!("{leaf}.vhd")).exists());

    // Upload and sweep take it too.
    let out = d.dir.path().join("back.tgz");
    let url = format!("file://{}", out.display());
    let lock = d.dir.path().join("lock");
    let o = d.run(
        &nowhere,
        &[
            "upload",
            "--endpoint",
            &url,
            "--sr",
            &d.sr_uuid,
            "--leaf",
            &leaf,
            "--no-lock",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(out.metadata().unwrap().len() > 0);
    let o = d.run(
        &nowhere,
        &[
            "sweep",
            "--sr",
            &d.sr_uuid,
            "--lock-dir",
            lock.to_str().unwrap(),
            "--json",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));

    // A UUID by the canonical rule, or nothing runs (usage error, exit 2).
    let before = d.vhds();
    for bad in [
        "not-a-uuid",
        "../../etc",
        &d.sr_uuid.to_uppercase(),
        &d.sr_uuid.replace('-', ""),
        "00000000-0000-0000-0000-000000000000",
    ] {
        for args in [
            vec!["download", "--endpoint", &url, "--sr", bad],
            vec!["sweep", "--sr", bad],
        ] {
            let o = d.run(&nowhere, &args);
            assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
            assert!(
                stderr(&o).contains("not a UUID in canonical form"),
                "{}",
                stderr(&o)
            );
        }
    }
    // Exactly one of --sr and --sr-path.
    let sr = d.sr();
    let o = d.run(
        &nowhere,
        &[
            "sweep",
            "--sr",
            &d.sr_uuid,
            "--sr-path",
            sr.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let o = d.run(&nowhere, &["sweep"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert_eq!(d.vhds(), before);
}
