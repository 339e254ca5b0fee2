//! Parent locators: how blktap encodes the path from a child to its parent and how it
//! reads it back (vhd-format.md §3.2, §6.3).
//!
//! Writing: one *relative* path between the canonical (realpath) child and parent, stored
//! as `file://<rel>` (MacX, UTF-8) and as `.\<rel with backslashes>` (W2ku and W2ru,
//! UTF-16LE; blktap puts the relative path in the "absolute" W2ku slot too).
//! Reading: MacX, W2ku and W2ru in slot order; the first that decodes and names a
//! readable file wins.

use std::path::{Path, PathBuf};

use super::error::{EILSEQ, ENAMETOOLONG};
use super::footer::VHD_EPOCH;
use super::header::{code, Header, Locator, PARENT_NAME_SIZE};
use super::{Result, Vhd, VhdError};

/// Longest locator data we read: Windows reserves 64 KiB for W2ru but writes a few
/// dozen bytes; nothing legitimate is longer than a path.
pub const MAX_LOCATOR_DATA: u32 = 64 * 1024;

/// blktap `canonpath`: `realpath(3)` (symlinks resolved). A file that does not exist
/// yet (a new snapshot) is placed in the canonical form of its directory.
pub fn canonical(p: &Path) -> std::io::Result<PathBuf> {
    match std::fs::canonicalize(p) {
        Ok(c) => Ok(c),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let name = p.file_name().ok_or(e)?;
            let dir = match p.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => Path::new("."),
            };
            Ok(std::fs::canonicalize(dir)?.join(name))
        }
        Err(e) => Err(e),
    }
}

/// blktap `relative_path_to`: the path from the child's directory to the parent, both
/// canonical. `./name` when they share the directory.
pub fn relative_path(child: &Path, parent: &Path) -> String {
    let child_dir: Vec<_> = child
        .parent()
        .map(|d| d.components().collect())
        .unwrap_or_default();
    let parent_parts: Vec<_> = parent.components().collect();
    let parent_dir_len = parent_parts.len().saturating_sub(1);
    let common = child_dir
        .iter()
        .zip(&parent_parts[..parent_dir_len])
        .take_while(|(a, b)| a == b)
        .count();
    let up = child_dir.len() - common;
    let mut s = if up == 0 {
        "./".to_string()
    } else {
        "../".repeat(up)
    };
    let rest: Vec<String> = parent_parts[common..]
        .iter()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    s.push_str(&rest.join("/"));
    s
}

/// Encode `rel` for a locator slot with platform `code` (MacX, W2ku, W2ru).
pub fn encode(code_: u32, rel: &str) -> Vec<u8> {
    match code_ {
        code::MACX => format!("file://{rel}").into_bytes(),
        _ => {
            // blktap `vhd_w2u_encode_location`: a relative path loses one leading "./"
            // and gets ".\" in front; every "/" becomes "\".
            let win = if rel.starts_with('/') {
                rel.replace('/', "\\")
            } else {
                let r = rel.strip_prefix("./").unwrap_or(rel);
                format!(".\\{}", r.replace('/', "\\"))
            };
            win.encode_utf16().flat_map(|u| u.to_le_bytes()).collect()
        }
    }
}

/// Longest relative parent path a child may carry: blktap's locator slots are 512 bytes,
/// and the UTF-16 W2ku/W2ru copies (`.\` plus two bytes a character) fill one at 254
/// characters. `snapshot` and `set_parent` both refuse longer paths before writing.
pub const MAX_RELATIVE_PATH: usize = 254;

/// What a child says about its parent, encoded once for every writer (`snapshot`'s new
/// child, `set_parent`'s relink): the header's parent UUID, timestamp (the parent's
/// mtime) and UTF-16BE name, and the relative path the path locators hold.
#[derive(Debug, Clone)]
pub struct ParentLink {
    pub uuid: [u8; 16],
    pub timestamp: u32,
    pub name: [u8; PARENT_NAME_SIZE],
    pub relative: String,
}

