//! The `adjustd` binary: parses the command line, hands over to `adjustd::cli`, and maps
//! the outcome to the documented exit codes.

use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = match adjustd::cli::parse() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    match adjustd::cli::run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            eprintln!("adjustd: {:#}", failure.error);
            ExitCode::from(failure.code)
        }
    }
}

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
