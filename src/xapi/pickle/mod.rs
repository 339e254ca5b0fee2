//! Python pickles: the plugin's `params` in, the protocol-0 reply out (DESIGN §2).
//!
//! In: `serde-pickle` builds plain values and never imports or calls anything, unlike
//! the Python plugin's `pickle.loads`. Before it runs, [`screen`] walks the opcodes and
//! admits only those that build plain data (strings, numbers, lists, tuples, dicts,
//! sets): globals, `REDUCE`, `BUILD`, `INST`, `OBJ`, `NEWOBJ`, extensions, persistent ids
//! and buffers are refused outright. `DUP`, `POP` and a memo store of what is already a
//! memo reference are refused too: Python's pickler never writes them, and in
//! `serde-pickle` each one deep-copies a value, so a few bytes of them could demand
//! gigabytes. Protocol 0's quoted `STRING`s are decoded by the screen as Python decodes
//! them (quotes required; `\'`, `\"`, octal and the other escapes Python 2's `repr`
//! writes) and handed on as `BINSTRING`s: serde-pickle's own reading of them accepts
//! unquoted text and refuses `\'`, which Python 2 writes for a string holding both quote
//! characters. Sharing through the memo is expanded on conversion (serde-pickle visits an
//! entry at most as often as the stream references it, so never exponentially); every
//! byte is charged against a budget. The screen also bounds what serde-pickle would
//! build: at most 16 levels of nesting and 1024 marks (`MAX_DEPTH`, `MAX_MARKS`), so any
//! params that fit in one argv string decode, or are refused, in a few MiB (issue 12:
//! 128 KiB of `MARK`s once took 301 MiB). Decoding runs on a thread of our own with a
//! stack sized for that depth.
//!
//! Out: the replies are what Python 2's `pickle.dumps(obj)` (protocol 0) writes —
//! `(dp0\nS'root'\np1\n…ss.` and `N.` — ASCII only, so xapi's handling of the string
//! cannot corrupt them and every Python from 2.4 to 3.12 loads them.

use std::cell::Cell;
use std::fmt;

use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};

/// Larger than any real params (xapi limits an argument to 128 KiB).
pub const MAX_PICKLE: usize = 256 << 10;
/// Deeper than any params of this protocol (`kwargs` → `extra_headers` → value): the
/// most container levels a value may have, and so the most marks open at once.
const MAX_DEPTH: usize = 16;
/// `MARK`s in one pickle. serde-pickle gives each a 128-slot vector (5 KiB) that the
/// container built from it keeps, so this bounds that cost at 5 MiB. Python's pickler
/// writes one per container in protocol 0 and one per tuple of more than three items,
/// or per batch of up to 1000 items, in protocol 2: Nova's params hold a few dozen.
const MAX_MARKS: usize = 1024;
/// Bytes the decoded value may take, counting memo sharing expanded.
const BUDGET: usize = 4 << 20;
/// The decoding thread's stack. The screen bounds nesting at [`MAX_DEPTH`], so
/// decoding, conversion and dropping recurse at most that deep: the unit tests' deepest
/// pickles need between 64 and 128 KiB in a debug build. A thread of our own makes the
/// size ours, not the caller's rlimit; only the pages touched count in RSS.
const STACK: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum PickleError {
    #[error("the pickle is {0} bytes; at most {MAX_PICKLE}")]
    TooLarge(usize),
    #[error("opcode {opcode:?} at byte {pos} is refused: {why}")]
    Refused {
        opcode: char,
        pos: usize,
        why: &'static str,
    },
    #[error("not a pickle: {0}")]
    Malformed(String),
    #[error("not a pickle: {0}")]
    Decode(#[from] serde_pickle::Error),
    #[error("the pickle nests deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("the pickle has more than {MAX_MARKS} MARK opcodes")]
    TooManyMarks,
    #[error("the pickle expands beyond {BUDGET} bytes")]
    TooBig,
    #[error("integer {0} out of range")]
    BigInt(String),
    #[error("cannot start the pickle decoder: {0}")]
    Thread(std::io::Error),
    #[error("the pickle decoder failed")]
    Panicked,
    #[error("reply string {0:?} is not printable ASCII")]
    NotAscii(String),
}

/// A decoded Python value. Tuples and sets become lists; dict keys keep their order
/// of appearance.
#[derive(Debug, Clone, PartialEq)]
pub enum Py {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<Py>),
    Dict(Vec<(Py, Py)>),
}

