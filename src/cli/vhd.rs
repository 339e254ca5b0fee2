//! `glance-vhd vhd …`: the native VHD tools. `query` and `check` keep `vhd-util`'s
//! output and errno exit codes so admin scripts can switch over; the rest report errors
//! like every other command.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;

use super::args::VhdCommand;
use super::output::{self, CliError};
use crate::error::exit;
use crate::vhd::{self, check::CheckOptions, repair::RepairError, OpenMode, Vhd, VhdError};

pub fn run(cmd: VhdCommand) -> Result<ExitCode, CliError> {
    match cmd {
        VhdCommand::Info { file, json } => {
            let i = vhd::info::info(&file)?;
            if json {
                output::json(&i);
            } else {
                print!("{}", vhd::info::render(&i));
            }
        }
        VhdCommand::Query { args } => {
            let argv = std::iter::once(std::ffi::OsString::from("query")).chain(args);
            return Ok(match QueryArgs::try_parse_from(argv) {
                Ok(q) => query(&q),
                Err(e) => {
                    let _ = e.print();
                    ExitCode::from(if e.use_stderr() {
                        exit::USAGE
                    } else {
                        exit::OK
                    })
                }
            });
        }
        VhdCommand::Check {
            file,
            name,
            parents,
            ignore_timestamps,
            json,
        } => {
            let path = file.or(name).expect("clap requires one");
            let opts = CheckOptions {
                parents,
                ignore_timestamps,
            };
            let problem = vhd::check::check(&path, opts).map_err(|e| CliError::errno(&e))?;
            if json {
                output::json(&serde_json::json!({
                    "file": path, "valid": problem.is_none(), "problem": problem,
                }));
            } else {
                match &problem {
                    None => output::line(&format!("{} is valid", path.display())),
                    Some(p) => output::line(&format!("{} is invalid: {p}", path.display())),
                }
            }
            if problem.is_some() {
                return Ok(ExitCode::from(vhd::error::EINVAL as u8));
            }
        }
        VhdCommand::Repair {
            file,
            name,
            dry_run,
            json,
        } => {
            let path = file.or(name).expect("clap requires one");
            let r = vhd::repair::repair(&path, dry_run).map_err(|e| match e {
                // What vhd-util repair fails on too exits with its errno.
                RepairError::Vhd(v) => CliError::errno(&v),
                refused => CliError::from(refused),
            })?;
            if json {
                output::json(&r);
            } else {
                output::line(&r.summary());
            }
        }
        VhdCommand::SetParent {
            child,
            parent,
            name,
            parent_name,
            raw,
            json,
        } => {
            let (child, parent) = either(
                (child, parent),
                (name, parent_name),
                "CHILD PARENT, or vhd-util's -n CHILD -p PARENT",
            )?;
            let r = vhd::relink::set_parent(&child, &parent, raw)?;
            if json {
                output::json(&r);
            }
        }
        VhdCommand::SetHidden { file, value } => vhd::relink::set_hidden(&file, value)?,
        VhdCommand::Snapshot {
            parent,
            child,
            name,
            parent_name,
            keep_empty_parents,
            stamp,
            json,
        } => {
            let (parent, child) = either(
                (parent, child),
                (parent_name, name),
                "PARENT CHILD, or vhd-util's -n CHILD -p PARENT",
            )?;
            let s = vhd::create::snapshot(&parent, &child, keep_empty_parents, &stamp.stamp())?;
            if json {
                output::json(&s);
            } else {
                output::line(&s.uuid);
            }
        }
        VhdCommand::Create {
            file,
            size,
            name,
            size_mb,
            stamp,
            json,
        } => {
            let (file, size) = either(
                (file, size),
                (name, size_mb),
                "FILE SIZE (with a unit: 20G), or vhd-util's -n FILE -s MB",
            )?;
            vhd::create::create_dynamic(&file, size, &stamp.stamp())?;
            if json {
                // The size as created: rounded up to whole 2 MiB blocks.
                let virtual_size = vhd::info::info(&file).map(|i| i.virtual_size).ok();
                output::json(&serde_json::json!({"file": file, "virtual_size": virtual_size}));
            }
        }
        VhdCommand::Read { file, out } => read(&file, &out)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// The two things a command names, given whole in one form: positional, or vhd-util's
/// flags. Half of each, or both forms at once, is a usage error naming both forms.
fn either<A, B>(
    positional: (Option<A>, Option<B>),
    flags: (Option<A>, Option<B>),
    forms: &str,
) -> Result<(A, B), CliError> {
    match (positional, flags) {
        ((Some(a), Some(b)), (None, None)) | ((None, None), (Some(a), Some(b))) => Ok((a, b)),
        _ => Err(CliError::usage(format!(
            "give {forms} (one form, complete)"
        ))),
    }
}

fn read(file: &Path, out: &Path) -> Result<(), VhdError> {
    let chain = vhd::chain::Chain::open(file)?;
    if out == Path::new("-") {
        let stdout = io::stdout();
        let mut lock = stdout.lock();
        return match chain.write_to(&mut lock) {
            // `vhd read F - | head -c 1M`: the reader has what it wanted. Rust ignores
            // SIGPIPE, so the closed pipe arrives as EPIPE — not a failure to report.
            Err(e) if broken_pipe(&e) => Ok(()),
            r => r.map(drop),
        };
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(out)
        .map_err(|e| VhdError::io(out, "create", e))?;
    let sparse = f.metadata().map(|m| m.is_file()).unwrap_or(false);
    chain.copy_to(&mut f, sparse)?;
    f.sync_all().map_err(|e| VhdError::io(out, "fsync", e))?;
    Ok(())
}

/// Whether `e` is a write into a pipe whose reader is gone.
fn broken_pipe(e: &VhdError) -> bool {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<io::Error>() {
            return io.kind() == io::ErrorKind::BrokenPipe;
        }
        src = s.source();
    }
    false
}

/// `vhd-util query`, line for line (vhd-format.md §8).
fn query(q: &QueryArgs) -> ExitCode {
    let name = q.name.display().to_string();
    let open = Vhd::open(
        &q.name,
        OpenMode {
            write: false,
            ignore_disabled: true,
        },
    );
    let v = match open {
        Ok(v) => v,
        Err(e) => {
            let errno = e.errno();
            output::line(&format!("error opening {name}: -{errno}"));
            return output::report(&CliError::errno(&e), false, None);
        }
    };
    let mut status = 0i32;
    let out = io::stdout();
    let mut o = out.lock();
    if q.virt {
        let _ = writeln!(o, "{}", v.footer.curr_size >> 20);
    }
    if q.phys {
        let _ = writeln!(o, "{}", v.end_of_data() + 512);
    }
    if q.parent {
        if !v.is_differencing() {
            let _ = writeln!(o, "{name} has no parent");
        } else if q.unresolved {
            match vhd::locator::first_decoded(&v) {
                Ok(Some(text)) => {
                    let _ = writeln!(o, "{text}");
                }
                _ => {
                    let _ = writeln!(o, "query failed");
                    status = vhd::error::EINVAL;
                }
            }
        } else {
            match vhd::locator::find_parent(&v) {
                Ok((p, _)) => {
                    let _ = writeln!(o, "{}", p.display());
                }
                Err(e) => {
                    let _ = writeln!(o, "query failed");
                    status = e.errno();
                }
            }
        }
    }
    if q.hidden {
        // blktap prints the flag as a signed char (200 prints -56).
        let _ = writeln!(o, "hidden: {}", hidden_as_blktap_reads_it(&v) as i8);
    }
    if q.marker {
        let _ = writeln!(
            o,
            "marker: {}",
            v.batmap.as_ref().map_or(0, |b| b.marker) as i8
        );
    }
    if q.depth {
        match vhd::check::chain_depth(&q.name) {
            Ok(d) => {
                let _ = writeln!(o, "chain depth: {d}");
            }
            Err(e) => {
                let _ = writeln!(o, "error checking chain depth: -{}", e.errno());
                status = e.errno();
            }
        }
    }
    if q.allocated {
        let _ = writeln!(o, "{}", v.allocated_blocks());
    }
    if q.max_size {
        let max_bat = v.header().map_or(0, |h| h.max_bat as u64);
        let _ = writeln!(o, "{}", max_bat * 2);
    }
    ExitCode::from(status as u8)
}

/// `vhd query`'s flags, vhd-util's letters, parsed apart from the rest of the command
/// line (see `VhdCommand::Query`).
#[derive(Parser, Debug)]
#[command(
    name = "query",
    bin_name = "glance-vhd vhd query",
    about = "vhd-util query: same lines, same order, same exit codes",
    after_help = "Example (what XenServer's SM runs):\n  glance-vhd vhd query -vsafp -n /var/run/sr-mount/SR/1234.vhd"
)]
pub struct QueryArgs {
    /// The file
    #[arg(short = 'n', required = true)]
    pub name: PathBuf,
    /// Virtual size in MiB
    #[arg(short = 'v')]
    pub virt: bool,
    /// Physical size in bytes
    #[arg(short = 's')]
    pub phys: bool,
    /// Parent path
    #[arg(short = 'p')]
    pub parent: bool,
    /// With -p: the locator text instead of the resolved path
    #[arg(short = 'u')]
    pub unresolved: bool,
    /// Hidden flag
    #[arg(short = 'f')]
    pub hidden: bool,
    /// Marker flag
    #[arg(short = 'm')]
    pub marker: bool,
    /// Chain depth
    #[arg(short = 'd')]
    pub depth: bool,
    /// Allocated block count
    #[arg(short = 'a')]
    pub allocated: bool,
    /// Maximum virtual size in MiB (BAT entries x 2)
    #[arg(short = 'S')]
    pub max_size: bool,
    /// Accepted for compatibility (vhd-util logs to syslog with it)
    #[arg(long)]
    pub debug: bool,
}

/// blktap `vhd_hidden`: the footer in use, except that for old tap files (0.1, 1.1) the
/// flag lives in the copy at offset 0.
fn hidden_as_blktap_reads_it(v: &Vhd) -> u8 {
    if v.footer.is_old_tap() && v.footer.is_dynamic_or_diff() {
        let mut b = [0u8; vhd::FOOTER_SIZE];
        if v.read_at(&mut b, 0, "read the footer copy").is_ok() {
            return vhd::Footer::decode(&b).hidden;
        }
    }
    v.footer.hidden
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// clap's own consistency checks, which debug builds run on every parse (panicking).
    #[test]
    fn query_flags_pass_clap_s_checks() {
        QueryArgs::command().debug_assert();
    }
}
