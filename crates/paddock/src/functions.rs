//! `paddock fn`: run a JavaScript function in a sandboxed worker and print
//! its result object.
//!
//! ```text
//! paddock fn (--code CODE | --file F) [--input JSON|@FILE|@-] [--memory 16M]
//!            [--timeout 500ms] [--debug]
//! paddock fn (--code CODE | --file F) --inputs FILE|- [--shared-context] ...
//! ```
//!
//! One call prints one result object (one line of JSON). `--inputs` reads
//! JSON Lines (one input per non-empty line) and runs them as one batch:
//! one compiled function, one trip to the worker, one result object per
//! line in input order. Exit status: 0 when the results were printed,
//! whatever their `status` (as `paddock run --json`); 2 on bad usage or
//! input; 125 when the function could not be run at all.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Args};
use paddock_functions::{
    Batch, BatchMode, Call, FnResult, FunctionsError, Options, Pool, PoolConfig, Priority,
};

/// Exit status when the function could not be run.
const EXIT_NOT_RUN: i32 = 125;
/// Exit status on bad usage or input.
const EXIT_USAGE: i32 = 2;

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("source").required(true).args(["code", "file"])))]
pub struct FnArgs {
    /// The function's code: a function body (`return …`) or a script that
    /// assigns `output`; `input` holds the parsed input.
    #[arg(long, value_name = "CODE")]
    pub code: Option<String>,
    /// Read the code from a file.
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// The input: JSON text, or @FILE to read it from a file (@- for stdin).
    #[arg(
        long,
        value_name = "JSON|@FILE",
        default_value = "null",
        conflicts_with = "inputs",
        allow_hyphen_values = true
    )]
    pub input: String,
    /// Batch: a JSON Lines file (- for stdin), one input per line; prints
    /// one result object per line.
    #[arg(long, value_name = "FILE")]
    pub inputs: Option<String>,
    /// Batch: run every input in one shared context (faster; globals the
    /// code sets stay visible to later inputs of the batch).
    #[arg(long, requires = "inputs")]
    pub shared_context: bool,
    /// Heap limit of the function, e.g. 16M (at least 1M, at most 4G).
    #[arg(long, value_name = "SIZE", default_value = "16M", value_parser = heap_size)]
    pub memory: u64,
    /// Time limit per input, e.g. 500ms, 2s (at most 10m).
    #[arg(long, value_name = "DUR", default_value = "500ms", value_parser = fn_timeout)]
    pub timeout: Duration,
    /// Capture console.log/info/warn/error/debug in the result.
    #[arg(long)]
    pub debug: bool,
}

fn heap_size(s: &str) -> Result<u64, String> {
    let v = paddock_types::parse_size(s).map_err(|e| format!("expected {}", e.expected))?;
    if !(1 << 20..=4 << 30).contains(&v) {
        return Err("expected a size from 1M to 4G".into());
    }
    Ok(v)
}

fn fn_timeout(s: &str) -> Result<Duration, String> {
    let v = paddock_types::parse_duration(s).map_err(|e| format!("expected {}", e.expected))?;
    if v.is_zero() || v > Duration::from_secs(600) {
        return Err("expected a duration from 1ms to 10m".into());
    }
    Ok(v)
}

fn read_source(path: &str, what: &str) -> Result<String, String> {
    let mut text = String::new();
    let read = if path == "-" {
        std::io::stdin().read_to_string(&mut text).map(|_| ())
    } else {
        std::fs::read_to_string(path).map(|t| text = t)
    };
    read.map_err(|e| format!("could not read {what} from {path}: {e}"))?;
    Ok(text)
}

fn check_json(text: &str, what: &str) -> Result<(), String> {
    serde_json::from_str::<serde::de::IgnoredAny>(text)
        .map(|_| ())
        .map_err(|e| format!("{what} is not valid JSON: {e}"))
}

/// Everything `paddock fn` was asked to do, checked.
struct Plan {
    code: String,
    inputs: Vec<String>,
    batch: bool,
    options: Options,
}

