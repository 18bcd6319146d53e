//! The command-line grammar (clap). Every value parser names the accepted
//! form, so a bad value exits 2 with a message saying what was expected.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

mod run_fast;
use paddock_types::{Mount, NetworkMode};

/// paddock: run untrusted code in isolated, resource-limited Linux sandboxes.
#[derive(Debug, Parser)]
#[command(name = "paddock", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    #[command(about = RUN_ABOUT, long_about = RUN_LONG_ABOUT)]
    Run(RunArgs),
    /// Measure paddock against bubblewrap and bare processes (p50/p95, ratios).
    Bench(BenchArgs),
    /// Open a sandbox with one code context and read code from the terminal
    /// (or a pipe), printing output and results as a notebook would, until
    /// EOF. Ctrl-C interrupts the running code, not the REPL.
    Repl(ReplArgs),
    /// The in-sandbox agent of persistent sandboxes (started by paddock
    /// inside a sandbox; not for direct use).
    #[command(hide = true)]
    Agent,
    /// Run a JavaScript function, output = f(input), in a sandboxed worker
    /// and print its result object (one per line for --inputs).
    ///
    /// Exit status: 0 when the result was printed, whatever its status; 2 on
    /// bad usage or input; 125 if the function could not be run (no worker
    /// could start, or it died).
    Fn(crate::functions::FnArgs),
    /// Run the HTTP API server (sandboxes, contexts, files, functions).
    ///
    /// With no arguments it listens on 127.0.0.1:8080 (or the next free
    /// port) and prints one generated development API key.
    Serve(crate::serve::ServeArgs),
    /// Sandboxes on a `paddock serve` (URL and key from --url/--api-key or
    /// PADDOCK_URL/PADDOCK_API_KEY): create, list, inspect, exec, kill.
    Sandbox(crate::client::SandboxArgs),
    /// Code contexts of a sandbox on a `paddock serve`: create, run, delete.
    Context(crate::client::ContextArgs),
    /// Files of a sandbox on a `paddock serve`: put, get, ls, rm.
    Files(crate::client::FilesArgs),
    /// A function worker (started by paddock inside a sandbox; not for
    /// direct use).
    #[command(name = "fn-worker", hide = true)]
    FnWorker,
}

/// Interpreters `--lang` knows.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Lang {
    /// `python3 -c CODE`
    Python,
    /// `node -e CODE`
    Javascript,
    /// `bash -c CODE`
    Bash,
}

const RUN_ABOUT: &str = "Run one command (or a code snippet) in a fresh sandbox and remove it";
const RUN_LONG_ABOUT: &str = "Run one command (or a code snippet) in a fresh sandbox and remove it.

Exit status: the program's own; 128+N if killed by signal N; 124 on timeout; \
137 on out-of-memory; 125 if the sandbox could not be created; 126 if the \
program is not executable; 127 if it is not found; 2 on bad usage. With \
--json, 0 whenever the sandbox ran.";

/// `paddock run` alone: the same grammar as the `run` subcommand of [`Cli`].
#[derive(Debug, Parser)]
#[command(name = "run", bin_name = "paddock run", about = RUN_ABOUT, long_about = RUN_LONG_ABOUT)]
struct RunOnly {
    #[command(flatten)]
    run: RunArgs,
}

/// Parses the command line.
///
/// `paddock run …` is parsed with the grammar of `run` alone: clap builds
/// the whole tree of commands (server, client, benchmarks…) before it
/// parses, which costs about 0.4 ms, as much as several steps of a
/// sandbox's set-up, on the path that is measured against bubblewrap. Its
/// well-formed command lines are read without clap at all (`run_fast`).
pub fn parse() -> Cli {
    let mut args = std::env::args_os();
    let program = args.next();
    let first = args.next();
    // The in-sandbox commands take no arguments; building clap's tree for
    // them would cost every sandbox start ~0.4 ms and leave ~150 KiB of
    // freed, dirty heap in every idle agent.
    let rest_empty = args.len() == 0;
    match first.as_deref().and_then(|f| f.to_str()) {
        Some("agent") if rest_empty => {
            return Cli {
                command: Command::Agent,
            };
        }
        Some("fn-worker") if rest_empty => {
            return Cli {
                command: Command::FnWorker,
            };
        }
        _ => {}
    }
    if first.as_deref() == Some(std::ffi::OsStr::new("run")) {
        let rest: Vec<std::ffi::OsString> = args.collect();
        let run = match run_fast::parse(&rest) {
            Some(run) => run,
            None => run_with_clap(program, &rest),
        };
        return Cli {
            command: Command::Run(run),
        };
    }
    Cli::parse()
}

