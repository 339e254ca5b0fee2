//! Shared by the integration tests: the environment (every variable the tests read),
//! the samples unpacked side by side, sample tarballs and SRs holding the tap chain,
//! hashes and independent readers, the helper processes (Glance v1 stand-in, proxies)
//! and the real test Glance.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

// ---- The environment: every variable the tests read is read here, and only here ----

/// The binary under test (`make test`: the static musl build).
pub const BIN_VAR: &str = "GLANCE_VHD_BIN";
/// The Python with the peers installed (`make test`: `.venv/bin/python`).
pub const PYTHON_VAR: &str = "GLANCE_VHD_PYTHON";
/// The VHD samples (`make test`: `../shared/vhd-samples`).
pub const SAMPLES_VAR: &str = "GLANCE_VHD_SAMPLES";
/// `full` for the whole fault suite (`make faults`); else its short form.
pub const FAULTS_VAR: &str = "GLANCE_VHD_FAULTS";
/// Set by `fuzz_fixtures` for the child process that replays one fixture.
pub const FUZZ_FIXTURE_VAR: &str = "GLANCE_VHD_FUZZ_FIXTURE";

/// The variables above, read once.
struct TestEnv {
    bin: Option<PathBuf>,
    python: Option<PathBuf>,
    samples: Option<PathBuf>,
    faults_full: bool,
    fuzz_fixture: Option<PathBuf>,
}

fn test_env() -> &'static TestEnv {
    static ENV: std::sync::OnceLock<TestEnv> = std::sync::OnceLock::new();
    ENV.get_or_init(|| {
        let path = |name| std::env::var_os(name).map(PathBuf::from);
        TestEnv {
            bin: path(BIN_VAR),
            python: path(PYTHON_VAR),
            samples: path(SAMPLES_VAR),
            faults_full: std::env::var(FAULTS_VAR).is_ok_and(|v| v == "full"),
            fuzz_fixture: path(FUZZ_FIXTURE_VAR),
        }
    })
}

/// The repository (the manifest directory): the peers, the shims, the fixtures.
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The binary under test: the static musl build when `make test` runs us
/// (`GLANCE_VHD_BIN`), else the one cargo built for this test run.
pub fn bin() -> PathBuf {
    test_env()
        .bin
        .clone()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_glance-vhd")))
}

pub fn samples_dir() -> PathBuf {
    let p = test_env()
        .samples
        .clone()
        .unwrap_or_else(|| repo().join("../shared/vhd-samples"));
    assert!(
        p.join("README.md").exists(),
        "VHD samples not found at {} (set {SAMPLES_VAR})",
        p.display()
    );
    p
}

/// The Python with the peers installed (libvhdi). `make test` sets it; without it the
/// peer tests fail rather than pass vacuously.
pub fn python() -> PathBuf {
    let p = test_env()
        .python
        .clone()
        .unwrap_or_else(|| repo().join(".venv/bin/python"));
    assert!(
        p.exists(),
        "Python peers not installed at {} (run `make setup`)",
        p.display()
    );
    p
}

/// The fault suite in full (`make faults`: every cut offset, the tables printed).
pub fn faults_full() -> bool {
    test_env().faults_full
}

/// In the child process `fuzz_fixtures` starts: the one fixture to replay.
pub fn fuzz_fixture_to_replay() -> Option<PathBuf> {
    test_env().fuzz_fixture.clone()
}

// ---- Samples, hashes, scratch SRs ----

/// `gunzip -c GZ > OUT`: the in-process inflate is unoptimised in test builds and takes
/// seconds.
pub fn gunzip(gz: &Path, out: &Path) {
    let file = std::fs::File::create(out).expect("create the unpacked file");
    let st = Command::new("gunzip")
        .arg("-c")
        .arg(gz)
        .stdout(file)
        .status()
        .expect("gunzip");
    assert!(st.success(), "gunzip {}", gz.display());
}

