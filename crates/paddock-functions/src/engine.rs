//! The engine: QuickJS (quickjs-ng through `rquickjs`), a fresh runtime and
//! context for every call.
//!
//! # What the code sees
//!
//! The code is compiled as the body of a function, exactly as if written
//! `(function (input) {` *code* `\n;return output\n})`, in sloppy mode (a
//! `"use strict"` directive at its top makes it strict). So:
//!
//! - `input` is the parsed JSON input (also `globalThis.input`);
//! - the result is the value the body `return`s, if that is not
//!   `undefined`; otherwise the value of `output` (assign it: `output = …`,
//!   or declare it with `var`/`let`/`const` at the top level of the code);
//! - when that value is a `Promise`, the engine runs the job queue and takes
//!   what it settles to (there are no timers, so only promises the code
//!   resolves itself can settle); a promise rejected and never handled makes
//!   the call an error, as in Node;
//! - a bare expression (`input.a + 1` without `return`) gives `null`.
//!
//! Line numbers in errors are the code's own (the wrapper starts on the
//! code's first line).
//!
//! Globals are the ECMAScript built-ins of quickjs-ng (Object, Array, JSON,
//! Math, Date, RegExp, Map/Set, WeakMap/WeakSet/WeakRef, Proxy, Reflect,
//! Promise, typed arrays, BigInt, Symbol, `eval`, `Function`), plus
//! `console` (`log`, `info`, `warn`, `error`, `debug`: captured in debug
//! mode, ignored otherwise). There is no `require`, `import`,
//! `process`, filesystem, network, timer (`setTimeout`, `performance`) or
//! module loader: `import('x')` rejects.
//!
//! # Limits
//!
//! - heap: enforced by the runtime's allocator, which refuses any
//!   allocation past the limit (every allocation of the runtime counts, the
//!   built-ins too; on the fast path sizes are rounded up to the arena's
//!   size classes, at most a quarter more); hitting it gives `oom`;
//! - time: an interrupt handler the engine polls while running code,
//!   checking a deadline; the interruption cannot be caught by the code;
//! - stack: [`STACK_BYTES`] of native stack, so deep recursion throws
//!   `RangeError` instead of crashing;
//! - input, output and console sizes (see [`Options`]).
//!
//! # A fresh heap per call
//!
//! Normally a call starts from a copy of a template runtime + context made
//! once per engine (see `snapshot.rs`): the same state as a new runtime,
//! for the price of a `memcpy`. Debug mode (its console is made of Rust
//! callbacks) and heap limits too large for the template's arena build a
//! new runtime and context instead. Both paths give the same results; the
//! unit tests run the same cases on both.

use std::cell::{Cell, RefCell};
use std::ffi::CString;
use std::rc::Rc;
use std::time::{Duration, Instant};

use rquickjs::allocator::Allocator;
use rquickjs::context::intrinsic;
use rquickjs::function::Rest;
use rquickjs::{
    CatchResultExt, CaughtError, Coerced, Context, Ctx, Function, Object, Runtime, Value, qjs,
};

use crate::cache::{CacheStats, CompileCache, Compiled};
use crate::result::{ConsoleEntry, FnError, FnResult, Level, Status};
use crate::snapshot::{ArenaHeap, Template};

/// Native stack the engine may use before recursion becomes a `RangeError`.
pub const STACK_BYTES: usize = 512 << 10;

/// The file name errors point at (`function.js:LINE:COLUMN`).
pub const FILE_NAME: &str = "function.js";

const PREFIX: &str = "(function (input) {";
const SUFFIX: &str = "\n;return output\n})";

/// Runs once per context before the code: a silent `console`, and the
/// check that refuses what JSON would silently drop or mangle (functions
/// and symbols, at any depth; the engine's JSON.stringify itself refuses
/// cycles and BigInt). The check walks the value iteratively after a
/// successful JSON.stringify (so the graph has no cycle) along the edges
/// JSON follows: own enumerable keys, array elements, not into objects
/// with a `toJSON` method.
const PRELUDE: &str = r#"(function () {
"use strict";
const noop = function () {};
globalThis.console = { log: noop, info: noop, warn: noop, error: noop, debug: noop };
const bad = function (where, t) {
  return new TypeError("output is not JSON-serialisable: " + where + " is a " + t);
};
return function (root) {
  const t0 = typeof root;
  if (t0 === "function" || t0 === "symbol") throw bad("output itself", t0);
  if (root === null || t0 !== "object") return;
  const stack = [root];
  while (stack.length > 0) {
    const v = stack.pop();
    if (typeof v.toJSON === "function") continue;
    const keys = Array.isArray(v) ? null : Object.keys(v);
    const n = keys === null ? v.length : keys.length;
    for (let i = 0; i < n; i++) {
      const k = keys === null ? i : keys[i];
      const x = v[k];
      const t = typeof x;
      if (t === "object") {
        if (x !== null) stack.push(x);
      } else if (t === "function" || t === "symbol") {
        throw bad("the value at key " + JSON.stringify(String(k)), t);
      }
    }
  }
};
})()"#;

