// Drives flick's dashboard in Debian's headless Chromium (playwright-core,
// no browser download) as a person would: refused without a session, a
// wrong key shows an error, log in, find the function, invoke it from the
// panel, open its activation and logs, filter the activations, roll back a
// revision, open the charts and the usage bill, forge requests, log out.
// A screenshot of each page goes to $ARTIFACTS.
//
// Run by crates/cli/tests/ui.rs against a real `flick up`:
//   FLICK_URL=http://127.0.0.1:UI_PORT FLICK_MAIN_URL=http://127.0.0.1:PORT \
//   FLICK_KEY=... FUNCTION=name EVIL=name LOG_LINE=... \
//   ARTIFACTS=target/ci-artifacts/ui node tests/ui/dashboard.js
// Prints one JSON line of findings; exits non-zero on the first failure.

'use strict';
const fs = require('fs');
const path = require('path');
const { chromium } = require('playwright-core');

const base = need('FLICK_URL');
// Where functions' own pages are served (the main listener).
const mainBase = need('FLICK_MAIN_URL');
const evil = need('EVIL');
const key = need('FLICK_KEY');
const fn = need('FUNCTION');
const logLine = need('LOG_LINE');
const secretValue = need('SECRET_VALUE');
const artifacts = need('ARTIFACTS');
const browserPath = process.env.CHROMIUM || '/usr/bin/chromium';

function need(name) {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
}

function check(cond, what) {
  if (!cond) throw new Error('FAILED: ' + what);
}

const findings = {};

