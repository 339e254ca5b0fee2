//! The xapi plugin protocol (DESIGN §1–§2): one XML-RPC `methodCall` in argv, one
//! `methodResponse` on stdout, exit 0 whatever happens.

use std::process::ExitCode;

/// Run one plugin call as xapi makes it: `name` is the plugin file's name (`glance`,
/// `kernel`, with or without `.py`), `args` the rest of argv (the XML).
pub fn main(name: &str, args: &[String]) -> ExitCode {
    let _ = (name, args);
    ExitCode::SUCCESS
}
