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
let SHAPE = 'auto';
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
  SHAPE = env.FLICK_SHAPE || 'auto';
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

// --- API Gateway events ------------------------------------------------------

// An API Gateway HTTP API (payload format 2.0) event for the request.
function apigwEvent(h, body) {
  const headers = {};
  const cookies = [];
  for (const [k0, v] of Array.isArray(h.headers) ? h.headers : []) {
    const k = String(k0).toLowerCase();
    if (k === 'cookie') {
      for (const c of String(v).split(';')) if (c.trim()) cookies.push(c.trim());
    } else if (Object.prototype.hasOwnProperty.call(headers, k)) {
      // As API Gateway: repeated headers are joined with commas.
      headers[k] += ',' + v;
    } else {
      headers[k] = String(v);
    }
  }
  const query = h.query || '';
  const path = h.path || '/';
  const event = { version: '2.0', routeKey: '$default', rawPath: h.raw_path || path, rawQueryString: query };
  if (cookies.length) event.cookies = cookies;
  event.headers = headers;
  if (query) {
    const params = {};
    for (const [k, v] of new URLSearchParams(query)) {
      params[k] = Object.prototype.hasOwnProperty.call(params, k) ? params[k] + ',' + v : v;
    }
    event.queryStringParameters = params;
  }
  const now = new Date();
  const host = headers.host || 'localhost';
  const arn = ARN.split(':');
  const d = now.toUTCString().split(' '); // "Tue, 02 Dec 2026 10:54:09 GMT"
  event.requestContext = {
    accountId: arn[4] || '000000000000',
    apiId: 'flick',
    domainName: host,
    domainPrefix: host.split('.')[0],
    http: {
      method: h.method || 'GET',
      path,
      protocol: 'HTTP/1.1',
      // flick is not told the peer's address; a proxy's word, else loopback.
      sourceIp: (headers['x-forwarded-for'] || '').split(',')[0].trim() || '127.0.0.1',
      userAgent: headers['user-agent'] || '',
    },
    requestId: h.id,
    routeKey: '$default',
    stage: '$default',
    time: `${d[1]}/${d[2]}/${d[3]}:${d[4]} +0000`,
    timeEpoch: now.getTime(),
  };
  if (body.length) {
    const text = new TextDecoder('utf-8', { fatal: true });
    try {
      event.body = text.decode(body);
      event.isBase64Encoded = false;
    } catch (_) {
      event.body = body.toString('base64');
      event.isBase64Encoded = true;
    }
  } else {
    event.isBase64Encoded = false;
  }
  return event;
}

// --- the OpenFaaS node18/node20 templates -------------------------------------
//
// module.exports = async (event, context) => …, where the template's Express
// app parsed the body and `context` builds the answer.

class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// The body as the template's body-parser set-up leaves it: JSON parsed,
// text/* as a string, a urlencoded form as an object, anything else `{}`; all
// of it a Buffer with RAW_BODY=true.
function openfaasBody(h, body) {
  if (env.RAW_BODY === 'true') return body;
  let ctype = '';
  for (const [k, v] of Array.isArray(h.headers) ? h.headers : []) {
    if (String(k).toLowerCase() === 'content-type') ctype = String(v);
  }
  // The template's default when the caller sends none.
  const mime = (ctype || 'text/plain').split(';')[0].trim().toLowerCase();
  if (mime.startsWith('text/')) return body.toString('utf8');
  if (mime === 'application/json' || mime.endsWith('+json')) {
    if (!body.length) return {};
    try {
      return JSON.parse(body.toString('utf8'));
    } catch (e) {
      throw new HttpError(400, `Bad Request: invalid JSON body: ${e.message}`);
    }
  }
  if (mime === 'application/x-www-form-urlencoded') return queryObject(body.toString('utf8'));
  return {};
}

// As Express's query parser: a repeated key is an array.
function queryObject(text) {
  const out = {};
  for (const [k, v] of new URLSearchParams(text)) {
    if (k === '__proto__') continue;
    if (!Object.prototype.hasOwnProperty.call(out, k)) out[k] = v;
    else if (Array.isArray(out[k])) out[k].push(v);
    else out[k] = [out[k], v];
  }
  return out;
}

// As Node's http module shows them: lowercase names, repeats joined.
function expressHeaders(h) {
  const out = {};
  for (const [k0, v] of Array.isArray(h.headers) ? h.headers : []) {
    const k = String(k0).toLowerCase();
    if (k === '__proto__') continue;
    if (k === 'set-cookie') (out[k] = out[k] || []).push(String(v));
    else out[k] = Object.prototype.hasOwnProperty.call(out, k) ? `${out[k]}, ${v}` : String(v);
  }
  return out;
}

