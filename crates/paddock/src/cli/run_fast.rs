//! A direct reader of the common forms of `paddock run`'s command line.
//!
//! Building clap's parser for `run` and running it costs ~0.1 ms, which is
//! a visible share of a one-shot sandbox (the whole run of `/usr/bin/true`
//! takes ~3.5 ms). This reader accepts exactly the well-formed command
//! lines of the grammar in [`super::RunArgs`], with the same value parsers
//! and defaults, and gives up (`None`) on anything else: help, unknown
//! options, a bad value, a repeated option, a missing `--`. clap then parses
//! the same arguments and prints its usual message, so the two can differ
//! only in speed. `tests` checks that on a table of command lines.

use std::ffi::OsString;

use super::{LimitArgs, RunArgs};

/// Reads the arguments after `run`, or `None` when clap must (see above).
pub(super) fn parse(args: &[OsString]) -> Option<RunArgs> {
    let mut out = defaults()?;
    // Options given once at most (all but --env and --mount): clap refuses
    // a repeat.
    let mut seen: Vec<&str> = Vec::new();
    let mut words = args.iter();
    let mut dashes = false;
    while let Some(word) = words.next() {
        let word = word.to_str()?;
        if word == "--" {
            dashes = true;
            break;
        }
        let word = word.strip_prefix("--")?;
        let (name, inline) = match word.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (word, None),
        };
        if !matches!(name, "env" | "mount") {
            if seen.contains(&name) {
                return None;
            }
            seen.push(name);
        }
        if matches!(name, "stdin" | "json") {
            if inline.is_some() {
                return None;
            }
            *(if name == "stdin" {
                &mut out.stdin
            } else {
                &mut out.json
            }) = true;
            continue;
        }
        let value = match inline {
            Some(v) => v,
            // clap reads a separate value that looks like an option (or is
            // `--`) in ways that depend on the option: its call.
            None => Some(words.next()?.to_str()?).filter(|v| !v.starts_with('-'))?,
        };
        match name {
            "memory" => out.limits.memory = super::memory_size(value).ok()?,
            "cpus" => out.limits.cpus = super::cpus(value).ok()?,
            "pids" => out.limits.pids = pids(value)?,
            "disk" => out.limits.disk = super::size(value).ok()?,
            "timeout" => out.timeout = super::duration(value).ok()?,
            "output-limit" => out.output_limit = super::size(value).ok()?,
            "network" => out.network = super::network(value).ok()?,
            "workdir" => out.workdir = super::abs_path(value).ok()?,
            "rootfs" => out.rootfs = Some(super::abs_path(value).ok()?),
            "lang" => out.lang = Some(lang(value)?),
            "code" => out.code = Some(value.to_string()),
            "env" => out.env.push(super::env_pair(value).ok()?),
            "mount" => out.mounts.push(super::mount(value).ok()?),
            _ => return None,
        }
    }
    for word in words {
        out.program.push(word.to_str()?.to_string());
    }
    // clap's rules: --lang and --code come together, --code excludes a
    // program; a program needs the `--` (it is `last`).
    let snippet = out.lang.is_some() || out.code.is_some();
    if out.lang.is_some() != out.code.is_some() || (snippet && !out.program.is_empty()) {
        return None;
    }
    if !dashes && !snippet {
        return None;
    }
    Some(out)
}

/// The defaults of [`RunArgs`], through the same parsers as clap's.
fn defaults() -> Option<RunArgs> {
    Some(RunArgs {
        limits: LimitArgs {
            memory: super::memory_size("512M").ok()?,
            cpus: super::cpus("1").ok()?,
            pids: pids("256")?,
            disk: super::size("256M").ok()?,
        },
        timeout: super::duration("30s").ok()?,
        output_limit: super::size("1M").ok()?,
        network: super::network("none").ok()?,
        env: Vec::new(),
        workdir: super::abs_path("/home/user").ok()?,
        mounts: Vec::new(),
        rootfs: None,
        stdin: false,
        json: false,
        lang: None,
        code: None,
        program: Vec::new(),
    })
}

/// `--pids`: clap's `u64` parser with the range 1..=1_000_000.
fn pids(value: &str) -> Option<u64> {
    let n: u64 = value.parse().ok()?;
    (1..=1_000_000).contains(&n).then_some(n)
}

