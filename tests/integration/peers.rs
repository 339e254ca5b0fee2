//! Independent readers agree with us: libvhdi (through pyvhdi, `tests/peers/vhdi_read.py`)
//! reads the blktap samples and the chains our own `vhd snapshot` / `vhd set-parent`
//! make; qemu-img reads what `vhd create` makes; the dfvfs third-party files behave as
//! documented. Every run drives the real binary, as a user does.

use crate::helpers;
use crate::helpers::{
    content_sums, run, sha256, sha256_file, stderr, stdout, unpacked_samples, vhdi,
};
use serde_json::Value;

use std::path::{Path, PathBuf};
use std::process::Command;

const MIB: usize = 1 << 20;

fn vhdi_script() -> PathBuf {
    helpers::repo().join("tests/peers/vhdi_read.py")
}

/// libvhdi's view when it is expected to fail: its stderr.
fn vhdi_fails(dir: &Path, chain: &[&str]) -> String {
    let o = Command::new(helpers::python())
        .arg(vhdi_script())
        .args(chain)
        .current_dir(dir)
        .output()
        .expect("run python");
    assert!(!o.status.success(), "libvhdi accepted {chain:?}");
    stderr(&o)
}

/// Our `vhd read F -`: the sha256 and length of the bytes on stdout.
fn our_read(dir: &Path, file: &str) -> (String, usize) {
    let o = run(dir, &["vhd", "read", file, "-"]);
    assert!(o.status.success(), "vhd read {file} failed: {}", stderr(&o));
    (sha256(&o.stdout), o.stdout.len())
}

fn info(dir: &Path, file: &str) -> Value {
    let o = run(dir, &["vhd", "info", "--json", file]);
    assert!(o.status.success(), "vhd info {file} failed: {}", stderr(&o));
    serde_json::from_slice(&o.stdout).expect("info --json")
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let o = run(dir, args);
    assert!(o.status.success(), "{args:?} failed: {}", stderr(&o));
    stdout(&o)
}

fn qemu_img(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new("qemu-img")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("qemu-img is installed (make setup)")
}

/// A raw disk with known patterns, and a qemu-made dynamic VHD of it. Returns the raw
/// bytes; the VHD is `dir/name`.
fn qemu_base(dir: &Path, name: &str, size: usize, fills: &[(usize, usize, u8)]) -> Vec<u8> {
    let mut raw = vec![0u8; size];
    for &(at, len, v) in fills {
        raw[at..at + len].fill(v);
    }
    // A non-uniform run too, so shifted or misplaced sectors show.
    for (i, b) in raw[size / 2..size / 2 + 8192].iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    let raw_path = dir.join(format!("{name}.raw"));
    std::fs::write(&raw_path, &raw).unwrap();
    helpers::qemu_vhd(&raw_path, &dir.join(name));
    raw
}

/// `raw` zero-extended to `len` (qemu rounds the virtual size up to a CHS size).
fn padded(raw: &[u8], len: usize) -> Vec<u8> {
    assert!(len >= raw.len(), "virtual size {len} < raw {}", raw.len());
    let mut v = raw.to_vec();
    v.resize(len, 0);
    v
}

fn layer(v: &Value, i: usize) -> &Value {
    &v["layers"][i]
}

/// Which files each sample reads through (leaf first).
const SAMPLE_CHAINS: &[&[&str]] = &[
    &["parent.vhd"],
    &["child.vhd", "parent.vhd"],
    &["grandchild.vhd", "child.vhd", "parent.vhd"],
    &["parent2.vhd"],
    &["child-relinked.vhd", "parent2.vhd"],
    &["child-hidden.vhd", "parent.vhd"],
    &["empty-child.vhd", "parent.vhd"],
    &["empty-child-relinked.vhd", "parent2.vhd"],
    &["qemu-parent.vhd"],
    &["tap-child-of-qemu.vhd", "qemu-parent.vhd"],
];

