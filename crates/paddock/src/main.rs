//! `paddock`: the command line. Parses arguments, dispatches to the library
//! crates, and maps their errors to the contract's exit statuses.

mod bench;
mod cli;
mod run;

use clap::Parser;

fn main() {
    let cli = cli::Cli::parse();
    let code = match cli.command {
        cli::Command::Run(args) => run::main(args),
        cli::Command::Bench(args) => match bench::main(args) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("paddock bench: {e:#}");
                1
            }
        },
    };
    std::process::exit(code);
}
