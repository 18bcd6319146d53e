// paddock's JavaScript driver: hosts one code context. Run as
// `node --expose-internals -e <this file>` by
// crates/paddock-agent/src/interp.rs, which documents the protocol:
// u32-LE-length-prefixed JSON frames on the socket at fd 3.
//
// Cells run with vm.runInThisContext in the main context, so top-level
// let/const/function/class declarations persist across cells as in the node
// REPL. Everything of the driver lives inside this function.
(function paddockDriver() {
  'use strict';
  const net = require('net');
  const vm = require('vm');
  const util = require('util');
  const path = require('path');
  const Module = require('module');

  const CELL = '<cell>';
  const LIMIT = 2 << 20; // characters kept of a result, message or stack

  // node's own rewrite for top-level await in the REPL, if reachable.
  // Loaded on first use: it pulls in the whole REPL (≈ 20 ms).
  let topLevelAwait;
  function processTopLevelAwait(code) {
    if (topLevelAwait === undefined) {
      try {
        topLevelAwait = require('internal/repl/await').processTopLevelAwait;
      } catch (_) {
        topLevelAwait = null;
      }
    }
    return topLevelAwait ? topLevelAwait(code) : null;
  }

  // A notebook: `require` is a global, resolving from the working directory.
  globalThis.require = Module.createRequire(path.join(process.cwd(), CELL));

  // ---- control channel --------------------------------------------------

  // node opens inherited fds close-on-exec, and child_process passes only
  // stdio: programs started by user code do not get the control socket.
  const ctl = new net.Socket({ fd: 3, readable: true, writable: true });
  ctl.on('error', () => process.exit(0));
  ctl.on('end', () => process.exit(0));
  ctl.on('close', () => process.exit(0));

  function send(msg) {
    const body = Buffer.from(JSON.stringify(msg), 'utf8');
    const head = Buffer.alloc(4);
    head.writeUInt32LE(body.length, 0);
    ctl.write(Buffer.concat([head, body]));
  }

  const chunks = [];
  let buffered = 0;
  const queue = [];
  ctl.on('data', (chunk) => {
    chunks.push(chunk);
    buffered += chunk.length;
    for (;;) {
      if (buffered < 4) break;
      let all = chunks.length === 1 ? chunks[0] : Buffer.concat(chunks);
      chunks.length = 0;
      chunks.push(all);
      const size = all.readUInt32LE(0);
      if (buffered < 4 + size) break;
      const body = all.subarray(4, 4 + size);
      all = all.subarray(4 + size);
      chunks.length = 0;
      if (all.length) chunks.push(all);
      buffered = all.length;
      queue.push(JSON.parse(body.toString('utf8')));
    }
    pump();
  });

  let busy = false;
  async function pump() {
    if (busy) return;
    busy = true;
    while (queue.length) {
      const req = queue.shift();
      let reply;
      try {
        reply = await serve(req);
      } catch (e) {
        reply = req.t === 'complete'
          ? { t: 'completeness', id: req.id, status: 'invalid' }
          : { t: 'reply', id: req.id, result: null, error: describe(e) };
      }
      // Output to a pipe is written asynchronously once the pipe is full:
      // the reply may only leave after every byte of the cell's output.
      await Promise.all([flushed(process.stdout), flushed(process.stderr)]);
      send(reply);
    }
    busy = false;
  }

  function flushed(stream) {
    return new Promise((resolve) => {
      try {
        if (stream.destroyed || !stream.writableLength) {
          resolve();
          return;
        }
        // Callbacks of writes run in order: this one after all earlier data.
        stream.write('', () => resolve());
      } catch (_) {
        resolve();
      }
    });
  }

  async function serve(req) {
    if (req.t === 'run') return run(req.id, String(req.code));
    if (req.t === 'complete') {
      return { t: 'completeness', id: req.id, status: completeness(String(req.code)) };
    }
    return {
      t: 'reply', id: req.id, result: null,
      error: { name: 'DriverError', value: `unknown request ${req.t}`, traceback: '' },
    };
  }

  // ---- interrupts and stray errors -------------------------------------

  // While a cell awaits, SIGINT rejects the await (the cell's promise keeps
  // running in the background). While synchronous cell code runs,
  // breakOnSigint turns SIGINT into an exception instead. Otherwise SIGINT
  // is ignored: having a listener keeps node from dying of it.
  let current = null;
  process.on('SIGINT', () => {
    if (current && current.interrupt) current.interrupt();
  });
  process.on('uncaughtException', (e) => {
    report('Uncaught exception (in a callback, outside any cell)', e);
  });
  process.on('unhandledRejection', (e) => {
    report('Unhandled promise rejection', e);
  });

  function report(what, e) {
    try {
      const shown = e && typeof e.stack === 'string' ? e.stack : inspect(e);
      process.stderr.write(`${what}: ${shown}\n`);
    } catch (_) {
      // nothing sensible left to do
    }
  }

  function interruptedError() {
    const e = new Error('Script execution was interrupted by `SIGINT`');
    e.code = 'ERR_SCRIPT_EXECUTION_INTERRUPTED';
    return e;
  }

  function interruptible(cur, promise) {
    return new Promise((resolve, reject) => {
      cur.interrupt = () => reject(interruptedError());
      promise.then(resolve, reject);
    });
  }

  // ---- running a cell ---------------------------------------------------

  function clean(text) {
    let s = String(text);
    if (s.length > LIMIT) {
      s = `${s.slice(0, LIMIT)}\n[... ${s.length - LIMIT} more characters cut by paddock]`;
    }
    return typeof s.toWellFormed === 'function' ? s.toWellFormed() : s;
  }

  function inspect(value) {
    try {
      return util.inspect(value);
    } catch (e) {
      return `[value that cannot be inspected: ${e && e.message}]`;
    }
  }

  function compile(code) {
    return new vm.Script(code, { filename: CELL });
  }

  async function run(id, code) {
    send({ t: 'started', id });
    const cur = { interrupt: null };
    current = cur;
    let result = null;
    let error = null;
    try {
      let script;
      let wrapped = false;
      try {
        script = compile(code);
      } catch (e) {
        if (!(e instanceof SyntaxError) || !/\bawait\b/.test(code)) throw e;
        script = compileAwait(code, e);
        wrapped = true;
      }
      let value = script.runInThisContext({ breakOnSigint: true });
      if (wrapped) {
        // The wrapper's promise resolves to {value} (last expression) or
        // undefined (no expression at the end).
        const box = await interruptible(cur, value);
        value = box === undefined || box === null ? undefined : box.value;
      } else if (util.types.isPromise(value)) {
        value = await interruptible(cur, value);
      }
      if (value !== undefined) result = clean(inspect(value));
    } catch (e) {
      error = describe(e);
    } finally {
      current = null;
    }
    return { t: 'reply', id, result, error };
  }

  function describe(e) {
    const isError = e instanceof Error || util.types.isNativeError(e) ||
      (e !== null && typeof e === 'object' && typeof e.message === 'string' &&
        typeof e.name === 'string');
    if (!isError) {
      const shown = inspect(e);
      return { name: 'Error', value: clean(shown), traceback: clean(`Uncaught ${shown}`) };
    }
    let name = 'Error';
    let value = '';
    let stack = '';
    try {
      name = String(e.name);
      value = String(e.message);
      stack = typeof e.stack === 'string' ? e.stack : `${name}: ${value}`;
    } catch (_) {
      stack = `${name}: ${value}`;
    }
    if (e.code === 'ERR_SCRIPT_EXECUTION_INTERRUPTED') {
      name = 'Interrupted';
      stack = `Interrupted: ${value}`;
    }
    return { name: clean(name), value: clean(value), traceback: clean(cleanStack(stack)) };
  }

  // Drops the driver's frames from a stack: everything below the outermost
  // frame in <cell>, or, without any cell frame (a syntax error, an error
  // thrown by node itself), this driver's and node's own frames.
  function cleanStack(stack) {
    const lines = stack.split('\n');
    const isFrame = (l) => /^\s+at /.test(l);
    let lastCell = -1;
    lines.forEach((l, i) => {
      if (isFrame(l) && l.includes(CELL)) lastCell = i;
    });
    const driver = /\[eval\]|\(node:|at node:/;
    return lines
      .filter((l, i) => !isFrame(l) || (lastCell >= 0 ? i <= lastCell : !driver.test(l)))
      .join('\n');
  }

  // ---- top-level await ----------------------------------------------------
  //
  // A cell that does not compile as a script and mentions `await` is
  // rewritten into an async function whose promise resolves to
  // {value: <last expression>} (or undefined). The rewrite comes from node's
  // REPL (internal/repl/await, via --expose-internals): it hoists every
  // top-level var/let/const (destructuring too), function and class
  // declaration to the global scope. Where that is unavailable or fails
  // (node's fails, for one, on a cell that ends with a `//` comment), a
  // small tokenizer-based rewrite (rewriteAwait, below) supports:
  //   - `await` anywhere at top level, `for await`;
  //   - the value of the last expression statement (`x`, `await f()`,
  //     `a + b`, ending in `;` or not). Statements end at `;`, at a `}` and
  //     at a line break where automatic semicolon insertion would apply
  //     (not before `(`, `[`, `+`, `.`, ... nor after an operator or `,`);
  //   - `var|let|const NAME [= ...][, NAME2 [= ...]]` at brace depth 0: the
  //     names become globals (var as `var`; let and const as `let`, so a
  //     `const` stays assignable), visible in later cells.
  // Not hoisted by the fallback: destructuring declarations, function and
  // class declarations (they stay local to the cell). With either rewrite,
  // as in the REPL, a second `let`/`const` of the same name fails with
  // "Identifier ... has already been declared".
  function compileAwait(code, original) {
    let firstError = null;
    const attempt = (rewrite) => {
      let source = null;
      try {
        source = rewrite(code);
      } catch (_) {
        return null;
      }
      if (!source) return null;
      try {
        return compile(source);
      } catch (e) {
        if (firstError === null) firstError = e;
        return null;
      }
    };
    const script = attempt(processTopLevelAwait) || attempt(rewriteAwait);
    if (script) return script;
    throw firstError || original;
  }

  const BEFORE_EXPRESSION = new Set([
    'return', 'typeof', 'instanceof', 'in', 'of', 'new', 'delete', 'void',
    'throw', 'case', 'do', 'else', 'yield', 'await',
  ]);

  // Tokenizes just enough JavaScript to know the bracket depth of each token:
  // skips comments, strings, template literals (with nested ${...}) and
  // regular expression literals (guessed from the previous token).
  // Returns {tokens: [{type, value, start, end, depth}], open}, where `open`
  // means the input ended inside a bracket, template or block comment.
  function scan(src) {
    const tokens = [];
    const stack = [];
    let depth = 0;
    let i = 0;
    let open = false;
    let prev = null;
    const n = src.length;
    const push = (type, value, start, end, d) => {
      const t = { type, value, start, end, depth: d };
      tokens.push(t);
      if (type !== 'nl') prev = t;
    };
    const regexAllowed = () => prev === null ||
      (prev.type === 'punct' && !/^[)\]}]$/.test(prev.value)) ||
      (prev.type === 'word' && BEFORE_EXPRESSION.has(prev.value));
    // Scans template text from `j` to its end or to a `${`.
    const template = (j) => {
      while (j < n) {
        const ch = src[j];
        if (ch === '\\') { j += 2; continue; }
        if (ch === '`') return { end: j + 1, expr: false };
        if (ch === '$' && src[j + 1] === '{') return { end: j + 2, expr: true };
        j++;
      }
      return null;
    };
    const afterTemplate = (start, r) => {
      if (r === null) { open = true; return n; }
      if (r.expr) { stack.push('${'); depth++; } else push('str', '`', start, r.end, depth);
      return r.end;
    };
    while (i < n) {
      const c = src[i];
      if (c === '\n' || c === '\u2028' || c === '\u2029') { push('nl', c, i, i + 1, depth); i++; continue; }
      if (/\s/.test(c)) { i++; continue; }
      if (c === '/' && src[i + 1] === '/') {
        while (i < n && src[i] !== '\n') i++;
        continue;
      }
      if (c === '/' && src[i + 1] === '*') {
        const e = src.indexOf('*/', i + 2);
        if (e < 0) { open = true; break; }
        if (src.slice(i, e).includes('\n')) push('nl', '\n', i, e + 2, depth);
        i = e + 2;
        continue;
      }
      if (c === '"' || c === "'") {
        let j = i + 1;
        while (j < n && src[j] !== c && src[j] !== '\n') j += src[j] === '\\' ? 2 : 1;
        push('str', c, i, Math.min(j + 1, n), depth);
        i = j + 1;
        continue;
      }
      if (c === '`') { i = afterTemplate(i, template(i + 1)); continue; }
      if (c === '}' && stack.length && stack[stack.length - 1] === '${') {
        stack.pop();
        depth--;
        i = afterTemplate(i, template(i + 1));
        continue;
      }
      if (c === '/' && regexAllowed()) {
        let j = i + 1;
        let inClass = false;
        let ok = false;
        while (j < n && src[j] !== '\n') {
          const ch = src[j];
          if (ch === '\\') { j += 2; continue; }
          if (ch === '[') inClass = true;
          else if (ch === ']') inClass = false;
          else if (ch === '/' && !inClass) { ok = true; break; }
          j++;
        }
        if (ok) {
          j++;
          while (j < n && /[a-z]/i.test(src[j])) j++;
          push('regex', src.slice(i, j), i, j, depth);
          i = j;
          continue;
        }
      }
      if (/[A-Za-z_$0-9\u0080-\uffff]/.test(c)) {
        let j = i + 1;
        while (j < n && /[\w$\u0080-\uffff.]/.test(src[j]) && !(src[j] === '.' && !/[0-9]/.test(c))) j++;
        push('word', src.slice(i, j), i, j, depth);
        i = j;
        continue;
      }
      if (c === '(' || c === '[' || c === '{') {
        push('punct', c, i, i + 1, depth);
        stack.push(c);
        depth++;
        i++;
        continue;
      }
      if (c === ')' || c === ']' || c === '}') {
        if (stack.length) { stack.pop(); depth--; }
        push('punct', c, i, i + 1, depth);
        i++;
        continue;
      }
      push('punct', c, i, i + 1, depth);
      i++;
    }
    if (depth > 0) open = true;
    return { tokens, open };
  }

  const DECLARATION = new Set(['var', 'let', 'const']);
  const STATEMENT_WORDS = new Set([
    'var', 'let', 'const', 'function', 'class', 'if', 'for', 'while', 'do',
    'switch', 'try', 'return', 'throw', 'break', 'continue', 'import',
    'export', 'debugger', 'with', 'else', 'case', 'default',
  ]);
  // A line break does not end a statement after/before these punctuators
  // (no automatic semicolon insertion: `a\n+ b`, `f\n(x)`, `a +\n b`).
  const CONTINUES_AFTER = /^[,=+\-*/%&|^<>?:.!~([{]$/;
  const CONTINUES_BEFORE = /^[,=+\-*/%&|^<>?:.()[\]]$/;

  // The fallback rewrite described above; returns the wrapped source, or
  // null when the cell ends inside a bracket, string or comment.
  function rewriteAwait(src) {
    const { tokens, open } = scan(src);
    if (open) return null;
    const nextSig = (k) => {
      for (let m = k + 1; m < tokens.length; m++) if (tokens[m].type !== 'nl') return m;
      return -1;
    };
    const prevSig = (k) => {
      for (let m = k - 1; m >= 0; m--) if (tokens[m].type !== 'nl') return m;
      return -1;
    };
    const isPunct = (k, re) => k >= 0 && tokens[k].type === 'punct' && re.test(tokens[k].value);
    // Whether the line break at k continues the statement.
    const continues = (k) => {
      const after = nextSig(k);
      return isPunct(prevSig(k), CONTINUES_AFTER) || isPunct(after, CONTINUES_BEFORE) ||
        (after >= 0 && tokens[after].type === 'str' && tokens[after].value === '`');
    };
    const isName = (k) => k >= 0 && tokens[k].type === 'word' && !STATEMENT_WORDS.has(tokens[k].value) &&
      /^[A-Za-z_$\u0080-\uffff]/.test(tokens[k].value);
    // Whether token k begins a statement at depth 0.
    const startsStatement = (k) => {
      if (tokens[k].depth !== 0) return false;
      if (k === 0) return true;
      const p = tokens[k - 1];
      return p.type === 'nl' || (p.depth === 0 && p.type === 'punct' && (p.value === ';' || p.value === '}'));
    };

    // 1. Declarations at depth 0: blank out the keyword, hoist the names.
    const blanks = [];
    const vars = new Set();
    const lets = new Set();
    for (let k = 0; k < tokens.length; k++) {
      const t = tokens[k];
      if (t.type !== 'word' || !DECLARATION.has(t.value) || !startsStatement(k)) continue;
      const first = nextSig(k);
      if (!isName(first)) continue; // destructuring or not a declaration
      const names = [tokens[first].value];
      for (let m = first + 1; m < tokens.length; m++) {
        const u = tokens[m];
        if (u.depth !== 0) continue;
        if (u.type === 'punct' && u.value === ';') break;
        if (u.type === 'nl') {
          if (continues(m)) continue;
          break;
        }
        if (u.type === 'punct' && u.value === ',') {
          const name = nextSig(m);
          const after = nextSig(name);
          if (isName(name) && (after < 0 || isPunct(after, /^[=,;]$/) || tokens[name + 1].type === 'nl')) {
            names.push(tokens[name].value);
          }
        }
      }
      blanks.push(t);
      for (const name of names) (t.value === 'var' ? vars : lets).add(name);
    }
    let body = src;
    for (const t of blanks.reverse()) {
      body = body.slice(0, t.start) + ' '.repeat(t.end - t.start) + body.slice(t.end);
    }
    let prefix = '';
    if (vars.size) prefix += `var ${[...vars].join(', ')}; `;
    const onlyLets = [...lets].filter((x) => !vars.has(x));
    if (onlyLets.length) prefix += `let ${onlyLets.join(', ')}; `;
    // The prefix shares line 1 with the cell, so line numbers stay right.
    const wrap = (head, tail) => (tail === null
      ? `${prefix}(async () => {${head}\n})()`
      : `${prefix}(async () => {${head}return { value: (${tail}\n) };\n})()`);

    // 2. The last statement, if it is an expression: try statement starts
    // from the end until `return {value: (tail)}` compiles.
    const starts = [0];
    tokens.forEach((t, k) => {
      if (t.depth !== 0) return;
      if ((t.type === 'nl' && !continues(k)) || (t.type === 'punct' && (t.value === ';' || t.value === '}'))) {
        starts.push(t.end);
      }
    });
    for (let s = starts.length - 1; s >= 0; s--) {
      const tail = body.slice(starts[s]);
      const trimmed = tail.replace(/^[\s;]+/, '');
      if (!trimmed || /^(\/\/|\/\*)/.test(trimmed)) continue;
      // Look at the original text: a declaration is not an expression even
      // with its keyword blanked out.
      const word = /^[A-Za-z_$][\w$]*/.exec(src.slice(starts[s]).replace(/^[\s;]+/, ''));
      if ((word && STATEMENT_WORDS.has(word[0])) || trimmed[0] === '{') break;
      const source = wrap(body.slice(0, starts[s]), tail.replace(/;\s*$/, ''));
      try {
        compile(source);
        return source;
      } catch (_) {
        // a longer tail, maybe
      }
    }
    return wrap(body, null);
  }

  function completeness(code) {
    try {
      compile(code);
      return 'complete';
    } catch (e) {
      if (!(e instanceof SyntaxError)) return 'invalid';
      let scanned = { open: false };
      try {
        scanned = scan(code);
      } catch (_) {
        // treat as closed
      }
      if (scanned.open || /Unexpected end of input|Unterminated template/.test(e.message)) {
        return 'incomplete';
      }
      if (/\bawait\b/.test(code)) {
        try {
          compileAwait(code, e);
          return 'complete';
        } catch (_) {
          return 'invalid';
        }
      }
      return 'invalid';
    }
  }

  send({ t: 'hello' });
})();
