//! The opcode screen: every opcode of a params pickle is walked before anything decodes
//! it, and the pickle is refused unless each one is plain data (no GLOBAL, REDUCE, …) and
//! the nesting, MARK and memo bounds of [`super`] hold.

use super::*;

// ---- the opcode screen ----

/// How an opcode's argument is laid out in the stream.
#[derive(Clone, Copy)]
enum Arg {
    None,
    Line,
    Fixed(usize),
    /// A length prefix of this many little-endian bytes, then that many bytes.
    Counted(usize),
}

/// What the opcode does to the stack, as far as the screen tracks it.
#[derive(Clone, Copy)]
enum Effect {
    /// Pushes a new value.
    Push,
    /// Pushes a memo reference.
    Get,
    /// Turns the top into a memo reference.
    Put,
    Mark,
    /// Pops to the mark and pushes a new value (`TUPLE`, `LIST`, `DICT`, `FROZENSET`).
    Build,
    /// Pops to the mark, the container below stays (`APPENDS`, `SETITEMS`, `ADDITEMS`).
    Extend,
    /// Pops `n`, the container below stays (`APPEND` 1, `SETITEM` 2).
    Pop(usize),
    /// Pops `n` and pushes a new tuple (`TUPLE1..3`).
    Tuple(usize),
    /// No stack effect (`PROTO`, `FRAME`).
    Nothing,
    Stop,
}

fn opcode(op: u8) -> Result<(Arg, Effect), &'static str> {
    use Arg::*;
    use Effect::*;
    Ok(match op {
        b'(' => (None, Mark),
        b'.' => (None, Stop),
        b'F' | b'I' | b'L' | b'S' | b'V' => (Line, Push),
        b'J' => (Fixed(4), Push),
        b'K' => (Fixed(1), Push),
        b'M' => (Fixed(2), Push),
        b'G' => (Fixed(8), Push),
        b'N' | b'}' | b']' | b')' | 0x88 | 0x89 | 0x8f => (None, Push),
        b'T' | b'X' | b'B' | 0x8b => (Counted(4), Push),
        b'U' | b'C' | 0x8a | 0x8c => (Counted(1), Push),
        0x8d | 0x8e | 0x96 => (Counted(8), Push),
        b'a' => (None, Pop(1)),
        b's' => (None, Pop(2)),
        b'e' | b'u' | 0x90 => (None, Extend),
        b't' | b'l' | b'd' | 0x91 => (None, Build),
        0x85 => (None, Tuple(1)),
        0x86 => (None, Tuple(2)),
        0x87 => (None, Tuple(3)),
        b'g' => (Line, Get),
        b'h' => (Fixed(1), Get),
        b'j' => (Fixed(4), Get),
        b'p' => (Line, Put),
        b'q' => (Fixed(1), Put),
        b'r' => (Fixed(4), Put),
        0x94 => (None, Put),
        0x80 => (Fixed(1), Nothing),
        0x95 => (Fixed(8), Nothing),
        b'c' | 0x93 => return Err("globals are not accepted (they name code to run)"),
        b'R' | b'b' | b'i' | b'o' | 0x81 | 0x92 => {
            return Err("objects are not accepted (building them runs code)")
        }
        0x82..=0x84 => return Err("extension codes are not accepted"),
        b'P' | b'Q' => return Err("persistent ids are not accepted"),
        0x97 | 0x98 => return Err("out-of-band buffers are not accepted"),
        b'2' | b'0' | b'1' => {
            return Err("Python never writes it for plain data, and it copies values")
        }
        _ => return Err("unknown opcode"),
    })
}

/// A value on the screen's stack: how it nests, and whether it is a memo reference.
#[derive(Clone, Copy)]
struct Slot {
    /// Container levels in the value (0 for a scalar, 1 for a flat container).
    height: usize,
    /// The memo id, when the slot is a memo reference.
    memo: Option<u32>,
}

/// A memo id as serde-pickle reads it: a `PUT`/`GET` line (ASCII decimal, a trailing
/// `\r` dropped), or the little-endian bytes of the binary forms.
fn memo_id(op: u8, arg: &[u8]) -> Option<u32> {
    match op {
        b'p' | b'g' => {
            let line = arg.strip_suffix(b"\n")?;
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            std::str::from_utf8(line).ok()?.parse().ok()
        }
        b'q' | b'h' => Some(u32::from(arg[0])),
        b'r' | b'j' => Some(u32::from_le_bytes(arg.try_into().ok()?)),
        _ => None,
    }
}

