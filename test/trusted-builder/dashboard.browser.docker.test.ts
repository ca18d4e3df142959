/**
 * The builder's page in a real browser: Debian's chromium driven by playwright-core, logging in
 * with HTTP Basic (`httpCredentials`), against the real builder service (startBuilderService: real
 * git, Docker, a registry with htpasswd, signatures) listening on 127.0.0.1.
 *
 * The builder has done one real promotion — and, because a security team member had submitted an
 * embargoed patch for the project, the private lane built and pushed `private/team/app` too — and
 * refused two hints: one with a bad signature, and one for a project not in the policy whose branch
 * name is markup (`<img/src/onerror=alert(1)>`, a valid git ref). The page must show the promotion
 * with its six steps in order and its digest and lookaside links, both refusals with their reasons,
 * and the audit tail; the hostile branch as text; nothing of the embargo lane (no embargo record, no
 * embargo id, no `private/`, no patch content, no embargo key path); a refusal arriving later without
 * a reload; and no dialog, console error or image. Without credentials: 401 and nothing else.
 *
 * Screenshots go to test-results/screenshots/builder-*.png (their paths are printed).
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as openpgp from 'openpgp';
import type { Browser, BrowserContext, Locator, Page } from 'playwright-core';
import { launchChromium, watchPage, type PageWatch } from '../support/browser.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createDocker } from '#shared/docker/client.js';
import { signHint } from '#shared/hints/hint-auth.js';
import { createLogger } from '#shared/logging.js';
import { makeRequest, openResponse } from '../../trusted-builder/embargo/request.js';
import { startBuilderService, type BuilderService } from '../../trusted-builder/service.js';
import { builderRig } from '../support/builder-rig.js';
import { makeMember, writeTeam, type TestMember } from '../support/embargo.js';
import { createRepo, type TestRepo } from '../support/git-repo.js';
import { startRegistry, type TestRegistry } from '../support/registry.js';

const SHOTS = fileURLToPath(new URL('../../test-results/screenshots/', import.meta.url));
const STATE_DIR = process.env.AIRLOCK_STATE_DIR ?? '/var/lib/airlock';
const BASE = 'airlock/base:busybox';
const HINT_SECRET = 'hint-secret-for-the-builder-page-test';
/** A valid git ref name (no spaces) that is also an HTML injection. */
const HOSTILE_BRANCH = '<img/src/onerror=alert(1)>';
const LOGIN = { username: 'airlock-sre-page', password: `pw-${randomBytes(12).toString('hex')}` };
const TAG = randomBytes(4).toString('hex');
const CANARY = { file: `embargo-canary-${TAG}.txt`, content: `EMBARGO_CANARY_CONTENT_${TAG}`, message: `EMBARGO-CANARY-MESSAGE-${TAG}` };
/** Generous: the machine is noisy; nothing here measures time, it only waits for what must happen. */
const WAIT = { timeout: 60_000 };
/** Two gate jobs, so that the tests step names both. */
const CONFIG = `version: 1
environment: { image: ${BASE} }
jobs:
  lint: { command: [grep, -q, hello, app.txt], pipelines: [gate] }
  unit: { command: [sh, -c, "test -f app.txt && echo unit ok"], needs: [lint], pipelines: [gate] }
publish: { dockerfile: Dockerfile }
`;