/// clap's reading of `run`, for the command lines `run_fast` leaves to it.
///
/// The options accept values that start with `-` (so that `--disk -1` is
/// reported as a bad `--disk`, naming the accepted form), which makes an
/// option left without its value take the `--` that follows as its value;
/// clap then reports the program after that `--` as an unexpected argument,
/// naming neither the option nor its form. Read without the words after
/// that `--`, the same line gets clap's own message about the option.
fn run_with_clap(program: Option<std::ffi::OsString>, rest: &[std::ffi::OsString]) -> RunArgs {
    let argv = |words: &[std::ffi::OsString]| -> Vec<std::ffi::OsString> {
        program.iter().chain(words).cloned().collect()
    };
    let err = match RunOnly::try_parse_from(argv(rest)) {
        Ok(only) => return only.run,
        Err(e) => e,
    };
    if err.kind() == clap::error::ErrorKind::UnknownArgument
        && let Some(at) = rest.windows(2).position(|w| {
            w[1] == "--"
                && w[0]
                    .to_str()
                    .is_some_and(|o| o.starts_with("--") && o != "--")
        })
        && let Err(about_the_option) = RunOnly::try_parse_from(argv(&rest[..at + 2]))
    {
        about_the_option.exit();
    }
    err.exit()
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub limits: LimitArgs,
    /// Wall-clock limit, e.g. 500ms, 10s, 2m.
    #[arg(long, value_name = "DUR", default_value = "30s", value_parser = duration, allow_hyphen_values = true)]
    pub timeout: Duration,
    /// Bytes kept per output stream; the rest is dropped and flagged.
    #[arg(long, value_name = "SIZE", default_value = "1M", value_parser = size, allow_hyphen_values = true)]
    pub output_limit: u64,
    /// Network: `none` (only the sandbox's own loopback) or `loopback`.
    #[arg(long, value_name = "MODE", default_value = "none", value_parser = network)]
    pub network: NetworkMode,
    /// Environment variable K=V (repeatable); nothing is inherited from the host.
    #[arg(long = "env", value_name = "K=V", value_parser = env_pair)]
    pub env: Vec<(String, String)>,
    /// Working directory inside the sandbox.
    #[arg(long, value_name = "PATH", default_value = "/home/user", value_parser = abs_path)]
    pub workdir: PathBuf,
    /// Bind a host path: SRC:DST[:ro|rw] (repeatable; read-only by default).
    #[arg(long = "mount", value_name = "SRC:DST[:ro|rw]", value_parser = mount)]
    pub mounts: Vec<Mount>,
    /// Base root filesystem: a host directory with a Linux tree (e.g. a
    /// debootstrap result) used instead of the host's /usr and /etc files.
    #[arg(long, value_name = "DIR", value_parser = abs_path)]
    pub rootfs: Option<PathBuf>,
    /// Pass paddock's stdin through to the program (default: empty stdin).
    #[arg(long)]
    pub stdin: bool,
    /// Print one result object instead of passing output through.
    #[arg(long)]
    pub json: bool,
    /// Run a snippet with this interpreter (needs --code).
    #[arg(long, value_enum, requires = "code")]
    pub lang: Option<Lang>,
    /// The snippet for --lang.
    #[arg(long, requires = "lang", conflicts_with = "program")]
    pub code: Option<String>,
    /// The program and its arguments (after `--`).
    #[arg(last = true, value_name = "PROGRAM")]
    pub program: Vec<String>,
}

/// The resource limits of a sandbox (shared by `run` and `repl`).
#[derive(Debug, Args)]
pub struct LimitArgs {
    /// Memory limit, e.g. 64M or 1G (no swap).
    #[arg(long, value_name = "SIZE", default_value = "512M", value_parser = memory_size, allow_hyphen_values = true)]
    pub memory: u64,
    /// CPU quota in cores; fractions allowed (0.5).
    #[arg(long, value_name = "N", default_value = "1", value_parser = cpus, allow_hyphen_values = true)]
    pub cpus: u64,
    /// Maximum number of processes and threads.
    #[arg(long, value_name = "N", default_value = "256", value_parser = clap::value_parser!(u64).range(1..=1_000_000), allow_hyphen_values = true)]
    pub pids: u64,
    /// Size of the writable layer (/, /tmp, /home/user).
    #[arg(long, value_name = "SIZE", default_value = "256M", value_parser = size, allow_hyphen_values = true)]
    pub disk: u64,
}

