//! The admin command line, for a dom0 admin at a terminal and a cron job at 02:00.
//!
//! * [`args`]: every command and flag (clap), and the flag-value parsers;
//! * `jobs`: `download`, `upload`, `sweep` — the engines plus retries, locks, progress;
//! * `scan`: after a download, `SR.scan` and the new VDI's name label through xapi;
//! * `vhd`: the native VHD tools, `vhd-util` compatible where scripts depend on it;
//! * [`output`]: stdout for results, stderr for the rest, verbosity, and the one place
//!   errors are reported.
//!
//! Every handler returns `Result<ExitCode, CliError>`; [`main`] reports an error once,
//! as text and (with `--json`) as JSON, and the exit code comes from the error's kind
//! (README "Exit codes"). The xapi plugin entry is not here: `main.rs` dispatches it
//! before clap ever sees argv.

pub mod args;
mod jobs;
pub mod output;
mod scan;
mod vhd;

use std::process::ExitCode;

use clap::Parser;

use crate::error::exit;
use args::{Cli, Command};

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            });
        }
    };
    output::set_verbosity(if cli.quiet {
        -1
    } else {
        cli.verbose.min(2) as i8
    });
    output::show_detail();
    let json = cli.command.json();
    // The jobs a cron runs leave their failure in syslog too; the VHD tools do not.
    let job = match &cli.command {
        Command::Download(_) => Some("download"),
        Command::Upload(_) => Some("upload"),
        Command::Sweep(_) => Some("sweep"),
        Command::Vhd(_) => None,
    };
    let result = match cli.command {
        Command::Vhd(cmd) => vhd::run(cmd),
        Command::Download(a) => jobs::download(&a),
        Command::Upload(a) => jobs::upload(&a),
        Command::Sweep(a) => jobs::sweep(&a),
    };
    match result {
        Ok(code) => code,
        Err(e) => output::report(&e, json, job),
    }
}
