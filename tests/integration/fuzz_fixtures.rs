//! Every kept fuzz finding replayed under `cargo test`: each file in
//! `tests/fixtures/fuzz/`, named `<target>-<what>.bin`, goes through the same library
//! calls as the cargo-fuzz target `<target>` (fuzz/fuzz_targets/<target>.rs) makes with
//! that input, checksum fix-up pass included. The crashes they found are fixed, so each
//! must now be refused with an error: no panic, no allocation beyond [`ALLOC_LIMIT`].
//! A new fixture is picked up by being there; a name whose target is unknown fails.
//!
//! Each fixture runs in a child process (this test binary again, filtered to this test,
//! with the fixture in `GLANCE_VHD_FUZZ_FIXTURE`): a panic, an abort or a refused
//! allocation then fails that fixture alone, and the allocation count sees every thread
//! of the replay (the pickle decoder runs on its own thread) and nothing else.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::helpers;

/// The fuzz targets' shared code: the checksum fix-up (`fix_checksums`) and the scratch
/// directory with the sample parents (`workdir`), used here as the targets use them.
/// Formatted with the fuzz crate, not here.
#[rustfmt::skip]
#[path = "../../fuzz/fuzz_targets/common.rs"]
mod fuzz_common;

/// The fuzz targets, as named in fuzz/Cargo.toml.
const TARGETS: [&str; 5] = [
    "vhd_open",
    "vhd_relink",
    "tar_unpack",
    "xmlrpc_call",
    "pickle_params",
];

/// The most a replay may hold allocated at once, and so the largest single allocation
/// (the fuzz runs of tar_unpack refuse any allocation over 64 MiB: fuzz/run.sh). A
/// larger request is refused outright (the replay aborts), not served.
const ALLOC_LIMIT: usize = 64 << 20;

// ---- the allocation count (counts only while a replay runs, in the child) ----

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call goes to `System` unchanged, or (a request over the limit while
// counting) returns null, which `GlobalAlloc` allows for any failed allocation.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) && !counted(layout.size()) {
            return std::ptr::null_mut();
        }
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) && !counted(layout.size()) {
            return std::ptr::null_mut();
        }
        System.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if COUNTING.load(Ordering::Relaxed) {
            uncounted(layout.size());
        }
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            if !counted(new_size) {
                return std::ptr::null_mut();
            }
            uncounted(layout.size());
        }
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Count `size` more bytes live; false (and not counted) when over [`ALLOC_LIMIT`].
fn counted(size: usize) -> bool {
    LARGEST.fetch_max(size, Ordering::Relaxed);
    let live = LIVE.fetch_add(size, Ordering::Relaxed).saturating_add(size);
    PEAK.fetch_max(live, Ordering::Relaxed);
    if live > ALLOC_LIMIT {
        LIVE.fetch_sub(size, Ordering::Relaxed);
        return false;
    }
    true
}

/// Freed while counting (what was allocated before counting began saturates at 0).
fn uncounted(size: usize) {
    let _ = LIVE.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |l| {
        Some(l.saturating_sub(size))
    });
}

/// Run `f` with the allocation count on; the peak bytes live and the largest request.
fn counting<T>(f: impl FnOnce() -> T) -> (T, usize, usize) {
    LIVE.store(0, Ordering::Relaxed);
    PEAK.store(0, Ordering::Relaxed);
    LARGEST.store(0, Ordering::Relaxed);
    COUNTING.store(true, Ordering::SeqCst);
    let out = f();
    COUNTING.store(false, Ordering::SeqCst);
    (
        out,
        PEAK.load(Ordering::Relaxed),
        LARGEST.load(Ordering::Relaxed),
    )
}

// ---- the test ----

fn fixtures_dir() -> PathBuf {
    helpers::repo().join("tests/fixtures/fuzz")
}

/// The fuzz target a fixture belongs to, from its name (`<target>-<what>.bin`).
fn target_of(fixture: &Path) -> &'static str {
    let name = fixture
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_else(|| panic!("{}: not a UTF-8 name", fixture.display()));
    let stem = name
        .strip_suffix(".bin")
        .unwrap_or_else(|| panic!("{name}: fixtures are named <target>-<what>.bin"));
    TARGETS
        .into_iter()
        .find(|t| {
            stem.strip_prefix(t)
                .is_some_and(|what| what.len() > 1 && what.starts_with('-'))
        })
        .unwrap_or_else(|| {
            panic!("{name}: no fuzz target of that name (known: {TARGETS:?}; <target>-<what>.bin)")
        })
}

