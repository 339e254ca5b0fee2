//! XML-RPC as xapi and Python speak it: parse a `methodCall` (what xapi passes the
//! plugin) or a `methodResponse` (what xapi answers our XenAPI calls), and write both.
//!
//! Two dialects meet here (DESIGN §1): xapi writes strings as bare `<value>text</value>`,
//! an empty string as `<value/>`, and no XML declaration; Python's `xmlrpc.client` writes
//! `<value><string>…</string></value>`, a declaration and newlines between elements.
//! Both parse with a real XML parser (quick-xml): entities and character references are
//! resolved, a DTD is refused (no entity expansion), and depth and size are capped so
//! hostile input gives an error, never a crash.
//!
//! Responses are written byte for byte as Python's `xmlrpc.client.dumps(..., '', True)`
//! writes them: that is what the Python plugins printed and what xapi has always parsed.

use quick_xml::events::Event;
use quick_xml::Reader;

/// The largest document we parse: xapi passes at most 128 KiB per argv string; a direct
/// caller may send params as base64, a third larger.
pub const MAX_XML: usize = 1 << 20;
/// Deeper than any call or response of this protocol (a VBD record is 5 levels).
const MAX_DEPTH: usize = 32;
/// Elements in one document.
const MAX_NODES: usize = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum XmlRpcError {
    #[error("the XML is {0} bytes; at most {MAX_XML}")]
    TooLarge(usize),
    #[error("not well-formed XML at byte {pos}: {msg}")]
    Xml { pos: u64, msg: String },
    #[error("XML nested deeper than {MAX_DEPTH} elements")]
    TooDeep,
    #[error("more than {MAX_NODES} XML elements")]
    TooManyNodes,
    #[error("a DTD is not accepted in XML-RPC")]
    Dtd,
    #[error("unknown entity &{0};")]
    Entity(String),
    #[error("expected {expected}, found <{found}>")]
    Unexpected {
        expected: &'static str,
        found: String,
    },
    #[error("<{element}>: {msg}")]
    BadValue { element: String, msg: String },
}

/// An XML-RPC value.
#[derive(Debug, Clone, PartialEq)]
pub enum XValue {
    Str(String),
    Int(i64),
    Bool(bool),
    Double(f64),
    Base64(Vec<u8>),
    DateTime(String),
    Array(Vec<XValue>),
    /// Members in document order.
    Struct(Vec<(String, XValue)>),
    Nil,
}

impl XValue {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            XValue::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn member(&self, name: &str) -> Option<&XValue> {
        match self {
            XValue::Struct(m) => m.iter().find(|(k, _)| k == name).map(|(_, v)| v),
            _ => None,
        }
    }
}

/// A parsed `methodCall`.
#[derive(Debug, Clone, PartialEq)]
pub struct MethodCall {
    pub method: String,
    pub params: Vec<XValue>,
}

/// A parsed element: its name, its character data (concatenated) and its children.
#[derive(Debug, Default)]
struct Node {
    name: String,
    text: String,
    children: Vec<Node>,
}

