use std::process::ExitCode;

use clap::Parser;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = authgate::cli::Cli::parse();
    authgate::cli::init_logging();
    authgate::cli::run(cli)
}