/// Limits and switches of one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Heap limit of the call's runtime, in bytes.
    pub memory_bytes: usize,
    /// Wall-clock budget of the call.
    pub timeout: Duration,
    /// Capture `console.*` output.
    pub debug: bool,
    /// Largest input (JSON text) accepted, in bytes.
    pub max_input_bytes: usize,
    /// Largest output (JSON text) accepted, in bytes; more is an error.
    pub max_output_bytes: usize,
    /// Console bytes kept per call (debug mode); the rest is dropped and
    /// `console_truncated` set.
    pub max_console_bytes: usize,
    /// Largest code accepted, in bytes.
    pub max_code_bytes: usize,
}

impl Options {
    /// Default heap limit: 16 MiB.
    pub const DEFAULT_MEMORY: usize = 16 << 20;
    /// Default budget: 500 ms.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(500);
    /// Smallest heap limit accepted (the built-ins alone need ~250 KB).
    pub const MIN_MEMORY: usize = 1 << 20;
}

impl Default for Options {
    fn default() -> Self {
        Options {
            memory_bytes: Self::DEFAULT_MEMORY,
            timeout: Self::DEFAULT_TIMEOUT,
            debug: false,
            max_input_bytes: 1 << 20,
            max_output_bytes: 1 << 20,
            max_console_bytes: 64 << 10,
            max_code_bytes: 1 << 20,
        }
    }
}

/// How a batch runs its inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BatchMode {
    /// Every input gets a fresh runtime and context (the code is compiled
    /// once): exactly the isolation of single calls.
    #[default]
    Fresh,
    /// The inputs share one runtime and context: the compiled function is
    /// created once and called for each input. Much faster, but globals the
    /// code writes stay visible to the next input of the same batch. The
    /// heap limit holds for the whole batch; after a timeout or an `oom` the
    /// next input starts in a fresh context.
    SharedContext,
}

/// The result of a call before its output is parsed on the host: what
/// crosses the worker channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawResult {
    pub status: Status,
    /// The output as JSON text (`None`: null).
    pub output_json: Option<String>,
    pub console: Vec<ConsoleEntry>,
    pub console_truncated: bool,
    pub error: Option<FnError>,
    pub duration_us: u64,
    pub memory_used_bytes: u64,
}

impl RawResult {
    pub(crate) fn failed(status: Status, error: FnError, started: Instant) -> RawResult {
        RawResult {
            status,
            output_json: None,
            console: Vec::new(),
            console_truncated: false,
            error: Some(error),
            duration_us: micros(started.elapsed()),
            memory_used_bytes: 0,
        }
    }

    /// Parses the output text into the result object.
    pub(crate) fn into_result(self) -> FnResult {
        let mut result = FnResult {
            status: self.status,
            output: serde_json::Value::Null,
            console: self.console,
            console_truncated: self.console_truncated,
            error: self.error,
            duration_us: self.duration_us,
            memory_used_bytes: self.memory_used_bytes,
        };
        if let Some(text) = self.output_json {
            match serde_json::from_str(&text) {
                Ok(v) => result.output = v,
                Err(e) => {
                    result.status = Status::Error;
                    result.error = Some(error(
                        "OutputError",
                        format!("the output could not be read back as JSON: {e}"),
                    ));
                }
            }
        }
        result
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn error(name: &str, message: impl Into<String>) -> FnError {
    FnError {
        name: name.to_string(),
        message: message.into(),
        stack: None,
        line: None,
    }
}

/// Formats a byte count the way users write limits (`16 MiB`, `512 KiB`).
pub(crate) fn human_bytes(n: usize) -> String {
    if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{} MiB", n >> 20)
    } else if n >= 1 << 10 && n.is_multiple_of(1 << 10) {
        format!("{} KiB", n >> 10)
    } else {
        format!("{n} bytes")
    }
}

/// Counts the engine's allocations (current total and peak) and enforces
/// the heap limit: an allocation that would take the total over `limit`
/// fails, and `failed` records that it happened (QuickJS then throws its
/// out-of-memory error, or `null` when even that error cannot be
/// allocated, so the flag is what tells an `oom` for sure).
struct Tracker {
    current: Cell<usize>,
    peak: Cell<usize>,
    limit: usize,
    failed: Cell<bool>,
}

impl Tracker {
    fn new(limit: usize) -> Tracker {
        Tracker {
            current: Cell::new(0),
            peak: Cell::new(0),
            limit,
            failed: Cell::new(false),
        }
    }
    /// Whether `n` more bytes (`freed` fewer) fit; records a refusal.
    fn admits(&self, n: usize, freed: usize) -> bool {
        let after = (self.current.get() - freed.min(self.current.get())).saturating_add(n);
        if after > self.limit {
            self.failed.set(true);
            false
        } else {
            true
        }
    }
    fn add(&self, n: usize) {
        let now = self.current.get() + n;
        self.current.set(now);
        if now > self.peak.get() {
            self.peak.set(now);
        }
    }
    fn sub(&self, n: usize) {
        self.current.set(self.current.get().saturating_sub(n));
    }
}

/// libc's allocator with a [`Tracker`], which enforces the heap limit.
struct TrackingAllocator(Rc<Tracker>);

// SAFETY: every pointer handed out comes from libc's malloc family and is
// released with free/realloc; sizes are read with malloc_usable_size on
// pointers of that family only.
unsafe impl Allocator for TrackingAllocator {
    fn alloc(&mut self, size: usize) -> *mut u8 {
        if !self.0.admits(size, 0) {
            return std::ptr::null_mut();
        }
        // SAFETY: plain malloc; a null result is passed on to QuickJS,
        // which reports an out-of-memory error.
        let p = unsafe { libc::malloc(size.max(1)) }.cast::<u8>();
        if !p.is_null() {
            // SAFETY: `p` was just returned by malloc.
            self.0.add(unsafe { Self::usable_size(p) });
        }
        p
    }

