//! A VHD and its ancestors, and reads through them (vhd-format.md §6.1).
//!
//! The chain is found through the parent locators, as blktap finds it. Unlike blktap it
//! is strict: every parent's footer UUID must equal the child's header parent UUID, the
//! chain may not loop, and its depth is capped, so a hostile or stale chain gives an
//! error instead of wrong data or an endless walk.

use std::collections::HashSet;
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::error::ELOOP;
use super::locator::find_parent;
use super::{DiskType, OpenMode, Result, Vhd, VhdError};

/// XenServer's storage manager stops at 30 (`MAX_CHAIN_SIZE`); we stop a little later so
/// that any chain SM made can still be read.
pub const MAX_CHAIN_DEPTH: usize = 32;

/// One layer of a chain: a VHD, or a raw parent file (blktap `modify -m`, null parent
/// UUID).
#[derive(Debug)]
pub enum Layer {
    Vhd(Box<Vhd>),
    Raw {
        path: PathBuf,
        file: File,
        size: u64,
    },
}

impl Layer {
    pub fn path(&self) -> &Path {
        match self {
            Layer::Vhd(v) => &v.path,
            Layer::Raw { path, .. } => path,
        }
    }

    pub fn virtual_size(&self) -> u64 {
        match self {
            Layer::Vhd(v) => v.virtual_size(),
            Layer::Raw { size, .. } => *size,
        }
    }
}

/// A leaf and its ancestors: `layers[0]` is the leaf, the last one the base.
#[derive(Debug)]
pub struct Chain {
    pub layers: Vec<Layer>,
}

impl Chain {
    /// Open `leaf` and every ancestor, read-only.
    pub fn open(leaf: &Path) -> Result<Chain> {
        Chain::open_with(Vhd::open(leaf, OpenMode::READ)?)
    }

    pub fn open_with(leaf: Vhd) -> Result<Chain> {
        let mut seen = HashSet::new();
        seen.insert(identity(&leaf.path)?);
        let mut layers = vec![Layer::Vhd(Box::new(leaf))];
        while let Some(Layer::Vhd(child)) = layers.last() {
            if !child.is_differencing() {
                break;
            }
            if layers.len() >= MAX_CHAIN_DEPTH {
                return Err(VhdError::refused(
                    layers[0].path(),
                    format!("chain deeper than {MAX_CHAIN_DEPTH} files"),
                    ELOOP,
                ));
            }
            let h = child.header().expect("differencing disk");
            let want = h.parent_uuid;
            let (ppath, _slot) = find_parent(child)?;
            if !seen.insert(identity(&ppath)?) {
                return Err(VhdError::refused(
                    &child.path,
                    format!(
                        "parent {} is already in the chain (a loop)",
                        ppath.display()
                    ),
                    ELOOP,
                ));
            }
            let layer = if want == [0; 16] {
                let file = File::open(&ppath).map_err(|e| VhdError::io(&ppath, "open", e))?;
                let size = file
                    .metadata()
                    .map_err(|e| VhdError::io(&ppath, "stat", e))?
                    .len();
                Layer::Raw {
                    path: ppath,
                    file,
                    size,
                }
            } else {
                let parent = Vhd::open(&ppath, OpenMode::READ)?;
                if parent.footer.uuid != want {
                    return Err(VhdError::invalid(
                        &child.path,
                        "header parent uuid",
                        super::fmt_uuid(&want),
                        format!(
                            "the parent found, {}, has uuid {}",
                            ppath.display(),
                            parent.uuid()
                        ),
                    ));
                }
                Layer::Vhd(Box::new(parent))
            };
            layers.push(layer);
        }
        Ok(Chain { layers })
    }

    /// A chain of files already open (leaf first), as a caller checked them — not
    /// found again through the locators, which name the SR's files, not these. Held to
    /// the same rules as [`Chain::open_with`]: each one's recorded parent UUID the
    /// next one's footer UUID, only the last one not differencing, at most
    /// [`MAX_CHAIN_DEPTH`] files.
    pub fn of(vhds: Vec<Vhd>) -> Result<Chain> {
        let Some(first) = vhds.first() else {
            return Err(VhdError::refused(
                Path::new("<chain>"),
                "an empty list of files is no chain",
                super::error::EINVAL,
            ));
        };
        if vhds.len() > MAX_CHAIN_DEPTH {
            return Err(VhdError::refused(
                &first.path,
                format!("chain deeper than {MAX_CHAIN_DEPTH} files"),
                ELOOP,
            ));
        }
        for (i, v) in vhds.iter().enumerate() {
            match (v.is_differencing(), vhds.get(i + 1)) {
                (false, None) => {}
                (true, Some(next)) => {
                    let want = v.header().expect("differencing disk").parent_uuid;
                    if want != next.footer.uuid {
                        return Err(VhdError::invalid(
                            &v.path,
                            "header parent uuid",
                            super::fmt_uuid(&want),
                            format!(
                                "the next file of the chain, {}, has uuid {}",
                                next.path.display(),
                                next.uuid()
                            ),
                        ));
                    }
                }
                (true, None) => {
                    return Err(VhdError::invalid(
                        &v.path,
                        "footer disk type",
                        "differencing",
                        "the last file of a chain must be its base",
                    ))
                }
                (false, Some(next)) => {
                    return Err(VhdError::invalid(
                        &v.path,
                        "footer disk type",
                        v.disk_type().name(),
                        format!(
                            "has no parent, but the chain goes on with {}",
                            next.path.display()
                        ),
                    ))
                }
            }
        }
        Ok(Chain {
            layers: vhds.into_iter().map(|v| Layer::Vhd(Box::new(v))).collect(),
        })
    }