impl ParentLink {
    /// The link from `child` (the file to be written, named in errors) to `parent_abs`,
    /// both canonical (`child_abs` by [`canonical`]), with the parent's footer UUID (zero
    /// for a raw parent) and mtime in Unix seconds. Refuses what blktap cannot store:
    /// non-ASCII paths (EILSEQ), a name over [`PARENT_NAME_SIZE`] bytes in UTF-16 or a
    /// relative path over [`MAX_RELATIVE_PATH`] characters (ENAMETOOLONG).
    pub fn new(
        child: &Path,
        child_abs: &Path,
        parent_abs: &Path,
        uuid: [u8; 16],
        parent_mtime: i64,
    ) -> Result<ParentLink> {
        let relative = relative_path(child_abs, parent_abs);
        let name = parent_abs
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !relative.is_ascii() || !name.is_ascii() {
            return Err(VhdError::refused(
                child,
                format!("parent path {relative:?}: blktap stores ASCII parent paths only"),
                EILSEQ,
            ));
        }
        let units: Vec<u8> = name.encode_utf16().flat_map(|u| u.to_be_bytes()).collect();
        let too_long = if relative.len() > MAX_RELATIVE_PATH {
            Some(format!(
                "parent path too long for blktap's locators: its {} characters do not fit \
                 in {MAX_RELATIVE_PATH}",
                relative.len()
            ))
        } else if units.len() > PARENT_NAME_SIZE {
            Some(format!(
                "parent file name too long for the header: its {} characters do not fit in {}",
                name.len(),
                PARENT_NAME_SIZE / 2
            ))
        } else {
            None
        };
        if let Some(what) = too_long {
            return Err(VhdError::refused(child, what, ENAMETOOLONG));
        }
        let mut name_field = [0u8; PARENT_NAME_SIZE];
        name_field[..units.len()].copy_from_slice(&units);
        Ok(ParentLink {
            uuid,
            // blktap stores the mtime in 32 bits from 2000 and wraps the same way.
            timestamp: (parent_mtime - VHD_EPOCH) as u32,
            name: name_field,
            relative,
        })
    }

    /// The data of a path locator slot of platform `code_` (MacX, W2ku, W2ru).
    pub fn locator_data(&self, code_: u32) -> Vec<u8> {
        encode(code_, &self.relative)
    }

    /// Put the parent UUID, timestamp and name in `header` (the locators are the
    /// caller's: where their data goes differs between a new file and a relink).
    pub fn apply(&self, header: &mut Header) {
        header.parent_uuid = self.uuid;
        header.parent_timestamp = self.timestamp;
        header.parent_name = self.name;
    }
}

/// Decode the data of a path locator the way blktap does (`vhd_parent_locator_read`):
/// MacX must start with `file://`; W2ku/W2ru are UTF-16LE with `\` turned into `/` and a
/// leading drive `C:` dropped. `None` when it does not decode.
pub fn decode(code_: u32, data: &[u8]) -> Option<String> {
    match code_ {
        code::MACX => {
            let s = std::str::from_utf8(data).ok()?;
            let s = s.trim_end_matches('\0');
            s.strip_prefix("file://").map(str::to_string)
        }
        code::W2KU | code::W2RU => {
            if data.len() % 2 != 0 {
                return None;
            }
            let s = super::header::decode_utf16(data, u16::from_le_bytes)?;
            let s = s.replace('\\', "/");
            let s = s
                .strip_prefix("C:")
                .or_else(|| s.strip_prefix("c:"))
                .unwrap_or(&s);
            Some(s.to_string())
        }
        _ => None,
    }
}

/// Read and decode one locator slot. `Ok(None)` when the slot is not a path or does
/// not decode; errors only for I/O failures.
pub fn read_slot(vhd: &Vhd, loc: &Locator) -> Result<Option<String>> {
    if !code::is_path(loc.code) {
        return Ok(None);
    }
    let len = loc.data_len;
    if len == 0 || len > MAX_LOCATOR_DATA || len as u64 > loc.space_bytes() {
        return Ok(None);
    }
    match loc.data_offset.checked_add(len as u64) {
        Some(end) if end <= vhd.primary_at => {}
        _ => return Ok(None),
    }
    let mut data = vec![0u8; len as usize];
    vhd.read_at(&mut data, loc.data_offset, "read parent locator data")?;
    Ok(decode(loc.code, &data))
}