class FunctionEvent {
  constructor(h, body) {
    this.body = body;
    this.headers = expressHeaders(h);
    this.method = h.method || 'GET';
    this.query = queryObject(h.query || '');
    this.path = h.path || '/';
  }
}

class FunctionContext {
  constructor(done) {
    this.statusCode = 200;
    this.headerValues = {};
    this.cbCalled = 0;
    this.done = done;
  }

  status(code) {
    if (!code) return this.statusCode;
    this.statusCode = code;
    return this;
  }

  headers(value) {
    if (!value) return this.headerValues;
    this.headerValues = value;
    return this;
  }

  succeed(value) {
    this.cbCalled++;
    this.done(undefined, value);
  }

  fail(value) {
    // As the template: a failure without a status of its own is a 500.
    if (this.status() == 200) this.status(500);
    this.cbCalled++;
    this.done(value === undefined ? new Error('failed') : value);
  }
}

// What Express's res.set(headers).status(status).send(body) answers.
function expressAnswer(status, headerValues, body) {
  const code = Number(status);
  if (!Number.isInteger(code) || code < 100 || code > 599) {
    throw new TypeError(`status ${JSON.stringify(status)} is not an HTTP status`);
  }
  const headers = [];
  for (const k of Object.keys(headerValues || {})) pushHeader(headers, k.toLowerCase(), headerValues[k]);
  let out, ctype;
  if (body === undefined || body === null) {
    out = EMPTY;
  } else if (typeof body === 'string') {
    out = Buffer.from(body);
    ctype = 'text/html; charset=utf-8';
  } else if (isBytes(body)) {
    out = toBuffer(body);
    ctype = 'application/octet-stream';
  } else if (typeof body === 'object') {
    out = Buffer.from(jsonText(body));
    ctype = 'application/json; charset=utf-8';
  } else {
    out = Buffer.from(String(body));
    ctype = 'text/html; charset=utf-8';
  }
  if (ctype && !headers.some((h) => h[0] === 'content-type')) headers.push(['content-type', ctype]);
  return [code, headers, out];
}

// An answer made here, not by the handler's value: toResponse passes it on.
const kAnswer = Symbol('answer');

function openfaasCaller(fn) {
  return (h, body) => {
    let parsed;
    try {
      parsed = openfaasBody(h, body);
    } catch (e) {
      if (e instanceof HttpError) return { [kAnswer]: expressAnswer(e.status, {}, e.message) };
      throw e;
    }
    return new Promise((resolve, reject) => {
      let context;
      const done = (err, result) => {
        if (err !== undefined && err !== null) {
          // context.fail(value): the template's error answer, not a crash.
          const text = typeof err.toString === 'function' ? err.toString() : String(err);
          resolve({ [kAnswer]: expressAnswer(context.status(), {}, text) });
          return;
        }
        // Objects and arrays go out as JSON text (which Express labels text/html).
        const value = Array.isArray(result) || isPlainObject(result) ? JSON.stringify(result) : result;
        try {
          resolve({ [kAnswer]: expressAnswer(context.status(), context.headers(), value) });
        } catch (e) {
          reject(e);
        }
      };
      context = new FunctionContext(done);
      const r = fn(new FunctionEvent(h, parsed), context, done);
      Promise.resolve(r).then((value) => {
        if (!context.cbCalled) context.succeed(value);
      }, reject);
    });
  };
}

function openfaasResponse(v) {
  return v[kAnswer];
}

// --- Google Cloud Functions (node): (req, res) with Express-like objects -----

// The body as functions-framework's body-parsers leave it: JSON parsed, text/plain
// a string, a urlencoded form an object, anything else a Buffer; `{}` when empty.
function gcfBody(h, body) {
  if (!body.length) return {};
  const mime = headerValue(h, 'content-type').split(';')[0].trim().toLowerCase();
  if (mime === 'application/json' || (mime.startsWith('application/') && mime.endsWith('+json'))) {
    try {
      return JSON.parse(body.toString('utf8'));
    } catch (e) {
      throw new HttpError(400, `Bad Request: invalid JSON body: ${e.message}`);
    }
  }
  if (mime === 'text/plain') return body.toString('utf8');
  if (mime === 'application/x-www-form-urlencoded') return queryObject(body.toString('utf8'));
  return body;
}

function headerValue(h, name) {
  for (const [k, v] of Array.isArray(h.headers) ? h.headers : []) {
    if (String(k).toLowerCase() === name) return String(v);
  }
  return '';
}

class GcfRequest {
  constructor(h, body) {
    this.method = h.method || 'GET';
    this.path = h.path || '/';
    this.url = this.originalUrl = (h.raw_path || this.path) + (h.query ? '?' + h.query : '');
    this.query = queryObject(h.query || '');
    this.headers = expressHeaders(h);
    this.rawBody = body;
    this.body = gcfBody(h, body);
    this.protocol = 'http';
    this.hostname = (this.headers.host || 'localhost').split(':')[0];
    this.ip = (this.headers['x-forwarded-for'] || '').split(',')[0].trim() || '127.0.0.1';
    this.params = {};
  }

