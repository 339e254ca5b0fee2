//! The blktap-made samples are the byte-exact reference: every output of ours that
//! blktap also makes must equal blktap's, byte for byte.

use crate::helpers::{content_sums, run, sha256_file, stderr, stdout, unpacked_samples};
use std::path::Path;

fn copy(dir: &Path, from: &str, to: &str) {
    std::fs::copy(dir.join(from), dir.join(to)).expect("copy");
}

fn assert_same(dir: &Path, a: &str, b: &str) {
    let (x, y) = (
        std::fs::read(dir.join(a)).unwrap(),
        std::fs::read(dir.join(b)).unwrap(),
    );
    assert_eq!(x.len(), y.len(), "{a} and {b} differ in size");
    let diff: Vec<usize> = (0..x.len()).filter(|&i| x[i] != y[i]).take(8).collect();
    assert!(diff.is_empty(), "{a} differs from {b} at offsets {diff:?}");
}

#[test]
fn set_parent_is_byte_identical_to_vhd_util_modify() {
    let d = unpacked_samples();
    for (orig, want) in [
        ("child.vhd", "child-relinked.vhd"),
        ("empty-child.vhd", "empty-child-relinked.vhd"),
    ] {
        let work = format!("work-{orig}");
        copy(d.path(), orig, &work);
        let o = run(d.path(), &["vhd", "set-parent", &work, "parent2.vhd"]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(stdout(&o), "", "set-parent prints nothing, as vhd-util");
        assert_same(d.path(), &work, want);
    }
}

#[test]
fn set_parent_with_a_path_through_another_directory() {
    // The relative path is computed lexically from the paths as given.
    let d = unpacked_samples();
    std::fs::create_dir(d.path().join("sub")).unwrap();
    copy(d.path(), "child.vhd", "sub/c.vhd");
    let o = run(
        d.path(),
        &["vhd", "set-parent", "sub/c.vhd", "./sub/../parent2.vhd"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(d.path(), &["vhd", "query", "-n", "sub/c.vhd", "-p", "-u"]);
    assert_eq!(stdout(&o), "../parent2.vhd\n");
    let o = run(d.path(), &["vhd", "check", "sub/c.vhd"]);
    assert_eq!(stdout(&o), "sub/c.vhd is valid\n");
}

#[test]
fn set_hidden_is_byte_identical_to_vhd_util_set() {
    let d = unpacked_samples();
    copy(d.path(), "child.vhd", "h.vhd");
    let o = run(d.path(), &["vhd", "set-hidden", "h.vhd", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_same(d.path(), "h.vhd", "child-hidden.vhd");
    let o = run(d.path(), &["vhd", "set-hidden", "h.vhd", "0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_same(d.path(), "h.vhd", "child.vhd");
    let o = run(d.path(), &["vhd", "set-hidden", "h.vhd", "2"]);
    assert_eq!(o.status.code(), Some(2), "only 0 and 1 are accepted");
}

#[test]
fn set_hidden_truncates_slack_behind_the_footer_like_blktap() {
    let d = unpacked_samples();
    copy(d.path(), "child.vhd", "slack.vhd");
    // Slack after the footer: blktap writes the footer at the end of data and truncates.
    let mut bytes = std::fs::read(d.path().join("slack.vhd")).unwrap();
    let footer = bytes[bytes.len() - 512..].to_vec();
    bytes.extend_from_slice(&[0u8; 4096]);
    let n = bytes.len();
    bytes[n - 512..].copy_from_slice(&footer);
    std::fs::write(d.path().join("slack.vhd"), &bytes).unwrap();
    let o = run(d.path(), &["vhd", "set-hidden", "slack.vhd", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_same(d.path(), "slack.vhd", "child-hidden.vhd");
}

#[test]
fn snapshot_reproduces_vhd_util_snapshot() {
    let d = unpacked_samples();
    // empty-child.vhd: `vhd-util snapshot -n empty-child.vhd -p parent.vhd` at
    // 2024-01-04T00:00:00Z; pin the same uuid and clock and the files must match.
    let o = run(
        d.path(),
        &[
            "vhd",
            "snapshot",
            "parent.vhd",
            "snap.vhd",
            "--uuid",
            "b1b42d11-4131-43e3-92c1-3b2b88fda970",
            "--unix-time",
            "1704326400",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "b1b42d11-4131-43e3-92c1-3b2b88fda970\n");
    assert_same(d.path(), "snap.vhd", "empty-child.vhd");
    // Never overwrite.
    let o = run(d.path(), &["vhd", "snapshot", "parent.vhd", "snap.vhd"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("exists"), "{}", stderr(&o));
}

#[test]
fn snapshot_of_a_qemu_parent_matches_blktap_metadata() {
    let d = unpacked_samples();
    let o = run(
        d.path(),
        &[
            "vhd",
            "snapshot",
            "qemu-parent.vhd",
            "s.vhd",
            "--uuid",
            "a6d7b7a7-cc75-41c0-bd9b-a0c24ed8613f",
            "--unix-time",
            "1704412860",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let ours = std::fs::read(d.path().join("s.vhd")).unwrap();
    let theirs = std::fs::read(d.path().join("tap-child-of-qemu.vhd")).unwrap();
    // blktap wrote data into its child afterwards: the BAT and batmap differ, but the
    // footers, the header and the three locator areas must not.
    assert_eq!(ours[..1536], theirs[..1536], "footer copy + header");
    assert_eq!(ours[3072..4608], theirs[3072..4608], "locator areas");
    assert_eq!(
        ours[ours.len() - 512..],
        theirs[theirs.len() - 512..],
        "footer"
    );
}

#[test]
fn snapshot_skips_empty_parents_unless_told_not_to() {
    let d = unpacked_samples();
    // empty-child has no block: vhd-util links past it to parent.vhd.
    let o = run(d.path(), &["vhd", "snapshot", "empty-child.vhd", "a.vhd"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(d.path(), &["vhd", "query", "-n", "a.vhd", "-p", "-u"]);
    assert_eq!(stdout(&o), "./parent.vhd\n");
    let o = run(
        d.path(),
        &["vhd", "snapshot", "-e", "empty-child.vhd", "b.vhd"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(d.path(), &["vhd", "query", "-n", "b.vhd", "-p", "-u", "-d"]);
    assert_eq!(stdout(&o), "./empty-child.vhd\nchain depth: 3\n");
    for f in ["a.vhd", "b.vhd"] {
        let o = run(d.path(), &["vhd", "check", "--parents", f]);
        assert_eq!(stdout(&o), format!("{f} is valid\n"));
    }
}

#[test]
fn read_gives_the_content_hashes_of_every_sample() {
    let d = unpacked_samples();
    let sums = content_sums();
    assert!(sums.len() >= 10);
    for (name, want) in sums {
        let out = d.path().join(format!("{name}.raw"));
        let o = run(d.path(), &["vhd", "read", &name, out.to_str().unwrap()]);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        assert_eq!(sha256_file(&out), want, "content of {name}");
    }
    let o = run(d.path(), &["vhd", "read", "ext2.vhd", "ext2.raw"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        sha256_file(&d.path().join("ext2.raw")),
        "870be7ae16c1fa8faab05c6eb9205dc9a7ae35c5f552c5cf8a267c0bc6a5cb99"
    );
}

#[test]
fn read_to_stdout_equals_read_to_file() {
    let d = unpacked_samples();
    let o = run(d.path(), &["vhd", "read", "grandchild.vhd", "-"]);
    assert!(o.status.success());
    use sha2::Digest;
    let h = format!("{:x}", sha2::Sha256::digest(&o.stdout));
    assert_eq!(
        h,
        "9d79e9372eb2b98c93e9be5efe933f685564698b6795704fa342f19883b1c552"
    );
}

#[test]
fn query_prints_what_vhd_util_prints() {
    let d = unpacked_samples();
    let abs = std::fs::canonicalize(d.path()).unwrap();
    let o = run(
        d.path(),
        &[
            "vhd",
            "query",
            "-n",
            "child.vhd",
            "-v",
            "-s",
            "-p",
            "-f",
            "-a",
        ],
    );
    assert!(o.status.success());
    assert_eq!(
        stdout(&o),
        format!("8\n6308352\n{}/parent.vhd\nhidden: 0\n3\n", abs.display())
    );
    // SM's getVHDInfo form, combined flags.
    let o = run(d.path(), &["vhd", "query", "-vsafp", "-n", "child.vhd"]);
    assert_eq!(
        stdout(&o),
        format!("8\n6308352\n{}/parent.vhd\nhidden: 0\n3\n", abs.display())
    );
    let o = run(d.path(), &["vhd", "query", "-n", "parent.vhd", "-p", "-f"]);
    assert_eq!(stdout(&o), "parent.vhd has no parent\nhidden: 0\n");
    let o = run(
        d.path(),
        &["vhd", "query", "-n", "grandchild.vhd", "-d", "-p", "-u"],
    );
    assert_eq!(stdout(&o), "./child.vhd\nchain depth: 3\n");
    let o = run(d.path(), &["vhd", "query", "-n", "child-hidden.vhd", "-f"]);
    assert_eq!(stdout(&o), "hidden: 1\n");
    // qemu rounds 4 MiB up to a CHS size; -v rounds down.
    let o = run(d.path(), &["vhd", "query", "-n", "qemu-parent.vhd", "-v"]);
    assert_eq!(stdout(&o), "4\n");
}

#[test]
fn query_with_the_parent_missing() {
    let d = unpacked_samples();
    std::fs::create_dir(d.path().join("alone")).unwrap();
    copy(d.path(), "child.vhd", "alone/child.vhd");
    let o = run(d.path(), &["vhd", "query", "-n", "alone/child.vhd", "-p"]);
    assert_eq!(stdout(&o), "query failed\n");
    assert_eq!(o.status.code(), Some(2));
    let o = run(
        d.path(),
        &["vhd", "query", "-n", "alone/child.vhd", "-p", "-u"],
    );
    assert_eq!(stdout(&o), "./parent.vhd\n");
    assert_eq!(o.status.code(), Some(0));
    let o = run(d.path(), &["vhd", "query", "-n", "nonexistent.vhd", "-v"]);
    assert_eq!(stdout(&o), "error opening nonexistent.vhd: -2\n");
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn check_accepts_every_tap_sample_and_rejects_the_broken_ones() {
    let d = unpacked_samples();
    for f in [
        "parent.vhd",
        "child.vhd",
        "grandchild.vhd",
        "parent2.vhd",
        "child-relinked.vhd",
        "child-hidden.vhd",
        "empty-child.vhd",
        "empty-child-relinked.vhd",
        "qemu-parent.vhd",
        "tap-child-of-qemu.vhd",
        "ext2.vhd",
    ] {
        let o = run(d.path(), &["vhd", "check", "--parents", f]);
        assert_eq!(stdout(&o), format!("{f} is valid\n"), "{}", stderr(&o));
        assert!(o.status.success());
        let o = run(d.path(), &["vhd", "check", "-n", f]);
        assert_eq!(stdout(&o), format!("{f} is valid\n"));
    }
    for (f, why) in [
        ("image.vhd", "checksum"),
        ("image-differential.vhd", "checksum"),
        // Windows stores the full path as the parent name: blktap's check fails it too.
        ("fat-differential.vhd", "parent"),
    ] {
        let o = run(d.path(), &["vhd", "check", f]);
        assert_eq!(o.status.code(), Some(22), "{f}");
        let out = stdout(&o);
        assert!(out.starts_with(&format!("{f} is invalid: ")), "{out}");
        assert!(out.contains(why), "{f}: {out}");
    }
}

#[test]
fn check_parents_catches_what_blktap_misses() {
    let d = unpacked_samples();
    // A parent that is not the one the child names: same name, other uuid.
    std::fs::create_dir(d.path().join("swap")).unwrap();
    copy(d.path(), "child.vhd", "swap/child.vhd");
    copy(d.path(), "parent2.vhd", "swap/parent.vhd");
    let o = run(d.path(), &["vhd", "check", "--parents", "swap/child.vhd"]);
    assert_eq!(o.status.code(), Some(22));
    assert!(stdout(&o).contains("uuid"), "{}", stdout(&o));
    // A loop: refused when made, and a crafted one found by check.
    copy(d.path(), "child.vhd", "l1.vhd");
    copy(d.path(), "empty-child.vhd", "l2.vhd");
    let o = run(d.path(), &["vhd", "set-parent", "l2.vhd", "l1.vhd"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let before = std::fs::read(d.path().join("l1.vhd")).unwrap();
    let o = run(d.path(), &["vhd", "set-parent", "l1.vhd", "l2.vhd"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("loop"), "{}", stderr(&o));
    assert_eq!(before, std::fs::read(d.path().join("l1.vhd")).unwrap());
    let o = run(d.path(), &["vhd", "set-parent", "l1.vhd", "l1.vhd"]);
    assert!(!o.status.success());
    assert_eq!(before, std::fs::read(d.path().join("l1.vhd")).unwrap());
}

#[test]
fn set_parent_refusals_match_vhd_util_codes() {
    let d = unpacked_samples();
    copy(d.path(), "child.vhd", "c.vhd");
    let before = std::fs::read(d.path().join("c.vhd")).unwrap();
    // Missing parent, non-VHD parent, non-differencing child.
    let o = run(d.path(), &["vhd", "set-parent", "c.vhd", "missing.vhd"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("missing.vhd"), "{}", stderr(&o));
    std::fs::write(d.path().join("raw.img"), vec![0u8; 4096]).unwrap();
    let o = run(d.path(), &["vhd", "set-parent", "c.vhd", "raw.img"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("not a usable VHD"), "{}", stderr(&o));
    let o = run(
        d.path(),
        &["vhd", "set-parent", "parent2.vhd", "parent.vhd"],
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("not a differencing disk"),
        "{}",
        stderr(&o)
    );
    assert_eq!(before, std::fs::read(d.path().join("c.vhd")).unwrap());
    // A path longer than blktap's 512-byte locator areas: refused before any write
    // (blktap would have overwritten the MacX slot already).
    let deep = "d/".repeat(130);
    std::fs::create_dir_all(d.path().join(&deep)).unwrap();
    copy(d.path(), "parent2.vhd", &format!("{deep}p.vhd"));
    let o = run(
        d.path(),
        &["vhd", "set-parent", "c.vhd", &format!("{deep}p.vhd")],
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("do not fit"), "{}", stderr(&o));
    assert_eq!(before, std::fs::read(d.path().join("c.vhd")).unwrap());
}

#[test]
fn create_makes_a_valid_tap_layout() {
    let d = unpacked_samples();
    let o = run(d.path(), &["vhd", "create", "new.vhd", "8M"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let bytes = std::fs::read(d.path().join("new.vhd")).unwrap();
    // footer copy, header, BAT, batmap header, batmap, footer.
    assert_eq!(bytes.len(), 3584);
    assert_eq!(&bytes[..8], b"conectix");
    assert_eq!(&bytes[512..520], b"cxsparse");
    assert_eq!(&bytes[2048..2056], b"tdbatmap");
    assert_eq!(bytes[..512], bytes[3072..]);
    // The metadata of blktap's parent.vhd (created the same way, then written) matches
    // ours but for the uuid, time, checksums, BAT entries, batmap bits and checksum.
    let parent = std::fs::read(d.path().join("parent.vhd")).unwrap();
    assert_eq!(
        bytes[512..512 + 36],
        parent[512..512 + 36],
        "header up to checksum"
    );
    assert_eq!(
        bytes[512 + 40..1536],
        parent[512 + 40..1536],
        "rest of header"
    );
    assert_eq!(
        bytes[28..64],
        parent[28..64],
        "creator, sizes, geometry, type"
    );
    let o = run(d.path(), &["vhd", "check", "new.vhd"]);
    assert_eq!(stdout(&o), "new.vhd is valid\n");
    // Sizes round up to whole 2 MiB blocks, as vhd-util create does.
    let o = run(d.path(), &["vhd", "create", "odd.vhd", "5M"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(d.path(), &["vhd", "query", "-n", "odd.vhd", "-v"]);
    assert_eq!(stdout(&o), "6\n");
    for bad in ["0", "3X", "-1", "99999999T"] {
        let o = run(d.path(), &["vhd", "create", "bad.vhd", bad]);
        assert!(!o.status.success(), "size {bad}");
        assert!(!d.path().join("bad.vhd").exists(), "size {bad} left a file");
    }
}

#[test]
fn info_json_names_the_chain() {
    let d = unpacked_samples();
    let o = run(d.path(), &["vhd", "info", "--json", "grandchild.vhd"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["uuid"], "475d9939-98c2-4351-8804-5ce0e5f680c9");
    assert_eq!(v["disk_type"], "differencing");
    assert_eq!(v["parent"]["uuid"], "309f8119-ecc4-404a-847c-63e4b2291c95");
    assert_eq!(v["parent"]["timestamp"]["utc"], "2024-01-01T00:02:30Z");
    let chain: Vec<_> = v["chain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["uuid"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        chain,
        [
            "475d9939-98c2-4351-8804-5ce0e5f680c9",
            "309f8119-ecc4-404a-847c-63e4b2291c95",
            "7c9fe95e-7c58-43ac-a789-6e5c8fdcc6d4"
        ]
    );
    let o = run(d.path(), &["vhd", "info", "child.vhd"]);
    assert!(stdout(&o).contains("batmap:"), "{}", stdout(&o));
    assert!(stdout(&o).contains("full blocks [2]"), "{}", stdout(&o));
}
