//! Thin: parse, run, map errors to exit codes (README "Exit codes").

fn main() -> std::process::ExitCode {
    glance_vhd::cli::main()
}
