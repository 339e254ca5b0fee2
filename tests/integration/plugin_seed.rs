//! The glance plugin as its first callers drove it (issue 14, items 1 and 6), through the
//! shim and Python's `xmlrpc.client` (tests/plugin/caller.py) against the Glance v1
//! stand-in:
//!
//! * the original (the first Nova with this plugin): `download_vhd` with a flat protocol-0
//!   pickle `{image_id, glance_host, glance_port, uuid_stack (2), sr_path}` — no
//!   `auth_token` — whose answer it used as the VDI UUID itself; `upload_vhd` with
//!   `vdi_uuids` `{'image', 'snap'}`, checked on the wire (`PUT /images/{id}`, chunked,
//!   its three headers, a tar of `./image.vhd` and `./snap.vhd`);
//! * Diablo/Essex: the same flat dict with `auth_token` (a string, or `None` without
//!   Keystone; Essex adds `num_retries`), stack of 3, the answer `json.loads`ed, a
//!   `swap.vhd` imported as a VDI of its own; Folsom's form of the same call ignores it;
//! * plugin-mode time limits: a stalled store ends the call at the idle limit, a
//!   drip-fed one at the deadline (both shortened by GLANCE_VHD_TEST_PLUGIN_LIMITS).
//!
//! Every flat dict is pickled as those releases' Python 2 `pickle.dumps(params)` wrote it
//! (protocol 0, `S'…'` strings: caller.py `py2`).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use crate::helpers::{self, Peer as Standin};
use crate::plugin::{call, failure, install_shim, success};

/// The tap sample chain's child (leaf) and parent: the original's snapshot was two VDIs,
/// `snap` on `image`.
const SNAP: &str = "5eed0000-0000-4000-8000-00000000000a";
const IMAGE: &str = "5eed0000-0000-4000-8000-00000000000b";

struct Setup {
    dir: tempfile::TempDir,
    samples: tempfile::TempDir,
    shim: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let shim = install_shim(dir.path(), "glance");
        Setup {
            dir,
            samples: helpers::unpacked_samples(),
            shim,
        }
    }

    fn env(&self) -> Value {
        json!({"GLANCE_VHD_LOCK_DIR": self.dir.path().join("lock").to_str().unwrap()})
    }

    fn sr(&self) -> PathBuf {
        helpers::new_sr(self.dir.path())
    }

    /// A GNU tar tarball of samples under member names, as image `id` of the store.
    fn image(&self, g: &Standin, id: &str, members: &[(&str, &str)]) {
        helpers::gnu_tar(self.samples.path(), members, &g.dir.join(id));
    }

    /// The content hash of a VDI (through its parents).
    fn content(&self, sr: &Path, uuid: &str) -> String {
        helpers::content_sha(self.dir.path(), &sr.join(format!("{uuid}.vhd")))
    }
}

fn sample_content(name: &str) -> String {
    helpers::content_sums()
        .into_iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no content sum for {name}"))
        .1
}

fn vhds_in(sr: &Path) -> Vec<String> {
    helpers::listing(sr)
        .into_iter()
        .filter(|n| n.ends_with(".vhd"))
        .collect()
}

/// What the stand-in saw of the request (`get` or `put`) for `id`: the request line and
/// the headers with lower-case names.
fn request(g: &Standin, id: &str, kind: &str) -> (String, Vec<(String, String)>) {
    let p = g.dir.join(format!("{id}.{kind}-request.txt"));
    let text = std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("{}: {e} (no {kind} request reached the store)", p.display()));
    let mut lines = text.lines();
    let line = lines.next().unwrap().to_string();
    let headers = lines
        .map(|l| {
            let (k, v) = l.split_once(": ").unwrap();
            (k.to_ascii_lowercase(), v.to_string())
        })
        .collect();
    (line, headers)
}

fn header<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
    h.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// The original's `download_vhd` params: exactly its five keys, a stack of 2.
