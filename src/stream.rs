//! Plain `std::io` adaptors shared by the transfer paths.
//!
//! * [`Prefetch`]: reads its inner reader on a thread of its own, a few chunks ahead, so
//!   the network and the hashing overlap with inflating and writing (dom0 has few cores;
//!   using two of them is what makes a download faster than `tar -zx`).
//! * [`Writeback`]: a file writer that pushes dirty pages to disk as it goes and drops
//!   them from the page cache behind itself, so a multi-GiB import neither floods dom0's
//!   small page cache nor ends in one long fsync; runs of zeros become holes, so a disk
//!   full of zeros (a fixed VHD, or a bomb) takes no room in the SR.
//! * [`DropBehind`]: a file reader that drops what it has read from the page cache, so
//!   an upload of a multi-GiB VHD does not evict dom0's working set.
//! * [`pipe`]: a bounded pipe from a producer thread (tar + gzip) to the consumer (the
//!   HTTP body) whose reader never takes a failed or vanished writer for end of stream.
//! * [`RateLimited`]: a reader held to a byte rate (`--rate-limit`), for daytime runs
//!   that must leave the host's network to its VMs.
//! * [`Deadline`]: a reader that fails once a moment has passed (the plugin's overall
//!   time limit).

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::sync::mpsc::{sync_channel, Receiver};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};

/// Chunks in flight between the reading thread and the consumer.
const PREFETCH_DEPTH: usize = 4;
const PREFETCH_CHUNK: usize = 256 << 10;

/// A reader that reads `R` on its own thread. At end of stream the thread is joined and
/// `R` comes back through [`Prefetch::finished`] (e.g. to read the hashes it computed).
pub struct Prefetch<R> {
    rx: Receiver<io::Result<Vec<u8>>>,
    /// Used chunks go back to the reading thread (musl maps and unmaps every large
    /// allocation: reusing buffers saves that system time).
    back: std::sync::mpsc::SyncSender<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
    thread: Option<JoinHandle<R>>,
    done: Option<R>,
}

impl<R: Read + Send + 'static> Prefetch<R> {
    pub fn new(mut inner: R) -> Prefetch<R> {
        let (tx, rx) = sync_channel(PREFETCH_DEPTH);
        let (back, spare) = sync_channel::<Vec<u8>>(PREFETCH_DEPTH + 2);
        let thread = std::thread::Builder::new()
            .name("prefetch".into())
            .spawn(move || {
                loop {
                    let mut buf = spare.try_recv().unwrap_or_default();
                    buf.resize(PREFETCH_CHUNK, 0);
                    let (n, err) = read_some(&mut inner, &mut buf);
                    if n > 0 {
                        buf.truncate(n);
                        if tx.send(Ok(buf)).is_err() {
                            break; // the consumer gave up
                        }
                    }
                    match err {
                        Some(e) => {
                            let _ = tx.send(Err(e));
                            break;
                        }
                        None if n == 0 => break,
                        None => {}
                    }
                }
                inner
            })
            .expect("spawn the prefetch thread");
        Prefetch {
            rx,
            back,
            cur: Vec::new(),
            pos: 0,
            thread: Some(thread),
            done: None,
        }
    }

    /// The inner reader, once the stream has been read to its end.
    pub fn finished(&mut self) -> Option<&mut R> {
        self.done.as_mut()
    }
}

/// Read until at least half of `buf` is filled or the stream ends: fewer, larger chunks
/// through the channel. An error comes back with the bytes read before it, so that
/// nothing is lost and the error is never mistaken for the end of the stream.
fn read_some(r: &mut impl Read, buf: &mut [u8]) -> (usize, Option<io::Error>) {
    let mut n = 0;
    while n < buf.len() / 2 {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return (n, Some(e)),
        }
    }
    (n, None)
}

