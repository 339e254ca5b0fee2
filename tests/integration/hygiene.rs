//! What the binary says, and whether it may say it (issue 12, items 3 and 8–11): no
//! secret in any output, permanent errors called permanent, TLS configuration errors
//! named as such, framing headers refused, messages capped, and no byte of a file that
//! is not a VHD quoted back. Each test failed on the binary before these fixes.

use std::io::Write;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use serde_json::{json, Value};

use super::cli::Syslog;
use super::plugin::{install_shim, plugin_failure};
use crate::helpers::{self, run, stderr, stdout};

const PASSWORD: &str = "pw-s3cr3t-91";
const TOKEN: &str = "tok-s3cr3t-57";

/// A listener nothing may connect to: a refused flag fails before any request.
fn untouched() -> (TcpListener, u16) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let port = l.local_addr().unwrap().port();
    (l, port)
}

fn assert_untouched(l: &TcpListener) {
    match l.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the refused request still connected: {other:?}"),
    }
}

/// `glance-vhd ARGS` with extra environment and the syslog socket bound in `dir`.
fn run_logged(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (Output, Vec<String>) {
    let sock_dir = tempfile::tempdir().unwrap();
    let log = Syslog::bind(sock_dir.path());
    let mut cmd = Command::new(helpers::bin());
    cmd.args(args)
        .current_dir(dir)
        .env("GLANCE_VHD_SYSLOG_SOCKET", &log.path);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let o = cmd.output().unwrap();
    (o, log.lines())
}

fn everything(o: &Output, syslog: &[String]) -> String {
    format!("{}\n{}\n{}", stdout(o), stderr(o), syslog.join("\n"))
}

/// The plugin's `download_vhd2` from `endpoint` into `sr`, as Nova calls it; it must
/// fail: its `ErrorDescription`.
fn plugin_download2(dir: &Path, endpoint: &str, sr: &str, extra_headers: Value) -> Vec<String> {
    let shim = install_shim(dir, "glance");
    plugin_failure(
        &shim,
        &json!({}),
        json!({"fn": "download_vhd2", "kwargs": {
            "image_id": "00000000-0000-4000-8000-000000000001", "endpoint": endpoint,
            "uuid_stack": ["00000000-0000-4000-8000-0000000000a1"], "sr_path": sr,
            "extra_headers": extra_headers, "api_version": 2}}),
    )
}

fn download_args<'a>(endpoint: &'a str, sr: &'a str) -> Vec<&'a str> {
    vec![
        "download",
        "--endpoint",
        endpoint,
        "--image-id",
        "00000000-0000-4000-8000-000000000001",
        "--sr-path",
        sr,
        "--no-lock",
        "--retries",
        "0",
    ]
}

/// Item 3: `http://user:pass@host` was printed on stderr, in `--json`, in syslog, in the
/// plugin's failure and in `--help`. User information is refused (Glance takes Keystone
/// tokens, never basic auth) and the password appears nowhere.
#[test]
fn endpoint_passwords_reach_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let sr = helpers::new_sr(dir.path());
    let sr = sr.to_str().unwrap();
    let (listener, port) = untouched();
    let url = format!("http://admin:{PASSWORD}@127.0.0.1:{port}");
    for json in [false, true] {
        let mut args = download_args(&url, sr);
        if json {
            args.push("--json");
        }
        args.push("-vv");
        let (o, syslog) = run_logged(dir.path(), &args, &[]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        let all = everything(&o, &syslog);
        assert!(!all.contains(PASSWORD), "the password leaked: {all}");
        assert!(stderr(&o).contains("***@127.0.0.1"), "{}", stderr(&o));
        if json {
            let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
            assert_eq!(v["error"]["kind"], "usage", "{v}");
        }
    }
    // The same URL from the environment, and --help with it set.
    let mut from_env = download_args("-", sr);
    from_env.drain(1..3); // no --endpoint: OS_IMAGE_URL gives it
    let (o, syslog) = run_logged(dir.path(), &from_env, &[("OS_IMAGE_URL", &url)]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(!everything(&o, &syslog).contains(PASSWORD));
    for help in [vec!["download", "--help"], vec!["upload", "--help"]] {
        let (o, _) = run_logged(dir.path(), &help, &[("OS_IMAGE_URL", &url)]);
        assert!(o.status.success());
        assert!(!stdout(&o).contains(PASSWORD), "--help shows the password");
    }
    assert_untouched(&listener);

    // The plugin: an ArgumentError without the password, in the reply and in its log.
    let failure = plugin_download2(dir.path(), &url, sr, json!({}));
    assert_eq!(failure[2], "ArgumentError", "{failure:?}");
    assert!(!failure.join(" ").contains(PASSWORD), "{failure:?}");
    assert!(failure[3].contains("***@"), "{failure:?}");
    assert_untouched(&listener);
}

/// Item 3, the token: never in any output, at any verbosity, success or failure.
#[test]
fn tokens_reach_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let sr = helpers::new_sr(dir.path());
    // A refused connection: the failure path, with every attempt logged.
    let args = download_args("http://127.0.0.1:1", sr.to_str().unwrap());
    for extra in [
        vec!["--token", TOKEN],
        vec!["--header", "X-Auth-Token: tok-s3cr3t-57"],
    ] {
        let mut a = args.clone();
        a.extend(extra);
        a.push("-vv");
        let (o, syslog) = run_logged(dir.path(), &a, &[]);
        assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
        assert!(!everything(&o, &syslog).contains(TOKEN));
    }
}

/// A TLS server on loopback whose certificate no CA we trust signed.
struct SelfSigned {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl SelfSigned {
    fn start() -> SelfSigned {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        let st = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", "/CN=127.0.0.1", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stderr(Stdio::null())
            .status()
            .expect("openssl");
        assert!(st.success());
        let script = format!(
            "import http.server, ssl\n\
             s = http.server.HTTPServer(('127.0.0.1', 0), http.server.BaseHTTPRequestHandler)\n\
             c = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)\n\
             c.load_cert_chain({:?}, {:?})\n\
             s.socket = c.wrap_socket(s.socket, server_side=True)\n\
             print(s.server_address[1], flush=True)\n\
             s.serve_forever()\n",
            cert.to_str().unwrap(),
            key.to_str().unwrap()
        );
        let mut child = Command::new("python3")
            .args(["-c", &script])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let port = line.trim().parse().expect("the port");
        SelfSigned {
            child,
            port,
            _dir: dir,
        }
    }

    fn dir(&self) -> &Path {
        self._dir.path()
    }
}

impl Drop for SelfSigned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Item 8: a certificate that fails verification was a retryable error (exit 5 after
/// the backoff; Nova's RetryableError). It fails the same way every time: permanent.
#[test]
fn a_certificate_that_fails_verification_is_permanent() {
    let tls = SelfSigned::start();
    let dir = tempfile::tempdir().unwrap();
    let sr = helpers::new_sr(dir.path());
    let url = format!("https://127.0.0.1:{}", tls.port);
    let mut args = download_args(&url, sr.to_str().unwrap());
    // Three retries five seconds apart, were it retryable.
    let retries = args.iter().position(|a| *a == "--retries").unwrap();
    args[retries + 1] = "3";
    args.extend(["--retry-delay", "5"]);
    let t = std::time::Instant::now();
    let o = run(dir.path(), &args);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("certificate"), "{}", stderr(&o));
    assert!(!stderr(&o).contains("retrying"), "{}", stderr(&o));
    assert!(t.elapsed().as_secs() < 5, "it waited to retry");

    let failure = plugin_download2(dir.path(), &url, sr.to_str().unwrap(), json!({}));
    assert_eq!(failure[2], "PluginError", "{failure:?}");
}

/// Item 9: `--cacert` naming a missing file said "cannot open the image" (exit 4); a
/// file with no certificate, or with a private key, was silently ignored. Each is now a
/// usage error naming the flag and the file, found before any connection.
#[test]
fn cacert_problems_are_named_up_front() {
    let tls = SelfSigned::start();
    let dir = tempfile::tempdir().unwrap();
    let sr = helpers::new_sr(dir.path());
    let (listener, port) = untouched();
    let url = format!("https://127.0.0.1:{port}");
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "not a certificate\n").unwrap();
    let key = tls.dir().join("k.pem");
    let missing = dir.path().join("missing-ca.pem");
    for (ca, says) in [
        (&missing, "cannot read"),
        (&text, "no PEM certificate"),
        (&key, "private key"),
    ] {
        let mut args = download_args(&url, sr.to_str().unwrap());
        args.extend(["--cacert", ca.to_str().unwrap()]);
        let o = run(dir.path(), &args);
        assert_eq!(o.status.code(), Some(2), "{ca:?}: {}", stderr(&o));
        assert!(stderr(&o).contains("--cacert"), "{}", stderr(&o));
        assert!(stderr(&o).contains(ca.to_str().unwrap()), "{}", stderr(&o));
        assert!(stderr(&o).contains(says), "{}", stderr(&o));
        let key_text = std::fs::read_to_string(&key).unwrap();
        assert!(
            !stderr(&o).contains(&key_text[40..80]),
            "key material printed"
        );
    }
    assert_untouched(&listener);
}

/// Item 9: `--insecure -q` printed nothing. It always leaves a warning: on stderr unless
/// `-q`, and in syslog always.
#[test]
fn insecure_always_leaves_a_warning() {
    let tls = SelfSigned::start();
    let dir = tempfile::tempdir().unwrap();
    let sr = helpers::new_sr(dir.path());
    let url = format!("https://127.0.0.1:{}", tls.port);
    for quiet in [false, true] {
        let mut args = download_args(&url, sr.to_str().unwrap());
        args.push("--insecure");
        if quiet {
            args.push("-q");
        }
        let (o, syslog) = run_logged(dir.path(), &args, &[]);
        // The stand-in answers no request: the download fails, after the warning.
        assert_ne!(o.status.code(), Some(0));
        let warned = |s: &str| s.contains("verification is disabled");
        assert_eq!(warned(&stderr(&o)), !quiet, "{}", stderr(&o));
        assert!(
            syslog.iter().any(|l| warned(l)),
            "no syslog warning: {syslog:?}"
        );
    }
}

/// Item 10: `--header 'Transfer-Encoding: identity'` made a PUT with two
/// Transfer-Encoding headers, `--header 'Content-Length: 1000'` hung. Framing and
/// hop-by-hop headers are refused in `--header` and in the plugin's `extra_headers`.
#[test]
fn framing_headers_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let sr = helpers::new_sr(dir.path());
    let (listener, port) = untouched();
    let url = format!("http://127.0.0.1:{port}");
    for h in [
        "Transfer-Encoding: identity",
        "Content-Length: 1000",
        "connection: close",
        "Host: elsewhere",
    ] {
        let mut args = download_args(&url, sr.to_str().unwrap());
        args.extend(["--header", h]);
        let o = run(dir.path(), &args);
        assert_eq!(o.status.code(), Some(2), "{h}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("set by glance-vhd itself"),
            "{}",
            stderr(&o)
        );
    }
    assert_untouched(&listener);
    let failure = plugin_download2(
        dir.path(),
        &url,
        sr.to_str().unwrap(),
        json!({"Content-Length": "1000"}),
    );
    assert_eq!(failure[2], "ArgumentError", "{failure:?}");
    assert!(failure[3].contains("Content-Length"), "{failure:?}");
    assert_untouched(&listener);
}