    pub fn leaf(&self) -> &Vhd {
        match &self.layers[0] {
            Layer::Vhd(v) => v,
            Layer::Raw { .. } => unreachable!("the leaf is always a VHD"),
        }
    }

    pub fn virtual_size(&self) -> u64 {
        self.layers[0].virtual_size()
    }

    /// Read `buf.len()` bytes of the virtual disk at `offset`; beyond the leaf's size
    /// reads zeros.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.read_layer(0, offset, buf)
    }

    fn read_layer(&self, i: usize, offset: u64, buf: &mut [u8]) -> Result<()> {
        let Some(layer) = self.layers.get(i) else {
            // Below the base: nothing.
            buf.fill(0);
            return Ok(());
        };
        // blktap: past a layer's current size, reads give zeros and stop there; that is
        // what makes a parent smaller than its child legal.
        let size = layer.virtual_size();
        let inside = size.saturating_sub(offset).min(buf.len() as u64) as usize;
        buf[inside..].fill(0);
        let buf = &mut buf[..inside];
        if buf.is_empty() {
            return Ok(());
        }
        let vhd = match layer {
            Layer::Raw { path, file, .. } => {
                return super::read_exact_at(file, path, buf, offset, "read the raw parent")
            }
            Layer::Vhd(v) => v,
        };
        if vhd.disk_type() == DiskType::Fixed {
            return vhd.read_at(buf, offset, "read fixed disk data");
        }
        let diff = vhd.is_differencing();
        let h = vhd.header().expect("dynamic disk");
        let bs = h.block_size as u64;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let block = pos / bs;
            let within = pos % bs;
            let n = ((bs - within) as usize).min(buf.len() - done);
            let chunk = &mut buf[done..done + n];
            match vhd.block_data_offset(block)? {
                None if diff => self.read_layer(i + 1, pos, chunk)?,
                None => chunk.fill(0),
                Some((bitmap_at, data_at)) => {
                    let bitmap = vhd.read_bitmap(bitmap_at)?;
                    let bit = |s: u64| bitmap[(s / 8) as usize] & (0x80 >> (s % 8)) != 0;
                    // Runs of sectors with the same bitmap bit: ours or the layer below.
                    let mut p = 0usize;
                    while p < n {
                        let s = (within + p as u64) / 512;
                        let here = bit(s);
                        let mut end_s = s + 1;
                        while end_s * 512 < within + n as u64 && bit(end_s) == here {
                            end_s += 1;
                        }
                        let run_end = ((end_s * 512 - within) as usize).min(n);
                        let run = &mut chunk[p..run_end];
                        let at = pos + p as u64;
                        if here {
                            vhd.read_at(run, data_at + within + p as u64, "read block data")?;
                        } else if diff {
                            self.read_layer(i + 1, at, run)?;
                        } else {
                            run.fill(0);
                        }
                        p = run_end;
                    }
                }
            }
            done += n;
        }
        Ok(())
    }

    /// Copy the whole virtual disk to `out`. A regular file is written sparsely (zero
    /// runs are skipped, then the length set); anything else gets every byte.
    pub fn copy_to(&self, out: &mut File, sparse: bool) -> Result<u64> {
        let size = self.virtual_size();
        let out_path = Path::new("<output>");
        let mut buf = vec![0u8; 2 << 20];
        let mut pos = 0u64;
        while pos < size {
            let n = (size - pos).min(buf.len() as u64) as usize;
            let chunk = &mut buf[..n];
            self.read_at(pos, chunk)?;
            if sparse && chunk.iter().all(|&b| b == 0) {
                out.seek(SeekFrom::Current(n as i64))
                    .map_err(|e| VhdError::io(out_path, "seek", e))?;
            } else {
                out.write_all(chunk)
                    .map_err(|e| VhdError::io(out_path, "write", e))?;
            }
            pos += n as u64;
        }
        if sparse {
            out.set_len(size)
                .map_err(|e| VhdError::io(out_path, "set the length", e))?;
        }
        Ok(size)
    }

    /// Stream the whole virtual disk to a writer (stdout).
    pub fn write_to(&self, out: &mut dyn Write) -> Result<u64> {
        let size = self.virtual_size();
        let mut buf = vec![0u8; 2 << 20];
        let mut pos = 0u64;
        while pos < size {
            let n = (size - pos).min(buf.len() as u64) as usize;
            self.read_at(pos, &mut buf[..n])?;
            out.write_all(&buf[..n])
                .map_err(|e| VhdError::io(Path::new("<output>"), "write", e))?;
            pos += n as u64;
        }
        out.flush()
            .map_err(|e| VhdError::io(Path::new("<output>"), "flush", e))?;
        Ok(size)
    }
}

/// (device, inode) of a file: how loops are told apart from same-named files.
fn identity(p: &Path) -> Result<(u64, u64)> {
    let m = std::fs::metadata(p).map_err(|e| VhdError::io(p, "stat", e))?;
    Ok((m.dev(), m.ino()))
}

/// Walk the ancestors of `vhd` as far as they can be found, without failing: used to
/// refuse a relink that would make a loop, and by `check` to look for loops.
pub fn ancestors_best_effort(start: &Path, limit: usize) -> Vec<(PathBuf, [u8; 16])> {
    let mut out = Vec::new();
    let mut cur = start.to_path_buf();
    for _ in 0..limit {
        let Ok(v) = Vhd::open(&cur, OpenMode::READ) else {
            break;
        };
        out.push((cur.clone(), v.footer.uuid));
        if !v.is_differencing() {
            break;
        }
        match find_parent(&v) {
            Ok((p, _)) => cur = p,
            Err(_) => break,
        }
    }
    out
}

pub fn same_file(a: &Path, b: &Path) -> bool {
    matches!((identity(a), identity(b)), (Ok(x), Ok(y)) if x == y)
}
