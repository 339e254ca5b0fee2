//! The rules for the arguments that name things in an SR — the SR directory and the VDI
//! UUIDs a download is to create — in one place, for both front ends (the CLI's
//! `--sr-path`/`--uuid`, the plugin's `sr_path`/`uuid_stack`) and for
//! [`crate::transfer`], so that everything that can be known before the first request
//! is checked before it (DESIGN §10).
//!
//! What is accepted:
//! * **a VDI UUID** in the one form XenServer writes and Nova sends (`str(uuid4())`):
//!   36 characters, lowercase hex digits, hyphens at 8, 13, 18 and 23 — not the simple,
//!   braced, URN or uppercase forms `uuid::Uuid` would also take, since the UUID becomes
//!   a file name that xapi, sm and `vhd-util` match byte for byte; never the nil UUID,
//!   which a VHD header reads as "no parent";
//! * **an SR** given as an absolute path without `..`, whose last component is the SR's
//!   UUID (`/var/run/sr-mount/<sr-uuid>`, where the SM lock is found) and which is an
//!   existing directory. The last component may be a symlink to one: older `FileSR`
//!   attaches a local file SR as a link `/var/run/sr-mount/<uuid>` → its location, and
//!   only root can write `/var/run/sr-mount`. The UUID is the name given, not the name
//!   of where a link leads;
//! * **an SR UUID** (the CLI's `--sr`), by the VDI UUID rule: it names the directory
//!   `/var/run/sr-mount/<sr-uuid>`, which is then checked as an SR path.

use std::path::{Component, Path};

use super::{Result, SrError};

/// `s` shown in a message: quoted, and at most 64 characters of it (a 10 KB argument is
/// named, not echoed).
fn shown(s: &str) -> String {
    match s.char_indices().nth(64) {
        None => format!("{s:?}"),
        Some((cut, _)) => format!("{:?}… ({} bytes)", &s[..cut], s.len()),
    }
}

/// Whether `s` is a UUID in canonical form (see the module docs), not the nil UUID.
pub fn is_canonical_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_digit() || (b'a'..=b'f').contains(&c),
        })
        && b.iter().any(|&c| c != b'0' && c != b'-')
}

/// A VDI UUID, checked (see the module docs).
pub fn parse_vdi_uuid(s: &str) -> Result<String> {
    if is_canonical_uuid(s) {
        return Ok(s.to_string());
    }
    Err(SrError::Args(format!(
        "VDI UUID {}: not a UUID in canonical form (36 characters: lowercase hex digits, \
         hyphens at 8, 13, 18 and 23; not nil)",
        shown(s)
    )))
}

/// Where xapi mounts a file SR: `/var/run/sr-mount/<sr-uuid>` (sm's `SR.MOUNT_BASE`).
pub const SR_MOUNT: &str = "/var/run/sr-mount";

/// The SR directory of the SR `uuid` (checked: canonical form, not nil), under
/// [`SR_MOUNT`] unless a test points it elsewhere ([`crate::testhooks::SR_MOUNT`]).
pub fn sr_path_of(uuid: &str) -> Result<std::path::PathBuf> {
    if !is_canonical_uuid(uuid) {
        return Err(SrError::Args(format!(
            "SR UUID {}: not a UUID in canonical form (36 characters: lowercase hex digits, \
             hyphens at 8, 13, 18 and 23; not nil)",
            shown(uuid)
        )));
    }
    Ok(crate::testhooks::path_or(crate::testhooks::SR_MOUNT, SR_MOUNT).join(uuid))
}

/// The SR UUID of `sr`: its last component, which must be one.
pub fn sr_uuid(sr: &Path) -> Result<String> {
    let name = sr.file_name().map(|n| n.to_string_lossy().into_owned());
    match name {
        Some(n) if is_canonical_uuid(&n) && sr.components().all(|c| c != Component::ParentDir) => {
            Ok(n)
        }
        _ => Err(SrError::Args(format!(
            "SR path {}: not named by an SR UUID (/var/run/sr-mount/<sr-uuid>)",
            shown(&sr.to_string_lossy())
        ))),
    }
}

/// Check an SR path (see the module docs); its SR UUID.
pub fn check_sr_dir(sr: &Path) -> Result<String> {
    if !sr.is_absolute() {
        return Err(SrError::Args(format!(
            "SR path {}: not an absolute path",
            shown(&sr.to_string_lossy())
        )));
    }
    let uuid = sr_uuid(sr)?;
    match std::fs::metadata(sr) {
        Ok(m) if m.is_dir() => Ok(uuid),
        Ok(_) => Err(SrError::Args(format!(
            "SR path {}: not a directory",
            sr.display()
        ))),
        Err(e) => Err(SrError::Args(format!(
            "SR path {}: not an SR directory: {e}",
            sr.display()
        ))),
    }
}