    fn calloc(&mut self, count: usize, size: usize) -> *mut u8 {
        if !self.0.admits(count.saturating_mul(size), 0) {
            return std::ptr::null_mut();
        }
        // SAFETY: plain calloc (it checks `count * size` for overflow).
        let p = unsafe { libc::calloc(count.max(1), size.max(1)) }.cast::<u8>();
        if !p.is_null() {
            // SAFETY: `p` was just returned by calloc.
            self.0.add(unsafe { Self::usable_size(p) });
        }
        p
    }

    unsafe fn dealloc(&mut self, ptr: *mut u8) {
        if ptr.is_null() {
            return;
        }
        // SAFETY: the caller (QuickJS) passes a live pointer from this
        // allocator, freed exactly once.
        unsafe {
            self.0.sub(Self::usable_size(ptr));
            libc::free(ptr.cast());
        }
    }

    unsafe fn realloc(&mut self, ptr: *mut u8, new_size: usize) -> *mut u8 {
        if new_size == 0 {
            // SAFETY: same contract as `dealloc`.
            unsafe { self.dealloc(ptr) };
            return std::ptr::null_mut();
        }
        let old = if ptr.is_null() {
            0
        } else {
            // SAFETY: `ptr` is live and from this allocator.
            unsafe { Self::usable_size(ptr) }
        };
        if !self.0.admits(new_size, old) {
            return std::ptr::null_mut();
        }
        // SAFETY: `ptr` is null or live and from this allocator; on failure
        // it stays valid and is still counted.
        let p = unsafe { libc::realloc(ptr.cast(), new_size) }.cast::<u8>();
        if !p.is_null() {
            self.0.sub(old);
            // SAFETY: `p` was just returned by realloc.
            self.0.add(unsafe { Self::usable_size(p) });
        }
        p
    }

    unsafe fn usable_size(ptr: *mut u8) -> usize {
        // SAFETY: the caller passes a live pointer from the malloc family.
        unsafe { libc::malloc_usable_size(ptr.cast()) }
    }
}

/// The built-ins every context gets on top of the base objects (Object,
/// Function, Array, Error, Number, String, Boolean, Symbol, BigInt, Math,
/// Reflect, JSON's parse is separate, iterators, generators).
pub(crate) type Builtins = (
    intrinsic::Date,
    intrinsic::Eval,
    intrinsic::RegExpCompiler,
    intrinsic::RegExp,
    intrinsic::Json,
    intrinsic::Proxy,
    intrinsic::MapSet,
    intrinsic::TypedArrays,
    intrinsic::Promise,
    intrinsic::WeakRef,
);

/// Console lines of one call, with the byte cap.
struct ConsoleSink {
    entries: Vec<ConsoleEntry>,
    bytes: usize,
    cap: usize,
    truncated: bool,
}

impl ConsoleSink {
    fn push(&mut self, level: Level, mut message: String) {
        if self.truncated {
            return;
        }
        let room = self.cap.saturating_sub(self.bytes);
        if message.len() > room {
            let mut cut = room;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            self.truncated = true;
            if message.is_empty() {
                return;
            }
        }
        self.bytes += message.len();
        self.entries.push(ConsoleEntry { level, message });
    }

    fn full(&self) -> bool {
        self.truncated || self.bytes >= self.cap
    }
}

/// State the runtime's callbacks share with the host code.
pub(crate) struct Shared {
    deadline: Cell<Instant>,
    interrupted: Cell<bool>,
    rejections: RefCell<Vec<(usize, String)>>,
    console: RefCell<ConsoleSink>,
}

/// The heap counters of the running call, whichever allocator serves it.
pub(crate) trait Heap {
    /// An allocation was refused (the heap limit was hit).
    fn failed(&self) -> bool;
    /// Peak bytes since the last reset.
    fn peak(&self) -> usize;
    /// Starts counting a new call.
    fn reset_peak(&self);
}

impl Heap for Tracker {
    fn failed(&self) -> bool {
        self.failed.get()
    }
    fn peak(&self) -> usize {
        self.peak.get()
    }
    fn reset_peak(&self) {
        self.peak.set(self.current.get());
        self.failed.set(false);
    }
}

/// Sets the runtime's interrupt handler (the deadline) and promise
/// rejection tracker, both reporting into `shared`.
pub(crate) fn wire(runtime: &Runtime, shared: &Rc<Shared>) {
    let s = Rc::clone(shared);
    runtime.set_interrupt_handler(Some(Box::new(move || {
        if s.interrupted.get() || Instant::now() >= s.deadline.get() {
            s.interrupted.set(true);
            true
        } else {
            false
        }
    })));
    let s = Rc::clone(shared);
    runtime.set_host_promise_rejection_tracker(Some(Box::new(
        move |ctx: Ctx<'_>, promise: Value<'_>, reason: Value<'_>, handled: bool| {
            let key = promise_key(&promise);
            let mut list = s.rejections.borrow_mut();
            if handled {
                list.retain(|(k, _)| *k != key);
            } else {
                list.push((key, describe_value(&ctx, reason)));
            }
        },
    )));
}

