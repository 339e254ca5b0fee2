//! The kernel/ramdisk calls (DESIGN §2): copy a kernel or ramdisk VDI into
//! `/boot/guest` for PV guests booted by dom0's bootloader, make copies of cached ones,
//! and remove them.
//!
//! The VDI is read through a VBD plugged into dom0, as `pluginlib_nova.with_vdi_in_dom0`
//! did: create (read-only), plug, read `/dev/<device>`, then unplug (retrying
//! `DEVICE_DETACH_REJECTED`) and destroy on every path. Exactly `image-size` bytes are
//! streamed through a fixed buffer into a temporary name, fsynced and renamed, and the
//! directory fsynced. Every file written or removed must be a direct child of the boot
//! directory.
//!
//! Test hooks (README "Testing hooks"): `GLANCE_VHD_BOOT_GUEST` replaces `/boot/guest`,
//! `GLANCE_VHD_DEV_DIR` replaces `/dev`.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use crate::error::{ErrorKind, Kind};
use crate::fsutil::{self, AtomicWriteError};
use crate::log;
use crate::testhooks;
use crate::xenapi::xmlrpc::XValue;
use crate::xenapi::{record, XenApi, XenApiError};

const BOOT_GUEST: &str = "/boot/guest";
/// The old plugin retried `DEVICE_DETACH_REJECTED` forever; xapi has no timeout, so we
/// give up after this many seconds and let destroy report the rest.
const UNPLUG_ATTEMPTS: u32 = 60;
const COPY_BUFFER: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("{name:?} is not a plain file name (letters, digits, '.', '_', '-')")]
    Name { name: String },
    #[error("{} is not a file directly inside {}", path.display(), root.display())]
    Outside { path: PathBuf, root: PathBuf },
    #[error("VBD.get_device answered {0:?}, not a device name")]
    Device(String),
    #[error("VDI.get_uuid answered {0:?}, not a UUID")]
    VdiUuid(String),
    #[error("no control domain found on this host")]
    NoDom0,
    #[error("{}: {got} bytes, but the image is {expected} bytes", device.display())]
    Short {
        device: PathBuf,
        got: u64,
        expected: u64,
    },
    #[error("{}: cannot {op}", path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    XenApi(#[from] XenApiError),
}

impl Kind for KernelError {
    fn kind(&self) -> ErrorKind {
        match self {
            KernelError::Name { .. } | KernelError::Outside { .. } | KernelError::Short { .. } => {
                ErrorKind::InvalidInput
            }
            KernelError::Device(_) | KernelError::VdiUuid(_) | KernelError::NoDom0 => {
                ErrorKind::Permanent
            }
            KernelError::Io { .. } => ErrorKind::Io,
            KernelError::XenApi(e) => e.kind(),
        }
    }
}

fn io_err(path: &Path, op: &'static str) -> impl FnOnce(io::Error) -> KernelError {
    let path = path.to_path_buf();
    move |source| KernelError::Io { path, op, source }
}

/// `/boot/guest`, or the test root.
pub fn boot_dir() -> PathBuf {
    testhooks::path_or(testhooks::BOOT_GUEST, BOOT_GUEST)
}

fn dev_dir() -> PathBuf {
    testhooks::path_or(testhooks::DEV_DIR, "/dev")
}

/// A name that stays inside the directory it is joined to.
fn plain_name(name: &str) -> Result<&str, KernelError> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if ok {
        Ok(name)
    } else {
        Err(KernelError::Name {
            name: name.to_string(),
        })
    }
}

/// `copy_vdi` / `copy_kernel_vdi`: the VDI's first `size` bytes as
/// `<boot>/<vdi-uuid>`, and as `<boot>/<cached>` too when asked.
pub fn copy_vdi(
    api: &XenApi,
    vdi: &str,
    size: u64,
    cached: Option<&str>,
) -> Result<PathBuf, KernelError> {
    let cached = cached.map(plain_name).transpose()?;
    let uuid = api.call_str("VDI.get_uuid", vec![XValue::Str(vdi.into())])?;
    let uuid = uuid::Uuid::parse_str(&uuid)
        .map_err(|_| KernelError::VdiUuid(uuid.clone()))?
        .to_string();
    let root = boot_dir();
    std::fs::create_dir_all(&root).map_err(io_err(&root, "create the boot directory"))?;
    let dest = root.join(&uuid);
    with_vdi_in_dom0(api, vdi, |device| {
        let dev = dev_dir().join(device);
        let mut src = File::open(&dev).map_err(io_err(&dev, "open the device"))?;
        write_atomically(&dest, |out| copy_exactly(&mut src, out, size, &dev))
    })?;
    log::info(&format!(
        "copied {size} bytes of VDI {uuid} to {}",
        dest.display()
    ));
    if let Some(name) = cached {
        let cache = root.join(name);
        copy_file(&dest, &cache)?;
        log::info(&format!("cached as {}", cache.display()));
    }
    Ok(dest)
}

