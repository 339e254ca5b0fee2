//! The xapi plugin protocol (DESIGN §1–§2): one XML-RPC `methodCall` in argv, one
//! `methodResponse` on stdout, exit 0 whatever happens.
//!
//! xapi runs `/etc/xapi.d/plugins/<name> '<methodCall>'` (the shims in
//! `plugin-wrapper/` exec us with `--name`). Anything on stdout but the response, or a
//! non-zero exit, turns into an opaque `XENAPI_PLUGIN_FAILURE` for the caller, so:
//! arguments are parsed here by hand (never by clap, which prints usage and exits 2),
//! logs go to stderr and syslog ([`crate::log`]), panics become a failure response, and the
//! response is written with one `write_all`.
//!
//! * [`pickle`]: the `params` pickle in, the protocol-0 reply out.
//! * [`calls`]: the call table and typed arguments.
//! * [`failure`]: the `ErrorDescription` shapes Nova understands.
//! * [`kernel`]: the kernel/ramdisk calls.
//!
//! The XML-RPC codec (the call and the response, xapi's and Python's dialects) and the
//! XenAPI client the kernel calls use live one layer down, in [`crate::xenapi`]: the CLI
//! talks to xapi too (SR.scan after a download).

pub mod calls;
pub mod failure;
pub mod kernel;
pub mod pickle;

use std::io::Write;
use std::process::ExitCode;

use crate::xenapi::xmlrpc::{self, XValue};
use calls::{Args, Op, Value};
use failure::{Class, Failure};

use crate::log;

/// `glance-vhd xapi-plugin --name NAME XML`, from the raw argv after `xapi-plugin`.
/// Always exits 0: the outcome is in the response.
pub fn main_from_argv(argv: &[String]) -> ExitCode {
    let (name, xml) = match parse_argv(argv) {
        Ok(v) => v,
        Err(msg) => {
            log::error(&msg);
            respond(&failure_value(&Failure::plugin("", Class::Argument, &msg)));
            return ExitCode::SUCCESS;
        }
    };
    main(&name, &[xml])
}

/// `--name NAME XML` or `--name=NAME XML`; xapi passes exactly one XML argument.
fn parse_argv(argv: &[String]) -> Result<(String, String), String> {
    let mut name = None;
    let mut rest = Vec::new();
    let mut it = argv.iter();
    while let Some(a) = it.next() {
        if a == "--name" {
            name = Some(it.next().ok_or("--name needs a value")?.clone());
        } else if let Some(n) = a.strip_prefix("--name=") {
            name = Some(n.to_string());
        } else {
            rest.push(a.clone());
        }
    }
    let name = name.ok_or("usage: glance-vhd xapi-plugin --name NAME XML")?;
    match <[String; 1]>::try_from(rest) {
        Ok([xml]) => Ok((name, xml)),
        Err(rest) => Err(format!(
            "expected exactly one argument (the XML-RPC call), got {}",
            rest.len()
        )),
    }
}

/// Run one plugin call as xapi makes it: `name` is the plugin file's name (`glance`,
/// `kernel`, with or without `.py`), `args` the rest of argv (the XML).
pub fn main(name: &str, args: &[String]) -> ExitCode {
    let outcome = match args {
        [xml] => {
            // A panic must still produce a response, not an empty stdout.
            std::panic::catch_unwind(|| handle(name, xml)).unwrap_or_else(|_| {
                Err(Failure::plugin(
                    "",
                    Class::Plugin,
                    "internal error (see the log)",
                ))
            })
        }
        _ => Err(Failure::plugin(
            "",
            Class::Argument,
            &format!(
                "expected exactly one argument (the XML-RPC call), got {}",
                args.len()
            ),
        )),
    };
    let v = match outcome {
        Ok(v) => success_value(v),
        Err(f) => {
            log::error(&format!("failure: {:?}", f.0));
            failure_value(&f)
        }
    };
    respond(&v);
    ExitCode::SUCCESS
}

/// Parse, look up, run. The function name is known from the parse on, so every later
/// failure names it.
fn handle(plugin: &str, xml: &str) -> Result<String, Failure> {
    let call = xmlrpc::parse_call(xml).map_err(|e| {
        Failure::plugin(
            "",
            Class::Argument,
            &format!("cannot parse the XML-RPC call: {e}"),
        )
    })?;
    let function = call.method.as_str();
    let Some(entry) = calls::lookup(plugin, function) else {
        return Err(Failure::unknown_function(function));
    };
    let bad = |msg: &str| Failure::plugin(function, Class::Argument, msg);
    let session = match call.params.first() {
        Some(XValue::Str(s)) => s.as_str(),
        _ => return Err(bad("param 0 must be the session reference")),
    };
    let members: &[(String, XValue)] = match call.params.get(1) {
        Some(XValue::Struct(m)) => m,
        None => &[],
        Some(_) => return Err(bad("param 1 must be a struct of arguments")),
    };
    log::info(&format!("{plugin}.{function} called"));
    let value = (entry.run)(&Args::new(session, members))
        .and_then(|v| match v {
            Value::Text(s) => Ok(s),
            Value::Pickled(r) => pickle::encode(&r).map_err(calls::CallError::Reply),
        })
        .map_err(|e| Failure::of(function, &e, entry.op == Op::Upload))?;
    log::info(&format!("{plugin}.{function} succeeded"));
    Ok(value)
}

fn success_value(value: String) -> XValue {
    XValue::Struct(vec![
        ("Status".into(), XValue::Str("Success".into())),
        ("Value".into(), XValue::Str(value)),
    ])
}

fn failure_value(f: &Failure) -> XValue {
    XValue::Struct(vec![
        ("Status".into(), XValue::Str("Failure".into())),
        (
            "ErrorDescription".into(),
            XValue::Array(f.0.iter().map(|s| XValue::Str(s.clone())).collect()),
        ),
    ])
}

/// The one thing that reaches stdout. A failed write has nowhere to be reported but
/// the log.
fn respond(v: &XValue) {
    let out = xmlrpc::write_response(v);
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout
        .write_all(out.as_bytes())
        .and_then(|()| stdout.flush())
    {
        log::error(&format!("cannot write the response: {e}"));
    }
}
