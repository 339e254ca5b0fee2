//! Reading a VHD for upload with `O_DIRECT`: its bytes go from the disk into our buffer
//! without passing through the page cache.
//!
//! A buffered read of a file not in the cache costs the kernel more than the copy: it
//! allocates, fills, and (with [`super::DropBehind`]) evicts every page again. On the
//! bench machine, `dd` of the 1.3 GB bench VHD from a cold cache took 1.90 s of system
//! time buffered and 0.13 s with `iflag=direct`, about 1.3 CPU-seconds per GB saved
//! for an upload, whose whole budget is 3 (README "Performance"). Nothing is left in
//! dom0's small page cache either, which `DropBehind` only approximates.
//!
//! `O_DIRECT` wants the buffer, the length and the file offset aligned to the device's
//! logical block size: 4096 covers every device (512-byte ones too). A file system
//! that refuses it (tmpfs before Linux 6.6, some FUSE ones) gets the buffered reader.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};

use nix::fcntl::OFlag;

use super::DropBehind;

/// Alignment of the buffer, of each read's length and of its file offset.
const ALIGN: usize = 4096;
/// Bytes asked of the disk at a time: large, as the kernel's readahead would.
const CHUNK: usize = 1 << 20;

/// A sequential reader of `file` from byte 0: `O_DIRECT` where the file system takes
/// it, else buffered and dropped behind ([`DropBehind`]).
pub fn sequential(file: &File) -> io::Result<Box<dyn Read + Send>> {
    Ok(match Direct::open(file) {
        Some(d) => Box::new(d),
        None => {
            let mut f = file.try_clone()?;
            io::Seek::seek(&mut f, io::SeekFrom::Start(0))?;
            Box::new(DropBehind::new(f))
        }
    })
}

/// Reads with `O_DIRECT` into an aligned buffer of its own, and hands that out.
struct Direct {
    direct: File,
    /// The caller's descriptor (buffered): for the bytes after an unaligned end, and
    /// for everything once `O_DIRECT` reads were refused.
    buffered: File,
    buf: Vec<u8>,
    /// Where the aligned `CHUNK` starts in `buf`.
    at: usize,
    /// The part of the chunk not handed out yet: `buf[at + pos..at + len]`.
    pos: usize,
    len: usize,
    /// The file offset of the next read.
    offset: u64,
    /// Read on at `offset` with `pread` on `buffered`: after a read that ended off
    /// alignment (the file's end, or a file that grew) or one that `O_DIRECT` refused.
    plain: bool,
}

impl Direct {
    /// `file` opened again with `O_DIRECT`, through `/proc/self/fd`: a new open file
    /// description of the same inode (`fcntl` would set the flag on the caller's own
    /// description, whose checks read unaligned), with no path anyone could race.
    /// `None` where that is not possible.
    fn open(file: &File) -> Option<Direct> {
        let direct = OpenOptions::new()
            .read(true)
            .custom_flags((OFlag::O_DIRECT | OFlag::O_CLOEXEC).bits())
            .open(format!("/proc/self/fd/{}", file.as_raw_fd()))
            .ok()?;
        let (a, b) = (file.metadata().ok()?, direct.metadata().ok()?);
        if (a.dev(), a.ino()) != (b.dev(), b.ino()) {
            return None;
        }
        let buf = vec![0u8; CHUNK + ALIGN];
        let at = buf.as_ptr().align_offset(ALIGN);
        Some(Direct {
            direct,
            buffered: file.try_clone().ok()?,
            buf,
            at,
            pos: 0,
            len: 0,
            offset: 0,
            plain: false,
        })
    }

    /// The next chunk into the buffer; 0 at the end of the file.
    fn fill(&mut self) -> io::Result<usize> {
        let chunk = &mut self.buf[self.at..self.at + CHUNK];
        if !self.plain {
            match self.direct.read_at(chunk, self.offset) {
                Ok(n) => {
                    // A short read ends off alignment only at the end of the file; a
                    // next read from there would be refused.
                    self.plain = n % ALIGN != 0;
                    return Ok(n);
                }
                Err(e) if e.raw_os_error() == Some(nix::libc::EINVAL) && self.offset == 0 => {
                    // Opened, but not read with O_DIRECT (this file system).
                    self.plain = true;
                }
                Err(e) => return Err(e),
            }
        }
        self.buffered.read_at(chunk, self.offset)
    }
}

impl Read for Direct {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.len {
            let n = loop {
                match self.fill() {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    r => break r?,
                }
            };
            self.offset += n as u64;
            self.pos = 0;
            self.len = n;
        }
        let n = out.len().min(self.len - self.pos);
        let from = self.at + self.pos;
        out[..n].copy_from_slice(&self.buf[from..from + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every byte, in order, through odd read sizes, for sizes around the alignment and
    /// the chunk: in the temporary directory (tmpfs may refuse O_DIRECT: then the
    /// buffered reader reads the same bytes) and in the build directory (a disk's).
    #[test]
    fn reads_the_whole_file_at_any_size() {
        for dir in [
            tempfile::tempdir().unwrap(),
            tempfile::tempdir_in("target").unwrap(),
        ] {
            reads_the_whole_file_in(dir.path());
        }
    }

    fn reads_the_whole_file_in(dir: &std::path::Path) {
        for size in [
            0,
            1,
            511,
            4096,
            4097,
            CHUNK - 1,
            CHUNK,
            CHUNK + 4096 + 512,
            3 * CHUNK + 7,
        ] {
            let data: Vec<u8> = (0..size as u32)
                .map(|i| (i % 253) as u8 ^ (i >> 12) as u8)
                .collect();
            let path = dir.join(format!("f{size}"));
            std::fs::write(&path, &data).unwrap();
            let file = File::open(&path).unwrap();
            let mut r = sequential(&file).unwrap();
            let mut got = Vec::new();
            let mut step = 1000usize;
            loop {
                step = step * 7 % 300_007 + 1;
                let mut b = vec![0u8; step];
                let n = r.read(&mut b).unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&b[..n]);
            }
            assert!(got == data, "size {size}: {} bytes read", got.len());
        }
    }

    /// Where the file system takes O_DIRECT (the build directory's, not tmpfs), the
    /// reader uses it: its descriptor has the flag.
    #[test]
    fn o_direct_is_used_where_the_file_system_takes_it() {
        let dir = tempfile::tempdir_in("target").unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![7u8; 3 * ALIGN]).unwrap();
        let file = File::open(&path).unwrap();
        let Some(mut d) = Direct::open(&file) else {
            eprintln!(
                "O_DIRECT: not taken by the file system of {}",
                dir.path().display()
            );
            return;
        };
        let flags = nix::fcntl::fcntl(&d.direct, nix::fcntl::FcntlArg::F_GETFL).unwrap();
        assert!(OFlag::from_bits_truncate(flags).contains(OFlag::O_DIRECT));
        let mut all = Vec::new();
        d.read_to_end(&mut all).unwrap();
        assert_eq!(all, vec![7u8; 3 * ALIGN]);
        assert!(!d.plain, "read with O_DIRECT to the end");
    }
}