/// `create_kernel_ramdisk`: copy `<boot>/<cached>` to `<boot>/<new>`; `None` when the
/// cache holds no such image (the caller then downloads it).
pub fn create_kernel_ramdisk(cached: &str, new: &str) -> Result<Option<PathBuf>, KernelError> {
    let root = boot_dir();
    let from = root.join(plain_name(cached)?);
    let to = root.join(plain_name(new)?);
    match std::fs::symlink_metadata(&from) {
        Ok(m) if m.is_file() => {
            copy_file(&from, &to)?;
            Ok(Some(to))
        }
        _ => {
            log::info(&format!("{} is not cached", from.display()));
            Ok(None)
        }
    }
}

/// `remove_kernel_ramdisk`: remove each file (gone already is fine). Both are checked
/// before either is removed.
pub fn remove_kernel_ramdisk(files: &[&str]) -> Result<(), KernelError> {
    let root = boot_dir();
    let paths = files
        .iter()
        .map(|f| inside(&root, f))
        .collect::<Result<Vec<_>, _>>()?;
    for p in paths {
        match std::fs::remove_file(&p) {
            Ok(()) => log::info(&format!("removed {}", p.display())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&p, "remove")(e)),
        }
    }
    Ok(())
}

/// `path` as given, if it names a plain file directly inside `root` (no `..`, no `.`,
/// no other directory). Checked on the components, so nothing on disk is consulted.
fn inside(root: &Path, path: &str) -> Result<PathBuf, KernelError> {
    let p = Path::new(path);
    let outside = || KernelError::Outside {
        path: p.to_path_buf(),
        root: root.to_path_buf(),
    };
    if path.split('/').any(|c| c == ".." || c == ".") {
        return Err(outside());
    }
    let name = match p.components().next_back() {
        Some(Component::Normal(n)) => n.to_str().ok_or_else(outside)?,
        _ => return Err(outside()),
    };
    plain_name(name).map_err(|_| outside())?;
    if p.parent()
        .map(Path::components)
        .map(Iterator::collect::<Vec<_>>)
        != Some(root.components().collect())
    {
        return Err(outside());
    }
    Ok(p.to_path_buf())
}

/// Copy exactly `size` bytes: fewer on the device is an error, more is not read.
fn copy_exactly(
    src: &mut File,
    out: &mut File,
    size: u64,
    device: &Path,
) -> Result<(), KernelError> {
    let mut buf = vec![0u8; COPY_BUFFER];
    let mut left = size;
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = match src.read(&mut buf[..want]) {
            Ok(0) => {
                return Err(KernelError::Short {
                    device: device.to_path_buf(),
                    got: size - left,
                    expected: size,
                })
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err(device, "read the device")(e)),
        };
        out.write_all(&buf[..n])
            .map_err(io_err(device, "write the copy"))?;
        left -= n as u64;
    }
    Ok(())
}

fn copy_file(from: &Path, to: &Path) -> Result<(), KernelError> {
    let mut src = File::open(from).map_err(io_err(from, "open"))?;
    write_atomically(to, |out| {
        io::copy(&mut src, out).map_err(io_err(from, "copy"))?;
        Ok(())
    })
}

/// The copies are written as `open(…, "wb")` made them (0666 less the umask), each one
/// atomically ([`fsutil::write_atomically`]): a reader sees the old file or the whole
/// new one, never a partial kernel, and a crash keeps the one or the other.
fn write_atomically(
    dest: &Path,
    fill: impl FnOnce(&mut File) -> Result<(), KernelError>,
) -> Result<(), KernelError> {
    fsutil::write_atomically(dest, 0o666, fill)
}

