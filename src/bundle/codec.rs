//! The deflate engines behind [`super::pargz`], and the one place a level picks its engine.
//!
//! Levels 1–3 go to ISA-L's igzip: on 512 KiB blocks of the bench image, one thread, it
//! deflates at 565/538/295 MB/s where zlib-rs does 256/141/122, at ratios 0.371/0.367/0.361
//! against zlib-rs's 0.426/0.358/0.345 (README "Performance"). ISA-L stops at its level
//! 3, so levels 4–9 stay on zlib-rs, where the ratio is what the level asks for. Both engines make the same thing of a block: raw deflate primed with the
//! previous block's last 32 KiB as dictionary, ended with a sync flush (byte-aligned, not
//! final) or, for the last block, finished — so the blocks concatenate into one deflate
//! stream whatever engine made them.

use std::io;

use flate2::{Compress, Compression, FlushCompress, Status};

/// The deflate implementation a level uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// ISA-L's igzip (levels 1–3 as its levels 1–3).
    Isal,
    /// zlib-rs through flate2 (levels 4–9).
    ZlibRs,
}

impl Engine {
    /// The engine for a gzip level (1–9; out-of-range levels are clamped first).
    pub fn for_level(level: u32) -> Engine {
        match level.clamp(1, 9) {
            1..=3 => Engine::Isal,
            _ => Engine::ZlibRs,
        }
    }
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Engine::Isal => "ISA-L igzip",
            Engine::ZlibRs => "zlib-rs",
        })
    }
}

/// One worker's deflater. ISA-L's state is reused block after block (its reset is
/// complete); zlib-rs gets a fresh state per block, because after `reset` and
/// `set_dictionary` it still compresses some blocks differently from a fresh one, which
/// made a tarball's bytes depend on which worker took which block. The fresh state
/// costs 1–3 % at level 6 (musl maps and unmaps its few hundred KiB each time).
pub struct BlockDeflater {
    inner: Inner,
}

enum Inner {
    Zlib(Compression),
    Isal(isal::Deflater),
}

impl BlockDeflater {
    /// A deflater for `level` (1–9, clamped) on the engine [`Engine::for_level`] picks.
    pub fn new(level: u32) -> BlockDeflater {
        BlockDeflater::with_engine(Engine::for_level(level), level)
    }

    /// A deflater on a given engine (to compare them); ISA-L clamps levels above its 3.
    pub fn with_engine(engine: Engine, level: u32) -> BlockDeflater {
        let level = level.clamp(1, 9);
        let inner = match engine {
            Engine::Isal => Inner::Isal(isal::Deflater::new(level)),
            Engine::ZlibRs => Inner::Zlib(Compression::new(level)),
        };
        BlockDeflater { inner }
    }

    /// The engine this deflater runs.
    pub fn engine(&self) -> Engine {
        match self.inner {
            Inner::Zlib(_) => Engine::ZlibRs,
            Inner::Isal(_) => Engine::Isal,
        }
    }

    /// Append `input` to `out` as raw deflate that may refer back into `dict` (the bytes
    /// just before it; at most the last 32 KiB count), ended by a sync flush, or finished
    /// when `last`.
    pub fn deflate(
        &mut self,
        dict: Option<&[u8]>,
        input: &[u8],
        last: bool,
        out: &mut Vec<u8>,
    ) -> io::Result<()> {
        // Deflate's worst case is stored blocks: 5 bytes per 64 KiB over the input.
        out.reserve(input.len() + input.len() / 8 + 1024);
        match &mut self.inner {
            Inner::Zlib(level) => zlib_block(*level, dict, input, last, out),
            Inner::Isal(d) => d.block(dict, input, last, out),
        }
    }
}