/// Build the element tree without recursion (an explicit stack), with the caps.
fn tree(xml: &str) -> Result<Node, XmlRpcError> {
    if xml.len() > MAX_XML {
        return Err(XmlRpcError::TooLarge(xml.len()));
    }
    let mut r = Reader::from_str(xml);
    // Text is data here (a pickle keeps its newlines): never trim it.
    r.config_mut().trim_text(false);
    r.config_mut().check_end_names = true;
    let mut stack: Vec<Node> = Vec::new();
    let mut root: Option<Node> = None;
    let mut nodes = 0usize;
    let xml_err = |r: &Reader<&[u8]>, msg: String| XmlRpcError::Xml {
        pos: r.buffer_position(),
        msg,
    };
    loop {
        let ev = r.read_event().map_err(|e| xml_err(&r, e.to_string()))?;
        let open = |e: &quick_xml::events::BytesStart| -> Result<Node, XmlRpcError> {
            let name = std::str::from_utf8(e.name().as_ref())
                .map_err(|e| XmlRpcError::Xml {
                    pos: 0,
                    msg: e.to_string(),
                })?
                .to_string();
            Ok(Node {
                name,
                ..Node::default()
            })
        };
        match ev {
            Event::Start(e) => {
                if root.is_some() {
                    return Err(xml_err(&r, "content after the root element".into()));
                }
                nodes += 1;
                if nodes > MAX_NODES {
                    return Err(XmlRpcError::TooManyNodes);
                }
                if stack.len() >= MAX_DEPTH {
                    return Err(XmlRpcError::TooDeep);
                }
                stack.push(open(&e)?);
            }
            Event::Empty(e) => {
                if root.is_some() {
                    return Err(xml_err(&r, "content after the root element".into()));
                }
                nodes += 1;
                if nodes > MAX_NODES {
                    return Err(XmlRpcError::TooManyNodes);
                }
                let n = open(&e)?;
                match stack.last_mut() {
                    Some(p) => p.children.push(n),
                    None => root = Some(n),
                }
            }
            Event::End(_) => {
                let n = stack
                    .pop()
                    .ok_or_else(|| xml_err(&r, "unbalanced end tag".into()))?;
                match stack.last_mut() {
                    Some(p) => p.children.push(n),
                    None => root = Some(n),
                }
            }
            Event::Text(t) => {
                let s = t.xml10_content().map_err(|e| xml_err(&r, e.to_string()))?;
                match stack.last_mut() {
                    Some(p) => p.text.push_str(&s),
                    None if s.trim().is_empty() => {}
                    None => return Err(xml_err(&r, "text outside the root element".into())),
                }
            }
            Event::CData(c) => {
                let s = c.decode().map_err(|e| xml_err(&r, e.to_string()))?;
                match stack.last_mut() {
                    Some(p) => p.text.push_str(&s),
                    None => return Err(xml_err(&r, "CDATA outside the root element".into())),
                }
            }
            Event::GeneralRef(g) => {
                let resolved = match g.resolve_char_ref() {
                    Ok(Some(c)) => c.to_string(),
                    Ok(None) => {
                        let name = g.decode().map_err(|e| xml_err(&r, e.to_string()))?;
                        quick_xml::escape::resolve_xml_entity(&name)
                            .ok_or_else(|| XmlRpcError::Entity(name.to_string()))?
                            .to_string()
                    }
                    Err(e) => return Err(xml_err(&r, e.to_string())),
                };
                match stack.last_mut() {
                    Some(p) => p.text.push_str(&resolved),
                    None => return Err(xml_err(&r, "reference outside the root element".into())),
                }
            }
            Event::DocType(_) => return Err(XmlRpcError::Dtd),
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
            Event::Eof => break,
        }
    }
    if !stack.is_empty() {
        return Err(xml_err(&r, "unclosed element at the end".into()));
    }
    root.ok_or_else(|| xml_err(&r, "no root element".into()))
}

fn unexpected(expected: &'static str, found: &Node) -> XmlRpcError {
    XmlRpcError::Unexpected {
        expected,
        found: found.name.clone(),
    }
}

fn expect<'a>(n: &'a Node, name: &'static str) -> Result<&'a Node, XmlRpcError> {
    if n.name == name {
        Ok(n)
    } else {
        Err(unexpected(name, n))
    }
}

/// The children of an element that holds only elements (whitespace between them is
/// Python's pretty-printing).
fn elements(n: &Node) -> Result<&[Node], XmlRpcError> {
    if !n.text.trim().is_empty() {
        return Err(XmlRpcError::BadValue {
            element: n.name.clone(),
            msg: "text where only elements belong".into(),
        });
    }
    Ok(&n.children)
}

fn only_child<'a>(n: &'a Node, name: &'static str) -> Result<&'a Node, XmlRpcError> {
    match elements(n)? {
        [c] => expect(c, name),
        [] => Err(XmlRpcError::BadValue {
            element: n.name.clone(),
            msg: format!("<{name}> missing"),
        }),
        [_, c, ..] => Err(unexpected(name, c)),
    }
}

fn leaf_text(n: &Node) -> Result<&str, XmlRpcError> {
    if let Some(c) = n.children.first() {
        return Err(unexpected("text", c));
    }
    Ok(&n.text)
}