fn seed_download(g: &Standin, id: &str, stack: &[&str; 2], sr: &Path) -> Value {
    json!({
        "image_id": id, "glance_host": "127.0.0.1", "glance_port": g.port,
        "uuid_stack": stack, "sr_path": sr,
    })
}

fn stack(prefix: &str, n: usize) -> Vec<String> {
    (1..=n)
        .map(|i| format!("{prefix}-0000-4000-8000-00000000000{i}"))
        .collect()
}

#[test]
fn seed_download_vhd_answers_the_bare_leaf_uuid() {
    let s = Setup::new();
    let g = Standin::start(&s.dir.path().join("store"), &[]);
    // The original's image: image.vhd with its snap.vhd on it.
    s.image(
        &g,
        "img-seed",
        &[("image.vhd", "parent.vhd"), ("snap.vhd", "child.vhd")],
    );
    let sr = s.sr();
    let st = stack("5eed1111", 2);
    let v = call(json!({
        "shim": s.shim, "fn": "download_vhd", "py2": true, "env": s.env(),
        "diablo": seed_download(&g, "img-seed", &[&st[0], &st[1]], &sr),
        "parse": "seed",
    }));
    success(&v);
    assert!(v.get("parse_error").is_none(), "the original's caller: {v}");
    let leaf = v["parsed"]["os_vdi_uuid"].as_str().unwrap();
    assert!(st.iter().any(|u| u == leaf), "{leaf} is not from the stack");
    // The UUID is the leaf's: it reads as the snapshot's disk, through its parent.
    assert_eq!(s.content(&sr, leaf), sample_content("child.vhd"));
    let mut want: Vec<String> = st.iter().map(|u| format!("{u}.vhd")).collect();
    want.sort();
    assert_eq!(vhds_in(&sr), want);
    // The original's URL, and no token.
    let (line, h) = request(&g, "img-seed", "get");
    assert_eq!(line, "GET /images/img-seed HTTP/1.1");
    assert!(header(&h, "x-auth-token").is_none(), "{h:?}");
}

/// An SR holding the sample child on its parent as VDIs SNAP on IMAGE.
fn sr_with_snapshot(s: &Setup) -> PathBuf {
    let sr = s.sr();
    let tgz = s.dir.path().join("two.tgz");
    helpers::gnu_tar(
        s.samples.path(),
        &[("0.vhd", "child.vhd"), ("1.vhd", "parent.vhd")],
        &tgz,
    );
    let o = helpers::download_file(
        s.dir.path(),
        &tgz,
        &sr,
        &s.dir.path().join("lock"),
        &["--uuid", SNAP, "--uuid", IMAGE],
    );
    assert!(o.status.success(), "{}", helpers::stderr(&o));
    sr
}

/// The member names of a gzipped tarball as Python's `tarfile` stream mode reads them.
fn python_tar_names(tgz: &Path) -> Vec<String> {
    let o = Command::new(helpers::python())
        .args([
            "-c",
            "import json, sys, tarfile\n\
             with tarfile.open(sys.argv[1], 'r|gz') as t:\n    \
                 print(json.dumps([[m.name, m.isfile()] for m in t]))",
        ])
        .arg(tgz)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", helpers::stderr(&o));
    let v: Vec<(String, bool)> = serde_json::from_slice(&o.stdout).unwrap();
    v.into_iter()
        .map(|(n, file)| if file { n } else { format!("{n} (dir)") })
        .collect()
}

