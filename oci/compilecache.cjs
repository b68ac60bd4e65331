'use strict';
// bake's compile-only warm-up of Node's compile cache (package oci,
// compilecache.go), run by the image's own Node in bake's sandbox:
//
//   node --expose-internals --predictable --random-seed=1 --max-semi-space-size=512 \
//     --min-semi-space-size=512 compilecache.cjs LIST CACHE_DIR WRAPPER
//
// It compiles every module LIST names, exactly as Node's module loaders
// compile them when the app loads them, and runs none of them: Node writes
// what V8 made of each into its compile cache (module.enableCompileCache),
// which is all that cache ever holds (V8's code cache of a module right
// after it was compiled, before it ran). So nothing of the app executes
// here, and the result depends only on the sources, the list (its order
// too) and Node.
//
//   - ES modules: WRAPPER statically imports all of them, and one name that
//     node:module does not export. require(WRAPPER) loads and compiles the
//     whole graph synchronously, in import order, then fails to link it:
//     nothing is evaluated.
//   - CommonJS modules: the CommonJS loader's own wrapSafe() compiles each
//     into its function (which is kept, never called). It is internal
//     (--expose-internals); this Node is pinned with the image.
const fs = require('node:fs');
const path = require('node:path');
const Module = require('node:module');

const [list, dir, wrapper] = process.argv.slice(2);
const esm = [];
const cjs = [];
// Each name is a string of its own, decoded from the file's bytes: a
// substring of the whole list would be a V8 "sliced string", and a CommonJS
// module's cache would carry the whole list with its file name.
const buf = fs.readFileSync(list);
for (let start = 0; start < buf.length;) {
  let end = buf.indexOf(0x0a, start);
  if (end < 0) end = buf.length;
  const sp = buf.indexOf(0x20, start);
  if (sp > start && sp < end) {
    const kind = buf.toString('latin1', start, sp);
    const name = buf.toString('utf8', sp + 1, end);
    if (kind === 'esm') esm.push(name);
    else if (kind === 'cjs') cjs.push(name);
  }
  start = end + 1;
}

// No full garbage collection may run until everything is compiled (see
// the check below): with none, every bytecode array V8 makes is in memory
// never used before, and the padding V8 copies into the cache is zero.
const gc = new (require('node:v8').GCProfiler)();
gc.start();

// Enabled only now: this script itself stays out of the cache.
const res = Module.enableCompileCache(dir);
if (res.status !== Module.constants.compileCacheStatus.ENABLED) {
  throw new Error(`compile cache not enabled in ${dir}: ${res.message}`);
}

const { wrapSafe, Module: CJSModule } = require('internal/modules/cjs/loader');
// Everything compiled stays reachable until the end (nothing for a
// collection to free).
const keep = [];
for (const f of cjs) {
  const m = new CJSModule(f, null);
  m.filename = f;
  m.paths = CJSModule._nodeModulePaths(path.dirname(f));
  let src = fs.readFileSync(f, 'utf8');
  if (src.charCodeAt(0) === 0xfeff) src = src.slice(1);
  keep.push(wrapSafe(f, src, m, 'commonjs'));
}

fs.writeFileSync(wrapper, esm.map((u) => `import ${JSON.stringify(u)};\n`).join('') +
  'import { bakeCompileOnly } from "node:module";\n');
try {
  keep.push(require(wrapper));
  throw new Error('bake: the wrapper module was evaluated');
} catch (e) {
  if (!String(e && e.message).includes('bakeCompileOnly')) throw e;
}
// V8 13.6 copies the 4 bytes of padding in the header of each bytecode
// array into the cache without clearing them: in reused memory they hold
// whatever was there (half of an old pointer, say), different from build
// to build. Node writes each cache when it compiles a module, so what
// counts is that no collection that frees old objects (a mark-compact; a
// scavenge only empties the young generation, where V8 never puts bytecode)
// ran before the last one was compiled.
const full = gc.stop().statistics.filter((s) => s.gcType !== 'Scavenge');
if (full.length > 0) {
  throw new Error(`bake: ${full.length} full garbage collections (${full.map((s) => s.gcType).join(', ')}) ran ` +
    'while compiling, so the cache would hold bytes of reused memory: give V8 a larger young generation ' +
    '(--max-semi-space-size in compileCacheNodeFlags)');
}
Module.flushCompileCache();
globalThis.bakeKeep = keep;
process.stdout.write(`compiled ${cjs.length} CommonJS and ${esm.length} ES modules\n`);
