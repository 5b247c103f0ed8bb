// flick's Node.js bootstrap: the process behind one warm instance of a Node
// function. flick embeds this file, writes it to disk and starts it as
// `node node.js` in the function's code directory, with the protocol socket
// on fd 3 and stdout/stderr read as the function's logs. It loads the user's
// handler once, then serves invocations framed as one JSON header line plus
// `len` raw body bytes (see crates/runtime/src/protocol.rs).
//
// Started with FLICK_STEM=1 (and none of the function's variables) it is a
// stem cell: it does the function-independent work up front, sends
// {"type":"stem_ready"}, then waits for {"type":"specialise","env":{...}},
// takes on that environment and code directory, and starts as above. With
// FLICK_STEM=setuid (a sandboxed stem, uid 0 with CAP_SETUID/CAP_SETGID) the
// specialise frame must also carry a uid and gid: it switches to them and
// checks that no thread kept a capability before any function code runs.
//
// Built-in modules only, and it must keep working on Node 18.
'use strict';

const fs = require('fs');
const net = require('net');
const path = require('path');

const env = process.env;
const STEM = Boolean(env.FLICK_STEM);

// What the function's environment decides, set by configure() when the
// function is known: at start-up, or for a stem cell when it is specialised.
let CODE_DIR = '';
let CONCURRENCY = 1;
let NAME = '';
let REVISION = '';
let MEMORY = '';
let ARN = '';
let LOG_GROUP = '';
let LOG_STREAM = '';
// With concurrency 1 a stray rejection or exception can only belong to the
// invocation in flight; with more, the async context (AsyncLocalStorage) tells
// which. It is only paid for when needed: it hooks every promise the process
// creates.
let als = null;

function configure() {
  CODE_DIR = env.FLICK_CODE_DIR || process.cwd();
  CONCURRENCY = Math.max(1, parseInt(env.FLICK_CONCURRENCY, 10) || 1);
  NAME = env.FLICK_FUNCTION_NAME || '';
  REVISION = env.FLICK_FUNCTION_REVISION || '';
  MEMORY = env.FLICK_MEMORY_MB || '';
  // FLICK_FUNCTION_ARN carries the region and account flick is configured with.
  ARN = env.FLICK_FUNCTION_ARN || 'arn:aws:lambda:local:000000000000:function:' + NAME;
  LOG_GROUP = '/aws/lambda/' + NAME;
  LOG_STREAM = `${new Date().toISOString().slice(0, 10).replace(/-/g, '/')}/[${REVISION}]${require('crypto')
    .randomBytes(16)
    .toString('hex')}`;
  als = CONCURRENCY > 1 ? new (require('async_hooks').AsyncLocalStorage)() : null;
}

const TEXT = 'text/plain; charset=utf-8';
const JSON_CT = [['content-type', 'application/json']];
const OCTET_CT = [['content-type', 'application/octet-stream']];
const EMPTY = Buffer.alloc(0);
const OPENWHISK_WEB_KEYS = new Set(['statusCode', 'headers', 'body']);

// Taken before user code loads: a logger that wraps process.stdout.write must
// not be able to prefix or swallow the end markers.
const stdout = process.stdout;
const stderr = process.stderr;
const stdoutWrite = stdout.write;
const stderrWrite = stderr.write;

function logError(text) {
  try {
    stderrWrite.call(stderr, text.endsWith('\n') ? text : text + '\n');
  } catch (_) {
    // stderr is gone: flick is going away too.
  }
}

// --- the channel -------------------------------------------------------------

const chan = new net.Socket({ fd: 3, readable: true, writable: true });
// Both mean flick closed its end: nobody is left to answer.
chan.on('end', () => process.exit(0));
chan.on('error', () => process.exit(0));

function send(head, body) {
  const line = JSON.stringify(head) + '\n';
  if (body && body.length) {
    // One writev for header and body.
    chan.cork();
    chan.write(line);
    chan.write(body);
    chan.uncork();
  } else {
    chan.write(line);
  }
}

// Writes to pipes are synchronous on Linux and in order on the same stream,
// so the marker follows everything the invocation wrote.
function endOfOutput(id) {
  const marker = '\x1eflick-end ' + id + '\n';
  try {
    stdoutWrite.call(stdout, marker);
  } catch (_) {}
  try {
    stderrWrite.call(stderr, marker);
  } catch (_) {}
}