impl<R: Read + Send + 'static> Read for Prefetch<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            match self.rx.recv() {
                Ok(Ok(chunk)) => {
                    let used = std::mem::replace(&mut self.cur, chunk);
                    let _ = self.back.try_send(used);
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    // The thread ended: end of stream (an error would have come first).
                    if let Some(t) = self.thread.take() {
                        match t.join() {
                            Ok(inner) => self.done = Some(inner),
                            Err(_) => return Err(io::Error::other("the prefetch thread panicked")),
                        }
                    }
                    return Ok(0);
                }
            }
        }
        let n = out.len().min(self.cur.len() - self.pos);
        out[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Bytes of dirty data per writeback window.
const WINDOW: u64 = 16 << 20;

/// Granularity of holes: a page, and the block size of the file systems SRs use (ext3/4,
/// XFS, NFS servers' too). An aligned chunk of this many zero bytes is not written.
const HOLE: u64 = 4 << 10;

/// A writer into a new, empty file that starts writeback of each 16 MiB window as soon as
/// it is written, waits for the previous window and drops it from the page cache;
/// `finish` fsyncs. 4 KiB chunks of zeros (aligned in the file) are skipped, not written, so
/// they stay holes (a sparse file) and take no room in the SR; `finish` sets the length.
/// A VHD gives no meaning to where its zeros are stored, and every reader (tapdisk, our
/// `vhd` module, `cp`) reads a hole as zeros.
pub struct Writeback {
    file: File,
    written: u64,
    /// Start of the window not yet handed to writeback.
    started: u64,
    /// Everything before this is on disk and out of the page cache.
    settled: u64,
}

impl Writeback {
    /// `file` must be empty (just created): what is skipped reads as zeros only there.
    pub fn new(file: File) -> Writeback {
        Writeback {
            file,
            written: 0,
            started: 0,
            settled: 0,
        }
    }

    fn range(&self, from: u64, to: u64, flags: u32) {
        // Advisory: a file system without sync_file_range simply gets the final fsync.
        // SAFETY: a plain syscall on a descriptor we own; no memory is passed.
        unsafe {
            nix::libc::sync_file_range(
                self.file.as_raw_fd(),
                from as i64,
                (to - from) as i64,
                flags,
            );
        }
    }

    fn push(&mut self) {
        use nix::libc::{
            SYNC_FILE_RANGE_WAIT_AFTER, SYNC_FILE_RANGE_WAIT_BEFORE, SYNC_FILE_RANGE_WRITE,
        };
        if self.written - self.started < WINDOW {
            return;
        }
        self.range(self.started, self.written, SYNC_FILE_RANGE_WRITE);
        // The window before the one just started: wait for it, then drop it.
        if self.started > self.settled {
            self.range(
                self.settled,
                self.started,
                SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER,
            );
            let _ = posix_fadvise(
                &self.file,
                self.settled as i64,
                (self.started - self.settled) as i64,
                PosixFadviseAdvice::POSIX_FADV_DONTNEED,
            );
            self.settled = self.started;
        }
        self.started = self.written;
    }

    /// Set the length (a file ending in zeros ends in a hole), fsync, drop the rest from
    /// the page cache, and give the file back.
    pub fn finish(self) -> io::Result<File> {
        self.file.set_len(self.written)?;
        self.file.sync_all()?;
        let _ = posix_fadvise(&self.file, 0, 0, PosixFadviseAdvice::POSIX_FADV_DONTNEED);
        Ok(self.file)
    }

    /// Write `buf` at the current position, leaving its zero chunks (cut at the [`HOLE`]
    /// boundaries of the file) unwritten: the runs of data between them go out in one
    /// `pwrite` each.
    fn write_sparse(&mut self, buf: &[u8]) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let mut run: Option<usize> = None; // start in `buf` of the data not yet written
        let mut i = 0usize;
        while i < buf.len() {
            let pos = self.written + i as u64;
            // To the next HOLE boundary of the file, or the end of `buf`.
            let to_boundary = (HOLE - pos % HOLE) as usize;
            let end = buf.len().min(i + to_boundary);
            let chunk = &buf[i..end];
            // A partial chunk (at either end of `buf`) of zeros is skipped too: the file
            // is new, so what is not written reads as zeros, and the next `write` may
            // finish the chunk with more zeros. Writing it would allocate its block.
            if is_zero(chunk) {
                if let Some(r) = run.take() {
                    self.file
                        .write_all_at(&buf[r..i], self.written + r as u64)?;
                }
            } else if run.is_none() {
                run = Some(i);
            }
            i = end;
        }
        if let Some(r) = run {
            self.file.write_all_at(&buf[r..], self.written + r as u64)?;
        }
        Ok(())
    }
}