describe('the builder page (real browser, real builder service, real Docker and registry)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'airlock-builder-page-'));
  let registry: TestRegistry;
  /** The embargo lane's own registry (the private lane pushes there). */
  let embargoRegistry: TestRegistry;
  let up: TestRepo;
  let builder: BuilderService;
  let url: string;
  let alice: TestMember;
  let browser: Browser;
  let context: BrowserContext;
  let page: Page;
  let commit: string;
  let digest: string;
  let embargoId: string;
  let seen: PageWatch;

  /** A signed hint through the real route; `secret` wrong: refused at the door. */
  const hint = async (project: string, branch: string, sha: string, secret = HINT_SECRET): Promise<number> => {
    const body = Buffer.from(JSON.stringify({ version: 1, project, branch, commit: sha, ciRun: '1' }));
    const r = await builder.app.inject({ method: 'POST', url: '/v1/hints', payload: body, headers: { ...signHint(Buffer.from(secret), body, Math.floor(Date.now() / 1000)), 'content-type': 'application/json' } });
    await builder.promoter.drain();
    return r.statusCode;
  };

  /** An embargoed patch submitted as a member's signed, encrypted request; its id. */
  const submitEmbargo = async (): Promise<string> => {
    const clone = join(dir, 'clone');
    execFileSync('git', ['clone', '-q', up.dir, clone]);
    writeFileSync(join(clone, CANARY.file), `${CANARY.content}\n`);
    const g = (...a: string[]) => execFileSync('git', ['-C', clone, '-c', 'user.name=Sec', '-c', 'user.email=sec@example.invalid', ...a], { encoding: 'utf8' });
    g('add', '-A');
    g('commit', '-q', '-m', CANARY.message);
    const patch = g('format-patch', '--stdout', 'HEAD~1');
    const builderKey = await openpgp.readKey({ armoredKey: builder.embargo!.publicKey });
    const { armored, request } = await makeRequest({ action: 'submit', project: 'demo/app', patch }, { memberKey: alice.privateKey, builderKey });
    const r = await builder.app.inject({ method: 'POST', url: '/v1/embargo', payload: armored, headers: { 'content-type': 'application/pgp-encrypted' } });
    expect(r.statusCode, r.body).toBe(200);
    const answer = (await openResponse(r.body, { memberKey: alice.privateKey, builderKey, nonce: request.nonce })) as { ok: boolean; result?: { id?: string } };
    expect(answer.ok, JSON.stringify(answer)).toBe(true);
    return answer.result!.id!;
  };

  const shot = async (name: string, target: Page | Locator = page): Promise<void> => {
    const path = `${SHOTS}builder-${name}.png`;
    await (target === page ? page.screenshot({ path, fullPage: true }) : (target as Locator).screenshot({ path }));
    console.log(`screenshot: ${path}`);
  };

  beforeAll(async () => {
    mkdirSync(SHOTS, { recursive: true });
    registry = await startRegistry({ auth: true });
    embargoRegistry = await startRegistry({ auth: true, username: 'airlock-builder' });
    up = createRepo({ '.airlock.yaml': CONFIG, Dockerfile: `FROM ${BASE}\nCOPY . /app\n`, 'app.txt': 'hello from the trusted build\n' });
    alice = await makeMember('alice');
    const config = await builderRig({
      dir,
      registry,
      project: { name: 'demo/app', url: up.dir, image: 'team/app' },
      hintSecret: HINT_SECRET,
      baseImage: BASE,
      runnerStateDir: STATE_DIR,
      embargo: { teamDir: writeTeam(join(dir, 'team'), [alice]), registry: embargoRegistry },
      dashboard: LOGIN,
    });
    builder = await startBuilderService(config, { logger: createLogger({ level: process.env.AIRLOCK_TEST_LOG ?? 'silent' }), pushOptions: { retry: { attempts: 3, baseDelayMs: 10, maxDelayMs: 20 } } });
    url = await builder.listen();

    // One real promotion, with an embargoed patch active (so the private lane runs too)…
    embargoId = await submitEmbargo();
    commit = up.tip();
    expect(await hint('demo/app', 'master', commit)).toBe(202);
    const r = builder.promoter.result('demo/app', commit);
    expect(r, JSON.stringify(r)).toMatchObject({ state: 'published' });
    digest = r!.state === 'published' ? r!.digest : '';
    const audit = readFileSync(builder.auditFile, 'utf8');
    expect(audit).toContain(embargoId); // the log has the lane's records: the page must not
    expect(audit).toMatch(/"kind":"embargo","event":"published"/);
    // …and two refused hints: a bad signature, and a project not in the policy on a hostile branch.
    expect(await hint('demo/app', 'master', commit, 'not the hint secret')).toBe(401);
    expect(await hint('demo/other', HOSTILE_BRANCH, 'c'.repeat(40))).toBe(202);
    expect(builder.promoter.result('demo/other', 'c'.repeat(40))).toMatchObject({ state: 'refused', step: 'policy' });

    browser = await launchChromium();
    context = await browser.newContext({ viewport: { width: 1280, height: 900 }, httpCredentials: LOGIN });
    page = await context.newPage();
    seen = watchPage(page);
  }, 180_000);

  afterAll(async () => {
    await browser?.close();
    await builder?.close();
    await registry?.stop();
    await embargoRegistry?.stop();
    up?.dispose();
    const docker = createDocker();
    const images = await docker.listImages({ filters: { reference: ['airlock-trusted/*', 'airlock-trusted-private/*'] } }).catch(() => []);
    await Promise.all(images.map((i) => docker.getImage(i.Id).remove({ force: true }).catch(() => undefined)));
    rmSync(dir, { recursive: true, force: true });
  });

  it('shows the promotion with its steps, the refusals with reasons and the audit tail; hostile text as text; nothing of the embargo lane', async () => {
    const response = await page.goto(`${url}/ui`);
    expect(response!.status()).toBe(200);
    const headers = response!.headers();
    expect(headers).toMatchObject({ 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store', 'x-content-type-options': 'nosniff', 'x-frame-options': 'DENY' });
    const csp = headers['content-security-policy'] ?? '';
    for (const d of ["default-src 'self'", "script-src 'self'", "style-src 'self'", "frame-ancestors 'none'"]) expect(csp).toContain(d);
    expect(csp).not.toContain('unsafe');
    await page.locator('#connection[data-state="live"]').waitFor(WAIT);
    for (const role of ['banner', 'navigation', 'main', 'contentinfo'] as const) expect(await page.getByRole(role).count(), role).toBe(1);
    expect(await page.getByRole('heading', { level: 2 }).allTextContents()).toEqual(['Recent promotions', 'Refusals', 'Audit log']);
    expect(await page.locator('#chain').textContent()).toMatch(/^Audit chain intact · head [0-9a-f]{16}…$/);
    await page.evaluate('window.airlockMarker = 42'); // gone if the page ever reloads

    // 1. The promotion: its six steps in order, each passed, with what the audit log says; digest; links.
    const promotion = page.locator(`li.promotion[data-project="demo/app"][data-commit="${commit}"]`);
    expect(await promotion.getAttribute('data-state')).toBe('published');
    const steps = promotion.locator('li.step');
    expect(await steps.evaluateAll((els) => els.map((e) => `${e.getAttribute('data-step')}:${e.getAttribute('data-outcome')}`))).toEqual([
      'verify:passed',
      'tests:passed',
      'build:passed',
      'leak-check:passed',
      'push:passed',
      'sign:passed',
    ]);
    expect(await steps.locator('.step-name').allTextContents()).toEqual(['verify source', 'tests', 'build image', 'leak check', 'push', 'sign']);
    expect(await steps.nth(0).locator('.badge').textContent()).toBe('✓ passed');
    expect(await steps.nth(0).locator('.detail').textContent()).toBe('on master');
    expect(await steps.nth(1).locator('.detail').textContent()).toBe('lint, unit');
    expect(await steps.nth(4).locator('.detail').textContent()).toBe(`${registry.url}/team/app:${commit}`);
    expect(await promotion.locator('.digest').textContent()).toBe(digest);
    expect(await promotion.locator('.reference').textContent()).toBe(`${registry.url}/team/app:${commit}`);
    const lookaside = `/lookaside/team/app@${digest.replace(':', '=')}`;
    expect(await promotion.locator('a.signature').getAttribute('href')).toBe(`${lookaside}/signature-1`);
    expect(await promotion.locator('a.provenance').getAttribute('href')).toBe(`${lookaside}/provenance.json`);
    expect(await promotion.locator('a.provenance-signature').getAttribute('href')).toBe(`${lookaside}/provenance.json.asc`);
    // The links work (the public lookaside), fetched by the page itself under its policy.
    const provenance = (await page.evaluate(`fetch(${JSON.stringify(`${lookaside}/provenance.json`)}).then(async (r) => ({ status: r.status, text: await r.text() }))`)) as { status: number; text: string };
    expect(provenance.status).toBe(200);
    expect(provenance.text).toContain(digest.slice('sha256:'.length));
    await shot('promotions', page.locator('#promotions'));

    // 2. The refused promotion and the refusals: reasons as written, the hostile branch as text.
    const other = page.locator('li.promotion[data-project="demo/other"]');
    expect(await other.getAttribute('data-state')).toBe('refused');
    expect(await other.locator('.branch').textContent()).toBe(HOSTILE_BRANCH);
    expect(await other.locator('.reason').textContent()).toBe('Stopped at policy: project demo/other is not in the promotion policy');
    expect(await other.locator('li.step').evaluateAll((els) => els.map((e) => e.getAttribute('data-outcome')))).toEqual(['refused', 'skipped', 'skipped', 'skipped', 'skipped', 'skipped']);
    const refusals = page.locator('#refusal-list tr.refusal');
    expect(await refusals.evaluateAll((rows) => rows.map((r) => r.getAttribute('data-kind')))).toEqual(['verify-refused', 'hint-refused']);
    expect(await refusals.nth(0).locator('.reason-text').textContent()).toBe('project demo/other is not in the promotion policy');
    expect(await refusals.nth(0).locator('.refusal-step').textContent()).toBe('policy');
    expect(await refusals.nth(1).locator('.reason-text').textContent()).toBe('bad-signature');
    expect(await refusals.nth(1).locator('.from').textContent()).toBe('127.0.0.1');
    await shot('refusals', page.locator('#refusals'));

    // 3. The audit tail, newest first, fields as text.
    const records = page.locator('#audit-list tr.record');
    const kinds = await records.evaluateAll((rows) => rows.map((r) => r.getAttribute('data-kind') ?? ''));
    expect(kinds[0]).toBe('verify-refused');
    expect(kinds).toEqual(expect.arrayContaining(['secret-read', 'hint-accepted', 'verify-passed', 'tests-passed', 'image-built', 'leak-check', 'pushed', 'signed', 'hint-refused', 'verify-refused']));
    const hostile = records.filter({ has: page.locator('[data-field="branch"]') }).filter({ has: page.locator('dd', { hasText: 'demo/other' }) });
    expect(await hostile.locator('[data-field="branch"] dd').textContent()).toBe(HOSTILE_BRANCH);
    const signed = records.and(page.locator('[data-kind="signed"]'));
    expect(await signed.locator('[data-field="digest"] dd').textContent()).toBe(digest);
    await shot('audit', page.locator('#audit'));

    // 4. Nothing of the embargo lane, anywhere on the page or in what it fetched.
    expect(kinds).not.toContain('embargo');
    const text = (await page.locator('main').textContent()) ?? ''; // the footer names what is never shown
    const summary = (await page.evaluate(`fetch('/v1/ui/summary').then((r) => r.text())`)) as string;
    for (const hidden of [embargoId, 'private/', 'private-lookaside', 'airlock/embargo-key', 'airlock/embargo-registry', embargoRegistry.url, 'lane-open', 'alice', CANARY.file, CANARY.content, CANARY.message, LOGIN.password]) {
      expect(text, hidden).not.toContain(hidden);
      expect(summary, hidden).not.toContain(hidden);
    }
    // The one secret-read of the build's steps would be the private lane's: the public lane has no grants here.
    expect(await records.and(page.locator('[data-kind="secret-read"]')).locator('[data-field="purpose"] dd').allTextContents()).toEqual(['builder', 'builder', 'builder', 'builder']);

    // 5. A refusal arriving later appears without a reload (the page polls).
    expect(await hint('demo/app', 'master', commit, 'another wrong secret')).toBe(401);
    await page.locator('#refusal-list tr.refusal').nth(2).waitFor(WAIT);
    expect(await refusals.evaluateAll((rows) => rows.map((r) => r.getAttribute('data-kind')))).toEqual(['hint-refused', 'verify-refused', 'hint-refused']);
    await shot('page');

    // Nothing of the data ran, and the page stayed put.
    expect(seen.loads).toBe(1);
    expect(await page.evaluate('window.airlockMarker')).toBe(42);
    expect(seen.dialogs).toEqual([]);
    expect(seen.errors).toEqual([]);
    expect(await page.locator('img, script:not([src])').count()).toBe(0);
    expect(seen.requests.filter((p) => /\/(x|src)$/.test(p))).toEqual([]);
    expect(new Set(seen.requests.map((p) => p.split('/')[1]))).toEqual(new Set(['ui', 'v1', 'lookaside']));
    // Every answer the page got was a success, bar the browser's own first unauthenticated try.
    expect(seen.responses.map((x) => `${x.status} ${x.path}`).filter((s) => !/^(2\d\d|401 \/ui)\b/.test(s))).toEqual([]);
  });

  it('works opened with the login in its address (http://user:password@host/ui): its requests go to the origin, without the credentials', async () => {
    const bare = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    try {
      const p = await bare.newPage();
      const w = watchPage(p);
      const withLogin = new URL('/ui', url);
      withLogin.username = LOGIN.username;
      withLogin.password = LOGIN.password;
      const response = await p.goto(withLogin.href);
      expect(response!.status()).toBe(200);
      // Live, or the error it shows when its request was refused ("Cannot reach the builder (…)").
      const connection = p.locator('#connection');
      await p.locator('#connection[data-state="live"], #connection[data-state="error"]').waitFor(WAIT);
      expect(await connection.getAttribute('data-state'), (await connection.textContent()) ?? '').toBe('live');
      expect(await p.locator('#promotion-list').textContent()).toContain(commit);
      expect(w.errors).toEqual([]);
      expect(w.responses.filter((x) => x.path === '/v1/ui/summary').map((x) => [x.status, new URL(x.url).username])).toContainEqual([200, '']);
    } finally {
      await bare.close();
    }
  });

  it('serves its Prometheus metrics behind the same login, counting the promotion it published', async () => {
    expect((await fetch(`${url}/metrics`)).status).toBe(401);
    const r = await fetch(`${url}/metrics`, { headers: { authorization: `Basic ${Buffer.from(`${LOGIN.username}:${LOGIN.password}`).toString('base64')}` } });
    expect(r.status).toBe(200);
    const body = await r.text();
    expect(body).toMatch(/^airlock_builder_promotions_total\{outcome="published"\} 1$/m);
    expect(body).toMatch(/^airlock_builder_promotion_duration_seconds_count\{outcome="published"\} 1$/m);
    expect(body).toMatch(/^airlock_builder_promotions_queued 0$/m);
    const last = /^airlock_builder_last_publish_timestamp_seconds (\S+)$/m.exec(body);
    expect(Number(last?.[1])).toBeGreaterThan(Date.parse('2020-01-01') / 1000);
    expect(body).toMatch(/^airlock_builder_start_time_seconds /m);
    expect(body).not.toMatch(/process_|nodejs_/);
  });

  it('refuses a browser with wrong credentials or none: 401 with a Basic challenge, and nothing of the page', async () => {
    const wrong = await browser.newContext({ httpCredentials: { username: LOGIN.username, password: 'not the password' } });
    const anonymous = await browser.newContext();
    try {
      // Wrong credentials: the browser shows the 401 answer, which holds nothing of the page.
      const refused = await wrong.newPage();
      const answer = await refused.goto(`${url}/ui`);
      expect(answer!.status()).toBe(401);
      expect(answer!.headers()).toMatchObject({ 'www-authenticate': 'Basic realm="airlock trusted builder", charset="UTF-8"', 'cache-control': 'no-store', 'x-content-type-options': 'nosniff' });
      const body = (await refused.locator('body').textContent()) ?? '';
      expect(JSON.parse(body)).toEqual({ code: 'AIRLOCK_E_UNAUTHORIZED', message: 'the builder page needs its user name and password', statusCode: 401 });
      const path = `${SHOTS}builder-wrong-login.png`;
      await refused.screenshot({ path });
      console.log(`screenshot: ${path}`);
      // No credentials to answer the challenge with: headless chromium gives up, no page at all.
      await expect((await anonymous.newPage()).goto(`${url}/ui`)).rejects.toThrow(/ERR_INVALID_AUTH_CREDENTIALS/);
    } finally {
      await wrong.close();
      await anonymous.close();
    }
  });
});
