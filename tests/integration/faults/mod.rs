//! The fault suite (README "Guarantees"): the real Glance 33 on loopback behind the
//! project's own HTTP-aware fault proxy (tests/peers/fault_proxy.py), the binary killed
//! with SIGKILL in each phase of an import, a file system that fills up, and runs that
//! race each other. After every case the promises are checked, not assumed:
//!
//! * the SR holds exactly the files it held, byte for byte — or, after a completed
//!   import, the whole chain too, with `vhd check --parents` valid;
//! * no staging directory is left (after `sweep`, for a killed process);
//! * no Glance image becomes `active` with partial data;
//! * a download given a retry resumes where the cut was (`Range`) and ends with the SR
//!   byte-identical to an uncut download (the download table's "resumed" column).
//!
//! `make test` runs a short form; `make faults` (GLANCE_VHD_FAULTS=full) cuts at every
//! offset tests/peers/offsets.py finds (≥ 20 per direction) and prints the table each
//! test writes to target/tmp/faults-*.md.

use crate::helpers;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::{glance_record, stderr, stdout};

mod local;

/// One table per test: case → outcome (and, for downloads, what a retry did: resumed
/// where, or —), written to target/tmp/faults-<name>.md.
struct Report {
    name: &'static str,
    /// The download table's "resumed" column.
    resumed: bool,
    rows: Vec<Vec<String>>,
}

impl Report {
    fn new(name: &'static str) -> Report {
        Report {
            name,
            resumed: false,
            rows: Vec::new(),
        }
    }

    fn with_resumed(name: &'static str) -> Report {
        let mut r = Report::new(name);
        r.resumed = true;
        r
    }

    fn row(&mut self, case: impl Into<String>, fault: &str, exit: Option<i32>, outcome: &str) {
        self.row_resumed(case, fault, exit, outcome, "—");
    }

    fn row_resumed(
        &mut self,
        case: impl Into<String>,
        fault: &str,
        exit: Option<i32>,
        outcome: &str,
        resumed: &str,
    ) {
        let exit = exit.map_or("killed".to_string(), |c| c.to_string());
        let mut row = vec![case.into(), fault.to_string(), exit, outcome.to_string()];
        if self.resumed {
            row.push(resumed.to_string());
        }
        self.rows.push(row);
    }
}

impl Drop for Report {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        let (head, rule) = if self.resumed {
            (
                "| case | fault | exit | outcome | resumed (--retries 1) |",
                "|---|---|---|---|---|",
            )
        } else {
            ("| case | fault | exit | outcome |", "|---|---|---|---|")
        };
        let mut t = format!("### {}\n\n{head}\n{rule}\n", self.name);
        for r in &self.rows {
            t.push_str(&format!("| {} |\n", r.join(" | ")));
        }
        t.push_str(&format!("\n{} cases, all as promised.\n", self.rows.len()));
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("faults-{}.md", self.name));
        let _ = std::fs::write(path, &t);
        println!("{t}");
    }
}

/// A scratch directory with an SR (named like one) that already holds a valid chain
/// of two VDIs, which no fault may touch.
struct Site {
    dir: tempfile::TempDir,
    samples: tempfile::TempDir,
    sr: PathBuf,
}

