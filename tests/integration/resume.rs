//! Resumable downloads (issue 14 item 2), against the real Glance 33 behind the fault
//! proxy (tests/peers/fault_proxy.py), which cuts the image body once and counts every
//! byte it passes on to us. A break resumes with `Range` into the same stream: the SR ends
//! byte-identical to an uncut download, and one cut at 90 % costs about 10 % more, not
//! 90 %. A store that ignores ranges (the proxy drops the `Range` header: Glance answers
//! 200) still works by starting over; so does a download with no retry left (it fails as
//! before). The plugin resumes too, and so does a download signed in through Keystone.
//!
//! The fault suite (`faults::download_faults_leave_the_sr_untouched`) resumes at every
//! cut offset of its table.

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::{json, Value};

use crate::cli::Syslog;
use crate::helpers::{self, stderr, Peer};

const UUID: &str = "dddddddd-0000-4000-8000-000000000001";

/// An image of one VDI of random data (incompressible: the wire carries about its size)
/// in the test Glance, and a scratch directory to download it into.
struct Work {
    dir: tempfile::TempDir,
    id: String,
    /// The image's size in Glance (the gzipped tarball).
    size: u64,
}

impl Work {
    fn new(mib: usize) -> Work {
        let dir = tempfile::tempdir().unwrap();
        let sr = helpers::new_sr(dir.path());
        let vdi = helpers::random_vdi(&sr, mib);
        let tgz = dir.path().join("image.tgz");
        let o = helpers::run(
            dir.path(),
            &[
                "upload",
                "--endpoint",
                &format!("file://{}", tgz.display()),
                "--sr-path",
                sr.to_str().unwrap(),
                "--leaf",
                &vdi,
                "--no-lock",
            ],
        );
        assert!(o.status.success(), "{}", stderr(&o));
        let size = std::fs::metadata(&tgz).unwrap().len();
        let id = helpers::glance_image(Some(&tgz));
        Work { dir, id, size }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `download -v --json` of the image from `endpoint` into a new SR, as VDI [`UUID`],
    /// with syslog read; the SR, the run and its syslog lines.
    fn download(&self, endpoint: &str, extra: &[&str]) -> (PathBuf, Output, Vec<String>) {
        let sr = helpers::new_sr(self.dir.path());
        let lock = self.path("lock");
        let mut args = vec![
            "download",
            "--endpoint",
            endpoint,
            "--image-id",
            &self.id,
            "--sr-path",
            sr.to_str().unwrap(),
            "--lock-dir",
            lock.to_str().unwrap(),
            "--no-lock",
            "--uuid",
            UUID,
            "--retry-delay",
            "0.1",
            "--idle-timeout",
            "10",
            "--json",
            "-v",
        ];
        args.extend_from_slice(extra);
        let sock = tempfile::tempdir().unwrap();
        let log = Syslog::bind(sock.path());
        let o = std::process::Command::new(helpers::bin())
            .args(&args)
            .current_dir(self.dir.path())
            .env("GLANCE_VHD_SYSLOG_SOCKET", &log.path)
            .output()
            .unwrap();
        (sr, o, log.lines())
    }

    /// The SR of an uncut download, straight from Glance.
    fn uncut(&self) -> std::collections::BTreeMap<String, String> {
        let (sr, o, _) = self.download(helpers::glance_url(), &["--retries", "0"]);
        assert!(o.status.success(), "uncut: {}", stderr(&o));
        helpers::snapshot(&sr)
    }
}

/// The fault proxy in front of the test Glance (or `port`): one cut of the image body at
/// byte `at`, and every response logged with its size.
fn proxy(port: u16, at: u64, log: &Path, extra: &[&str]) -> Peer {
    let port = port.to_string();
    let at = at.to_string();
    let mut args = vec![
        port.as_str(),
        "--direction",
        "download",
        "--fault",
        "cut",
        "--at",
        &at,
        "--log",
        log.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    Peer::spawn_script("tests/peers/fault_proxy.py", &args)
}

/// Bytes the proxy passed on to us (heads and bodies), from its log.
fn fetched(log: &Path) -> u64 {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            l.strip_prefix("response ")?
                .strip_suffix(" bytes")?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", stderr(o)))
}

#[test]
fn a_cut_at_90_percent_resumes_and_fetches_only_the_rest() {
    let _turn = helpers::glance_turn();
    let w = Work::new(8);
    let uncut = w.uncut();
    let at = w.size * 9 / 10;
    let log = w.path("proxy.log");
    let p = proxy(helpers::glance_port(), at, &log, &[]);
    let (sr, o, syslog) = w.download(&p.url(), &["--retries", "1"]);
    let got = fetched(&log);
    let ratio = got as f64 / w.size as f64;
    println!(
        "image {} bytes, cut at byte {at}: {got} bytes fetched, {ratio:.3}× the image",
        w.size
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(json(&o)["summary"]["attempts"], 2, "a resume is an attempt");
    assert_eq!(
        helpers::snapshot(&sr),
        uncut,
        "the SR differs from an uncut download"
    );
    let said = format!("resumed at byte {at} of {}", w.size);
    assert!(stderr(&o).contains(&said), "-v: {}", stderr(&o));
    assert!(
        syslog.iter().any(|l| l.contains(&said)),
        "syslog: {syslog:#?}"
    );
    assert!(
        syslog
            .iter()
            .any(|l| l.contains(&format!("broke at byte {at}"))),
        "syslog: {syslog:#?}"
    );
    assert!(
        ratio <= 1.1,
        "{got} bytes fetched for an image of {}: {ratio:.2}×",
        w.size
    );
}

#[test]
fn a_store_that_ignores_range_starts_over() {
    let _turn = helpers::glance_turn();
    let w = Work::new(2);
    let uncut = w.uncut();
    let at = w.size / 2;
    let log = w.path("proxy.log");
    let p = proxy(helpers::glance_port(), at, &log, &["--strip-range"]);
    let (sr, o, syslog) = w.download(&p.url(), &["--retries", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // The resume took the one retry and gave it back: the restart is that attempt.
    assert_eq!(json(&o)["summary"]["attempts"], 2);
    assert_eq!(helpers::snapshot(&sr), uncut);
    let err = stderr(&o);
    assert!(
        err.contains("HTTP 200") && err.contains("starting over"),
        "{err}"
    );
    assert!(!err.contains("resumed at byte"), "{err}");
    assert!(
        syslog.iter().any(|l| l.contains("cannot resume at byte")),
        "syslog: {syslog:#?}"
    );
    // The whole image again after the cut.
    assert!(fetched(&log) >= at + w.size, "{} bytes", fetched(&log));
}

/// Glance answers 206, but for a range that does not start where we stopped (the proxy
/// asks for one byte later): a restart, never a splice.
#[test]
fn another_range_is_a_restart_not_a_splice() {
    let _turn = helpers::glance_turn();
    let w = Work::new(1);
    let uncut = w.uncut();
    let at = w.size / 2;
    let log = w.path("proxy.log");
    let p = proxy(helpers::glance_port(), at, &log, &["--shift-range", "1"]);
    let (sr, o, _) = w.download(&p.url(), &["--retries", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(json(&o)["summary"]["attempts"], 2);
    assert_eq!(helpers::snapshot(&sr), uncut);
    let err = stderr(&o);
    assert!(
        err.contains(&format!(
            "Content-Range \"bytes {}-{}/{}\" is not the rest of the image from byte {at}",
            at + 1,
            w.size - 1,
            w.size
        )),
        "{err}"
    );
    assert!(!err.contains("resumed at byte"), "{err}");
}

#[test]
fn with_no_retry_left_a_break_fails_as_before() {
    let _turn = helpers::glance_turn();
    let w = Work::new(1);
    let log = w.path("proxy.log");
    let p = proxy(helpers::glance_port(), w.size / 2, &log, &[]);
    let (sr, o, _) = w.download(&p.url(), &["--retries", "0"]);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert!(!stderr(&o).contains("resum"), "{}", stderr(&o));
    assert!(helpers::snapshot(&sr).is_empty());
}

/// `download_vhd2` as Nova calls it, through the proxy: the plugin resumes within the
/// call (it has no restarts of its own) and replies as usual.
#[test]
fn the_plugin_resumes_within_the_call() {
    let _turn = helpers::glance_turn();
    let w = Work::new(2);
    let uncut = w.uncut();
    let at = w.size * 3 / 4;
    let log = w.path("proxy.log");
    let p = proxy(helpers::glance_port(), at, &log, &[]);
    let shim = crate::plugin::install_shim(w.dir.path(), "glance");
    let sr = helpers::new_sr(w.dir.path());
    let sock = tempfile::tempdir().unwrap();
    let syslog = Syslog::bind(sock.path());
    let v = crate::plugin::call(json!({
        "shim": shim, "fn": "download_vhd2", "form": "xapi", "protocol": 0,
        "env": {
            "GLANCE_VHD_LOCK_DIR": w.path("lock").to_str().unwrap(),
            "GLANCE_VHD_SYSLOG_SOCKET": syslog.path.to_str().unwrap(),
        },
        "unpickle": true,
        "kwargs": {
            "image_id": w.id, "endpoint": p.url(), "uuid_stack": [UUID],
            "sr_path": sr, "extra_headers": {}, "api_version": 2,
        },
    }));
    let lines = syslog.lines();
    assert_eq!(
        crate::plugin::success(&v),
        &json!({"root": {"uuid": UUID}}),
        "{v}\n{lines:#?}"
    );
    assert_eq!(helpers::snapshot(&sr), uncut);
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&format!("resumed at byte {at} of {}", w.size))),
        "syslog: {lines:#?}"
    );
    let got = fetched(&log);
    assert!(got <= w.size + w.size / 10, "{got} bytes for {}", w.size);
}

/// Signed in through Keystone (a Glance that checks every token through
/// keystonemiddleware): the resumed request carries the session's token like every
/// other, and succeeds.
#[test]
fn a_keystone_session_resumes() {
    use crate::openstack_stack::{self as stack, env_refs, run_clean_logged};
    let s = stack::plain();
    let _turn = stack::stack_turn();
    let dir = tempfile::tempdir().unwrap();
    let sr = helpers::new_sr(dir.path());
    let chain = helpers::import_tap_chain(dir.path(), &sr, &[]);
    let env = s.password_env();
    let env = env_refs(&env);
    let mut up = vec![
        "upload",
        "--sr-path",
        sr.to_str().unwrap(),
        "--no-lock",
        "--json",
        "--create",
        "--name",
        "keystone-resume",
    ];
    for u in &chain {
        up.extend(["--vdi", u.as_str()]);
    }
    let (o, _) = run_clean_logged(dir.path(), &up, &env);
    assert!(o.status.success(), "upload: {}", stderr(&o));
    let id = json(&o)["image_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no image id: {}", crate::helpers::stdout(&o)))
        .to_string();
    let size = s.record(&id)["size"].as_u64().unwrap();
    let port: u16 = s
        .glance_url()
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap();
    let at = size * 9 / 10;
    let log = dir.path().join("proxy.log");
    let p = proxy(port, at, &log, &[]);
    let into = helpers::new_sr(dir.path());
    let url = p.url();
    let (o, lines) = run_clean_logged(
        dir.path(),
        &[
            "download",
            "--endpoint",
            &url,
            "--image-id",
            &id,
            "--sr-path",
            into.to_str().unwrap(),
            "--no-lock",
            "--retries",
            "1",
            "--retry-delay",
            "0.1",
            "--json",
            "-v",
        ],
        &env,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let said = format!("resumed at byte {at} of {size}");
    assert!(stderr(&o).contains(&said), "{}", stderr(&o));
    assert!(lines.iter().any(|l| l.contains(&said)), "{lines:#?}");
    assert_eq!(json(&o)["chain"].as_array().unwrap().len(), 3);
    // The range request went through keystonemiddleware with our token.
    let ranged = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("request GET") && l.ends_with("/file"))
        .count();
    assert_eq!(ranged, 2, "the first GET and the resumed one");
}