#[test]
fn libvhdi_and_we_read_every_tap_sample_as_sha256sums_content() {
    let d = unpacked_samples();
    let sums = content_sums();
    assert_eq!(sums.len(), SAMPLE_CHAINS.len(), "one chain per content sum");
    for chain in SAMPLE_CHAINS {
        let leaf = chain[0];
        let want = &sums
            .iter()
            .find(|(n, _)| n == leaf)
            .unwrap_or_else(|| panic!("{leaf} not in SHA256SUMS.content"))
            .1;
        let theirs = vhdi(d.path(), chain, true);
        let (ours, len) = our_read(d.path(), leaf);
        assert_eq!(&ours, want, "our read of {leaf} vs SHA256SUMS.content");
        assert_eq!(
            theirs["sha256"].as_str().unwrap(),
            want,
            "libvhdi's read of {leaf} vs SHA256SUMS.content"
        );
        assert_eq!(theirs["media_size"].as_u64().unwrap(), len as u64, "{leaf}");

        // Identifiers: libvhdi's and ours agree for every layer, and our chain is the
        // one libvhdi accepted (it refuses a parent whose identifier does not match).
        let i = info(d.path(), leaf);
        assert_eq!(i["uuid"], layer(&theirs, 0)["identifier"], "{leaf} uuid");
        assert_eq!(i["virtual_size"], layer(&theirs, 0)["media_size"]);
        if chain.len() > 1 {
            assert_eq!(i["disk_type"], "differencing");
            assert_eq!(layer(&theirs, 0)["disk_type"], 4);
            assert_eq!(
                i["parent"]["uuid"],
                layer(&theirs, 0)["parent_identifier"],
                "{leaf} parent uuid"
            );
            assert_eq!(
                i["parent"]["name"],
                layer(&theirs, 0)["parent_filename"],
                "{leaf} parent name"
            );
            let ours: Vec<String> = i["chain"]
                .as_array()
                .expect("chain")
                .iter()
                .map(|c| {
                    Path::new(c["path"].as_str().unwrap())
                        .file_name()
                        .unwrap()
                        .to_string_lossy()
                        .into_owned()
                })
                .collect();
            assert_eq!(ours, *chain, "our chain of {leaf}");
            for (k, c) in i["chain"].as_array().unwrap().iter().enumerate() {
                assert_eq!(
                    c["uuid"],
                    layer(&theirs, k)["identifier"],
                    "{leaf} layer {k}"
                );
            }
        } else {
            assert_eq!(i["disk_type"], "dynamic");
            assert_eq!(layer(&theirs, 0)["disk_type"], 3);
            assert_eq!(layer(&theirs, 0)["parent_identifier"], Value::Null);
        }
    }
}

#[test]
fn libvhdi_refuses_a_parent_the_child_does_not_name_and_so_do_we() {
    // The relinked child names parent2: libvhdi refuses parent.vhd under it, and our
    // check of a child whose locator leads to the wrong file fails too.
    let d = unpacked_samples();
    let err = vhdi_fails(d.path(), &["child-relinked.vhd", "parent.vhd"]);
    assert!(err.contains("mismatch in identifier"), "{err}");
    // Put parent.vhd where child-relinked's locators point.
    std::fs::create_dir(d.path().join("w")).unwrap();
    std::fs::copy(
        d.path().join("child-relinked.vhd"),
        d.path().join("w/c.vhd"),
    )
    .unwrap();
    std::fs::copy(d.path().join("parent.vhd"), d.path().join("w/parent2.vhd")).unwrap();
    let o = run(&d.path().join("w"), &["vhd", "read", "c.vhd", "-"]);
    assert!(
        !o.status.success(),
        "read through a parent of the wrong uuid"
    );
    let e = stderr(&o);
    assert!(e.contains("c.vhd") && e.contains("parent uuid"), "{e}");
    assert!(
        o.stdout.is_empty(),
        "nothing is written before the chain is known"
    );
    let o = run(&d.path().join("w"), &["vhd", "check", "c.vhd"]);
    assert_eq!(o.status.code(), Some(22), "{}", stdout(&o));
    assert!(
        stdout(&o).starts_with("c.vhd is invalid: "),
        "{}",
        stdout(&o)
    );
}