fn value(n: &Node) -> Result<XValue, XmlRpcError> {
    expect(n, "value")?;
    let typed = match n.children.as_slice() {
        // xapi's form: `<value>text</value>`, `<value/>`.
        [] => return Ok(XValue::Str(n.text.clone())),
        [t] if n.text.trim().is_empty() => t,
        _ => {
            return Err(XmlRpcError::BadValue {
                element: "value".into(),
                msg: "more than one type element, or text beside one".into(),
            })
        }
    };
    let bad = |msg: String| XmlRpcError::BadValue {
        element: typed.name.clone(),
        msg,
    };
    Ok(match typed.name.as_str() {
        "string" => XValue::Str(leaf_text(typed)?.to_string()),
        "int" | "i4" | "i8" => {
            let t = leaf_text(typed)?.trim();
            XValue::Int(
                t.parse()
                    .map_err(|_| bad(format!("{t:?} is not an integer")))?,
            )
        }
        "boolean" => match leaf_text(typed)?.trim() {
            "0" => XValue::Bool(false),
            "1" => XValue::Bool(true),
            t => return Err(bad(format!("{t:?} is not 0 or 1"))),
        },
        "double" => {
            let t = leaf_text(typed)?.trim();
            XValue::Double(
                t.parse()
                    .map_err(|_| bad(format!("{t:?} is not a number")))?,
            )
        }
        "base64" => XValue::Base64(base64_decode(leaf_text(typed)?).map_err(bad)?),
        "dateTime.iso8601" => XValue::DateTime(leaf_text(typed)?.trim().to_string()),
        "nil" => {
            leaf_text(typed)?;
            XValue::Nil
        }
        "array" => {
            let data = only_child(typed, "data")?;
            XValue::Array(
                elements(data)?
                    .iter()
                    .map(value)
                    .collect::<Result<_, _>>()?,
            )
        }
        "struct" => {
            let mut members = Vec::new();
            for m in elements(typed)? {
                expect(m, "member")?;
                match elements(m)? {
                    [name, v] => {
                        let name = leaf_text(expect(name, "name")?)?.to_string();
                        members.push((name, value(v)?));
                    }
                    _ => return Err(bad("a <member> holds one <name> and one <value>".into())),
                }
            }
            XValue::Struct(members)
        }
        _ => return Err(unexpected("an XML-RPC type", typed)),
    })
}

fn params(n: &Node) -> Result<Vec<XValue>, XmlRpcError> {
    expect(n, "params")?;
    elements(n)?
        .iter()
        .map(|p| value(only_child(expect(p, "param")?, "value")?))
        .collect()
}

/// Parse a `methodCall`.
pub fn parse_call(xml: &str) -> Result<MethodCall, XmlRpcError> {
    let root = tree(xml)?;
    expect(&root, "methodCall")?;
    let kids = elements(&root)?;
    let (name, rest) = match kids {
        [name, rest @ ..] => (expect(name, "methodName")?, rest),
        [] => return Err(unexpected("methodName", &root)),
    };
    let method = leaf_text(name)?.trim().to_string();
    let params = match rest {
        [] => Vec::new(),
        [p] => params(p)?,
        [_, extra, ..] => return Err(unexpected("</methodCall>", extra)),
    };
    Ok(MethodCall { method, params })
}

/// The outcome of a `methodResponse`: its one param, or a `<fault>`'s struct.
#[derive(Debug, Clone, PartialEq)]
pub enum Response {
    Value(XValue),
    Fault(XValue),
}

pub fn parse_response(xml: &str) -> Result<Response, XmlRpcError> {
    let root = tree(xml)?;
    expect(&root, "methodResponse")?;
    let kids = elements(&root)?;
    match kids {
        [p] if p.name == "fault" => Ok(Response::Fault(value(only_child(p, "value")?)?)),
        [p] => {
            let mut v = params(p)?;
            if v.len() != 1 {
                return Err(XmlRpcError::BadValue {
                    element: "params".into(),
                    msg: format!("{} params in a response; expected 1", v.len()),
                });
            }
            Ok(Response::Value(v.remove(0)))
        }
        _ => Err(unexpected("params or fault", &root)),
    }
}

/// Escape as Python's `xmlrpc.client.escape` (`&`, `<`, `>`). Characters XML 1.0 cannot
/// carry at all (control characters but tab, LF, CR) become `?`: a response xapi cannot
/// parse would turn into "failed to parse plugin output" and lose the real error.
fn escape(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{fffe}' || c == '\u{ffff}' => out.push('?'),
            c => out.push(c),
        }
    }
}

/// One value, formatted as Python's marshaller formats it.
fn write_value(v: &XValue, out: &mut String) {
    out.push_str("<value>");
    match v {
        XValue::Str(s) => {
            out.push_str("<string>");
            escape(s, out);
            out.push_str("</string>");
        }
        XValue::Int(i) => out.push_str(&format!("<int>{i}</int>")),
        XValue::Bool(b) => out.push_str(&format!("<boolean>{}</boolean>", u8::from(*b))),
        XValue::Double(d) => out.push_str(&format!("<double>{d:?}</double>")),
        XValue::Base64(b) => {
            out.push_str("<base64>\n");
            out.push_str(&base64_encode(b));
            out.push_str("\n</base64>");
        }
        XValue::DateTime(d) => {
            out.push_str("<dateTime.iso8601>");
            escape(d, out);
            out.push_str("</dateTime.iso8601>");
        }
        XValue::Nil => out.push_str("<nil/>"),
        XValue::Array(items) => {
            out.push_str("<array><data>\n");
            for i in items {
                write_value(i, out);
            }
            out.push_str("</data></array>");
        }
        XValue::Struct(members) => {
            out.push_str("<struct>\n");
            for (k, v) in members {
                out.push_str("<member>\n<name>");
                escape(k, out);
                out.push_str("</name>\n");
                write_value(v, out);
                out.push_str("</member>\n");
            }
            out.push_str("</struct>");
        }
    }
    out.push_str("</value>\n");
}