/// One fresh runtime + context with the ordinary allocator (the slow path:
/// debug mode, very large heaps, or no template).
struct Session {
    context: Context,
    _runtime: Runtime,
    tracker: Rc<Tracker>,
}

impl Session {
    fn new(opts: &Options, shared: &Rc<Shared>) -> Result<Session, FnError> {
        let tracker = Rc::new(Tracker::new(opts.memory_bytes));
        let runtime = Runtime::new_with_alloc(TrackingAllocator(Rc::clone(&tracker)))
            .map_err(|e| error("InternalError", format!("could not create a runtime: {e}")))?;
        runtime.set_max_stack_size(STACK_BYTES);
        wire(&runtime, shared);
        let context = Context::custom::<Builtins>(&runtime).map_err(|e| {
            if matches!(e, rquickjs::Error::Allocation) {
                error(
                    "OutOfMemoryError",
                    format!(
                        "the heap limit ({}) is too small for the built-in objects",
                        human_bytes(opts.memory_bytes)
                    ),
                )
            } else {
                error("InternalError", format!("could not create a context: {e}"))
            }
        })?;
        Ok(Session {
            context,
            _runtime: runtime,
            tracker,
        })
    }
}

fn promise_key(promise: &Value<'_>) -> usize {
    // SAFETY: reads the pointer part of a value we hold; it is only used as
    // an identity, never dereferenced.
    unsafe { qjs::JS_VALUE_GET_PTR(promise.as_raw()) as usize }
}

/// `String(value)`, or a fallback when even that throws.
fn describe_value<'js>(ctx: &Ctx<'js>, value: Value<'js>) -> String {
    if let Some(e) = value.as_exception() {
        let name: Option<String> = e.get::<_, Coerced<String>>("name").ok().map(|c| c.0);
        let msg = e.message().unwrap_or_default();
        return match name {
            Some(n) => format!("{n}: {msg}"),
            None => msg,
        };
    }
    if let Some(s) = value.as_string() {
        return s.to_string().unwrap_or_default();
    }
    if value.is_object()
        && let Ok(Some(s)) = ctx.json_stringify(value.clone())
        && let Ok(s) = s.to_string()
    {
        return s;
    }
    match value.get::<Coerced<String>>() {
        Ok(c) => c.0,
        Err(_) => {
            let _ = ctx.catch();
            format!("<{}>", value.type_name())
        }
    }
}

/// The 1-based line in `function.js` of the first frame that has one.
fn line_of(stack: &str, code_lines: u32) -> Option<u32> {
    let marker = format!("{FILE_NAME}:");
    let at = stack.find(&marker)? + marker.len();
    let digits: String = stack[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    let line: u32 = digits.parse().ok()?;
    // An error at the end of the input (an unclosed brace) points into the
    // wrapper's last lines: report the code's last line.
    Some(line.clamp(1, code_lines.max(1)))
}

/// Compiles `code` (wrapped, see the module docs) to bytecode.
fn compile(code: &str, opts: &Options) -> Compiled {
    let wrapped = CString::new(format!("{PREFIX}{code}{SUFFIX}")).map_err(|_| {
        error(
            "SyntaxError",
            "the code contains a NUL character, which JavaScript source cannot hold here",
        )
    })?;
    let code_lines = u32::try_from(code.lines().count()).unwrap_or(u32::MAX);
    let runtime = Runtime::new()
        .map_err(|e| error("InternalError", format!("could not create a runtime: {e}")))?;
    runtime.set_memory_limit(
        opts.memory_bytes
            .max(wrapped.as_bytes().len() * 8 + (4 << 20)),
    );
    runtime.set_max_stack_size(STACK_BYTES);
    let context = Context::custom::<(intrinsic::Eval, intrinsic::RegExpCompiler)>(&runtime)
        .map_err(|e| error("InternalError", format!("could not create a context: {e}")))?;
    let file = CString::new(FILE_NAME).map_err(|_| error("InternalError", "bad file name"))?;
    context.with(|ctx| {
        let raw = ctx.as_raw().as_ptr();
        // SAFETY: `raw` is a live context; the source and file name are
        // NUL-terminated and outlive the call; COMPILE_ONLY returns a
        // function-bytecode value (or an exception) that we own.
        let compiled = unsafe {
            qjs::JS_Eval(
                raw,
                wrapped.as_ptr(),
                wrapped.as_bytes().len() as _,
                file.as_ptr(),
                (qjs::JS_EVAL_TYPE_GLOBAL | qjs::JS_EVAL_FLAG_COMPILE_ONLY) as i32,
            )
        };
        // SAFETY: reads the tag of the value just returned.
        if unsafe { qjs::JS_VALUE_GET_TAG(compiled) } == qjs::JS_TAG_EXCEPTION {
            let caught = CaughtError::from_error(&ctx, rquickjs::Error::Exception);
            let mut e = describe_error(&ctx, caught, code_lines);
            if e.name == "InternalError" && e.message.contains("out of memory") {
                e.message = "the code is too large to compile within the heap limit".into();
            }
            return Err(e);
        }
        let mut len: qjs::size_t = 0;
        // SAFETY: `compiled` is a live bytecode value of this context;
        // JS_WriteObject returns a js_malloc'd buffer of `len` bytes (or
        // null on failure) that we copy and free below.
        let buf = unsafe {
            qjs::JS_WriteObject(raw, &mut len, compiled, qjs::JS_WRITE_OBJ_BYTECODE as i32)
        };
        let out = if buf.is_null() {
            let _ = ctx.catch();
            Err(error(
                "InternalError",
                "could not serialise the compiled code",
            ))
        } else {
            // SAFETY: `buf` points to `len` initialised bytes (see above).
            let bytes = unsafe { std::slice::from_raw_parts(buf, len as usize) }.to_vec();
            // SAFETY: `buf` came from this context's allocator and is freed once.
            unsafe { qjs::js_free(raw, buf.cast()) };
            Ok(std::sync::Arc::new(bytes))
        };
        // SAFETY: we own `compiled` and release it once.
        unsafe { qjs::JS_FreeValue(raw, compiled) };
        out
    })
}

/// Turns an exception into the result's error object.
fn describe_error<'js>(ctx: &Ctx<'js>, caught: CaughtError<'js>, code_lines: u32) -> FnError {
    match caught {
        CaughtError::Exception(e) => {
            let name = e
                .get::<_, Coerced<String>>("name")
                .map(|c| c.0)
                .unwrap_or_else(|_| "Error".to_string());
            let message = e.message().unwrap_or_default();
            let stack = e.stack().filter(|s| !s.is_empty());
            let line = stack.as_deref().and_then(|s| line_of(s, code_lines));
            FnError {
                name,
                message,
                stack,
                line,
            }
        }
        CaughtError::Value(v) => error("Error", format!("uncaught {}", describe_value(ctx, v))),
        CaughtError::Error(rquickjs::Error::Allocation) => error("InternalError", "out of memory"),
        CaughtError::Error(e) => error("InternalError", e.to_string()),
    }
}