impl Py {
    pub fn type_name(&self) -> &'static str {
        match self {
            Py::None => "None",
            Py::Bool(_) => "bool",
            Py::Int(_) => "int",
            Py::Float(_) => "float",
            Py::Str(_) => "str",
            Py::Bytes(_) => "bytes",
            Py::List(_) => "list",
            Py::Dict(_) => "dict",
        }
    }

    /// A dict entry by string key.
    pub fn get(&self, key: &str) -> Option<&Py> {
        match self {
            Py::Dict(items) => items
                .iter()
                .find(|(k, _)| matches!(k, Py::Str(s) if s == key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// Python's `str(v)` for the scalars callers put in headers and properties.
    pub fn to_python_str(&self) -> Option<String> {
        match self {
            Py::None => Some("None".into()),
            Py::Bool(true) => Some("True".into()),
            Py::Bool(false) => Some("False".into()),
            Py::Int(i) => Some(i.to_string()),
            Py::Float(f) => Some(format!("{f:?}")),
            Py::Str(s) => Some(s.clone()),
            Py::Bytes(b) => String::from_utf8(b.clone()).ok(),
            Py::List(_) | Py::Dict(_) => None,
        }
    }
}

/// Decode `data` into a [`Py`], refusing anything but plain data.
pub fn decode(data: &[u8]) -> Result<Py, PickleError> {
    if data.len() > MAX_PICKLE {
        return Err(PickleError::TooLarge(data.len()));
    }
    let data = screen(data)?;
    std::thread::Builder::new()
        .name("pickle".into())
        .stack_size(STACK)
        .spawn(move || decode_here(&data))
        .map_err(PickleError::Thread)?
        .join()
        .map_err(|_| PickleError::Panicked)?
}

fn decode_here(data: &[u8]) -> Result<Py, PickleError> {
    let opts = serde_pickle::DeOptions::new().decode_strings();
    let mut de = serde_pickle::Deserializer::new(data, opts);
    let budget = Cell::new(BUDGET);
    let v = Seed {
        depth: 0,
        budget: &budget,
    }
    .deserialize(&mut de)
    .map_err(limit_or)?;
    de.end()?;
    Ok(v)
}

mod screen;

use screen::screen;

// ---- conversion with depth and budget ----

/// Builds a [`Py`], charging every node to the budget and refusing depth beyond the
/// cap, so memo sharing cannot expand without bound.
struct Seed<'b> {
    depth: usize,
    budget: &'b Cell<usize>,
}

// `serde::de::Error::custom` only carries a message: which limit was hit is kept here.
thread_local! {
    static LIMIT: Cell<Option<LimitHit>> = const { Cell::new(None) };
}

#[derive(Clone, Copy)]
enum LimitHit {
    Deep,
    Big,
    BigInt,
}

impl<'b> Seed<'b> {
    fn charge<E: serde::de::Error>(&self, n: usize) -> Result<(), E> {
        match self.budget.get().checked_sub(n.saturating_add(16)) {
            Some(left) => {
                self.budget.set(left);
                Ok(())
            }
            None => Err(limit(LimitHit::Big)),
        }
    }

    fn child(&self) -> Seed<'b> {
        Seed {
            depth: self.depth + 1,
            budget: self.budget,
        }
    }
}

fn limit<E: serde::de::Error>(hit: LimitHit) -> E {
    LIMIT.with(|l| l.set(Some(hit)));
    E::custom("limit")
}

impl<'de> DeserializeSeed<'de> for Seed<'_> {
    type Value = Py;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Py, D::Error> {
        if self.depth > MAX_DEPTH {
            return Err(limit(LimitHit::Deep));
        }
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Seed<'_> {
    type Value = Py;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("plain Python data")
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Py, E> {
        self.charge(0)?;
        Ok(Py::None)
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<Py, E> {
        self.visit_unit()
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Py, E> {
        self.charge(0)?;
        Ok(Py::Bool(v))
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Py, E> {
        self.charge(0)?;
        Ok(Py::Int(v))
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Py, E> {
        self.charge(0)?;
        i64::try_from(v)
            .map(Py::Int)
            .map_err(|_| limit(LimitHit::BigInt))
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Py, E> {
        self.charge(0)?;
        Ok(Py::Float(v))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Py, E> {
        self.charge(v.len())?;
        Ok(Py::Str(v.to_string()))
    }

    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Py, E> {
        self.charge(v.len())?;
        Ok(Py::Str(v))
    }

    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Py, E> {
        self.charge(v.len())?;
        Ok(Py::Bytes(v.to_vec()))
    }

    fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Py, E> {
        self.charge(v.len())?;
        Ok(Py::Bytes(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Py, A::Error> {
        self.charge(0)?;
        let mut items = Vec::new();
        while let Some(v) = seq.next_element_seed(self.child())? {
            items.push(v);
        }
        Ok(Py::List(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Py, A::Error> {
        self.charge(0)?;
        let mut items = Vec::new();
        while let Some(k) = map.next_key_seed(self.child())? {
            let v = map.next_value_seed(self.child())?;
            items.push((k, v));
        }
        Ok(Py::Dict(items))
    }
}

/// serde-pickle reports our limit as a custom message; the side channel says which.
fn limit_or(e: serde_pickle::Error) -> PickleError {
    match LIMIT.with(|l| l.take()) {
        Some(LimitHit::Deep) => PickleError::TooDeep,
        Some(LimitHit::Big) => PickleError::TooBig,
        Some(LimitHit::BigInt) => PickleError::BigInt(e.to_string()),
        None => PickleError::Decode(e),
    }
}

// ---- the protocol-0 encoder ----

/// A reply value: what the plugin returns to Folsom+ callers.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    None,
    Str(String),
    Dict(Vec<(String, Reply)>),
}

/// `pickle.dumps(value)` as Python 2 writes it (protocol 0, memo `p<n>` after each
/// string and dict, `SETITEM` per entry). Only printable ASCII strings are written:
/// anything else is refused rather than escaped into something xapi might mangle.
pub fn encode(value: &Reply) -> Result<String, PickleError> {
    fn string(s: &str, out: &mut String, memo: &mut usize) -> Result<(), PickleError> {
        if !s.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return Err(PickleError::NotAscii(s.to_string()));
        }
        out.push_str("S'");
        for c in s.chars() {
            if c == '\'' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
        out.push_str(&format!("'\np{memo}\n"));
        *memo += 1;
        Ok(())
    }
    fn go(v: &Reply, out: &mut String, memo: &mut usize) -> Result<(), PickleError> {
        match v {
            Reply::None => out.push('N'),
            Reply::Str(s) => string(s, out, memo)?,
            Reply::Dict(items) => {
                out.push_str(&format!("(dp{memo}\n"));
                *memo += 1;
                for (k, v) in items {
                    string(k, out, memo)?;
                    go(v, out, memo)?;
                    out.push('s');
                }
            }
        }
        Ok(())
    }
    let mut out = String::new();
    let mut memo = 0;
    go(value, &mut out, &mut memo)?;
    out.push('.');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_what_python2_writes() {
        let root = Reply::Dict(vec![(
            "root".into(),
            Reply::Dict(vec![("uuid".into(), Reply::Str("u-1".into()))]),
        )]);
        assert_eq!(
            encode(&root).unwrap(),
            "(dp0\nS'root'\np1\n(dp2\nS'uuid'\np3\nS'u-1'\np4\nss."
        );
        assert_eq!(encode(&Reply::None).unwrap(), "N.");
        assert_eq!(
            encode(&Reply::Str("a'\\".into())).unwrap(),
            "S'a\\'\\\\'\np0\n."
        );
        assert!(encode(&Reply::Str("é".into())).is_err());
        assert!(encode(&Reply::Str("a\nb".into())).is_err());
    }

    #[test]
    fn decodes_protocol_0_dicts() {
        // Python 2: pickle.dumps({'kwargs': {'image_id': 'x', 'n': 3, 'l': ['a']}, 'args': ()})
        let p = b"(dp0\nS'args'\np1\n(tp2\nsS'kwargs'\np3\n(dp4\nS'image_id'\np5\nS'x'\np6\nsS'l'\np7\n(lp8\nS'a'\np9\nasS'n'\np10\nI3\nss.";
        let v = decode(p).unwrap();
        let kw = v.get("kwargs").unwrap();
        assert_eq!(kw.get("image_id"), Some(&Py::Str("x".into())));
        assert_eq!(kw.get("n"), Some(&Py::Int(3)));
        assert_eq!(kw.get("l"), Some(&Py::List(vec![Py::Str("a".into())])));
        assert_eq!(v.get("args"), Some(&Py::List(vec![])));
    }

    #[test]
    fn strings_are_read_as_python_reads_them() {
        // Python 2: pickle.dumps({'k': 'a\'b"c', 'j': "it's"}): a string with both
        // quote characters is written with \' (serde-pickle refused it).
        let p = b"(dp0\nS'k'\np1\nS'a\\'b\"c'\np2\nsS'j'\np3\nS\"it's\"\np4\ns.";
        let v = decode(p).unwrap();
        assert_eq!(v.get("k"), Some(&Py::Str("a'b\"c".into())));
        assert_eq!(v.get("j"), Some(&Py::Str("it's".into())));
        let one = |lit: &str| decode(format!("S{lit}\n.").as_bytes());
        assert_eq!(
            one(r"'\t\n\r\\\x41\101\7\q\a'").unwrap(),
            Py::Str("\t\n\r\\AA\u{7}\\q\u{7}".into())
        );
        assert_eq!(one("''").unwrap(), Py::Str(String::new()));
        // What Python refuses ("the STRING opcode argument must be quoted", "invalid \x
        // escape", "Trailing \ in string"); serde-pickle took an unquoted one as text.
        for (bad, why) in [
            ("'r", "quoted"),
            ("r", "quoted"),
            ("'", "quoted"),
            ("'a\"", "quoted"),
            (r"'\x4'", "\\x escape"),
            (r"'a\'", "trailing backslash"),
            (r"'\400'", "beyond a byte"),
        ] {
            match one(bad) {
                Err(PickleError::Malformed(m)) => assert!(m.contains(why), "{bad}: {m}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
        // The fuzz find: an unquoted key came back from our reply as S'\'r', which did
        // not decode. Every reply string decodes to itself.
        let fixture =
            include_bytes!("../../../tests/fixtures/fuzz/pickle_params-unquoted-string.bin");
        assert!(matches!(decode(fixture), Err(PickleError::Malformed(_))));
        for s in ["'r", "a'b\"c", "\\", "\\'", "x\\x41"] {
            let r = Reply::Str(s.into());
            assert_eq!(
                decode(encode(&r).unwrap().as_bytes()).unwrap(),
                Py::Str(s.into())
            );
        }
    }

    #[test]
    fn code_and_copies_are_refused() {
        for bad in [
            &b"cos\nsystem\n(S'touch /tmp/pwned'\ntR."[..],
            b"\x80\x04\x95\x00\x00\x00\x00\x00\x00\x00\x00\x8c\x02os\x8c\x06system\x93.",
            b"S'aaaa'\n2222.",
            b"]q\x00h\x00q\x01.",
            b"]q\x00K\x01aq\x01.",
            b"N0N.",
            b"N",
            b"N.N.",
            b"T\xff\xff\xff\x7fabc.",
            b"a.",
            b"(.",
        ] {
            assert!(decode(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sharing_and_nesting_are_bounded() {
        // One 60 KB string referenced 16 000 times through the memo: 64 KB of pickle
        // that would expand to 1 GB.
        let mut wide = format!("(V{}\np0\n", "x".repeat(60_000)).into_bytes();
        wide.extend_from_slice("g0\n".repeat(16_000).as_bytes());
        wide.extend_from_slice(b"l.");
        assert!(matches!(decode(&wide), Err(PickleError::TooBig)));
        // Nested sharing (l(i+1) = [li, li]) is refused by serde-pickle once a memo
        // entry is visited more often than it is referenced: no exponential expansion.
        let mut nested = "(".repeat(30).into_bytes();
        nested.extend_from_slice(b"Vx\np0\n");
        for i in 0..30 {
            nested.extend_from_slice(format!("g{i}\nlp{}\n", i + 1).as_bytes());
        }
        nested.push(b'.');
        assert!(decode(&nested).is_err());
        // As deep as the size cap allows: an error, not a stack overflow.
        let n = MAX_PICKLE / 2 - 2;
        let mut deep = vec![b']'; n];
        deep.extend(std::iter::repeat_n(b'a', n - 1));
        deep.push(b'.');
        assert!(matches!(decode(&deep), Err(PickleError::TooDeep)));
    }

    /// `head`, `open` × n, `close` × n, `tail`.
    fn nested(head: &[u8], open: &[u8], n: usize, close: &[u8], tail: &[u8]) -> Vec<u8> {
        let mut p = head.to_vec();
        p.extend(open.repeat(n));
        p.extend(close.repeat(n));
        p.extend_from_slice(tail);
        p
    }

    #[test]
    fn nesting_is_refused_by_the_screen_before_decoding() {
        // Each shape at MAX_DEPTH levels decodes; one more is refused by the screen,
        // before serde-pickle allocates anything.
        // (head, open, close, tail, levels the head already holds)
        type Shape<'a> = (&'a [u8], &'a [u8], &'a [u8], &'a [u8], usize);
        let shapes: [Shape; 6] = [
            // Protocol 0 tuples: a mark open per level.
            (b"", b"(", b"t", b".", 0),
            // Protocol 0 lists and dicts as Python 2 writes them.
            (b"(lp0\n", b"(l", b"a", b".", 1),
            (b"(dp0\n", b"S'k'\n(d", b"s", b".", 1),
            // Protocol 2: empty lists appended, dicts set, TUPLE1 around None.
            (b"\x80\x02]", b"]", b"a", b".", 1),
            (b"\x80\x02}", b"K\x00}", b"s", b".", 1),
            (b"\x80\x02N", b"\x85", b"", b".", 0),
        ];
        for (head, open, close, tail, levels_in_head) in shapes {
            let n = MAX_DEPTH - levels_in_head;
            let ok = nested(head, open, n, close, tail);
            decode(&ok).unwrap_or_else(|e| panic!("{ok:?}: {e}"));
            let deep = nested(head, open, n + 1, close, tail);
            assert!(
                matches!(screen(&deep), Err(PickleError::TooDeep)),
                "{deep:?}"
            );
            assert_eq!(
                decode(&deep).unwrap_err().to_string(),
                "the pickle nests deeper than 16 levels"
            );
        }
        // Protocol 2 lists filled through APPENDS: the mark above each list counts.
        let ok = nested(b"\x80\x02", b"](", MAX_DEPTH, b"e", b".");
        decode(&ok).unwrap();
        let deep = nested(b"\x80\x02", b"](", MAX_DEPTH + 1, b"e", b".");
        assert!(matches!(screen(&deep), Err(PickleError::TooDeep)));
        // Marks left open are refused as soon as there are too many, whatever follows.
        let open = nested(b"", b"(", 100_000, b"", b"N.");
        assert!(matches!(screen(&open), Err(PickleError::TooDeep)));
    }

    #[test]
    fn filling_through_the_memo_counts() {
        // Python writes a container, stores it, then fills it through the stack top,
        // which is then a memo reference: the entry's height follows, so a reference
        // taken afterwards carries it. Memo 0 is a list stored empty and then given an
        // empty list (2 levels); a nest of lists holds a reference to it, and a tuple
        // holds both.
        let wrapped = |n: usize| {
            let mut p = b"\x80\x02]q\x00]a".to_vec();
            p.extend(b"]".repeat(n));
            p.extend(b"h\x00");
            p.extend(b"a".repeat(n));
            p.extend(b"\x86.");
            p
        };
        let ok = wrapped(MAX_DEPTH - 3);
        decode(&ok).unwrap_or_else(|e| panic!("{ok:?}: {e}"));
        assert!(matches!(
            screen(&wrapped(MAX_DEPTH - 2)),
            Err(PickleError::TooDeep)
        ));
        // Lists linked through references after they were taken: the screen does not
        // see the chain (serde-pickle keeps references as leaves, so nothing deep is
        // built), and conversion's own cap refuses it.
        let n = 200u32;
        let mut chain = b"\x80\x02(".to_vec();
        for i in 0..n {
            chain.extend(b"]r");
            chain.extend(i.to_le_bytes());
        }
        for i in 0..n - 1 {
            chain.push(b'j');
            chain.extend(i.to_le_bytes());
            chain.push(b'j');
            chain.extend((i + 1).to_le_bytes());
            chain.push(b'a');
        }
        chain.extend(b"l.");
        assert!(screen(&chain).is_ok());
        assert!(matches!(decode(&chain), Err(PickleError::TooDeep)));
        // A reference to an id never stored is refused by the screen.
        assert!(
            matches!(screen(b"g7\n."), Err(PickleError::Malformed(m)) if m.contains("never stored"))
        );
    }

    #[test]
    fn marks_are_counted() {
        // Python 2's protocol 0 writes a mark per container: MAX_MARKS of them decode.
        let ok = nested(b"(", b"(t", MAX_MARKS - 1, b"", b"l.");
        assert_eq!(
            decode(&ok).unwrap(),
            Py::List(vec![Py::List(vec![]); MAX_MARKS - 1])
        );
        let many = nested(b"(", b"(t", MAX_MARKS, b"", b"l.");
        assert!(matches!(screen(&many), Err(PickleError::TooManyMarks)));
        assert_eq!(
            decode(&many).unwrap_err().to_string(),
            "the pickle has more than 1024 MARK opcodes"
        );
    }
}