// --- errors ------------------------------------------------------------------

function describe(err) {
  if (err !== null && typeof err === 'object') {
    let type = typeof err.name === 'string' && err.name ? err.name : '';
    const ctor = err.constructor && err.constructor.name;
    // `class NotFound extends Error {}` keeps name "Error"; its class says more.
    if ((!type || type === 'Error') && ctor && ctor !== 'Object') type = ctor;
    type = type || 'Error';
    let message;
    try {
      message = err.message === undefined ? '' : String(err.message);
    } catch (_) {
      message = '';
    }
    const stack = typeof err.stack === 'string' && err.stack ? err.stack : `${type}: ${message}`;
    return { type, message, text: stack, trace: stack.split('\n') };
  }
  const message = String(err);
  return { type: 'Error', message, text: 'Error: ' + message, trace: ['Error: ' + message] };
}

// Caps of an error as sent to flick (the full stack still goes to stderr, the
// logs). flick refuses a frame header over 64 KiB, so the encoded error must
// stay well under it, whatever a handler throws.
const MAX_MESSAGE = 4096;
const MAX_TRACE_LINES = 64;
const MAX_TRACE_LINE = 1024;
const MAX_ERROR_BYTES = 32768;

function cap(text, limit) {
  return text.length <= limit ? text : `${text.slice(0, limit)}… [${text.length - limit} more characters]`;
}

// JSON escaping can make text up to six times longer, so the encoded size is
// what is checked; the trace gives way first, then the message.
function cappedError(type, message, trace) {
  let lines = trace;
  if (lines.length > MAX_TRACE_LINES) {
    const half = MAX_TRACE_LINES / 2;
    lines = [...lines.slice(0, half), `… [${lines.length - 2 * half} more lines]`, ...lines.slice(-half)];
  }
  const error = { type: cap(String(type), 256), message: cap(message, MAX_MESSAGE), trace: lines.map((l) => cap(l, MAX_TRACE_LINE)) };
  while (Buffer.byteLength(JSON.stringify(error)) > MAX_ERROR_BYTES) {
    if (error.trace.length) {
      error.trace = error.trace.slice(Math.floor(error.trace.length / 2) + 1);
    } else {
      error.message = cap(error.message, Math.floor(error.message.length / 2));
      error.type = cap(error.type, 64);
    }
  }
  return error;
}

class InitError extends Error {
  constructor(kind, message, cause) {
    super(message);
    this.kind = kind;
    this.cause = cause;
  }
}

// --- responses ---------------------------------------------------------------

function isBytes(v) {
  return v instanceof Uint8Array || v instanceof ArrayBuffer;
}

function toBuffer(v) {
  if (Buffer.isBuffer(v)) return v;
  if (v instanceof ArrayBuffer) return Buffer.from(v);
  return Buffer.from(v.buffer, v.byteOffset, v.byteLength);
}

function pushHeader(out, name, v) {
  if (Array.isArray(v)) {
    for (const x of v) out.push([name, String(x)]);
  } else {
    out.push([name, String(v)]);
  }
}

function httpResponse(d) {
  let status = d.statusCode === undefined || d.statusCode === null ? 200 : Number(d.statusCode);
  if (!Number.isInteger(status) || status < 100 || status > 599) {
    throw new TypeError(`statusCode ${JSON.stringify(d.statusCode)} is not an HTTP status`);
  }
  const headers = [];
  const multi = d.multiValueHeaders || {};
  const multiNames = new Set(Object.keys(multi).map((k) => k.toLowerCase()));
  const single = d.headers || {};
  // As API Gateway: a name in multiValueHeaders takes its values from there.
  for (const k of Object.keys(single)) {
    const name = k.toLowerCase();
    if (!multiNames.has(name)) pushHeader(headers, name, single[k]);
  }
  for (const k of Object.keys(multi)) pushHeader(headers, k.toLowerCase(), multi[k]);
  if (Array.isArray(d.cookies)) for (const c of d.cookies) headers.push(['set-cookie', String(c)]);

  const body = d.body;
  let out, ctype;
  if (body === undefined || body === null) {
    out = EMPTY;
    ctype = TEXT;
  } else if (typeof body === 'string') {
    if (d.isBase64Encoded) {
      out = Buffer.from(body, 'base64');
      ctype = 'application/octet-stream';
    } else {
      out = Buffer.from(body);
      ctype = TEXT;
    }
  } else if (isBytes(body)) {
    out = toBuffer(body);
    ctype = 'application/octet-stream';
  } else {
    out = Buffer.from(jsonText(body));
    ctype = 'application/json';
  }
  if (!headers.some((h) => h[0] === 'content-type')) headers.push(['content-type', ctype]);
  return [status, headers, out];
}