async function main() {
  fs.mkdirSync(artifacts, { recursive: true });
  const browser = await chromium.launch({ executablePath: browserPath, headless: true, args: ['--no-sandbox'] });
  try {
    const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    const page = await context.newPage();
    const problems = [];
    page.on('pageerror', (e) => problems.push('page error: ' + e.message));
    // Answers >= 400 the test expects: the forged requests' 401s, and the
    // stats and usage endpoints of a flick that does not serve them (the
    // pages then say "no data").
    const expected = (r) => r.status() === 401 || (r.status() === 404 && /\/v1\/(stats\/series|usage)\b/.test(r.url()));
    page.on('response', (r) => {
      if (r.status() >= 400 && !expected(r)) problems.push(`${r.status()} for ${r.url()}`);
    });
    page.on('console', (m) => {
      // A failed load is judged by its response above.
      if (m.type() === 'error' && !/^Failed to load resource/.test(m.text())) problems.push('console: ' + m.text());
    });
    const shot = async (name) => {
      await page.screenshot({ path: path.join(artifacts, name + '.png'), fullPage: true });
    };

    // Without a session: the dashboard sends the browser to the login page.
    let resp = await page.goto(base + '/ui');
    check(new URL(page.url()).pathname === '/ui/login', 'no session: /ui leads to /ui/login, got ' + page.url());
    const headers = resp.headers();
    check(/default-src 'self'/.test(headers['content-security-policy'] || ''), 'a CSP: ' + headers['content-security-policy']);
    check(!/unsafe-inline/.test(headers['content-security-policy']), 'no unsafe-inline in the CSP');
    check(headers['x-frame-options'] === 'DENY', 'X-Frame-Options DENY');
    check(headers['x-content-type-options'] === 'nosniff', 'nosniff');
    await shot('01-login');

    // A wrong key: an error on the form, no session.
    await page.fill('input[name=key]', 'not-the-key');
    await Promise.all([page.waitForNavigation(), page.click('button[type=submit]')]);
    check(new URL(page.url()).pathname === '/ui/login', 'a wrong key stays on the login page');
    const err = await page.textContent('.error');
    check(/wrong key/i.test(err || ''), 'a wrong key shows an error, got: ' + err);
    check((await context.cookies()).every((c) => c.name !== 'flick_session'), 'a wrong key gets no session cookie');
    await shot('02-login-wrong-key');

    // The right key.
    await page.fill('input[name=key]', key);
    await Promise.all([page.waitForNavigation(), page.click('button[type=submit]')]);
    check(new URL(page.url()).pathname === '/ui', 'logged in: on /ui, got ' + page.url());
    const cookie = (await context.cookies()).find((c) => c.name === 'flick_session');
    check(cookie && cookie.httpOnly && cookie.sameSite === 'Strict' && cookie.path === '/', 'an HttpOnly, SameSite=Strict session cookie: ' + JSON.stringify(cookie));
    check(await page.evaluate(() => !document.cookie.includes('flick_session')), 'the page script cannot read the cookie');
    const csrf = await page.getAttribute('meta[name=flick-csrf]', 'content');
    check(/^[0-9a-f]{64}$/.test(csrf || ''), 'a CSRF token in the page');

    // The functions list: the function, its runtime and revision.
    const row = page.locator(`#functions tr[data-function="${fn}"]`);
    await row.waitFor();
    const rowText = await row.textContent();
    check(/python3/.test(rowText) && /r2/.test(rowText), 'the list shows runtime and revision: ' + rowText);
    await shot('03-functions');

    // The function's page: revisions, configuration, environment names only.
    await row.locator('a').first().click();
    await page.locator('#revisions tr[data-revision="1"]').waitFor();
    const config = await page.textContent('#config');
    check(/python3/.test(config) && /\/fn\//.test(config), 'the configuration: ' + config);
    check(/GREETING_SECRET/.test(await page.textContent('#env-names')), 'the environment names');
    check(!(await page.content()).includes(secretValue), 'no environment value on the page');
    await shot('04-function');

    // The invoke panel.
    await page.selectOption('#invoke select[name=method]', 'POST');
    await page.fill('#invoke input[name=path]', '/hello/world');
    await page.fill('#invoke textarea[name=headers]', 'Content-Type: application/json\nX-Test: from-the-panel');
    await page.fill('#invoke textarea[name=body]', '{"who": "panel"}');
    await page.click('#invoke button[type=submit]');
    await page.locator('#invoke-status').waitFor();
    const status = await page.textContent('#invoke-status');
    check(/^200/.test(status.trim()), 'the invoke answered 200: ' + status);
    const body = await page.textContent('#invoke-body');
    check(/"rev": 2/.test(body) && /from-the-panel/.test(body) && /panel/.test(body), 'the function got the panel\'s headers and body: ' + body);
    check(!body.includes(csrf) && !body.includes(cookie.value), 'the function never sees the session cookie or CSRF token');
    await page.locator('#invoke-logs').waitFor({ timeout: 10000 });
    check((await page.textContent('#invoke-logs')).includes(logLine), 'the panel shows the call\'s logs');
    check(/exec/.test(await page.textContent('#invoke-timing')), 'the panel shows the timing');
    const activationId = (await page.textContent('#invoke-activation')).trim();
    findings.activation = activationId;
    await shot('05-invoke');

    // Its activation, from the panel's link.
    await page.click('#invoke-activation');
    await page.locator('#activation-logs').waitFor();
    check((await page.textContent('#activation-logs')).includes(logLine), 'the activation page shows the logs');
    check(/success/.test(await page.textContent('#activation')), 'the activation succeeded');
    await shot('06-activation');

    // The activations list with filters.
    await page.goto(`${base}/ui#/activations?function=${fn}&status=success&cause=http`);
    await page.locator(`#activations tr[data-activation="${activationId}"]`).waitFor();
    await page.selectOption('select[name=status]', 'error');
    await page.locator('text=No activations match.').waitFor();
    await page.selectOption('select[name=status]', 'success');
    await page.locator(`#activations tr[data-activation="${activationId}"]`).waitFor();
    await shot('07-activations');

    // Roll back to revision 1 from the function page.
    await page.goto(`${base}/ui#/functions/${fn}`);
    await page.click('button[data-rollback="1"]');
    await page.locator('text=Now serving revision 1.').waitFor();
    await page.locator('#revisions tr[data-revision="1"] >> text=current').waitFor();
    await shot('08-rollback');

    // Charts (host and function) and the usage bill: drawn, or "no data".
    await page.goto(`${base}/ui#/charts`);
    // uPlot draws after the page renders: wait for its canvas, not the box.
    await page.locator('#charts canvas, #charts-empty').first().waitFor();
    findings.charts = (await page.locator('#charts canvas').count()) > 0 ? 'drawn' : 'no data';
    await shot('09-charts-host');
    await page.goto(`${base}/ui#/charts/${fn}`);
    // uPlot draws after the page renders: wait for its canvas, not the box.
    await page.locator('#charts canvas, #charts-empty').first().waitFor();
    findings.function_charts = (await page.locator('#charts canvas').count()) > 0 ? 'drawn' : 'no data';
    await shot('10-charts-function');
    await page.goto(`${base}/ui#/usage`);
    await page.locator('#usage, #usage-empty').first().waitFor();
    findings.usage = (await page.locator('#usage').count()) > 0 ? (await page.textContent('#usage')) : 'no data';
    await shot('11-usage');

    // Forged requests: the cookie rides along, but without the page's
    // token (or with a wrong one) flick refuses them.
    const forged = await page.evaluate(async ({ fn }) => {
      const post = (headers) => fetch(`/v1/functions/${fn}/rollback`, { method: 'POST', headers, body: '{"revision": 2}', credentials: 'same-origin' }).then((r) => r.status);
      return {
        no_header: await post({ 'Content-Type': 'application/json' }),
        wrong_token: await post({ 'Content-Type': 'application/json', 'X-Flick-CSRF': '0'.repeat(64) }),
        get_no_header: await fetch('/v1/functions', { credentials: 'same-origin' }).then((r) => r.status),
      };
    }, { fn });
    check(forged.no_header === 401 && forged.wrong_token === 401 && forged.get_no_header === 401, 'forged requests refused: ' + JSON.stringify(forged));
    findings.forged = forged;

    // A hostile function's page, opened in this logged-in browser on each
    // origin flick serves it from: its script tries to read the dashboard's
    // CSRF token from /ui and to call /v1 with it.
    const evilPage = await context.newPage();
    const titleOf = async (url, waitMs) => {
      await evilPage.goto(url);
      await evilPage.waitForFunction(() => document.title.startsWith('done:'), null, { timeout: waitMs }).catch(() => {});
      return evilPage.title();
    };
    // On the main listener the script runs, but /ui there only points
    // across origins (unreadable) and the session is no key there.
    const onMain = await titleOf(`${mainBase}/fn/${evil}`, 10000);
    check(onMain.startsWith('done:'), 'the function\'s page ran on the main origin: ' + onMain);
    check(!/token:|v1:200/.test(onMain), 'a function\'s page on the main origin got the token or /v1: ' + onMain);
    // On the dashboard's own origin (the invoke panel's /fn) it is
    // sandboxed: no script runs at all.
    const onUi = await titleOf(`${base}/fn/${evil}`, 3000);
    check(onUi === 'untouched', 'a function\'s page ran script on the dashboard\'s origin: ' + onUi);
    findings.evil = { main: onMain, ui: onUi };
    await evilPage.close();

    // Log out: the session ends on the server, not only in this browser.
    await page.goto(`${base}/ui#/functions`);
    await Promise.all([page.waitForNavigation(), page.click('#logout')]);
    check(new URL(page.url()).pathname === '/ui/login', 'logged out: on the login page');
    const replay = await fetch(`${base}/v1/functions`, { headers: { Cookie: `flick_session=${cookie.value}`, 'X-Flick-CSRF': csrf } });
    check(replay.status === 401, 'the old cookie and token are refused after logout: ' + replay.status);
    await page.goto(base + '/ui');
    check(new URL(page.url()).pathname === '/ui/login', 'after logout /ui leads to the login page');

    check(problems.length === 0, 'no script errors or CSP violations: ' + problems.join('; '));
  } finally {
    await browser.close();
  }
  console.log(JSON.stringify(findings));
}

main().catch((e) => {
  console.error(e.stack || String(e));
  process.exit(1);
});
