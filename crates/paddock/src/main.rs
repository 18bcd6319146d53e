//! `paddock`: the command line. Parses arguments, dispatches to the library
//! crates, and maps their errors to the contract's exit statuses.

mod bench;
mod bench_functions;
mod bench_sandbox;
mod bench_server;
mod cli;
mod client;
mod functions;
mod repl;
mod run;
mod serve;

fn main() {
    let cli = cli::parse();
    let code = match cli.command {
        cli::Command::Agent => match paddock_agent::run_on_inherited_channel() {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("paddock agent: {e}");
                1
            }
        },
        cli::Command::Repl(args) => repl::main(args),
        cli::Command::Fn(args) => functions::main(args),
        cli::Command::FnWorker => paddock_functions::worker::main(),
        cli::Command::Run(args) => run::main(args),
        cli::Command::Serve(args) => serve::main(args),
        cli::Command::Sandbox(args) => client::sandbox_main(args),
        cli::Command::Context(args) => client::context_main(args),
        cli::Command::Files(args) => client::files_main(args),
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

/// The async runtime of the commands that drive sandboxes from this process
/// (`repl`, the sandbox and server benchmarks): two workers are plenty, the
/// work is in the sandboxes.
fn client_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}
