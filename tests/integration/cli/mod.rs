//! The admin CLI as a dom0 admin and a cron job meet it: help with examples, the
//! OpenStack environment names, usage errors, the progress bar on a terminal (under a
//! real pseudo-terminal from `script`) and never elsewhere, syslog progress lines, the
//! per-SR lock, the rate limit, and retries across endpoints against the real Glance
//! through a proxy that resets connections.

use crate::helpers;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::{stderr, stdout, Peer};

mod retries;

/// Every command and subcommand that `glance-vhd help` lists.
fn commands() -> Vec<Vec<String>> {
    fn listed(path: &[String]) -> Vec<String> {
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        let o = helpers::run(Path::new("."), &args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        let text = stdout(&o);
        let Some(section) = text.split("Commands:\n").nth(1) else {
            return Vec::new();
        };
        section
            .lines()
            .take_while(|l| l.starts_with("  "))
            // A command's line; deeper indents continue a wrapped description.
            .filter(|l| !l.starts_with("   "))
            .filter_map(|l| l.split_whitespace().next())
            .filter(|c| *c != "help")
            .map(str::to_string)
            .collect()
    }
    let mut out = vec![Vec::new()];
    let mut i = 0;
    while i < out.len() {
        let path = out[i].clone();
        for c in listed(&path) {
            let mut p = path.clone();
            p.push(c);
            out.push(p);
        }
        i += 1;
    }
    out
}

#[test]
fn every_command_has_help_with_an_example() {
    let all = commands();
    // The top level, download, upload, sweep, vhd and its 8 tools at least.
    assert!(all.len() >= 13, "{all:?}");
    for path in &all {
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        let o = helpers::run(Path::new("."), &args);
        assert!(o.status.success(), "{args:?}");
        let text = stdout(&o);
        assert!(text.contains("Example"), "{args:?} has no example:\n{text}");
        // The example runs the command it documents.
        let cmd = format!("glance-vhd {}", path.join(" "));
        assert!(text.contains(cmd.trim()), "{args:?}: no example of {cmd:?}");
    }
    for path in [&[][..], &["download"], &["upload"]] {
        let mut args = path.to_vec();
        args.push("--help");
        let text = stdout(&helpers::run(Path::new("."), &args));
        for code in ["2  usage error", "5  retryable failure", "6  locked"] {
            assert!(text.contains(code), "{args:?} lacks {code:?}");
        }
    }
    let top = stdout(&helpers::run(Path::new("."), &["--help"]));
    for env in ["OS_IMAGE_URL", "OS_AUTH_TOKEN", "OS_CACERT"] {
        assert!(top.contains(env), "{env}");
    }
}

#[test]
fn bad_flag_values_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let sr = dir.path().to_str().unwrap();
    let cases: &[&[&str]] = &[
        &[
            "download",
            "--endpoint",
            "-",
            "--sr-path",
            sr,
            "--rate-limit",
            "0",
        ],
        &[
            "download",
            "--endpoint",
            "-",
            "--sr-path",
            sr,
            "--rate-limit",
            "fast",
        ],
        &[
            "download",
            "--endpoint",
            "-",
            "--sr-path",
            sr,
            "--retries",
            "-1",
        ],
        &[
            "download",
            "--endpoint",
            "-",
            "--sr-path",
            sr,
            "--retry-delay",
            "x",
        ],
        &[
            "download",
            "--endpoint",
            "-",
            "--sr-path",
            sr,
            "--lock-wait",
            "soon",
        ],
        &[
            "download",
            "--endpoint",
            "-",
            "--sr-path",
            sr,
            "--no-such-flag",
        ],
        &[
            "upload",
            "--endpoint",
            "-",
            "--sr-path",
            sr,
            "--leaf",
            "nope",
        ],
        &[
            "upload",
            "--endpoint",
            "-",
            "--sr-path",
            sr,
            "--vdi",
            "11111111-2222-4333-8444-555555555555",
            "--compression-level",
            "10",
        ],
        &[
            "download",
            "--endpoint",
            "-",
            "--sr-path",
            sr,
            "--no-lock",
            "--lock-file",
            "/tmp/x",
        ],
        // Checked after parsing: still usage errors.
        &[
            "download",
            "--endpoint",
            "http://127.0.0.1:9",
            "--sr-path",
            sr,
        ],
        &[
            "download",
            "--endpoint",
            "http://127.0.0.1:9",
            "--endpoint",
            "-",
            "--image-id",
            "x",
            "--sr-path",
            sr,
        ],
        &[
            "upload",
            "--endpoint",
            "http://127.0.0.1:9",
            "--sr-path",
            sr,
            "--leaf",
            "11111111-2222-4333-8444-555555555555",
        ],
        &[
            "upload",
            "--endpoint",
            "-",
            "--sr-path",
            sr,
            "--leaf",
            "11111111-2222-4333-8444-555555555555",
            "--json",
        ],
        &["vhd", "create", "/tmp/x.vhd", "20Q"],
    ];
    for args in cases {
        let o = Command::new(helpers::bin())
            .args(*args)
            .env_remove("OS_IMAGE_URL")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("error") || stderr(&o).starts_with("glance-vhd: "),
            "{args:?}: {}",
            stderr(&o)
        );
    }
    // No endpoint at all: clap names the flag and the environment variable.
    let o = Command::new(helpers::bin())
        .args(["download", "--image-id", "x", "--sr-path", sr])
        .env_remove("OS_IMAGE_URL")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--endpoint"), "{}", stderr(&o));
    // With --json, a usage error found after parsing is one JSON object too.
    let o = helpers::run(
        dir.path(),
        &[
            "download",
            "--endpoint",
            "http://127.0.0.1:9",
            "--sr-path",
            sr,
            "--json",
        ],
    );
    assert_eq!(o.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["error"]["exit_code"], 2);
    assert_eq!(v["error"]["kind"], "usage");
}