fn write_params(params: &[XValue], out: &mut String) {
    out.push_str("<params>\n");
    for p in params {
        out.push_str("<param>\n");
        write_value(p, out);
        out.push_str("</param>\n");
    }
    out.push_str("</params>\n");
}

/// `xmlrpc.client.dumps((value,), '', True)`.
pub fn write_response(value: &XValue) -> String {
    let mut out = String::from("<?xml version='1.0'?>\n<methodResponse>\n");
    write_params(std::slice::from_ref(value), &mut out);
    out.push_str("</methodResponse>\n");
    out
}

/// `xmlrpc.client.dumps(params, method)`.
pub fn write_call(method: &str, params: &[XValue]) -> String {
    let mut out = String::from("<?xml version='1.0'?>\n<methodCall>\n<methodName>");
    escape(method, &mut out);
    out.push_str("</methodName>\n");
    write_params(params, &mut out);
    out.push_str("</methodCall>\n");
    out
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Standard base64 with padding; whitespace (Python breaks lines) is skipped.
fn base64_decode(text: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let mut acc = 0u32;
    let mut bits = 0u32;
    let mut pad = 0usize;
    for c in text.bytes() {
        if c.is_ascii_whitespace() {
            continue;
        }
        if c == b'=' {
            pad += 1;
            continue;
        }
        if pad > 0 {
            return Err("data after base64 padding".into());
        }
        let v = B64
            .iter()
            .position(|&x| x == c)
            .ok_or_else(|| format!("{:?} is not a base64 character", c as char))?;
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    if pad > 2 || (bits > 0 && acc != 0) {
        return Err("bad base64 padding".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xapi_and_python_forms() {
        let xapi = "<methodCall><methodName>download_vhd2</methodName><params><param><value>OpaqueRef:abc</value></param><param><value><struct><member><name>params</name><value>(dp0\nS'a'\np1\n.</value></member><member><name>empty</name><value/></member></struct></value></param></params></methodCall>";
        let c = parse_call(xapi).unwrap();
        assert_eq!(c.method, "download_vhd2");
        assert_eq!(c.params[0], XValue::Str("OpaqueRef:abc".into()));
        assert_eq!(
            c.params[1].member("params").unwrap().as_str(),
            Some("(dp0\nS'a'\np1\n.")
        );
        assert_eq!(c.params[1].member("empty").unwrap().as_str(), Some(""));
        let py = "<?xml version='1.0'?>\n<methodCall>\n<methodName>f</methodName>\n<params>\n<param>\n<value><string>s &amp; &#65;</string></value>\n</param>\n<param>\n<value><base64>\naGk=\n</base64></value>\n</param>\n</params>\n</methodCall>\n";
        let c = parse_call(py).unwrap();
        assert_eq!(c.params[0], XValue::Str("s & A".into()));
        assert_eq!(c.params[1], XValue::Base64(b"hi".to_vec()));
    }

    #[test]
    fn responses_round_trip() {
        let v = XValue::Struct(vec![
            ("Status".into(), XValue::Str("Failure".into())),
            (
                "ErrorDescription".into(),
                XValue::Array(vec![
                    XValue::Str("A".into()),
                    XValue::Str("b<&>\u{1}".into()),
                ]),
            ),
        ]);
        let xml = write_response(&v);
        assert!(xml.contains("<value><string>b&lt;&amp;&gt;?</string></value>"));
        match parse_response(&xml).unwrap() {
            Response::Value(XValue::Struct(m)) => assert_eq!(m.len(), 2),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn hostile_documents_are_errors() {
        let deep = format!(
            "<methodCall><methodName>f</methodName><params><param>{}</param></params></methodCall>",
            "<value><array><data>".repeat(100)
        );
        for bad in [
            "",
            "garbage",
            "<methodCall>",
            "<methodCall></methodResponse>",
            "<!DOCTYPE x [<!ENTITY a 'b'>]><methodCall><methodName>&a;</methodName></methodCall>",
            "<methodCall><methodName>&foo;</methodName></methodCall>",
            "<methodCall><methodName>f</methodName><params><param><value><int>x</int></value></param></params></methodCall>",
            "<methodCall><methodName>f</methodName></methodCall><x/>",
            deep.as_str(),
        ] {
            assert!(parse_call(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn base64() {
        for s in [&b""[..], b"a", b"ab", b"abc", b"abcd", &[0xff, 0, 0x80]] {
            assert_eq!(base64_decode(&base64_encode(s)).unwrap(), s);
        }
        assert!(base64_decode("a$==").is_err());
    }
}