impl LimitArgs {
    /// The limits as the isolation layer takes them.
    pub fn to_limits(&self) -> paddock_types::Limits {
        paddock_types::Limits {
            memory_bytes: self.memory,
            cpu_millicores: self.cpus,
            pids: self.pids,
            disk_bytes: self.disk,
            ..paddock_types::Limits::default()
        }
    }
}

#[derive(Debug, Args)]
pub struct ReplArgs {
    /// The context's language.
    #[arg(long, value_enum)]
    pub lang: Lang,
    #[command(flatten)]
    pub limits: LimitArgs,
    /// Wall-clock limit of each cell.
    #[arg(long, value_name = "DUR", default_value = "5m", value_parser = duration, allow_hyphen_values = true)]
    pub timeout: Duration,
    /// Environment variable K=V (repeatable); nothing is inherited from the host.
    #[arg(long = "env", value_name = "K=V", value_parser = env_pair)]
    pub env: Vec<(String, String)>,
    /// Bind a host path: SRC:DST[:ro|rw] (repeatable; read-only by default).
    #[arg(long = "mount", value_name = "SRC:DST[:ro|rw]", value_parser = mount)]
    pub mounts: Vec<Mount>,
}

/// What `paddock bench` measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Suite {
    /// `paddock run` against bubblewrap and bare processes, idle memory.
    Core,
    /// Persistent sandboxes: exec, contexts, files (in one process).
    Sandbox,
    /// JavaScript functions against isolated-vm and node's vm.
    Functions,
    /// Load on a real `paddock serve`: create/exec/delete, warm exec, pool
    /// hit vs miss, many idle sandboxes.
    Server,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Which benchmark to run (repeatable; default: core).
    #[arg(long, value_enum, default_value = "core")]
    pub suite: Vec<Suite>,
    /// Runs per measured command (at least 200 for the published figures).
    #[arg(long, default_value = "200", value_parser = clap::value_parser!(u32).range(5..=100_000))]
    pub runs: u32,
    /// Sandboxes held at once for the idle-memory figure.
    #[arg(long, default_value = "50", value_parser = clap::value_parser!(u32).range(1..=2000))]
    pub idle: u32,
    /// Print the figures as JSON.
    #[arg(long)]
    pub json: bool,
    /// Functions suite: seconds measured per mode.
    #[arg(long, default_value = "3", value_parser = clap::value_parser!(u32).range(1..=600))]
    pub fn_seconds: u32,
    /// Functions suite: a node_modules directory holding isolated-vm, for
    /// the peer figures.
    #[arg(long, env = "PADDOCK_BENCH_NODE_MODULES", value_name = "DIR")]
    pub node_modules: Option<PathBuf>,
    /// Server suite: seconds measured per concurrency level.
    #[arg(long, default_value = "5", value_parser = clap::value_parser!(u32).range(1..=600))]
    pub server_seconds: u32,
    /// Server suite: concurrency levels (clients), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64", value_parser = clap::value_parser!(u32).range(1..=512))]
    pub server_concurrency: Vec<u32>,
    /// Server suite: idle sandboxes held at once.
    #[arg(long, default_value = "1000", value_parser = clap::value_parser!(u32).range(2..=10_000))]
    pub server_idle: u32,
}

// clap prints "invalid value 'X' for '--opt <V>': <our text>", so our text
// is only the accepted form.
fn expected(e: paddock_types::ParseError) -> String {
    format!("expected {}", e.expected)
}
fn size(s: &str) -> Result<u64, String> {
    paddock_types::parse_size(s).map_err(expected)
}
fn memory_size(s: &str) -> Result<u64, String> {
    let v = size(s)?;
    if v < MIN_MEMORY {
        return Err("expected at least 4M (the sandbox itself needs some memory)".into());
    }
    Ok(v)
}
fn duration(s: &str) -> Result<Duration, String> {
    paddock_types::parse_duration(s).map_err(expected)
}
fn cpus(s: &str) -> Result<u64, String> {
    paddock_types::parse_cpus(s).map_err(expected)
}
fn env_pair(s: &str) -> Result<(String, String), String> {
    paddock_types::parse_env(s).map_err(expected)
}
fn mount(s: &str) -> Result<Mount, String> {
    paddock_types::parse_mount(s).map_err(expected)
}
fn network(s: &str) -> Result<NetworkMode, String> {
    s.parse().map_err(expected)
}
fn abs_path(s: &str) -> Result<PathBuf, String> {
    let p = PathBuf::from(s);
    if p.is_absolute()
        && !p
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        Ok(p)
    } else {
        Err("expected an absolute path without '..'".to_string())
    }
}

/// Smallest `--memory` accepted.
const MIN_MEMORY: u64 = 4 << 20;
