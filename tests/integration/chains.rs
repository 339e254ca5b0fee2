//! Chains on the way out and in (issue 12, items 4 and 5): an upload list (`--vdi`, the
//! plugin's `vdi_uuids`) that is not a chain is refused before the store hears of it
//! (and before `--create` makes an image); a tarball that grafts a child onto another
//! parent is refused naming both; a member that grows or has its footer rewritten
//! while it is read never becomes an image; a FIFO given as a VDI is refused at once.

use crate::helpers::{self, Peer as Standin};
use crate::plugin::{call, failure, install_shim};
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The tap sample chain grandchild → child → parent.
const UUIDS: [&str; 3] = [
    "dddddddd-0000-4000-8000-000000000001",
    "dddddddd-0000-4000-8000-000000000002",
    "dddddddd-0000-4000-8000-000000000003",
];
/// parent2.vhd: a base of the same size that none of them was made on.
const OTHER: &str = "dddddddd-0000-4000-8000-0000000000b2";

struct Sr {
    dir: tempfile::TempDir,
    sr: PathBuf,
}

impl Sr {
    /// An SR with the tap chain under `UUIDS` and parent2 under `OTHER`, both made by
    /// our own download of GNU-tar tarballs.
    fn with_chains() -> Sr {
        let dir = tempfile::tempdir().unwrap();
        let sr = helpers::new_sr(dir.path());
        helpers::import_tap_chain(dir.path(), &sr, &UUIDS);
        let samples = helpers::unpacked_samples();
        let tgz = dir.path().join("other.tgz");
        helpers::gnu_tar(samples.path(), &[("0.vhd", "parent2.vhd")], &tgz);
        let o = helpers::download_file(
            dir.path(),
            &tgz,
            &sr,
            &dir.path().join("lock"),
            &["--uuid", OTHER],
        );
        assert!(o.status.success(), "{}", helpers::stderr(&o));
        Sr { dir, sr }
    }

    fn vdi(&self, uuid: &str) -> PathBuf {
        self.sr.join(format!("{uuid}.vhd"))
    }

