//! The kernel calls write `/boot/guest` files durably: each file through a fresh
//! temporary name (`O_EXCL`), fsynced, renamed into place, and then the directory
//! fsynced, so the rename itself survives a crash (`fsutil::write_atomically`). Seen from
//! outside, as the syscalls the real binary makes: the shim is run as xapi runs it
//! (tests/plugin/caller.py) with the binary under `strace -f`, and the trace is read
//! back. `copy_vdi` runs against the xapi stand-in (tests/plugin/xapi_standin.py), as in
//! tests/plugin.rs.

use super::plugin::{self, install_shim_running, Xapi, VDI_UUID};
use crate::helpers;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

/// `open` as well as `openat`: musl's `open()` is the `open` syscall on x86_64.
const TRACED: &str = "fsync,fdatasync,open,openat,rename,renameat,renameat2";

/// `strace`, which `make setup` installs; without it this test fails rather than passes
/// vacuously.
fn strace() -> PathBuf {
    ["/usr/bin/strace", "/bin/strace"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("strace is needed to see the binary's syscalls (make setup installs it)")
}

/// The `kernel` shim as `make install` writes it, except that its one `exec` runs the
/// binary under strace, writing the trace of every process to `trace` (not stdout:
/// stdout is the response).
fn install_traced_shim(dir: &Path, trace: &Path) -> PathBuf {
    let traced = format!(
        "{} -f -qq -s 4096 -o {} -e trace={TRACED} {}",
        strace().display(),
        trace.display(),
        helpers::bin().display()
    );
    install_shim_running(dir, "kernel", &traced)
}

/// Run one call through caller.py; it must succeed.
fn call(req: Value) -> Value {
    let v = plugin::call(req);
    plugin::success(&v);
    v
}

// ---- the trace ----

/// The traced syscalls that succeeded, in order.
#[derive(Debug, Clone, PartialEq)]
enum Sys {
    Open {
        path: String,
        flags: String,
        fd: i32,
    },
    Fsync {
        fd: i32,
    },
    Rename {
        from: String,
        to: String,
    },
}

/// The quoted strings of a strace argument list (paths here have no quotes or escapes).
fn quoted(args: &str) -> Vec<String> {
    args.split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// `PID name(args) = result` lines, as `strace -f -o` writes them; failed calls and
/// anything else (exits, signals) are left out.
fn parse_trace(text: &str) -> Vec<Sys> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim_start_matches(|c: char| c.is_ascii_digit()).trim();
        // strace pads the result into a column: `fsync(3)      = 0`.
        let Some(eq) = line.rfind(" = ") else {
            continue;
        };
        let (Some(open), Some(close)) = (line.find('('), line[..eq].rfind(')')) else {
            continue;
        };
        let name = &line[..open];
        let args = &line[open + 1..close];
        let Ok(result) = line[eq + 3..]
            .split_whitespace()
            .next()
            .unwrap_or("")
            .parse::<i32>()
        else {
            continue;
        };
        if result < 0 {
            continue;
        }
        let q = quoted(args);
        match name {
            "open" | "openat" if !q.is_empty() => out.push(Sys::Open {
                path: q[0].clone(),
                flags: args.rsplit("\", ").next().unwrap_or("").to_string(),
                fd: result,
            }),
            "fsync" | "fdatasync" => out.push(Sys::Fsync {
                fd: args.trim().parse().expect("fsync's fd"),
            }),
            "rename" | "renameat" | "renameat2" if q.len() == 2 => out.push(Sys::Rename {
                from: q[0].clone(),
                to: q[1].clone(),
            }),
            _ => {}
        }
    }
    out
}

/// The files created, the paths fsynced and the renames, in order: each fsync's fd
/// resolved to the path its latest open gave it.
#[derive(Debug, PartialEq)]
enum Step {
    Created { path: String, exclusive: bool },
    Synced(String),
    Renamed { from: String, to: String },
}

fn steps(trace: &[Sys]) -> Vec<Step> {
    let mut fds = HashMap::new();
    let mut out = Vec::new();
    for s in trace {
        match s {
            Sys::Open { path, flags, fd } => {
                fds.insert(*fd, path.clone());
                if flags.contains("O_CREAT") {
                    out.push(Step::Created {
                        path: path.clone(),
                        exclusive: flags.contains("O_EXCL"),
                    });
                }
            }
            Sys::Fsync { fd } => out.push(Step::Synced(
                fds.get(fd).cloned().unwrap_or_else(|| format!("fd {fd}")),
            )),
            Sys::Rename { from, to } => out.push(Step::Renamed {
                from: from.clone(),
                to: to.clone(),
            }),
        }
    }
    out
}

