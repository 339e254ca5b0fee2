//! The HTTP store client against a Glance v1 stand-in (tests/peers/glance_v1_standin.py:
//! no Glance release that runs here still serves v1): status classes, checksums, path
//! prefixes, extra headers, cut connections, idle timeout and deadline. Every failure
//! leaves the SR as it was.

use crate::helpers;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::helpers::Peer as Standin;

struct Fixture {
    dir: tempfile::TempDir,
    images: PathBuf,
    sr: PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let samples = helpers::unpacked_samples();
    let images = dir.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    helpers::gnu_tar(
        samples.path(),
        &[("0.vhd", "child.vhd"), ("1.vhd", "parent.vhd")],
        &images.join("img-1"),
    );
    let sr = helpers::new_sr(dir.path());
    std::fs::write(sr.join("existing.vhd"), b"keep").unwrap();
    Fixture { dir, images, sr }
}

impl Fixture {
    fn download(&self, endpoint: &str, id: &str, extra: &[&str]) -> Output {
        let lock = self.dir.path().join("lock");
        let mut args = vec![
            "download",
            "--endpoint",
            endpoint,
            "--api-version",
            "1",
            "--image-id",
            id,
            "--sr-path",
            self.sr.to_str().unwrap(),
            "--lock-dir",
            lock.to_str().unwrap(),
            // Each SR is this test's own (its own job lock); retries run, quickly.
            "--retry-delay",
            "0.01",
        ];
        args.extend_from_slice(extra);
        helpers::run(self.dir.path(), &args)
    }

    fn listing(&self) -> Vec<String> {
        helpers::listing(&self.sr)
    }

    fn assert_untouched(&self, what: &str) {
        assert_eq!(self.listing(), ["existing.vhd"], "{what}: the SR changed");
    }
}

#[test]
fn v1_download_with_prefix_trailing_slash_and_token() {
    let f = fixture();
    let s = Standin::start(
        &f.images,
        &["--prefix", "/image", "--require-token", "s3cret"],
    );
    let o = f.download(
        &format!("{}/image/", s.url()),
        "img-1",
        &["--header", "X-Auth-Token: s3cret", "--json"],
    );
    assert!(o.status.success(), "{}", helpers::stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["chain"].as_array().unwrap().len(), 2);
    let md5 = Command::new("md5sum")
        .arg(f.images.join("img-1"))
        .output()
        .unwrap();
    assert_eq!(
        v["stream"]["md5"].as_str().unwrap(),
        &helpers::stdout(&md5)[..32]
    );
    assert_eq!(f.listing().len(), 3);
}

fn assert_fails(f: &Fixture, o: &Output, code: i32, needle: &str, what: &str) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "{what}: {}",
        helpers::stderr(o)
    );
    let err = helpers::stderr(o);
    assert!(err.contains(needle), "{what}: {needle:?} not in {err}");
    f.assert_untouched(what);
}

#[test]
fn status_classes_and_checksum_mismatch() {
    let f = fixture();
    // Not found: exit 4, permanent.
    let s = Standin::start(&f.images, &[]);
    let o = f.download(&s.url(), "nope", &[]);
    assert_fails(&f, &o, 4, "404", "404");
    // Unauthorised: permanent (exit 1), not retried.
    let s = Standin::start(&f.images, &["--require-token", "t"]);
    let o = f.download(&s.url(), "img-1", &[]);
    assert_fails(&f, &o, 1, "401", "401");
    for (status, code) in [(403, 1), (500, 5), (503, 5)] {
        let s = Standin::start(&f.images, &["--status", &status.to_string()]);
        let o = f.download(&s.url(), "img-1", &[]);
        assert_fails(&f, &o, code, &status.to_string(), &format!("HTTP {status}"));
    }
    // The declared checksum does not match the bytes: nothing reaches the SR.
    let s = Standin::start(&f.images, &["--wrong-checksum"]);
    let o = f.download(&s.url(), "img-1", &[]);
    assert_fails(&f, &o, 5, "checksum mismatch", "wrong checksum");
    // Image ids are path components.
    let o = f.download(&s.url(), "../etc", &[]);
    assert_fails(&f, &o, 3, "not a valid id", "bad id");
}

#[test]
fn cut_connections_stalls_and_slow_drips_leave_nothing() {
    let f = fixture();
    let size = std::fs::metadata(f.images.join("img-1")).unwrap().len();
    for cut in [5, 10, 100, 600, 1200, size / 2, size - 20, size - 1] {
        let s = Standin::start(&f.images, &["--cut-at", &cut.to_string()]);
        let o = f.download(&s.url(), "img-1", &[]);
        assert!(!o.status.success(), "cut at {cut}: accepted");
        assert_ne!(o.status.code(), Some(101), "cut at {cut}: panicked");
        f.assert_untouched(&format!("cut at {cut}"));
    }
    // A stalled server: the idle timeout fires.
    let s = Standin::start(&f.images, &["--stall-at", "2000"]);
    let t = Instant::now();
    let o = f.download(
        &s.url(),
        "img-1",
        &["--idle-timeout", "2", "--retries", "0"],
    );
    assert!(!o.status.success());
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "idle timeout did not fire"
    );
    assert!(
        helpers::stderr(&o).to_lowercase().contains("timeout")
            || helpers::stderr(&o).contains("timed out"),
        "{}",
        helpers::stderr(&o)
    );
    f.assert_untouched("stall");
    // A slow drip (1 KiB / 0.2 s) never trips the idle timeout; the deadline must.
    let s = Standin::start(&f.images, &["--drip"]);
    let t = Instant::now();
    let o = f.download(
        &s.url(),
        "img-1",
        &["--idle-timeout", "5", "--deadline", "1", "--retries", "0"],
    );
    assert!(!o.status.success());
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "deadline did not fire"
    );
    f.assert_untouched("drip");
}
