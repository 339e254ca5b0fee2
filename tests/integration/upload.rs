//! Upload from an SR: to the local store (read back with GNU tar, gzip and Python
//! `tarfile` `r|gz`) and to the Glance v1 stand-in (headers, queued check, status
//! classes, a broken stream that must never be terminated).

use crate::helpers;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// An SR holding the tap sample chain grandchild → child → parent under VDI UUIDs,
/// made by our own download of a GNU-tar tarball.
struct Sr {
    dir: tempfile::TempDir,
    sr: PathBuf,
    uuids: [&'static str; 3],
}

const UUIDS: [&str; 3] = [
    "aaaaaaaa-0000-4000-8000-000000000001",
    "aaaaaaaa-0000-4000-8000-000000000002",
    "aaaaaaaa-0000-4000-8000-000000000003",
];

fn sr_with_chain() -> Sr {
    let dir = tempfile::tempdir().unwrap();
    let sr = helpers::new_sr(dir.path());
    helpers::import_tap_chain(dir.path(), &sr, &UUIDS);
    Sr {
        dir,
        sr,
        uuids: UUIDS,
    }
}

impl Sr {
    fn upload(&self, endpoint: &str, extra: &[&str]) -> Output {
        self.upload_env(endpoint, extra, &[])
    }

    fn upload_env(&self, endpoint: &str, extra: &[&str], env: &[(&str, &str)]) -> Output {
        let mut args = vec![
            "upload",
            "--endpoint",
            endpoint,
            "--sr-path",
            self.sr.to_str().unwrap(),
            // Retryable statuses are retried (3 times by default), quickly here.
            "--retry-delay",
            "0.01",
        ];
        args.extend_from_slice(extra);
        helpers::run_env(self.dir.path(), &args, env)
    }

    fn vdi(&self, i: usize) -> PathBuf {
        self.sr.join(format!("{}.vhd", self.uuids[i]))
    }