/// Every file in `expect` reached `boot` as the atomic write makes it: a temporary name
/// beside it created with O_EXCL, that file fsynced, renamed onto the name, then the
/// directory fsynced before anything else is renamed.
fn assert_durable_writes(trace: &Path, boot: &Path, expect: &[&str]) {
    let text = std::fs::read_to_string(trace).expect("the strace output");
    let steps = steps(&parse_trace(&text));
    let boot = boot.to_str().unwrap();
    let renames: Vec<usize> = steps
        .iter()
        .enumerate()
        .filter(|(_, s)| matches!(s, Step::Renamed { .. }))
        .map(|(i, _)| i)
        .collect();
    let targets: Vec<String> = renames
        .iter()
        .map(|&i| match &steps[i] {
            Step::Renamed { to, .. } => to.clone(),
            _ => unreachable!(),
        })
        .collect();
    let want: Vec<String> = expect.iter().map(|n| format!("{boot}/{n}")).collect();
    assert_eq!(targets, want, "the renames: {steps:#?}");
    for (k, &i) in renames.iter().enumerate() {
        let Step::Renamed { from, to } = &steps[i] else {
            unreachable!()
        };
        let tmp_dir = Path::new(from).parent().unwrap();
        assert_eq!(tmp_dir, Path::new(boot), "a temporary name beside {to}");
        let before = &steps[..i];
        assert!(
            before.contains(&Step::Created {
                path: from.clone(),
                exclusive: true
            }),
            "{from} created with O_EXCL: {steps:#?}"
        );
        let created = before
            .iter()
            .rposition(|s| matches!(s, Step::Created { path, .. } if path == from))
            .unwrap();
        assert!(
            before[created..].contains(&Step::Synced(from.clone())),
            "{from} fsynced before the rename: {steps:#?}"
        );
        // After this rename and before the next one: the directory's own fsync.
        let until = renames.get(k + 1).copied().unwrap_or(steps.len());
        assert!(
            steps[i + 1..until].contains(&Step::Synced(boot.to_string())),
            "the directory fsynced after the rename onto {to}: {steps:#?}"
        );
    }
}

/// Only the named files are in `boot`: no temporary names left.
fn assert_only(boot: &Path, names: &[&str]) {
    let mut got: Vec<_> = std::fs::read_dir(boot)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    got.sort();
    let mut want: Vec<_> = names.iter().map(|n| n.to_string()).collect();
    want.sort();
    assert_eq!(got, want);
}

// ---- the calls ----

#[test]
fn copy_vdi_fsyncs_the_boot_directory_after_each_rename() {
    let d = tempfile::tempdir().unwrap();
    let dev = d.path().join("vdi.img");
    let data: Vec<u8> = (0..(1 << 20) + 777).map(|i| (i * 7) as u8).collect();
    std::fs::write(&dev, &data).unwrap();
    let x = Xapi::start_with(&dev, false);
    let trace = d.path().join("trace");
    let shim = install_traced_shim(d.path(), &trace);
    let v = call(json!({
        "shim": shim, "fn": "copy_vdi", "form": "xapi", "env": x.env(),
        "plain": {"vdi-ref": "OpaqueRef:vdi-k", "image-size": data.len().to_string(),
                  "cached-image": "cached-kernel-1"},
    }));
    assert_eq!(v["value"], x.boot().join(VDI_UUID).to_str().unwrap());
    assert_eq!(std::fs::read(x.boot().join(VDI_UUID)).unwrap(), data);
    assert_eq!(
        std::fs::read(x.boot().join("cached-kernel-1")).unwrap(),
        data
    );
    // The copy of the device, then the cached copy of that.
    assert_durable_writes(&trace, &x.boot(), &[VDI_UUID, "cached-kernel-1"]);
    assert_only(&x.boot(), &[VDI_UUID, "cached-kernel-1"]);
}

#[test]
fn create_kernel_ramdisk_fsyncs_the_boot_directory_after_the_rename() {
    let d = tempfile::tempdir().unwrap();
    let boot = d.path().join("boot");
    std::fs::create_dir(&boot).unwrap();
    std::fs::write(boot.join("cached-ramdisk-1"), b"a ramdisk").unwrap();
    let trace = d.path().join("trace");
    let shim = install_traced_shim(d.path(), &trace);
    let v = call(json!({
        "shim": shim, "fn": "create_kernel_ramdisk",
        "env": {"GLANCE_VHD_BOOT_GUEST": boot.to_str().unwrap()},
        "plain": {"cached-image": "cached-ramdisk-1", "new-image-uuid": "new-1"},
    }));
    assert_eq!(v["value"], boot.join("new-1").to_str().unwrap());
    assert_eq!(std::fs::read(boot.join("new-1")).unwrap(), b"a ramdisk");
    assert_durable_writes(&trace, &boot, &["new-1"]);
    assert_only(&boot, &["cached-ramdisk-1", "new-1"]);
}

#[test]
fn the_trace_reader_reads_strace_lines() {
    // What `strace -f -qq -s 4096 -o` writes (pids first); failed calls are left out.
    let text = r#"101 openat(AT_FDCWD, "/b/.k.1.partial", O_WRONLY|O_CREAT|O_EXCL|O_CLOEXEC, 0666) = 3
101 fsync(3)                          = 0
101 rename("/b/.k.1.partial", "/b/k") = 0
101 open("/b", O_RDONLY|O_LARGEFILE|O_CLOEXEC|O_DIRECTORY) = 3
101 openat(AT_FDCWD, "/nope", O_RDONLY|O_CLOEXEC) = -1 ENOENT (No such file or directory)
101 fsync(3)                          = 0
101 +++ exited with 0 +++
"#;
    assert_eq!(
        steps(&parse_trace(text)),
        [
            Step::Created {
                path: "/b/.k.1.partial".into(),
                exclusive: true
            },
            Step::Synced("/b/.k.1.partial".into()),
            Step::Renamed {
                from: "/b/.k.1.partial".into(),
                to: "/b/k".into()
            },
            Step::Synced("/b".into()),
        ]
    );
}
