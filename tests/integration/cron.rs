//! What a nightly cron job leaves behind (issue 13, item 3): syslog lines for the start,
//! every retry with its cause, the summary and any failure with its exit code; progress
//! lines that count each byte once (never past 100 %, the last one the full count), in
//! the CLI and in plugin mode; `-v` and `-vv` as `--help` describes them, without a
//! token; `--json` documents on one line. Each test failed on the binary before
//! (`/tmp/glance-vhd-r3`).

use std::net::TcpListener;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{json, Value};

use super::plugin::{call, install_shim, success};
use crate::helpers::{self, stderr, stdout, Peer};

const TOKEN: &str = "SECRETVALUE";

/// A datagram socket standing in for /dev/log, read on its own thread while the run
/// goes on, as a syslog daemon reads it: its queue holds only
/// `net.unix.max_dgram_qlen` (10) lines, and frequent progress lines overflow it.
struct Syslog {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    reader: JoinHandle<Vec<String>>,
}

impl Syslog {
    fn bind(dir: &Path) -> Syslog {
        let path = dir.join("log.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let reader = std::thread::spawn(move || {
            let mut out = Vec::new();
            let mut buf = [0u8; 8192];
            loop {
                match sock.recv(&mut buf) {
                    Ok(n) => out.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
                    // Quiet for 100 ms after the run ended: everything it sent is read.
                    Err(_) if stopped.load(Ordering::Relaxed) => return out,
                    Err(_) => {}
                }
            }
        });
        Syslog { path, stop, reader }
    }

    /// Every line received, in order (call once the run has ended).
    fn lines(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        self.reader.join().unwrap()
    }
}

/// An SR with one VDI of random data (incompressible: the wire carries about its size).
struct Site {
    dir: tempfile::TempDir,
    sr: PathBuf,
    vdi: String,
}

impl Site {
    fn new(mib: usize) -> Site {
        let dir = tempfile::tempdir().unwrap();
        let sr = helpers::new_sr(dir.path());
        let vdi = helpers::random_vdi(&sr, mib);
        Site { dir, sr, vdi }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn sr(&self) -> &str {
        self.sr.to_str().unwrap()
    }

    /// A fresh, empty SR to download into.
    fn new_sr(&self) -> PathBuf {
        helpers::new_sr(self.dir.path())
    }

    /// The VHD file's size: what an upload's progress counts.
    fn vhd_bytes(&self) -> u64 {
        std::fs::metadata(self.sr.join(format!("{}.vhd", self.vdi)))
            .unwrap()
            .len()
    }

    /// The flags a cron job passes: its own job lock file, the SM lock directory.
    fn job_flags(&self) -> Vec<String> {
        vec![
            "--lock-file".into(),
            self.path("job.lock").to_str().unwrap().into(),
        ]
    }

    /// `glance-vhd ARGS` with `env`, syslog bound in the scratch directory: the output
    /// and the syslog lines, in order.
    fn run(&self, args: &[&str], env: &[(&str, &str)]) -> (Output, Vec<String>) {
        let log = Syslog::bind(mkdir(&self.path(&format!("log-{}", uuid::Uuid::new_v4()))));
        let o = Command::new(helpers::bin())
            .args(args)
            .current_dir(self.dir.path())
            .env("GLANCE_VHD_SYSLOG_SOCKET", &log.path)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        (o, log.lines())
    }
}

fn mkdir(p: &Path) -> &Path {
    std::fs::create_dir_all(p).unwrap();
    p
}

/// The lines whose message (after `glance-vhd[pid]: `) contains `what`, at syslog
/// priority `pri` (facility user: 11 err, 12 warning, 14 info).
fn at<'a>(lines: &'a [String], pri: u8, what: &str) -> Vec<&'a str> {
    let head = format!("<{pri}>glance-vhd[");
    lines
        .iter()
        .filter(|l| l.starts_with(&head) && l.contains(what))
        .map(String::as_str)
        .collect()
}

/// A port that refuses connections (bound, then closed).
fn refusing_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// indicatif's `HumanBytes`, as the progress lines print sizes.
fn human(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64;
    let mut unit = "B";
    for u in UNITS {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.2} {unit}")
}

