use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = authgate::cli::Cli::parse();
    let traced = matches!(
        cli.command,
        authgate::cli::Command::Serve(_) | authgate::cli::Command::Check(_)
    );
    let export = match authgate::cli::init_logging(traced) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let code = authgate::cli::run(cli);
    if let Some(export) = export {
        export.shutdown();
    }
    code
}
