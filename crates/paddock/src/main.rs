//! `paddock`: the command line. Parses arguments, dispatches to the library
//! crates, and maps their errors to the contract's exit statuses.
//!
//! The C runtime calls our `main` directly (`no_main`): std's start-up,
//! which locates the main thread's stack through `/proc/self/maps` and maps
//! an alternate signal stack to report stack overflows, costs ~0.1 ms per
//! process — a visible share of `paddock run` and of every agent and worker
//! started inside a sandbox. What of it matters is done in [`start_up`].

#![cfg_attr(not(test), no_main)]

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

/// The process's entry point, called by the C runtime after it has set up
/// libc (std reads the arguments and environment from libc itself).
#[cfg(not(test))]
#[unsafe(no_mangle)]
extern "C" fn main(
    _argc: std::ffi::c_int,
    _argv: *const *const std::ffi::c_char,
) -> std::ffi::c_int {
    start_up();
    run_command()
}

/// Test builds keep std's start-up (the test harness brings its own
/// `main`); this one only keeps the command code referenced there.
#[cfg(test)]
fn main() {
    start_up();
    run_command()
}

/// What std's start-up would have done that paddock relies on: fds 0–2 are
/// open (so that no file we open lands on them), and `SIGPIPE` is ignored
/// (a closed reader shows as `EPIPE`, not as death).
fn start_up() {
    paddock_sys::open_standard_fds();
    paddock_sys::ignore_sigpipe();
}

fn run_command() -> ! {
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