/// The engine of one thread: compile cache, the template of the fast path
/// (see [`crate::snapshot`]) and the per-call machinery.
///
/// Every call gets a fresh heap: either a copy of the template (a runtime
/// and context just made, restored byte for byte), or, in debug mode and
/// for heap limits too large for the template's arena, a newly created
/// runtime and context.
pub struct Engine {
    cache: CompileCache,
    prelude: std::sync::Arc<Vec<u8>>,
    shared: Rc<Shared>,
    template: Option<Template>,
}

// SAFETY: the engine's `Rc`s and rquickjs handles (template runtime and
// context, the callbacks' shared state) are all owned by the engine and
// never handed out, so moving the engine moves every clone together; it is
// not `Sync`, so only one thread uses it at a time. QuickJS keeps no
// thread-local state, and the stack limit is re-based on the calling
// thread's stack at each call.
unsafe impl Send for Engine {}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("cache", &self.cache)
            .field("template", &self.template.is_some())
            .finish()
    }
}

/// Why an [`Engine`] could not be made.
#[derive(Debug, thiserror::Error)]
#[error("the JavaScript engine could not start: {0}")]
pub struct EngineInitError(String);

impl Engine {
    /// An engine with the default compile cache bounds.
    pub fn new() -> Result<Engine, EngineInitError> {
        Self::with_cache(CompileCache::new(
            CompileCache::DEFAULT_ENTRIES,
            CompileCache::DEFAULT_BYTES,
        ))
    }

    /// An engine with the given cache.
    pub fn with_cache(cache: CompileCache) -> Result<Engine, EngineInitError> {
        let prelude = compile_script(&format!("{PRELUDE}\n"), "prelude.js")
            .map_err(|e| EngineInitError(e.message))?;
        let random = compile_script(crate::snapshot::SEEDED_RANDOM, "random.js")
            .map_err(|e| EngineInitError(e.message))?;
        let shared = Rc::new(Shared {
            // Far away while the template is built (its code must not be
            // interrupted); every call sets its own.
            deadline: Cell::new(Instant::now() + Duration::from_secs(3600)),
            interrupted: Cell::new(false),
            rejections: RefCell::new(Vec::new()),
            console: RefCell::new(ConsoleSink {
                entries: Vec::new(),
                bytes: 0,
                cap: 0,
                truncated: false,
            }),
        });
        let template = Template::new(&prelude, &random, &shared);
        Ok(Engine {
            cache,
            prelude,
            shared,
            template,
        })
    }

    /// Whether calls take the fast path (a restored template) when they
    /// can; `false` only if the template could not be built.
    pub fn has_template(&self) -> bool {
        self.template.is_some()
    }

    /// Turns the fast path off (every call then builds a new runtime and
    /// context): for comparisons and tests.
    pub fn disable_template(&mut self) {
        self.template = None;
    }

    /// The compile cache's counters.
    pub fn cache_stats(&self) -> CacheStats {
        self.cache.stats()
    }

    /// Runs `code` on `input` (JSON text) on a fresh heap.
    pub fn run(&mut self, code: &str, input: &str, opts: &Options) -> FnResult {
        self.run_raw(code, input, opts).into_result()
    }