/// Walk the opcodes: only plain-data opcodes, arguments inside the input, one `STOP` at
/// the very end, and no memo store of a memo reference (each would be a deep copy).
/// Nesting is counted here, before serde-pickle allocates anything: its value tree is
/// dropped recursively (a stack frame per level), and each `MARK` costs it a fresh
/// 128-slot vector (5 KiB) that the container built from it keeps — so 128 KiB of
/// `(` or `(t` once took 300 MiB. A value nested deeper than [`MAX_DEPTH`], more than
/// [`MAX_DEPTH`] open marks, or more than [`MAX_MARKS`] marks in all are refused.
/// Returns the pickle to decode: `data` with each `STRING` turned into a `BINSTRING`.
pub(super) fn screen(data: &[u8]) -> Result<Vec<u8>, PickleError> {
    let mut out = Vec::with_capacity(data.len());
    // The VM's stack as far as nesting goes; marks split it as in the VM.
    let mut stack: Vec<Slot> = Vec::new();
    let mut marks: Vec<usize> = Vec::new();
    let mut mark_count = 0usize;
    // The height of each memo entry, updated when it is filled through a reference
    // (Python's pickler stores a container, then appends to it). A container that took
    // a reference before it grew is not revisited: conversion's own depth cap holds
    // there, and serde-pickle's tree keeps such references as leaves.
    let mut memo: std::collections::HashMap<u32, usize> = std::collections::HashMap::new();
    let mut pos = 0usize;
    let malformed = |m: String| PickleError::Malformed(m);
    let nest = |h: usize| {
        if h > MAX_DEPTH {
            Err(PickleError::TooDeep)
        } else {
            Ok(h)
        }
    };
    let tallest = |s: &[Slot]| s.iter().map(|s| s.height).max().unwrap_or(0);
    while pos < data.len() {
        let at = pos;
        let op = data[pos];
        pos += 1;
        let (arg, effect) = opcode(op).map_err(|why| PickleError::Refused {
            opcode: op as char,
            pos: at,
            why,
        })?;
        let need = |pos: usize, n: usize| -> Result<usize, PickleError> {
            pos.checked_add(n)
                .filter(|&end| end <= data.len())
                .ok_or_else(|| malformed(format!("opcode at byte {at} runs past the end")))
        };
        pos = match arg {
            Arg::None => pos,
            Arg::Fixed(n) => need(pos, n)?,
            Arg::Line => match data[pos..].iter().position(|&b| b == b'\n') {
                Some(i) => pos + i + 1,
                None => return Err(malformed(format!("unterminated line at byte {at}"))),
            },
            Arg::Counted(w) => {
                let end = need(pos, w)?;
                let mut len = 0u64;
                for (i, b) in data[pos..end].iter().enumerate() {
                    len |= u64::from(*b) << (8 * i);
                }
                // A BINSTRING length is signed; negative is as wrong as too long.
                let len = usize::try_from(len).map_err(|_| malformed("length overflow".into()))?;
                need(end, len)?
            }
        };
        if op == b'S' {
            let bytes = python_string(&data[at + 1..pos - 1])
                .map_err(|why| malformed(format!("STRING at byte {at}: {why}")))?;
            // Never longer than its literal, itself inside MAX_PICKLE.
            let len = u32::try_from(bytes.len())
                .ok()
                .filter(|&l| l <= i32::MAX as u32)
                .ok_or_else(|| malformed(format!("STRING at byte {at} is too long")))?;
            out.push(b'T');
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(&bytes);
        } else {
            out.extend_from_slice(&data[at..pos]);
        }
        let underflow = || malformed(format!("stack underflow at byte {at}"));
        let base = marks.last().copied().unwrap_or(0);
        let id = || {
            memo_id(op, &data[at + 1..pos])
                .ok_or_else(|| malformed(format!("invalid memo id at byte {at}")))
        };
        match effect {
            Effect::Push => {
                let empty_container = matches!(op, b'}' | b']' | b')' | 0x8f);
                stack.push(Slot {
                    height: usize::from(empty_container),
                    memo: None,
                });
            }
            Effect::Get => {
                let id = id()?;
                let height = *memo.get(&id).ok_or_else(|| {
                    malformed(format!("memo id {id} at byte {at} was never stored"))
                })?;
                stack.push(Slot {
                    height,
                    memo: Some(id),
                });
            }
            Effect::Put => {
                if stack.len() <= base {
                    return Err(underflow());
                }
                let top = stack.last_mut().ok_or_else(underflow)?;
                if top.memo.is_some() {
                    return Err(PickleError::Refused {
                        opcode: op as char,
                        pos: at,
                        why: "a memo store of a memo reference copies the value",
                    });
                }
                // MEMOIZE stores under the memo's size, as serde-pickle and Python do.
                let id = match op {
                    0x94 => u32::try_from(memo.len()).map_err(|_| underflow())?,
                    _ => id()?,
                };
                memo.insert(id, top.height);
                top.memo = Some(id);
            }
            Effect::Mark => {
                // Every open mark becomes a level of the value once closed.
                if marks.len() >= MAX_DEPTH {
                    return Err(PickleError::TooDeep);
                }
                mark_count += 1;
                if mark_count > MAX_MARKS {
                    return Err(PickleError::TooManyMarks);
                }
                marks.push(stack.len());
            }
            Effect::Build | Effect::Extend => {
                let m = marks.pop().ok_or_else(underflow)?;
                let height = nest(1 + tallest(&stack[m..]))?;
                stack.truncate(m);
                if matches!(effect, Effect::Build) {
                    stack.push(Slot { height, memo: None });
                } else {
                    // The container sits just below the mark, inside the enclosing one.
                    if m <= marks.last().copied().unwrap_or(0) {
                        return Err(underflow());
                    }
                    grow(&mut stack[m - 1], height, &mut memo);
                }
            }
            Effect::Pop(n) | Effect::Tuple(n) => {
                // The container (Pop) must stay above the mark too.
                let keep = usize::from(matches!(effect, Effect::Pop(_)));
                if stack.len() < base + n + keep {
                    return Err(underflow());
                }
                let top = stack.len() - n;
                let height = nest(1 + tallest(&stack[top..]))?;
                stack.truncate(top);
                match effect {
                    Effect::Tuple(_) => stack.push(Slot { height, memo: None }),
                    _ => grow(&mut stack[top - 1], height, &mut memo),
                }
            }
            Effect::Nothing => {}
            Effect::Stop => {
                if pos != data.len() {
                    return Err(malformed(format!("data after STOP at byte {at}")));
                }
                if stack.len() != 1 || !marks.is_empty() {
                    return Err(malformed("STOP with an unbalanced stack".into()));
                }
                return Ok(out);
            }
        }
    }
    Err(malformed("no STOP opcode".into()))
}

