// Drives flick's OpenWhisk API with the real `openwhisk` npm client (and
// plain fetch for web actions and the attacker's side). Run by
// crates/cli/tests/compat_openwhisk.rs with FLICK_URL, FLICK_KEY and the
// zips it made (OW_ZIP_PY, OW_ZIP_NODE, OW_ZIP_EVIL, OW_ZIP_BOMB). Exits non-zero on the
// first failed check; prints `RESULT <json>` for the Rust side to cross-check.
'use strict';

const assert = require('assert/strict');
const fs = require('fs');
const path = require('path');

let openwhisk;
try {
  openwhisk = require(path.join(__dirname, 'node_modules', 'openwhisk'));
} catch (e) {
  console.error('the openwhisk npm client is missing: run `bash tests/compat/install.sh` (' + e.message + ')');
  process.exit(2);
}

const URL_ = process.env.FLICK_URL;
const KEY = process.env.FLICK_KEY;
const ow = openwhisk({ apihost: URL_, api_key: `admin:${KEY}`, namespace: '_' });
const wrong = openwhisk({ apihost: URL_, api_key: `admin:${KEY}x`, namespace: '_' });
const basic = 'Basic ' + Buffer.from(`admin:${KEY}`).toString('base64');

const PY = `
def main(args):
    print("python says hello to", args.get("name"))
    return {"greeting": args.get("greeting", "Hi") + " " + args.get("name", "?"), "keys": sorted(args.keys())}
`;
const PY2 = `
def main(args):
    return {"version": 2, "keys": sorted(args.keys())}
`;
const NODE = `
function main(params) {
  console.log('node says hello to', params.name);
  return { greeting: 'Hello ' + params.name, keys: Object.keys(params).sort() };
}
`;
const SLOW = `
import time
def main(args):
    time.sleep(args.get("sleep", 3))
    return {"slept": True}
`;
const FAILS = `
def main(args):
    if args.get("raise"):
        raise ValueError("boom " + args["raise"])
    return {"error": "nope"}
`;
const WEB = `
import base64
def main(args):
    if args.get("__ow_path") == "/png":
        return {"statusCode": 200, "headers": {"content-type": "image/png"},
                "body": base64.b64encode(bytes([137, 80, 78, 71, 0, 255])).decode()}
    return {"statusCode": 201, "headers": {"x-seen-method": args["__ow_method"]},
            "body": {"method": args["__ow_method"], "path": args["__ow_path"], "name": args.get("name"),
                     "auth": "authorization" in args["__ow_headers"], "body": args.get("__ow_body"),
                     "greeting": args.get("greeting"), "h": args["__ow_headers"].get("x-test")}}
`;

const ECHO = `
def main(args):
    return {"args": args}
`;

const results = {};
const HEX32 = /^[0-9a-f]{32}$/;
const sleep = (ms) => new Promise((res) => setTimeout(res, ms));

// The finished activations of `name` (newest first), with their documents.
async function runs(name) {
  return ow.activations.list({ name, limit: 200, docs: true });
}

// Polls `f` until it returns something truthy (or fails after `ms`).
async function eventually(what, ms, f) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v) return v;
    if (Date.now() > end) assert.fail(`${what}: not within ${ms} ms`);
    await sleep(200);
  }
}

async function rejects(promise, status, what) {
  try {
    await promise;
  } catch (e) {
    assert.equal(e.statusCode, status, `${what}: ${e.message}`);
    return e;
  }
  assert.fail(`${what}: expected HTTP ${status}, but it succeeded`);
}

async function raw(method, p, { body, auth = basic, headers = {} } = {}) {
  const h = { ...headers };
  if (auth) h.authorization = auth;
  const r = await fetch(URL_ + p, { method, body, headers: h });
  const buf = Buffer.from(await r.arrayBuffer());
  let json;
  try {
    json = JSON.parse(buf.toString());
  } catch (_) {
    json = undefined;
  }
  return { status: r.status, headers: r.headers, buf, json };
}

