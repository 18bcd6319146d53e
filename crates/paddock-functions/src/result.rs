//! The result object of one function call, as the CLI prints it and the HTTP
//! API returns it.

use serde::{Deserialize, Serialize};

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The function ran to the end and `output` holds its result.
    Ok,
    /// The function threw, did not compile, or produced an output that is not
    /// JSON (see `error`).
    Error,
    /// The deadline passed; the engine interrupted the function.
    Timeout,
    /// The function hit its heap limit.
    Oom,
}

impl Status {
    /// The word used in the result object.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Error => "error",
            Status::Timeout => "timeout",
            Status::Oom => "oom",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What went wrong, when `status` is not `ok`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FnError {
    /// The JavaScript error's `name` (`TypeError`, `SyntaxError`, …), or one
    /// of paddock's: `TimeoutError`, `OutOfMemoryError`, `OutputError`
    /// (output not JSON-serialisable or too large), `InputError`.
    pub name: String,
    /// The error's message.
    pub message: String,
    /// The engine's stack trace (`    at f (function.js:3:7)` lines), when
    /// there is one.
    pub stack: Option<String>,
    /// The line of the user's code where it happened (1-based), when known.
    pub line: Option<u32>,
}

/// Which console method wrote a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// `console.log`
    Log,
    /// `console.info`
    Info,
    /// `console.warn`
    Warn,
    /// `console.error`
    Error,
    /// `console.debug`
    Debug,
}

impl Level {
    /// All levels, in wire order.
    pub const ALL: [Level; 5] = [
        Level::Log,
        Level::Info,
        Level::Warn,
        Level::Error,
        Level::Debug,
    ];

    /// The console method's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Log => "log",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
            Level::Debug => "debug",
        }
    }
}

/// One captured `console.*` call (debug mode only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleEntry {
    /// The method called.
    pub level: Level,
    /// Its arguments, formatted and joined with spaces (strings as they are,
    /// other values as JSON when possible).
    pub message: String,
}

/// The result object of one call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FnResult {
    /// How the call ended.
    pub status: Status,
    /// The function's result (`null` unless `status` is `ok`, and `null` when
    /// the function produced `undefined`).
    pub output: serde_json::Value,
    /// Captured console lines (debug mode), in order.
    pub console: Vec<ConsoleEntry>,
    /// Whether console output went over its size cap and was cut.
    #[serde(default)]
    pub console_truncated: bool,
    /// The error, unless `status` is `ok`.
    pub error: Option<FnError>,
    /// Time the call took in the engine, from creating its runtime to having
    /// its output as JSON, in microseconds.
    pub duration_us: u64,
    /// Peak bytes the engine had allocated during the call (its heap, the
    /// built-in objects included: a fresh context alone is about 250 KB).
    pub memory_used_bytes: u64,
}

impl FnResult {
    /// A failed result with `name`/`message` and nothing else.
    pub fn failure(status: Status, name: &str, message: impl Into<String>) -> FnResult {
        FnResult {
            status,
            output: serde_json::Value::Null,
            console: Vec::new(),
            console_truncated: false,
            error: Some(FnError {
                name: name.to_string(),
                message: message.into(),
                stack: None,
                line: None,
            }),
            duration_us: 0,
            memory_used_bytes: 0,
        }
    }

    /// Whether the call succeeded.
    pub fn is_ok(&self) -> bool {
        self.status == Status::Ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialises_in_the_documented_shape() {
        let r = FnResult {
            status: Status::Ok,
            output: serde_json::json!({"a": 1}),
            console: vec![ConsoleEntry {
                level: Level::Warn,
                message: "hi".into(),
            }],
            console_truncated: false,
            error: None,
            duration_us: 12,
            memory_used_bytes: 300_000,
        };
        let v = serde_json::to_value(&r).expect("serialise");
        assert_eq!(
            v,
            serde_json::json!({
                "status": "ok", "output": {"a": 1},
                "console": [{"level": "warn", "message": "hi"}],
                "console_truncated": false, "error": null,
                "duration_us": 12, "memory_used_bytes": 300000
            })
        );
        let back: FnResult = serde_json::from_value(v).expect("deserialise");
        assert_eq!(back, r);
    }
}