function jsonText(v) {
  const s = JSON.stringify(v);
  return s === undefined ? 'null' : s;
}

function jsonResponse(v) {
  if (isBytes(v)) return [200, OCTET_CT, toBuffer(v)];
  return [200, JSON_CT, Buffer.from(jsonText(v))];
}

function isPlainObject(v) {
  return v !== null && typeof v === 'object' && !Array.isArray(v) && !isBytes(v);
}

function lambdaResponse(v) {
  if (isPlainObject(v) && 'statusCode' in v) return httpResponse(v);
  return jsonResponse(v);
}

function openwhiskResponse(v) {
  if (isPlainObject(v)) {
    const keys = Object.keys(v);
    if (keys.length && keys.every((k) => OPENWHISK_WEB_KEYS.has(k))) return httpResponse(v);
  }
  return jsonResponse(v);
}

// --- calling the handler -----------------------------------------------------

function parseEvent(body) {
  if (body.length === 0) return {};
  const s = body.toString('utf8');
  try {
    return JSON.parse(s);
  } catch (_) {
    return s;
  }
}

function headerObject(h) {
  return Object.fromEntries(Array.isArray(h.headers) ? h.headers : []);
}

const kDeadline = Symbol('deadline');

// The frame's client_context (base64 of a JSON object, as the caller sent
// X-Amz-Client-Context), parsed as aws-lambda-ric gives it; undefined when
// absent or not that.
function clientContext(text) {
  if (typeof text !== 'string' || !text) return undefined;
  try {
    const v = JSON.parse(Buffer.from(text, 'base64').toString('utf8'));
    return isPlainObject(v) ? v : undefined;
  } catch (_) {
    return undefined;
  }
}

// What AWS Lambda passes as `context`, plus flick's `http` (absent when the
// body is the event itself).
class Context {
  constructor(h, direct) {
    this.callbackWaitsForEmptyEventLoop = true;
    this.functionName = NAME;
    this.functionVersion = REVISION;
    this.invokedFunctionArn = ARN;
    this.memoryLimitInMB = MEMORY;
    this.awsRequestId = h.id;
    this.logGroupName = LOG_GROUP;
    this.logStreamName = LOG_STREAM;
    if (!direct) this.http = { method: h.method, path: h.path, query: h.query, headers: headerObject(h) };
    const cc = clientContext(h.client_context);
    if (cc !== undefined) this.clientContext = cc;
    this[kDeadline] = Number(h.deadline_ms) || 0;
  }

  getRemainingTimeInMillis() {
    return Math.max(0, this[kDeadline] - Date.now());
  }
}