    /// Runs `code` on each input; see [`BatchMode`].
    pub fn run_batch(
        &mut self,
        code: &str,
        inputs: &[&str],
        opts: &Options,
        mode: BatchMode,
    ) -> Vec<FnResult> {
        self.run_batch_raw(code, inputs, opts, mode)
            .into_iter()
            .map(RawResult::into_result)
            .collect()
    }

    pub(crate) fn run_raw(&mut self, code: &str, input: &str, opts: &Options) -> RawResult {
        self.run_batch_raw(code, &[input], opts, BatchMode::Fresh)
            .pop()
            .unwrap_or_else(|| {
                RawResult::failed(
                    Status::Error,
                    error("InternalError", "no result"),
                    Instant::now(),
                )
            })
    }

    pub(crate) fn run_batch_raw(
        &mut self,
        code: &str,
        inputs: &[&str],
        opts: &Options,
        mode: BatchMode,
    ) -> Vec<RawResult> {
        let started = Instant::now();
        let mut results = Vec::with_capacity(inputs.len());
        if code.len() > opts.max_code_bytes {
            let e = error(
                "InputError",
                format!(
                    "the code is {} bytes, more than the limit of {}",
                    code.len(),
                    human_bytes(opts.max_code_bytes)
                ),
            );
            results.resize(inputs.len(), RawResult::failed(Status::Error, e, started));
            return results;
        }
        let compiled = self.cache.get_or_compile(code, || compile(code, opts));
        let bytecode = match compiled {
            Ok(b) => b,
            Err(e) => {
                results.resize(inputs.len(), RawResult::failed(Status::Error, e, started));
                return results;
            }
        };
        let code_lines = u32::try_from(code.lines().count()).unwrap_or(u32::MAX);
        {
            let mut sink = self.shared.console.borrow_mut();
            sink.entries.clear();
            sink.bytes = 0;
            sink.truncated = false;
            sink.cap = opts.max_console_bytes;
        }
        let shared_context = mode == BatchMode::SharedContext;
        let fast = self
            .template
            .as_ref()
            .filter(|t| !opts.debug && t.fits(opts.memory_bytes));
        let mut next = 0;
        while next < inputs.len() {
            let item_start = Instant::now();
            self.shared.interrupted.set(false);
            self.shared.deadline.set(item_start + opts.timeout);
            let run = Run {
                shared: &self.shared,
                prelude: &self.prelude,
                bytecode: &bytecode,
                inputs,
                opts,
                code_lines,
                item_start,
                shared_context,
            };
            if let Some(t) = fast {
                t.restore(opts.memory_bytes);
                t.context.with(|ctx| {
                    // SAFETY: the runtime of a live context; re-bases the
                    // stack limit on this thread's stack, here (rquickjs
                    // does it only with its `parallel` feature, and the
                    // template may have been made on another thread).
                    unsafe { qjs::JS_UpdateStackTop(qjs::JS_GetRuntime(ctx.as_raw().as_ptr())) };
                    let heap = ArenaHeap(t);
                    let loaded = (|| {
                        let seed = t.seed().clone().restore(&ctx)?;
                        let (x, y) = t.next_seed();
                        seed.call::<_, ()>((x, y))?;
                        let check = t.check.clone().restore(&ctx)?;
                        Ok((check, load(&ctx, &bytecode)?))
                    })();
                    run.items(&ctx, &heap, loaded, &mut next, &mut results);
                });
                t.trim();
            } else {
                let session = match Session::new(opts, &self.shared) {
                    Ok(s) => s,
                    Err(e) => {
                        let status = if e.name == "OutOfMemoryError" {
                            Status::Oom
                        } else {
                            Status::Error
                        };
                        results.push(RawResult::failed(status, e, item_start));
                        next += 1;
                        continue;
                    }
                };
                session.context.with(|ctx| {
                    // The prelude's value is the output check (it installs
                    // the silent console as it runs).
                    let loaded = load(&ctx, &self.prelude)
                        .and_then(|check| Ok((check, load(&ctx, &bytecode)?)));
                    if opts.debug {
                        install_console(&ctx, &self.shared);
                    }
                    run.items(&ctx, &*session.tracker, loaded, &mut next, &mut results);
                });
                drop(session);
            }
        }
        results
    }
}

/// What the inputs of one session (one fresh heap) share.
struct Run<'a> {
    shared: &'a Shared,
    prelude: &'a [u8],
    bytecode: &'a [u8],
    inputs: &'a [&'a str],
    opts: &'a Options,
    code_lines: u32,
    item_start: Instant,
    shared_context: bool,
}

