//! The `nerp` command line. All work happens in [`nerp::cli`]; this only maps errors to exit
//! codes: 2 for usage errors (bad options, missing input files), 1 for everything else.

use clap::Parser;

fn main() {
    nerp::linalg::single_threaded_candle();
    let args = nerp::cli::Cli::parse();
    match nerp::cli::run(args) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("Error: {e}");
            std::process::exit(if e.is_usage() { 2 } else { 1 });
        }
    }
}