/// Check the VDI UUIDs a download is to create in `sr` (already checked with
/// [`check_sr_dir`]): each in canonical form, none twice, none already a
/// `<uuid>.vhd` in the SR. `what` names the argument in messages (`uuid_stack`,
/// `--uuid`). Whether there are enough is known only once the image's members are
/// (the unpacker's `max_vhds`).
pub fn check_new_vdis(sr: &Path, what: &str, uuids: &[String]) -> Result<()> {
    if uuids.is_empty() {
        return Err(SrError::Args(format!(
            "{what} is empty: one VDI UUID per VHD of the image is needed"
        )));
    }
    for (i, u) in uuids.iter().enumerate() {
        parse_vdi_uuid(u).map_err(|e| SrError::Args(format!("{what}[{i}]: {e}")))?;
        if uuids[..i].contains(u) {
            return Err(SrError::Args(format!(
                "{what}: VDI UUID {u} is given twice"
            )));
        }
        let existing = sr.join(format!("{u}.vhd"));
        match std::fs::symlink_metadata(&existing) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Ok(_) => {
                return Err(SrError::Args(format!(
                    "{what}: VDI {u} already exists in the SR ({})",
                    existing.display()
                )))
            }
            Err(e) => {
                return Err(SrError::Args(format!(
                    "{what}: cannot tell whether {} exists: {e}",
                    existing.display()
                )))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_uuids_only() {
        assert!(is_canonical_uuid("0f8fad5b-d9cb-469f-a165-70867728950e"));
        for bad in [
            "",
            "0F8FAD5B-D9CB-469F-A165-70867728950E",
            "0f8fad5bd9cb469fa16570867728950e",
            "{0f8fad5b-d9cb-469f-a165-70867728950e}",
            "urn:uuid:0f8fad5b-d9cb-469f-a165-70867728950e",
            "0f8fad5b-d9cb-469f-a165-70867728950e ",
            "0f8fad5b/d9cb-469f-a165-70867728950e",
            "0f8fad5b-d9cb-469f-a165-7086772895\0e",
            "00000000-0000-0000-0000-000000000000",
            "../../../../../../../../../etc/passwd",
        ] {
            assert!(!is_canonical_uuid(bad), "{bad:?}");
        }
        let long = "a".repeat(10_000);
        let e = parse_vdi_uuid(&long).unwrap_err().to_string();
        assert!(e.len() < 300 && e.contains("10000 bytes"), "{e}");
    }

    #[test]
    fn sr_paths() {
        let d = tempfile::tempdir().unwrap();
        let u = "0f8fad5b-d9cb-469f-a165-70867728950e";
        let sr = d.path().join(u);
        assert!(check_sr_dir(&sr).is_err()); // missing
        std::fs::write(&sr, "").unwrap();
        assert!(check_sr_dir(&sr).is_err()); // a file
        std::fs::remove_file(&sr).unwrap();
        std::fs::create_dir(&sr).unwrap();
        assert_eq!(check_sr_dir(&sr).unwrap(), u);
        assert_eq!(check_sr_dir(&d.path().join(format!("{u}/"))).unwrap(), u);
        for bad in ["/", "relative", "/tmp/../tmp"] {
            assert!(check_sr_dir(Path::new(bad)).is_err(), "{bad}");
        }
        assert!(check_sr_dir(Path::new(u)).is_err());
        assert!(check_sr_dir(&sr.join("..").join(u)).is_err());
        assert!(sr_path_of(u).unwrap().ends_with(u));
        for bad in ["../etc", "0F8FAD5B-D9CB-469F-A165-70867728950E", "", "a/b"] {
            let e = sr_path_of(bad).unwrap_err().to_string();
            assert!(e.starts_with("SR UUID") && e.contains("canonical"), "{e}");
        }
        let v = "1f8fad5b-d9cb-469f-a165-70867728950e".to_string();
        std::fs::write(sr.join(format!("{v}.vhd")), "").unwrap();
        assert!(check_new_vdis(&sr, "x", std::slice::from_ref(&v)).is_err());
        let w = "2f8fad5b-d9cb-469f-a165-70867728950e".to_string();
        assert!(check_new_vdis(&sr, "x", &[w.clone(), w.clone()]).is_err());
        assert!(check_new_vdis(&sr, "x", &[]).is_err());
        check_new_vdis(&sr, "x", &[w]).unwrap();
    }
}
