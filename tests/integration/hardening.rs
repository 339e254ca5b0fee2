//! Issue 12, items 2, 6 and 11 (parts): root in dom0 facing local users and bad
//! arguments.
//!
//! * The locks follow no symlink and use no directory another user could write: a
//!   planted link as the job lock or the SM lock is refused and its target untouched; a
//!   lock directory that is a link, someone else's, or group/world-writable is refused
//!   by name.
//! * Bad arguments are refused before the first request reaches the store (a counting
//!   store that serves a real image: any request is seen), in the CLI and the plugin;
//!   the time to refusal is printed (`--nocapture`). Too few UUIDs for the image is
//!   refused at the first member beyond them, before it is written.
//! * A `file://` upload is 0600; SIGTERM and SIGINT during a download remove the
//!   staging directory (rolling back a move in progress) and exit 143 / 130.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::json;

use crate::helpers::{self, new_sr, run, staging_dirs, stderr};
use crate::plugin::{call, failure, install_shim};

// ---- item 2: the locks ----

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn chown(p: &Path, uid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), None).unwrap();
}

/// A file an attacker wants root to empty or rewrite: its content and an old mtime.
fn victim(dir: &Path) -> (PathBuf, SystemTime) {
    let v = dir.join("victim");
    std::fs::write(&v, "root's precious file\n").unwrap();
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    std::fs::File::options()
        .write(true)
        .open(&v)
        .unwrap()
        .set_modified(old)
        .unwrap();
    (v, old)
}

fn untouched(v: &Path, mtime: SystemTime) {
    assert_eq!(std::fs::read(v).unwrap(), b"root's precious file\n");
    assert_eq!(std::fs::metadata(v).unwrap().modified().unwrap(), mtime);
}

/// The tap chain as a GNU tar tarball in `dir`.
fn tap_tgz(dir: &Path) -> PathBuf {
    let samples = helpers::unpacked_samples();
    let tgz = dir.join("tap.tgz");
    helpers::gnu_tar(samples.path(), &helpers::TAP_CHAIN, &tgz);
    tgz
}

/// A download of `tgz` into a fresh SR with `extra` flags; the output and the SR.
fn download(
    dir: &Path,
    tgz: &Path,
    lock_dir: &Path,
    extra: &[&str],
) -> (std::process::Output, PathBuf) {
    let sr = new_sr(dir);
    let o = helpers::download_file(dir, tgz, &sr, lock_dir, extra);
    (o, sr)
}