#[test]
fn our_snapshot_and_relink_on_qemu_made_bases_read_the_same_in_libvhdi() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let size = 8 * MIB;
    let raw1 = qemu_base(
        dir,
        "base1.vhd",
        size,
        &[
            (0, MIB, 0x5a),
            (3 * MIB + 4096, 8192, 0xc3),
            (7 * MIB, 512, 0x01),
        ],
    );
    let raw2 = qemu_base(
        dir,
        "base2.vhd",
        size,
        &[(MIB, 2 * MIB, 0x6b), (6 * MIB + 512, 1024, 0x7e)],
    );
    // The bases: we read what qemu wrote, zero-extended to qemu's CHS-rounded size.
    let vsize = info(dir, "base1.vhd")["virtual_size"].as_u64().unwrap() as usize;
    assert_eq!(
        info(dir, "base2.vhd")["virtual_size"].as_u64().unwrap() as usize,
        vsize
    );
    let want1 = sha256(&padded(&raw1, vsize));
    let want2 = sha256(&padded(&raw2, vsize));
    assert_eq!(our_read(dir, "base1.vhd"), (want1.clone(), vsize));
    assert_eq!(our_read(dir, "base2.vhd"), (want2.clone(), vsize));
    assert_eq!(vhdi(dir, &["base1.vhd"], true)["sha256"], want1.as_str());

    // Our snapshot of base1: libvhdi links it (identifier check) and reads base1's bytes.
    let uuid = ok(dir, &["vhd", "snapshot", "base1.vhd", "leaf.vhd"]);
    let leaf_uuid = uuid.trim();
    assert_eq!(
        ok(dir, &["vhd", "check", "leaf.vhd"]),
        "leaf.vhd is valid\n"
    );
    let base1_id = vhdi(dir, &["base1.vhd"], false)["layers"][0]["identifier"].clone();
    let base2_id = vhdi(dir, &["base2.vhd"], false)["layers"][0]["identifier"].clone();
    let v = vhdi(dir, &["leaf.vhd", "base1.vhd"], true);
    assert_eq!(layer(&v, 0)["identifier"], leaf_uuid);
    assert_eq!(layer(&v, 0)["disk_type"], 4);
    assert_eq!(layer(&v, 0)["parent_identifier"], base1_id);
    assert_eq!(layer(&v, 0)["parent_filename"], "base1.vhd");
    assert_eq!(layer(&v, 0)["media_size"].as_u64().unwrap() as usize, vsize);
    assert_eq!(v["sha256"], want1.as_str());
    assert_eq!(our_read(dir, "leaf.vhd").0, want1);

    // Relinked onto base2: libvhdi now takes base2 (and refuses base1), and reads base2.
    ok(dir, &["vhd", "set-parent", "leaf.vhd", "base2.vhd"]);
    assert_eq!(
        ok(dir, &["vhd", "check", "leaf.vhd"]),
        "leaf.vhd is valid\n"
    );
    let v = vhdi(dir, &["leaf.vhd", "base2.vhd"], true);
    assert_eq!(
        layer(&v, 0)["identifier"],
        leaf_uuid,
        "relink keeps the uuid"
    );
    assert_eq!(layer(&v, 0)["parent_identifier"], base2_id);
    assert_eq!(layer(&v, 0)["parent_filename"], "base2.vhd");
    assert_eq!(v["sha256"], want2.as_str());
    assert_eq!(our_read(dir, "leaf.vhd").0, want2);
    let err = vhdi_fails(dir, &["leaf.vhd", "base1.vhd"]);
    assert!(err.contains("mismatch in identifier"), "{err}");

    // A second level, and relinked from a sub-directory (relative locators "../").
    std::fs::create_dir(dir.join("sub")).unwrap();
    ok(dir, &["vhd", "snapshot", "-e", "leaf.vhd", "sub/top.vhd"]);
    let v = vhdi(dir, &["sub/top.vhd", "leaf.vhd", "base2.vhd"], true);
    assert_eq!(layer(&v, 0)["parent_identifier"], leaf_uuid);
    assert_eq!(v["sha256"], want2.as_str());
    assert_eq!(our_read(dir, "sub/top.vhd").0, want2);
    ok(dir, &["vhd", "set-parent", "sub/top.vhd", "base1.vhd"]);
    assert_eq!(
        ok(dir, &["vhd", "query", "-n", "sub/top.vhd", "-p", "-u"]),
        "../base1.vhd\n"
    );
    let v = vhdi(dir, &["sub/top.vhd", "base1.vhd"], true);
    assert_eq!(layer(&v, 0)["parent_identifier"], base1_id);
    assert_eq!(v["sha256"], want1.as_str());
    assert_eq!(our_read(dir, "sub/top.vhd").0, want1);
}