/// The failed step of an atomic write, in the words kernel errors have always used
/// ("cannot create", "cannot fsync", "cannot rename into place").
impl From<AtomicWriteError> for KernelError {
    fn from(e: AtomicWriteError) -> KernelError {
        KernelError::Io {
            path: e.path,
            op: e.step,
            source: e.source,
        }
    }
}

/// dom0 of this host: the control domain resident on `session.get_this_host`, as
/// `pluginlib_nova.get_domain_0` found it (a pool has one control domain per host).
fn dom0(api: &XenApi) -> Result<String, KernelError> {
    let host = api.call_str(
        "session.get_this_host",
        vec![XValue::Str(api.session().into())],
    )?;
    let expr =
        format!("field \"is_control_domain\" = \"true\" and field \"resident_on\" = \"{host}\"");
    match api.call("VM.get_all_records_where", vec![XValue::Str(expr)])? {
        XValue::Struct(vms) => vms
            .into_iter()
            .next()
            .map(|(r, _)| r)
            .ok_or(KernelError::NoDom0),
        _ => Err(KernelError::NoDom0),
    }
}

/// Plug `vdi` into dom0 read-only, run `f` with the device name, and unplug and destroy
/// the VBD whatever happened.
fn with_vdi_in_dom0<T>(
    api: &XenApi,
    vdi: &str,
    f: impl FnOnce(&str) -> Result<T, KernelError>,
) -> Result<T, KernelError> {
    let vm = dom0(api)?;
    let rec = record(vec![
        ("VM", XValue::Str(vm)),
        ("VDI", XValue::Str(vdi.into())),
        ("userdevice", XValue::Str("autodetect".into())),
        ("bootable", XValue::Bool(false)),
        ("mode", XValue::Str("RO".into())),
        ("type", XValue::Str("Disk".into())),
        ("unpluggable", XValue::Bool(true)),
        ("empty", XValue::Bool(false)),
        ("other_config", XValue::Struct(vec![])),
        ("qos_algorithm_type", XValue::Str(String::new())),
        ("qos_algorithm_params", XValue::Struct(vec![])),
    ]);
    let vbd = api.call_str("VBD.create", vec![rec])?;
    let r = XValue::Str(vbd.clone());
    let result = (|| {
        api.call("VBD.plug", vec![r.clone()])?;
        let device = api.call_str("VBD.get_device", vec![r.clone()])?;
        if plain_name(&device).is_err() {
            return Err(KernelError::Device(device));
        }
        f(&device)
    })();
    unplug_with_retry(api, &vbd);
    if let Err(e) = api.call("VBD.destroy", vec![r]) {
        log::error(&format!("VBD.destroy {vbd}: {e}"));
    }
    result
}

fn unplug_with_retry(api: &XenApi, vbd: &str) {
    for attempt in 1..=UNPLUG_ATTEMPTS {
        match api.call("VBD.unplug", vec![XValue::Str(vbd.into())]) {
            Ok(_) => return,
            Err(e) => match e.code() {
                // The device is briefly still open after the last close (udev, blkid).
                Some("DEVICE_DETACH_REJECTED") if attempt < UNPLUG_ATTEMPTS => {
                    log::warn(&format!("VBD.unplug {vbd} rejected, retrying"));
                    std::thread::sleep(Duration::from_secs(1));
                }
                // Never plugged (plug failed) or already gone: nothing to undo.
                Some("DEVICE_ALREADY_DETACHED") => return,
                _ => {
                    log::error(&format!("VBD.unplug {vbd}: {e}"));
                    return;
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_direct_children_of_the_root() {
        let root = Path::new("/boot/guest");
        assert!(inside(root, "/boot/guest/abc-1").is_ok());
        assert!(inside(root, "/boot/guest//abc").is_ok());
        for bad in [
            "/boot/guest/../etc/passwd",
            "/boot/guest/./x",
            "/boot/guest/a/b",
            "/etc/passwd",
            "boot/guest/x",
            "/boot/guest",
            "/boot/guest/",
            "/boot/guest/.hidden",
            "",
        ] {
            assert!(inside(root, bad).is_err(), "{bad:?}");
        }
        assert!(plain_name("../x").is_err());
        assert!(plain_name("a/b").is_err());
        assert!(plain_name("6a0a2c5f-7b5e").is_ok());
    }
}
