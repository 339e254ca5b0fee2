//! vhd-util's habits: the flag forms admins type from memory (`create -n F -s MB`,
//! `snapshot -n CHILD -p PARENT`, `set-parent -n CHILD -p PARENT`, `query -v`) do what
//! vhd-util does, byte for byte the same files as our positional forms; a bare
//! positional size, which meant bytes to us and means MB to vhd-util, is refused with a
//! hint instead of making a 2 MiB disk.

use std::path::Path;

use crate::helpers::{run, sha256_file, stderr, stdout, unpacked_samples};

const UUID: &str = "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9";
const TIME: &str = "1704067200";

fn ok(dir: &Path, args: &[&str]) -> String {
    let o = run(dir, args);
    assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    stdout(&o)
}

fn pinned<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut a = args.to_vec();
    a.extend_from_slice(&["--uuid", UUID, "--unix-time", TIME]);
    a
}

#[test]
fn create_n_s_counts_megabytes_as_vhd_util_does() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    ok(
        dir,
        &pinned(&["vhd", "create", "-n", "flags.vhd", "-s", "20"]),
    );
    assert_eq!(ok(dir, &["vhd", "query", "-n", "flags.vhd", "-v"]), "20\n");
    ok(dir, &pinned(&["vhd", "create", "units.vhd", "20M"]));
    assert_eq!(
        sha256_file(&dir.join("flags.vhd")),
        sha256_file(&dir.join("units.vhd")),
        "-s 20 and 20M make different files"
    );
    // -s with a unit is taken as written.
    ok(dir, &["vhd", "create", "-n", "g.vhd", "-s", "1G"]);
    assert_eq!(ok(dir, &["vhd", "query", "-n", "g.vhd", "-v"]), "1024\n");
}

#[test]
fn a_bare_positional_size_is_refused_with_a_hint() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    // `vhd create F 20480` made a 2 MiB disk without a word.
    for bare in ["20480", "8", "1"] {
        let o = run(dir, &["vhd", "create", "bare.vhd", bare]);
        assert_eq!(o.status.code(), Some(2), "{bare}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(
            e.contains("has no unit")
                && e.contains(&format!("-s {bare}"))
                && e.contains(&format!("{bare}M")),
            "{bare}: {e}"
        );
        assert!(!dir.join("bare.vhd").exists(), "{bare} made a file");
    }
    // Sizes with units keep working.
    for (arg, mib) in [("8M", "8"), ("20000K", "20"), ("1G", "1024")] {
        let f = format!("{arg}.vhd");
        ok(dir, &["vhd", "create", &f, arg]);
        assert_eq!(
            ok(dir, &["vhd", "query", "-n", &f, "-v"]),
            format!("{mib}\n")
        );
    }
}

#[test]
fn snapshot_and_set_parent_take_n_child_p_parent() {
    let d = unpacked_samples();
    let dir = d.path();
    ok(
        dir,
        &pinned(&["vhd", "snapshot", "-n", "flags.vhd", "-p", "parent.vhd"]),
    );
    ok(
        dir,
        &pinned(&["vhd", "snapshot", "parent.vhd", "positional.vhd"]),
    );
    // The child's own name is in no field: the files are the same bytes.
    assert_eq!(
        sha256_file(&dir.join("flags.vhd")),
        sha256_file(&dir.join("positional.vhd"))
    );
    assert_eq!(
        ok(dir, &["vhd", "query", "-n", "flags.vhd", "-p", "-u"]),
        "./parent.vhd\n"
    );
    // vhd-util modify -n CHILD -p PARENT, and ours: both byte-identical to blktap's.
    std::fs::copy(dir.join("child.vhd"), dir.join("a.vhd")).unwrap();
    std::fs::copy(dir.join("child.vhd"), dir.join("b.vhd")).unwrap();
    ok(
        dir,
        &["vhd", "set-parent", "-n", "a.vhd", "-p", "parent2.vhd"],
    );
    ok(dir, &["vhd", "set-parent", "b.vhd", "parent2.vhd"]);
    let want = sha256_file(&dir.join("child-relinked.vhd"));
    assert_eq!(sha256_file(&dir.join("a.vhd")), want);
    assert_eq!(sha256_file(&dir.join("b.vhd")), want);
}

#[test]
fn half_a_form_or_both_forms_are_usage_errors() {
    let d = unpacked_samples();
    let dir = d.path();
    let before = sha256_file(&dir.join("child.vhd"));
    for args in [
        &["vhd", "snapshot", "-n", "x.vhd"][..],
        &["vhd", "snapshot", "-p", "parent.vhd", "x.vhd"],
        &["vhd", "snapshot", "parent.vhd"],
        &[
            "vhd",
            "snapshot",
            "parent.vhd",
            "x.vhd",
            "-n",
            "y.vhd",
            "-p",
            "parent.vhd",
        ],
        &["vhd", "set-parent", "-n", "child.vhd"],
        &["vhd", "set-parent", "-n", "child.vhd", "parent2.vhd"],
        &["vhd", "set-parent", "child.vhd", "-p", "parent2.vhd"],
        &["vhd", "create", "-n", "x.vhd"],
        &["vhd", "create", "-s", "8"],
        &["vhd", "create", "x.vhd"],
        &["vhd", "create", "-n", "x.vhd", "8M"],
    ] {
        let o = run(dir, args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(!stderr(&o).contains("panicked"), "{args:?}: {}", stderr(&o));
        assert!(
            !dir.join("x.vhd").exists() && !dir.join("y.vhd").exists(),
            "{args:?}"
        );
    }
    assert_eq!(sha256_file(&dir.join("child.vhd")), before);
}

#[test]
fn query_v_is_the_virtual_size_and_the_global_v_still_verbose() {
    let d = unpacked_samples();
    let dir = d.path();
    // What XenServer's SM runs.
    assert_eq!(
        ok(dir, &["vhd", "query", "-vsafp", "-n", "child.vhd"]),
        format!(
            "8\n6308352\n{}/parent.vhd\nhidden: 0\n3\n",
            std::fs::canonicalize(dir).unwrap().display()
        )
    );
    assert_eq!(ok(dir, &["vhd", "query", "-n", "child.vhd", "-v"]), "8\n");
    // Before `vhd`, -v is the global verbose: query prints only what it was asked.
    assert_eq!(
        ok(dir, &["-v", "vhd", "query", "-s", "-n", "child.vhd"]),
        "6308352\n"
    );
    let o = run(dir, &["vhd", "query", "--help"]);
    assert!(o.status.success());
    assert!(stdout(&o).contains("Virtual size in MiB"), "{}", stdout(&o));
}
