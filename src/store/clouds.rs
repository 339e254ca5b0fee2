//! Where the sign-in comes from: `clouds.yaml` (+ `secure.yaml`) and the `OS_*`
//! variables, read the way the OpenStack client does, so that an admin's existing
//! `clouds.yaml` or `openrc` works as it is.
//!
//! * `--os-cloud`/`OS_CLOUD` names a cloud in the first `clouds.yaml` found in
//!   `OS_CLIENT_CONFIG_FILE`, `./`, `$XDG_CONFIG_HOME/openstack/` (else
//!   `~/.config/openstack/`), `/etc/openstack/` (`clouds.yml` and `clouds.json` too);
//!   the first `secure.yaml` of the same places (`OS_CLIENT_SECURE_FILE` first) is merged
//!   into it, key by key.
//! * `OS_*` variables override the cloud's values one by one (as the openstack CLI's
//!   option defaults do), and without a cloud they are the whole configuration.
//! * The method: `OS_AUTH_TYPE`/`auth_type` if given; else an application credential
//!   secret means `v3applicationcredential`, a password `password`, and a token alone a
//!   fixed token (`v3token` when there is an auth URL and no image endpoint to use it with).
//! * Names without a domain use `OS_DEFAULT_DOMAIN` (an id), else the `default` domain, as
//!   the openstack CLI does.
//!
//! A file holding a secret that group or others can read draws a warning (returned, for
//! the caller to say); a secret never appears in a message.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::keystone::{Domain, Method, Named, Secret, SignIn};

/// What the command line says (flags, some of which clap fills from `OS_*` already).
#[derive(Debug, Default, Clone)]
pub struct Given<'a> {
    pub cloud: Option<&'a str>,
    /// `--token`/`OS_AUTH_TOKEN`.
    pub token: Option<&'a str>,
    /// `--cacert`/`OS_CACERT`.
    pub cacert: Option<&'a Path>,
    pub insecure: bool,
    /// `--endpoint`/`OS_IMAGE_URL` given: no catalog needed.
    pub endpoint_given: bool,
}

/// The store's access, resolved.
#[derive(Debug, Default)]
pub struct Access {
    /// Sign in to Keystone (None: no sign-in).
    pub sign_in: Option<SignIn>,
    /// A token sent as it is (`--token`, `OS_AUTH_TOKEN`, `OS_TOKEN` without a sign-in).
    pub token: Option<Secret>,
    pub cacert: Option<PathBuf>,
    pub insecure: bool,
    /// The cloud's `image_endpoint_override`.
    pub image_endpoint: Option<String>,
    /// The cloud's `image_api_version`.
    pub image_api_version: Option<String>,
    /// Where the configuration came from, for `-v`: `cloud "x" in /root/.config/openstack/clouds.yaml`.
    pub origin: String,
    /// Things the admin should fix (a readable secret, an ignored token).
    pub warnings: Vec<String>,
}

/// `OS_*` variable → the cloud key it overrides (`auth.` keys live under `auth:`).
const ENV_KEYS: &[(&str, &str)] = &[
    ("OS_AUTH_TYPE", "auth_type"),
    ("OS_AUTH_URL", "auth.auth_url"),
    ("OS_USERNAME", "auth.username"),
    ("OS_USER_ID", "auth.user_id"),
    ("OS_PASSWORD", "auth.password"),
    ("OS_PROJECT_NAME", "auth.project_name"),
    ("OS_TENANT_NAME", "auth.project_name"),
    ("OS_PROJECT_ID", "auth.project_id"),
    ("OS_TENANT_ID", "auth.project_id"),
    ("OS_USER_DOMAIN_NAME", "auth.user_domain_name"),
    ("OS_USER_DOMAIN_ID", "auth.user_domain_id"),
    ("OS_PROJECT_DOMAIN_NAME", "auth.project_domain_name"),
    ("OS_PROJECT_DOMAIN_ID", "auth.project_domain_id"),
    ("OS_DEFAULT_DOMAIN", "default_domain"),
    (
        "OS_APPLICATION_CREDENTIAL_ID",
        "auth.application_credential_id",
    ),
    (
        "OS_APPLICATION_CREDENTIAL_NAME",
        "auth.application_credential_name",
    ),
    (
        "OS_APPLICATION_CREDENTIAL_SECRET",
        "auth.application_credential_secret",
    ),
    ("OS_TOKEN", "auth.token"),
    ("OS_REGION_NAME", "region_name"),
    ("OS_INTERFACE", "interface"),
];

