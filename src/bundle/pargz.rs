//! One gzip member compressed on all cores (the pigz scheme).
//!
//! The input is cut into 512 KiB blocks (with pigz's 128 KiB, priming the dictionaries
//! took a quarter of the time). Each block is deflated on a worker thread as a
//! raw deflate stream primed with the previous block's last 32 KiB as dictionary (so the
//! ratio stays close to single-threaded gzip) and ended with a sync flush, which leaves
//! it byte-aligned and not final; the last block is finished instead. Their
//! concatenation is one valid deflate stream. The CRC-32 of each block is combined in
//! order. Readers (`gzip -d`, GNU tar, Python `tarfile` in `r|gz` mode) see a plain
//! single-member gzip file. Which deflate engine makes the blocks is the level's
//! ([`super::codec`]: ISA-L for 1–3, zlib-rs for 4–9).

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::codec::BlockDeflater;

const BLOCK: usize = 512 << 10;
const DICT: usize = 32 << 10;

struct Job {
    /// A whole block buffer ([`BLOCK`] bytes), of which the first `len` are the block.
    input: Vec<u8>,
    len: usize,
    /// A recycled output buffer (empty).
    output: Vec<u8>,
    dict: Option<Arc<[u8]>>,
    last: bool,
    reply: SyncSender<io::Result<Done>>,
}

/// Buffers go round and come back: musl's allocator maps and unmaps every large
/// allocation, and a fresh block buffer per job cost more system time than deflate.
struct Done {
    output: Vec<u8>,
    input: Vec<u8>,
    crc: crc32fast::Hasher,
}

/// A `Write` that gzips what it is given on `threads` worker threads. Call
/// [`ParGzWriter::finish`]: dropping it leaves the stream without its end, which is what
/// an aborted upload wants.
pub struct ParGzWriter<W: Write> {
    inner: W,
    /// Always [`BLOCK`] bytes long: [`ParGzWriter::read_from`] reads into it in place,
    /// and `filled` says how much of it is the next block.
    block: Vec<u8>,
    filled: usize,
    dict: Option<Arc<[u8]>>,
    pending: VecDeque<Receiver<io::Result<Done>>>,
    spare_inputs: Vec<Vec<u8>>,
    spare_outputs: Vec<Vec<u8>>,
    jobs: Option<SyncSender<Job>>,
    workers: Vec<JoinHandle<()>>,
    crc: crc32fast::Hasher,
    total: u64,
    max_pending: usize,
}

impl<W: Write> ParGzWriter<W> {
    /// `level` 1–9 as gzip's; `threads` ≥ 1.
    pub fn new(mut inner: W, level: u32, threads: usize) -> io::Result<ParGzWriter<W>> {
        let level = level.clamp(1, 9);
        let threads = threads.max(1);
        // The gzip header: no name, no mtime, XFL as gzip sets it, OS = Unix.
        let xfl = match level {
            9 => 2,
            1 => 4,
            _ => 0,
        };
        inner.write_all(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, xfl, 3])?;
        let (tx, rx) = sync_channel::<Job>(threads * 2);
        let rx = Arc::new(Mutex::new(rx));
        let workers = (0..threads)
            .map(|i| {
                let rx = Arc::clone(&rx);
                std::thread::Builder::new()
                    .name(format!("gzip-{i}"))
                    .spawn(move || worker(rx, level))
                    .expect("spawn a gzip worker")
            })
            .collect();
        Ok(ParGzWriter {
            inner,
            block: vec![0; BLOCK],
            filled: 0,
            dict: None,
            pending: VecDeque::new(),
            spare_inputs: Vec::new(),
            spare_outputs: Vec::new(),
            jobs: Some(tx),
            workers,
            crc: crc32fast::Hasher::new(),
            total: 0,
            max_pending: threads * 3,
        })
    }

    /// Read `r` to its end straight into the blocks, and return how many bytes it gave.
    /// `io::copy` into `write` would copy every byte of the VHDs twice more: into a
    /// buffer of its own, then into the block.
    pub fn read_from(&mut self, r: &mut dyn io::Read) -> io::Result<u64> {
        let mut total = 0u64;
        loop {
            let n = match r.read(&mut self.block[self.filled..]) {
                Ok(0) => return Ok(total),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.filled += n;
            self.total += n as u64;
            total += n as u64;
            if self.filled == BLOCK {
                self.submit(false)?;
            }
        }
    }

    fn submit(&mut self, last: bool) -> io::Result<()> {
        let fresh = self.spare_inputs.pop().unwrap_or_else(|| vec![0; BLOCK]);
        let input = std::mem::replace(&mut self.block, fresh);
        let len = std::mem::take(&mut self.filled);
        let next_dict: Arc<[u8]> = Arc::from(&input[len.saturating_sub(DICT)..len]);
        let (reply, rx) = sync_channel(1);
        let job = Job {
            input,
            len,
            output: self.spare_outputs.pop().unwrap_or_default(),
            dict: self.dict.take(),
            last,
            reply,
        };
        self.jobs
            .as_ref()
            .expect("not finished")
            .send(job)
            .map_err(|_| io::Error::other("gzip workers are gone"))?;
        self.dict = Some(next_dict);
        self.pending.push_back(rx);
        while self.pending.len() > self.max_pending {
            self.write_oldest()?;
        }
        Ok(())
    }

    fn write_oldest(&mut self) -> io::Result<()> {
        let rx = self.pending.pop_front().expect("pending");
        let mut done = rx
            .recv()
            .map_err(|_| io::Error::other("a gzip worker died"))??;
        self.crc.combine(&done.crc);
        self.inner.write_all(&done.output)?;
        done.output.clear();
        self.spare_outputs.push(done.output);
        self.spare_inputs.push(done.input);
        Ok(())
    }

    /// Compress the rest, write the trailer, and return the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.submit(true)?;
        while !self.pending.is_empty() {
            self.write_oldest()?;
        }
        let crc = self.crc.clone().finalize();
        self.inner.write_all(&crc.to_le_bytes())?;
        self.inner.write_all(&(self.total as u32).to_le_bytes())?;
        self.inner.flush()?;
        self.jobs = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        Ok(self.inner)
    }
}

