//! Shared by the integration tests: where the binary, the samples and the Python peers
//! are, and a scratch directory with the samples unpacked side by side.

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

/// A fresh directory holding every sample (tap-chain, qemu-parent, dfvfs) unpacked side
/// by side, with the parent mtimes the README pins (the parent timestamp field is the
/// parent's mtime).
pub fn unpacked_samples() -> tempfile::TempDir {
    use std::io::Read;
    let dir = tempfile::tempdir().expect("tempdir");
    for sub in ["tap-chain", "qemu-parent", "dfvfs"] {
        for e in std::fs::read_dir(samples_dir().join(sub)).expect("samples") {
            let p = e.expect("entry").path();
            if p.extension().is_some_and(|x| x == "gz") {
                let mut out = Vec::new();
                flate2::read::GzDecoder::new(std::fs::File::open(&p).expect("open sample"))
                    .read_to_end(&mut out)
                    .expect("gunzip sample");
                let name = p.file_stem().expect("stem");
                std::fs::write(dir.path().join(name), out).expect("write sample");
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
    Command::new(bin())
        .args(args)
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

pub fn sha256_file(p: &Path) -> String {
    use sha2::{Digest, Sha256};
    let data = std::fs::read(p).expect("read");
    format!("{:x}", Sha256::digest(data))
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