/// Item 11: a 900 KB member name was echoed whole to Nova and to syslog. Every message
/// is capped at 4 KiB.
#[test]
fn messages_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    let tgz = dir.path().join("long-name.tgz");
    let script = format!(
        "import io, tarfile\n\
         with tarfile.open({:?}, 'w:gz', format=tarfile.PAX_FORMAT) as t:\n\
         \x20   i = tarfile.TarInfo('x' * 900000); i.size = 3\n\
         \x20   t.addfile(i, io.BytesIO(b'abc'))\n",
        tgz.to_str().unwrap()
    );
    let st = Command::new("python3")
        .args(["-c", &script])
        .status()
        .unwrap();
    assert!(st.success());
    let sr = helpers::new_sr(dir.path());
    let lock = dir.path().join("lock");
    let url = format!("file://{}", tgz.display());
    let args = [
        "download",
        "--endpoint",
        &url,
        "--sr-path",
        sr.to_str().unwrap(),
        "--lock-dir",
        lock.to_str().unwrap(),
        "--no-lock",
    ];
    let (o, syslog) = run_logged(dir.path(), &args, &[]);
    assert_eq!(
        o.status.code(),
        Some(3),
        "{}",
        &stderr(&o)[..200.min(stderr(&o).len())]
    );
    assert!(
        stderr(&o).len() <= 4200,
        "stderr is {} bytes",
        stderr(&o).len()
    );
    assert!(stderr(&o).contains('…'));
    assert!(syslog.iter().all(|l| l.len() <= 4200));
}

/// Item 11: an error quoted 8 bytes of a root-only file that is not a VHD as its
/// "cookie". No byte of such a file is printed, by any command.
#[test]
fn no_byte_of_a_non_vhd_file_is_printed() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("shadow");
    let mut data = b"ROOTONLY".repeat(64);
    data.extend(vec![b'S'; 4096]);
    let mut file = std::fs::File::create(&f).unwrap();
    file.write_all(&data).unwrap();
    drop(file);
    let p = f.to_str().unwrap();
    for args in [
        vec!["vhd", "info", p],
        vec!["vhd", "info", "--json", p],
        vec!["vhd", "check", p],
        vec!["vhd", "check", "--json", p],
        vec!["vhd", "query", "-n", p, "-v"],
        vec!["vhd", "read", p, "-"],
    ] {
        let o = run(dir.path(), &args);
        assert!(!o.status.success(), "{args:?}");
        let all = format!("{}{}", stdout(&o), stderr(&o));
        for needle in ["ROOTONLY", "SSSSSSSS", "ROOT", "SSSS"] {
            assert!(!all.contains(needle), "{args:?} printed the file: {all}");
        }
    }
}
