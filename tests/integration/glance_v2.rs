//! Against a real Glance 33 on 127.0.0.1 (tests/glance/glance.sh: pip venv, gunicorn,
//! sqlite, file store, no keystone). `make test` installs it; these tests start it.
//! Images go in with a plain HTTP client (tests/glance/glance_client.py) as tarballs
//! made by GNU tar, the way the old plugin made them, and come out through ours — and
//! the reverse for uploads.

use crate::helpers;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::helpers::{
    glance_client as client, glance_record as record, glance_url as glance, listing,
    CHILD_CONTENT as CHILD, GRANDCHILD_CONTENT as GRANDCHILD, PARENT_CONTENT as PARENT,
};

struct Work {
    dir: tempfile::TempDir,
    samples: tempfile::TempDir,
}

impl Work {
    fn new() -> Work {
        Work {
            dir: tempfile::tempdir().unwrap(),
            samples: helpers::unpacked_samples(),
        }
    }

    fn sr(&self, name: &str) -> PathBuf {
        let p = self
            .dir
            .path()
            .join(format!("{name}-1111-4222-8333-444455556666"));
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    /// `tar -zc --directory=STAGE .` of samples under member names.
    fn tarball(&self, files: &[(&str, &str)]) -> PathBuf {
        let out = self
            .dir
            .path()
            .join(format!("{}.tgz", uuid::Uuid::new_v4()));
        helpers::gnu_tar(self.samples.path(), files, &out);
        out
    }

    fn run(&self, args: &[&str]) -> Output {
        helpers::run(self.dir.path(), args)
    }

    fn download(&self, id: &str, sr: &Path, extra: &[&str]) -> Output {
        let lock = self.dir.path().join("lock");
        let mut args = vec![
            "download",
            "--endpoint",
            glance(),
            "--image-id",
            id,
            "--sr-path",
            sr.to_str().unwrap(),
            "--lock-dir",
            lock.to_str().unwrap(),
            "--header",
            "X-Auth-Token: test-token",
        ];
        args.extend_from_slice(extra);
        self.run(&args)
    }

    fn content(&self, vhd: &Path) -> String {
        helpers::content_sha(self.dir.path(), vhd)
    }
}

#[test]
fn download_every_layout_made_by_gnu_tar() {
    let _turn = helpers::glance_turn();
    let w = Work::new();
    for (what, files, expect) in [
        (
            "new style",
            vec![
                ("0.vhd", "grandchild.vhd"),
                ("1.vhd", "child.vhd"),
                ("2.vhd", "parent.vhd"),
            ],
            vec![GRANDCHILD, CHILD, PARENT],
        ),
        (
            "old style",
            vec![("image.vhd", "parent.vhd"), ("snap.vhd", "child.vhd")],
            vec![CHILD, PARENT],
        ),
        (
            "single free name",
            vec![("disk-7.vhd", "parent.vhd")],
            vec![PARENT],
        ),
        (
            "with swap",
            vec![
                ("0.vhd", "child.vhd"),
                ("1.vhd", "parent.vhd"),
                ("swap.vhd", "parent2.vhd"),
            ],
            vec![CHILD, PARENT],
        ),
    ] {
        let tgz = w.tarball(&files);
        let id = helpers::glance_image(Some(&tgz));
        let sr = w.sr(&format!("{:08x}", expect.len() * 1000 + files.len()));
        let before = listing(&sr);
        let o = w.download(&id, &sr, &["--json"]);
        assert!(o.status.success(), "{what}: {}", helpers::stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let chain: Vec<String> = v["chain"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u.as_str().unwrap().to_string())
            .collect();
        assert_eq!(v["root"]["uuid"], chain[0]);
        // Glance's own checksums of what it stored equal what we received.
        let rec = record(&id);
        assert_eq!(v["stream"]["md5"], rec["checksum"], "{what}");
        assert_eq!(v["stream"]["sha512"], rec["os_hash_value"], "{what}");
        let mut want = before.clone();
        want.extend(chain.iter().map(|u| format!("{u}.vhd")));
        want.sort();
        assert_eq!(listing(&sr), want, "{what}: exactly the chain arrives");
        for (u, h) in chain.iter().zip(&expect) {
            assert_eq!(&w.content(&sr.join(format!("{u}.vhd"))), h, "{what}: {u}");
        }
        // libvhdi, an independent reader, follows the relinked chain to the same bytes.
        let files: Vec<PathBuf> = chain.iter().map(|u| sr.join(format!("{u}.vhd"))).collect();
        let v = helpers::vhdi(w.dir.path(), &files, true);
        assert_eq!(v["sha256"], expect[0], "{what}: libvhdi content");
        let leaf = sr.join(format!("{}.vhd", chain[0]));
        let o = w.run(&["vhd", "check", "--parents", leaf.to_str().unwrap()]);
        assert!(
            helpers::stdout(&o).ends_with("is valid\n"),
            "{what}: {}",
            helpers::stdout(&o)
        );
    }
}

#[test]
fn download_failures_leave_the_sr_untouched() {
    let _turn = helpers::glance_turn();
    let w = Work::new();
    let sr = w.sr("0badbad0");
    std::fs::write(sr.join("existing.vhd"), b"keep").unwrap();
    // Unknown image: not found.
    let o = w.download("5a5a5a5a-0000-4000-8000-000000000000", &sr, &[]);
    assert_eq!(o.status.code(), Some(4), "{}", helpers::stderr(&o));
    // An image without data: Glance answers 204.
    let id = helpers::glance_image(None);
    let o = w.download(&id, &sr, &[]);
    assert!(!o.status.success());
    assert!(
        helpers::stderr(&o).contains("no data") || helpers::stderr(&o).contains("queued"),
        "{}",
        helpers::stderr(&o)
    );
    // A hostile tarball stored in Glance.
    let stage = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink("/etc/passwd", stage.path().join("0.vhd")).unwrap();
    let bad = w.dir.path().join("bad.tgz");
    assert!(Command::new("tar")
        .arg("-zcf")
        .arg(&bad)
        .arg("-C")
        .arg(stage.path())
        .arg(".")
        .status()
        .unwrap()
        .success());
    let id = helpers::glance_image(Some(&bad));
    let o = w.download(&id, &sr, &[]);
    assert_eq!(o.status.code(), Some(3), "{}", helpers::stderr(&o));
    assert!(helpers::stderr(&o).contains("symlink"));
    assert_eq!(listing(&sr), ["existing.vhd"]);
    // The connection cut in the middle of the body (a loopback proxy).
    let tgz = w.tarball(&[("0.vhd", "child.vhd"), ("1.vhd", "parent.vhd")]);
    let id = helpers::glance_image(Some(&tgz));
    let port = helpers::glance_port().to_string();
    for cut in ["300", "2000", "9000"] {
        let lock = w.dir.path().join("lock");
        let run = |retries: &str| {
            let proxy = helpers::Peer::cut_proxy(&port, cut, false);
            let url = proxy.url();
            w.run(&[
                "download",
                "--endpoint",
                &url,
                "--image-id",
                &id,
                "--sr-path",
                sr.to_str().unwrap(),
                "--lock-dir",
                lock.to_str().unwrap(),
                "--retries",
                retries,
                "--retry-delay",
                "0.01",
                "-v",
            ])
        };
        // No retry: the cut body is refused.
        let o = run("0");
        assert!(!o.status.success(), "cut at {cut}: accepted");
        assert_eq!(listing(&sr), ["existing.vhd"], "cut at {cut}");
        // Every connection is cut at the same byte, retries and resumes too: each
        // resume brings what its connection carries. Refused with the SR untouched,
        // or — only by resuming — the whole chain, as it reads in the tarball.
        let o = run("3");
        if o.status.success() {
            let err = helpers::stderr(&o);
            assert!(err.contains("resumed at byte"), "cut at {cut}: {err}");
            let leaf = helpers::stdout(&o).lines().next().unwrap().to_string();
            assert_eq!(
                w.content(&sr.join(format!("{leaf}.vhd"))),
                helpers::CHILD_CONTENT,
                "cut at {cut}"
            );
            assert_eq!(listing(&sr).len(), 3, "cut at {cut}");
            for name in listing(&sr) {
                if name != "existing.vhd" {
                    std::fs::remove_file(sr.join(name)).unwrap();
                }
            }
        } else {
            assert_eq!(listing(&sr), ["existing.vhd"], "cut at {cut}");
        }
    }
}

/// An SR with the sample chain under known VDI UUIDs (made by our download).
fn sr_with_chain(w: &Work) -> (PathBuf, [String; 3]) {
    let sr = w.sr("c4a1c4a1");
    let u = helpers::import_tap_chain(w.dir.path(), &sr, &[]);
    (sr, [u[0].clone(), u[1].clone(), u[2].clone()])
}

#[test]
fn upload_then_read_back_with_plain_http_gnu_tar_python_and_our_download() {
    let _turn = helpers::glance_turn();
    let w = Work::new();
    let (sr, uuids) = sr_with_chain(&w);
    let o = w.run(&[
        "upload",
        "--endpoint",
        glance(),
        "--sr-path",
        sr.to_str().unwrap(),
        "--leaf",
        &uuids[0],
        "--create",
        "--name",
        "nightly",
        "--property",
        "os_type=linux",
        "--property",
        "xenapi_image_compression_level=4",
        "--header",
        "X-Auth-Token: test-token",
        "--json",
    ]);
    assert!(o.status.success(), "{}", helpers::stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let id = v["image_id"].as_str().unwrap().to_string();
    let rec = record(&id);
    assert_eq!(rec["status"], "active");
    assert_eq!(rec["disk_format"], "vhd");
    assert_eq!(rec["container_format"], "ovf");
    assert_eq!(rec["os_type"], "linux");
    assert_eq!(
        rec["checksum"], v["stream"]["md5"],
        "Glance's MD5 is of the bytes we sent"
    );
    // To Glance only MD5 is hashed (README "JSON output").
    assert_eq!(v["stream"]["sha512"], serde_json::Value::Null);
    // A plain HTTP download, unpacked by GNU tar and by Python tarfile r|gz.
    let got = w.dir.path().join("got.tgz");
    let o = client(&["download", &id, got.to_str().unwrap()]);
    assert!(o.status.success(), "{}", helpers::stderr(&o));
    // What Glance serves is what we sent, by coreutils' hashers and Glance's SHA-512.
    assert_eq!(v["stream"]["md5"], helpers::sum_file("md5sum", &got));
    assert_eq!(rec["os_hash_value"], helpers::sum_file("sha512sum", &got));
    let x = w.dir.path().join("x");
    std::fs::create_dir(&x).unwrap();
    assert!(Command::new("tar")
        .arg("-zxf")
        .arg(&got)
        .arg("-C")
        .arg(&x)
        .status()
        .unwrap()
        .success());
    for (i, u) in uuids.iter().enumerate() {
        assert_eq!(
            std::fs::read(x.join(format!("{i}.vhd"))).unwrap(),
            std::fs::read(sr.join(format!("{u}.vhd"))).unwrap(),
            "GNU tar: {i}.vhd"
        );
    }
    let py = Command::new("python3")
        .arg("-c")
        .arg("import sys,tarfile,hashlib\nt=tarfile.open(sys.argv[1],'r|gz')\nfor m in t:\n  f=t.extractfile(m)\n  f and print(m.name, hashlib.sha256(f.read()).hexdigest())")
        .arg(&got)
        .output()
        .unwrap();
    assert!(py.status.success(), "{}", helpers::stderr(&py));
    let lines: Vec<String> = helpers::stdout(&py).lines().map(str::to_string).collect();
    for (i, u) in uuids.iter().enumerate() {
        assert_eq!(
            lines[i],
            format!(
                "./{i}.vhd {}",
                helpers::sha256_file(&sr.join(format!("{u}.vhd")))
            )
        );
    }
    // Our download of it reproduces the chain.
    let sr2 = w.sr("d2d2d2d2");
    let o = w.download(&id, &sr2, &[]);
    assert!(o.status.success(), "{}", helpers::stderr(&o));
    let chain: Vec<PathBuf> = helpers::stdout(&o)
        .lines()
        .map(|u| sr2.join(format!("{u}.vhd")))
        .collect();
    assert_eq!(w.content(&chain[0]), GRANDCHILD);
    let v = helpers::vhdi(w.dir.path(), &chain, true);
    assert_eq!(
        v["sha256"], GRANDCHILD,
        "libvhdi reads the downloaded chain"
    );
}

#[test]
fn upload_failures_never_leave_an_active_image() {
    let _turn = helpers::glance_turn();
    let w = Work::new();
    let (sr, uuids) = sr_with_chain(&w);
    let chain = ["--vdi", &uuids[0], "--vdi", &uuids[1], "--vdi", &uuids[2]];
    let up = |id: &str, env: &[(&str, &str)]| {
        let mut args = vec![
            "upload",
            "--endpoint",
            glance(),
            "--sr-path",
            sr.to_str().unwrap(),
            "--image-id",
            id,
        ];
        args.extend_from_slice(&chain);
        helpers::run_env(w.dir.path(), &args, env)
    };
    // Unknown id: ImageNotFound (exit 4).
    let o = up("5b5b5b5b-0000-4000-8000-000000000000", &[]);
    assert_eq!(o.status.code(), Some(4), "{}", helpers::stderr(&o));
    // Already active: refused before any data, permanent.
    let tgz = w.tarball(&[("0.vhd", "parent.vhd")]);
    let active = helpers::glance_image(Some(&tgz));
    let before = record(&active);
    let o = up(&active, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", helpers::stderr(&o));
    assert!(
        helpers::stderr(&o).contains("\"active\""),
        "{}",
        helpers::stderr(&o)
    );
    assert_eq!(record(&active)["checksum"], before["checksum"]);
    // The stream breaking half-way: Glance sees a broken upload, the image is not active.
    for after in ["0", "3000"] {
        let id = helpers::glance_image(None);
        let o = up(&id, &[("GLANCE_VHD_TEST_FAIL_UPLOAD_AFTER", after)]);
        assert!(!o.status.success(), "after {after}: accepted");
        assert!(
            helpers::stderr(&o).contains("injected failure"),
            "{}",
            helpers::stderr(&o)
        );
        let st = record(&id)["status"].as_str().unwrap().to_string();
        assert_ne!(st, "active", "after {after}: a broken upload became active");
    }
    // The connection cut while the body is on its way (a loopback proxy): the image
    // must not become active.
    let port = helpers::glance_port().to_string();
    for cut in ["2000", "12000"] {
        let proxy = helpers::Peer::cut_proxy(&port, cut, true);
        let url = proxy.url();
        let id = helpers::glance_image(None);
        let mut args = vec![
            "upload",
            "--endpoint",
            &url,
            "--sr-path",
            sr.to_str().unwrap(),
            "--image-id",
            &id,
            "--retry-delay",
            "0.01",
        ];
        args.extend_from_slice(&chain);
        let o = w.run(&args);
        drop(proxy);
        assert!(!o.status.success(), "cut at {cut}: accepted");
        let st = record(&id)["status"].as_str().unwrap().to_string();
        assert_ne!(st, "active", "cut at {cut}: a cut upload became active");
    }
    let staging: Vec<_> = std::fs::read_dir(&sr)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(".glance-vhd-staging")
        })
        .collect();
    assert!(staging.is_empty());
}