    fn upload_args(&self, endpoint: &str, vdis: &[&str], extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = [
            "upload",
            "--endpoint",
            endpoint,
            "--sr-path",
            self.sr.to_str().unwrap(),
            "--retry-delay",
            "0.01",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for v in vdis {
            args.extend(["--vdi".to_string(), v.to_string()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    fn upload(&self, endpoint: &str, vdis: &[&str], extra: &[&str]) -> Output {
        let args = self.upload_args(endpoint, vdis, extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        helpers::run(self.dir.path(), &args)
    }

    fn no_staging_left(&self) {
        let left = helpers::staging_dirs(&self.sr);
        assert!(left.is_empty(), "staging left: {left:?}");
    }
}

/// Make the VHD at `path` record `parent` as its parent UUID (header checksum fixed):
/// the bytes a crafted or corrupted SR file could hold.
fn record_parent(path: &Path, parent: [u8; 16]) {
    let mut b = std::fs::read(path).unwrap();
    let f = b.len() - 512;
    let at = u64::from_be_bytes(b[f + 16..f + 24].try_into().unwrap()) as usize;
    let h = &mut b[at..at + 1024];
    h[40..56].copy_from_slice(&parent);
    h[36..40].fill(0);
    let sum: u32 = h.iter().map(|&x| x as u32).sum();
    h[36..40].copy_from_slice(&(!sum).to_be_bytes());
    std::fs::write(path, b).unwrap();
}

/// A VHD's footer UUID.
fn footer_uuid(path: &Path) -> [u8; 16] {
    let b = std::fs::read(path).unwrap();
    b[b.len() - 512 + 68..b.len() - 512 + 84]
        .try_into()
        .unwrap()
}

#[test]
fn upload_lists_that_are_not_chains_are_refused_before_anything_is_sent() {
    let s = Sr::with_chains();
    let [leaf, child, base] = UUIDS;
    // A loop: two copies of the leaf, each recording the other as its parent.
    let (l1, l2) = (
        "dddddddd-0000-4000-8000-0000000000c1",
        "dddddddd-0000-4000-8000-0000000000c2",
    );
    std::fs::copy(s.vdi(leaf), s.vdi(l1)).unwrap();
    std::fs::copy(s.vdi(child), s.vdi(l2)).unwrap();
    record_parent(&s.vdi(l2), footer_uuid(&s.vdi(l1)));
    // Links: to a VDI in the SR, and to a copy of the base outside it.
    let (in_sr, out_of_sr, a_dir) = (
        "dddddddd-0000-4000-8000-0000000000d1",
        "dddddddd-0000-4000-8000-0000000000d2",
        "dddddddd-0000-4000-8000-0000000000d3",
    );
    std::os::unix::fs::symlink(s.vdi(base), s.vdi(in_sr)).unwrap();
    let outside = s.dir.path().join("outside.vhd");
    std::fs::copy(s.vdi(base), &outside).unwrap();
    std::os::unix::fs::symlink(&outside, s.vdi(out_of_sr)).unwrap();
    std::fs::create_dir(s.vdi(a_dir)).unwrap();
    let upper = base.to_uppercase();
    let cases: Vec<(&str, Vec<&str>, &str)> = vec![
        (
            "a child on an unrelated base",
            vec![child, OTHER],
            "records parent UUID 7c9fe95e",
        ),
        (
            "a chain on an unrelated base",
            vec![leaf, child, OTHER],
            "records parent UUID 7c9fe95e",
        ),
        (
            "a link skipped",
            vec![leaf, base],
            "records parent UUID 309f8119",
        ),
        ("reversed", vec![base, child, leaf], "the base must be last"),
        (
            "the leaf alone",
            vec![leaf],
            "the list must end with the base",
        ),
        (
            "a child alone",
            vec![child],
            "the list must end with the base",
        ),
        ("the same VDI twice", vec![base, base], "is given twice"),
        (
            "the same VDI twice, spelt twice",
            vec![child, base, &upper],
            "is given twice",
        ),
        ("a loop", vec![l1, l2, l1], "is given twice"),
        (
            "a loop, once round",
            vec![l1, l2],
            "the list must end with the base",
        ),
        ("a link to a VDI", vec![child, in_sr], "symbolic link"),
        (
            "a link out of the SR",
            vec![child, out_of_sr],
            "symbolic link",
        ),
        ("a directory", vec![a_dir], "a directory"),
    ];
    let before = helpers::snapshot(&s.sr);
    let out = s.dir.path().join("out.tgz");
    let url = format!("file://{}", out.display());
    for (what, vdis, needle) in &cases {
        let o = s.upload(&url, vdis, &[]);
        let err = helpers::stderr(&o);
        assert_eq!(o.status.code(), Some(3), "{what}: {err}");
        assert!(err.contains(needle), "{what}: no {needle:?} in {err}");
        assert!(!out.exists(), "{what}: the image was written");
        // --create: refused before an image is made (nothing listens on port 9: a
        // create attempt would be a retryable failure, exit 5).
        let o = s.upload("http://127.0.0.1:9", vdis, &["--create", "--name", "x"]);
        let err = helpers::stderr(&o);
        assert_eq!(o.status.code(), Some(3), "{what} with --create: {err}");
        assert!(err.contains(needle), "{what} with --create: {err}");
        assert!(!err.contains("create the image"), "{what}: {err}");
        assert_eq!(helpers::snapshot(&s.sr), before, "{what}: the SR changed");
        s.no_staging_left();
    }
    // The Glance v1 stand-in never sees a request for an image: not even the PUT.
    let g = Standin::start(&s.dir.path().join("store"), &[]);
    let o = s.upload(
        &g.url(),
        &[child, OTHER],
        &["--api-version", "1", "--image-id", "img-graft"],
    );
    assert_eq!(o.status.code(), Some(3), "{}", helpers::stderr(&o));
    assert_eq!(helpers::listing(&g.dir), Vec::<String>::new());
    // The plugin's vdi_uuids: the same rule, a Nova failure, nothing sent.
    let shim = install_shim(s.dir.path(), "glance");
    let up = call(json!({
        "shim": shim, "fn": "upload_vhd2", "form": "python", "protocol": 2,
        "env": {"GLANCE_VHD_LOCK_DIR": s.dir.path().join("lock").to_str().unwrap()},
        "unpickle": true,
        "args": [[base, child]],
        "kwargs": {"image_id": "img-plugin", "endpoint": g.url(), "sr_path": s.sr,
                   "extra_headers": {}, "properties": {}, "api_version": 1},
    }));
    let f = failure(&up).join(" ");
    assert!(f.contains("the base must be last"), "{f}");
    assert_eq!(helpers::listing(&g.dir), Vec::<String>::new());
    assert_eq!(helpers::snapshot(&s.sr), before);
    s.no_staging_left();
    // Real chains still go: whole, from the middle, the base alone.
    for vdis in [
        vec![leaf, child, base],
        vec![child, base],
        vec![base],
        vec![OTHER],
    ] {
        let o = s.upload(&url, &vdis, &[]);
        assert!(o.status.success(), "{vdis:?}: {}", helpers::stderr(&o));
        std::fs::remove_file(&out).unwrap();
    }
}

/// Tarball members (name, sample), the parent UUID the child records, the one it gets.
type Graft<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);

#[test]
fn a_tarball_that_grafts_a_child_onto_another_parent_is_refused_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    let sr = helpers::new_sr(dir.path());
    let samples = helpers::unpacked_samples();
    let (u0, u1, u2) = (
        "eeeeeeee-0000-4000-8000-000000000001",
        "eeeeeeee-0000-4000-8000-000000000002",
        "eeeeeeee-0000-4000-8000-000000000003",
    );
    let cases: [Graft; 2] = [
        // child.vhd was made on parent.vhd, not parent2.vhd.
        (
            &[("0.vhd", "child.vhd"), ("1.vhd", "parent2.vhd")],
            "7c9fe95e-7c58-43ac-a789-6e5c8fdcc6d4",
            "3ff96db3-f02c-434c-bd62-7702b5542fd3",
        ),
        // grandchild.vhd was made on child.vhd, not empty-child.vhd.
        (
            &[
                ("0.vhd", "grandchild.vhd"),
                ("1.vhd", "empty-child.vhd"),
                ("2.vhd", "parent.vhd"),
            ],
            "309f8119-ecc4-404a-847c-63e4b2291c95",
            "b1b42d11-4131-43e3-92c1-3b2b88fda970",
        ),
    ];
    for (files, recorded, found) in cases {
        let tgz = dir.path().join("graft.tgz");
        helpers::gnu_tar(samples.path(), files, &tgz);
        // --uuid is leaf first.
        let uuids = &[u0, u1, u2][..files.len()];
        let extra: Vec<&str> = uuids.iter().flat_map(|u| ["--uuid", u]).collect();
        let o = helpers::download_file(dir.path(), &tgz, &sr, &dir.path().join("lock"), &extra);
        let err = helpers::stderr(&o);
        assert_eq!(o.status.code(), Some(3), "{files:?}: {err}");
        // Both members: the child by its member name and VDI, the parent by its VDI.
        let (child, parent) = (uuids[0], uuids[1]);
        for needle in [
            "image member 0.vhd",
            &format!("{child}.vhd"),
            &format!("{parent}.vhd"),
            recorded,
            found,
        ] {
            assert!(err.contains(needle), "{files:?}: no {needle:?} in {err}");
        }
        assert_eq!(helpers::listing(&sr), Vec::<String>::new(), "{files:?}");
    }
}

// ---- item 5: torn members, FIFOs ----

/// Upload a 32 MiB random VDI at 4 MB/s to `endpoint`, and `mutate` it once the upload
/// has staged it (so while it is being read). Returns the upload's output.
fn upload_while(s: &Sr, vdi: &str, endpoint: &str, extra: &[&str], mutate: fn(&Path)) -> Output {
    let args = s.upload_args(endpoint, &[vdi], &[&["--rate-limit", "4M"], extra].concat());
    let child = Command::new(helpers::bin())
        .args(&args)
        .current_dir(s.dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while helpers::staging_dirs(&s.sr).is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "no staging directory"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    mutate(&s.vdi(vdi));
    child.wait_with_output().unwrap()
}

/// Appended to, the old footer left where it was: only the size tells.
fn grow(p: &Path) {
    let mut f = std::fs::OpenOptions::new().append(true).open(p).unwrap();
    f.write_all(&[0x5a; 4096]).unwrap();
}

/// The footer rewritten in place (its timestamp changed), same size.
fn rewrite_footer(p: &Path) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
    let at = f.metadata().unwrap().len() - 512 + 24;
    f.write_all_at(&[0xff, 0xff, 0xff, 0xff], at).unwrap();
}

fn torn_never_becomes_an_image(mutate: fn(&Path), what: &str) {
    let s = Sr::with_chains();
    // To a file: none appears.
    let vdi = helpers::random_vdi(&s.sr, 32);
    let out = s.dir.path().join("torn.tgz");
    let o = upload_while(&s, &vdi, &format!("file://{}", out.display()), &[], mutate);
    let err = helpers::stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{what}, file: {err}");
    assert!(
        err.contains("changed while it was being read"),
        "{what}: {err}"
    );
    assert!(!out.exists(), "{what}: a torn image was written");
    assert_eq!(
        helpers::listing(s.dir.path())
            .iter()
            .filter(|n| n.contains("torn"))
            .count(),
        0
    );
    s.no_staging_left();
    // To the Glance v1 stand-in: the stream is seen broken, never complete.
    let g = Standin::start(&s.dir.path().join("store"), &[]);
    let vdi = helpers::random_vdi(&s.sr, 32);
    let o = upload_while(
        &s,
        &vdi,
        &g.url(),
        &["--api-version", "1", "--image-id", "img-torn"],
        mutate,
    );
    assert_eq!(
        o.status.code(),
        Some(1),
        "{what}, v1: {}",
        helpers::stderr(&o)
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !g.dir.join("img-torn").exists(),
        "{what}: the stand-in took a torn image"
    );
    assert!(
        g.dir.join("img-torn.broken").exists(),
        "{what}: no broken upload seen"
    );
    // To the real Glance (v2): the image never becomes active.
    let _turn = helpers::glance_turn();
    let id = helpers::glance_image(None);
    let vdi = helpers::random_vdi(&s.sr, 32);
    let o = upload_while(
        &s,
        &vdi,
        helpers::glance_url(),
        &["--image-id", &id],
        mutate,
    );
    assert_eq!(
        o.status.code(),
        Some(1),
        "{what}, Glance: {}",
        helpers::stderr(&o)
    );
    let rec = helpers::glance_record(&id);
    assert_ne!(
        rec["status"], "active",
        "{what}: Glance took a torn image: {rec}"
    );
    s.no_staging_left();
}

#[test]
fn a_leaf_that_grows_while_it_is_read_never_becomes_an_image() {
    torn_never_becomes_an_image(grow, "grown");
}

#[test]
fn a_leaf_whose_footer_is_rewritten_while_it_is_read_never_becomes_an_image() {
    torn_never_becomes_an_image(rewrite_footer, "footer rewritten");
}

#[test]
fn a_fifo_given_as_a_vdi_is_refused_at_once() {
    let s = Sr::with_chains();
    let fifo = "dddddddd-0000-4000-8000-0000000000f1";
    nix::unistd::mkfifo(
        &s.vdi(fifo),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    let out = s.dir.path().join("fifo.tgz");
    let url = format!("file://{}", out.display());
    for how in [["--vdi", fifo], ["--leaf", fifo]] {
        let mut args = vec![
            "upload".to_string(),
            "--endpoint".into(),
            url.clone(),
            "--sr-path".into(),
            s.sr.to_str().unwrap().into(),
        ];
        args.extend(how.iter().map(|a| a.to_string()));
        let (status, err, took) = run_bounded(&args);
        assert_eq!(status.code(), Some(3), "{how:?}: {err}");
        assert!(err.contains("is a FIFO"), "{how:?}: {err}");
        assert!(
            took < Duration::from_secs(1),
            "{how:?}: refused after {took:?}"
        );
        assert!(!out.exists());
    }
    s.no_staging_left();
}

/// Run the binary with `args`, killing it (and failing) if it is still running after
/// 5 s — as it would be, blocked in open(2) on a FIFO. Its status, stderr and run time.
fn run_bounded(args: &[String]) -> (std::process::ExitStatus, String, Duration) {
    let mut child = Command::new(helpers::bin())
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if t0.elapsed() > Duration::from_secs(5) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{args:?}: still blocked after 5 s (opening a FIFO)");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let took = t0.elapsed();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    (status, err, took)
}

/// The `--leaf` walk follows parent locators: a FIFO planted where the parent should be
/// is refused at once, not waited on (it hung in open(2) before), by the upload and by
/// the VHD tools that read through the chain.
#[test]
fn a_fifo_where_a_parent_should_be_is_refused_at_once() {
    let s = Sr::with_chains();
    // UUIDS[0] is the leaf, UUIDS[1] its parent: the parent becomes a FIFO.
    let parent = s.vdi(UUIDS[1]);
    std::fs::remove_file(&parent).unwrap();
    nix::unistd::mkfifo(&parent, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let out = s.dir.path().join("fifo-parent.tgz");
    let leaf = s.vdi(UUIDS[0]);
    let leaf = leaf.to_str().unwrap();
    for args in [
        vec![
            "upload".to_string(),
            "--endpoint".into(),
            format!("file://{}", out.display()),
            "--sr-path".into(),
            s.sr.to_str().unwrap().into(),
            "--leaf".into(),
            UUIDS[0].into(),
        ],
        vec![
            "vhd".into(),
            "check".into(),
            "--parents".into(),
            leaf.into(),
        ],
        vec!["vhd".into(), "read".into(), leaf.into(), "/dev/null".into()],
        vec!["vhd".into(), "info".into(), parent.to_str().unwrap().into()],
    ] {
        let (status, err, took) = run_bounded(&args);
        assert!(!status.success(), "{args:?}: {err}");
        assert!(
            took < Duration::from_secs(1),
            "{args:?}: refused after {took:?}"
        );
    }
    assert!(!out.exists());
    s.no_staging_left();
}