/// All bytes zero. Word at a time: data chunks usually differ in their first word, and
/// zero chunks are read at memory speed.
fn is_zero(b: &[u8]) -> bool {
    let (words, rest) = b.split_at(b.len() / 8 * 8);
    words
        .chunks_exact(8)
        .all(|w| u64::from_ne_bytes(w.try_into().expect("8 bytes")) == 0)
        && rest.iter().all(|&x| x == 0)
}

impl Write for Writeback {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_sparse(buf)?;
        self.written += buf.len() as u64;
        self.push();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that returns at most 7 bytes a call, then fails once if asked to.
    struct Dribble {
        data: Vec<u8>,
        pos: usize,
        fail_at_end: bool,
    }

    impl Read for Dribble {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.pos == self.data.len() {
                if self.fail_at_end {
                    self.fail_at_end = false;
                    return Err(io::Error::new(io::ErrorKind::ConnectionReset, "cut"));
                }
                return Ok(0);
            }
            let n = buf.len().min(7).min(self.data.len() - self.pos);
            buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    #[test]
    fn prefetch_passes_every_byte_and_returns_the_reader() {
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i * 31 % 251) as u8).collect();
        let mut p = Prefetch::new(Dribble {
            data: data.clone(),
            pos: 0,
            fail_at_end: false,
        });
        assert!(p.finished().is_none());
        let mut out = Vec::new();
        p.read_to_end(&mut out).unwrap();
        assert_eq!(out, data);
        assert_eq!(p.finished().unwrap().pos, data.len());
    }

    #[test]
    fn prefetch_passes_errors_after_the_data() {
        let mut p = Prefetch::new(Dribble {
            data: vec![1; 100],
            pos: 0,
            fail_at_end: true,
        });
        let mut out = Vec::new();
        let e = p.read_to_end(&mut out).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionReset);
        assert_eq!(out.len(), 100);
    }

    #[test]
    fn writeback_writes_everything() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut w = Writeback::new(File::create(&path).unwrap());
        let chunk = vec![7u8; 1 << 20];
        for _ in 0..40 {
            w.write_all(&chunk).unwrap();
        }
        w.finish().unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 40 << 20);
    }

    #[test]
    fn writeback_leaves_zero_chunks_as_holes_and_reads_back_the_same() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        // 64 MiB of zeros with data scattered in it, some of it inside otherwise-zero
        // 4 KiB chunks and across chunk edges, written in odd-sized pieces; ends in zeros.
        let mut data = vec![0u8; 64 << 20];
        for (i, at) in [0usize, 4095, 4096 * 3 + 17, 1 << 20, (40 << 20) + 4094]
            .into_iter()
            .enumerate()
        {
            data[at] = i as u8 + 1;
            data[at + 1] = 0xff;
        }
        data[(8 << 20)..(9 << 20)].fill(0x5a);
        let path = dir.path().join("f");
        let mut w = Writeback::new(File::create(&path).unwrap());
        for piece in data.chunks(1000 * 7 + 3) {
            w.write_all(piece).unwrap();
        }
        w.finish().unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), 64 << 20);
        assert!(std::fs::read(&path).unwrap() == data, "content differs");
        // The 1 MiB of data and a few chunks around the single bytes: nowhere near 64 MiB
        // (tmpfs and ext4 both count 512-byte blocks).
        let used = meta.blocks() * 512;
        assert!(used < 2 << 20, "{used} bytes allocated");
        // All zeros: a file of the right length and no data.
        let path = dir.path().join("z");
        let mut w = Writeback::new(File::create(&path).unwrap());
        w.write_all(&vec![0u8; 10 << 20]).unwrap();
        w.finish().unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!((meta.len(), meta.blocks()), (10 << 20, 0));
    }
}