fn zlib_block(
    level: Compression,
    dict: Option<&[u8]>,
    input: &[u8],
    last: bool,
    out: &mut Vec<u8>,
) -> io::Result<()> {
    let c = &mut Compress::new(level, false);
    if let Some(d) = dict {
        c.set_dictionary(d).map_err(io::Error::other)?;
    }
    let flush = if last {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    loop {
        if out.capacity() - out.len() < 1024 {
            out.reserve(out.capacity());
        }
        let status = c
            .compress_vec(&input[c.total_in() as usize..], out, flush)
            .map_err(io::Error::other)?;
        let consumed = c.total_in() as usize == input.len();
        match (last, status) {
            (true, Status::StreamEnd) => return Ok(()),
            // A sync flush is complete once all input is in and deflate left room.
            (false, _) if consumed && out.len() < out.capacity() => return Ok(()),
            _ => {}
        }
    }
}

/// ISA-L's streaming deflate through the raw `isal-sys` functions: `isal-rs`'s encoders
/// have no dictionary or sync flush, which the one-member scheme needs.
mod isal {
    use std::io;

    use isal_sys::igzip_lib as sys;

    pub struct Deflater {
        // Boxed: the state is 80 KiB (its own 64 KiB input buffer) and ISA-L keeps no
        // pointer into it between calls, so it may move with the box.
        stream: Box<sys::isal_zstream>,
        // Levels 1–3 need this scratch (hash table, match buffer); `stream.level_buf`
        // points into it, so it lives exactly as long as the stream.
        _level_buf: Box<[u8]>,
    }

    impl Deflater {
        pub fn new(level: u32) -> Deflater {
            let level = level.clamp(1, sys::ISAL_DEF_MAX_LEVEL);
            // Zeroed on the heap (Box::new_zeroed needs a newer Rust than ours).
            let layout = std::alloc::Layout::new::<sys::isal_zstream>();
            // SAFETY: the layout is isal_zstream's, which is not zero-sized.
            let p = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<sys::isal_zstream>();
            if p.is_null() {
                std::alloc::handle_alloc_error(layout);
            }
            // SAFETY: `p` comes from the global allocator with isal_zstream's layout, and
            // all-zero bytes are a valid isal_zstream (a C struct of integers, arrays and
            // raw pointers); isal_deflate_init then sets every field isal_deflate reads.
            let mut stream = unsafe { Box::from_raw(p) };
            // SAFETY: `stream` is a valid, exclusively borrowed isal_zstream.
            unsafe { sys::isal_deflate_init(&mut *stream) };
            // The level buffer holds the tokens ISA-L collects before it makes the next
            // Huffman table. Its "small" size (16 Ki tokens, not the default 64 Ki)
            // makes tables for less data, which fit it better: on the bench image
            // −1.2 % size at levels 1 and 2 and −1.0 % at 3, for no CPU we could tell
            // from the noise at 1 and 2 (README "Performance").
            let size = match level {
                1 => sys::ISAL_DEF_LVL1_SMALL,
                2 => sys::ISAL_DEF_LVL2_SMALL,
                _ => sys::ISAL_DEF_LVL3_SMALL,
            };
            let mut level_buf = vec![0u8; size as usize].into_boxed_slice();
            stream.level = level;
            stream.level_buf = level_buf.as_mut_ptr();
            stream.level_buf_size = size;
            // Raw deflate: pargz writes the gzip header and trailer itself.
            stream.gzip_flag = sys::ISAL_DEFLATE as u16;
            Deflater {
                stream,
                _level_buf: level_buf,
            }
        }

        pub fn block(
            &mut self,
            dict: Option<&[u8]>,
            input: &[u8],
            last: bool,
            out: &mut Vec<u8>,
        ) -> io::Result<()> {
            let avail_in = u32::try_from(input.len())
                .map_err(|_| io::Error::other("a deflate block over 4 GiB"))?;
            let s = &mut *self.stream;
            // SAFETY: `s` is an initialised stream (new) that only this call uses.
            unsafe { sys::isal_deflate_reset(s) };
            if let Some(d) = dict.filter(|d| !d.is_empty()) {
                // ISA-L keeps only the last 32 KiB itself; cutting here keeps the length
                // in u32 whatever the caller passed.
                let d = &d[d.len().saturating_sub(sys::IGZIP_HIST_SIZE as usize)..];
                // SAFETY: right after a reset the stream accepts a dictionary; ISA-L
                // copies `d.len()` bytes out of `d` (it never writes through the pointer,
                // which is `*mut` only in the C prototype).
                let rc =
                    unsafe { sys::isal_deflate_set_dict(s, d.as_ptr().cast_mut(), d.len() as u32) };
                if rc != sys::COMP_OK as i32 {
                    return Err(io::Error::other(format!(
                        "ISA-L refused the deflate dictionary (code {rc})"
                    )));
                }
            }
            s.next_in = input.as_ptr().cast_mut();
            s.avail_in = avail_in;
            s.end_of_stream = u16::from(last);
            s.flush = if last {
                sys::NO_FLUSH as u16
            } else {
                sys::SYNC_FLUSH as u16
            };
            loop {
                if out.capacity() - out.len() < 1024 {
                    out.reserve(out.capacity().max(64 << 10));
                }
                let spare = out.spare_capacity_mut();
                let room = u32::try_from(spare.len()).unwrap_or(u32::MAX);
                s.next_out = spare.as_mut_ptr().cast::<u8>();
                s.avail_out = room;
                // SAFETY: next_in/avail_in describe the live `input` slice (ISA-L only
                // reads it and advances next_in within it); next_out/avail_out describe
                // `out`'s spare capacity, which ISA-L writes at most `room` bytes of; the
                // stream and its level buffer are valid and exclusively ours.
                let rc = unsafe { sys::isal_deflate(s) };
                if rc != sys::COMP_OK as i32 {
                    return Err(io::Error::other(format!(
                        "ISA-L deflate failed (code {rc})"
                    )));
                }
                let written = (room - s.avail_out) as usize;
                // SAFETY: ISA-L initialised exactly `written` bytes of the spare capacity.
                unsafe { out.set_len(out.len() + written) };
                let state = s.internal_state.state;
                let done = if last {
                    state == sys::isal_zstate_state_ZSTATE_END
                } else {
                    // All input taken and the flush's empty stored block written (ISA-L
                    // returns to a new block header only then), with room to spare.
                    s.avail_in == 0
                        && s.avail_out > 0
                        && state == sys::isal_zstate_state_ZSTATE_NEW_HDR
                };
                if done {
                    return Ok(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn sample(len: usize) -> Vec<u8> {
        let mut x = 99u32;
        (0..len as u32)
            .map(|i| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                if i % 5000 < 2500 {
                    b"dom0 blocks "[(i % 12) as usize]
                } else {
                    (x >> 24) as u8
                }
            })
            .collect()
    }

    /// Blocks made with a dictionary and a sync flush, then a finished one, inflate as
    /// one raw deflate stream to the input — on both engines, at every level.
    #[test]
    fn blocks_chain_into_one_deflate_stream_at_every_level() {
        let data = sample(700_000);
        let cuts = [0, 1, 40_000, 300_000, 300_001, data.len()];
        for level in 1..=9 {
            let mut d = BlockDeflater::new(level);
            assert_eq!(
                d.engine(),
                if level <= 3 {
                    Engine::Isal
                } else {
                    Engine::ZlibRs
                }
            );
            let mut out = Vec::new();
            for w in cuts.windows(2) {
                let dict = &data[w[0].saturating_sub(32 << 10)..w[0]];
                let last = w[1] == data.len();
                d.deflate(Some(dict), &data[w[0]..w[1]], last, &mut out)
                    .unwrap();
            }
            let mut back = Vec::new();
            flate2::read::DeflateDecoder::new(&out[..])
                .read_to_end(&mut back)
                .unwrap();
            assert!(back == data, "level {level}: round trip differs");
            assert!(
                out.len() < data.len() * 7 / 10,
                "level {level}: {} bytes",
                out.len()
            );
        }
    }

    /// A block's bytes depend only on the block and its dictionary, not on what the
    /// deflater made before: workers take blocks in any order, and the same chain must
    /// pack to the same bytes (the same checksum in the store).
    #[test]
    fn a_block_does_not_depend_on_the_blocks_before() {
        // Machine code (this test binary): where zlib-rs's reset state showed through.
        let mut data = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        data.truncate(4 << 20);
        data.extend_from_slice(&sample(4 << 20));
        let b = 512 << 10;
        for level in 1..=9 {
            let mut used = BlockDeflater::new(level);
            let mut scratch = Vec::new();
            for i in (1..data.len() / b).rev() {
                let (dict, block) = (&data[i * b - (32 << 10)..i * b], &data[i * b..(i + 1) * b]);
                let mut after_others = Vec::new();
                used.deflate(Some(dict), block, false, &mut after_others)
                    .unwrap();
                let mut fresh = Vec::new();
                BlockDeflater::new(level)
                    .deflate(Some(dict), block, false, &mut fresh)
                    .unwrap();
                assert!(after_others == fresh, "level {level}, block {i}");
                // Something else in between, as another job would be.
                used.deflate(None, &data[..i * 1000], true, &mut scratch)
                    .unwrap();
            }
        }
    }

    /// The dictionary is used: a block that repeats its dictionary compresses to almost
    /// nothing (without it, noise stays noise).
    #[test]
    fn isal_dictionary_primes_the_block() {
        let mut x = 7u32;
        let noise: Vec<u8> = (0..32 << 10)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                (x >> 24) as u8
            })
            .collect();
        for level in 1..=3 {
            let mut d = BlockDeflater::new(level);
            let mut primed = Vec::new();
            d.deflate(Some(&noise), &noise, true, &mut primed).unwrap();
            let mut cold = Vec::new();
            d.deflate(None, &noise, true, &mut cold).unwrap();
            assert!(
                primed.len() < 2048,
                "level {level}: primed {}",
                primed.len()
            );
            assert!(cold.len() > 30_000, "level {level}: cold {}", cold.len());
            // The primed block decodes after a stream that produced the dictionary: the
            // dictionary's own (sync-flushed) deflate, then the block.
            let mut back = Vec::new();
            let mut stream = Vec::new();
            BlockDeflater::new(level)
                .deflate(None, &noise, false, &mut stream)
                .unwrap();
            stream.extend_from_slice(&primed);
            flate2::read::DeflateDecoder::new(&stream[..])
                .read_to_end(&mut back)
                .unwrap();
            assert!(back[noise.len()..] == noise[..], "level {level}");
        }
    }
}