#[test]
fn a_sample_child_with_data_relinked_onto_a_qemu_base_reads_as_the_overlay() {
    // child.vhd holds partial blocks (bitmap bits 0 fall through) and a full block; its
    // block 3 is unallocated. Relinked onto a qemu-made base, the expected content is the
    // base with the child's three writes on top: computed here, independently.
    let d = unpacked_samples();
    let dir = d.path();
    let raw = qemu_base(
        dir,
        "qbase.vhd",
        8 * MIB,
        &[(0, 8 * MIB, 0x3c), (7 * MIB, 4096, 0x99)],
    );
    let qsize = info(dir, "qbase.vhd")["virtual_size"].as_u64().unwrap() as usize;
    std::fs::copy(dir.join("child.vhd"), dir.join("mine.vhd")).unwrap();
    ok(dir, &["vhd", "set-parent", "mine.vhd", "qbase.vhd"]);
    let mut want = padded(&raw, qsize);
    want.truncate(8 * MIB); // the child's virtual size
    want[512 * 1024..516 * 1024].fill(0xaa);
    want[2 * MIB..2 * MIB + 256 * 1024].fill(0xbb);
    want[4 * MIB..6 * MIB].fill(0xcc);
    let want = sha256(&want);
    let v = vhdi(dir, &["mine.vhd", "qbase.vhd"], true);
    assert_eq!(
        layer(&v, 0)["parent_identifier"],
        vhdi(dir, &["qbase.vhd"], false)["layers"][0]["identifier"]
    );
    assert_eq!(v["sha256"], want.as_str(), "libvhdi");
    assert_eq!(our_read(dir, "mine.vhd"), (want, 8 * MIB), "ours");
}