// {presentation: [call, toResponse]}: how the handler is called and its value
// read, for a request shown as HTTP and for one whose body is the event
// itself (`direct`: Lambda's Invoke, OpenWhisk's action invoke).
function makeCallers(fn, exportName) {
  if (exportName === 'main') {
    const call = (h, body) => {
      // fromEntries, not assignment: a "__proto__" key stays a plain key.
      const entries = [];
      if (h.query) for (const kv of new URLSearchParams(h.query)) entries.push(kv);
      if (body.length) {
        const s = body.toString('utf8');
        let parsed;
        try {
          parsed = JSON.parse(s);
        } catch (_) {
          parsed = undefined;
        }
        if (isPlainObject(parsed)) {
          for (const kv of Object.entries(parsed)) entries.push(kv);
        } else {
          entries.push(['__ow_body', s]);
        }
      }
      entries.push(['__ow_method', String(h.method || '').toLowerCase()]);
      entries.push(['__ow_headers', headerObject(h)]);
      entries.push(['__ow_path', h.path === undefined ? '/' : h.path]);
      return fn(Object.fromEntries(entries));
    };
    // The params alone, as a non-web action gets them: no __ow_* fields.
    const direct = (h, body) => fn(parseEvent(body));
    return { http: [call, openwhiskResponse], direct: [direct, jsonResponse] };
  }
  const lambda = (direct) => {
    if (fn.length >= 3) {
      return (h, body) => {
        const event = parseEvent(body);
        const context = new Context(h, direct);
        return new Promise((resolve, reject) => {
          const callback = (err, result) => {
            if (err !== undefined && err !== null) reject(err);
            else resolve(result);
          };
          // The pre-callback Lambda API, still found in old code.
          context.done = callback;
          context.succeed = (result) => callback(null, result);
          context.fail = (err) => callback(err === undefined || err === null ? new Error('failed') : err);
          // Lambda settles on whichever comes first: the callback or a returned promise.
          const r = fn(event, context, callback);
          if (r !== null && typeof r === 'object' && typeof r.then === 'function') r.then(resolve, reject);
        });
      };
    }
    return (h, body) => fn(parseEvent(body), new Context(h, direct));
  };
  // Direct: the JSON of the return value is the answer, verbatim; an object
  // with a statusCode is an event's result like any other.
  return { http: [lambda(false), lambdaResponse], direct: [lambda(true), jsonResponse] };
}

function isFile(p) {
  try {
    return fs.statSync(p).isFile();
  } catch (_) {
    return false;
  }
}

function importFile(file) {
  const { pathToFileURL } = require('url');
  return import(pathToFileURL(file).href);
}

async function loadHandler() {
  const spec = env.FLICK_HANDLER || '';
  const dot = spec.lastIndexOf('.');
  const stem = dot > 0 ? spec.slice(0, dot) : '';
  const exportName = dot > 0 ? spec.slice(dot + 1) : '';
  if (!stem || !exportName || exportName.includes('/')) {
    throw new InitError(
      'Runtime.MalformedHandlerName',
      `Bad handler '${spec}': expected 'file.export', e.g. 'index.handler'`,
    );
  }
  const base = path.resolve(CODE_DIR, stem);
  let file = ['.js', '.mjs', '.cjs'].map((ext) => base + ext).find(isFile);
  if (!file) {
    try {
      // A directory with an index.js or package.json "main", or a file named exactly.
      file = require.resolve(base);
    } catch (_) {
      throw new InitError(
        'Runtime.ImportModuleError',
        `Unable to import module '${stem}': no ${stem}.js, ${stem}.mjs or ${stem}.cjs in ${CODE_DIR}`,
      );
    }
  }

  let mod;
  try {
    if (file.endsWith('.mjs')) {
      mod = await importFile(file);
    } else {
      try {
        mod = require(file);
      } catch (e) {
        // An ES module in a .js file ("type": "module"), or one with top-level await.
        if (e && (e.code === 'ERR_REQUIRE_ESM' || e.code === 'ERR_REQUIRE_ASYNC_MODULE')) {
          mod = await importFile(file);
        } else {
          throw e;
        }
      }
    }
  } catch (e) {
    if (e instanceof SyntaxError) {
      throw new InitError('Runtime.UserCodeSyntaxError', `Syntax error in module '${stem}': ${describe(e).message}`, e);
    }
    throw new InitError('Runtime.ImportModuleError', `Unable to import module '${stem}': ${describe(e).message}`, e);
  }

  let fn = mod === null || mod === undefined ? undefined : mod[exportName];
  // An ES module with `export default { handler }`, or CommonJS seen through import().
  if (fn === undefined && mod && mod.default !== null && typeof mod.default === 'object') {
    fn = mod.default[exportName];
  }
  if (fn === undefined) {
    throw new InitError('Runtime.HandlerNotFound', `${stem}.${exportName} is undefined or not exported`);
  }
  if (typeof fn !== 'function') {
    throw new InitError('Runtime.HandlerNotFound', `${stem}.${exportName} is not a function`);
  }
  return makeCallers(fn, exportName);
}

// --- serving -----------------------------------------------------------------

// Invocations not yet answered.
const inflight = new Set();
let callers = null;

function settle(inv) {
  if (inv.done) return false;
  inv.done = true;
  inflight.delete(inv);
  return true;
}

