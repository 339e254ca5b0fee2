//! Relinks refused before anything is written: the file is byte-identical afterwards.

use super::*;

// ---------------------------------------------------------------------------------------
// Relinks refused before anything is written.

fn sha(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}

#[test]
fn set_parent_with_a_path_too_long_for_the_locator_slots_changes_nothing() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    unpack(dir, &["parent.vhd", "child.vhd"]);
    // ./<200 a>/<200 b>/p.vhd: 410 characters. MacX (file://...) still fits its 512-byte
    // slot; the UTF-16 W2ku/W2ru copies (820 bytes) do not. blktap wrote slot 0 before
    // finding that out; we must refuse before writing anything.
    let deep = dir.join("a".repeat(200)).join("b".repeat(200));
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::copy(dir.join("parent.vhd"), deep.join("p.vhd")).unwrap();
    let before = sha(&dir.join("child.vhd"));
    let mtime = std::fs::metadata(dir.join("child.vhd"))
        .unwrap()
        .modified()
        .unwrap();
    let rel = format!("{}/{}/p.vhd", "a".repeat(200), "b".repeat(200));
    let o = run_limited(dir, &["vhd", "set-parent", "child.vhd", &rel]);
    assert_eq!(o.code, Some(3), "refused as invalid input: {}", o.stderr);
    assert!(o.stderr.contains("child.vhd"), "{}", o.stderr);
    assert!(
        o.stderr.contains("do not fit") || o.stderr.contains("too long"),
        "{}",
        o.stderr
    );
    assert!(
        sha(&dir.join("child.vhd")) == before,
        "child.vhd was modified"
    );
    assert_eq!(
        std::fs::metadata(dir.join("child.vhd"))
            .unwrap()
            .modified()
            .unwrap(),
        mtime,
        "child.vhd was written to"
    );
    // Still the same, valid, working child.
    let o = run_limited(dir, &["vhd", "check", "child.vhd"]);
    assert_eq!(o.out(), "child.vhd is valid\n");
    let o = run_limited(dir, &["vhd", "query", "-n", "child.vhd", "-p", "-u"]);
    assert_eq!(o.out(), "./parent.vhd\n");

    // Same with the slots shrunk to the smallest blktap ever writes for a name that
    // fits only MacX: a W2ku slot of 512 bytes holds 254 characters after ".\".
    let mid = dir.join("c".repeat(250));
    std::fs::create_dir(&mid).unwrap();
    std::fs::copy(dir.join("parent.vhd"), mid.join("p.vhd")).unwrap();
    let rel = format!("{}/p.vhd", "c".repeat(250)); // 256 chars: 514 bytes in UTF-16
    let o = run_limited(dir, &["vhd", "set-parent", "child.vhd", &rel]);
    assert_eq!(o.code, Some(3), "{}", o.stderr);
    assert!(
        sha(&dir.join("child.vhd")) == before,
        "child.vhd was modified"
    );
}

#[test]
fn set_parent_that_would_make_a_loop_is_refused_and_changes_nothing() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    unpack(dir, &["parent.vhd"]);
    for n in ["a.vhd", "b.vhd", "c.vhd"] {
        let o = run_limited(dir, &["vhd", "snapshot", "parent.vhd", n]);
        assert_eq!(o.code, Some(0), "{}", o.stderr);
    }
    // a's parent b: fine.
    let o = run_limited(dir, &["vhd", "set-parent", "a.vhd", "b.vhd"]);
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    // b's parent a would loop: refused, b unchanged.
    let b_before = sha(&dir.join("b.vhd"));
    let o = run_limited(dir, &["vhd", "set-parent", "b.vhd", "a.vhd"]);
    assert_eq!(o.code, Some(3), "loop accepted: {}", o.stderr);
    assert!(
        o.stderr.contains("b.vhd") && o.stderr.contains("loop"),
        "{}",
        o.stderr
    );
    assert!(sha(&dir.join("b.vhd")) == b_before, "b.vhd was modified");
    // A longer loop: b's parent c, then c's parent a (a -> b -> c -> a).
    let o = run_limited(dir, &["vhd", "set-parent", "b.vhd", "c.vhd"]);
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    let c_before = sha(&dir.join("c.vhd"));
    let o = run_limited(dir, &["vhd", "set-parent", "c.vhd", "a.vhd"]);
    assert_eq!(o.code, Some(3), "3-file loop accepted: {}", o.stderr);
    assert!(sha(&dir.join("c.vhd")) == c_before, "c.vhd was modified");
    // Its own parent, by another name (a hard link).
    std::fs::hard_link(dir.join("c.vhd"), dir.join("c-link.vhd")).unwrap();
    let o = run_limited(dir, &["vhd", "set-parent", "c.vhd", "c-link.vhd"]);
    assert_eq!(o.code, Some(3), "self-parent accepted: {}", o.stderr);
    assert!(sha(&dir.join("c.vhd")) == c_before, "c.vhd was modified");
    // The chain still reads: a -> b -> c -> parent, depth 4, all valid.
    let o = run_limited(dir, &["vhd", "query", "-n", "a.vhd", "-d"]);
    assert_eq!(o.out(), "chain depth: 4\n");
    let o = run_limited(dir, &["vhd", "check", "-p", "a.vhd"]);
    assert_eq!(o.out(), "a.vhd is valid\n", "{}", o.stderr);
    let o = run_limited(dir, &["vhd", "read", "a.vhd", "-"]);
    assert_eq!((o.code, o.stdout_len), (Some(0), 8 << 20));
}

