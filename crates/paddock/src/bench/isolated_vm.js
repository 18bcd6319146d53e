// The peer side of `paddock bench --suite functions`: the same transform,
// input and limits (16 MB heap, 500 ms) in isolated-vm and node's `vm`.
// Run by paddock as `node --no-node-snapshot -e <this>` with NODE_PATH set
// to a node_modules directory; prints one JSON object per mode.
'use strict';
const vm = require('vm');

const seconds = Number(process.env.PADDOCK_BENCH_SECONDS || '3');
const code = process.env.PADDOCK_BENCH_CODE;
const inputJson = process.env.PADDOCK_BENCH_INPUT;
// Normalised by JSON.parse/stringify: JavaScript writes 3.0 as 3.
const expected = JSON.stringify(JSON.parse(process.env.PADDOCK_BENCH_EXPECTED));
// The same contract as paddock's: `input` parsed from JSON, `output` assigned,
// the output returned as JSON text.
const wrapped = 'input = JSON.parse(inputJson); output = undefined;\n' + code + '\n;JSON.stringify(output)';

function check(out) {
  if (out !== expected) {
    throw new Error('wrong output: ' + out);
  }
}

function measure(mode, fn) {
  for (let i = 0; i < 20; i++) fn();
  const lat = [];
  const t0 = process.hrtime.bigint();
  const end = t0 + BigInt(Math.round(seconds * 1e9));
  for (;;) {
    const s = process.hrtime.bigint();
    fn();
    const e = process.hrtime.bigint();
    lat.push(Number(e - s) / 1000);
    if (e >= end) break;
  }
  const elapsed = Number(process.hrtime.bigint() - t0) / 1e9;
  lat.sort((a, b) => a - b);
  const q = (p) => lat[Math.min(lat.length - 1, Math.floor(lat.length * p))];
  console.log(JSON.stringify({
    mode, calls: lat.length, calls_per_s: lat.length / elapsed, p50_us: q(0.5), p95_us: q(0.95),
  }));
}

let ivm = null;
try {
  ivm = require('isolated-vm');
} catch (e) {
  console.log(JSON.stringify({ missing: 'isolated-vm', error: String(e && e.message) }));
}

if (ivm) {
  measure('isolated-vm: new isolate per call', () => {
    const isolate = new ivm.Isolate({ memoryLimit: 16 });
    try {
      const context = isolate.createContextSync();
      context.global.setSync('inputJson', inputJson);
      const script = isolate.compileScriptSync(wrapped);
      check(script.runSync(context, { timeout: 500 }));
    } finally {
      isolate.dispose();
    }
  });

  const isolate = new ivm.Isolate({ memoryLimit: 16 });
  const script = isolate.compileScriptSync(wrapped);
  measure('isolated-vm: one isolate, new context per call', () => {
    const context = isolate.createContextSync();
    try {
      context.global.setSync('inputJson', inputJson);
      check(script.runSync(context, { timeout: 500 }));
    } finally {
      context.release();
    }
  });
  isolate.dispose();
}

const vmScript = new vm.Script(wrapped);
measure('node vm: new context per call', () => {
  const context = vm.createContext({ inputJson });
  check(vmScript.runInContext(context, { timeout: 500 }));
});