/// Reads a file and drops what it has read from the page cache behind itself, so that
/// streaming a multi-GiB VHD out of dom0 does not evict everything else.
pub struct DropBehind {
    file: File,
    pos: u64,
    dropped: u64,
}

impl DropBehind {
    pub fn new(file: File) -> DropBehind {
        let _ = posix_fadvise(&file, 0, 0, PosixFadviseAdvice::POSIX_FADV_SEQUENTIAL);
        DropBehind {
            file,
            pos: 0,
            dropped: 0,
        }
    }
}

/// A reader that stops at a size it knows (`bundle::pack`'s `Exact`) never reads the
/// end of the file: what is left after the last window goes when the reader does.
impl Drop for DropBehind {
    fn drop(&mut self) {
        if self.pos > self.dropped {
            let _ = posix_fadvise(
                &self.file,
                self.dropped as i64,
                0,
                PosixFadviseAdvice::POSIX_FADV_DONTNEED,
            );
        }
    }
}

/// What [`DropBehind`] drops ends on this boundary (until the end of the file). The
/// kernel keeps a page-cache folio that the range covers only in part, and folios are up
/// to 2 MiB: with windows ending wherever a read ended, one folio per window stayed,
/// 165 MiB of the 1.3 GB bench VHD (`fincore`).
const DROP_ALIGN: u64 = 2 << 20;

impl Read for DropBehind {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read(buf)?;
        self.pos += n as u64;
        if n == 0 && self.pos > self.dropped {
            // The end: everything from `dropped` on (a length of 0 is "to the end").
            let _ = posix_fadvise(
                &self.file,
                self.dropped as i64,
                0,
                PosixFadviseAdvice::POSIX_FADV_DONTNEED,
            );
            self.dropped = self.pos;
        } else if self.pos - self.dropped >= WINDOW {
            let end = self.pos / DROP_ALIGN * DROP_ALIGN;
            let _ = posix_fadvise(
                &self.file,
                self.dropped as i64,
                (end - self.dropped) as i64,
                PosixFadviseAdvice::POSIX_FADV_DONTNEED,
            );
            self.dropped = end;
        }
        Ok(n)
    }
}

enum Piece {
    Data(Vec<u8>),
    End,
    Failed(io::Error),
}

/// A bounded in-process pipe between a producer thread and a consumer: the writer
/// collects 256 KiB chunks; the reader sees the end of the stream only if the writer
/// called [`PipeWriter::close`]. A writer that fails ([`PipeWriter::fail`]) or just goes
/// away makes the reader fail: a consumer such as a chunked HTTP upload must never
/// take a broken stream for a complete one.
pub fn pipe(depth: usize) -> (PipeWriter, PipeReader) {
    let (tx, rx) = sync_channel(depth);
    let (back, spare) = sync_channel(depth + 2);
    (
        PipeWriter {
            tx,
            spare,
            buf: Vec::with_capacity(PREFETCH_CHUNK),
        },
        PipeReader {
            rx,
            back,
            cur: Vec::new(),
            pos: 0,
            ended: false,
        },
    )
}

pub struct PipeWriter {
    tx: std::sync::mpsc::SyncSender<Piece>,
    /// Buffers the reader is done with, to reuse.
    spare: Receiver<Vec<u8>>,
    buf: Vec<u8>,
}

impl PipeWriter {
    fn send(&mut self, p: Piece) -> io::Result<()> {
        self.tx
            .send(p)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the consumer went away"))
    }

    /// The stream is complete.
    pub fn close(mut self) -> io::Result<()> {
        let rest = std::mem::take(&mut self.buf);
        if !rest.is_empty() {
            self.send(Piece::Data(rest))?;
        }
        self.send(Piece::End)
    }