function succeed(inv, value) {
  if (inv.done) return;
  let res;
  try {
    res = inv.toResponse(value);
  } catch (e) {
    fail(inv, e, 'Runtime.MarshalError', 'Unable to marshal response: ' + describe(e).message);
    return;
  }
  settle(inv);
  endOfOutput(inv.id);
  send({ type: 'result', id: inv.id, status: res[0], headers: res[1], len: res[2].length }, res[2]);
}

function fail(inv, err, kind, message) {
  if (!settle(inv)) return;
  const info = describe(err);
  logError(info.text);
  endOfOutput(inv.id);
  send({
    type: 'error',
    id: inv.id,
    error: cappedError(kind || info.type, message === undefined ? info.message : message, info.trace),
  });
}

function run(inv, h, body) {
  let r;
  try {
    r = inv.call(h, body);
    if (r !== null && (typeof r === 'object' || typeof r === 'function') && typeof r.then === 'function') {
      r.then(
        (v) => succeed(inv, v),
        (e) => fail(inv, e),
      );
      return;
    }
  } catch (e) {
    fail(inv, e);
    return;
  }
  succeed(inv, r);
}

function invoke(h, body) {
  // A presentation this bootstrap does not know (a newer flick) is shown as HTTP.
  const [call, toResponse] = (h.presentation === 'direct' && callers.direct) || callers.http;
  const inv = { id: h.id, done: false, call, toResponse };
  inflight.add(inv);
  if (als !== null) als.run(inv, run, inv, h, body);
  else run(inv, h, body);
}

function stray(what, err) {
  let inv = als !== null ? als.getStore() : undefined;
  if (inv === undefined && inflight.size === 1) inv = inflight.values().next().value;
  if (inv !== undefined && !inv.done) {
    fail(inv, err);
  } else {
    // Nothing to blame it on (init, or a call already answered): log and keep serving.
    logError(`${what}: ${describe(err).text}`);
  }
}

process.on('unhandledRejection', (reason) => stray('Unhandled promise rejection', reason));
process.on('uncaughtException', (err) => stray('Uncaught exception', err));

// Frame reader. Chunks are only joined once a whole header or body is in, so
// a large body arriving in many reads is copied once. Frames go to `onFrame`
// while `reading`; a stem cell stops reading from its specialise frame until
// it is ready, so frames behind it wait for the handler.
let chunks = [];
let have = 0;
let head = null;
let reading = true;
let onFrame = serveFrame;

function protocolError(e) {
  logError(`flick bootstrap: bad frame from flick: ${describe(e).text}`);
  process.exit(1);
}

function onData(chunk) {
  chunks.push(chunk);
  have += chunk.length;
  pump();
}

function pump() {
  while (reading) {
    if (head === null) {
      if (chunks.length === 0) return;
      // Earlier chunks were searched already: only the last can hold the newline.
      const last = chunks[chunks.length - 1];
      const nl = last.indexOf(10);
      if (nl < 0) return;
      const line =
        chunks.length === 1
          ? last.toString('utf8', 0, nl)
          : Buffer.concat(chunks.slice(0, -1).concat([last.subarray(0, nl)])).toString('utf8');
      const rest = last.subarray(nl + 1);
      chunks = rest.length ? [rest] : [];
      have = rest.length;
      try {
        head = JSON.parse(line);
      } catch (e) {
        protocolError(e);
        return;
      }
      head.len = Number(head.len) || 0;
    }
    const need = head.len;
    if (have < need) return;
    let body = EMPTY;
    if (need > 0) {
      const all = chunks.length === 1 ? chunks[0] : Buffer.concat(chunks, have);
      body = all.subarray(0, need);
      const rest = all.subarray(need);
      chunks = rest.length ? [rest] : [];
      have = rest.length;
    }
    const h = head;
    head = null;
    onFrame(h, body);
  }
}

function serveFrame(h, body) {
  if (h.type === 'invoke') invoke(h, body);
  // Other frame types are from a newer flick; skip them.
}

function initFailed(e) {
  const kind = e instanceof InitError ? e.kind : 'Runtime.ImportModuleError';
  const message = e instanceof InitError ? e.message : describe(e).message;
  const text = e instanceof InitError && e.cause !== undefined ? describe(e.cause).text : `${kind}: ${message}`;
  logError(text);
  const line = JSON.stringify({ type: 'init_error', error: cappedError(kind, message, text.split('\n')) }) + '\n';
  chan.write(line, () => process.exit(1));
}

