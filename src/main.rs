//! The binary: parse the command line against the process environment, start logging, build
//! the runtime, run, and map the result to an exit code. Everything else is in the library.

use std::process::ExitCode;

use audsync::cli::Command;
use audsync::config::{ParseError, Vars, parse};
use audsync::{exit, init_logging, run};

fn main() -> ExitCode {
    let parsed = match parse(std::env::args_os(), Vars::from_process()) {
        Ok(v) => v,
        Err(ParseError::Clap(e)) => {
            let code = if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            };
            let _ = e.print();
            return ExitCode::from(code);
        }
        Err(ParseError::Config(e)) => {
            eprintln!("error: {e}");
            return ExitCode::from(e.exit_code());
        }
    };
    // The long-running agent reports each pass at info level by default.
    let g = &parsed.cli.global;
    let verbose = g.verbose + u8::from(matches!(parsed.cli.command, Command::Watch(_)));
    init_logging(verbose, g.quiet, g.log_format);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    ExitCode::from(runtime.block_on(run(parsed)))
}
