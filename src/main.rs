use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = authgate::cli::Cli::parse();
    authgate::cli::init_logging();
    authgate::cli::run(cli)
}