fn lang(value: &str) -> Option<super::Lang> {
    match value {
        "python" => Some(super::Lang::Python),
        "javascript" => Some(super::Lang::Javascript),
        "bash" => Some(super::Lang::Bash),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn clap(args: &[&str]) -> Result<RunArgs, clap::Error> {
        super::super::RunOnly::try_parse_from(std::iter::once("run").chain(args.iter().copied()))
            .map(|r| r.run)
    }

    fn fast(args: &[&str]) -> Option<RunArgs> {
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        parse(&args)
    }

    /// Command lines both must read, identically.
    const ACCEPTED: &[&[&str]] = &[
        &["--", "/usr/bin/true"],
        &["--"],
        &["--json", "--", "echo", "a b", "--json", "-x"],
        &[
            "--memory", "64M", "--cpus", "0.5", "--pids", "64", "--disk", "32M", "--", "sh",
        ],
        &[
            "--memory=1G",
            "--cpus=2",
            "--pids=1",
            "--disk=1K",
            "--",
            "sh",
            "-c",
            "x",
        ],
        &["--timeout", "500ms", "--output-limit", "64K", "--", "yes"],
        &[
            "--timeout=2m",
            "--output-limit=2K",
            "--network",
            "loopback",
            "--",
            "x",
        ],
        &["--env", "A=1", "--env", "B=x=y", "--env=C=", "--", "env"],
        &["--workdir", "/tmp", "--stdin", "--", "cat"],
        &[
            "--mount",
            "/etc:/data",
            "--mount=/tmp:/scratch:rw",
            "--",
            "ls",
        ],
        &["--rootfs", "/srv/base", "--", "ls"],
        &["--lang", "python", "--code", "print(1)"],
        &["--code=1+1", "--lang=javascript", "--json"],
        &["--lang", "bash", "--code=-n"],
        &["--code", "x", "--lang", "python", "--stdin"],
    ];

    /// Command lines the fast reader leaves to clap (errors, help, forms it
    /// does not take).
    const LEFT_TO_CLAP: &[&[&str]] = &[
        &[],
        &["true"],
        &["--help"],
        &["-h"],
        &["--version"],
        &["--bogus", "--", "x"],
        &["--memory", "1M", "--", "x"],
        &["--memory", "lots", "--", "x"],
        &["--memory", "64M", "--memory", "64M", "--", "x"],
        &["--pids", "0", "--", "x"],
        &["--pids", "2000000", "--", "x"],
        &["--timeout"],
        &["--timeout", "-5s", "--", "x"],
        &["--network", "host", "--", "x"],
        &["--workdir", "relative", "--", "x"],
        &["--workdir", "/a/../b", "--", "x"],
        &["--env", "NOEQUALS", "--", "x"],
        &["--mount", "/a", "--", "x"],
        &["--lang", "python"],
        &["--code", "1"],
        &["--lang", "ruby", "--code", "1"],
        &["--lang", "python", "--code", "1", "--", "x"],
        &["--json=yes", "--", "x"],
        &["--stdin", "--stdin", "--", "x"],
        &["-j", "--", "x"],
        &["--code", "--", "--lang", "bash"],
        &["--code", "-x", "--lang", "bash"],
    ];

    #[test]
    fn reads_what_clap_reads() {
        for args in ACCEPTED {
            let by_clap = clap(args).unwrap_or_else(|e| panic!("clap rejects {args:?}: {e}"));
            let by_fast = fast(args).unwrap_or_else(|| panic!("fast path rejects {args:?}"));
            assert_eq!(
                format!("{by_fast:?}"),
                format!("{by_clap:?}"),
                "different readings of {args:?}"
            );
        }
    }

    #[test]
    fn leaves_the_rest_to_clap() {
        for args in LEFT_TO_CLAP {
            assert!(fast(args).is_none(), "fast path took {args:?}");
        }
        // All of them are errors for clap too, except an empty command line
        // (which `run` itself reports) and values that look like options,
        // which clap reads its own way.
        for args in LEFT_TO_CLAP.iter().filter(|a| !a.is_empty()) {
            let hyphen_value = args
                .windows(2)
                .any(|w| w[0] == "--code" && w[1].starts_with('-'));
            if !hyphen_value {
                assert!(clap(args).is_err(), "clap accepts {args:?}");
            }
        }
    }
}