/// A fresh directory holding every sample (tap-chain, qemu-parent, dfvfs) unpacked side
/// by side, with the parent mtimes the README pins (the parent timestamp field is the
/// parent's mtime).
pub fn unpacked_samples() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for sub in ["tap-chain", "qemu-parent", "dfvfs"] {
        for e in std::fs::read_dir(samples_dir().join(sub)).expect("samples") {
            let p = e.expect("entry").path();
            if p.extension().is_some_and(|x| x == "gz") {
                gunzip(&p, &dir.path().join(p.file_stem().expect("stem")));
            }
        }
    }
    for (f, t) in [
        ("parent.vhd", "2024-01-01 00:00:30 UTC"),
        ("child.vhd", "2024-01-01 00:02:30 UTC"),
        ("parent2.vhd", "2024-01-02 03:04:05 UTC"),
        ("qemu-parent.vhd", "2024-01-05 00:00:30 UTC"),
    ] {
        let st = Command::new("touch")
            .arg("-d")
            .arg(t)
            .arg(dir.path().join(f))
            .status()
            .expect("touch");
        assert!(st.success());
    }
    dir
}

/// The SHA-256 of the content the tap sample chain reads as, through each layer (from
/// `SHA256SUMS.content`).
pub const GRANDCHILD_CONTENT: &str =
    "9d79e9372eb2b98c93e9be5efe933f685564698b6795704fa342f19883b1c552";
pub const CHILD_CONTENT: &str = "097a52dea8e7f8ba290699d56f5fb56e4ca45c644456649e528b2bf01e3a5426";
pub const PARENT_CONTENT: &str = "8ff122f704ccf7b0a4a0c101cbbfd838820d48e4504770dee4ea9223d567f648";

/// The tap sample chain as the old plugin named an image's members: 0.vhd (the leaf,
/// grandchild) … 2.vhd (the base, parent).
pub const TAP_CHAIN: [(&str, &str); 3] = [
    ("0.vhd", "grandchild.vhd"),
    ("1.vhd", "child.vhd"),
    ("2.vhd", "parent.vhd"),
];

/// `tar -zc --directory=STAGE .` (the old plugin's way) of samples from `samples` under
/// member names: `files` is (member, sample) pairs. Written to `out`.
pub fn gnu_tar(samples: &Path, files: &[(&str, &str)], out: &Path) {
    let stage = tempfile::tempdir().expect("tempdir");
    for (name, sample) in files {
        std::fs::copy(samples.join(sample), stage.path().join(name)).expect("stage a sample");
    }
    let st = Command::new("tar")
        .arg("-zcf")
        .arg(out)
        .arg("--directory")
        .arg(stage.path())
        .arg(".")
        .status()
        .expect("tar");
    assert!(st.success(), "tar -zcf {}", out.display());
}

/// A new empty SR directory in `dir`, named like one (its name is the SR UUID for the
/// lock).
pub fn new_sr(dir: &Path) -> PathBuf {
    let sr = dir.join(uuid::Uuid::new_v4().to_string());
    std::fs::create_dir(&sr).expect("create the SR");
    sr
}

/// `glance-vhd download` from the local store (`file://TGZ`) into `sr`, run in `cwd`
/// with the lock directory `lock`, then `extra`.
pub fn download_file(cwd: &Path, tgz: &Path, sr: &Path, lock: &Path, extra: &[&str]) -> Output {
    let url = format!("file://{}", tgz.display());
    let mut args = vec![
        "download",
        "--endpoint",
        &url,
        "--sr-path",
        sr.to_str().expect("a UTF-8 path"),
        "--lock-dir",
        lock.to_str().expect("a UTF-8 path"),
    ];
    args.extend_from_slice(extra);
    run(cwd, &args)
}

/// The tap sample chain imported into `sr` by our own download of a GNU-tar tarball
/// (made in `dir`, lock directory `dir/lock`), under the VDI UUIDs `uuids` (leaf first;
/// none: new ones). The VDI UUIDs, leaf first.
pub fn import_tap_chain(dir: &Path, sr: &Path, uuids: &[&str]) -> Vec<String> {
    let samples = unpacked_samples();
    let tgz = dir.join(format!("{}.tgz", uuid::Uuid::new_v4()));
    gnu_tar(samples.path(), &TAP_CHAIN, &tgz);
    let extra: Vec<&str> = uuids.iter().flat_map(|u| ["--uuid", u]).collect();
    let o = download_file(dir, &tgz, sr, &dir.join("lock"), &extra);
    assert!(o.status.success(), "{}", stderr(&o));
    let chain: Vec<String> = stdout(&o).lines().map(str::to_string).collect();
    assert_eq!(chain.len(), 3, "{chain:?}");
    if !uuids.is_empty() {
        assert_eq!(chain, uuids);
    }
    chain
}