#[test]
fn a_loop_made_behind_our_back_is_reported_not_followed() {
    // blktap would accept this relink; make the loop by copying bytes, then every
    // command must stop (no endless walk) and name a file.
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    unpack(dir, &["parent.vhd"]);
    for n in ["a.vhd", "b.vhd"] {
        let o = run_limited(dir, &["vhd", "snapshot", "parent.vhd", n]);
        assert_eq!(o.code, Some(0), "{}", o.stderr);
    }
    let o = run_limited(dir, &["vhd", "set-parent", "a.vhd", "b.vhd"]);
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    // b's header and locators made to point at a, as blktap's modify would write them.
    std::fs::copy(dir.join("b.vhd"), dir.join("b0.vhd")).unwrap();
    let o = run_limited(dir, &["vhd", "set-parent", "b0.vhd", "parent.vhd"]);
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    let a = std::fs::read(dir.join("a.vhd")).unwrap();
    let mut b = std::fs::read(dir.join("b.vhd")).unwrap();
    // Header: parent uuid = a's uuid, name "a.vhd"; locators: "./a.vhd".
    let a_uuid = &a[a.len() - 512 + 68..a.len() - 512 + 84];
    b[512 + 40..512 + 56].copy_from_slice(a_uuid);
    let mut name = [0u8; 512];
    for (i, c) in "a.vhd".bytes().enumerate() {
        name[2 * i + 1] = c;
    }
    b[512 + 64..512 + 576].copy_from_slice(&name);
    let macx = b"file://./a.vhd".to_vec();
    let w2: Vec<u8> = ".\\a.vhd"
        .encode_utf16()
        .flat_map(|u| u.to_le_bytes())
        .collect();
    for (slot, data) in [(0usize, &macx), (1, &w2), (2, &w2)] {
        let e = 512 + 576 + 24 * slot;
        let off = be64(&b, e + 16) as usize;
        b[off..off + 512].fill(0);
        b[off..off + data.len()].copy_from_slice(data);
        b[e + 8..e + 12].copy_from_slice(&(data.len() as u32).to_be_bytes());
    }
    fix_checksum(&mut b[512..1536], 36);
    std::fs::write(dir.join("b.vhd"), &b).unwrap();
    for name in ["a.vhd", "b.vhd"] {
        let o = run_limited(dir, &["vhd", "read", name, "-"]);
        assert_eq!(o.code, Some(3), "{name}: read through a loop: {}", o.stderr);
        assert!(o.stderr.contains("loop"), "{}", o.stderr);
        let o = run_limited(dir, &["vhd", "check", "-p", name]);
        assert_eq!(o.code, Some(22), "{name}: {}", o.out());
        let o = run_limited(dir, &["vhd", "query", "-n", name, "-d"]);
        assert_ne!(o.code, Some(0), "{name}: depth of a loop: {}", o.out());
        let o = run_limited(dir, &["vhd", "info", name]);
        assert_eq!(o.code, Some(0), "{}", o.stderr);
        assert!(o.out().contains("loop"), "{}", o.out());
    }
}