  get(name) {
    const k = String(name).toLowerCase();
    if (k === 'referer' || k === 'referrer') return this.headers.referer || this.headers.referrer;
    return this.headers[k];
  }

  header(name) {
    return this.get(name);
  }

  is(type) {
    const mime = (this.headers['content-type'] || '').split(';')[0].trim().toLowerCase();
    if (!mime) return false;
    const t = String(type).toLowerCase();
    // As type-is: the type asked for when it matches, the request's for a wildcard.
    if (t === 'json') return mime === 'application/json' || mime.endsWith('+json') ? t : false;
    if (t.endsWith('/*')) return mime.startsWith(t.slice(0, -1)) ? mime : false;
    return mime === t || mime.endsWith('/' + t) ? t : false;
  }
}

// The Express response a GCF handler writes its answer to; `finished`
// settles when it has ended.
class GcfResponse {
  constructor(finish) {
    this.statusCode = 200;
    this.headersSent = false;
    this.locals = {};
    this._headers = new Map();
    this._chunks = [];
    this._finish = finish;
  }

  status(code) {
    this.statusCode = code;
    return this;
  }

  set(name, value) {
    if (typeof name === 'object' && name !== null) {
      for (const k of Object.keys(name)) this.set(k, name[k]);
    } else {
      this._headers.set(String(name).toLowerCase(), Array.isArray(value) ? value.map(String) : String(value));
    }
    return this;
  }

  header(name, value) {
    return this.set(name, value);
  }

  setHeader(name, value) {
    this.set(name, value);
    return this;
  }

  get(name) {
    return this._headers.get(String(name).toLowerCase());
  }

  getHeader(name) {
    return this.get(name);
  }

  removeHeader(name) {
    this._headers.delete(String(name).toLowerCase());
  }

  append(name, value) {
    const k = String(name).toLowerCase();
    const prev = this._headers.get(k);
    const add = Array.isArray(value) ? value.map(String) : [String(value)];
    this._headers.set(k, prev === undefined ? (add.length === 1 ? add[0] : add) : [].concat(prev, add));
    return this;
  }

  type(t) {
    const s = String(t);
    return this.set('content-type', s.includes('/') ? s : s === 'json' ? 'application/json' : s === 'html' ? 'text/html' : `text/${s}`);
  }

  writeHead(code, headers) {
    this.statusCode = code;
    if (headers && typeof headers === 'object') this.set(headers);
    return this;
  }

  write(chunk) {
    if (chunk !== undefined && chunk !== null) this._chunks.push(Buffer.isBuffer(chunk) ? chunk : Buffer.from(String(chunk)));
    return true;
  }

  end(chunk) {
    if (this.headersSent) return this;
    this.write(chunk);
    this.headersSent = true;
    this._finish(this);
    return this;
  }

  send(body) {
    if (typeof body === 'string') {
      if (!this._headers.has('content-type')) this.set('content-type', 'text/html; charset=utf-8');
    } else if (isBytes(body)) {
      if (!this._headers.has('content-type')) this.set('content-type', 'application/octet-stream');
      body = toBuffer(body);
    } else if (body !== undefined && body !== null && typeof body === 'object') {
      return this.json(body);
    } else if (body !== undefined && body !== null) {
      body = String(body);
    }
    return this.end(body);
  }

  json(value) {
    if (!this._headers.has('content-type')) this.set('content-type', 'application/json; charset=utf-8');
    return this.end(jsonText(value));
  }

  sendStatus(code) {
    this.statusCode = code;
    return this.send(String(code));
  }

  redirect(a, b) {
    const [code, url] = b === undefined ? [302, a] : [a, b];
    this.statusCode = code;
    this.set('location', url);
    return this.end();
  }

  answer() {
    const headers = [];
    for (const [k, v] of this._headers) pushHeader(headers, k, v);
    const code = Number(this.statusCode);
    if (!Number.isInteger(code) || code < 100 || code > 599) {
      throw new TypeError(`status ${JSON.stringify(this.statusCode)} is not an HTTP status`);
    }
    return [code, headers, this._chunks.length === 1 ? this._chunks[0] : Buffer.concat(this._chunks)];
  }
}