#[test]
fn seed_upload_vhd_sends_what_the_original_sent() {
    let s = Setup::new();
    let sr = sr_with_snapshot(&s);
    let g = Standin::start(&s.dir.path().join("store"), &[]);
    let up = call(json!({
        "shim": s.shim, "fn": "upload_vhd", "py2": true, "env": s.env(),
        "diablo": {
            "vdi_uuids": {"image": IMAGE, "snap": SNAP}, "image_id": "img-up",
            "glance_host": "127.0.0.1", "glance_port": g.port, "sr_path": sr,
        },
    }));
    assert_eq!(success(&up), "", "{up}");
    let (line, h) = request(&g, "img-up", "put");
    assert_eq!(line, "PUT /images/img-up HTTP/1.1");
    assert_eq!(header(&h, "transfer-encoding"), Some("chunked"), "{h:?}");
    assert_eq!(header(&h, "x-image-meta-is_public"), Some("True"), "{h:?}");
    assert_eq!(header(&h, "x-image-meta-status"), Some("queued"), "{h:?}");
    assert_eq!(header(&h, "x-image-meta-type"), Some("vhd"), "{h:?}");
    // None of the later releases' headers (their x-image-meta-is-public False would
    // contradict the original's is_public True), and no token.
    for later in [
        "x-image-meta-is-public",
        "x-image-meta-disk-format",
        "x-image-meta-container-format",
        "x-glance-registry-purge-props",
        "x-auth-token",
    ] {
        assert!(header(&h, later).is_none(), "{later}: {h:?}");
    }
    // `tar -zc --directory=STAGING .` of image.vhd and snap.vhd.
    let mut names = python_tar_names(&g.dir.join("img-up"));
    names.sort();
    assert_eq!(names, [". (dir)", "./image.vhd", "./snap.vhd"]);
    // And back, as the original downloaded it: the same disk.
    let fresh = s.sr();
    let st = stack("5eed2222", 2);
    let v = call(json!({
        "shim": s.shim, "fn": "download_vhd", "py2": true, "env": s.env(),
        "diablo": seed_download(&g, "img-up", &[&st[0], &st[1]], &fresh),
        "parse": "seed",
    }));
    success(&v);
    let leaf = v["parsed"]["os_vdi_uuid"]
        .as_str()
        .unwrap_or_else(|| panic!("{v}"));
    assert_eq!(s.content(&fresh, leaf), s.content(&sr, SNAP));
}

