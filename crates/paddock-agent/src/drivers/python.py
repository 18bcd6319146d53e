# paddock's Python driver: hosts one code context. Run as `python3 -u -c
# <this file>` by crates/paddock-agent/src/interp.rs, which documents the
# protocol: u32-LE-length-prefixed JSON frames on the socket at fd 3.
#
# Everything lives inside _paddock_driver() so that none of the driver's names
# leak into the user's globals, which are the dict of a fresh `__main__` module.


def _paddock_driver():
    # Startup time is context-creation time: only cheap imports here. `_ast`
    # is the built-in half of `ast` (whose Python half costs ~8 ms); the
    # control socket is used through plain fd reads and writes (`socket`
    # costs ~3 ms); and the frames are JSON of a fixed, small shape, coded
    # by hand below (`json` pulls in `re` and `enum`, ~10 ms).
    import _ast
    import builtins
    import os
    import _signal  # `signal` itself imports `enum` (~5 ms)
    import sys
    import types
    import weakref

    CELL = "<cell>"
    FLAGS = _ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    CO_COROUTINE = 0x80  # inspect.CO_COROUTINE, without importing inspect
    LIMIT = 2 << 20  # characters kept of a result, message or traceback

    CTL = 3
    # Programs started by user code must not inherit the control socket.
    os.set_inheritable(CTL, False)

    sys.argv = [""]
    main = types.ModuleType("__main__")
    main.__builtins__ = builtins
    sys.modules["__main__"] = main
    user = main.__dict__

    # SIGINT raises KeyboardInterrupt only while a cell runs; at any other
    # moment (waiting for a request, writing a reply) it is ignored.
    armed = [False]

    def on_sigint(signum, frame):
        if armed[0]:
            raise KeyboardInterrupt

    _signal.signal(_signal.SIGINT, on_sigint)

    # --- JSON, for the frames' shapes only: objects of strings, integers,
    # null, booleans and nested objects (what serde_json writes for the
    # agent's requests, and what the replies contain).
    escapes = {i: "\\u%04x" % i for i in range(32)}
    escapes.update({ord('"'): '\\"', ord("\\"): "\\\\", 10: "\\n", 13: "\\r", 9: "\\t"})
    unescapes = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "/": "/",
                 "\\": "\\", '"': '"'}

    def encode(v):
        if v is None:
            return "null"
        if v is True:
            return "true"
        if v is False:
            return "false"
        if isinstance(v, int):
            return str(v)
        if isinstance(v, str):
            return '"' + v.translate(escapes) + '"'
        if isinstance(v, dict):
            return "{" + ",".join(encode(str(k)) + ":" + encode(x) for k, x in v.items()) + "}"
        raise TypeError("cannot encode %r" % type(v))

    def decode_str(s, i):
        # s[i] is the opening quote; returns (text, index after the closing quote).
        parts = []
        j = i + 1
        while True:
            q = s.index('"', j)
            b = s.find("\\", j, q)
            if b < 0:
                parts.append(s[j:q])
                return "".join(parts), q + 1
            parts.append(s[j:b])
            c = s[b + 1]
            if c == "u":
                cp = int(s[b + 2:b + 6], 16)
                j = b + 6
                if 0xD800 <= cp < 0xDC00 and s.startswith("\\u", j):
                    low = int(s[j + 2:j + 6], 16)
                    if 0xDC00 <= low < 0xE000:
                        cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00)
                        j += 6
                parts.append(chr(cp))
            else:
                parts.append(unescapes[c])
                j = b + 2

    def decode_value(s, i):
        while s[i] in " \t\r\n":
            i += 1
        c = s[i]
        if c == '"':
            return decode_str(s, i)
        if c == "{":
            obj = {}
            i += 1
            while True:
                while s[i] in " \t\r\n,":
                    i += 1
                if s[i] == "}":
                    return obj, i + 1
                key, i = decode_str(s, i)
                while s[i] in " \t\r\n:":
                    i += 1
                obj[key], i = decode_value(s, i)
        for word, value in (("null", None), ("true", True), ("false", False)):
            if s.startswith(word, i):
                return value, i + len(word)
        j = i
        while j < len(s) and s[j] in "-0123456789":
            j += 1
        return int(s[i:j]), j

    def decode(data):
        return decode_value(data.decode("utf-8"), 0)[0]

    def recv_exact(n):
        data = bytearray()
        while len(data) < n:
            try:
                chunk = os.read(CTL, min(n - len(data), 1 << 20))
            except InterruptedError:
                continue
            except OSError:
                chunk = b""
            if not chunk:
                os._exit(0)  # the agent went away
            data += chunk
        return data

    def send(msg):
        body = encode(msg).encode("utf-8", "replace")
        data = memoryview(len(body).to_bytes(4, "little") + body)
        while data:
            try:
                data = data[os.write(CTL, data):]
            except InterruptedError:
                continue
            except OSError:
                os._exit(0)

    def clean(text):
        if len(text) > LIMIT:
            text = text[:LIMIT] + "\n[... %d more characters cut by paddock]" % (len(text) - LIMIT)
        # Lone surrogates cannot travel as UTF-8: show them escaped.
        return text.encode("utf-8", "backslashreplace").decode("utf-8")

    # Source lines of every code object compiled from a cell, so that
    # tracebacks can show the failing line even for functions defined in an
    # earlier cell (all cells share the file name "<cell>").
    sources = weakref.WeakKeyDictionary()

    def remember(code, lines):
        todo = [code]
        while todo:
            co = todo.pop()
            try:
                sources[co] = lines
            except TypeError:
                pass
            todo.extend(c for c in co.co_consts if isinstance(c, types.CodeType))

    loop_box = [None]

    def run_coroutine(coro):
        import asyncio

        loop = loop_box[0]
        if loop is None or loop.is_closed():
            loop = loop_box[0] = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        task = loop.create_task(coro)
        try:
            return loop.run_until_complete(task)
        except KeyboardInterrupt:
            # Interrupted while awaiting: cancel the cell's task, keep the loop.
            armed[0] = False
            if not task.done():
                task.cancel()
                try:
                    loop.run_until_complete(task)
                except BaseException:
                    pass
            raise

    def call(code):
        if code.co_flags & CO_COROUTINE:
            return run_coroutine(eval(code, user))
        return eval(code, user)

    def execute(code):
        tree = compile(code, CELL, "exec", _ast.PyCF_ONLY_AST | FLAGS, dont_inherit=True)
        lines = code.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        last = None
        if tree.body and isinstance(tree.body[-1], _ast.Expr):
            last = _ast.Expression(tree.body.pop().value)
        body = compile(tree, CELL, "exec", FLAGS, dont_inherit=True)
        remember(body, lines)
        call(body)
        if last is None:
            return None
        expr = compile(last, CELL, "eval", FLAGS, dont_inherit=True)
        remember(expr, lines)
        value = call(expr)
        if value is None:
            return None
        return clean(repr(value))

    def add_source(te, exc, tb, seen):
        # te: a TracebackException built from exc, whose frames are tb.
        import traceback

        if te is None or exc is None or id(exc) in seen:
            return
        seen.add(id(exc))
        frames = list(traceback.walk_tb(tb))
        if len(frames) == len(te.stack):
            for i, (fs, (frame, _)) in enumerate(zip(te.stack, frames)):
                if fs.filename != CELL or not fs.lineno:
                    continue
                lines = sources.get(frame.f_code)
                if not lines or fs.lineno > len(lines):
                    continue
                try:
                    te.stack[i] = traceback.FrameSummary(
                        fs.filename, fs.lineno, fs.name, lookup_line=False,
                        line=lines[fs.lineno - 1], end_lineno=fs.end_lineno,
                        colno=fs.colno, end_colno=fs.end_colno)
                except TypeError:  # Python < 3.11
                    te.stack[i] = traceback.FrameSummary(
                        fs.filename, fs.lineno, fs.name, lookup_line=False,
                        line=lines[fs.lineno - 1])
        for sub_te, sub in ((te.__cause__, exc.__cause__), (te.__context__, exc.__context__)):
            if sub is not None:
                add_source(sub_te, sub, sub.__traceback__, seen)

    def strip(tb):
        # Drop the driver's frames: everything before the first cell frame,
        # and the SIGINT handler's frame at the end.
        while tb is not None and tb.tb_frame.f_code.co_filename != CELL:
            tb = tb.tb_next
        node = tb
        while node is not None and node.tb_next is not None:
            if node.tb_next.tb_frame.f_code is on_sigint.__code__:
                node.tb_next = None
            node = node.tb_next
        return tb

    def describe(e):
        import traceback

        name = type(e).__name__
        try:
            value = str(e)
        except BaseException:
            value = "<str() of the exception failed>"
        try:
            tb = strip(e.__traceback__)
            te = traceback.TracebackException(type(e), e, tb, compact=True)
            add_source(te, e, tb, set())
            text = "".join(te.format())
        except BaseException:
            text = "%s: %s\n" % (name, value)
        return {"name": clean(name), "value": clean(value), "traceback": clean(text)}

    def flush():
        for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            try:
                stream.flush()
            except BaseException:
                pass

    def run(rid, code):
        result = error = None
        try:
            try:
                armed[0] = True
                send({"t": "started", "id": rid})
                result = execute(code)
            finally:
                armed[0] = False
        except BaseException as e:  # includes KeyboardInterrupt, SystemExit
            armed[0] = False
            error = describe(e)
        flush()
        return {"t": "reply", "id": rid, "result": result, "error": error}

    def completeness(code):
        import codeop
        import warnings

        compiler = codeop.CommandCompiler()
        compiler.compiler.flags |= FLAGS
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                code_object = compiler(code, CELL, "exec")
        except (SyntaxError, ValueError, OverflowError, MemoryError):
            return "invalid"
        return "incomplete" if code_object is None else "complete"

    def serve(req):
        kind, rid = req.get("t"), req.get("id")
        try:
            if kind == "run":
                return run(rid, req.get("code", ""))
            if kind == "complete":
                return {"t": "completeness", "id": rid, "status": completeness(req.get("code", ""))}
        except BaseException as e:  # a driver bug, or a stray interrupt
            armed[0] = False
            if kind == "complete":
                return {"t": "completeness", "id": rid, "status": "invalid"}
            return {"t": "reply", "id": rid, "result": None, "error": describe(e)}
        return {"t": "reply", "id": rid, "result": None, "error": {
            "name": "DriverError", "value": "unknown request %r" % (kind,), "traceback": ""}}

    send({"t": "hello"})
    while True:
        size = int.from_bytes(recv_exact(4), "little")
        req = decode(bytes(recv_exact(size)))
        send(serve(req))


_paddock_driver()
