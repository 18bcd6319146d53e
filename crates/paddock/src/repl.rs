//! `paddock repl`: one sandbox, one code context, code from the terminal or
//! a pipe, output and results printed as a notebook would.
//!
//! Lines are gathered into a cell until the interpreter says the cell is
//! complete (Python's `codeop` rules: a compound statement ends with a
//! blank line), then the cell runs with its output streamed. Ctrl-C while a
//! cell runs interrupts it (Python keeps its state); at the prompt it drops
//! the half-typed cell. EOF (Ctrl-D, or the end of the pipe) runs what is
//! left and ends the REPL.

use std::io::{BufRead, IsTerminal, Write};
use std::time::Duration;

use anyhow::Context as _;
use paddock_sandbox::{
    Chunk, CodeResult, Completeness, Context, RunStatus, Sandbox, SandboxConfig, SandboxError,
};
use paddock_types::SandboxSpec;
use tokio::sync::mpsc;

use crate::cli::{Lang, ReplArgs};

/// Runs the REPL; returns the process exit status.
pub fn main(args: ReplArgs) -> i32 {
    let rt = match crate::client_runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("paddock repl: cannot start: {e}");
            return 1;
        }
    };
    match rt.block_on(repl(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("paddock repl: {e:#}");
            125
        }
    }
}

fn language(lang: Lang) -> &'static str {
    match lang {
        Lang::Python => "python",
        Lang::Javascript => "javascript",
        Lang::Bash => "bash",
    }
}

async fn repl(args: ReplArgs) -> anyhow::Result<i32> {
    let mut spec = SandboxSpec::new(Vec::new());
    spec.limits = args.limits.to_limits();
    for (k, v) in &args.env {
        spec.set_env(k, v);
    }
    spec.mounts = args.mounts.clone();
    let sandbox = Sandbox::create(SandboxConfig::new(spec)?)
        .await
        .context("cannot create the sandbox")?;
    let lang = language(args.lang);
    let context = sandbox
        .create_context(lang)
        .await
        .with_context(|| format!("cannot start a {lang} context"))?;
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!(
            "paddock repl: {lang} in a sandbox ({} memory, {} disk). Ctrl-D ends, Ctrl-C interrupts.",
            paddock_types::format_size(args.limits.memory),
            paddock_types::format_size(args.limits.disk)
        );
    }
    let lines = read_lines();
    let code = session(&context, lines, interactive, args.timeout).await;
    let _ = sandbox.kill().await;
    code
}

/// Reads stdin on a thread (blocking reads cannot be cancelled); `None` at EOF.
fn read_lines() -> mpsc::UnboundedReceiver<Option<String>> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        let mut lock = stdin.lock();
        loop {
            let mut line = String::new();
            match lock.read_line(&mut line) {
                Ok(0) | Err(_) => {
                    let _ = tx.send(None);
                    return;
                }
                Ok(_) => {
                    if tx.send(Some(line)).is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

fn prompt(interactive: bool, continuation: bool) {
    if interactive {
        eprint!("{}", if continuation { "... " } else { ">>> " });
        let _ = std::io::stderr().flush();
    }
}

async fn session(
    context: &Context,
    mut lines: mpsc::UnboundedReceiver<Option<String>>,
    interactive: bool,
    timeout: Duration,
) -> anyhow::Result<i32> {
    let mut cell = String::new();
    let mut status = 0;
    loop {
        prompt(interactive, !cell.is_empty());
        let line = tokio::select! {
            l = lines.recv() => l.flatten(),
            _ = tokio::signal::ctrl_c() => {
                if interactive {
                    eprintln!("\nKeyboardInterrupt");
                }
                cell.clear();
                continue;
            }
        };
        let Some(line) = line else {
            if !cell.trim().is_empty() {
                status = run_cell(context, &cell, timeout).await?;
            }
            if interactive {
                eprintln!();
            }
            return Ok(status);
        };
        if cell.is_empty() && line.trim().is_empty() {
            continue;
        }
        cell.push_str(&line);
        let done = match context.complete(&cell).await {
            Ok(Completeness::Incomplete) => false,
            Ok(_) => true,
            Err(e @ SandboxError::ContextDied { .. }) => {
                status = died(context, e).await?;
                cell.clear();
                continue;
            }
            Err(e) => return Err(e).context("the sandbox stopped answering"),
        };
        if done {
            status = run_cell(context, &cell, timeout).await?;
            cell.clear();
        }
    }
}

/// Runs one cell, streaming its output; returns 1 if it failed, else 0.
async fn run_cell(context: &Context, code: &str, timeout: Duration) -> anyhow::Result<i32> {
    let mut run = context
        .run_stream(code, timeout, u64::MAX)
        .await
        .context("cannot send the cell")?;
    let mut interrupted = false;
    loop {
        tokio::select! {
            chunk = run.next_chunk() => match chunk {
                Ok(Some(Chunk::Stdout(d))) => {
                    let mut out = std::io::stdout();
                    let _ = out.write_all(&d);
                    let _ = out.flush();
                }
                Ok(Some(Chunk::Stderr(d))) => {
                    let _ = std::io::stderr().write_all(&d);
                }
                Ok(Some(Chunk::Data(_))) => {}
                Ok(None) => break,
                Err(e) => return died(context, e).await,
            },
            _ = tokio::signal::ctrl_c(), if !interrupted => {
                interrupted = true;
                let _ = context.interrupt().await;
            }
        }
    }
    match run.result().await {
        Ok(result) => Ok(show(&result)),
        Err(e) => died(context, e).await,
    }
}

fn show(result: &CodeResult) -> i32 {
    if let Some(value) = &result.result {
        println!("{value}");
    }
    if let Some(err) = &result.error {
        if err.traceback.trim().is_empty() {
            eprintln!("{}: {}", err.name, err.value);
        } else {
            eprintln!("{}", err.traceback.trim_end());
        }
    }
    if result.status == RunStatus::Timeout {
        eprintln!("(the cell hit the time limit)");
    }
    if result.restarted {
        eprintln!(
            "(the interpreter could not be interrupted and was restarted: its state is lost)"
        );
    }
    let _ = std::io::stdout().flush();
    i32::from(result.status != RunStatus::Ok)
}

/// A dead interpreter is reported and replaced; a dead sandbox ends the REPL.
async fn died(context: &Context, e: SandboxError) -> anyhow::Result<i32> {
    match e {
        SandboxError::ContextDied { death, .. } => {
            eprintln!("the interpreter died: {death}; starting a fresh one (its state is lost)");
            context
                .restart()
                .await
                .context("cannot restart the interpreter")?;
            Ok(1)
        }
        other => Err(other).context("the sandbox failed"),
    }
}