    /// The stream is broken: the reader gets `e`.
    pub fn fail(mut self, e: io::Error) {
        let _ = self.send(Piece::Failed(e));
    }
}

impl Write for PipeWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= PREFETCH_CHUNK {
            let fresh = match self.spare.try_recv() {
                Ok(mut v) => {
                    v.clear();
                    v
                }
                Err(_) => Vec::with_capacity(PREFETCH_CHUNK),
            };
            let full = std::mem::replace(&mut self.buf, fresh);
            self.send(Piece::Data(full))?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

pub struct PipeReader {
    rx: Receiver<Piece>,
    back: std::sync::mpsc::SyncSender<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
    ended: bool,
}

impl Read for PipeReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            if self.ended {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Piece::Data(d)) => {
                    let used = std::mem::replace(&mut self.cur, d);
                    let _ = self.back.try_send(used);
                    self.pos = 0;
                }
                Ok(Piece::End) => self.ended = true,
                Ok(Piece::Failed(e)) => return Err(e),
                Err(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "the producer stopped without finishing the stream",
                    ))
                }
            }
        }
        let n = out.len().min(self.cur.len() - self.pos);
        out[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// A token bucket in front of a reader: on average at most `rate` bytes a second, with
/// bursts of at most a tenth of a second's worth, so the limit holds over short
/// transfers too and the link sees a steady flow rather than 1 s on, 1 s off.
pub struct RateLimited<R> {
    inner: R,
    rate: u64,
    /// Bytes we may read now; negative after a read that overdrew it.
    tokens: f64,
    burst: f64,
    last: Instant,
}

impl<R> RateLimited<R> {
    /// `rate` in bytes per second; 0 is treated as 1.
    pub fn new(inner: R, rate: u64) -> Self {
        let rate = rate.max(1);
        let burst = (rate as f64 / 10.0).max(1.0);
        RateLimited {
            inner,
            rate,
            tokens: 0.0,
            burst,
            last: Instant::now(),
        }
    }

    fn refill(&mut self) {
        let now = Instant::now();
        let earned = now.duration_since(self.last).as_secs_f64() * self.rate as f64;
        self.tokens = (self.tokens + earned).min(self.burst);
        self.last = now;
    }
}

impl<R: Read> Read for RateLimited<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.refill();
        if self.tokens < 1.0 {
            let wait = (1.0 - self.tokens) / self.rate as f64;
            std::thread::sleep(Duration::from_secs_f64(wait));
            self.refill();
        }
        // Never more than one burst in one read: a 1 MiB read at 100 KB/s would
        // otherwise arrive at once and then stall for ten seconds.
        let want = buf.len().min(self.burst.max(1.0) as usize);
        let n = self.inner.read(&mut buf[..want])?;
        self.tokens -= n as f64;
        Ok(n)
    }
}

/// A reader that fails with `TimedOut` and `message` once `at` has passed. Checked
/// before each read: a read that blocks is bounded by the connection's idle limit, so
/// a transfer ends at most one idle limit after `at`.
pub struct Deadline<R> {
    inner: R,
    at: Instant,
    message: String,
}

impl<R> Deadline<R> {
    pub fn new(inner: R, at: Instant, message: String) -> Self {
        Deadline { inner, at, message }
    }
}

impl<R: Read> Read for Deadline<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if Instant::now() >= self.at {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                self.message.clone(),
            ));
        }
        self.inner.read(buf)
    }
}

#[cfg(test)]
mod pipe_tests {
    use super::*;

    /// Bytes of `file` in the page cache, by `mincore` over a mapping of it (mapping
    /// reads nothing in).
    fn resident(file: &File, len: usize) -> usize {
        use nix::libc;
        let page = 4096;
        // SAFETY: a fresh read-only shared mapping of `len` bytes of a file we hold open;
        // nothing reads through it, and it is unmapped before returning.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(addr, libc::MAP_FAILED);
        let mut vec = vec![0u8; len.div_ceil(page)];
        // SAFETY: `addr` is the page-aligned mapping of `len` bytes made above, and `vec`
        // has one byte per page of it, as mincore writes.
        let rc = unsafe { libc::mincore(addr, len, vec.as_mut_ptr()) };
        // SAFETY: the mapping made above, unmapped once.
        unsafe { libc::munmap(addr, len) };
        assert_eq!(rc, 0, "mincore");
        vec.iter().filter(|&&b| b & 1 == 1).count() * page
    }