// From here on the function is known: everything its environment decides is
// read now, whether this process started as it or as a stem cell.
function start() {
  configure();
  loadHandler().then((made) => {
    callers = made;
    // Output of the load belongs to no invocation; flick keeps it for the
    // first. (Writes to pipes are synchronous: there is nothing to flush.)
    send({ type: 'ready' });
    onFrame = serveFrame;
    if (STEM) {
      reading = true;
      chan.resume();
      pump();
    } else {
      chan.on('data', onData);
    }
  }, initFailed);
}

// --- stem cells --------------------------------------------------------------

// By path: flick mounts the code over this directory later, and only a fresh
// lookup of the path sees the mount (the old handle does not).
let stemDir = '';

function prewarm() {
  try {
    stemDir = process.cwd();
  } catch (_) {}
  // What start() and loadHandler() would otherwise load, and compile on first
  // use, while a function waits. configure() runs again once the function is
  // known, and then sets everything anew.
  require('async_hooks');
  require('url');
  configure();
  isFile(__filename);
  // The ES module loader, for .mjs and "type": "module" handlers, and libuv's
  // thread pool, which it reads files with.
  import('data:text/javascript,').catch(() => {});
  fs.readFile(__filename, () => {});
}

// Throws unless every thread of this process (V8's and libuv's included) has
// left uid and gid 0 (real, effective, saved and filesystem ids) and holds no
// capability, as the kernel reports it. The inheritable set is not checked:
// Node cannot call capset(2) to empty it, and with an empty bounding set,
// no_new_privs and nosuid mounts nothing can ever grow from it.
function unprivilegedOrFail() {
  for (const task of fs.readdirSync('/proc/self/task')) {
    const status = {};
    for (const line of fs.readFileSync(`/proc/self/task/${task}/status`, 'latin1').split('\n')) {
      const colon = line.indexOf(':');
      if (colon > 0) status[line.slice(0, colon)] = line.slice(colon + 1).trim();
    }
    for (const key of ['Uid', 'Gid']) {
      const ids = (status[key] || '0').split(/\s+/);
      if (ids.includes('0')) throw new Error(`thread ${task} still has ${key.toLowerCase()} ${ids.join(' ')}`);
    }
    for (const key of ['CapPrm', 'CapEff', 'CapAmb', 'CapBnd']) {
      if (/[^0]/.test(status[key] || '0')) throw new Error(`thread ${task} still holds capabilities: ${key} ${status[key]}`);
    }
  }
}

function stemFrame(h) {
  if (h.type !== 'specialise') return; // From a newer flick; skip it.
  // Frames behind this one are for the function: they wait until it is ready.
  reading = false;
  chan.pause();
  try {
    if (h.uid !== undefined && h.uid !== null) {
      // The stem ran as uid 0 with CAP_SETUID/CAP_SETGID only; leaving
      // uid 0 clears those too, before any of the function's code runs.
      // (glibc makes every thread of the process take the new ids.)
      process.setgroups([]);
      process.setgid(h.gid ?? h.uid);
      process.setuid(h.uid);
      unprivilegedOrFail();
    } else if (env.FLICK_STEM === 'setuid') {
      // A sandboxed stem is still uid 0: it must never run a function so.
      throw new Error('flick sent no uid to switch to');
    }
    const add = h.env;
    if (add !== null && add !== undefined) {
      if (typeof add !== 'object' || Array.isArray(add)) throw new TypeError(`env is not an object`);
      Object.assign(env, add);
      if ('NODE_PATH' in add) {
        const Module = require('module');
        if (typeof Module._initPaths === 'function') Module._initPaths();
      }
    }
    delete env.FLICK_STEM;
    const dir = env.FLICK_CODE_DIR || stemDir;
    if (!dir) throw new Error('no FLICK_CODE_DIR, and the start directory is gone');
    process.chdir(dir);
  } catch (e) {
    initFailed(new InitError('Runtime.InitError', 'Unable to specialise: ' + describe(e).message, e));
    return;
  }
  start();
}

if (STEM) {
  prewarm();
  onFrame = stemFrame;
  chan.on('data', onData);
  send({ type: 'stem_ready' });
} else {
  start();
}