    fn no_staging_left(&self) {
        let left = helpers::staging_dirs(&self.sr);
        assert!(left.is_empty(), "staging left: {left:?}");
    }
}

/// Unpack `tgz` with GNU tar into a new directory and return it.
fn gnu_untar(tgz: &Path, into: &Path) {
    std::fs::create_dir_all(into).unwrap();
    let st = Command::new("tar")
        .arg("-zxf")
        .arg(tgz)
        .arg("-C")
        .arg(into)
        .status()
        .unwrap();
    assert!(st.success(), "GNU tar could not read {}", tgz.display());
}

#[test]
fn local_upload_by_leaf_reads_back_with_gnu_tar_gzip_and_python() {
    let s = sr_with_chain();
    let out = s.dir.path().join("up.tgz");
    let url = format!("file://{}", out.display());
    let o = s.upload(&url, &["--leaf", s.uuids[0], "--image-id", "x", "--json"]);
    assert!(o.status.success(), "{}", helpers::stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["vdis"], serde_json::json!(s.uuids));
    assert_eq!(v["members"], serde_json::json!(["0.vhd", "1.vhd", "2.vhd"]));
    let md5 = Command::new("md5sum").arg(&out).output().unwrap();
    assert_eq!(
        v["stream"]["md5"].as_str().unwrap(),
        &helpers::stdout(&md5)[..32]
    );
    assert!(Command::new("gzip")
        .arg("-t")
        .arg(&out)
        .status()
        .unwrap()
        .success());
    // GNU tar: the members, in order, byte-identical to the SR's files.
    let list = Command::new("tar").arg("-tzf").arg(&out).output().unwrap();
    assert_eq!(helpers::stdout(&list), "./\n./0.vhd\n./1.vhd\n./2.vhd\n");
    let x = s.dir.path().join("x");
    gnu_untar(&out, &x);
    for i in 0..3 {
        assert_eq!(
            std::fs::read(x.join(format!("{i}.vhd"))).unwrap(),
            std::fs::read(s.vdi(i)).unwrap(),
            "{i}.vhd"
        );
    }
    // Python tarfile in stream mode, as the old plugin read it.
    let py = Command::new("python3")
        .arg("-c")
        .arg(
            "import sys,tarfile,hashlib\n\
             t=tarfile.open(sys.argv[1],'r|gz')\n\
             for m in t:\n  f=t.extractfile(m)\n  print(m.name, hashlib.sha256(f.read()).hexdigest() if f else '-')",
        )
        .arg(&out)
        .output()
        .unwrap();
    assert!(py.status.success(), "{}", helpers::stderr(&py));
    let lines: Vec<String> = helpers::stdout(&py).lines().map(str::to_string).collect();
    assert_eq!(lines.len(), 4, "{lines:?}");
    for i in 0..3 {
        assert_eq!(
            lines[i + 1],
            format!("./{i}.vhd {}", helpers::sha256_file(&s.vdi(i)))
        );
    }
    s.no_staging_left();
    // And our own download of it reproduces the chain's content.
    let sr2 = helpers::new_sr(s.dir.path());
    let lock = s.dir.path().join("lock2");
    let o = helpers::download_file(s.dir.path(), &out, &sr2, &lock, &[]);
    assert!(o.status.success(), "{}", helpers::stderr(&o));
    let leaf = helpers::stdout(&o).lines().next().unwrap().to_string();
    assert_eq!(
        helpers::content_sha(s.dir.path(), &sr2.join(format!("{leaf}.vhd"))),
        helpers::GRANDCHILD_CONTENT
    );
}

#[test]
fn levels_threads_and_the_property_all_give_valid_streams() {
    let s = sr_with_chain();
    let mut sizes = Vec::new();
    for (i, extra) in [
        vec!["--compression-level", "1", "--threads", "1"],
        vec!["--compression-level", "9", "--threads", "2"],
        vec!["--property", "xenapi_image_compression_level=1"],
        vec!["--threads", "3"],
    ]
    .iter()
    .enumerate()
    {
        let out = s.dir.path().join(format!("l{i}.tgz"));
        let url = format!("file://{}", out.display());
        let mut args = vec![
            "--vdi",
            s.uuids[0],
            "--vdi",
            s.uuids[1],
            "--vdi",
            s.uuids[2],
            "--image-id",
            "x",
        ];
        args.extend_from_slice(extra);
        let o = s.upload(&url, &args);
        assert!(o.status.success(), "{extra:?}: {}", helpers::stderr(&o));
        let x = s.dir.path().join(format!("x{i}"));
        gnu_untar(&out, &x);
        assert_eq!(
            std::fs::read(x.join("0.vhd")).unwrap(),
            std::fs::read(s.vdi(0)).unwrap()
        );
        sizes.push(std::fs::metadata(&out).unwrap().len());
    }
    assert!(
        sizes[1] < sizes[0],
        "level 9 ({}) not smaller than level 1 ({})",
        sizes[1],
        sizes[0]
    );
    // The same chain packs to the same bytes: level 1 by property = level 1 by flag.
    assert_eq!(sizes[2], sizes[0], "the property sets the level: {sizes:?}");
    assert!(sizes[2] > sizes[1]);
}

#[test]
fn bad_requests_leave_nothing() {
    let s = sr_with_chain();
    let out = s.dir.path().join("bad.tgz");
    let url = format!("file://{}", out.display());
    // A VDI that does not exist.
    let o = s.upload(
        &url,
        &[
            "--vdi",
            "bbbbbbbb-0000-4000-8000-000000000009",
            "--image-id",
            "x",
        ],
    );
    assert_eq!(o.status.code(), Some(4), "{}", helpers::stderr(&o));
    assert!(helpers::stderr(&o).contains("bbbbbbbb-0000-4000-8000-000000000009"));
    // A chain that leaves the SR: the leaf's parent is a file elsewhere.
    let other = s.dir.path().join("elsewhere");
    std::fs::create_dir(&other).unwrap();
    let leaf = "cccccccc-0000-4000-8000-000000000001";
    std::fs::copy(s.vdi(0), s.sr.join(format!("{leaf}.vhd"))).unwrap();
    std::fs::copy(s.vdi(1), other.join("p.vhd")).unwrap();
    std::fs::copy(s.vdi(2), other.join(format!("{}.vhd", s.uuids[2]))).unwrap();
    let o = helpers::run(
        s.dir.path(),
        &[
            "vhd",
            "set-parent",
            s.sr.join(format!("{leaf}.vhd")).to_str().unwrap(),
            other.join("p.vhd").to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", helpers::stderr(&o));
    let o = s.upload(&url, &["--leaf", leaf, "--image-id", "x"]);
    assert_eq!(o.status.code(), Some(3), "{}", helpers::stderr(&o));
    assert!(
        helpers::stderr(&o).contains("not a <uuid>.vhd in the SR"),
        "{}",
        helpers::stderr(&o)
    );
    // Usage errors.
    let o = s.upload(&url, &["--image-id", "x"]);
    assert_eq!(o.status.code(), Some(2));
    // Glance needs an image: --image-id or --create (a local file does not).
    let o = s.upload("http://127.0.0.1:9", &["--leaf", leaf]);
    assert_eq!(o.status.code(), Some(2), "{}", helpers::stderr(&o));
    let o = s.upload(
        &url,
        &[
            "--leaf",
            leaf,
            "--image-id",
            "x",
            "--compression-level",
            "10",
        ],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(!out.exists());
    s.no_staging_left();
}

use crate::helpers::Peer as Standin;

#[test]
fn v1_upload_headers_queued_check_and_status_classes() {
    let s = sr_with_chain();
    let g = Standin::start(&s.dir.path().join("store"), &[]);
    let chain = [
        "--vdi", s.uuids[0], "--vdi", s.uuids[1], "--vdi", s.uuids[2],
    ];
    let mut args = chain.to_vec();
    args.extend_from_slice(&[
        "--api-version",
        "1",
        "--image-id",
        "img-7",
        "--property",
        "os_type=linux",
        "--property",
        "auto_disk_config=True",
        "--header",
        "X-Auth-Token: tok",
    ]);
    let o = s.upload(&g.url(), &args);
    assert!(o.status.success(), "{}", helpers::stderr(&o));
    assert_eq!(helpers::stdout(&o), "img-7\n");
    let stored = g.dir.join("img-7");
    let x = s.dir.path().join("x");
    gnu_untar(&stored, &x);
    assert_eq!(
        std::fs::read(x.join("2.vhd")).unwrap(),
        std::fs::read(s.vdi(2)).unwrap()
    );
    let h: serde_json::Value =
        serde_json::from_slice(&std::fs::read(g.dir.join("img-7.put-headers.json")).unwrap())
            .unwrap();
    let hv = |k: &str| {
        h.as_object()
            .unwrap()
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.as_str().unwrap().to_string())
    };
    assert_eq!(hv("x-image-meta-disk-format").as_deref(), Some("vhd"));
    assert_eq!(hv("x-image-meta-container-format").as_deref(), Some("ovf"));
    assert_eq!(hv("x-image-meta-is-public").as_deref(), Some("False"));
    assert_eq!(hv("x-image-meta-status").as_deref(), Some("queued"));
    assert_eq!(
        hv("x-glance-registry-purge-props").as_deref(),
        Some("False")
    );
    assert_eq!(
        hv("x-image-meta-property-os_type").as_deref(),
        Some("linux")
    );
    assert_eq!(
        hv("x-image-meta-property-auto_disk_config").as_deref(),
        Some("True")
    );
    assert_eq!(hv("x-auth-token").as_deref(), Some("tok"));
    assert_eq!(hv("transfer-encoding").as_deref(), Some("chunked"));
    // The image is active now: a second upload is refused before any data flows.
    let o = s.upload(&g.url(), &args);
    assert_eq!(o.status.code(), Some(1), "{}", helpers::stderr(&o));
    assert!(
        helpers::stderr(&o).contains("not \"queued\""),
        "{}",
        helpers::stderr(&o)
    );
    s.no_staging_left();
    drop(g);
    // Status classes (DESIGN §3): 404 not found, 409 permanent, 503 retryable.
    for (status, code) in [("404", 4), ("409", 1), ("503", 5), ("413", 1), ("408", 5)] {
        let g = Standin::start(
            &s.dir.path().join(format!("store-{status}")),
            &["--status", status],
        );
        let mut a = chain.to_vec();
        a.extend_from_slice(&["--api-version", "1", "--image-id", "img-8"]);
        let o = s.upload(&g.url(), &a);
        assert_eq!(
            o.status.code(),
            Some(code),
            "HTTP {status}: {}",
            helpers::stderr(&o)
        );
    }
    s.no_staging_left();
}

#[test]
fn a_stream_that_breaks_is_never_terminated() {
    let s = sr_with_chain();
    let g = Standin::start(&s.dir.path().join("store"), &[]);
    for after in ["0", "10", "5000"] {
        let id = format!("img-broken-{after}");
        let o = s.upload_env(
            &g.url(),
            &[
                "--vdi",
                s.uuids[0],
                "--vdi",
                s.uuids[1],
                "--vdi",
                s.uuids[2],
                "--api-version",
                "1",
                "--image-id",
                &id,
            ],
            &[("GLANCE_VHD_TEST_FAIL_UPLOAD_AFTER", after)],
        );
        assert!(!o.status.success(), "after {after}: accepted");
        assert!(
            helpers::stderr(&o).contains("injected failure"),
            "{}",
            helpers::stderr(&o)
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(
            !g.dir.join(&id).exists(),
            "after {after}: the store took a complete image"
        );
        assert!(
            g.dir.join(format!("{id}.broken")).exists(),
            "after {after}: no broken upload seen"
        );
    }
    s.no_staging_left();
}
