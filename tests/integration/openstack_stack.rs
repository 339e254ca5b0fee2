//! The real Keystone + Glance of the tests (tests/openstack/openstack.sh, installed by
//! `make setup`): Keystone 30 with fernet tokens and a Glance 33 that authenticates every
//! request through keystonemiddleware, on 127.0.0.1, plain HTTP or HTTPS with a private
//! CA. Each stack is started once per test run, on first use, and left running (the script
//! is idempotent across test binaries); `make openstack-stop` stops both.
//!
//! The binary runs here with a clean environment — the test machine may have `OS_*`,
//! `REQUESTS_CA_BUNDLE` or `SSL_CERT_FILE` set — plus only what each test gives it.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::OnceLock;

use crate::helpers::{self, stderr, stdout};

/// Keystone's token lifetime in both stacks: short, so that a rate-limited upload of a
/// couple of MiB outlives the token it started with.
pub const TOKEN_EXPIRATION_SECS: u64 = 20;

/// One running stack: the facts `openstack.sh start` printed (KEY=VALUE lines).
pub struct Stack {
    facts: BTreeMap<String, String>,
}

impl Stack {
    fn start(tls: bool) -> Stack {
        let mut c = Command::new("bash");
        c.arg(helpers::repo().join("tests/openstack/openstack.sh"))
            .arg("start")
            .args(["--token-expiration", &TOKEN_EXPIRATION_SECS.to_string()]);
        if tls {
            c.arg("--tls");
        }
        let o = c.output().expect("run tests/openstack/openstack.sh");
        assert!(
            o.status.success(),
            "the test Keystone + Glance did not start (run `make setup`): {}",
            stderr(&o)
        );
        let facts: BTreeMap<String, String> = stdout(&o)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let s = Stack { facts };
        assert_eq!(s.get("TOKEN_EXPIRATION"), TOKEN_EXPIRATION_SECS.to_string());
        s
    }

    /// A fact of the stack (`AUTH_URL`, `GLANCE_URL`, `APP_CRED_SECRET`, …: the list is
    /// at the top of openstack.sh).
    pub fn get(&self, key: &str) -> &str {
        self.facts
            .get(key)
            .unwrap_or_else(|| panic!("openstack.sh printed no {key}"))
    }

    /// Keystone's identity URL, `…/v3`.
    pub fn auth_url(&self) -> &str {
        self.get("AUTH_URL")
    }

    /// Glance's unversioned URL, as the catalog lists it in `RegionOne`.
    pub fn glance_url(&self) -> &str {
        self.get("GLANCE_URL")
    }

    pub fn password(&self) -> &str {
        self.get("PASSWORD")
    }

    /// The CA that signed the TLS stack's certificates (empty for the plain stack).
    pub fn cacert(&self) -> &str {
        self.get("CACERT")
    }

    pub fn clouds_yaml(&self) -> &str {
        self.get("CLOUDS_YAML")
    }

    /// The variables of a password sign-in as user demo in project demo, as an admin's
    /// openrc sets them (no endpoint, no token: the image URL comes from the catalog).
    pub fn password_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("OS_AUTH_URL", self.auth_url().to_string()),
            ("OS_USERNAME", self.get("USERNAME").to_string()),
            ("OS_PASSWORD", self.password().to_string()),
            ("OS_PROJECT_NAME", self.get("PROJECT_NAME").to_string()),
            (
                "OS_USER_DOMAIN_NAME",
                self.get("USER_DOMAIN_NAME").to_string(),
            ),
            (
                "OS_PROJECT_DOMAIN_NAME",
                self.get("PROJECT_DOMAIN_NAME").to_string(),
            ),
            ("OS_REGION_NAME", self.get("REGION").to_string()),
        ]
    }

    /// The variables that name a cloud of the stack's clouds.yaml (`ks-password` or
    /// `ks-appcred`).
    pub fn cloud_env(&self, cloud_key: &str) -> Vec<(&'static str, String)> {
        vec![
            ("OS_CLOUD", self.get(cloud_key).to_string()),
            ("OS_CLIENT_CONFIG_FILE", self.clouds_yaml().to_string()),
        ]
    }

    /// tests/openstack/os_image.py: the tests' own client, signed in as demo with a real
    /// token, under a clean environment.
    fn client(&self, args: &[&str]) -> Output {
        let o = Command::new("python3")
            .arg(helpers::repo().join("tests/openstack/os_image.py"))
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("OS_TEST_AUTH_URL", self.auth_url())
            .env("OS_TEST_GLANCE_URL", self.glance_url())
            .env("OS_TEST_USERNAME", self.get("USERNAME"))
            .env("OS_TEST_PASSWORD", self.password())
            .env("OS_TEST_PROJECT_NAME", self.get("PROJECT_NAME"))
            .env("OS_TEST_CACERT", self.cacert())
            .output()
            .expect("run os_image.py");
        assert!(o.status.success(), "os_image.py {args:?}: {}", stderr(&o));
        o
    }

    /// A new queued vhd/ovf image of project demo; its id.
    pub fn queued_image(&self, name: &str) -> String {
        stdout(&self.client(&["create", name])).trim().to_string()
    }

    /// Glance's record of image `id`, read with demo's token.
    pub fn record(&self, id: &str) -> serde_json::Value {
        serde_json::from_slice(&self.client(&["show", id]).stdout).expect("the image record")
    }

    /// Lines of Keystone's access log so far.
    pub fn keystone_log(&self) -> Vec<String> {
        read_lines(Path::new(self.get("KEYSTONE_ACCESS_LOG")))
    }

    /// Lines of Glance's access log so far.
    pub fn glance_log(&self) -> Vec<String> {
        read_lines(Path::new(self.get("GLANCE_ACCESS_LOG")))
    }
}

fn read_lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
        .lines()
        .map(str::to_string)
        .collect()
}

/// The plain-HTTP stack, started on first use.
pub fn plain() -> &'static Stack {
    static S: OnceLock<Stack> = OnceLock::new();
    S.get_or_init(|| Stack::start(false))
}

/// The TLS stack (private CA), started on first use.
pub fn tls() -> &'static Stack {
    static S: OnceLock<Stack> = OnceLock::new();
    S.get_or_init(|| Stack::start(true))
}

/// The tests that use a stack take turns: Glance and Keystone on sqlite answer
/// "database is locked" to concurrent writers, and some tests count lines of the access
/// logs.
pub fn stack_turn() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The binary under test run in `cwd` with `args` and a clean environment: `PATH`,
/// `HOME=cwd` (where no clouds.yaml is, as for a cron job of a fresh user) and `env`.
pub fn run_clean(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    clean_command(cwd, args, env)
        .output()
        .expect("run glance-vhd")
}

/// [`run_clean`] with the syslog lines it sent (to a socket bound for it).
pub fn run_clean_logged(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> (Output, Vec<String>) {
    let sock_dir = tempfile::tempdir().expect("tempdir");
    let log = super::cli::Syslog::bind(sock_dir.path());
    let o = clean_command(cwd, args, env)
        .env("GLANCE_VHD_SYSLOG_SOCKET", &log.path)
        .output()
        .expect("run glance-vhd");
    (o, log.lines())
}

fn clean_command(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut c = Command::new(helpers::bin());
    c.args(args)
        .current_dir(cwd)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", cwd)
        .envs(env.iter().copied());
    c
}

/// `(key, value)` pairs with owned values as `run_clean` takes them.
pub fn env_refs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'a str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}