/// The names in `dir`, sorted.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("read the directory")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Every entry of `sr` with the SHA-256 of its bytes (`<dir>` for a directory), to
/// compare before and after.
pub fn snapshot(sr: &Path) -> std::collections::BTreeMap<String, String> {
    std::fs::read_dir(sr)
        .expect("read the SR")
        .map(|e| {
            let e = e.expect("entry");
            let name = e.file_name().to_string_lossy().into_owned();
            let sum = if e.file_type().expect("file type").is_file() {
                sha256_file(&e.path())
            } else {
                "<dir>".into()
            };
            (name, sum)
        })
        .collect()
}

/// The staging directories (`.glance-vhd-staging…`) left in `sr`.
pub fn staging_dirs(sr: &Path) -> Vec<String> {
    listing(sr)
        .into_iter()
        .filter(|n| n.starts_with(".glance-vhd-staging"))
        .collect()
}

/// The SHA-256 of the virtual disk `vhd` reads as (through its parents), by our
/// `vhd read` into a file in `cwd`.
pub fn content_sha(cwd: &Path, vhd: &Path) -> String {
    let out = cwd.join(format!("{}.raw", uuid::Uuid::new_v4()));
    let o = run(
        cwd,
        &[
            "vhd",
            "read",
            vhd.to_str().expect("a UTF-8 path"),
            out.to_str().expect("a UTF-8 path"),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let sum = sha256_file(&out);
    std::fs::remove_file(&out).expect("remove the raw image");
    sum
}

/// A tmpfs of `size` (`8m`) mounted on `at` (root is needed, as in dom0); unmounted when
/// dropped.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    pub fn mount(at: &Path, size: &str) -> Tmpfs {
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .expect("mount");
        assert!(st.success(), "mount tmpfs (root is needed, as in dom0)");
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// `qemu-img convert` of a raw file into a dynamic VHD (qemu's `vpc`): an independent
/// writer of the format.
pub fn qemu_vhd(raw: &Path, out: &Path) {
    let o = Command::new("qemu-img")
        .args([
            "convert",
            "-f",
            "raw",
            "-O",
            "vpc",
            "-o",
            "subformat=dynamic",
        ])
        .arg(raw)
        .arg(out)
        .output()
        .expect("qemu-img (make setup installs qemu-utils)");
    assert!(o.status.success(), "qemu-img convert: {}", stderr(&o));
}

/// A new VDI in `sr` holding `mib` MiB of random data (incompressible, so transfer
/// sizes are known), made by qemu-img; its UUID.
pub fn random_vdi(sr: &Path, mib: usize) -> String {
    use std::io::Read;
    let mut data = vec![0u8; mib << 20];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut data))
        .expect("random bytes");
    let raw = sr.join(".random.raw");
    std::fs::write(&raw, &data).expect("write raw");
    let vdi = uuid::Uuid::new_v4().to_string();
    qemu_vhd(&raw, &sr.join(format!("{vdi}.vhd")));
    std::fs::remove_file(&raw).expect("remove raw");
    vdi
}

/// Run the binary with `args` in `cwd`.
pub fn run(cwd: &Path, args: &[&str]) -> Output {
    run_env(cwd, args, &[])
}