/// Refused (exit 1: the host's set-up), naming `path` and `rule`; the SR unchanged.
fn refused(o: &std::process::Output, sr: &Path, path: &Path, rule: &str) {
    let e = stderr(o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(
        e.contains(&path.display().to_string()),
        "names {}: {e}",
        path.display()
    );
    assert!(e.contains(rule), "says {rule:?}: {e}");
    assert!(
        helpers::listing(sr).is_empty(),
        "{:?}",
        helpers::listing(sr)
    );
}

#[test]
fn a_planted_symlink_as_the_job_lock_is_refused_and_its_target_untouched() {
    let d = tempfile::tempdir().unwrap();
    let tgz = tap_tgz(d.path());
    let (v, mtime) = victim(d.path());
    let locks = d.path().join("locks");
    std::fs::create_dir(&locks).unwrap();
    chmod(&locks, 0o755);
    let lock = locks.join("sr.lock");
    std::os::unix::fs::symlink(&v, &lock).unwrap();
    let (o, sr) = download(
        d.path(),
        &tgz,
        &d.path().join("sm"),
        &["--lock-file", lock.to_str().unwrap()],
    );
    refused(&o, &sr, &lock, "symbolic link");
    untouched(&v, mtime);
    // A dangling one: root creates nothing where it points.
    let lock2 = locks.join("sr2.lock");
    let target = d.path().join("created-by-root");
    std::os::unix::fs::symlink(&target, &lock2).unwrap();
    let (o, sr) = download(
        d.path(),
        &tgz,
        &d.path().join("sm"),
        &["--lock-file", lock2.to_str().unwrap()],
    );
    refused(&o, &sr, &lock2, "symbolic link");
    assert!(!target.exists());
}

/// Each way a lock directory can be another user's to change: a symlink (to a fine
/// directory), owned by uid 65534, group-writable, world-writable (even sticky).
fn bad_lock_dirs(base: &Path) -> Vec<(PathBuf, &'static str)> {
    let mut out = Vec::new();
    std::fs::create_dir_all(base).unwrap();
    let real = base.join("real");
    std::fs::create_dir(&real).unwrap();
    chmod(&real, 0o755);
    let link = base.join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    out.push((link, "symbolic link"));
    let theirs = base.join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    chmod(&theirs, 0o755);
    chown(&theirs, 65534);
    out.push((theirs, "owned by uid 65534"));
    for (name, mode) in [("group", 0o775), ("world", 0o757), ("sticky", 0o1777)] {
        let p = base.join(name);
        std::fs::create_dir(&p).unwrap();
        chmod(&p, mode);
        out.push((p, "writable by group or others"));
    }
    out
}

#[test]
fn a_job_lock_directory_that_others_could_change_is_refused_by_name() {
    let d = tempfile::tempdir().unwrap();
    let tgz = tap_tgz(d.path());
    for (dir, rule) in bad_lock_dirs(&d.path().join("jobs")) {
        let lock = dir.join("sr.lock");
        let (o, sr) = download(
            d.path(),
            &tgz,
            &d.path().join("sm"),
            &["--lock-file", lock.to_str().unwrap()],
        );
        refused(&o, &sr, &dir, rule);
        assert!(!lock.exists(), "{} created", lock.display());
    }
    // A missing lock directory is made, by mkdir, 0755 at most.
    let made = d.path().join("jobs").join("made");
    let (o, _) = download(
        d.path(),
        &tgz,
        &d.path().join("sm"),
        &["--lock-file", made.join("sr.lock").to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let m = std::fs::symlink_metadata(&made).unwrap();
    assert!(m.is_dir() && m.mode() & 0o022 == 0, "{:o}", m.mode());
}

#[test]
fn the_sm_lock_follows_no_link_and_uses_no_directory_others_could_change() {
    let d = tempfile::tempdir().unwrap();
    let tgz = tap_tgz(d.path());
    // --lock-dir itself.
    for (dir, rule) in bad_lock_dirs(&d.path().join("sm")) {
        let (o, sr) = download(d.path(), &tgz, &dir, &["--no-lock"]);
        refused(&o, &sr, &dir, rule);
        assert_eq!(staging_dirs(&sr), Vec::<String>::new());
    }
    // <lock-dir>/<sr-uuid>: the SR's UUID is known before the SR exists here.
    let lock_dir = d.path().join("sm-ok");
    std::fs::create_dir(&lock_dir).unwrap();
    chmod(&lock_dir, 0o755);
    let parent = d.path().join("parent");
    std::fs::create_dir(&parent).unwrap();
    let other = d.path().join("elsewhere");
    std::fs::create_dir(&other).unwrap();
    chmod(&other, 0o755);
    for case in ["link", "theirs", "world", "file-link", "dangling"] {
        let sr = new_sr(&parent);
        let uuid = sr.file_name().unwrap().to_str().unwrap().to_string();
        let sub = lock_dir.join(&uuid);
        let victims = d.path().join("victims").join(&uuid);
        std::fs::create_dir_all(&victims).unwrap();
        let (v, mtime) = victim(&victims);
        let (path, rule) = match case {
            "link" => {
                std::os::unix::fs::symlink(&other, &sub).unwrap();
                (sub.clone(), "symbolic link")
            }
            "theirs" => {
                std::fs::create_dir(&sub).unwrap();
                chmod(&sub, 0o755);
                chown(&sub, 65534);
                (sub.clone(), "owned by uid 65534")
            }
            "world" => {
                std::fs::create_dir(&sub).unwrap();
                chmod(&sub, 0o777);
                (sub.clone(), "writable by group or others")
            }
            "file-link" => {
                std::fs::create_dir(&sub).unwrap();
                chmod(&sub, 0o755);
                std::os::unix::fs::symlink(&v, sub.join("sr")).unwrap();
                (sub.join("sr"), "symbolic link")
            }
            _ => {
                std::fs::create_dir(&sub).unwrap();
                chmod(&sub, 0o755);
                std::os::unix::fs::symlink(other.join("created-by-root"), sub.join("sr")).unwrap();
                (sub.join("sr"), "symbolic link")
            }
        };
        let o = helpers::download_file(d.path(), &tgz, &sr, &lock_dir, &["--no-lock"]);
        refused(&o, &sr, &path, rule);
        untouched(&v, mtime);
        assert_eq!(helpers::listing(&other), Vec::<String>::new(), "{case}");
    }
}

// ---- item 6: bad arguments before the first request ----

/// A store that counts connections and answers each GET with `image` as Glance v1 would
/// (200, the body): with the start binary a bad argument is found only after it.
struct CountingStore {
    port: u16,
    seen: Arc<AtomicUsize>,
}

impl CountingStore {
    fn serve(image: Vec<u8>) -> CountingStore {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let seen = Arc::new(AtomicUsize::new(0));
        let count = seen.clone();
        let image = Arc::new(image);
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(mut c) = c else { continue };
                count.fetch_add(1, Ordering::SeqCst);
                let image = image.clone();
                std::thread::spawn(move || {
                    let mut r = BufReader::new(c.try_clone().unwrap());
                    let mut line = String::new();
                    while r.read_line(&mut line).is_ok_and(|n| n > 0) {
                        if line == "\r\n" {
                            break;
                        }
                        line.clear();
                    }
                    let _ = write!(
                        c,
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nx-image-meta-size: {}\r\nConnection: close\r\n\r\n",
                        image.len(),
                        image.len()
                    );
                    let _ = c.write_all(&image);
                });
            }
        });
        CountingStore { port, seen }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn requests(&self) -> usize {
        self.seen.load(Ordering::SeqCst)
    }
}

/// An image of one VHD of `mib` MiB of random data (a download long enough for the
/// time to refusal to mean something).
fn big_image(dir: &Path, mib: usize) -> Vec<u8> {
    let scratch = new_sr(dir);
    let vdi = helpers::random_vdi(&scratch, mib);
    let stage = dir.join("stage");
    std::fs::create_dir_all(&stage).unwrap();
    std::fs::rename(scratch.join(format!("{vdi}.vhd")), stage.join("0.vhd")).unwrap();
    let tgz = dir.join("big.tgz");
    let st = Command::new("tar")
        .arg("-zcf")
        .arg(&tgz)
        .arg("--directory")
        .arg(&stage)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::read(&tgz).unwrap()
}

const U1: &str = "cccccccc-0000-4000-8000-000000000001";
const U2: &str = "cccccccc-0000-4000-8000-000000000002";

#[test]
fn bad_cli_arguments_are_refused_before_any_request() {
    let d = tempfile::tempdir().unwrap();
    let store = CountingStore::serve(big_image(d.path(), 64));
    let url = store.url();
    let file = d.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let not_uuid = d.path().join("not-an-sr");
    std::fs::create_dir(&not_uuid).unwrap();
    let named_file = d.path().join("dddddddd-0000-4000-8000-000000000009");
    std::fs::write(&named_file, "").unwrap();
    let sr = new_sr(d.path());
    std::fs::write(sr.join(format!("{U2}.vhd")), "").unwrap();
    let sr_s = sr.to_str().unwrap().to_string();
    let missing = d.path().join("eeeeeeee-0000-4000-8000-000000000009");
    let cases: Vec<(&str, Vec<String>, i32)> = vec![
        (
            "missing SR",
            vec!["--sr-path".into(), missing.to_str().unwrap().into()],
            3,
        ),
        (
            "relative SR",
            vec![
                "--sr-path".into(),
                "eeeeeeee-0000-4000-8000-000000000009".into(),
            ],
            3,
        ),
        (
            "SR is a file",
            vec!["--sr-path".into(), named_file.to_str().unwrap().into()],
            3,
        ),
        ("SR is /", vec!["--sr-path".into(), "/".into()], 3),
        (
            "SR not named by a UUID",
            vec!["--sr-path".into(), not_uuid.to_str().unwrap().into()],
            3,
        ),
        (
            "a UUID given twice",
            vec![
                "--sr-path".into(),
                sr_s.clone(),
                "--uuid".into(),
                U1.into(),
                "--uuid".into(),
                U1.into(),
            ],
            3,
        ),
        (
            "a UUID already in the SR",
            vec!["--sr-path".into(), sr_s.clone(), "--uuid".into(), U2.into()],
            3,
        ),
        (
            "an uppercase UUID",
            vec![
                "--sr-path".into(),
                sr_s.clone(),
                "--uuid".into(),
                U1.to_uppercase(),
            ],
            2,
        ),
        (
            "the nil UUID",
            vec![
                "--sr-path".into(),
                sr_s.clone(),
                "--uuid".into(),
                "00000000-0000-0000-0000-000000000000".into(),
            ],
            2,
        ),
    ];
    for (what, args, code) in cases {
        let mut argv = vec![
            "download",
            "--endpoint",
            &url,
            "--image-id",
            "img",
            "--api-version",
            "1",
            "--no-lock",
            "--retries",
            "0",
            "--lock-dir",
        ];
        let lock = d.path().join("lock");
        argv.push(lock.to_str().unwrap());
        argv.extend(args.iter().map(String::as_str));
        let t = Instant::now();
        let o = run(d.path(), &argv);
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        eprintln!("cli {what}: exit {:?} in {ms:.0} ms", o.status.code());
        assert_eq!(
            store.requests(),
            0,
            "{what}: a request reached the store; {}",
            stderr(&o)
        );
        assert_eq!(o.status.code(), Some(code), "{what}: {}", stderr(&o));
        assert_eq!(staging_dirs(&sr), Vec::<String>::new());
    }
    assert!(!Path::new("/0.vhd").exists());
}

#[test]
fn bad_plugin_arguments_are_refused_before_any_request() {
    let d = tempfile::tempdir().unwrap();
    let store = CountingStore::serve(big_image(d.path(), 64));
    let shim = install_shim(d.path(), "glance");
    let env = json!({"GLANCE_VHD_LOCK_DIR": d.path().join("lock").to_str().unwrap()});
    let sr = new_sr(d.path());
    std::fs::write(sr.join(format!("{U2}.vhd")), "").unwrap();
    let file = d.path().join("dddddddd-0000-4000-8000-000000000009");
    std::fs::write(&file, "").unwrap();
    let not_uuid = d.path().join("not-an-sr");
    std::fs::create_dir(&not_uuid).unwrap();
    let missing = d.path().join("eeeeeeee-0000-4000-8000-000000000009");
    let long = "a".repeat(10_000);
    let sr_s = sr.to_str().unwrap();
    let stack = |s: &[&str]| json!(s);
    let cases = vec![
        ("a path separator", sr_s, stack(&["../../../../etc/x"]), 0),
        (
            "a NUL",
            sr_s,
            stack(&["cccccccc-0000-4000-8000-00000000000\u{0}"]),
            2,
        ),
        ("an empty entry", sr_s, stack(&[""]), 0),
        ("10 KB", sr_s, stack(&[&long]), 0),
        ("a duplicate", sr_s, stack(&[U1, U1]), 0),
        ("a UUID already in the SR", sr_s, stack(&[U1, U2]), 0),
        ("uppercase", sr_s, stack(&[&U1.to_uppercase()]), 0),
        ("braced", sr_s, stack(&[&format!("{{{U1}}}")]), 0),
        ("an empty stack", sr_s, stack(&[]), 0),
        ("a missing SR", missing.to_str().unwrap(), stack(&[U1]), 0),
        (
            "a relative SR",
            "eeeeeeee-0000-4000-8000-000000000009",
            stack(&[U1]),
            0,
        ),
        (
            "an SR that is a file",
            file.to_str().unwrap(),
            stack(&[U1]),
            0,
        ),
        ("the SR /", "/", stack(&[U1]), 0),
        (
            "an SR not named by a UUID",
            not_uuid.to_str().unwrap(),
            stack(&[U1]),
            0,
        ),
    ];
    for (what, sr_path, uuid_stack, protocol) in cases {
        let req = json!({"fn": "download_vhd2", "shim": shim, "env": env, "protocol": protocol,
            "kwargs": {"image_id": "img", "endpoint": store.url(), "sr_path": sr_path,
                       "uuid_stack": uuid_stack, "extra_headers": {}, "api_version": 1}});
        let t = Instant::now();
        let r = call(req);
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        let f = failure(&r);
        eprintln!(
            "plugin {what}: {} in {ms:.0} ms",
            f.get(2).map_or("", String::as_str)
        );
        assert_eq!(
            store.requests(),
            0,
            "{what}: a request reached the store: {f:?}"
        );
        assert_eq!(
            f[..3],
            ["XENAPI_PLUGIN_FAILURE", "download_vhd2", "ArgumentError"],
            "{what}"
        );
        assert!(
            f[3].len() < 1024,
            "{what}: the message is bounded: {}",
            f[3].len()
        );
        assert_eq!(staging_dirs(&sr), Vec::<String>::new());
    }
    assert!(!Path::new("/0.vhd").exists());
}

/// A tarball of the tap chain with its members in chain order (0.vhd, 1.vhd, 2.vhd).
fn ordered_tap_tgz(dir: &Path) -> PathBuf {
    let samples = helpers::unpacked_samples();
    let tgz = dir.join("ordered.tgz");
    let gz = flate2::write::GzEncoder::new(
        std::fs::File::create(&tgz).unwrap(),
        flate2::Compression::fast(),
    );
    let mut b = tar::Builder::new(gz);
    for (member, sample) in helpers::TAP_CHAIN {
        b.append_path_with_name(samples.path().join(sample), member)
            .unwrap();
    }
    b.into_inner().unwrap().finish().unwrap();
    tgz
}

#[test]
fn too_few_uuids_are_refused_at_the_member_beyond_them() {
    let d = tempfile::tempdir().unwrap();
    let tgz = ordered_tap_tgz(d.path());
    let (o, sr) = download(
        d.path(),
        &tgz,
        &d.path().join("lock"),
        &["--no-lock", "--uuid", U1],
    );
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(3), "{e}");
    // Refused at the second member, before a byte of it was written.
    assert!(
        e.contains("member 1.vhd is VHD number 2") && e.contains("only 1 VDI UUIDs"),
        "{e}"
    );
    assert!(
        helpers::listing(&sr).is_empty(),
        "{:?}",
        helpers::listing(&sr)
    );
    // Enough of them: imported.
    let (o, _) = download(
        d.path(),
        &tgz,
        &d.path().join("lock"),
        &[
            "--no-lock",
            "--uuid",
            U1,
            "--uuid",
            U2,
            "--uuid",
            "cccccccc-0000-4000-8000-000000000003",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
}

// ---- item 11: file:// uploads 0600, signals clean up ----

#[test]
fn a_file_upload_is_created_0600() {
    let d = tempfile::tempdir().unwrap();
    let sr = new_sr(d.path());
    let chain = helpers::import_tap_chain(d.path(), &sr, &[]);
    let out = d.path().join("image.tgz");
    let url = format!("file://{}", out.display());
    let mut args = vec![
        "upload",
        "--endpoint",
        &url,
        "--sr-path",
        sr.to_str().unwrap(),
        "--no-lock",
    ];
    for u in &chain {
        args.extend(["--vdi", u]);
    }
    let o = run(d.path(), &args);
    assert!(o.status.success(), "{}", stderr(&o));
    let mode = std::fs::metadata(&out).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o600, "{mode:o}");
}

/// A download of the tap chain into a fresh SR, started with `env`, `extra` flags.
fn spawn_download(
    d: &Path,
    tgz: &Path,
    env: &[(&str, &str)],
    extra: &[&str],
) -> (std::process::Child, PathBuf) {
    let sr = new_sr(d);
    let url = format!("file://{}", tgz.display());
    let lock = d.join("lock");
    let child = Command::new(helpers::bin())
        .args([
            "download",
            "--endpoint",
            &url,
            "--sr-path",
            sr.to_str().unwrap(),
        ])
        .args(["--lock-dir", lock.to_str().unwrap(), "--no-lock", "-q"])
        .args(extra)
        .envs(env.iter().copied())
        .current_dir(d)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    (child, sr)
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let t = Instant::now();
    while !done() {
        assert!(t.elapsed() < Duration::from_secs(30), "waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn kill(child: &std::process::Child, sig: &str) {
    let st = Command::new("kill")
        .args(["-s", sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

/// `sig` while the process is at `pause` (or, without one, while it streams at 1 KiB/s):
/// it exits `code`, no staging directory is left and the SR holds nothing.
fn signal_cleans_up(sig: &str, code: i32, pause: Option<&str>) {
    let d = tempfile::tempdir().unwrap();
    let tgz = tap_tgz(d.path());
    let mark = d.path().join("paused");
    let mark_s = mark.to_str().unwrap().to_string();
    let (mut child, sr) = match pause {
        Some(step) => spawn_download(
            d.path(),
            &tgz,
            &[
                ("GLANCE_VHD_TEST_PAUSE", step),
                ("GLANCE_VHD_TEST_PAUSE_MARK", &mark_s),
            ],
            &[],
        ),
        None => spawn_download(d.path(), &tgz, &[], &["--rate-limit", "1K"]),
    };
    match pause {
        Some(_) => wait_for("the pause", || mark.exists()),
        None => wait_for("the staging directory", || !staging_dirs(&sr).is_empty()),
    }
    assert_eq!(staging_dirs(&sr).len(), 1);
    if pause.is_some_and(|p| p.starts_with("move")) {
        assert!(
            helpers::listing(&sr).iter().any(|n| n.ends_with(".vhd")),
            "the base was moved"
        );
    }
    let t = Instant::now();
    kill(&child, sig);
    let st = child.wait().unwrap();
    eprintln!(
        "{sig} at {pause:?}: {st:?} after {:.0} ms",
        t.elapsed().as_secs_f64() * 1000.0
    );
    assert_eq!(st.code(), Some(code), "{st:?}");
    assert_eq!(
        helpers::listing(&sr),
        Vec::<String>::new(),
        "nothing left in the SR"
    );
}

#[test]
fn sigterm_during_a_download_leaves_no_staging_and_exits_143() {
    signal_cleans_up("TERM", 143, Some("relink:0"));
}

#[test]
fn sigint_during_a_download_leaves_no_staging_and_exits_130() {
    signal_cleans_up("INT", 130, None);
}

#[test]
fn sigterm_during_the_move_rolls_it_back() {
    // After the base is linked into the SR, before the next file: rolled back as sweep
    // would, so the SR is as it was.
    signal_cleans_up("TERM", 143, Some("move:1"));
}
