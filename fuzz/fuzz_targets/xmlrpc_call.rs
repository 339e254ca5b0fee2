//! Fuzz the XML-RPC parsers and what the plugin does next with a call.
//!
//! The input is the XML document (as xapi passes it in argv: UTF-8 text; other bytes
//! are read as Latin-1 so every input reaches the parser). It goes through
//! `parse_call` and `parse_response`; a parsed call is then dispatched as the plugin
//! does (session, argument struct, call table of both plugins) and its arguments are
//! decoded and checked (`Call::check`: the pickle, the keyword screening), stopping
//! before anything would run. Whatever parses must also survive our own writer: what
//! `write_call`/`write_response` make of it parses back.

#![no_main]

use glance_vhd::xapi::calls::{lookup, Args};
use glance_vhd::xenapi::xmlrpc::{
    parse_call, parse_response, write_call, write_response, Response, XValue,
};
use libfuzzer_sys::fuzz_target;

const PLUGINS: [&str; 2] = ["glance", "kernel"];

fuzz_target!(|data: &[u8]| {
    let text = match std::str::from_utf8(data) {
        Ok(s) => std::borrow::Cow::Borrowed(s),
        Err(_) => std::borrow::Cow::Owned(data.iter().map(|&b| b as char).collect()),
    };
    if let Ok(call) = parse_call(&text) {
        let again = write_call(&call.method, &call.params);
        if let Err(e) = parse_call(&again) {
            panic!("our own call does not parse: {e}\n{again}");
        }
        // As `xapi::handle` does.
        if let (Some(XValue::Str(session)), members) = (call.params.first(), call.params.get(1)) {
            let members: &[(String, XValue)] = match members {
                Some(XValue::Struct(m)) => m,
                None => &[],
                Some(_) => return,
            };
            for plugin in PLUGINS {
                if let Some(entry) = lookup(plugin, &call.method) {
                    let _ = (entry.check)(&Args::new(session, members));
                }
            }
        }
    }
    if let Ok(r) = parse_response(&text) {
        let v = match r {
            Response::Value(v) | Response::Fault(v) => v,
        };
        let again = write_response(&v);
        if let Err(e) = parse_response(&again) {
            panic!("our own response does not parse: {e}\n{again}");
        }
    }
});