/// The first path locator that decodes, as text (`vhd-util query -p -u`).
pub fn first_decoded(vhd: &Vhd) -> Result<Option<String>> {
    let Some(h) = vhd.header() else {
        return Ok(None);
    };
    for l in &h.locators {
        if let Some(s) = read_slot(vhd, l)? {
            return Ok(Some(s));
        }
    }
    Ok(None)
}

/// Resolve a decoded locator path against the child (blktap `vhd_find_parent`): an
/// absolute path as is, a relative one against the directory of the canonical child
/// path; the result canonicalised. `None` unless it names an existing file.
pub fn resolve(child: &Path, located: &str) -> Option<PathBuf> {
    let p = Path::new(located);
    if p.is_absolute() {
        // blktap uses a readable absolute path as it is, without canonicalising it.
        let meta = std::fs::metadata(p).ok()?;
        return (meta.is_file() || is_block_device(&meta)).then(|| p.to_path_buf());
    }
    let candidate = {
        let canon_child = std::fs::canonicalize(child).ok()?;
        canon_child.parent()?.join(p)
    };
    let canon = std::fs::canonicalize(candidate).ok()?;
    let meta = std::fs::metadata(&canon).ok()?;
    (meta.is_file() || is_block_device(&meta)).then_some(canon)
}

pub fn is_block_device(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::FileTypeExt;
    meta.file_type().is_block_device()
}

/// Where the parent of a differencing disk is: the first locator (slot order) that
/// decodes and names an existing file, with the slot number.
pub fn find_parent(vhd: &Vhd) -> Result<(PathBuf, usize)> {
    let h = vhd.header().expect("differencing disk has a header");
    let mut tried = Vec::new();
    for (i, l) in h.locators.iter().enumerate() {
        if let Some(text) = read_slot(vhd, l)? {
            if let Some(p) = resolve(&vhd.path, &text) {
                return Ok((p, i));
            }
            tried.push(format!("{} {text:?}", code::name(l.code)));
        }
    }
    let detail = if tried.is_empty() {
        format!(
            "no usable parent locator (header parent name {:?})",
            h.parent_name_lossy()
        )
    } else {
        format!("no such file: {}", tried.join(", "))
    };
    Err(VhdError::ParentNotFound {
        path: vhd.path.clone(),
        detail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_like_blktap() {
        let r = |c: &str, p: &str| relative_path(Path::new(c), Path::new(p));
        assert_eq!(r("/sr/child.vhd", "/sr/parent.vhd"), "./parent.vhd");
        assert_eq!(r("/sr/sub/child.vhd", "/sr/base.vhd"), "../base.vhd");
        assert_eq!(r("/a/x/c.vhd", "/a/other/b.vhd"), "../other/b.vhd");
        assert_eq!(r("/a/b/c/d.vhd", "/x.vhd"), "../../../x.vhd");
        assert_eq!(r("/a/c.vhd", "/a/sub/p.vhd"), "./sub/p.vhd");
    }

    #[test]
    fn encodings_match_the_samples() {
        assert_eq!(encode(code::MACX, "./parent.vhd"), b"file://./parent.vhd");
        let w = encode(code::W2KU, "./parent.vhd");
        assert_eq!(w.len(), 24);
        assert_eq!(decode(code::W2KU, &w).unwrap(), "./parent.vhd");
        let w = encode(code::W2RU, "../other/x.vhd");
        assert_eq!(decode(code::W2RU, &w).unwrap(), "./../other/x.vhd");
        let s: Vec<u16> = ".\\..\\other\\x.vhd".encode_utf16().collect();
        assert_eq!(
            w,
            s.iter().flat_map(|u| u.to_le_bytes()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn windows_absolute_paths_lose_the_drive() {
        let w: Vec<u8> = "C:\\Projects\\p.vhd"
            .encode_utf16()
            .flat_map(|u| u.to_le_bytes())
            .collect();
        assert_eq!(decode(code::W2KU, &w).unwrap(), "/Projects/p.vhd");
        assert_eq!(decode(code::MACX, b"./x"), None);
    }
}