function owError(r, status, what) {
  assert.equal(r.status, status, `${what}: ${r.buf.toString()}`);
  assert.equal(typeof r.json.error, 'string', `${what}: no error string`);
  assert.match(r.json.code, /^[0-9a-f]{32}$/, `${what}: no code`);
  return r.json.error;
}

async function names() {
  return (await ow.actions.list({ limit: 200 })).map((a) => a.name).sort();
}

async function step(name, f) {
  process.stdout.write(`- ${name}\n`);
  await f();
}

async function main() {
  await step('namespaces', async () => {
    assert.deepEqual(await ow.namespaces.list(), ['admin']);
  });

  await step('create python and node actions from string code', async () => {
    const py = await ow.actions.create({
      name: 'hello-py',
      action: PY,
      kind: 'python:3',
      params: { greeting: 'Hello' },
      limits: { timeout: 20000, memory: 128 },
    });
    assert.equal(py.name, 'hello-py');
    assert.equal(py.version, '0.0.1');
    assert.equal(py.exec.kind, 'python:3');
    const js = await ow.actions.create({ name: 'hello-js', action: NODE });
    assert.equal(js.exec.kind, 'nodejs:default');
    await ow.actions.create({ name: 'slow', action: SLOW, kind: 'python:default', limits: { timeout: 30000 } });
    await ow.actions.create({ name: 'fails', action: FAILS, kind: 'python:3.11' });
    await ow.actions.create({ name: 'web', action: WEB, kind: 'python:3', params: { greeting: 'hey' }, annotations: { 'web-export': true } });
  });

  await step('create again without overwrite: 409', async () => {
    await rejects(ow.actions.create({ name: 'hello-py', action: PY2, kind: 'python:3' }), 409, 'second create');
  });

  await step('get', async () => {
    const a = await ow.actions.get({ name: 'hello-py' });
    assert.equal(a.exec.code, PY);
    assert.equal(a.exec.main, 'main');
    assert.deepEqual(a.parameters, [{ key: 'greeting', value: 'Hello' }]);
    assert.equal(a.limits.timeout, 20000);
    assert.equal(a.limits.memory, 128);
    const nocode = await ow.actions.get({ name: 'hello-py', code: false });
    assert.equal(nocode.exec.code, undefined);
    const web = await ow.actions.get('web');
    assert.ok(web.annotations.some((x) => x.key === 'web-export' && x.value === true));
    await rejects(ow.actions.get('nope'), 404, 'get of a missing action');
  });

  await step('list with limit and skip', async () => {
    assert.deepEqual(await names(), ['fails', 'hello-js', 'hello-py', 'slow', 'web']);
    const page = await ow.actions.list({ limit: 2, skip: 1 });
    assert.deepEqual(page.map((a) => a.name), ['hello-js', 'hello-py']);
    assert.equal(page[0].exec.code, undefined);
  });

  await step('blocking invoke: the whole activation, params over defaults, no __ow_ fields', async () => {
    const act = await ow.actions.invoke({ name: 'hello-py', blocking: true, params: { name: 'Ada' } });
    assert.match(act.activationId, /^[0-9a-f]{32}$/);
    assert.equal(act.name, 'hello-py');
    assert.equal(act.namespace, 'admin');
    assert.equal(act.response.status, 'success');
    assert.equal(act.response.success, true);
    assert.deepEqual(act.response.result, { greeting: 'Hello Ada', keys: ['greeting', 'name'] });
    assert.ok(act.logs.some((l) => / stdout: python says hello to Ada$/.test(l)), JSON.stringify(act.logs));
    assert.ok(act.annotations.some((a) => a.key === 'path' && a.value === 'admin/hello-py'));
    assert.ok(act.annotations.some((a) => a.key === 'kind' && a.value === 'python:3'));
    assert.ok(act.end >= act.start && act.duration >= 0);
    results.blocking = act.activationId;
    const over = await ow.actions.invoke({ name: 'hello-py', blocking: true, result: true, params: { name: 'Bo', greeting: 'Yo' } });
    assert.deepEqual(over, { greeting: 'Yo Bo', keys: ['greeting', 'name'] });
    // Two parameters would look like a Lambda handler; the action is OpenWhisk's whatever its arity.
    await ow.actions.create({ name: 'two-args', kind: 'python:3', action: 'def run(args, extra=None):\n    return {"got": args, "extra": extra}\n', exec: { main: 'run' } });
    assert.deepEqual(await ow.actions.invoke({ name: 'two-args', blocking: true, result: true, params: { a: 1 } }), { got: { a: 1 }, extra: null });
    await ow.actions.delete('two-args');
    const js = await ow.actions.invoke({ name: 'hello-js', blocking: true, result: true, params: { name: 'Cy' } });
    assert.deepEqual(js, { greeting: 'Hello Cy', keys: ['name'] });
  });

  await step('a sequence of actions', async () => {
    await ow.actions.create({ name: 'shout', action: 'function main(p) { return { shout: p.greeting.toUpperCase() } }' });
    const seq = await ow.actions.create({ name: 'seq', action: { exec: { kind: 'sequence', components: ['/_/hello-js', '/admin/shout'] } } });
    assert.deepEqual(seq.exec.components, ['/admin/hello-js', '/admin/shout']);
    assert.deepEqual(await ow.actions.invoke({ name: 'seq', blocking: true, result: true, params: { name: 'Ida' } }), { shout: 'HELLO IDA' });
    await ow.actions.delete('seq');
    await ow.actions.delete('shout');
  });

  await step('non-blocking invoke: 202 and the activation later', async () => {
    const r = await ow.actions.invoke({ name: 'hello-js', params: { name: 'Di' } });
    assert.match(r.activationId, /^[0-9a-f]{32}$/);
    assert.deepEqual(Object.keys(r), ['activationId']);
    let act;
    for (let i = 0; i < 300 && !act; i++) {
      try {
        act = await ow.activations.get(r.activationId);
      } catch (e) {
        assert.equal(e.statusCode, 404, e.message);
        await new Promise((res) => setTimeout(res, 100));
      }
    }
    assert.ok(act, 'the async activation never finished');
    assert.deepEqual(act.response.result, { greeting: 'Hello Di', keys: ['name'] });
    results.async = r.activationId;
    const logs = await ow.activations.logs(r.activationId);
    assert.ok(logs.logs.some((l) => /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z stdout: node says hello to Di$/.test(l)), JSON.stringify(logs));
    const res = await ow.activations.result(r.activationId);
    assert.equal(res.success, true);
    assert.equal(res.result.greeting, 'Hello Di');
  });

  await step('a blocking call that outlasts ?timeout= turns into 202', async () => {
    const r = await raw('POST', '/api/v1/namespaces/_/actions/slow?blocking=true&timeout=500', { body: '{"sleep": 2}', headers: { 'content-type': 'application/json' } });
    assert.equal(r.status, 202, r.buf.toString());
    assert.match(r.json.activationId, /^[0-9a-f]{32}$/);
    assert.equal(r.headers.get('x-openwhisk-activation-id'), r.json.activationId);
    results.slow = r.json.activationId;
  });

  await step('activations list', async () => {
    const list = await ow.activations.list({ name: 'hello-py', limit: 10 });
    assert.ok(list.length >= 2, JSON.stringify(list));
    assert.ok(list.every((a) => a.name === 'hello-py'));
    assert.ok(list.some((a) => a.activationId === results.blocking));
    const one = await ow.activations.list({ name: 'hello-py', limit: 1, skip: 1 });
    assert.equal(one.length, 1);
    assert.equal(one[0].activationId, list[1].activationId);
    const docs = await ow.activations.list({ name: 'hello-py', limit: 1, docs: true });
    assert.ok(docs[0].response && Array.isArray(docs[0].logs));
    const later = await ow.activations.list({ name: 'hello-py', since: Date.now() + 60000 });
    assert.deepEqual(later, []);
    const get = await ow.activations.get(results.blocking);
    assert.equal(get.response.result.greeting, 'Hello Ada');
    await rejects(ow.activations.get('0123456789abcdef0123456789abcdef'), 404, 'unknown activation');
  });

  await step('application and developer errors: 502 with the activation', async () => {
    const e = await rejects(ow.actions.invoke({ name: 'fails', blocking: true }), 502, 'returns {error}');
    assert.equal(e.error.response.status, 'application error');
    assert.deepEqual(e.error.response.result, { error: 'nope' });
    const e2 = await rejects(ow.actions.invoke({ name: 'fails', blocking: true, params: { raise: 'x' } }), 502, 'raises');
    assert.equal(e2.error.response.success, false);
    assert.match(e2.error.response.result.error, /boom x/);
  });

  await step('update with overwrite', async () => {
    const a = await ow.actions.update({ name: 'hello-py', action: PY2, kind: 'python:3' });
    assert.equal(a.version, '0.0.2');
    const r = await ow.actions.invoke({ name: 'hello-py', blocking: true, result: true, params: { z: 1 } });
    assert.deepEqual(r, { version: 2, keys: ['greeting', 'z'] });
    // Parameters only: the code stays.
    const b = await ow.actions.update({ name: 'hello-py', params: { extra: true } });
    assert.equal(b.version, '0.0.3');
    const r2 = await ow.actions.invoke({ name: 'hello-py', blocking: true, result: true });
    assert.deepEqual(r2, { version: 2, keys: ['extra'] });
  });

  await step('web actions over plain HTTP, without a key', async () => {
    const r = await raw('POST', '/api/v1/web/_/default/web.http/some/path?name=Eve', {
      auth: null,
      body: 'plain text',
      headers: { 'content-type': 'text/plain', 'x-test': 'yes' },
    });
    assert.equal(r.status, 201, r.buf.toString());
    assert.equal(r.headers.get('x-seen-method'), 'post');
    assert.match(r.headers.get('x-openwhisk-activation-id'), /^[0-9a-f]{32}$/);
    assert.deepEqual(r.json, { method: 'post', path: '/some/path', name: 'Eve', auth: false, body: 'plain text', greeting: 'hey', h: 'yes' });
    const j = await raw('GET', '/api/v1/web/admin/default/web.json?name=Fay', { auth: null });
    assert.equal(j.status, 200, j.buf.toString());
    assert.equal(j.json.statusCode, 201);
    assert.equal(j.json.body.name, 'Fay');
    const png = await raw('GET', '/api/v1/web/_/default/web/png', { auth: null });
    assert.equal(png.status, 200);
    assert.equal(png.headers.get('content-type'), 'image/png');
    assert.deepEqual([...png.buf], [137, 80, 78, 71, 0, 255]);
    assert.equal(j.headers.get('access-control-allow-origin'), '*');
    const pre = await raw('OPTIONS', '/api/v1/web/_/default/web.json', { auth: null, headers: { 'access-control-request-headers': 'x-custom' } });
    assert.equal(pre.status, 200);
    assert.equal(pre.headers.get('access-control-allow-headers'), 'x-custom');
    assert.equal(pre.headers.get('x-openwhisk-activation-id'), null, 'a preflight runs nothing');
    // The key sent along never reaches the action.
    const withKey = await raw('POST', '/api/v1/web/_/default/web.http', { body: '{"name":"Gus"}', headers: { 'content-type': 'application/json' } });
    assert.equal(withKey.json.auth, false);
    assert.equal(withKey.json.name, 'Gus');
  });

  await step('delete', async () => {
    const d = await ow.actions.delete('hello-js');
    assert.equal(d.name, 'hello-js');
    await rejects(ow.actions.get('hello-js'), 404, 'get after delete');
    await rejects(ow.actions.delete('hello-js'), 404, 'second delete');
  });

  await step("attacker's side: each refused in OpenWhisk's shape, nothing changed", async () => {
    const before = await names();
    await rejects(wrong.actions.list(), 401, 'wrong key');
    await rejects(wrong.actions.create({ name: 'evil', action: PY, kind: 'python:3' }), 401, 'create with a wrong key');
    owError(await raw('GET', '/api/v1/namespaces/_/actions', { auth: null }), 401, 'no auth');
    owError(await raw('PUT', '/api/v1/namespaces/_/actions/evil', { auth: null, body: JSON.stringify({ exec: { kind: 'python:3', code: PY } }) }), 401, 'create without auth');
    owError(await raw('POST', '/api/v1/namespaces/_/actions/hello-py?blocking=true', { auth: null }), 401, 'invoke without auth');
    owError(await raw('GET', '/api/v1/namespaces/someone-else/actions'), 403, 'another namespace');
    owError(await raw('GET', '/api/v1/web/_/default/hello-py.json', { auth: null }), 404, 'anonymous call of a non-web action');
    owError(await raw('GET', '/api/v1/web/_/default/hello-py.json'), 404, 'non-web action with the key');
    assert.match(owError(await raw('PUT', '/api/v1/namespaces/_/actions/evil', { body: '{"exec": {"kind": "python:3", "code": ' }), 400, 'malformed JSON'), /malformed/);
    assert.match(owError(await raw('PUT', '/api/v1/namespaces/_/actions/evil', { body: JSON.stringify({ exec: { kind: 'cobol:85', code: 'x' } }) }), 400, 'unknown kind'), /cobol:85/);
    assert.match(owError(await raw('PUT', '/api/v1/namespaces/_/actions/evil', { body: JSON.stringify({ exec: { kind: 'python:3' } }) }), 400, 'no code'), /exec.code/);
    assert.match(owError(await raw('PUT', '/api/v1/namespaces/_/actions/evil', { body: JSON.stringify({ exec: { kind: 'python:3', code: 'UEsDBA==', binary: true } }) }), 400, 'a broken zip'), /zip/);
    assert.match(owError(await raw('PUT', '/api/v1/namespaces/_/actions/evil', { body: JSON.stringify({ exec: { kind: 'python:3', code: PY }, parameters: [{ key: 'x', value: null }] }) }), 400, 'a null parameter'), /`x`/);
    assert.match(owError(await raw('PUT', '/api/v1/namespaces/_/actions/evil', { body: JSON.stringify({ exec: { kind: 'blackbox', image: 'x/y' } }) }), 400, 'blackbox'), /blackbox/);
    assert.match(owError(await raw('PUT', '/api/v1/namespaces/_/actions/evil', { body: JSON.stringify({ exec: { kind: 'nodejs:20', code: 'x', main: 'a;process.exit()' } }) }), 400, 'bad main'), /exec.main/);
    assert.match(owError(await raw('PUT', '/api/v1/namespaces/_/actions/Evil..', { body: JSON.stringify({ exec: { kind: 'python:3', code: PY } }) }), 400, 'bad name'), /Evil/);
    assert.match(owError(await raw('PUT', '/api/v1/namespaces/_/actions/evil', { body: JSON.stringify({ exec: { kind: 'python:3', code: PY }, limits: { timeout: 10 } }) }), 400, 'bad limit'), /limits.timeout/);
    owError(await raw('PUT', '/api/v1/namespaces/_/actions/pkg/evil', { body: JSON.stringify({ exec: { kind: 'python:3', code: PY } }) }), 400, 'a package');
    owError(await raw('POST', '/api/v1/namespaces/_/actions/hello-py?blocking=true', { body: '[1,2]' }), 400, 'params not an object');
    owError(await raw('POST', '/api/v1/namespaces/_/actions/hello-py?blocking=true', { body: 'x'.repeat(7 << 20) }), 413, 'oversized invoke');
    owError(await raw('POST', '/api/v1/namespaces/_/actions/hello-py?blocking=maybe'), 400, 'bad flag');
    owError(await raw('PUT', '/api/v1/namespaces/_/packages/p', { body: '{}' }), 501, 'packages');
    assert.deepEqual(await ow.triggers.list(), []);
    owError(await raw('GET', '/api/v1/nothing/here'), 404, 'unknown path');
    assert.deepEqual(await names(), before);
    await rejects(ow.actions.get('evil'), 404, 'nothing named evil');
  });

  await step('zip actions (python __main__.py, node package.json)', async () => {
    const py = await ow.actions.create({ name: 'zip-py', action: fs.readFileSync(process.env.OW_ZIP_PY), kind: 'python:3' });
    assert.equal(py.exec.binary, true);
    assert.deepEqual(await ow.actions.invoke({ name: 'zip-py', blocking: true, result: true, params: { n: 2 } }), { doubled: 4, helper: 'from helper.py' });
    await ow.actions.create({ name: 'zip-js', action: fs.readFileSync(process.env.OW_ZIP_NODE), kind: 'nodejs:20', exec: { main: 'entry' } });
    assert.deepEqual(await ow.actions.invoke({ name: 'zip-js', blocking: true, result: true, params: { n: 3 } }), { tripled: 9 });
    // A zip with `..`: refused, nothing deployed.
    const before = await names();
    const message = owError(await raw('PUT', '/api/v1/namespaces/_/actions/evil', { body: JSON.stringify({ exec: { kind: 'python:3', code: fs.readFileSync(process.env.OW_ZIP_EVIL).toString('base64') } }) }), 400, 'zip with ..');
    assert.match(message, /\.\./);
    const bomb = owError(await raw('PUT', '/api/v1/namespaces/_/actions/evil', { body: JSON.stringify({ exec: { kind: 'python:3', code: fs.readFileSync(process.env.OW_ZIP_BOMB).toString('base64') } }) }), 400, 'zip bomb');
    assert.match(bomb, /zeros\.bin/);
    assert.deepEqual(await names(), before);
  });


  await step('triggers and rules: fire runs the rule\'s action with merged parameters', async () => {
    await ow.actions.create({ name: 'echo', kind: 'python:3', action: ECHO, params: { a: 'action', b: 'action', c: 'action' } });
    const t = await ow.triggers.create({ name: 'tr', trigger: { parameters: [{ key: 'b', value: 'trigger' }, { key: 'c', value: 'trigger' }] } });
    assert.equal(t.name, 'tr');
    assert.deepEqual(t.parameters, [{ key: 'b', value: 'trigger' }, { key: 'c', value: 'trigger' }]);
    await rejects(ow.triggers.create({ name: 'tr' }), 409, 'second trigger create');
    // No rule yet: 204, nothing runs.
    const idle = await raw('POST', '/api/v1/namespaces/_/triggers/tr', { body: '{"c": "payload"}' });
    assert.equal(idle.status, 204, idle.buf.toString());
    const rule = await ow.rules.create({ name: 'rl', trigger: 'tr', action: 'echo' });
    assert.equal(rule.status, 'active');
    assert.deepEqual(rule.trigger, { name: 'tr', path: 'admin' });
    assert.deepEqual(rule.action, { name: 'echo', path: 'admin' });
    await rejects(ow.rules.create({ name: 'rl', trigger: 'tr', action: 'echo' }), 409, 'second rule create');
    assert.deepEqual((await ow.rules.list()).map((r) => r.name), ['rl']);
    assert.deepEqual((await ow.triggers.list()).map((x) => x.name), ['tr']);
    const tg = await ow.triggers.get('tr');
    assert.deepEqual(tg.rules, { 'admin/rl': { action: { name: 'echo', path: 'admin' }, status: 'active' } });
    const fired = await ow.triggers.invoke({ name: 'tr', params: { c: 'payload' } });
    assert.match(fired.activationId, HEX32);
    const act = await eventually('the rule\'s activation', 30000, async () => (await runs('echo')).find((a) => a.cause === fired.activationId));
    // Defaults < trigger parameters < the event's.
    assert.deepEqual(act.response.result, { args: { a: 'action', b: 'trigger', c: 'payload' } });
    results.fired = act.activationId;
    results.trigger_activation = fired.activationId;
  });

  await step('a disabled rule runs nothing; enabled again it does', async () => {
    await ow.rules.disable({ name: 'rl' });
    assert.equal((await ow.rules.get('rl')).status, 'inactive');
    const before = (await runs('echo')).length;
    const r = await raw('POST', '/api/v1/namespaces/_/triggers/tr', { body: '{}' });
    assert.equal(r.status, 204, r.buf.toString());
    await sleep(1500);
    assert.equal((await runs('echo')).length, before, 'a disabled rule ran its action');
    await ow.rules.enable({ name: 'rl' });
    assert.equal((await ow.rules.get('rl')).status, 'active');
    const fired = await ow.triggers.invoke({ name: 'tr' });
    await eventually('the re-enabled rule\'s activation', 30000, async () => (await runs('echo')).some((a) => a.cause === fired.activationId));
  });

  await step('delete rules and triggers', async () => {
    const d = await ow.rules.delete({ name: 'rl' });
    assert.equal(d.name, 'rl');
    await rejects(ow.rules.get('rl'), 404, 'rule after delete');
    await rejects(ow.rules.delete('rl'), 404, 'second rule delete');
    const r = await raw('POST', '/api/v1/namespaces/_/triggers/tr', { body: '{}' });
    assert.equal(r.status, 204, 'a trigger without rules');
    assert.equal((await ow.triggers.delete({ name: 'tr' })).name, 'tr');
    await rejects(ow.triggers.get('tr'), 404, 'trigger after delete');
    await rejects(ow.triggers.invoke({ name: 'tr' }), 404, 'fire of a deleted trigger');
    assert.deepEqual(await ow.triggers.list(), []);
  });

  await step('alarm feed: flick\'s cron fires the trigger every second', async () => {
    await ow.triggers.create({ name: 'tick', trigger: { annotations: [{ key: 'feed', value: '/whisk.system/alarms/alarm' }] } });
    await ow.rules.create({ name: 'on-tick', trigger: 'tick', action: 'echo' });
    const created = await ow.feeds.create({ name: '/whisk.system/alarms/alarm', trigger: 'tick', params: { cron: '* * * * * *', trigger_payload: { c: 'alarm' } } });
    assert.equal(created.response.success, true);
    const read = await ow.feeds.get({ name: '/whisk.system/alarms/alarm', trigger: 'tick' });
    assert.equal(read.response.result.config.cron, '* * * * * *');
    assert.deepEqual(read.response.result.config.trigger_payload, { c: 'alarm' });
    assert.equal(JSON.stringify(read).includes(KEY), false, 'the key is never echoed');
    const ticks = async () => (await runs('echo')).filter((a) => a.response.result.args && a.response.result.args.c === 'alarm');
    const seen = await eventually('two alarm ticks', 30000, async () => ((await ticks()).length >= 2 ? await ticks() : null));
    const starts = seen.map((a) => a.start).sort();
    assert.ok(starts[starts.length - 1] - starts[0] >= 500, `ticks a second apart: ${starts}`);
    await ow.feeds.delete({ name: '/whisk.system/alarms/alarm', trigger: 'tick' });
    await sleep(2000); // a tick queued just before the delete may still run
    const settled = (await ticks()).length;
    await sleep(2500);
    assert.equal((await ticks()).length, settled, 'the alarm fired after its feed was deleted');
    await ow.rules.delete('on-tick');
    await ow.triggers.delete('tick');
    // One left running for the Rust side: it must survive a restart.
    await ow.triggers.create({ name: 'kept' });
    await ow.rules.create({ name: 'kept-rule', trigger: 'kept', action: 'echo' });
    await ow.feeds.create({ name: '/whisk.system/alarms/interval', trigger: 'kept', params: { minutes: 60 } });
    await ow.feeds.create({ name: '/whisk.system/alarms/alarm', trigger: 'kept', params: { cron: '*/2 * * * * *', trigger_payload: { c: 'kept' } } });
  });

  await step("triggers, rules and feeds from the attacker's side", async () => {
    await ow.triggers.create({ name: 'safe' });
    const before = { triggers: (await ow.triggers.list()).map((t) => t.name), rules: (await ow.rules.list()).map((r) => r.name) };
    assert.match(owError(await raw('PUT', '/api/v1/namespaces/_/rules/bad', { body: JSON.stringify({ trigger: '/_/safe', action: '/_/missing' }) }), 404, 'rule to a missing action'), /missing/);
    assert.match(owError(await raw('PUT', '/api/v1/namespaces/_/rules/bad', { body: JSON.stringify({ trigger: '/_/nope', action: '/_/echo' }) }), 404, 'rule on a missing trigger'), /nope/);
    assert.match(owError(await raw('PUT', '/api/v1/namespaces/_/rules/bad', { body: JSON.stringify({ action: '/_/echo' }) }), 400, 'rule without a trigger'), /trigger/);
    assert.match(owError(await raw('PUT', '/api/v1/namespaces/_/rules/bad', { body: JSON.stringify({ trigger: '/_/safe', action: '/_/echo', status: 'maybe' }) }), 400, 'bad status'), /status/);
    owError(await raw('PUT', '/api/v1/namespaces/_/rules/bad', { body: JSON.stringify({ trigger: '/someone-else/safe', action: '/_/echo' }) }), 403, 'a trigger of another namespace');
    assert.match(owError(await raw('POST', '/api/v1/namespaces/_/rules/nope', { body: '{"status":"active"}' }), 404, 'enable a missing rule'), /nope/);
    assert.match(owError(await raw('PUT', '/api/v1/namespaces/_/triggers/bad%20name!', { body: '{}' }), 400, 'bad trigger name'), /trigger name/);
    assert.match(owError(await raw('PUT', '/api/v1/namespaces/_/triggers/x'.padEnd(200, 'x'), { body: '{}' }), 400, 'long trigger name'), /64/);
    owError(await raw('PUT', '/api/v1/namespaces/_/triggers/pkg/t', { body: '{}' }), 400, 'a trigger in a package');
    assert.match(owError(await raw('PUT', '/api/v1/namespaces/_/triggers/t2', { body: '{"parameters": 5}' }), 400, 'malformed parameters'), /malformed/);
    owError(await raw('POST', '/api/v1/namespaces/_/triggers/safe', { body: '[1]' }), 400, 'an event that is not an object');
    owError(await raw('POST', '/api/v1/namespaces/_/triggers/safe', { body: 'x'.repeat(7 << 20) }), 413, 'a huge event');
    owError(await raw('POST', '/api/v1/namespaces/_/triggers/safe', { auth: null, body: '{}' }), 401, 'fire without auth');
    owError(await raw('GET', '/api/v1/namespaces/_/triggers', { auth: null }), 401, 'list triggers without auth');
    owError(await raw('PUT', '/api/v1/namespaces/_/rules/bad', { auth: null, body: '{}' }), 401, 'rule without auth');
    await rejects(wrong.triggers.invoke({ name: 'safe' }), 401, 'fire with a wrong key');
    await rejects(wrong.feeds.create({ name: '/whisk.system/alarms/alarm', trigger: 'safe', params: { cron: '* * * * * *' } }), 401, 'feed with a wrong key');
    // Feeds: refused parameters are the feed action's application error (502), unknown feeds 404.
    const badCron = await rejects(ow.feeds.create({ name: '/whisk.system/alarms/alarm', trigger: 'safe', params: { cron: 'every day' } }), 502, 'bad cron');
    assert.match(badCron.error.response.result.error, /cron/);
    const noCron = await rejects(ow.feeds.create({ name: '/whisk.system/alarms/alarm', trigger: 'safe' }), 502, 'no cron');
    assert.match(noCron.error.response.result.error, /cron/);
    const noTrigger = await rejects(ow.feeds.create({ name: '/whisk.system/alarms/alarm', trigger: 'ghost', params: { cron: '* * * * *' } }), 502, 'feed of a missing trigger');
    assert.match(noTrigger.error.response.result.error, /ghost/);
    assert.match((await rejects(ow.feeds.create({ name: '/whisk.system/messaging/kafkaFeed', trigger: 'safe' }), 404, 'an unknown feed')).message, /alarms\/alarm/);
    await rejects(ow.feeds.create({ name: '/whisk.system/alarms/once', trigger: 'safe', params: { date: '2001-01-01T00:00:00Z' } }), 502, 'a date in the past');
    assert.deepEqual({ triggers: (await ow.triggers.list()).map((t) => t.name), rules: (await ow.rules.list()).map((r) => r.name) }, before);
    assert.equal((await ow.triggers.get('safe')).rules, undefined);
    await ow.triggers.delete('safe');
  });

  console.log('RESULT ' + JSON.stringify(results));
}

main().catch((e) => {
  console.error('FAILED:', e && e.stack ? e.stack : e);
  if (e && e.error) console.error('body:', JSON.stringify(e.error));
  process.exit(1);
});