#[test]
fn diablo_download_vhd_imports_swap_as_its_own_vdi() {
    let s = Setup::new();
    let g = Standin::start(&s.dir.path().join("store"), &["--require-token", "tok-e"]);
    // Diablo's image with swap: snap on image, and swap.vhd (a dynamic disk of its own).
    s.image(
        &g,
        "img-swap",
        &[
            ("image.vhd", "parent.vhd"),
            ("snap.vhd", "child.vhd"),
            ("swap.vhd", "parent2.vhd"),
        ],
    );
    let sr = s.sr();
    let st = stack("d1ab1000", 3);
    let v = call(json!({
        "shim": s.shim, "fn": "download_vhd", "py2": true, "env": s.env(),
        "diablo": {
            "image_id": "img-swap", "glance_host": "127.0.0.1", "glance_port": g.port,
            "uuid_stack": st, "sr_path": sr, "auth_token": "tok-e",
        },
        "parse": "diablo",
    }));
    success(&v);
    assert!(v.get("parse_error").is_none(), "Diablo's caller: {v}");
    let vdis = v["parsed"]["vdis"].as_array().unwrap();
    assert_eq!(vdis.len(), 2, "{v}");
    assert_eq!(vdis[0]["vdi_type"], "os");
    assert_eq!(vdis[1]["vdi_type"], "swap");
    let (os, swap) = (
        vdis[0]["vdi_uuid"].as_str().unwrap(),
        vdis[1]["vdi_uuid"].as_str().unwrap(),
    );
    // The chain takes its UUIDs first (leaf first, from the end), swap the next one.
    assert_eq!((os, swap), (st[2].as_str(), st[0].as_str()));
    assert_eq!(s.content(&sr, os), sample_content("child.vhd"));
    assert_eq!(s.content(&sr, swap), sample_content("parent2.vhd"));
    let o = helpers::run(
        s.dir.path(),
        &[
            "vhd",
            "info",
            sr.join(format!("{swap}.vhd")).to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", helpers::stderr(&o));
    let info = helpers::stdout(&o);
    assert!(
        info.lines()
            .any(|l| l.starts_with("type:") && l.ends_with(" dynamic")),
        "the swap VDI is a disk of its own, no part of the chain: {info}"
    );
    assert_eq!(vhds_in(&sr).len(), 3);
    assert!(helpers::staging_dirs(&sr).is_empty());

    // Essex's form: num_retries, and auth_token None (no Keystone) — the key, not its
    // value, makes it the JSON form. Its image without swap: one entry.
    let open = Standin::start(&s.dir.path().join("open"), &[]);
    s.image(&open, "img-os", &[("image.vhd", "parent.vhd")]);
    let sr2 = s.sr();
    let st2 = stack("e55e1000", 3);
    let v = call(json!({
        "shim": s.shim, "fn": "download_vhd", "py2": true, "env": s.env(),
        "diablo": {
            "image_id": "img-os", "glance_host": "127.0.0.1", "glance_port": open.port,
            "uuid_stack": st2, "sr_path": sr2, "num_retries": 0, "auth_token": null,
        },
        "parse": "diablo",
    }));
    success(&v);
    assert_eq!(
        v["parsed"]["vdis"],
        json!([{"vdi_type": "os", "vdi_uuid": st2[2]}]),
        "{v}"
    );

    // Folsom's form of the same call ignores swap.vhd, as it always did.
    let sr3 = s.sr();
    let v = call(json!({
        "shim": s.shim, "fn": "download_vhd", "env": s.env(), "unpickle": true,
        "kwargs": {
            "image_id": "img-swap", "glance_host": "127.0.0.1", "glance_port": g.port,
            "glance_use_ssl": false, "uuid_stack": st, "sr_path": sr3,
            "extra_headers": {"X-Auth-Token": "tok-e"},
        },
    }));
    assert_eq!(success(&v), &json!({"root": {"uuid": st[2]}}));
    assert_eq!(vhds_in(&sr3).len(), 2, "swap.vhd was imported");
}

#[test]
fn a_swap_vhd_must_be_a_valid_disk_of_its_own() {
    let s = Setup::new();
    let g = Standin::start(&s.dir.path().join("store"), &[]);
    let garbage = s.samples.path().join("garbage.vhd");
    std::fs::write(&garbage, vec![0x5au8; 4096]).unwrap();
    for (id, swap, why) in [
        // A differencing swap could read through another VDI of the SR.
        ("diff", "child.vhd", "differencing"),
        ("junk", "garbage.vhd", "footer cookie"),
    ] {
        s.image(&g, id, &[("image.vhd", "parent.vhd"), ("swap.vhd", swap)]);
        let sr = s.sr();
        let e = failure(&call(json!({
            "shim": s.shim, "fn": "download_vhd", "py2": true, "env": s.env(),
            "diablo": {
                "image_id": id, "glance_host": "127.0.0.1", "glance_port": g.port,
                "uuid_stack": stack("bad5a000", 3), "sr_path": sr, "auth_token": "t",
            },
        })));
        assert_eq!(
            e[..3],
            ["XENAPI_PLUGIN_FAILURE", "download_vhd", "PluginError"],
            "{id}: {e:?}"
        );
        assert!(
            e[3].contains("swap.vhd") && e[3].contains(why),
            "{id}: {e:?}"
        );
        assert!(helpers::listing(&sr).is_empty(), "{id}: the SR changed");
    }
    // Swap takes a UUID too: snap, image and swap do not fit a stack of 2, and nothing
    // is imported.
    s.image(
        &g,
        "three",
        &[
            ("image.vhd", "parent.vhd"),
            ("snap.vhd", "child.vhd"),
            ("swap.vhd", "parent2.vhd"),
        ],
    );
    let sr = s.sr();
    let e = failure(&call(json!({
        "shim": s.shim, "fn": "download_vhd", "py2": true, "env": s.env(),
        "diablo": {
            "image_id": "three", "glance_host": "127.0.0.1", "glance_port": g.port,
            "uuid_stack": stack("bad5b000", 2), "sr_path": sr, "auth_token": "t",
        },
    })));
    assert!(e[3].contains("only 2 VDI UUIDs were given"), "{e:?}");
    assert!(helpers::listing(&sr).is_empty());
}

// ---- plugin-mode time limits ----

/// `download_vhd2` of the sample chain from a stand-in started with `opts`, the plugin's
/// limits shortened to `limits` (GLANCE_VHD_TEST_PLUGIN_LIMITS).
fn limited_download(s: &Setup, opts: &[&str], limits: &str) -> Vec<String> {
    let g = Standin::start(&s.dir.path().join("slow"), opts);
    s.image(&g, "img", &helpers::TAP_CHAIN);
    let sr = s.sr();
    let mut env = s.env();
    env["GLANCE_VHD_TEST_PLUGIN_LIMITS"] = json!(limits);
    let e = failure(&call(json!({
        "shim": s.shim, "fn": "download_vhd2", "env": env,
        "kwargs": {
            "image_id": "img", "endpoint": g.url(), "uuid_stack": stack("71de0000", 3),
            "sr_path": sr, "extra_headers": {}, "api_version": 1,
        },
    })));
    assert!(vhds_in(&sr).is_empty(), "nothing reaches the SR");
    assert!(helpers::staging_dirs(&sr).is_empty());
    e
}

#[test]
fn a_stalled_store_ends_the_plugin_call_at_the_idle_limit() {
    let s = Setup::new();
    // 100 bytes, then nothing (the stand-in holds the connection for 60 s).
    let e = limited_download(&s, &["--stall-at", "100"], "1,600,1048576");
    assert_eq!(
        e[..3],
        ["XENAPI_PLUGIN_FAILURE", "download_vhd2", "RetryableError"],
        "{e:?}"
    );
    assert!(e[3].contains("no data for 1 s (the idle timeout)"), "{e:?}");
}

#[test]
fn a_drip_fed_download_ends_at_the_plugin_deadline() {
    let s = Setup::new();
    // 1 KiB every 0.2 s never trips the idle limit; the deadline (1 s + 1 s per MiB)
    // ends it.
    let e = limited_download(&s, &["--drip"], "30,1,1048576");
    assert_eq!(
        e[..3],
        ["XENAPI_PLUGIN_FAILURE", "download_vhd2", "RetryableError"],
        "{e:?}"
    );
    assert!(
        e[3].contains("download passed its deadline of 1 s"),
        "{e:?}"
    );
}

#[test]
fn an_upload_past_the_plugin_deadline_is_abandoned() {
    let s = Setup::new();
    let sr = sr_with_snapshot(&s);
    let g = Standin::start(&s.dir.path().join("store"), &[]);
    let mut env = s.env();
    // A deadline of 1 ms (plus 1 s per GiB): past before the first byte of the body.
    env["GLANCE_VHD_TEST_PLUGIN_LIMITS"] = json!("30,0.001,1073741824");
    let e = failure(&call(json!({
        "shim": s.shim, "fn": "upload_vhd2", "env": env,
        "kwargs": {
            "vdi_uuids": [SNAP, IMAGE], "image_id": "img-late", "endpoint": g.url(),
            "sr_path": sr, "extra_headers": {}, "properties": {}, "api_version": 1,
        },
    })));
    assert_eq!(
        e[..3],
        ["XENAPI_PLUGIN_FAILURE", "upload_vhd2", "RetryableError"],
        "{e:?}"
    );
    assert!(e[3].contains("upload passed its deadline"), "{e:?}");
    // Never a complete image: the body was not terminated.
    assert!(!g.dir.join("img-late").exists(), "the store holds an image");
}