/// The progress lines of `label` (`upload to file://…: 3.00 MiB of 8.01 MiB (37%), …`):
/// each at most 100 %, and the last one is `total of total (100%)`.
fn check_progress(lines: &[String], label: &str, total: u64) {
    let progress: Vec<&str> = at(lines, 14, &format!("{label}: "))
        .into_iter()
        .filter(|l| l.contains("%),"))
        .collect();
    assert!(
        !progress.is_empty(),
        "no progress line for {label}: {lines:#?}"
    );
    for l in &progress {
        let pct: u64 = l
            .split(" (")
            .nth(1)
            .and_then(|r| r.split('%').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no percentage in {l}"));
        assert!(pct <= 100, "past 100 %: {l}");
    }
    let last = progress.last().unwrap();
    let t = human(total);
    assert!(
        last.contains(&format!(": {t} of {t} (100%)")),
        "the last progress line is not the full count {t}: {last}\n{progress:#?}"
    );
}

/// The exact syslog lines, for the report.
fn show(what: &str, lines: &[String]) {
    eprintln!("--- {what} ---");
    for l in lines {
        eprintln!("{l}");
    }
}

// ---- a failed run ------------------------------------------------------------------

/// A nightly download whose Glance refuses connections: the start, the retry with its
/// cause, and the failure with the exit code — not one line saying "0 B, 0 B/s".
#[test]
fn a_failed_cron_run_says_what_failed_and_the_exit_code() {
    let s = Site::new(1);
    let port = refusing_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let image = "00000000-0000-4000-8000-00000000c0de";
    let sr2 = s.new_sr();
    let mut args: Vec<String> = [
        "download",
        "--endpoint",
        &endpoint,
        "--image-id",
        image,
        "--sr-path",
        sr2.to_str().unwrap(),
        "--token",
        TOKEN,
        "--retries",
        "1",
        "--retry-delay",
        "0.3",
        "--quiet",
    ]
    .map(String::from)
    .to_vec();
    args.extend(s.job_flags());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // Progress lines every 50 ms: the retry's wait spans several.
    let (o, lines) = s.run(&args, &[("GLANCE_VHD_PROGRESS_INTERVAL", "0.05")]);
    show("a failed cron-style run", &lines);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    let what = format!("download of image {image}");
    let start = at(&lines, 14, &format!("{what}: started"));
    assert_eq!(start.len(), 1, "{lines:#?}");
    assert!(
        start[0].contains(&format!("SR {}", sr2.display()))
            && start[0].contains(&format!("endpoint {endpoint}")),
        "{}",
        start[0]
    );
    let retry = at(&lines, 12, &format!("{what}: attempt 1 of 2 failed"));
    assert_eq!(retry.len(), 1, "{lines:#?}");
    assert!(
        retry[0].contains(&format!("127.0.0.1:{port}")) && retry[0].contains("refused"),
        "the retry line gives the cause: {}",
        retry[0]
    );
    let failed = at(&lines, 11, "download failed (exit 5, retryable): ");
    assert_eq!(failed.len(), 1, "{lines:#?}");
    assert!(failed[0].contains("refused"), "{}", failed[0]);
    // The failure is the last word, and nothing said "0 B".
    assert_eq!(lines.last().map(String::as_str), Some(failed[0]));
    assert!(!lines.iter().any(|l| l.contains(" 0 B")), "{lines:#?}");
    assert!(!lines.iter().any(|l| l.contains(TOKEN)), "{lines:#?}");
    // --quiet: one line on stderr for cron's mail.
    assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
}

/// A run refused before it starts (a usage error, a bad SR) is a failure in syslog too.
#[test]
fn a_refused_job_is_logged_with_its_exit_code() {
    let s = Site::new(1);
    let (o, lines) = s.run(
        &[
            "upload",
            "--endpoint",
            "file:///nonexistent/x.tgz",
            "--sr-path",
            s.path("no-such-sr").to_str().unwrap(),
            "--leaf",
            &s.vdi,
            "-q",
        ],
        &[],
    );
    show("a refused upload", &lines);
    let code = o.status.code().unwrap();
    assert_ne!(code, 0);
    let failed = at(&lines, 11, &format!("upload failed (exit {code}, "));
    assert_eq!(failed.len(), 1, "{lines:#?}");
    assert!(failed[0].contains("no-such-sr"), "{}", failed[0]);
}

// ---- a successful run --------------------------------------------------------------

/// An upload into a local store and a download back, as a cron job runs them: each has
/// a start line and a summary line in syslog, nothing at warning or worse; the
/// progress counts each byte once.
#[test]
fn a_successful_cron_run_logs_its_start_summary_and_progress() {
    let s = Site::new(8);
    let store = mkdir(&s.path("store")).join("nightly.tgz");
    let url = format!("file://{}", store.display());
    // 8 MiB at 4 MiB/s: about 2 s, a progress line every 0.2 s.
    let env = [("GLANCE_VHD_PROGRESS_INTERVAL", "0.2")];
    let mut args: Vec<String> = [
        "upload",
        "--endpoint",
        &url,
        "--sr-path",
        s.sr(),
        "--leaf",
        &s.vdi,
        "--rate-limit",
        "4M",
        "--quiet",
        "--json",
    ]
    .map(String::from)
    .to_vec();
    args.extend(s.job_flags());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (o, up) = s.run(&args, &env);
    show("a successful cron-style upload", &up);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let what = format!("upload to {url}");
    assert_eq!(at(&up, 14, &format!("{what}: started")).len(), 1, "{up:#?}");
    let summary = at(&up, 14, &format!("{what}: 1 VHD (leaf {})", s.vdi));
    assert_eq!(summary.len(), 1, "{up:#?}");
    assert!(
        summary[0].contains(v["summary"]["md5"].as_str().unwrap()),
        "{}",
        summary[0]
    );
    assert!(
        at(&up, 11, "").is_empty() && at(&up, 12, "").is_empty(),
        "{up:#?}"
    );
    // The upload counts the VHD bytes it reads, once: 100 % at the end, never 199 %.
    check_progress(&up, &what, s.vhd_bytes());

    let sr2 = s.new_sr();
    let mut args: Vec<String> = [
        "download",
        "--endpoint",
        &url,
        "--sr-path",
        sr2.to_str().unwrap(),
        "--lock-dir",
        s.path("sm").to_str().unwrap(),
        "--rate-limit",
        "4M",
        "--quiet",
        "--json",
    ]
    .map(String::from)
    .to_vec();
    args.extend(s.job_flags());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (o, down) = s.run(&args, &env);
    show("a successful cron-style download", &down);
    assert!(o.status.success(), "{}", stderr(&o));
    let d: Value = serde_json::from_slice(&o.stdout).unwrap();
    let what = format!("download of {url}");
    assert_eq!(at(&down, 14, &format!("{what}: started")).len(), 1);
    let leaf = d["root"]["uuid"].as_str().unwrap();
    let summary = at(&down, 14, &format!("{what}: 1 VHD into {}", sr2.display()));
    assert_eq!(summary.len(), 1, "{down:#?}");
    assert!(summary[0].contains(leaf), "{}", summary[0]);
    // The download counts the wire bytes: all that was sent, once.
    check_progress(&down, &what, d["summary"]["bytes"].as_u64().unwrap());
    assert_eq!(d["summary"]["bytes"], v["summary"]["bytes"]);
}

/// The same against the real Glance: `--create` and the upload, then the download.
#[test]
fn a_successful_cron_run_against_the_real_glance() {
    let _turn = helpers::glance_turn();
    let url = helpers::glance_url();
    let s = Site::new(2);
    let mut args: Vec<String> = [
        "upload",
        "--endpoint",
        url,
        "--token",
        TOKEN,
        "--sr-path",
        s.sr(),
        "--leaf",
        &s.vdi,
        "--create",
        "--name",
        "cron-nightly",
        "--quiet",
        "--json",
    ]
    .map(String::from)
    .to_vec();
    args.extend(s.job_flags());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (o, up) = s.run(&args, &[]);
    show("a successful cron-style upload to Glance", &up);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let id = v["image_id"].as_str().unwrap();
    let what = "upload to a new image \"cron-nightly\"";
    let start = at(&up, 14, &format!("{what}: started"));
    assert_eq!(start.len(), 1, "{up:#?}");
    assert!(
        start[0].contains(&format!("endpoint {url}")),
        "{}",
        start[0]
    );
    assert_eq!(at(&up, 14, &format!("{what}: created image {id}")).len(), 1);
    assert_eq!(at(&up, 14, &format!("{what}: 1 VHD (leaf ")).len(), 1);
    assert!(
        at(&up, 11, "").is_empty() && at(&up, 12, "").is_empty(),
        "{up:#?}"
    );

    let sr2 = s.new_sr();
    let (o, down) = s.run(
        &[
            "download",
            "--endpoint",
            url,
            "--token",
            TOKEN,
            "--image-id",
            id,
            "--sr-path",
            sr2.to_str().unwrap(),
            "--lock-dir",
            s.path("sm").to_str().unwrap(),
            "--no-lock",
            "--quiet",
        ],
        &[],
    );
    show("a successful cron-style download from Glance", &down);
    assert!(o.status.success(), "{}", stderr(&o));
    let what = format!("download of image {id}");
    assert_eq!(at(&down, 14, &format!("{what}: started")).len(), 1);
    assert_eq!(at(&down, 14, &format!("{what}: 1 VHD into ")).len(), 1);
    for l in up.iter().chain(&down) {
        assert!(!l.contains(TOKEN), "{l}");
    }
}

// ---- plugin mode ------------------------------------------------------------------

/// `upload_vhd2` as Nova calls it: its syslog progress counts each VHD byte once
/// (184 % before), the last line the chain's full size.
#[test]
fn plugin_upload_progress_counts_each_byte_once() {
    let s = Site::new(32);
    let g = Peer::start(&s.path("store"), &[]);
    let shim = install_shim(s.dir.path(), "glance");
    let log = Syslog::bind(mkdir(&s.path("plugin-log")));
    let up = call(json!({
        "shim": shim, "fn": "upload_vhd2", "form": "python", "protocol": 2,
        "env": {
            "GLANCE_VHD_LOCK_DIR": s.path("sm").to_str().unwrap(),
            "GLANCE_VHD_SYSLOG_SOCKET": log.path,
            "GLANCE_VHD_PROGRESS_INTERVAL": "0.05",
        },
        "unpickle": true,
        "args": [[s.vdi]],
        "kwargs": {
            "image_id": "img-progress", "endpoint": g.url(), "sr_path": s.sr,
            "extra_headers": {"X-Auth-Token": TOKEN}, "properties": {}, "api_version": 1,
        },
    }));
    assert_eq!(success(&up), &Value::Null, "{up}");
    let lines = log.lines();
    check_progress(&lines, "upload to image img-progress", s.vhd_bytes());
    assert!(!lines.iter().any(|l| l.contains(TOKEN)), "{lines:#?}");
}

// ---- -v, -vv --------------------------------------------------------------------

/// `-v` shows each attempt and step, `-vv` each request (method, URL, status) — and
/// never the token.
#[test]
fn verbose_shows_steps_and_very_verbose_each_request_without_the_token() {
    let _turn = helpers::glance_turn();
    let url = helpers::glance_url().trim_end_matches('/');
    let s = Site::new(1);
    let upload = |extra: &[&str]| {
        let mut args = vec![
            "upload",
            "--endpoint",
            url,
            "--token",
            TOKEN,
            "--sr-path",
            s.sr(),
            "--leaf",
            &s.vdi,
            "--create",
            "--name",
            "cron-verbose",
            "--no-lock",
        ];
        args.extend_from_slice(extra);
        let (o, _) = s.run(&args, &[]);
        assert!(o.status.success(), "{}", stderr(&o));
        (stdout(&o).trim().to_string(), stderr(&o))
    };
    let (_, plain) = upload(&[]);
    let (id, v) = upload(&["-v"]);
    let (id2, vv) = upload(&["-vv"]);
    for text in [&plain, &v, &vv] {
        assert!(!text.contains(TOKEN), "{text}");
    }
    // Default: the summary, no steps, no requests.
    assert!(
        !plain.contains("attempt 1 via") && !plain.contains(" -> "),
        "{plain}"
    );
    // -v: the attempt and the steps of the transfer, no requests.
    for step in [
        "attempt 1 via",
        "staged 1 VHDs for upload",
        "bytes sent, md5",
    ] {
        assert!(v.contains(step), "-v lacks {step:?}:\n{v}");
    }
    assert!(!v.contains(" -> "), "-v shows requests:\n{v}");
    // -vv: each request with its status.
    for req in [
        format!("POST {url}/v2/images -> 201"),
        format!("GET {url}/v2/images/{id2} -> 200"),
        format!("PATCH {url}/v2/images/{id2} -> 200"),
        format!("PUT {url}/v2/images/{id2}/file -> 204"),
    ] {
        assert!(vv.contains(&req), "-vv lacks {req:?}:\n{vv}");
    }
    assert!(vv.contains("staged 1 VHDs"), "{vv}");
    // A download at -vv: the record and the file.
    let sr2 = s.new_sr();
    let (o, _) = s.run(
        &[
            "download",
            "--endpoint",
            url,
            "--token",
            TOKEN,
            "--image-id",
            &id,
            "--sr-path",
            sr2.to_str().unwrap(),
            "--lock-dir",
            s.path("sm").to_str().unwrap(),
            "--no-lock",
            "-vv",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(!err.contains(TOKEN), "{err}");
    for line in [
        format!("GET {url}/v2/images/{id} -> 200"),
        format!("GET {url}/v2/images/{id}/file -> 200"),
        "bytes received, md5".to_string(),
        "published into".to_string(),
    ] {
        assert!(err.contains(&line), "-vv download lacks {line:?}:\n{err}");
    }
}

// ---- --json on one line -------------------------------------------------------------

/// Every `--json` document — a result or an error — is one line: cron appends them to
/// a log file, one run a line.
#[test]
fn json_documents_are_one_line() {
    let s = Site::new(1);
    let store = mkdir(&s.path("store")).join("one.tgz");
    let url = format!("file://{}", store.display());
    let vhd = s.sr.join(format!("{}.vhd", s.vdi));
    let vhd = vhd.to_str().unwrap();
    let sr2 = s.new_sr();
    let cases: Vec<Vec<&str>> = vec![
        vec![
            "upload",
            "--endpoint",
            &url,
            "--sr-path",
            s.sr(),
            "--leaf",
            &s.vdi,
            "--no-lock",
        ],
        vec![
            "download",
            "--endpoint",
            &url,
            "--sr-path",
            sr2.to_str().unwrap(),
            "--no-lock",
        ],
        vec!["sweep", "--sr-path", s.sr()],
        vec!["vhd", "info", vhd],
        vec!["vhd", "check", vhd],
        // Errors: a missing image, a usage error.
        vec![
            "download",
            "--endpoint",
            "file:///nonexistent.tgz",
            "--sr-path",
            s.sr(),
            "--no-lock",
        ],
        vec![
            "upload",
            "--endpoint",
            "-",
            "--sr-path",
            s.sr(),
            "--leaf",
            &s.vdi,
        ],
    ];
    for case in cases {
        let mut args = case.clone();
        args.push("--json");
        let (o, _) = s.run(
            &args,
            &[("GLANCE_VHD_LOCK_DIR", s.path("sm").to_str().unwrap())],
        );
        let out = stdout(&o);
        assert_eq!(
            out.matches('\n').count(),
            1,
            "{case:?} (exit {:?}): not one line:\n{out}{}",
            o.status.code(),
            stderr(&o)
        );
        let v: Value = serde_json::from_str(out.trim_end()).unwrap();
        assert!(v.is_object(), "{v}");
        if !o.status.success() {
            assert!(v["error"]["exit_code"].is_u64(), "{v}");
        }
    }
}