/// A scratch place: an SR (named like one) holding one VDI of `mib` MiB of random data,
/// made by qemu-img (a dynamic VHD), and a second, empty SR.
struct Scratch {
    dir: tempfile::TempDir,
    sr: PathBuf,
    sr2: PathBuf,
    vdi: String,
}

impl Scratch {
    fn new(mib: usize) -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        let sr = helpers::new_sr(dir.path());
        let sr2 = helpers::new_sr(dir.path());
        let vdi = helpers::random_vdi(&sr, mib);
        Scratch { dir, sr, sr2, vdi }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn lock_dir(&self) -> String {
        self.path("sm-lock").to_str().unwrap().to_string()
    }

    /// The VDI as a gzipped tarball at `file://…/name`.
    fn image(&self, name: &str) -> String {
        let url = format!("file://{}", self.path(name).display());
        let o = self.run(&[
            "upload",
            "--endpoint",
            &url,
            "--sr-path",
            self.sr.to_str().unwrap(),
            "--leaf",
            &self.vdi,
            "--no-lock",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        url
    }

    fn run(&self, args: &[&str]) -> Output {
        helpers::run(self.dir.path(), args)
    }

    /// `args` under a pseudo-terminal (`script`): what a terminal would show, stdout
    /// and stderr together.
    fn run_on_terminal(&self, args: &[&str], env: &[(&str, &str)]) -> String {
        let mut line = shell_quote(&helpers::bin().to_string_lossy());
        for a in args {
            line.push(' ');
            line.push_str(&shell_quote(a));
        }
        let o = Command::new("script")
            .args(["-q", "-e", "-c", &line, "/dev/null"])
            .current_dir(self.dir.path())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .output()
            .expect("script (util-linux)");
        assert!(o.status.success(), "{args:?}: {}", stdout(&o));
        stdout(&o)
    }
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[test]
fn progress_bar_on_a_terminal_only() {
    let s = Scratch::new(8);
    let url = s.image("img.tgz");
    let sr2 = s.sr2.to_str().unwrap().to_string();
    let lock = s.lock_dir();
    let download = |extra: &[&str]| {
        let mut a = vec![
            "download",
            "--endpoint",
            &url,
            "--sr-path",
            &sr2,
            "--lock-dir",
            &lock,
            "--rate-limit",
            "8M",
        ];
        a.extend_from_slice(extra);
        a.iter().map(|x| x.to_string()).collect::<Vec<_>>()
    };
    let args = download(&[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let screen = s.run_on_terminal(&args, &[]);
    // indicatif redraws the line: bar, bytes of the total, rate, ETA, the member.
    assert!(screen.contains("ETA"), "{screen}");
    assert!(screen.contains("MiB/8.0"), "{screen}");
    assert!(screen.contains("download 0.vhd ["), "{screen}");
    assert!(screen.contains("\x1b[2K"), "no redraws: {screen:?}");
    // The summary line after it.
    assert!(
        screen.contains("glance-vhd: download of file://"),
        "{screen}"
    );

    // Not a terminal: no bar, no escape codes; stdout is the UUID, stderr the summary.
    let o = s.run(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(!err.contains("ETA") && !err.contains('\x1b'), "{err:?}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("1 VHD into") && err.contains("md5 "), "{err}");
    let uuid = stdout(&o).trim().to_string();
    assert!(uuid::Uuid::parse_str(&uuid).is_ok(), "{uuid:?}");

    // --quiet on a terminal: nothing but the result.
    let args = download(&["--quiet"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let screen = s.run_on_terminal(&args, &[]);
    assert!(
        !screen.contains("ETA") && !screen.contains("glance-vhd:"),
        "{screen}"
    );
    assert!(uuid::Uuid::parse_str(screen.trim()).is_ok(), "{screen:?}");
}

/// The plugin never draws a bar, even with a terminal on stderr: its stdout is the one
/// XML-RPC response.
#[test]
fn plugin_stdout_stays_pure_xml_with_a_terminal() {
    let s = Scratch::new(2);
    let url = s.image("img.tgz");
    let store = s.path("store");
    let id = "6a0a2c5f-7b5e-4d36-9a5e-0f1c2d3e4f50";
    std::fs::create_dir(&store).unwrap();
    std::fs::copy(url.trim_start_matches("file://"), store.join(id)).unwrap();
    let glance = Peer::start(&store, &[]);
    // The call as Nova makes it (xmlrpc.client + pickle), written by Python.
    let py = format!(
        "import pickle, sys, xmlrpc.client\n\
         kw = {{'image_id': '{id}', 'endpoint': '{}', 'api_version': 1, \
         'sr_path': '{}', 'uuid_stack': ['{}'], 'extra_headers': {{}}}}\n\
         p = pickle.dumps({{'args': (), 'kwargs': kw}}, protocol=0).decode('ascii')\n\
         sys.stdout.write(xmlrpc.client.dumps(('OpaqueRef:s', {{'params': p}}), methodname='download_vhd2'))",
        glance.url(),
        s.sr2.display(),
        uuid::Uuid::new_v4()
    );
    let o = Command::new("python3").args(["-c", &py]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let call = stdout(&o);
    let out = s.path("response.xml");
    let line = format!(
        "{} xapi-plugin --name glance {} > {}",
        shell_quote(&helpers::bin().to_string_lossy()),
        shell_quote(&call),
        shell_quote(&out.to_string_lossy())
    );
    let t = Command::new("script")
        .args(["-q", "-e", "-c", &line, "/dev/null"])
        .env("GLANCE_VHD_LOCK_DIR", s.lock_dir())
        .env("GLANCE_VHD_PROGRESS_INTERVAL", "0.05")
        .output()
        .unwrap();
    assert!(t.status.success(), "{}", stdout(&t));
    let screen = stdout(&t);
    assert!(
        !screen.contains("ETA") && !screen.contains('\x1b'),
        "{screen:?}"
    );
    let xml = std::fs::read_to_string(&out).unwrap();
    assert!(
        xml.starts_with("<?xml") || xml.starts_with("<methodResponse"),
        "{xml:?}"
    );
    assert!(!xml.contains('\x1b'));
    let check = "import sys, xmlrpc.client\n\
                 r = xmlrpc.client.loads(open(sys.argv[1]).read())[0][0]\n\
                 assert r['Status'] == 'Success', r\n\
                 print(r['Value'])";
    let o = Command::new("python3")
        .args(["-c", check])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}\n{xml}", stderr(&o));
}

/// A datagram socket standing in for /dev/log.
pub(crate) struct Syslog {
    sock: UnixDatagram,
    pub(crate) path: PathBuf,
}

impl Syslog {
    pub(crate) fn bind(dir: &Path) -> Syslog {
        let path = dir.join("log.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_nonblocking(true).unwrap();
        Syslog { sock, path }
    }

    pub(crate) fn lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.sock.recv(&mut buf) {
            out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        out
    }
}

#[test]
fn long_transfers_log_progress_to_syslog() {
    let s = Scratch::new(6);
    let url = s.image("img.tgz");
    let log = Syslog::bind(s.dir.path());
    let o = Command::new(helpers::bin())
        .args(["download", "--endpoint", &url, "--sr-path"])
        .arg(&s.sr2)
        .args(["--lock-dir", &s.lock_dir(), "--rate-limit", "3M"])
        .env("GLANCE_VHD_SYSLOG_SOCKET", &log.path)
        .env("GLANCE_VHD_PROGRESS_INTERVAL", "0.5")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let lines: Vec<String> = log
        .lines()
        .into_iter()
        .filter(|l| l.contains("download of file://"))
        // The job's start and summary lines (tests/integration/cron.rs) are not progress.
        .filter(|l| !l.contains(": started (") && !l.contains(" VHD into "))
        .collect();
    // About 2 s at 3 MiB/s: three or four lines, each with bytes, total, rate, member.
    assert!(lines.len() >= 2, "{lines:?}");
    for l in &lines {
        assert!(l.starts_with("<14>glance-vhd["), "{l}");
        assert!(
            l.contains(" of 6.0") && l.contains("%)") && l.contains("/s"),
            "{l}"
        );
    }
    assert!(
        lines.iter().any(|l| l.contains("member 0.vhd")),
        "{lines:?}"
    );
    // Nothing of it on stderr: only the summary.
    assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
}

#[test]
fn rate_limit_holds_within_ten_percent() {
    let s = Scratch::new(12);
    let url = s.image("img.tgz");
    let limit = 4u64 << 20;
    let check = |o: &Output, what: &str| {
        assert!(o.status.success(), "{what}: {}", stderr(o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let rate = v["summary"]["bytes_per_second"].as_u64().unwrap() as f64;
        let ratio = rate / limit as f64;
        assert!(
            (0.9..=1.1).contains(&ratio),
            "{what}: {rate} B/s against a limit of {limit} ({ratio:.3})"
        );
    };
    let o = s.run(&[
        "download",
        "--endpoint",
        &url,
        "--sr-path",
        s.sr2.to_str().unwrap(),
        "--lock-dir",
        &s.lock_dir(),
        "--rate-limit",
        "4M",
        "--json",
    ]);
    check(&o, "download");
    let out = format!("file://{}", s.path("again.tgz").display());
    let o = s.run(&[
        "upload",
        "--endpoint",
        &out,
        "--sr-path",
        s.sr.to_str().unwrap(),
        "--leaf",
        &s.vdi,
        "--rate-limit",
        "4M",
        "--json",
        "--no-lock",
    ]);
    check(&o, "upload");
}

#[test]
fn overlapping_runs_wait_or_exit_locked() {
    let s = Scratch::new(6);
    let lock = s.path("nightly.lock");
    let lock_s = lock.to_str().unwrap().to_string();
    let upload = |name: &str, extra: &[&str]| {
        let out = format!("file://{}", s.path(name).display());
        let mut c = Command::new(helpers::bin());
        c.args(["upload", "--endpoint", &out, "--sr-path"])
            .arg(&s.sr)
            .args([
                "--leaf",
                &s.vdi,
                "--lock-file",
                &lock_s,
                "--rate-limit",
                "3M",
            ])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    };
    let first = upload("first.tgz", &[]).spawn().unwrap();
    // Wait until the first run holds the lock and has said who it is.
    let t0 = Instant::now();
    while !std::fs::read_to_string(&lock).is_ok_and(|t| t.contains("pid")) {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the first run took no lock"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // A second run that will not wait: exit 6 at once, naming the holder.
    let t = Instant::now();
    let o = upload("second.tgz", &[]).output().unwrap();
    assert_eq!(o.status.code(), Some(6), "{}", stderr(&o));
    assert!(t.elapsed() < Duration::from_secs(1));
    let err = stderr(&o);
    assert!(
        err.contains(&format!("pid {}", first.id())) && err.contains("upload to file://"),
        "{err}"
    );
    assert!(!s.path("second.tgz").exists());
    // A third that waits: it starts when the first is done, and succeeds.
    let third = upload("third.tgz", &["--lock-wait", "60"]).spawn().unwrap();
    let first = first.wait_with_output().unwrap();
    let first_done = Instant::now();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let third = third.wait_with_output().unwrap();
    assert!(
        third.status.success(),
        "{}",
        String::from_utf8_lossy(&third.stderr)
    );
    // 6 MiB at 3 MiB/s: the third's transfer cannot have overlapped the first's.
    assert!(first_done.elapsed() > Duration::from_millis(1500));
    for f in ["first.tgz", "third.tgz"] {
        let o = Command::new("tar")
            .arg("-tzf")
            .arg(s.path(f))
            .output()
            .unwrap();
        assert!(o.status.success(), "{f}: {}", stderr(&o));
        assert!(stdout(&o).contains("./0.vhd"), "{f}: {}", stdout(&o));
    }
    // A locked run reports as JSON too.
    let mut holder = upload("fourth.tgz", &[]).spawn().unwrap();
    let t0 = Instant::now();
    while !std::fs::read_to_string(&lock).is_ok_and(|t| t.contains(&format!("pid {}", holder.id())))
    {
        assert!(t0.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(20));
    }
    let o = upload("fifth.tgz", &["--json"]).output().unwrap();
    assert_eq!(o.status.code(), Some(6));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["error"]["kind"], "locked");
    assert_eq!(v["error"]["exit_code"], 6);
    holder.wait().unwrap();
}

#[test]
fn environment_defaults() {
    let s = Scratch::new(1);
    let url = s.image("img.tgz");
    // OS_IMAGE_URL stands for --endpoint.
    let o = Command::new(helpers::bin())
        .args(["download", "--sr-path"])
        .arg(&s.sr2)
        .args(["--lock-dir", &s.lock_dir()])
        .env("OS_IMAGE_URL", &url)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read_dir(&s.sr2).unwrap().count(), 1);
    // OS_AUTH_TOKEN is sent as X-Auth-Token: the v1 stand-in refuses any other token.
    let store = s.path("store");
    std::fs::create_dir(&store).unwrap();
    let id = "6a0a2c5f-7b5e-4d36-9a5e-0f1c2d3e4f50";
    std::fs::copy(url.trim_start_matches("file://"), store.join(id)).unwrap();
    let glance = Peer::start(&store, &["--require-token", "s3cret"]);
    let download = |token: &str| {
        let sr = s.path(&uuid::Uuid::new_v4().to_string());
        std::fs::create_dir(&sr).unwrap();
        Command::new(helpers::bin())
            .args([
                "download",
                "--api-version",
                "1",
                "--image-id",
                id,
                "--sr-path",
            ])
            .arg(&sr)
            .args(["--lock-dir", &s.lock_dir(), "--retries", "0"])
            .env("OS_IMAGE_URL", glance.url())
            .env("OS_AUTH_TOKEN", token)
            .output()
            .unwrap()
    };
    let o = download("s3cret");
    assert!(o.status.success(), "{}", stderr(&o));
    let o = download("wrong");
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("HTTP 401"), "{}", stderr(&o));
    // OS_CACERT stands for --cacert: a missing file is named.
    let o = Command::new(helpers::bin())
        .args(["download", "--image-id", id, "--sr-path"])
        .arg(&s.sr2)
        .env("OS_IMAGE_URL", "https://127.0.0.1:9")
        .env("OS_CACERT", "/nonexistent/ca.pem")
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("/nonexistent/ca.pem"), "{}", stderr(&o));
}