impl Run<'_> {
    /// Runs inputs from `next` on: one, or (shared context) until the end or
    /// a timeout/oom that spoils the context.
    fn items<'js>(
        &self,
        ctx: &Ctx<'js>,
        heap: &dyn Heap,
        loaded: rquickjs::Result<(Function<'js>, Function<'js>)>,
        next: &mut usize,
        results: &mut Vec<RawResult>,
    ) {
        let _ = (self.prelude, self.bytecode);
        let (check, user) = match loaded.catch(ctx) {
            Ok(pair) => pair,
            Err(caught) => {
                let e = describe_error(ctx, caught, self.code_lines);
                let status = classify(self.shared, heap, &e);
                results.push(RawResult::failed(status, e, self.item_start));
                *next += 1;
                return;
            }
        };
        let mut first = true;
        while *next < self.inputs.len() {
            let t0 = if first {
                self.item_start
            } else {
                Instant::now()
            };
            first = false;
            self.shared.deadline.set(t0 + self.opts.timeout);
            self.shared.rejections.borrow_mut().clear();
            heap.reset_peak();
            let r = call_one(
                ctx,
                self.shared,
                heap,
                &user,
                &check,
                self.inputs[*next],
                self.opts,
                self.code_lines,
                t0,
            );
            *next += 1;
            let poisoned = matches!(r.status, Status::Timeout | Status::Oom);
            results.push(r);
            if !self.shared_context || poisoned {
                break;
            }
        }
    }
}

/// Compiles a trusted script of ours (the prelude) to bytecode.
fn compile_script(source: &str, name: &str) -> Compiled {
    // The prelude is an expression, not a function body: compiled as is.
    let src = CString::new(source).map_err(|_| error("InternalError", "NUL in prelude"))?;
    let runtime = Runtime::new().map_err(|e| error("InternalError", format!("runtime: {e}")))?;
    let context = Context::custom::<(intrinsic::Eval,)>(&runtime)
        .map_err(|e| error("InternalError", format!("context: {e}")))?;
    let file = CString::new(name).map_err(|_| error("InternalError", "bad name"))?;
    context.with(|ctx| {
        let raw = ctx.as_raw().as_ptr();
        // SAFETY: as in `compile`.
        let compiled = unsafe {
            qjs::JS_Eval(
                raw,
                src.as_ptr(),
                src.as_bytes().len() as _,
                file.as_ptr(),
                (qjs::JS_EVAL_TYPE_GLOBAL | qjs::JS_EVAL_FLAG_COMPILE_ONLY) as i32,
            )
        };
        // SAFETY: reads the tag of the value just returned.
        if unsafe { qjs::JS_VALUE_GET_TAG(compiled) } == qjs::JS_TAG_EXCEPTION {
            let e = describe_error(
                &ctx,
                CaughtError::from_error(&ctx, rquickjs::Error::Exception),
                1,
            );
            return Err(e);
        }
        let mut len: qjs::size_t = 0;
        // SAFETY: as in `compile`.
        let buf = unsafe {
            qjs::JS_WriteObject(raw, &mut len, compiled, qjs::JS_WRITE_OBJ_BYTECODE as i32)
        };
        let out = if buf.is_null() {
            let _ = ctx.catch();
            Err(error("InternalError", "could not serialise the prelude"))
        } else {
            // SAFETY: `buf` holds `len` bytes.
            let bytes = unsafe { std::slice::from_raw_parts(buf, len as usize) }.to_vec();
            // SAFETY: freed once, with the allocator that made it.
            unsafe { qjs::js_free(raw, buf.cast()) };
            Ok(std::sync::Arc::new(bytes))
        };
        // SAFETY: we own `compiled`.
        unsafe { qjs::JS_FreeValue(raw, compiled) };
        out
    })
}

/// Reads bytecode made by `compile`/`compile_script` and evaluates it: the
/// script's value is a function.
pub(crate) fn load<'js>(ctx: &Ctx<'js>, bytecode: &[u8]) -> rquickjs::Result<Function<'js>> {
    let raw = ctx.as_raw().as_ptr();
    // SAFETY: the bytes were written by JS_WriteObject of this same engine
    // build (`compile` above); JS_READ_OBJ_BYTECODE copies them.
    let obj = unsafe {
        qjs::JS_ReadObject(
            raw,
            bytecode.as_ptr(),
            bytecode.len() as _,
            qjs::JS_READ_OBJ_BYTECODE as i32,
        )
    };
    // SAFETY: reads the tag of the value just returned.
    if unsafe { qjs::JS_VALUE_GET_TAG(obj) } == qjs::JS_TAG_EXCEPTION {
        return Err(rquickjs::Error::Exception);
    }
    // SAFETY: JS_EvalFunction takes ownership of `obj` (a bytecode
    // function) and returns a new value or an exception.
    let value = unsafe { qjs::JS_EvalFunction(raw, obj) };
    // SAFETY: reads the tag of the value just returned.
    if unsafe { qjs::JS_VALUE_GET_TAG(value) } == qjs::JS_TAG_EXCEPTION {
        return Err(rquickjs::Error::Exception);
    }
    // SAFETY: `value` is a live, owned value of this context; `from_raw`
    // takes over that reference.
    let value = unsafe { Value::from_raw(ctx.clone(), value) };
    value
        .into_function()
        .ok_or(rquickjs::Error::new_from_js("value", "function"))
}

/// Installs the capturing console (debug mode).
fn install_console<'js>(ctx: &Ctx<'js>, shared: &Rc<Shared>) {
    let console = match Object::new(ctx.clone()) {
        Ok(o) => o,
        Err(_) => return,
    };
    for level in Level::ALL {
        let shared = Rc::clone(shared);
        let f = Function::new(ctx.clone(), move |ctx: Ctx<'js>, args: Rest<Value<'js>>| {
            if shared.console.borrow().full() {
                shared.console.borrow_mut().truncated = true;
                return;
            }
            let mut line = String::new();
            for (i, arg) in args.0.into_iter().enumerate() {
                if i > 0 {
                    line.push(' ');
                }
                line.push_str(&describe_value(&ctx, arg));
            }
            shared.console.borrow_mut().push(level, line);
        });
        if let Ok(f) = f {
            let _ = console.set(level.as_str(), f);
        }
    }
    let _ = ctx.globals().set("console", console);
}