fn plan(args: &FnArgs) -> Result<Plan, String> {
    let code = match (&args.code, &args.file) {
        (Some(code), _) => code.clone(),
        (None, Some(file)) => std::fs::read_to_string(file)
            .map_err(|e| format!("could not read --file {}: {e}", file.display()))?,
        (None, None) => return Err("give the code with --code or --file".into()),
    };
    let (inputs, batch) = match &args.inputs {
        Some(path) => {
            let text = read_source(path, "--inputs")?;
            let mut inputs = Vec::new();
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                check_json(line, &format!("--inputs line {}", i + 1))?;
                inputs.push(line.to_string());
            }
            (inputs, true)
        }
        None => {
            let text = match args.input.strip_prefix('@') {
                Some(path) => read_source(path, "--input")?,
                None => args.input.clone(),
            };
            check_json(&text, "--input")?;
            (vec![text], false)
        }
    };
    let options = Options {
        memory_bytes: usize::try_from(args.memory).map_err(|_| "--memory is too large")?,
        timeout: args.timeout,
        debug: args.debug,
        ..Options::default()
    };
    if code.len() > options.max_code_bytes {
        return Err(format!(
            "the code is {} bytes; at most {} are accepted",
            code.len(),
            options.max_code_bytes
        ));
    }
    if let Some((i, big)) = inputs
        .iter()
        .enumerate()
        .find(|(_, t)| t.len() > options.max_input_bytes)
    {
        return Err(format!(
            "input {} is {} bytes; at most {} are accepted",
            i + 1,
            big.len(),
            options.max_input_bytes
        ));
    }
    Ok(Plan {
        code,
        inputs,
        batch,
        options,
    })
}

fn print_results(results: &[FnResult]) -> i32 {
    let mut out = std::io::stdout().lock();
    for r in results {
        let line = match serde_json::to_string(r) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("paddock fn: could not encode the result: {e}");
                return EXIT_NOT_RUN;
            }
        };
        if writeln!(out, "{line}").is_err() {
            return EXIT_NOT_RUN;
        }
    }
    if out.flush().is_err() {
        return EXIT_NOT_RUN;
    }
    0
}

/// Runs `paddock fn` and returns its exit status.
pub fn main(args: FnArgs) -> i32 {
    let plan = match plan(&args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("paddock fn: {e}");
            return EXIT_USAGE;
        }
    };
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("paddock fn: could not locate the paddock binary: {e}");
            return EXIT_NOT_RUN;
        }
    };
    let mut config = PoolConfig::new(exe);
    config.workers = 1;
    config.queue_capacity = 1;
    config.max_memory_bytes = plan.options.memory_bytes;
    config.max_timeout = plan.options.timeout;
    config.max_batch = plan.inputs.len().max(1);
    let pool = match Pool::new(config) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("paddock fn: {e}");
            return EXIT_NOT_RUN;
        }
    };
    let outcome: Result<Vec<FnResult>, FunctionsError> = if plan.batch {
        if plan.inputs.is_empty() {
            return 0;
        }
        pool.run_batch(Batch {
            code: plan.code,
            inputs: plan.inputs,
            options: plan.options,
            mode: if args.shared_context {
                BatchMode::SharedContext
            } else {
                BatchMode::Fresh
            },
            priority: Priority::Normal,
        })
    } else {
        let input = plan
            .inputs
            .into_iter()
            .next()
            .unwrap_or_else(|| "null".into());
        pool.run(Call {
            code: plan.code,
            input,
            options: plan.options,
            priority: Priority::Normal,
        })
        .map(|r| vec![r])
    };
    drop(pool);
    match outcome {
        Ok(results) => print_results(&results),
        Err(FunctionsError::InvalidCall(e)) => {
            eprintln!("paddock fn: {e}");
            EXIT_USAGE
        }
        Err(e) => {
            eprintln!("paddock fn: {e}");
            EXIT_NOT_RUN
        }
    }
}
