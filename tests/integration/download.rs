//! Download into an SR from the local store (file:// and stdin): tarballs made by GNU tar
//! as the old plugin made them, and hostile ones made with Python's tarfile. Every
//! failure must leave the SR exactly as it was, with no staging directory.

use crate::helpers;
use crate::helpers::{
    run, snapshot, stderr, stdout, unpacked_samples, CHILD_CONTENT as CHILD,
    GRANDCHILD_CONTENT as GRANDCHILD, PARENT_CONTENT as PARENT,
};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

struct Sr {
    _dir: tempfile::TempDir,
    sr: PathBuf,
    lock: PathBuf,
    samples: tempfile::TempDir,
}

impl Sr {
    fn new() -> Sr {
        let dir = tempfile::tempdir().unwrap();
        let sr = helpers::new_sr(dir.path());
        // An existing VDI that must never be touched.
        std::fs::write(sr.join("existing.vhd"), b"not touched").unwrap();
        let lock = dir.path().join("lock");
        Sr {
            sr,
            lock,
            samples: unpacked_samples(),
            _dir: dir,
        }
    }

    fn sample(&self, name: &str) -> PathBuf {
        self.samples.path().join(name)
    }

    /// A tarball made the old plugin's way: `tar -zc --directory=STAGING .`.
    fn gnu_tar(&self, files: &[(&str, &str)]) -> PathBuf {
        let out = self
            ._dir
            .path()
            .join(format!("img-{}.tgz", files.len() * 1000 + rand()));
        helpers::gnu_tar(self.samples.path(), files, &out);
        out
    }

    /// A tarball from a make_tar.py spec.
    fn py_tar(&self, spec: serde_json::Value) -> PathBuf {
        let out = self._dir.path().join(format!("py-{}.tgz", rand()));
        let st = Command::new("python3")
            .arg(helpers::repo().join("tests/peers/make_tar.py"))
            .arg(&out)
            .arg(spec.to_string())
            .status()
            .unwrap();
        assert!(st.success());
        out
    }

    fn download(&self, tgz: &Path, extra: &[&str]) -> std::process::Output {
        helpers::download_file(self._dir.path(), tgz, &self.sr, &self.lock, extra)
    }

    fn vhds(&self) -> Vec<String> {
        let mut v: Vec<String> = snapshot(&self.sr)
            .into_keys()
            .filter(|n| n != "existing.vhd")
            .collect();
        v.sort();
        v
    }
}

fn rand() -> usize {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn content_of(sr: &Sr, uuid: &str) -> String {
    helpers::content_sha(sr._dir.path(), &sr.sr.join(format!("{uuid}.vhd")))
}

#[test]
fn new_style_chain_with_given_uuids() {
    let sr = Sr::new();
    let tgz = sr.gnu_tar(&[
        ("0.vhd", "grandchild.vhd"),
        ("1.vhd", "child.vhd"),
        ("2.vhd", "parent.vhd"),
    ]);
    let u = [
        "11111111-1111-4111-8111-111111111111",
        "22222222-2222-4222-8222-222222222222",
        "33333333-3333-4333-8333-333333333333",
    ];
    let o = sr.download(
        &tgz,
        &["--uuid", u[0], "--uuid", u[1], "--uuid", u[2], "--json"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["root"]["uuid"], u[0]);
    assert_eq!(v["chain"], serde_json::json!(u));
    // The stream hashes are of the tarball as sent.
    let md5 = Command::new("md5sum").arg(&tgz).output().unwrap();
    assert_eq!(
        v["stream"]["md5"].as_str().unwrap(),
        &stdout(&md5)[..32],
        "MD5 of the bytes received"
    );
    assert_eq!(
        sr.vhds(),
        u.iter().map(|x| format!("{x}.vhd")).collect::<Vec<_>>()
    );
    assert_eq!(
        std::fs::read(sr.sr.join("existing.vhd")).unwrap(),
        b"not touched"
    );
    assert_eq!(content_of(&sr, u[0]), GRANDCHILD);
    assert_eq!(content_of(&sr, u[1]), CHILD);
    assert_eq!(content_of(&sr, u[2]), PARENT);
    let leaf = sr.sr.join(format!("{}.vhd", u[0]));
    let o = run(
        sr._dir.path(),
        &["vhd", "check", "--parents", leaf.to_str().unwrap()],
    );
    assert!(stdout(&o).ends_with("is valid\n"), "{}", stdout(&o));
    let o = run(
        sr._dir.path(),
        &["vhd", "query", "-n", leaf.to_str().unwrap(), "-p", "-u"],
    );
    assert_eq!(stdout(&o), format!("./{}.vhd\n", u[1]));
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&leaf).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o644);
}