/// A container filled in place now holds values of `height` - 1 levels: it, and the
/// memo entry it refers to, are at least `height` tall.
fn grow(container: &mut Slot, height: usize, memo: &mut std::collections::HashMap<u32, usize>) {
    container.height = container.height.max(height);
    if let Some(entry) = container.memo.and_then(|id| memo.get_mut(&id)) {
        *entry = (*entry).max(height);
    }
}

/// A protocol-0 `STRING` argument (the line without its newline) as Python reads it:
/// quoted with `'` or `"` at both ends, then `codecs.escape_decode` (Python 2's
/// `string-escape`): `\\ \' \" \a \b \f \n \r \t \v`, `\xHH`, octal `\o`…`\ooo`
/// up to `\377`; any other escape stays as written, backslash included.
pub(super) fn python_string(lit: &[u8]) -> Result<Vec<u8>, String> {
    let inner = match lit {
        [q, inner @ .., e] if q == e && (*q == b'\'' || *q == b'"') => inner,
        _ => return Err("the argument must be quoted".into()),
    };
    let mut out = Vec::with_capacity(inner.len());
    let mut i = 0;
    while i < inner.len() {
        let b = inner[i];
        i += 1;
        if b != b'\\' {
            out.push(b);
            continue;
        }
        let Some(&e) = inner.get(i) else {
            return Err("a trailing backslash".into());
        };
        i += 1;
        match e {
            b'\\' | b'\'' | b'"' => out.push(e),
            b'a' => out.push(0x07),
            b'b' => out.push(0x08),
            b'f' => out.push(0x0c),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(0x0b),
            b'x' => {
                let hex = |at: usize| inner.get(at).and_then(|&c| (c as char).to_digit(16));
                match (hex(i), hex(i + 1)) {
                    (Some(h), Some(l)) => out.push((h * 16 + l) as u8),
                    _ => return Err(format!("invalid \\x escape at byte {}", i - 2)),
                }
                i += 2;
            }
            b'0'..=b'7' => {
                let mut v = u32::from(e - b'0');
                for _ in 0..2 {
                    match inner.get(i) {
                        Some(&d @ b'0'..=b'7') => {
                            v = v * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                let v = u8::try_from(v)
                    .map_err(|_| format!("octal escape \\{v:o} is beyond a byte"))?;
                out.push(v);
            }
            _ => out.extend_from_slice(&[b'\\', e]),
        }
    }
    Ok(out)
}
