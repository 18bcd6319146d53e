//! `paddock run`: one program in a fresh sandbox, then nothing left behind.

use std::os::fd::{AsFd, OwnedFd};

use paddock_jail::{JailError, RunOptions};
use paddock_types::SandboxSpec;

use crate::cli::{Lang, RunArgs};

/// Exit status when the sandbox could not be created.
const EXIT_SANDBOX: i32 = 125;

/// Runs the command and returns paddock's exit status.
pub fn main(args: RunArgs) -> i32 {
    let argv = match (&args.lang, &args.code) {
        (Some(lang), Some(code)) => {
            let (prog, flag) = match lang {
                Lang::Python => ("python3", "-c"),
                Lang::Javascript => ("node", "-e"),
                Lang::Bash => ("bash", "-c"),
            };
            vec![prog.to_string(), flag.to_string(), code.clone()]
        }
        _ if args.program.is_empty() => {
            eprintln!(
                "paddock run: no program given; use `paddock run [OPTIONS] -- PROGRAM [ARGS...]` \
                 or `--lang python|javascript|bash --code CODE`"
            );
            return 2;
        }
        _ => args.program.clone(),
    };
    let mut spec = SandboxSpec::new(argv);
    spec.limits = args.limits.to_limits();
    spec.network = args.network;
    spec.workdir = args.workdir.clone();
    spec.mounts = args.mounts.clone();
    spec.rootfs = args.rootfs.clone();
    for (k, v) in &args.env {
        spec.set_env(k, v);
    }

    let cancel = match paddock_sys::signalfd_for(&[libc::SIGINT, libc::SIGTERM]) {
        Ok(fd) => fd,
        Err(e) => {
            eprintln!("paddock: could not set up signal handling: {e}");
            return EXIT_SANDBOX;
        }
    };
    let stdin: Option<OwnedFd> = if args.stdin {
        match std::io::stdin().as_fd().try_clone_to_owned() {
            Ok(fd) => Some(fd),
            Err(e) => {
                eprintln!("paddock: could not pass stdin through: {e}");
                return EXIT_SANDBOX;
            }
        }
    } else {
        None
    };
    let limit = usize::try_from(args.output_limit).unwrap_or(usize::MAX);
    let outcome = paddock_jail::run(
        &spec,
        RunOptions {
            timeout: args.timeout,
            output_limit: limit,
            passthrough: !args.json,
            stdin,
            cancel: Some(cancel.as_fd()),
        },
    );
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => return report_failure(&e),
    };
    if let Some(sig) = outcome.cancelled_by {
        if sig == libc::SIGPIPE {
            // Our reader went away (`paddock run … | head`): end quietly, as
            // the writer of a shell pipeline does.
            return 128 + sig;
        }
        eprintln!("paddock: interrupted by signal {sig}; the sandbox was killed");
        return 128 + sig;
    }
    let result = outcome.result;
    if args.json {
        match serde_json::to_string(&result) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("paddock: could not encode the result: {e}");
                return 1;
            }
        }
        return 0;
    }
    for (truncated, name) in [
        (result.stdout_truncated, "stdout"),
        (result.stderr_truncated, "stderr"),
    ] {
        if truncated {
            eprintln!(
                "paddock: {name} was cut at {} bytes (--output-limit)",
                args.output_limit
            );
        }
    }
    match result.status {
        paddock_types::Status::Timeout => eprintln!(
            "paddock: timed out after {} (--timeout)",
            paddock_types::format_duration(args.timeout)
        ),
        paddock_types::Status::Oom => eprintln!("paddock: out of memory (--memory limit)"),
        _ => {}
    }
    result.cli_exit_code()
}

fn report_failure(e: &JailError) -> i32 {
    match e {
        JailError::ProgramNotFound(_) => {
            eprintln!("paddock: {e}");
            127
        }
        JailError::NotExecutable { .. } => {
            eprintln!("paddock: {e}");
            126
        }
        JailError::InvalidSpec(_) | JailError::MountSource { .. } => {
            eprintln!("paddock run: {e}");
            2
        }
        _ => {
            eprintln!("paddock: could not create the sandbox: {}", chain(e));
            EXIT_SANDBOX
        }
    }
}

/// The error and its causes on one line (`a: b: c`), skipping a cause whose
/// text the outer message already contains.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(cause) = cur {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = cause.source();
    }
    out
}