#[test]
fn our_snapshots_on_sample_chains_and_relinks_read_the_same_in_libvhdi() {
    let d = unpacked_samples();
    let dir = d.path();
    let sum = |n: &str| content_sums().into_iter().find(|(f, _)| f == n).unwrap().1;
    // grandchild holds a block, so the snapshot links to it directly.
    ok(dir, &["vhd", "snapshot", "grandchild.vhd", "leaf.vhd"]);
    let v = vhdi(
        dir,
        &["leaf.vhd", "grandchild.vhd", "child.vhd", "parent.vhd"],
        true,
    );
    assert_eq!(
        layer(&v, 0)["parent_identifier"],
        layer(&v, 1)["identifier"]
    );
    assert_eq!(v["sha256"], sum("grandchild.vhd").as_str());
    assert_eq!(our_read(dir, "leaf.vhd").0, sum("grandchild.vhd"));

    // Onto child-relinked (a differencing disk with data over parent2).
    ok(
        dir,
        &["vhd", "set-parent", "leaf.vhd", "child-relinked.vhd"],
    );
    let v = vhdi(
        dir,
        &["leaf.vhd", "child-relinked.vhd", "parent2.vhd"],
        true,
    );
    assert_eq!(
        layer(&v, 0)["parent_identifier"],
        layer(&v, 1)["identifier"]
    );
    assert_eq!(layer(&v, 0)["parent_filename"], "child-relinked.vhd");
    assert_eq!(v["sha256"], sum("child-relinked.vhd").as_str());
    assert_eq!(our_read(dir, "leaf.vhd").0, sum("child-relinked.vhd"));

    // Snapshot of an empty child: vhd-util (and we) skip it and link to its parent.
    ok(dir, &["vhd", "snapshot", "empty-child.vhd", "skip.vhd"]);
    let v = vhdi(dir, &["skip.vhd", "parent.vhd"], true);
    assert_eq!(layer(&v, 0)["parent_filename"], "parent.vhd");
    assert_eq!(v["sha256"], sum("parent.vhd").as_str());
    // With -e it stays on the empty child.
    ok(
        dir,
        &["vhd", "snapshot", "-e", "empty-child.vhd", "keep.vhd"],
    );
    let v = vhdi(dir, &["keep.vhd", "empty-child.vhd", "parent.vhd"], true);
    assert_eq!(layer(&v, 0)["parent_filename"], "empty-child.vhd");
    assert_eq!(v["sha256"], sum("parent.vhd").as_str());
    assert_eq!(our_read(dir, "keep.vhd").0, sum("parent.vhd"));
}

#[test]
fn libvhdi_reads_our_create_and_its_snapshot_as_zeros() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    for (name, arg, size) in [
        ("a.vhd", "8M", 8 * MIB),
        ("b.vhd", "20000K", 20 * MIB), // rounded up to whole 2 MiB blocks
        ("c.vhd", "1K", 2 * MIB),      // a bare number is refused (vhd-util forms)
    ] {
        ok(dir, &["vhd", "create", name, arg]);
        assert_eq!(
            ok(dir, &["vhd", "check", name]),
            format!("{name} is valid\n")
        );
        let zeros = sha256(&vec![0u8; size]);
        let v = vhdi(dir, &[name], true);
        assert_eq!(layer(&v, 0)["disk_type"], 3, "{name}");
        assert_eq!(layer(&v, 0)["media_size"].as_u64().unwrap() as usize, size);
        assert_eq!(
            layer(&v, 0)["identifier"],
            info(dir, name)["uuid"],
            "{name}"
        );
        assert_eq!(v["sha256"], zeros.as_str(), "{name}");
        assert_eq!(our_read(dir, name), (zeros.clone(), size));
        let snap = format!("snap-{name}");
        ok(dir, &["vhd", "snapshot", name, &snap]);
        let v = vhdi(dir, &[&snap, name], true);
        assert_eq!(
            layer(&v, 0)["parent_identifier"],
            layer(&v, 1)["identifier"]
        );
        assert_eq!(v["sha256"], zeros.as_str(), "{snap}");
    }
}

#[test]
fn qemu_img_accepts_our_create_output_and_reads_zeros() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    for (name, arg, size) in [
        ("a.vhd", "8M", 8u64 << 20),
        ("b.vhd", "20000K", 20 << 20),
        ("c.vhd", "100M", 100 << 20),
    ] {
        ok(dir, &["vhd", "create", name, arg]);
        let before = sha256_file(&dir.join(name));
        let o = qemu_img(dir, &["info", "--output=json", "-f", "vpc", name]);
        assert!(o.status.success(), "qemu-img info {name}: {}", stderr(&o));
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["format"], "vpc");
        assert_eq!(v["virtual-size"].as_u64(), Some(size), "{name}: {v}");
        let out = dir.join(format!("{name}.raw"));
        let o = qemu_img(
            dir,
            &[
                "convert",
                "-f",
                "vpc",
                "-O",
                "raw",
                name,
                out.to_str().unwrap(),
            ],
        );
        assert!(
            o.status.success(),
            "qemu-img convert {name}: {}",
            stderr(&o)
        );
        let raw = std::fs::read(&out).unwrap();
        assert_eq!(raw.len() as u64, size, "{name}");
        assert!(raw.iter().all(|&b| b == 0), "{name}: content not all zero");
        assert_eq!(
            sha256_file(&dir.join(name)),
            before,
            "qemu-img wrote {name}"
        );
        assert_eq!(
            ok(dir, &["vhd", "check", name]),
            format!("{name} is valid\n")
        );
    }
}

