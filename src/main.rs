//! Thin: parse, run, map errors to exit codes (README "Exit codes").

fn main() -> std::process::ExitCode {
    // Before any thread starts: every thread inherits the blocked SIGTERM/SIGINT, and
    // the signal thread cleans up the SR before exiting (both modes).
    glance_vhd::signals::install();
    // The xapi plugin entry is dispatched before clap: in plugin mode only the one
    // methodResponse may reach stdout and the exit code is always 0, even for an argv
    // clap would reject with usage text and exit 2.
    let argv: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    if argv.get(1).map(String::as_str) == Some("xapi-plugin") {
        return glance_vhd::xapi::main_from_argv(&argv[2..]);
    }
    glance_vhd::cli::main()
}