impl<W: Write> Write for ParGzWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(BLOCK - self.filled);
        self.block[self.filled..self.filled + n].copy_from_slice(&buf[..n]);
        self.filled += n;
        self.total += n as u64;
        if self.filled == BLOCK {
            self.submit(false)?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn worker(jobs: Arc<Mutex<Receiver<Job>>>, level: u32) {
    // One deflater per worker: the level picks its engine, and codec decides what it
    // keeps between blocks.
    let mut d = BlockDeflater::new(level);
    loop {
        let job = match jobs.lock() {
            Ok(rx) => match rx.recv() {
                Ok(j) => j,
                Err(_) => return,
            },
            Err(_) => return,
        };
        let reply = job.reply.clone();
        let _ = reply.send(deflate_block(&mut d, job));
    }
}

fn deflate_block(d: &mut BlockDeflater, job: Job) -> io::Result<Done> {
    let mut out = job.output;
    let input = &job.input[..job.len];
    d.deflate(job.dict.as_deref(), input, job.last, &mut out)?;
    let mut crc = crc32fast::Hasher::new();
    crc.update(input);
    Ok(Done {
        output: out,
        input: job.input,
        crc,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::Compression;
    use std::io::Read;

    fn roundtrip(data: &[u8], level: u32, threads: usize) {
        let mut w = ParGzWriter::new(Vec::new(), level, threads).unwrap();
        // Odd write sizes cross block boundaries.
        for chunk in data.chunks(77_777) {
            w.write_all(chunk).unwrap();
        }
        let gz = w.finish().unwrap();
        let mut out = Vec::new();
        let mut d = flate2::read::GzDecoder::new(&gz[..]);
        d.read_to_end(&mut out).unwrap();
        assert_eq!(out, data, "level {level} threads {threads}");
        // A single member: nothing after the trailer.
        let mut rest = Vec::new();
        d.into_inner().read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
    }

    #[test]
    fn roundtrips_at_every_size_and_level() {
        let mut data = Vec::new();
        let mut x = 12345u32;
        for i in 0..1_500_000u32 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            // Mixed: compressible runs and noise.
            data.push(if i % 3000 < 1500 {
                (i / 1000) as u8
            } else {
                (x >> 24) as u8
            });
        }
        for (len, level, threads) in [
            (0, 6, 2),
            (1, 6, 2),
            (BLOCK, 1, 1),
            (BLOCK + 1, 9, 3),
            (data.len(), 6, 2),
        ] {
            roundtrip(&data[..len], level, threads);
        }
    }

    /// Reading into the blocks in place makes the same bytes as writing them, whatever
    /// sizes the reader hands out.
    #[test]
    fn read_from_makes_what_write_makes() {
        struct Dribble<'a>(&'a [u8], usize);
        impl Read for Dribble<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                self.1 = self.1 % 70_001 + 4093;
                let n = buf.len().min(self.1).min(self.0.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let data: Vec<u8> = (0..3 * BLOCK as u32 + 777)
            .map(|i| (i % 251) as u8 ^ (i >> 13) as u8)
            .collect();
        for level in [1, 6] {
            let mut w = ParGzWriter::new(Vec::new(), level, 2).unwrap();
            w.write_all(&data[..100]).unwrap();
            w.write_all(&data[100..]).unwrap();
            let written = w.finish().unwrap();
            let mut r = ParGzWriter::new(Vec::new(), level, 2).unwrap();
            r.write_all(&data[..100]).unwrap();
            assert_eq!(
                r.read_from(&mut Dribble(&data[100..], 0)).unwrap(),
                data.len() as u64 - 100
            );
            assert!(r.finish().unwrap() == written, "level {level}");
        }
    }

    #[test]
    fn dictionary_keeps_the_ratio_close_to_serial_gzip() {
        let text: Vec<u8> = (0..2_000_000u32)
            .map(|i| {
                b"the quick brown fox jumps over the lazy dog "[(i % 44) as usize]
                    ^ ((i / 7919) as u8 & 1)
            })
            .collect();
        let mut w = ParGzWriter::new(Vec::new(), 6, 2).unwrap();
        w.write_all(&text).unwrap();
        let ours = w.finish().unwrap().len();
        let mut serial = flate2::write::GzEncoder::new(Vec::new(), Compression::new(6));
        serial.write_all(&text).unwrap();
        let theirs = serial.finish().unwrap().len();
        assert!(
            ours as f64 <= theirs as f64 * 1.10 + 1024.0,
            "parallel {ours} bytes vs serial {theirs}"
        );
    }
}