#[test]
fn qemu_img_reads_qemu_made_and_sample_dynamic_disks_as_we_do() {
    // Read-only use of qemu-img on tap files: convert to raw and compare with ours.
    let d = unpacked_samples();
    let dir = d.path();
    qemu_base(dir, "q.vhd", 5 * MIB, &[(MIB, MIB, 0x42)]);
    for name in [
        "q.vhd",
        "parent.vhd",
        "parent2.vhd",
        "qemu-parent.vhd",
        "ext2.vhd",
    ] {
        let before = sha256_file(&dir.join(name));
        let out = dir.join(format!("{name}.raw"));
        let o = qemu_img(
            dir,
            &[
                "convert",
                "-f",
                "vpc",
                "-O",
                "raw",
                name,
                out.to_str().unwrap(),
            ],
        );
        assert!(
            o.status.success(),
            "qemu-img convert {name}: {}",
            stderr(&o)
        );
        assert_eq!(
            our_read(dir, name),
            (
                sha256_file(&out),
                std::fs::metadata(&out).unwrap().len() as usize
            ),
            "{name}: qemu-img and we disagree"
        );
        assert_eq!(
            sha256_file(&dir.join(name)),
            before,
            "qemu-img wrote {name}"
        );
    }
}

// dfvfs third-party files.