function gcfCaller(fn) {
  return (h, body) => {
    let req;
    try {
      req = new GcfRequest(h, body);
    } catch (e) {
      if (e instanceof HttpError) return { [kAnswer]: expressAnswer(e.status, {}, e.message) };
      throw e;
    }
    // The call ends when the handler ends the response (or fails).
    return new Promise((resolve, reject) => {
      const res = new GcfResponse((r) => {
        try {
          resolve({ [kAnswer]: r.answer() });
        } catch (e) {
          reject(e);
        }
      });
      const r = fn(req, res);
      if (r !== null && typeof r === 'object' && typeof r.then === 'function') r.then(undefined, reject);
    });
  };
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

const bodyEvent = (h, body) => parseEvent(body);

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
    // The W3C trace context: flick's span for this call as the parent to
    // pass on to whatever the handler calls.
    const tp = typeof h.traceparent === 'string' && h.traceparent.length === 55 ? h.traceparent : undefined;
    this.traceparent = tp;
    this.tracestate = typeof h.tracestate === 'string' ? h.tracestate : undefined;
    this.traceId = tp && tp.slice(3, 35);
    this.spanId = tp && tp.slice(36, 52);
    this[kDeadline] = Number(h.deadline_ms) || 0;
  }

  getRemainingTimeInMillis() {
    return Math.max(0, this[kDeadline] - Date.now());
  }
}

// {presentation: [call, toResponse]}: how the handler is called and its value
// read, for a request shown as HTTP and for one whose body is the event
// itself (`direct`: Lambda's Invoke, OpenWhisk's action invoke).
function makeCallers(fn, shape) {
  if (shape === 'gcf') {
    const call = gcfCaller(fn);
    return { http: [call, openfaasResponse], direct: [call, openfaasResponse] };
  }
  if (shape === 'openfaas') {
    const call = openfaasCaller(fn);
    return { http: [call, openfaasResponse], direct: [call, openfaasResponse] };
  }
  if (shape === 'openwhisk') {
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
  const lambda = (direct, toEvent) => {
    if (fn.length >= 3) {
      return (h, body) => {
        const event = toEvent(h, body);
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
    return (h, body) => fn(toEvent(h, body), new Context(h, direct));
  };
  if (shape === 'lambda') {
    // Declared a Lambda function: over HTTP it gets what API Gateway (HTTP
    // API, payload 2.0) would give it.
    return { http: [lambda(false, apigwEvent), lambdaResponse], direct: [lambda(true, bodyEvent), jsonResponse] };
  }
  // Direct: the JSON of the return value is the answer, verbatim; an object
  // with a statusCode is an event's result like any other.
  return { http: [lambda(false, bodyEvent), lambdaResponse], direct: [lambda(true, bodyEvent), jsonResponse] };
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
  // `module.exports = async (event, context) => …`: the module is the
  // handler, as in OpenFaaS's node templates.
  let whole = false;
  if (fn === undefined && typeof mod === 'function') {
    fn = mod;
    whole = true;
  } else if (fn === undefined && mod && typeof mod.default === 'function' && Object.keys(mod).length <= 2) {
    fn = mod.default;
    whole = true;
  }
  if (fn === undefined) {
    throw new InitError('Runtime.HandlerNotFound', `${stem}.${exportName} is undefined or not exported`);
  }
  if (typeof fn !== 'function') {
    throw new InitError('Runtime.HandlerNotFound', `${stem}.${exportName} is not a function`);
  }
  let shape = SHAPE;
  if (shape === 'auto') shape = exportName === 'main' ? 'openwhisk' : whole ? 'openfaas' : 'auto';
  else if (!['lambda', 'openwhisk', 'openfaas', 'gcf'].includes(shape)) {
    throw new InitError('Runtime.InitError', `Unknown handler shape '${shape}' (FLICK_SHAPE)`);
  }
  return makeCallers(fn, shape);
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

// A /proc file read with one open and a few reads into `buf`: readFileSync
// costs ~100 µs a file here (600 µs the first time), and a cold start reads
// one per thread (~11).
function readProcFile(file, buf) {
  const fd = fs.openSync(file, 'r');
  try {
    let n = 0;
    for (let got; n < buf.length && (got = fs.readSync(fd, buf, n, buf.length - n, null)) > 0; ) n += got;
    if (n === buf.length) throw new Error(`${file} is larger than ${buf.length} bytes`);
    return buf.latin1Slice(0, n);
  } finally {
    fs.closeSync(fd);
  }
}

// Throws unless every thread of this process (V8's and libuv's included) has
// left uid and gid 0 (real, effective, saved and filesystem ids) and holds no
// capability, as the kernel reports it. The inheritable set is not checked:
// Node cannot call capset(2) to empty it, and with an empty bounding set,
// no_new_privs and nosuid mounts nothing can ever grow from it.
function unprivilegedOrFail() {
  const buf = Buffer.allocUnsafe(16 << 10);
  for (const task of fs.readdirSync('/proc/self/task')) {
    const status = {};
    for (const line of readProcFile(`/proc/self/task/${task}/status`, buf).split('\n')) {
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