/// Run the binary with `args` in `cwd`, with `env` added to its environment.
pub fn run_env(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(bin())
        .args(args)
        .envs(env.iter().copied())
        .current_dir(cwd)
        .output()
        .expect("run glance-vhd")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// SHA-256 of a file by `sha256sum`: the in-process sha2 is unoptimised in test builds
/// and takes a third of a second per 8 MiB.
pub fn sha256_file(p: &Path) -> String {
    sum_file("sha256sum", p)
}

/// The hex digest of a file by coreutils' `TOOL` (`md5sum`, `sha512sum`…): an
/// independent hasher, not ours.
pub fn sum_file(tool: &str, p: &Path) -> String {
    let o = Command::new(tool).arg(p).output().expect(tool);
    assert!(o.status.success(), "{tool} {}", p.display());
    stdout(&o)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// SHA-256 of bytes by `sha256sum` (see [`sha256_file`]).
pub fn sha256(b: &[u8]) -> String {
    use std::io::Write;
    let mut c = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("sha256sum");
    let mut stdin = c.stdin.take().expect("stdin");
    let data = b.to_vec();
    let w = std::thread::spawn(move || stdin.write_all(&data));
    let o = c.wait_with_output().expect("sha256sum");
    w.join().expect("the writer").expect("write to sha256sum");
    assert!(o.status.success());
    stdout(&o)[..64].to_string()
}

/// libvhdi's view of a chain (leaf first; tests/peers/vhdi_read.py run in `cwd`):
/// identifiers, and with `read` the sha256 of the whole media read through the leaf.
pub fn vhdi<P: AsRef<Path> + std::fmt::Debug>(
    cwd: &Path,
    chain: &[P],
    read: bool,
) -> serde_json::Value {
    let mut c = Command::new(python());
    c.arg(repo().join("tests/peers/vhdi_read.py"))
        .current_dir(cwd);
    if !read {
        c.arg("--no-read");
    }
    let o = c
        .args(chain.iter().map(AsRef::as_ref))
        .output()
        .expect("run python");
    assert!(
        o.status.success(),
        "libvhdi failed on {chain:?}: {}",
        stderr(&o)
    );
    serde_json::from_slice(&o.stdout).expect("vhdi_read.py prints JSON")
}

/// Expected content hashes from `SHA256SUMS.content`, by file name.
pub fn content_sums() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(samples_dir().join("SHA256SUMS.content")).expect("sums");
    text.lines()
        .filter_map(|l| {
            let (h, p) = l.split_once("  ")?;
            Some((
                Path::new(p).file_name()?.to_string_lossy().into_owned(),
                h.to_string(),
            ))
        })
        .collect()
}

/// A helper process of the tests (the Glance v1 stand-in, the cut proxy) that prints its
/// port on the first line of stdout; killed when dropped.
pub struct Peer {
    child: std::process::Child,
    pub port: u16,
    pub dir: PathBuf,
}

impl Peer {
    fn spawn(script: &str, args: &[&std::ffi::OsStr], dir: &Path) -> Peer {
        use std::io::BufRead;
        let mut child = Command::new("python3")
            .arg(repo().join(script))
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {script}: {e}"));
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("the port");
        let port = line
            .split_whitespace()
            .last()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("{script} printed no port: {line:?}"));
        Peer {
            child,
            port,
            dir: dir.to_path_buf(),
        }
    }

    /// Any of the peer scripts (repository-relative path) with these arguments.
    pub fn spawn_script(script: &str, args: &[&str]) -> Peer {
        let args: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
        Peer::spawn(script, &args, Path::new("."))
    }

    /// The Glance v1 stand-in (tests/peers/glance_v1_standin.py) serving `dir`.
    pub fn start(dir: &Path, opts: &[&str]) -> Peer {
        std::fs::create_dir_all(dir).expect("stand-in dir");
        let mut args: Vec<&std::ffi::OsStr> = vec![dir.as_os_str()];
        args.extend(opts.iter().map(std::ffi::OsStr::new));
        Peer::spawn("tests/peers/glance_v1_standin.py", &args, dir)
    }

    /// A loopback proxy to `target_port` that cuts the connection after `cut_at` bytes
    /// of the answer, or of the request with `upload`.
    pub fn cut_proxy(target_port: &str, cut_at: &str, upload: bool) -> Peer {
        let mut args: Vec<&std::ffi::OsStr> =
            vec![target_port.as_ref(), "--cut-at".as_ref(), cut_at.as_ref()];
        if upload {
            args.push("--upload".as_ref());
        }
        Peer::spawn("tests/peers/cut_proxy.py", &args, Path::new("."))
    }

    /// A loopback proxy to `target_port` that resets its first `refuse` connections and
    /// counts every connection in `count_file`.
    pub fn flaky_proxy(target_port: u16, refuse: u32, count_file: &Path) -> Peer {
        let port = target_port.to_string();
        let refuse = refuse.to_string();
        let args: Vec<&std::ffi::OsStr> = vec![
            port.as_ref(),
            "--refuse-first".as_ref(),
            refuse.as_ref(),
            "--count-file".as_ref(),
            count_file.as_os_str(),
        ];
        Peer::spawn("tests/peers/cut_proxy.py", &args, Path::new("."))
    }

    /// A loopback proxy to `target_port` that cuts the first request to pass `cut_at`
    /// bytes (an upload broken halfway), and no later one.
    pub fn spawn_cut_first(target_port: u16, cut_at: u64, count_file: &Path) -> Peer {
        let port = target_port.to_string();
        let cut = cut_at.to_string();
        let args: Vec<&std::ffi::OsStr> = vec![
            port.as_ref(),
            "--cut-at".as_ref(),
            cut.as_ref(),
            "--upload".as_ref(),
            "--cut-once".as_ref(),
            "--count-file".as_ref(),
            count_file.as_os_str(),
        ];
        Peer::spawn("tests/peers/cut_proxy.py", &args, Path::new("."))
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The URL of the real test Glance (tests/glance/glance.sh, installed by `make setup`),
/// started once per test binary; the script is idempotent across binaries.
pub fn glance_url() -> &'static str {
    static URL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    URL.get_or_init(|| {
        let o = Command::new("bash")
            .arg(repo().join("tests/glance/glance.sh"))
            .arg("start")
            .output()
            .expect("run tests/glance/glance.sh");
        assert!(
            o.status.success(),
            "the test Glance did not start (run `make setup`): {}",
            stderr(&o)
        );
        stdout(&o).trim().to_string()
    })
}

/// A new vhd/ovf image in the test Glance, with `tgz` uploaded by the plain client as
/// its data (or queued, without data, if `tgz` is `None`); its id.
pub fn glance_image(tgz: Option<&Path>) -> String {
    let o = glance_client(&[
        "create",
        "glance-vhd-test",
        "--disk-format",
        "vhd",
        "--container-format",
        "ovf",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let id = stdout(&o).trim().to_string();
    if let Some(f) = tgz {
        let o = glance_client(&["upload", &id, f.to_str().expect("a UTF-8 path")]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    id
}

/// The test Glance's record of image `id` (`glance_client.py show`).
pub fn glance_record(id: &str) -> serde_json::Value {
    let o = glance_client(&["show", id]);
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_slice(&o.stdout).expect("the image record")
}

/// The test Glance's port (for the proxies in front of it).
pub fn glance_port() -> u16 {
    glance_url()
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .expect("the test Glance's port")
}

/// Glance on sqlite answers "database is locked" (HTTP 500) to concurrent writers: the
/// tests that use it take turns (whatever their module), each holding this for its
/// whole run.
pub fn glance_turn() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// tests/glance/glance_client.py (a plain HTTP client) against the test Glance.
pub fn glance_client(args: &[&str]) -> Output {
    Command::new("python3")
        .arg(repo().join("tests/glance/glance_client.py"))
        .args(args)
        .env("GLANCE_URL", glance_url())
        .output()
        .expect("run glance_client.py")
}

/// The xapi stand-in (tests/plugin/xapi_standin.py) in a scratch directory of its own:
/// the socket `xapi.sock`, the state files `state.calls` (every call, a JSON line),
/// `state.vbds`, `state.vdis`, and the directories `dev` and `boot`; `args` after
/// SOCKET STATE DEVDIR (`--vdi`, `--sr`, `--fail`, …). Killed when dropped.
pub struct XapiStandin {
    child: std::process::Child,
    dir: tempfile::TempDir,
}

impl XapiStandin {
    pub fn start(args: &[&str]) -> XapiStandin {
        use std::io::BufRead;
        let dir = tempfile::tempdir().expect("a scratch directory");
        std::fs::create_dir(dir.path().join("dev")).expect("dev");
        std::fs::create_dir(dir.path().join("boot")).expect("boot");
        let mut child = Command::new("python3")
            .arg(repo().join("tests/plugin/xapi_standin.py"))
            .arg(dir.path().join("xapi.sock"))
            .arg(dir.path().join("state"))
            .arg(dir.path().join("dev"))
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start the xapi stand-in");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("ready");
        assert_eq!(line.trim(), "ready");
        XapiStandin { child, dir }
    }

    /// A file of the stand-in's directory (`xapi.sock`, `state.vdis`, `boot`, …).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn socket(&self) -> PathBuf {
        self.path("xapi.sock")
    }

    /// Every call made so far: `{"method", "params", "result"}`.
    pub fn calls(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.path("state.calls"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    }

    /// The methods called so far, in order.
    pub fn methods(&self) -> Vec<String> {
        self.calls()
            .iter()
            .map(|c| c["method"].as_str().expect("a method").to_string())
            .collect()
    }
}

impl Drop for XapiStandin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
