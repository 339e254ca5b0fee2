//! Export (upload): hard-link the chain's files into a staging directory under the names
//! the tarball uses. Nothing in the SR is copied or changed, and the links keep the
//! files alive even if the SR garbage collector removes a VDI during the upload.

use std::path::{Path, PathBuf};

use super::{io_err, Result, SrError, Staging};
use crate::vhd::{chain::Chain, OpenMode, Vhd};

/// Which VDIs to upload.
#[derive(Debug, Clone)]
pub enum ChainSpec {
    /// VDI UUIDs, leaf first (Folsom and later): `0.vhd` … `n-1.vhd`.
    Vdis(Vec<String>),
    /// Only the leaf: the chain is walked through the parent locators.
    Leaf(String),
    /// Diablo: tar member name (`image`, `snap`, `base`) → VDI UUID.
    Named(Vec<(String, String)>),
}

/// The staged chain: `(tar member name, staged file)`, leaf first.
pub struct Exported {
    pub staging: Staging,
    pub members: Vec<(String, PathBuf)>,
    /// VDI UUIDs, in member order.
    pub uuids: Vec<String>,
}

fn vdi_path(sr: &Path, uuid: &str) -> Result<PathBuf> {
    let u = uuid::Uuid::parse_str(uuid)
        .map_err(|_| SrError::Args(format!("{uuid:?} is not a VDI UUID")))?;
    Ok(sr.join(format!("{u}.vhd")))
}

pub fn export(sr: &Path, spec: &ChainSpec) -> Result<Exported> {
    let (names, uuids): (Vec<String>, Vec<String>) = match spec {
        ChainSpec::Vdis(v) => (
            (0..v.len()).map(|i| format!("{i}.vhd")).collect(),
            v.clone(),
        ),
        ChainSpec::Named(v) => v
            .iter()
            .map(|(n, u)| (format!("{n}.vhd"), u.clone()))
            .unzip(),
        ChainSpec::Leaf(leaf) => {
            let chain = walk(sr, leaf)?;
            (
                (0..chain.len()).map(|i| format!("{i}.vhd")).collect(),
                chain,
            )
        }
    };
    if uuids.is_empty() || uuids.len() > super::MAX_IMAGE_CHAIN {
        return Err(SrError::Args(format!(
            "{} VDIs to upload; from 1 to {} are possible",
            uuids.len(),
            super::MAX_IMAGE_CHAIN
        )));
    }
    let staging = Staging::create(sr)?;
    let mut members = Vec::with_capacity(uuids.len());
    for (name, uuid) in names.iter().zip(&uuids) {
        let from = vdi_path(sr, uuid)?;
        // Every file must at least be a readable VHD: a broken one is refused before
        // the store sees a byte.
        Vhd::open(&from, OpenMode::READ)?;
        let to = staging.path().join(name);
        std::fs::hard_link(&from, &to).map_err(io_err(&from, "hard-link into staging"))?;
        members.push((name.clone(), to));
    }
    Ok(Exported {
        staging,
        members,
        uuids,
    })
}

/// The chain of `leaf`, leaf first, as VDI UUIDs. Every file must be `<uuid>.vhd` in
/// the SR directory itself: a chain that leaves the SR is refused.
fn walk(sr: &Path, leaf: &str) -> Result<Vec<String>> {
    let sr_canon = std::fs::canonicalize(sr).map_err(io_err(sr, "resolve the SR path"))?;
    let chain = Chain::open(&vdi_path(sr, leaf)?)?;
    let mut uuids = Vec::new();
    for layer in &chain.layers {
        let p = std::fs::canonicalize(layer.path()).map_err(io_err(layer.path(), "resolve"))?;
        let stem = p
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let in_sr = p.parent() == Some(sr_canon.as_path())
            && p.extension().is_some_and(|e| e == "vhd")
            && uuid::Uuid::parse_str(&stem).is_ok();
        if !in_sr {
            return Err(SrError::Chain {
                file: layer.path().display().to_string(),
                rule: format!(
                    "is in the chain of {leaf} but is not a <uuid>.vhd in the SR {}",
                    sr.display()
                ),
            });
        }
        uuids.push(stem);
    }
    Ok(uuids)
}