/// The status an error stands for.
fn classify(shared: &Shared, heap: &dyn Heap, e: &FnError) -> Status {
    if shared.interrupted.get() {
        Status::Timeout
    } else if (e.name == "InternalError" && e.message == "out of memory")
        || (heap.failed() && e.message == "uncaught null")
    {
        Status::Oom
    } else {
        Status::Error
    }
}

#[allow(clippy::too_many_arguments)]
fn call_one<'js>(
    ctx: &Ctx<'js>,
    shared: &Shared,
    heap: &dyn Heap,
    user: &Function<'js>,
    check: &Function<'js>,
    input: &str,
    opts: &Options,
    code_lines: u32,
    started: Instant,
) -> RawResult {
    let outcome = (|| -> Result<Option<String>, FnError> {
        if input.len() > opts.max_input_bytes {
            return Err(error(
                "InputError",
                format!(
                    "the input is {} bytes, more than the limit of {}",
                    input.len(),
                    human_bytes(opts.max_input_bytes)
                ),
            ));
        }
        let fail =
            |e: rquickjs::Error| describe_error(ctx, CaughtError::from_error(ctx, e), code_lines);
        let input = ctx.json_parse(input).map_err(|e| {
            let mut err = fail(e);
            if err.name == "SyntaxError" {
                err.name = "InputError".into();
                err.message = format!("the input is not valid JSON: {}", err.message);
                err.stack = None;
                err.line = None;
            }
            err
        })?;
        let globals = ctx.globals();
        globals.set("input", input.clone()).map_err(fail)?;
        globals
            .set("output", Value::new_undefined(ctx.clone()))
            .map_err(fail)?;
        let returned: Value = user.call((input,)).map_err(fail)?;
        // Run the job queue (promise reactions) to the end, within the deadline.
        loop {
            if shared.interrupted.get() || Instant::now() >= shared.deadline.get() {
                shared.interrupted.set(true);
                return Err(error("InternalError", "interrupted"));
            }
            if !ctx.execute_pending_job() {
                break;
            }
        }
        let mut value = if returned.is_undefined() {
            globals.get::<_, Value>("output").map_err(fail)?
        } else {
            returned
        };
        if let Some(promise) = value.as_promise().cloned() {
            match promise.result::<Value>() {
                None => {
                    return Err(error(
                        "Error",
                        "the output is a Promise that never settled (there are no timers or I/O, \
                         so only promises the function resolves itself can settle)",
                    ));
                }
                Some(Ok(v)) => value = v,
                Some(Err(e)) => return Err(fail(e)),
            }
        }
        if let Some((_, reason)) = shared.rejections.borrow().first() {
            return Err(error(
                "UnhandledRejection",
                format!("a promise was rejected and never handled: {reason}"),
            ));
        }
        let json_error = |e: rquickjs::Error| {
            let mut err = fail(e);
            if err.name == "TypeError" {
                if !err.message.starts_with("output is not JSON") {
                    err.message = format!("output is not JSON-serialisable: {}", err.message);
                }
                err.name = "OutputError".into();
            }
            err
        };
        let text = ctx.json_stringify(value.clone()).map_err(json_error)?;
        check.call::<_, ()>((value,)).map_err(json_error)?;
        let Some(text) = text else {
            return Ok(None);
        };
        let text = text.to_string().map_err(fail)?;
        if text.len() > opts.max_output_bytes {
            return Err(error(
                "OutputError",
                format!(
                    "the output is {} bytes of JSON, more than the limit of {}",
                    text.len(),
                    human_bytes(opts.max_output_bytes)
                ),
            ));
        }
        Ok(Some(text))
    })();
    let (console, truncated) = {
        let mut sink = shared.console.borrow_mut();
        let truncated = sink.truncated;
        sink.truncated = false;
        sink.bytes = 0;
        (std::mem::take(&mut sink.entries), truncated)
    };
    let memory_used_bytes = heap.peak() as u64;
    let duration_us = micros(started.elapsed());
    match outcome {
        Ok(output_json) => RawResult {
            status: Status::Ok,
            output_json,
            console,
            console_truncated: truncated,
            error: None,
            duration_us,
            memory_used_bytes,
        },
        Err(mut e) => {
            let status = classify(shared, heap, &e);
            match status {
                Status::Timeout => {
                    e.name = "TimeoutError".into();
                    e.message = format!(
                        "the function did not finish within its {} ms limit",
                        opts.timeout.as_millis()
                    );
                }
                Status::Oom => {
                    e.name = "OutOfMemoryError".into();
                    e.message = format!(
                        "the function went over its heap limit of {}",
                        human_bytes(opts.memory_bytes)
                    );
                }
                Status::Ok | Status::Error => {}
            }
            RawResult {
                status,
                output_json: None,
                console,
                console_truncated: truncated,
                error: Some(e),
                duration_us,
                memory_used_bytes,
            }
        }
    }
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