impl Site {
    fn new() -> Site {
        let dir = tempfile::tempdir().unwrap();
        let samples = helpers::unpacked_samples();
        let sr = helpers::new_sr(dir.path());
        let (leaf, base) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
        let leaf = sr.join(format!("{leaf}.vhd"));
        let base = sr.join(format!("{base}.vhd"));
        std::fs::copy(samples.path().join("child.vhd"), &leaf).unwrap();
        std::fs::copy(samples.path().join("parent.vhd"), &base).unwrap();
        let s = Site { dir, samples, sr };
        let o = s.run(&[
            "vhd",
            "set-parent",
            leaf.to_str().unwrap(),
            base.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        s
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn lock_dir(&self) -> String {
        self.path("sm-lock").to_string_lossy().into_owned()
    }

    fn run(&self, args: &[&str]) -> Output {
        helpers::run(self.dir.path(), args)
    }

    /// `tar -zc` of the tap sample chain as 0.vhd (leaf) … 2.vhd (base), as the old
    /// plugin made images.
    fn tarball(&self, name: &str) -> PathBuf {
        let out = self.path(name);
        helpers::gnu_tar(self.samples.path(), &helpers::TAP_CHAIN, &out);
        out
    }

    /// Every file in the SR with the SHA-256 of its bytes.
    fn snapshot(&self) -> BTreeMap<String, String> {
        helpers::snapshot(&self.sr)
    }

    fn staging_dirs(&self) -> Vec<String> {
        helpers::staging_dirs(&self.sr)
    }

    /// Every VHD in the SR opens, and so does its whole chain of parents.
    fn assert_chains_whole(&self, what: &str) {
        for e in std::fs::read_dir(&self.sr).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "vhd") {
                let o = self.run(&["vhd", "check", "--parents", p.to_str().unwrap()]);
                assert!(o.status.success(), "{what}: {}", stdout(&o));
            }
        }
    }

    /// The SR exactly as `before`, and no staging directory.
    fn assert_untouched(&self, before: &BTreeMap<String, String>, what: &str) {
        assert_eq!(&self.snapshot(), before, "{what}: the SR changed");
        assert!(self.staging_dirs().is_empty(), "{what}: staging left");
    }

    fn sweep(&self) -> Output {
        let o = self.run(&[
            "sweep",
            "--sr-path",
            self.sr.to_str().unwrap(),
            "--older-than",
            "0",
            "--lock-dir",
            &self.lock_dir(),
            "--json",
        ]);
        assert!(o.status.success(), "sweep: {}", stderr(&o));
        o
    }
}

/// The fault proxy in front of the test Glance.
fn fault_proxy(direction: &str, fault: &str, at: u64, log: &Path) -> helpers::Peer {
    let port = helpers::glance_port().to_string();
    let at = at.to_string();
    helpers::Peer::spawn_script(
        "tests/peers/fault_proxy.py",
        &[
            &port,
            "--direction",
            direction,
            "--fault",
            fault,
            "--at",
            &at,
            "--log",
            log.to_str().unwrap(),
        ],
    )
}

/// [label, compressed offset] pairs inside the structures of `tgz`.
fn offsets(tgz: &Path) -> Vec<(String, u64)> {
    let o = Command::new("python3")
        .arg(helpers::repo().join("tests/peers/offsets.py"))
        .arg(tgz)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Vec<(String, u64)> = serde_json::from_slice(&o.stdout).unwrap();
    if helpers::faults_full() {
        assert!(v.len() >= 20, "{v:?}");
        v
    } else {
        // The short form: the gzip header, a tar header, a footer, the trailer.
        let keep = [
            "tar header of ./1.vhd",
            "0.vhd footer",
            "gzip trailer (size)",
        ];
        let mut short: Vec<(String, u64)> = vec![("gzip header".into(), 5)];
        short.extend(v.into_iter().filter(|(l, _)| keep.contains(&l.as_str())));
        short
    }
}

/// The byte a download resumed at, from its `-v` line "… resumed at byte N of M …".
fn resumed_at(stderr: &str) -> Option<u64> {
    let rest = &stderr[stderr.find("resumed at byte ")? + "resumed at byte ".len()..];
    rest.split_whitespace().next()?.parse().ok()
}

fn exit_of(o: &Output) -> Option<i32> {
    o.status.code()
}

/// Cut, reset, stall and drip the image body of a download at offsets inside every
/// structure of the stream: each fails cleanly (retryable, exit 5), the SR is
/// untouched, nothing is left; with one retry the same fault is survived.
#[test]
fn download_faults_leave_the_sr_untouched() {
    let _turn = helpers::glance_turn();
    let mut report = Report::with_resumed("download");
    let site = Site::new();
    let tgz = site.tarball("img.tgz");
    let id = helpers::glance_image(Some(&tgz));
    let before = site.snapshot();
    let log = site.path("proxy.log");
    let lock = site.lock_dir();
    let download_from = |url: &str, extra: &[&str]| {
        let mut a = vec![
            "download",
            "--endpoint",
            url,
            "--image-id",
            &id,
            "--sr-path",
            site.sr.to_str().unwrap(),
            "--lock-dir",
            &lock,
            "--no-lock",
        ];
        a.extend_from_slice(extra);
        site.run(&a)
    };
    let download = |proxy: &helpers::Peer, extra: &[&str]| download_from(&proxy.url(), extra);
    // What an uncut download leaves, under fixed VDI UUIDs: every resumed download
    // must leave exactly this.
    let uuids = [
        "eeeeeeee-0000-4000-8000-000000000001",
        "eeeeeeee-0000-4000-8000-000000000002",
        "eeeeeeee-0000-4000-8000-000000000003",
    ];
    let with_uuids = |extra: &[&'static str]| -> Vec<&'static str> {
        let mut a: Vec<&str> = uuids.iter().flat_map(|u| ["--uuid", *u]).collect();
        a.extend_from_slice(extra);
        a
    };
    let o = download_from(helpers::glance_url(), &with_uuids(&["--retries", "0"]));
    assert!(o.status.success(), "uncut: {}", stderr(&o));
    let uncut = site.snapshot();
    assert_eq!(uncut.len(), before.len() + 3);
    let forget = |what: &str| {
        for u in uuids {
            std::fs::remove_file(site.sr.join(format!("{u}.vhd"))).unwrap();
        }
        site.assert_untouched(&before, what);
    };
    forget("uncut");
    let faults: &[&str] = if helpers::faults_full() {
        &["cut", "reset"]
    } else {
        &["cut"]
    };
    for (label, at) in offsets(&tgz) {
        for fault in faults {
            let proxy = fault_proxy("download", fault, at, &log);
            // A short idle timeout bounds a case whose fault did not reach us.
            let o = download(&proxy, &["--retries", "0", "--idle-timeout", "10"]);
            let what = format!("{fault} at {at} ({label})");
            assert_eq!(exit_of(&o), Some(5), "{what}: {}", stderr(&o));
            site.assert_untouched(&before, &what);
            // The same fault with one retry: it resumes where the body broke.
            let proxy = fault_proxy("download", fault, at, &log);
            let r = download(
                &proxy,
                &with_uuids(&[
                    "--retries",
                    "1",
                    "--retry-delay",
                    "0.1",
                    "--idle-timeout",
                    "10",
                    "-v",
                ]),
            );
            assert!(r.status.success(), "{what}, resumed: {}", stderr(&r));
            let from = resumed_at(&stderr(&r))
                .unwrap_or_else(|| panic!("{what}: did not resume: {}", stderr(&r)));
            // A cut (FIN) delivers every byte before it; a reset may drop the last
            // ones in flight, and the resume starts where our bytes ended.
            if *fault == "cut" {
                assert_eq!(from, at, "{what}: {}", stderr(&r));
            } else {
                assert!(from <= at, "{what}: resumed at {from}");
            }
            assert_eq!(
                site.snapshot(),
                uncut,
                "{what}: the SR differs from an uncut download"
            );
            forget(&what);
            report.row_resumed(
                format!("{label}, byte {at}"),
                fault,
                exit_of(&o),
                "retryable error; SR untouched, no staging",
                &format!("at byte {from}; SR = uncut"),
            );
        }
    }
    if !helpers::faults_full() {
        let proxy = fault_proxy("download", "reset", 4000, &log);
        let o = download(&proxy, &["--retries", "0"]);
        assert_eq!(exit_of(&o), Some(5), "reset: {}", stderr(&o));
        site.assert_untouched(&before, "reset");
        report.row(
            "1.vhd data, byte 4000",
            "reset",
            exit_of(&o),
            "retryable error; SR untouched, no staging",
        );
    }
    // A stall: the idle timeout fires.
    let proxy = fault_proxy("download", "stall", 7000, &log);
    let t = Instant::now();
    let o = download(&proxy, &["--retries", "0", "--idle-timeout", "2"]);
    let took = t.elapsed();
    assert_eq!(exit_of(&o), Some(5), "stall: {}", stderr(&o));
    assert!(took < Duration::from_secs(10), "stall: {took:?}");
    assert!(
        stderr(&o).to_lowercase().contains("timeout") || stderr(&o).contains("timed out"),
        "{}",
        stderr(&o)
    );
    site.assert_untouched(&before, "stall");
    report.row(
        "stall at byte 7000, --idle-timeout 2",
        "stall",
        exit_of(&o),
        &format!(
            "idle timeout after {:.1} s; SR untouched",
            took.as_secs_f64()
        ),
    );
    // A drip (64 B / 0.25 s): no idle timeout fires; the deadline does.
    let proxy = fault_proxy("download", "drip", 3000, &log);
    let t = Instant::now();
    let o = download(
        &proxy,
        &["--retries", "0", "--idle-timeout", "5", "--deadline", "3"],
    );
    let took = t.elapsed();
    assert_eq!(exit_of(&o), Some(5), "drip: {}", stderr(&o));
    assert!(took < Duration::from_secs(10), "drip: {took:?}");
    site.assert_untouched(&before, "drip");
    report.row(
        "drip from byte 3000, --deadline 3",
        "drip",
        exit_of(&o),
        &format!("deadline after {:.1} s; SR untouched", took.as_secs_f64()),
    );
    // A stall with a retry: the idle timeout breaks the body, which resumes on a new
    // connection.
    let proxy = fault_proxy("download", "stall", 7000, &log);
    let o = download(
        &proxy,
        &with_uuids(&[
            "--retries",
            "1",
            "--retry-delay",
            "0.1",
            "--idle-timeout",
            "2",
            "-v",
        ]),
    );
    assert!(o.status.success(), "stall + retry: {}", stderr(&o));
    assert_eq!(resumed_at(&stderr(&o)), Some(7000), "{}", stderr(&o));
    assert_eq!(site.snapshot(), uncut, "stall + retry");
    forget("stall + retry");
    report.row_resumed(
        "stall at byte 7000, --idle-timeout 2, --retries 1",
        "stall",
        exit_of(&o),
        "idle timeout, then resumed: SR = uncut",
        "at byte 7000; SR = uncut",
    );
    // One fault, one retry: the whole chain arrives and checks.
    let proxy = fault_proxy("download", "cut", 6777, &log);
    let o = download(
        &proxy,
        &["--retries", "1", "--retry-delay", "0.1", "--json", "-v"],
    );
    assert!(o.status.success(), "cut + retry: {}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["summary"]["attempts"], 2);
    assert_eq!(v["chain"].as_array().unwrap().len(), 3);
    assert_eq!(site.snapshot().len(), before.len() + 3);
    site.assert_chains_whole("cut + retry");
    assert!(site.staging_dirs().is_empty());
    assert_eq!(resumed_at(&stderr(&o)), Some(6777), "{}", stderr(&o));
    report.row_resumed(
        "cut at byte 6777 (0.vhd footer copy), --retries 1",
        "cut",
        exit_of(&o),
        "second attempt: whole chain in the SR, check --parents valid",
        "at byte 6777",
    );
}

/// Cut, reset, stall and drip the tarball of an upload on its way to Glance: the
/// image never becomes active, the SR is untouched (hard links only), nothing is left;
/// with one retry the image becomes active with our checksum.
#[test]
fn upload_faults_never_activate_a_partial_image() {
    let _turn = helpers::glance_turn();
    let mut report = Report::new("upload");
    let site = Site::new();
    // The chain to upload: the SR's own leaf.
    let leaf = site
        .snapshot()
        .keys()
        .find(|n| {
            let o = site.run(&[
                "vhd",
                "query",
                "-n",
                site.sr.join(n).to_str().unwrap(),
                "-p",
            ]);
            !stdout(&o).contains("has no parent")
        })
        .unwrap()
        .trim_end_matches(".vhd")
        .to_string();
    let before = site.snapshot();
    // Offsets inside our own stream: our tarball of the same chain, to a file.
    let local = site.path("ours.tgz");
    let o = site.run(&[
        "upload",
        "--endpoint",
        &format!("file://{}", local.display()),
        "--sr-path",
        site.sr.to_str().unwrap(),
        "--leaf",
        &leaf,
        "--no-lock",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let log = site.path("proxy.log");
    let upload = |proxy: &helpers::Peer, id: &str, extra: &[&str]| {
        let url = proxy.url();
        let mut a = vec![
            "upload",
            "--endpoint",
            &url,
            "--image-id",
            id,
            "--sr-path",
            site.sr.to_str().unwrap(),
            "--leaf",
            &leaf,
            "--no-lock",
        ];
        a.extend_from_slice(extra);
        site.run(&a)
    };
    let check_not_active = |id: &str, what: &str| -> String {
        let rec = glance_record(id);
        let status = rec["status"].as_str().unwrap_or_default().to_string();
        assert_ne!(status, "active", "{what}: a partial upload became active");
        status
    };
    let faults: &[&str] = if helpers::faults_full() {
        &["cut", "reset"]
    } else {
        &["cut"]
    };
    for (label, at) in offsets(&local) {
        for fault in faults {
            let id = helpers::glance_image(None);
            let proxy = fault_proxy("upload", fault, at, &log);
            let o = upload(&proxy, &id, &["--retries", "0", "--idle-timeout", "10"]);
            let what = format!("{fault} at {at} ({label})");
            assert!(!o.status.success(), "{what}: accepted");
            assert_ne!(exit_of(&o), Some(101), "{what}: panicked");
            let status = check_not_active(&id, &what);
            site.assert_untouched(&before, &what);
            report.row(
                format!("{label}, byte {at}"),
                fault,
                exit_of(&o),
                &format!("image stays {status:?}; SR untouched, no staging"),
            );
        }
    }
    // A stall: the idle timeout fires (on the write, or on the wait for an answer).
    let id = helpers::glance_image(None);
    let proxy = fault_proxy("upload", "stall", 5000, &log);
    let t = Instant::now();
    let o = upload(&proxy, &id, &["--retries", "0", "--idle-timeout", "2"]);
    let took = t.elapsed();
    assert_eq!(exit_of(&o), Some(5), "stall: {}", stderr(&o));
    assert!(took < Duration::from_secs(10), "stall: {took:?}");
    let status = check_not_active(&id, "stall");
    site.assert_untouched(&before, "stall");
    report.row(
        "stall at byte 5000, --idle-timeout 2",
        "stall",
        exit_of(&o),
        &format!(
            "idle timeout after {:.1} s; image stays {status:?}",
            took.as_secs_f64()
        ),
    );
    // A drip: the deadline fires.
    let id = helpers::glance_image(None);
    let proxy = fault_proxy("upload", "drip", 2000, &log);
    let t = Instant::now();
    let o = upload(
        &proxy,
        &id,
        &["--retries", "0", "--idle-timeout", "5", "--deadline", "3"],
    );
    let took = t.elapsed();
    assert_eq!(exit_of(&o), Some(5), "drip: {}", stderr(&o));
    assert!(took < Duration::from_secs(10), "drip: {took:?}");
    let status = check_not_active(&id, "drip");
    site.assert_untouched(&before, "drip");
    report.row(
        "drip from byte 2000, --deadline 3",
        "drip",
        exit_of(&o),
        &format!(
            "deadline after {:.1} s; image stays {status:?}",
            took.as_secs_f64()
        ),
    );
    // One fault, one retry: active, with the checksum of what we sent.
    let id = helpers::glance_image(None);
    let proxy = fault_proxy("upload", "reset", 3000, &log);
    let o = upload(
        &proxy,
        &id,
        &["--retries", "1", "--retry-delay", "0.1", "--json"],
    );
    assert!(o.status.success(), "reset + retry: {}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let rec = glance_record(&id);
    assert_eq!(rec["status"], "active");
    assert_eq!(rec["checksum"], v["summary"]["md5"]);
    site.assert_untouched(&before, "reset + retry");
    report.row(
        "reset at byte 3000, --retries 1",
        "reset",
        exit_of(&o),
        "second attempt: active, checksum = ours",
    );
    // The whole upload arrived but its answer was lost: the retry finds the image
    // active with exactly our bytes and calls it done, sending nothing twice.
    let id = helpers::glance_image(None);
    let proxy = fault_proxy("upload-answer", "cut", 0, &log);
    let o = upload(
        &proxy,
        &id,
        &["--retries", "1", "--retry-delay", "0.1", "--json"],
    );
    assert!(o.status.success(), "answer lost: {}", stderr(&o));
    assert!(stderr(&o).contains("completed after all"), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["summary"]["attempts"], 2);
    let rec = glance_record(&id);
    assert_eq!(rec["status"], "active");
    assert_eq!(rec["checksum"], v["summary"]["md5"]);
    assert_eq!(rec["size"], v["summary"]["bytes"]);
    site.assert_untouched(&before, "answer lost");
    report.row(
        "the answer to a complete upload lost (cut before the 204), --retries 1",
        "cut",
        exit_of(&o),
        "the retry finds it active with our checksum: success, not sent twice",
    );
}