/// Keys whose values are secrets.
const SECRET_KEYS: &[&str] = &[
    "auth.password",
    "auth.application_credential_secret",
    "auth.token",
];

/// A `clouds.yaml` larger than this is not one.
const MAX_FILE: u64 = 1 << 20;

/// Resolve the access from the command line, the environment (`env`) and the files.
pub fn resolve(given: &Given, env: &dyn Fn(&str) -> Option<String>) -> Result<Access, String> {
    let mut access = Access::default();
    let mut flat: BTreeMap<String, String> = BTreeMap::new();
    let cloud = given.cloud.map(str::to_string).or_else(|| env("OS_CLOUD"));
    let cloud = cloud.filter(|c| !c.is_empty());
    if let Some(name) = &cloud {
        let (clouds, clouds_path) =
            find_file("clouds", "OS_CLIENT_CONFIG_FILE", env)?.ok_or_else(|| {
                format!(
                    "OS_CLOUD/--os-cloud {name:?}: no clouds.yaml in {}",
                    search_dirs(env)
                        .iter()
                        .map(|d| d.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })?;
        let c = cloud_in(&clouds, &clouds_path, name)?;
        flatten(&c, "", &mut flat);
        let mut profile = c.get("profile").is_some();
        let mut secret_files = Vec::new();
        if holds_secret(&flat) {
            secret_files.push(clouds_path.clone());
        }
        if let Some((secure, secure_path)) = find_file("secure", "OS_CLIENT_SECURE_FILE", env)? {
            if let Some(s) = secure["clouds"].get(name.as_str()) {
                let mut sflat = BTreeMap::new();
                flatten(s, "", &mut sflat);
                if holds_secret(&sflat) {
                    secret_files.push(secure_path.clone());
                }
                // Key by key over the cloud's: the flat map is all the rest reads.
                flat.extend(sflat);
                profile |= s.get("profile").is_some();
            }
        }
        for f in secret_files {
            if let Some(w) = readable_secret(&f) {
                access.warnings.push(w);
            }
        }
        access.origin = format!("cloud {name:?} in {}", clouds_path.display());
        if profile {
            return Err(format!(
                "cloud {name:?} in {}: vendor profiles (profile:) are not supported; give auth_url and the rest in the cloud",
                clouds_path.display()
            ));
        }
    } else {
        access.origin = "OS_* variables".into();
    }
    for (var, key) in ENV_KEYS {
        if let Some(v) = env(var).filter(|v| !v.is_empty()) {
            flat.insert(key.to_string(), v);
        }
    }
    let get = |k: &str| flat.get(k).cloned().filter(|v| !v.is_empty());

    // TLS: flags (and OS_CACERT) over the cloud.
    access.cacert = given
        .cacert
        .map(Path::to_path_buf)
        .or_else(|| get("cacert").map(PathBuf::from));
    access.insecure = given.insecure
        || matches!(
            get("verify").as_deref(),
            Some("false" | "False" | "no" | "0")
        )
        || matches!(
            get("insecure").as_deref(),
            Some("true" | "True" | "yes" | "1")
        );
    access.image_endpoint = get("image_endpoint_override");
    access.image_api_version = get("image_api_version");

    let token = given
        .token
        .map(str::to_string)
        .or_else(|| get("auth.token"))
        .map(Secret::new);
    let auth_url = get("auth.auth_url");
    let auth_type = get("auth_type").map(|t| t.to_ascii_lowercase());
    let method_name = match auth_type.as_deref() {
        Some("password" | "v3password") => "password",
        Some("v3applicationcredential" | "applicationcredential" | "application_credential") => {
            "v3applicationcredential"
        }
        Some("token" | "v3token") => "v3token",
        Some("admin_token" | "none" | "noauth") => "fixed",
        Some(other) => {
            return Err(format!(
                "OS_AUTH_TYPE/auth_type {other:?} is not supported (password, v3applicationcredential, v3token)"
            ))
        }
        None if get("auth.application_credential_secret").is_some() => "v3applicationcredential",
        None if get("auth.password").is_some() => "password",
        None if token.is_some() && auth_url.is_some() && !given.endpoint_given => "v3token",
        None => "fixed",
    };
    if method_name == "fixed" {
        access.token = token;
        return Ok(access);
    }
    let Some(auth_url) = auth_url else {
        return Err(format!(
            "{}: a {method_name} sign-in needs the identity endpoint (OS_AUTH_URL or auth_url)",
            access.origin
        ));
    };
    let default_domain = get("default_domain")
        .or_else(|| get("auth.default_domain"))
        .unwrap_or_else(|| "default".into());
    let domain = |id: &str, name: &str| {
        let d = Domain {
            id: get(id),
            name: get(name),
        };
        if d.id.is_none() && d.name.is_none() {
            Domain {
                id: Some(default_domain.clone()),
                name: None,
            }
        } else {
            d
        }
    };
    let user = Named {
        id: get("auth.user_id"),
        name: get("auth.username"),
        domain: domain("auth.user_domain_id", "auth.user_domain_name"),
    };
    let secret = |key: &str, what: &str| {
        get(key).map(Secret::new).ok_or_else(|| {
            format!(
                "{}: a {method_name} sign-in at {} needs {what}",
                access.origin,
                super::redact(&auth_url)
            )
        })
    };
    let method = match method_name {
        "password" => Method::Password {
            user,
            password: secret("auth.password", "a password (OS_PASSWORD or auth.password)")?,
        },
        "v3applicationcredential" => Method::ApplicationCredential {
            id: get("auth.application_credential_id"),
            name: get("auth.application_credential_name"),
            user,
            secret: secret(
                "auth.application_credential_secret",
                "the secret (OS_APPLICATION_CREDENTIAL_SECRET or auth.application_credential_secret)",
            )?,
        },
        _ => Method::Token(token.clone().ok_or_else(|| {
            format!("{}: a v3token sign-in needs a token (OS_TOKEN)", access.origin)
        })?),
    };
    if token.is_some() && !matches!(method, Method::Token(_)) {
        access.warnings.push(format!(
            "a token is set (--token, OS_AUTH_TOKEN or OS_TOKEN) but not used: signing in with {method_name} at {}",
            super::redact(&auth_url)
        ));
    }
    let project = match (get("auth.project_id"), get("auth.project_name")) {
        (None, None) => None,
        (id, name) => Some(Named {
            id,
            name,
            domain: domain("auth.project_domain_id", "auth.project_domain_name"),
        }),
    };
    let interface = get("interface").unwrap_or_else(|| "public".into());
    // The openstack CLI accepts the v2-era names too.
    let interface = interface
        .strip_suffix("URL")
        .unwrap_or(&interface)
        .to_string();
    access.sign_in = Some(SignIn {
        auth_url,
        method,
        project,
        region: get("region_name"),
        interface,
    });
    Ok(access)
}

fn holds_secret(flat: &BTreeMap<String, String>) -> bool {
    SECRET_KEYS.iter().any(|k| flat.contains_key(*k))
}

/// A warning if `path` (which holds a secret) can be read by group or others.
fn readable_secret(path: &Path) -> Option<String> {
    let mode = std::fs::metadata(path).ok()?.mode() & 0o7777;
    (mode & 0o044 != 0).then(|| {
        format!(
            "{} holds a secret and others can read it (mode {mode:04o}): chmod 600 {}",
            path.display(),
            path.display()
        )
    })
}

/// The places searched, in order.
fn search_dirs(env: &dyn Fn(&str) -> Option<String>) -> Vec<PathBuf> {
    let mut dirs = vec![PathBuf::from(".")];
    match (env("XDG_CONFIG_HOME"), env("HOME")) {
        (Some(x), _) if !x.is_empty() => dirs.push(Path::new(&x).join("openstack")),
        (_, Some(h)) if !h.is_empty() => dirs.push(Path::new(&h).join(".config/openstack")),
        _ => {}
    }
    dirs.push(PathBuf::from("/etc/openstack"));
    dirs
}

/// The first `<stem>.yaml|yml|json` of the search path (`var` names a file to try first),
/// parsed. A file named by `var` that does not exist is an error (a typo must not fall
/// through to another cloud's file).
fn find_file(
    stem: &str,
    var: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<(serde_json::Value, PathBuf)>, String> {
    if let Some(f) = env(var).filter(|f| !f.is_empty()) {
        let p = PathBuf::from(f);
        if p.exists() || stem == "clouds" {
            return load(&p, var).map(|v| Some((v, p)));
        }
    }
    for dir in search_dirs(env) {
        for ext in ["yaml", "yml", "json"] {
            let p = dir.join(format!("{stem}.{ext}"));
            if p.is_file() {
                return load(&p, &p.display().to_string()).map(|v| Some((v, p)));
            }
        }
    }
    Ok(None)
}

/// Read and parse one YAML (or JSON) file, bounded, merge keys applied. The file must be
/// ours (or root's) and writable by nobody else: it says where our password goes and
/// which images land in the SR, and `./clouds.yaml` is searched in whatever directory
/// the tool runs from (a `/tmp` where any user can plant one).
fn load(path: &Path, what: &str) -> Result<serde_json::Value, String> {
    let shown = path.display();
    // O_NONBLOCK: a FIFO planted under the name must not hang the job in open(2); it
    // is refused below with anything else that is not a regular file.
    let f = crate::fsutil::open_nonblocking(path, false, nix::libc::O_NOCTTY)
        .map_err(|e| format!("{what} ({shown}): cannot read it: {e}"))?;
    let meta = f
        .metadata()
        .map_err(|e| format!("{shown}: cannot read it: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{shown}: not a regular file"));
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me && meta.uid() != 0 {
        return Err(format!(
            "{shown} is owned by uid {}, not by this user or root: refusing to take a sign-in from it",
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "{shown} is writable by group or others (mode {:04o}): refusing to take a sign-in from it (chmod go-w)",
            meta.mode() & 0o7777
        ));
    }
    let mut text = String::new();
    f.take(MAX_FILE + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("{shown}: cannot read it: {e}"))?;
    if text.len() as u64 > MAX_FILE {
        return Err(format!(
            "{shown}: larger than {MAX_FILE} bytes: not a clouds file"
        ));
    }
    // The parser's message quotes at most a position, never the content.
    let mut v: yaml_serde::Value = yaml_serde::from_str(&text).map_err(|e| {
        format!(
            "{shown}: not valid YAML: {}",
            e.location()
                .map(|l| format!("line {} column {}", l.line(), l.column()))
                .unwrap_or_else(|| "syntax".into())
        )
    })?;
    v.apply_merge()
        .map_err(|_| format!("{shown}: a merge key (<<) that is not a mapping"))?;
    serde_json::to_value(&v).map_err(|_| format!("{shown}: keys must be strings"))
}

/// `clouds: {name: {…}}` → the cloud.
fn cloud_in(
    file: &serde_json::Value,
    path: &Path,
    name: &str,
) -> Result<serde_json::Value, String> {
    let clouds = file["clouds"]
        .as_object()
        .ok_or_else(|| format!("{}: no `clouds:` mapping", path.display()))?;
    clouds.get(name).cloned().ok_or_else(|| {
        format!(
            "{}: no cloud {name:?} (it has: {})",
            path.display(),
            clouds.keys().cloned().collect::<Vec<_>>().join(", ")
        )
    })
}

/// Scalars of a cloud as `key` / `auth.key` → string (numbers and booleans as YAML
/// writes them).
fn flatten(v: &serde_json::Value, prefix: &str, out: &mut BTreeMap<String, String>) {
    let Some(map) = v.as_object() else { return };
    for (k, v) in map {
        let key = format!("{prefix}{k}");
        match v {
            serde_json::Value::String(s) => {
                out.insert(key, s.clone());
            }
            serde_json::Value::Bool(b) => {
                out.insert(key, b.to_string());
            }
            serde_json::Value::Number(n) => {
                out.insert(key, n.to_string());
            }
            serde_json::Value::Object(_) if k == "auth" && prefix.is_empty() => {
                flatten(v, "auth.", out)
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// `text` into `path`, with `mode`.
    fn write_mode(path: &Path, text: &str, mode: u32) {
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn password_from_os_variables() {
        let env = env_of(&[
            ("OS_AUTH_URL", "http://k:5000/v3"),
            ("OS_USERNAME", "demo"),
            ("OS_PASSWORD", "pw"),
            ("OS_PROJECT_NAME", "demo"),
            ("OS_USER_DOMAIN_NAME", "Default"),
            ("OS_REGION_NAME", "RegionOne"),
            ("HOME", "/nonexistent"),
        ]);
        let a = resolve(&Given::default(), &env).unwrap();
        let s = a.sign_in.unwrap();
        assert_eq!(s.method.name(), "password");
        assert_eq!(s.region.as_deref(), Some("RegionOne"));
        assert_eq!(s.interface, "public");
        let p = s.project.unwrap();
        assert_eq!(p.name.as_deref(), Some("demo"));
        // No project domain given: the default domain, by id, as the openstack CLI does.
        assert_eq!(p.domain.id.as_deref(), Some("default"));
        assert!(a.token.is_none());
    }

    #[test]
    fn application_credential_is_inferred_from_its_secret() {
        let env = env_of(&[
            ("OS_AUTH_URL", "http://k/v3"),
            ("OS_APPLICATION_CREDENTIAL_ID", "abc"),
            ("OS_APPLICATION_CREDENTIAL_SECRET", "s"),
            ("OS_AUTH_TOKEN", "ignored"),
        ]);
        let a = resolve(
            &Given {
                token: Some("old"),
                ..Given::default()
            },
            &env,
        )
        .unwrap();
        assert_eq!(a.sign_in.unwrap().method.name(), "v3applicationcredential");
        assert!(
            a.warnings.iter().any(|w| w.contains("not used")),
            "{:?}",
            a.warnings
        );
        assert!(!a.warnings.iter().any(|w| w.contains("old")));
    }

    #[test]
    fn a_token_alone_is_sent_as_it_is() {
        let a = resolve(
            &Given {
                token: Some("t"),
                endpoint_given: true,
                ..Given::default()
            },
            &env_of(&[]),
        )
        .unwrap();
        assert!(a.sign_in.is_none());
        assert_eq!(a.token.unwrap().expose(), "t");
        // With an auth URL and no endpoint: exchanged for a token with a catalog.
        let a = resolve(
            &Given {
                token: Some("t"),
                ..Given::default()
            },
            &env_of(&[("OS_AUTH_URL", "http://k/v3")]),
        )
        .unwrap();
        assert_eq!(a.sign_in.unwrap().method.name(), "v3token");
    }

    #[test]
    fn missing_pieces_are_named_without_secrets() {
        let e = resolve(&Given::default(), &env_of(&[("OS_PASSWORD", "hunter2")])).unwrap_err();
        assert!(e.contains("OS_AUTH_URL"), "{e}");
        assert!(!e.contains("hunter2"));
        let e = resolve(&Given::default(), &env_of(&[("OS_AUTH_TYPE", "kerberos")])).unwrap_err();
        assert!(e.contains("not supported"), "{e}");
    }

    #[test]
    fn clouds_yaml_with_secure_yaml_and_env_overrides() {
        let d = tempfile::tempdir().unwrap();
        let clouds = d.path().join("clouds.yaml");
        write_mode(&clouds, "clouds:\n  c1:\n    auth_type: v3applicationcredential\n    auth:\n      auth_url: https://k:5000/v3\n      application_credential_id: abc\n    region_name: R1\n    interface: internal\n    cacert: /etc/ca.pem\n  other: {}\n", 0o644);
        let secure = d.path().join("secure.yaml");
        write_mode(
            &secure,
            "clouds:\n  c1:\n    auth:\n      application_credential_secret: s3cr3t\n",
            0o644,
        );
        let cf = clouds.display().to_string();
        let sf = secure.display().to_string();
        let env = env_of(&[
            ("OS_CLIENT_CONFIG_FILE", &cf),
            ("OS_CLIENT_SECURE_FILE", &sf),
            ("OS_REGION_NAME", "R2"),
            ("HOME", "/nonexistent"),
        ]);
        let a = resolve(
            &Given {
                cloud: Some("c1"),
                ..Given::default()
            },
            &env,
        )
        .unwrap();
        let s = a.sign_in.as_ref().unwrap();
        assert_eq!(s.method.name(), "v3applicationcredential");
        assert_eq!(
            s.region.as_deref(),
            Some("R2"),
            "OS_REGION_NAME overrides the cloud"
        );
        assert_eq!(s.interface, "internal");
        assert_eq!(a.cacert.as_deref(), Some(Path::new("/etc/ca.pem")));
        // secure.yaml holds the secret and is 0644: one warning naming it, no secret.
        assert_eq!(a.warnings.len(), 1, "{:?}", a.warnings);
        assert!(a.warnings[0].contains("secure.yaml") && !a.warnings[0].contains("s3cr3t"));
        std::fs::set_permissions(&secure, std::fs::Permissions::from_mode(0o600)).unwrap();
        let a = resolve(
            &Given {
                cloud: Some("c1"),
                ..Given::default()
            },
            &env,
        )
        .unwrap();
        assert!(a.warnings.is_empty(), "{:?}", a.warnings);
        // --cacert over the cloud's.
        let a = resolve(
            &Given {
                cloud: Some("c1"),
                cacert: Some(Path::new("/x.pem")),
                ..Given::default()
            },
            &env,
        )
        .unwrap();
        assert_eq!(a.cacert.as_deref(), Some(Path::new("/x.pem")));
        // An unknown cloud lists the known ones.
        let e = resolve(
            &Given {
                cloud: Some("nope"),
                ..Given::default()
            },
            &env,
        )
        .unwrap_err();
        assert!(e.contains("c1") && e.contains("other"), "{e}");
    }

    #[test]
    fn clouds_yaml_is_found_in_the_standard_places_in_order() {
        let home = tempfile::tempdir().unwrap();
        let dir = home.path().join(".config/openstack");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("clouds.yaml"), "clouds:\n  h:\n    auth:\n      auth_url: http://home/v3\n      token: t\n    auth_type: token\n").unwrap();
        let h = home.path().display().to_string();
        let env = env_of(&[("HOME", &h)]);
        let a = resolve(
            &Given {
                cloud: Some("h"),
                ..Given::default()
            },
            &env,
        )
        .unwrap();
        assert_eq!(a.sign_in.unwrap().auth_url, "http://home/v3");
        // XDG_CONFIG_HOME replaces ~/.config.
        let x = home.path().join("xdg");
        std::fs::create_dir_all(x.join("openstack")).unwrap();
        std::fs::write(x.join("openstack/clouds.yml"), "clouds:\n  h:\n    auth:\n      auth_url: http://xdg/v3\n      token: t\n    auth_type: token\n").unwrap();
        let xs = x.display().to_string();
        let env = env_of(&[("HOME", &h), ("XDG_CONFIG_HOME", &xs)]);
        let a = resolve(
            &Given {
                cloud: Some("h"),
                ..Given::default()
            },
            &env,
        )
        .unwrap();
        assert_eq!(a.sign_in.unwrap().auth_url, "http://xdg/v3");
        // A named file that does not exist is an error, not a fall-through.
        let env = env_of(&[
            ("HOME", &h),
            ("OS_CLIENT_CONFIG_FILE", "/nonexistent/clouds.yaml"),
        ]);
        assert!(resolve(
            &Given {
                cloud: Some("h"),
                ..Given::default()
            },
            &env
        )
        .is_err());
    }

    #[test]
    fn files_others_can_change_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("clouds.yaml");
        write_mode(
            &f,
            "clouds:\n  c:\n    auth:\n      auth_url: http://evil/v3\n      token: t\n",
            0o666,
        );
        let fs = f.display().to_string();
        let env = env_of(&[("OS_CLIENT_CONFIG_FILE", &fs)]);
        let given = Given {
            cloud: Some("c"),
            ..Given::default()
        };
        let e = resolve(&given, &env).unwrap_err();
        assert!(e.contains("writable by group or others"), "{e}");
        // Someone else's file (as root: chown it to nobody).
        if nix::unistd::geteuid().is_root() {
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
            nix::unistd::chown(&f, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
            let e = resolve(&given, &env).unwrap_err();
            assert!(e.contains("owned by uid 65534"), "{e}");
        }
    }

    #[test]
    fn hostile_yaml_is_refused_with_a_position() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("clouds.yaml");
        // A billion laughs: aliases that expand exponentially.
        let mut y = String::from("a: &a [\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\"]\n");
        for i in 0..12 {
            let prev = if i == 0 {
                "a".to_string()
            } else {
                format!("b{}", i - 1)
            };
            y.push_str(&format!("b{i}: &b{i} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"));
        }
        y.push_str("clouds: {}\n");
        std::fs::write(&f, y).unwrap();
        let fs = f.display().to_string();
        let env = env_of(&[("OS_CLIENT_CONFIG_FILE", &fs)]);
        let e = resolve(
            &Given {
                cloud: Some("c"),
                ..Given::default()
            },
            &env,
        )
        .unwrap_err();
        assert!(e.contains("clouds.yaml"), "{e}");
        std::fs::write(&f, "clouds: [\n  password: hunter2\n").unwrap();
        let e = resolve(
            &Given {
                cloud: Some("c"),
                ..Given::default()
            },
            &env,
        )
        .unwrap_err();
        assert!(
            e.contains("not valid YAML") && !e.contains("hunter2"),
            "{e}"
        );
    }
}