#[test]
fn dfvfs_fat_differential_info_shows_the_windows_parent_fields() {
    let d = unpacked_samples();
    let dir = d.path();
    let o = run(dir, &["vhd", "info", "fat-differential.vhd"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    for want in [
        "type:            differencing",
        "f84f1636-cd9e-9041-a69e-dcc2380e416a",
        "5fa21a55-f394-aa4d-9958-1951a67d5540",
        "C:\\Projects\\dfvfs\\test_data\\fat-parent.vhd",
        "W2ku at 4096 (84 of 4096 bytes) /Projects/dfvfs/test_data/fat-parent.vhd",
        "W2ru at 12288 (32 of 65536 bytes) ./fat-parent.vhd",
        "parent path:     <not found>",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    let i = info(dir, "fat-differential.vhd");
    assert_eq!(i["virtual_size"], 4 << 20);
    assert_eq!(i["creator"]["application"], "win ");
    assert_eq!(i["parent"]["timestamp"]["vhd_epoch"], 0);
    let locs = i["parent"]["locators"].as_array().unwrap();
    assert_eq!(locs.len(), 2);
    assert_eq!(
        (
            &locs[0]["code"],
            &locs[0]["data_offset"],
            &locs[0]["data_space"]
        ),
        (
            &Value::from("W2ku"),
            &Value::from(0x1000),
            &Value::from(4096)
        )
    );
    assert_eq!(
        (
            &locs[1]["code"],
            &locs[1]["data_offset"],
            &locs[1]["data_space"]
        ),
        (
            &Value::from("W2ru"),
            &Value::from(0x3000),
            &Value::from(65536)
        )
    );
    assert_eq!(i["dynamic"]["table_offset"], 0x2000);
    assert_eq!(i["parent"]["resolved"], Value::Null);
    let err = i["chain_error"].as_str().expect("chain error");
    assert!(err.contains("fat-parent.vhd"), "{err}");
    // libvhdi sees the same identifiers and name.
    let v = vhdi(dir, &["fat-differential.vhd"], false);
    assert_eq!(layer(&v, 0)["identifier"], i["uuid"]);
    assert_eq!(layer(&v, 0)["parent_identifier"], i["parent"]["uuid"]);
    assert_eq!(layer(&v, 0)["parent_filename"], i["parent"]["name"]);
    assert_eq!(layer(&v, 0)["media_size"], i["virtual_size"]);
    // query: the locator text is there, the parent is not.
    let o = run(
        dir,
        &["vhd", "query", "-n", "fat-differential.vhd", "-p", "-u"],
    );
    assert_eq!(stdout(&o), "/Projects/dfvfs/test_data/fat-parent.vhd\n");
    let o = run(
        dir,
        &["vhd", "query", "-n", "fat-differential.vhd", "-v", "-p"],
    );
    assert_eq!(stdout(&o), "4\nquery failed\n");
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn dfvfs_fat_differential_read_fails_naming_the_file_and_the_missing_parent() {
    let d = unpacked_samples();
    let dir = d.path();
    let o = run(dir, &["vhd", "read", "fat-differential.vhd", "-"]);
    assert_eq!(o.status.code(), Some(4), "not found: {}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("fat-differential.vhd"), "{e}");
    assert!(e.contains("fat-parent.vhd"), "{e}");
    assert!(e.contains("parent not found"), "{e}");
    assert!(!e.contains("panicked"), "{e}");
    assert!(o.stdout.is_empty(), "no partial content on stdout");
    // To a file: fails the same way and leaves no output behind it... or an empty one.
    let o = run(dir, &["vhd", "read", "fat-differential.vhd", "out.raw"]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(std::fs::metadata(dir.join("out.raw")).map_or(true, |m| m.len() == 0));
    let o = run(dir, &["vhd", "check", "fat-differential.vhd"]);
    assert_eq!(o.status.code(), Some(22));
    assert!(
        stdout(&o).starts_with("fat-differential.vhd is invalid: "),
        "{}",
        stdout(&o)
    );
    // libvhdi cannot read it either without the parent.
    let err = vhdi_fails(dir, &["fat-differential.vhd"]);
    assert!(err.contains("missing parent"), "{err}");
}

#[test]
fn dfvfs_image_pair_with_bad_checksums_is_rejected() {
    let d = unpacked_samples();
    let dir = d.path();
    for name in ["image.vhd", "image-differential.vhd"] {
        let o = run(dir, &["vhd", "check", name]);
        assert_eq!(o.status.code(), Some(22), "{name}: {}", stdout(&o));
        let out = stdout(&o);
        assert!(out.starts_with(&format!("{name} is invalid: ")), "{out}");
        assert!(out.contains("checksum"), "{out}");
        for args in [vec!["vhd", "info", name], vec!["vhd", "read", name, "-"]] {
            let o = run(dir, &args);
            assert_eq!(o.status.code(), Some(3), "{args:?}: {}", stderr(&o));
            let e = stderr(&o);
            assert!(e.contains(name) && e.contains("checksum"), "{args:?}: {e}");
            assert!(o.stdout.is_empty(), "{args:?}");
        }
        let o = run(dir, &["vhd", "query", "-n", name, "-v"]);
        assert_eq!(o.status.code(), Some(22));
        assert_eq!(stdout(&o), format!("error opening {name}: -22\n"));
    }
}

#[test]
fn dfvfs_ext2_reads_as_documented_by_us_libvhdi_and_qemu() {
    const EXT2: &str = "870be7ae16c1fa8faab05c6eb9205dc9a7ae35c5f552c5cf8a267c0bc6a5cb99";
    let d = unpacked_samples();
    let dir = d.path();
    assert_eq!(our_read(dir, "ext2.vhd"), (EXT2.to_string(), 4212736));
    assert_eq!(vhdi(dir, &["ext2.vhd"], true)["sha256"], EXT2);
    assert_eq!(
        ok(dir, &["vhd", "check", "ext2.vhd"]),
        "ext2.vhd is valid\n"
    );
    let out = dir.join("ext2.raw");
    ok(dir, &["vhd", "read", "ext2.vhd", out.to_str().unwrap()]);
    assert_eq!(sha256_file(&out), EXT2, "read to a (sparse) file");
}