    /// Read the way `bundle::pack` reads (512 KiB less a tar header, so no read ends on a
    /// page, and no read past the size it knows), a file read through DropBehind is out
    /// of the page cache once the reader is gone. The kernel keeps a large folio a drop
    /// covers only in part: dropping up to wherever each read ended kept about 2 MiB of
    /// every 16 MiB window here; and the last window stayed until the reader dropped it.
    #[test]
    fn drop_behind_leaves_nothing_of_the_file_in_the_page_cache() {
        // Beside the test binary: a disk's file system (tmpfs pages cannot be dropped).
        let exe = std::env::current_exe().unwrap();
        let dir = tempfile::tempdir_in(exe.parent().unwrap()).unwrap();
        let path = dir.path().join("f");
        // Not a whole number of windows: the last one is left to the drop.
        let len = (88 << 20) + 777_777;
        let mut x = 5u32;
        let data: Vec<u8> = (0..len)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                (x >> 24) as u8
            })
            .collect();
        std::fs::write(&path, &data).unwrap();
        let file = File::open(&path).unwrap();
        file.sync_all().unwrap();
        posix_fadvise(&file, 0, 0, PosixFadviseAdvice::POSIX_FADV_DONTNEED).unwrap();
        let mut r = DropBehind::new(file.try_clone().unwrap());
        let mut buf = vec![0u8; (512 << 10) - 1024];
        let mut total = 0;
        while total < len {
            let want = buf.len().min(len - total);
            let n = r.read(&mut buf[..want]).unwrap();
            assert!(n > 0);
            total += n;
        }
        drop(r);
        let left = resident(&file, len);
        assert!(
            left <= 1 << 20,
            "{left} bytes of {len} left in the page cache"
        );
    }

    #[test]
    fn a_passed_deadline_fails_with_its_message() {
        let mut ok = Deadline::new(
            &b"abc"[..],
            Instant::now() + Duration::from_secs(60),
            "x".into(),
        );
        let mut out = Vec::new();
        ok.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"abc");
        let mut late = Deadline::new(&b"abc"[..], Instant::now(), "too late".into());
        let e = late.read(&mut [0; 4]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(e.to_string(), "too late");
    }

    #[test]
    fn a_closed_pipe_ends_a_dropped_one_fails() {
        let (mut w, mut r) = pipe(2);
        let t = std::thread::spawn(move || {
            w.write_all(&[5u8; 600_000]).unwrap();
            w.close().unwrap();
        });
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        t.join().unwrap();
        assert_eq!(out.len(), 600_000);

        let (mut w, mut r) = pipe(2);
        let t = std::thread::spawn(move || {
            w.write_all(&[5u8; 300_000]).unwrap();
            drop(w);
        });
        let mut out = Vec::new();
        assert_eq!(
            r.read_to_end(&mut out).unwrap_err().kind(),
            io::ErrorKind::BrokenPipe
        );
        t.join().unwrap();

        let (w, mut r) = pipe(2);
        w.fail(io::Error::other("disk error"));
        assert_eq!(
            r.read(&mut [0u8; 10]).unwrap_err().to_string(),
            "disk error"
        );
    }

    #[test]
    fn rate_limit_holds_the_average() {
        let data = vec![7u8; 300_000];
        let mut r = RateLimited::new(&data[..], 1_000_000);
        let t = Instant::now();
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        let secs = t.elapsed().as_secs_f64();
        assert_eq!(out, data);
        // 0.3 s of budget, less the first burst it may not wait for.
        assert!((0.19..0.6).contains(&secs), "{secs} s");
    }
}