#[test]
fn old_style_image_and_snap_and_a_single_free_name_and_swap() {
    let sr = Sr::new();
    // Diablo: snap.vhd is the child of image.vhd.
    let tgz = sr.gnu_tar(&[
        ("image.vhd", "child.vhd"),
        ("snap.vhd", "grandchild.vhd"),
        ("base.vhd", "parent.vhd"),
    ]);
    let o = sr.download(&tgz, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let uuids: Vec<String> = stdout(&o).lines().map(str::to_string).collect();
    assert_eq!(uuids.len(), 3);
    assert_eq!(content_of(&sr, &uuids[0]), GRANDCHILD);
    assert_eq!(content_of(&sr, &uuids[1]), CHILD);

    let sr = Sr::new();
    let tgz = sr.gnu_tar(&[("my-disk.vhd", "parent.vhd"), ("swap.vhd", "parent2.vhd")]);
    let o = sr.download(&tgz, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let uuids: Vec<String> = stdout(&o).lines().map(str::to_string).collect();
    assert_eq!(uuids.len(), 1, "swap.vhd is ignored");
    assert_eq!(sr.vhds().len(), 1);
    assert_eq!(content_of(&sr, &uuids[0]), PARENT);
}

#[test]
fn stdin_works_as_a_store() {
    let sr = Sr::new();
    let tgz = sr.gnu_tar(&[("0.vhd", "parent.vhd")]);
    let out = Command::new(helpers::bin())
        .args(["download", "--endpoint", "-", "--sr-path"])
        .arg(&sr.sr)
        .arg("--lock-dir")
        .arg(&sr.lock)
        .stdin(Stdio::from(std::fs::File::open(&tgz).unwrap()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(sr.vhds().len(), 1);
}

/// Every hostile or broken image: a clear error naming the problem, the SR unchanged,
/// no staging directory left.
#[test]
fn hostile_and_broken_images_leave_the_sr_untouched() {
    let sr = Sr::new();
    let p = |n: &str| sr.sample(n).to_str().unwrap().to_string();
    // A VHD with a broken footer checksum; a truncated VHD; non-VHD bytes.
    let bad_sum = sr._dir.path().join("badsum.vhd");
    let mut b = std::fs::read(sr.sample("parent.vhd")).unwrap();
    let n = b.len();
    b[n - 512 + 64] ^= 0xff;
    b[64] ^= 0xff;
    std::fs::write(&bad_sum, &b).unwrap();
    let truncated = sr._dir.path().join("trunc.vhd");
    std::fs::write(
        &truncated,
        &std::fs::read(sr.sample("parent.vhd")).unwrap()[..3000],
    )
    .unwrap();
    let hidden = sr._dir.path().join("hidden.vhd");
    std::fs::copy(sr.sample("child-hidden.vhd"), &hidden).unwrap();
    let good = sr.gnu_tar(&[
        ("0.vhd", "grandchild.vhd"),
        ("1.vhd", "child.vhd"),
        ("2.vhd", "parent.vhd"),
    ]);
    let good_bytes = std::fs::read(&good).unwrap();
    let seventeen: Vec<serde_json::Value> = (0..17)
        .map(|i| serde_json::json!({"name": format!("{i}.vhd"), "file": p("empty-child.vhd")}))
        .collect();
    let cases: Vec<(&str, PathBuf, &str)> = vec![
        ("dot-dot", sr.py_tar(serde_json::json!({"members": [{"name": "../x.vhd", "file": p("parent.vhd")}]})), "../x.vhd"),
        ("absolute", sr.py_tar(serde_json::json!({"members": [{"name": "/abs.vhd", "file": p("parent.vhd")}]})), "/abs.vhd"),
        ("symlink", sr.py_tar(serde_json::json!({"members": [{"name": "0.vhd", "symlink": "/etc/passwd"}]})), "symlink"),
        ("hard link", sr.py_tar(serde_json::json!({"members": [{"name": "0.vhd", "file": p("parent.vhd")}, {"name": "1.vhd", "hardlink": "0.vhd"}]})), "hard link"),
        ("device", sr.py_tar(serde_json::json!({"members": [{"name": "0.vhd", "chardev": true}]})), "device"),
        ("fifo", sr.py_tar(serde_json::json!({"members": [{"name": "0.vhd", "fifo": true}]})), "fifo"),
        ("directory 0.vhd", sr.py_tar(serde_json::json!({"members": [{"name": "0.vhd", "dir": true}]})), "directories"),
        ("subdirectory", sr.py_tar(serde_json::json!({"members": [{"name": "a/0.vhd", "file": p("parent.vhd")}]})), "a/0.vhd"),
        ("duplicate", sr.py_tar(serde_json::json!({"members": [{"name": "0.vhd", "file": p("parent.vhd")}, {"name": "./0.vhd", "file": p("parent.vhd")}]})), "duplicate"),
        ("gap", sr.py_tar(serde_json::json!({"members": [{"name": "0.vhd", "file": p("child.vhd")}, {"name": "2.vhd", "file": p("parent.vhd")}]})), "1.vhd"),
        ("17 files", sr.py_tar(serde_json::json!({"members": seventeen})), "16"),
        ("not a vhd name", sr.py_tar(serde_json::json!({"members": [{"name": "0.vhd", "file": p("parent.vhd")}, {"name": "notes.txt", "data_hex": "41"}]})), "notes.txt"),
        ("non-VHD bytes", sr.py_tar(serde_json::json!({"members": [{"name": "0.vhd", "data_hex": "00".repeat(4096)}]})), "0.vhd"),
        ("bad footer checksum", sr.py_tar(serde_json::json!({"members": [{"name": "0.vhd", "file": bad_sum}]})), "checksum"),
        ("truncated VHD", sr.py_tar(serde_json::json!({"members": [{"name": "0.vhd", "file": truncated}]})), "0.vhd"),
        ("hidden leaf", sr.py_tar(serde_json::json!({"members": [{"name": "0.vhd", "file": hidden}, {"name": "1.vhd", "file": p("parent.vhd")}]})), "hidden"),
        ("base claims a parent", sr.py_tar(serde_json::json!({"members": [{"name": "0.vhd", "file": p("grandchild.vhd")}, {"name": "1.vhd", "file": p("child.vhd")}]})), "claims a parent"),
        ("dynamic disk in the middle", sr.py_tar(serde_json::json!({"members": [{"name": "0.vhd", "file": p("parent2.vhd")}, {"name": "1.vhd", "file": p("parent.vhd")}]})), "has a parent"),
        ("member longer than the stream", sr.py_tar(serde_json::json!({"members": [{"name": "0.vhd", "file": p("parent.vhd")}], "truncate_tar_at": 100_000})), "0.vhd"),
        ("truncated gzip", sr.py_tar(serde_json::json!({"members": [{"name": "0.vhd", "file": p("parent.vhd")}], "truncate_gz_at": 3000})), "stream"),
        ("trailing garbage", sr.py_tar(serde_json::json!({"members": [{"name": "0.vhd", "file": p("parent.vhd")}], "trailing_hex": "deadbeef"})), "stream"),
        ("plain tar", sr.py_tar(serde_json::json!({"members": [{"name": "0.vhd", "file": p("parent.vhd")}], "gzip": false})), "stream"),
        ("empty body", { let e = sr._dir.path().join("empty.tgz"); std::fs::write(&e, b"").unwrap(); e }, "no VHD"),
        ("no such file", sr._dir.path().join("missing.tgz"), "missing.tgz"),
    ];
    // The good image once, so an existing UUID is in the SR for the next case.
    let before = snapshot(&sr.sr);
    for (what, tgz, needle) in &cases {
        let o = sr.download(tgz, &[]);
        assert!(!o.status.success(), "{what}: accepted");
        assert_ne!(
            o.status.code(),
            Some(101),
            "{what}: panicked: {}",
            stderr(&o)
        );
        let err = stderr(&o);
        assert!(err.starts_with("glance-vhd: "), "{what}: {err}");
        assert!(
            err.contains(needle),
            "{what}: error does not mention {needle:?}: {err}"
        );
        assert_eq!(snapshot(&sr.sr), before, "{what}: the SR changed");
    }
    // A UUID that already exists in the SR: refused, nothing replaced or left behind.
    std::fs::write(&good, &good_bytes).unwrap();
    std::fs::write(
        sr.sr.join("33333333-3333-4333-8333-333333333333.vhd"),
        b"an existing VDI",
    )
    .unwrap();
    let before = snapshot(&sr.sr);
    let o = sr.download(
        &good,
        &[
            "--uuid",
            "11111111-1111-4111-8111-111111111111",
            "--uuid",
            "22222222-2222-4222-8222-222222222222",
            "--uuid",
            "33333333-3333-4333-8333-333333333333",
        ],
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("already exists"), "{}", stderr(&o));
    assert_eq!(snapshot(&sr.sr), before, "existing UUID: the SR changed");
    // Too few UUIDs.
    let o = sr.download(&good, &["--uuid", "11111111-1111-4111-8111-111111111111"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("UUIDs"), "{}", stderr(&o));
    assert_eq!(snapshot(&sr.sr), before);
}

#[test]
fn sweep_removes_only_stale_unlocked_staging_dirs() {
    let sr = Sr::new();
    let stale = sr.sr.join(".glance-vhd-staging-dead");
    std::fs::create_dir(&stale).unwrap();
    std::fs::write(stale.join("0.vhd"), b"partial").unwrap();
    let other = sr.sr.join("unrelated-dir");
    std::fs::create_dir(&other).unwrap();
    // Too recent with the default threshold.
    let o = run(
        sr._dir.path(),
        &["sweep", "--sr-path", sr.sr.to_str().unwrap()],
    );
    assert!(o.status.success());
    assert!(stale.exists());
    // Held by a live process (flock): kept.
    let mut holder = Command::new("flock")
        .arg(&stale)
        .args(["sleep", "2"])
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let o = run(
        sr._dir.path(),
        &[
            "sweep",
            "--sr-path",
            sr.sr.to_str().unwrap(),
            "--older-than",
            "0",
        ],
    );
    assert!(o.status.success());
    assert!(stale.exists(), "a live process's staging dir was removed");
    assert!(stdout(&o).contains("in use"), "{}", stdout(&o));
    // The lock goes when the holder (and the sleep that inherited it) exits.
    holder.wait().unwrap();
    let o = run(
        sr._dir.path(),
        &[
            "sweep",
            "--sr-path",
            sr.sr.to_str().unwrap(),
            "--older-than",
            "0",
        ],
    );
    assert!(o.status.success());
    assert!(!stale.exists());
    assert!(other.exists() && sr.sr.join("existing.vhd").exists());
}

/// An SR too small for the image: refused from the tar headers' declared sizes before a
/// byte is written (the SR is a 4 MiB tmpfs; we are root here, as in dom0).
#[test]
fn an_image_larger_than_the_free_space_is_refused_before_writing() {
    let sr = Sr::new();
    let small = sr._dir.path().join("5a11e550-0000-4000-8000-000000000001");
    std::fs::create_dir(&small).unwrap();
    let _guard = helpers::Tmpfs::mount(&small, "4m");
    std::fs::write(small.join("existing.vhd"), b"keep").unwrap();
    let tgz = sr.gnu_tar(&[("0.vhd", "child.vhd"), ("1.vhd", "parent.vhd")]);
    let url = format!("file://{}", tgz.display());
    let o = run(
        sr._dir.path(),
        &[
            "download",
            "--endpoint",
            &url,
            "--sr-path",
            small.to_str().unwrap(),
            "--lock-dir",
            sr.lock.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("free"), "{}", stderr(&o));
    assert_eq!(
        snapshot(&small).into_keys().collect::<Vec<_>>(),
        ["existing.vhd"]
    );
}