#[test]
fn every_fixture_is_refused_without_panic_or_unbounded_allocation() {
    if let Some(fixture) = helpers::fuzz_fixture_to_replay() {
        return replay_here(&fixture);
    }
    let mut fixtures: Vec<PathBuf> = std::fs::read_dir(fixtures_dir())
        .expect("tests/fixtures/fuzz")
        .map(|e| e.expect("a fixture").path())
        .collect();
    fixtures.sort();
    assert!(
        !fixtures.is_empty(),
        "no fixtures in {}",
        fixtures_dir().display()
    );
    // Every name first: an unknown target fails before anything runs.
    for f in &fixtures {
        target_of(f);
    }
    // This test again, alone, in a child process per fixture.
    // This very file even if a rebuild has replaced it meanwhile.
    let exe = Path::new("/proc/self/exe");
    let me = format!(
        "{}::every_fixture_is_refused_without_panic_or_unbounded_allocation",
        module_path!().split_once("::").expect("a module path").1
    );
    let mut failed = Vec::new();
    for f in &fixtures {
        let o = std::process::Command::new(exe)
            .args([me.as_str(), "--exact", "--test-threads=1", "--nocapture"])
            .env(helpers::FUZZ_FIXTURE_VAR, f)
            .env(helpers::SAMPLES_VAR, helpers::samples_dir())
            .output()
            .expect("run the test binary");
        let out = format!("{}{}", helpers::stdout(&o), helpers::stderr(&o));
        // The child's own line (its harness says "1 passed" even if filtered to none).
        let replayed = out.contains(&format!("replayed {}", f.display()));
        println!("{}: {:?}\n{out}", f.display(), o.status);
        if !o.status.success() || !replayed {
            failed.push(format!("{} ({:?}):\n{out}", f.display(), o.status));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

/// The child's part: replay `fixture` through its target, counting allocations.
fn replay_here(fixture: &Path) {
    let target = target_of(fixture);
    let data = std::fs::read(fixture).expect("read the fixture");
    let (outcome, peak, largest) = counting(|| match target {
        "vhd_open" => vhd_open(&data),
        "vhd_relink" => vhd_relink(&data),
        "tar_unpack" => tar_unpack(&data),
        "xmlrpc_call" => xmlrpc_call(&data),
        "pickle_params" => pickle_params(&data),
        _ => unreachable!("target_of knows only TARGETS"),
    });
    let mut said = std::io::stdout().lock();
    for step in &outcome.steps {
        let _ = writeln!(said, "  {step}");
    }
    let _ = writeln!(
        said,
        "  at most {peak} bytes allocated at once, largest single allocation {largest}"
    );
    assert!(
        peak <= ALLOC_LIMIT && largest <= ALLOC_LIMIT,
        "{}: {peak} bytes allocated at once, largest single allocation {largest} (limit {ALLOC_LIMIT})",
        fixture.display()
    );
    assert!(
        outcome.refused,
        "{}: accepted by {target}:\n{}",
        fixture.display(),
        outcome.steps.join("\n")
    );
    let _ = writeln!(said, "replayed {}", fixture.display());
}

/// What a replay did: each call and its result, and whether the input was refused.
struct Outcome {
    steps: Vec<String>,
    refused: bool,
}

fn step<T: std::fmt::Debug, E: std::fmt::Display>(
    steps: &mut Vec<String>,
    what: &str,
    r: &Result<T, E>,
) {
    steps.push(match r {
        Ok(v) => format!("{what}: ok {v:?}"),
        Err(e) => format!("{what}: error: {e}"),
    });
}

// ---- the targets: the calls fuzz/fuzz_targets/<target>.rs makes ----

/// vhd_open: the file as it is, then with its checksums recomputed, next to the sample
/// parents: open (twice), `check -p` (with and without timestamps), info, chain reads.
/// Refused: in either form, `check -p` names a broken rule (or fails) and the chain
/// reader does not open it.
fn vhd_open(data: &[u8]) -> Outcome {
    use glance_vhd::vhd::chain::Chain;
    use glance_vhd::vhd::check::{check, CheckOptions};
    use glance_vhd::vhd::info::{info, render};
    use glance_vhd::vhd::{OpenMode, Vhd};

    const READ_LEN: u64 = 64 * 1024;
    let dir = fuzz_common::workdir("vhd_open", true);
    let path = dir.join("input.vhd");
    let mut steps = Vec::new();
    let mut refused = true;
    let mut inputs = vec![("as is", data.to_vec())];
    inputs.extend(fuzz_common::fix_checksums(data).map(|f| ("checksums fixed", f)));
    for (form, bytes) in inputs {
        std::fs::write(&path, bytes).expect("write input.vhd");
        // `Vhd::open` reads what it can (a field that breaks a rule is `check`'s to
        // name): not the refusal; nor `info`, which shows a broken file as it is.
        let r = Vhd::open(&path, OpenMode::READ);
        step(&mut steps, &format!("{form}: open"), &r.map(drop));
        let r = Vhd::open(
            &path,
            OpenMode {
                write: false,
                ignore_disabled: true,
            },
        );
        step(
            &mut steps,
            &format!("{form}: open, disabled ignored"),
            &r.map(drop),
        );
        for ignore_timestamps in [false, true] {
            let r = check(
                &path,
                CheckOptions {
                    parents: true,
                    ignore_timestamps,
                },
            );
            // Refused: an error, or a broken rule named.
            refused &= !matches!(r, Ok(None));
            step(
                &mut steps,
                &format!("{form}: check -p (-t {ignore_timestamps})"),
                &r,
            );
        }
        match info(&path) {
            Ok(i) => steps.push(format!(
                "{form}: info: ok, {} lines",
                render(&i).lines().count()
            )),
            Err(e) => steps.push(format!("{form}: info: error: {e}")),
        }
        match Chain::open(&path) {
            Ok(chain) => {
                refused = false;
                let size = chain.virtual_size();
                let n = size.min(READ_LEN);
                let mut buf = vec![0u8; n as usize];
                let r = chain.read_at(0, &mut buf);
                step(&mut steps, &format!("{form}: chain read at 0"), &r);
                let r = chain.read_at(size - n, &mut buf);
                step(&mut steps, &format!("{form}: chain read at the end"), &r);
            }
            Err(e) => steps.push(format!("{form}: chain open: error: {e}")),
        }
    }
    let _ = std::fs::remove_dir_all(dir);
    Outcome { steps, refused }
}

/// vhd_relink: a little-endian u32 (child length in the low 30 bits; bit 31 raw parent,
/// bit 30 the hidden value), the child, the parent; as they are, then with checksums
/// recomputed: set-parent, set-hidden, `check -p -t` of the child.
/// Refused: set-parent fails in each form.
fn vhd_relink(data: &[u8]) -> Outcome {
    use glance_vhd::vhd::check::{check, CheckOptions};
    use glance_vhd::vhd::relink::{set_hidden, set_parent};

    let (word, rest) = data
        .split_first_chunk::<4>()
        .expect("a vhd_relink input starts with a 4-byte word");
    let word = u32::from_le_bytes(*word);
    let raw = word & (1 << 31) != 0;
    let hidden = ((word >> 30) & 1) as u8;
    let len = ((word & 0x3fff_ffff) as usize).min(rest.len());
    let (child, parent) = rest.split_at(len);
    let dir = fuzz_common::workdir("vhd_relink", false);
    let (c, p) = (dir.join("child.vhd"), dir.join("parent.vhd"));
    let mut inputs = vec![("as is", child.to_vec(), parent.to_vec())];
    let (fc, fp) = (
        fuzz_common::fix_checksums(child),
        fuzz_common::fix_checksums(parent),
    );
    if fc.is_some() || fp.is_some() {
        inputs.push((
            "checksums fixed",
            fc.unwrap_or_else(|| child.to_vec()),
            fp.unwrap_or_else(|| parent.to_vec()),
        ));
    }
    let mut steps = Vec::new();
    let mut refused = true;
    for (form, child, parent) in inputs {
        std::fs::write(&c, child).expect("write child.vhd");
        std::fs::write(&p, parent).expect("write parent.vhd");
        let r = set_parent(&c, &p, raw);
        refused &= r.is_err();
        step(
            &mut steps,
            &format!("{form}: set-parent (raw {raw})"),
            &r.map(drop),
        );
        let r = set_hidden(&c, hidden);
        step(&mut steps, &format!("{form}: set-hidden {hidden}"), &r);
        let r = check(
            &c,
            CheckOptions {
                parents: true,
                ignore_timestamps: true,
            },
        );
        step(&mut steps, &format!("{form}: check -p -t"), &r);
    }
    let _ = std::fs::remove_dir_all(dir);
    Outcome { steps, refused }
}

/// tar_unpack: the input gzipped (stored blocks), and as it is when it starts with the
/// gzip magic, unpacked with small limits into a scratch SR; whatever the outcome only
/// regular `*.vhd` files appear, only there, within the free space.
/// Refused: every unpack fails.
fn tar_unpack(data: &[u8]) -> Outcome {
    use glance_vhd::bundle::{unpack, Limits};

    const LIMITS: Limits = Limits {
        free_space: 64 << 10,
        max_member: 32 << 10,
        max_vhds: glance_vhd::bundle::MAX_FILES,
        keep_swap: false,
    };
    let work = tempfile::tempdir().expect("tempdir");
    let dest = work.path().join("sr");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::none());
    gz.write_all(data).expect("gzip into memory");
    let mut inputs = vec![("gzipped", gz.finish().expect("gzip into memory"))];
    if data.starts_with(&[0x1f, 0x8b]) {
        inputs.push(("as is", data.to_vec()));
    }
    let mut steps = Vec::new();
    let mut refused = true;
    for (form, body) in inputs {
        let _ = std::fs::remove_dir_all(&dest);
        std::fs::create_dir(&dest).expect("create the scratch SR");
        let r = unpack(&body[..], &dest, LIMITS);
        refused &= r.is_err();
        step(
            &mut steps,
            &format!("{form}: unpack"),
            &r.as_ref().map(|u| &u.files),
        );
        let outside: Vec<_> = std::fs::read_dir(work.path())
            .expect("read the work directory")
            .map(|e| e.expect("entry").file_name())
            .filter(|n| n != "sr")
            .collect();
        assert!(
            outside.is_empty(),
            "{form}: unpack wrote {outside:?} outside its destination"
        );
        let mut total = 0;
        for e in std::fs::read_dir(&dest).expect("read the scratch SR") {
            let e = e.expect("entry");
            let meta = std::fs::symlink_metadata(e.path()).expect("stat");
            let name = e.file_name().into_string().expect("UTF-8 member name");
            assert!(
                meta.file_type().is_file(),
                "{form}: {name}: not a regular file"
            );
            assert!(
                name.ends_with(".vhd") && name != "swap.vhd",
                "{form}: {name}: not allowed"
            );
            total += meta.len();
        }
        assert!(total <= LIMITS.free_space, "{form}: {total} bytes written");
    }
    Outcome { steps, refused }
}

/// xmlrpc_call: the document (UTF-8, else Latin-1) as a call — round trip through our
/// writer, then dispatched as `xapi::handle` does and its arguments checked
/// (`Call::check`) by each plugin that has the method — and as a response (round trip).
/// Refused: no plugin's check accepts it as a call, and it is no response.
fn xmlrpc_call(data: &[u8]) -> Outcome {
    use glance_vhd::xapi::calls::{lookup, Args};
    use glance_vhd::xenapi::xmlrpc::{
        parse_call, parse_response, write_call, write_response, Response, XValue,
    };

    let text = match std::str::from_utf8(data) {
        Ok(s) => std::borrow::Cow::Borrowed(s),
        Err(_) => std::borrow::Cow::Owned(data.iter().map(|&b| b as char).collect::<String>()),
    };
    let mut steps = Vec::new();
    let mut refused = true;
    match parse_call(&text) {
        Err(e) => steps.push(format!("parse_call: error: {e}")),
        Ok(call) => {
            steps.push(format!("parse_call: ok {}", call.method));
            let again = write_call(&call.method, &call.params);
            if let Err(e) = parse_call(&again) {
                panic!("our own call does not parse: {e}\n{again}");
            }
            let members: Option<&[(String, XValue)]> = match call.params.get(1) {
                Some(XValue::Struct(m)) => Some(m),
                None => Some(&[]),
                Some(_) => None,
            };
            match (call.params.first(), members) {
                (Some(XValue::Str(session)), Some(members)) => {
                    for plugin in ["glance", "kernel"] {
                        if let Some(entry) = lookup(plugin, &call.method) {
                            let r = (entry.check)(&Args::new(session, members));
                            refused &= r.is_err();
                            step(&mut steps, &format!("{plugin} {} check", call.method), &r);
                        }
                    }
                }
                _ => steps.push("not a session and an argument struct".into()),
            }
        }
    }
    match parse_response(&text) {
        Err(e) => steps.push(format!("parse_response: error: {e}")),
        Ok(r) => {
            refused = false;
            let v = match r {
                Response::Value(v) | Response::Fault(v) => v,
            };
            steps.push("parse_response: ok".into());
            let again = write_response(&v);
            if let Err(e) = parse_response(&again) {
                panic!("our own response does not parse: {e}\n{again}");
            }
        }
    }
    Outcome { steps, refused }
}

/// pickle_params: the params pickle decoded, then checked as each pickle-taking glance
/// call checks it; what decodes survives our reply encoder and decodes back the same.
/// Refused: it does not decode, or no call accepts it.
fn pickle_params(data: &[u8]) -> Outcome {
    use glance_vhd::xapi::calls::table;
    use glance_vhd::xapi::pickle::decode;

    let mut steps = Vec::new();
    let mut refused = true;
    let v = match decode(data) {
        Err(e) => {
            steps.push(format!("decode: error: {e}"));
            return Outcome { steps, refused };
        }
        Ok(v) => v,
    };
    steps.push(format!("decode: ok {v:?}"));
    // Every call that takes a pickle, as the fuzz target finds them: from the table.
    let glance = table("glance").expect("the glance plugin");
    for call in glance.iter().filter(|c| c.check_params.is_some()) {
        let r = (call.check_params.expect("filtered"))(&v);
        refused &= r.is_err();
        step(&mut steps, &format!("{} check", call.name), &r);
    }
    fuzz_common::assert_reply_round_trips(&v);
    Outcome { steps, refused }
}
