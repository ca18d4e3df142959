/**
 * The status page in a real browser: Debian's chromium driven by playwright-core, against the real
 * service (real SQLite, git, scheduler, Docker) listening on 127.0.0.1, with the Gerrit stand-in
 * as its review system (test/support/gerrit-rig.ts).
 *
 * Three changes are uploaded to Gerrit first and checked (from Gerrit's patchset-created webhook).
 * Then one executor slot is held by a check job (submitted over the API, as `airlock submit` does)
 * that prints a line every 0.2 s until the test cancels it: meanwhile the page must show that check
 * item live (hostile subject and author as text, running job with a progress bar, its live log), a
 * broken config's problems, and the three changes, approved in Gerrit by a core reviewer, queued in
 * the gate, each tested on the ones ahead. Cancelling the check frees the slot: the gate runs (the
 * middle change fails; Gerrit merges the other two), and the page follows every step over its one
 * event stream, never reloading, until the history shows each result with its logs. No script of
 * the page's data may run: no dialog, no console error, no <img>, no request the page did not make
 * itself.
 *
 * Screenshots go to test-results/screenshots/status-*.png (their paths are printed).
 */
import { mkdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { Browser, Locator, Page } from 'playwright-core';
import { launchChromium, watchPage, type PageWatch } from '../../support/browser.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { GateView } from '../../../untrusted-ci/api/schemas/gate.js';
import type { BuildView } from '#shared/schemas/api/builds.js';
import type { GateEventView } from '../../../untrusted-ci/store/gate-store.js';
import { startTestCi, type TestCi } from '../../support/ci.js';
import { CI_ACCOUNT, startGerrit, type GerritRig } from '../../support/gerrit-rig.js';
import { until as eventually } from '../../support/until.js';

const SHOTS = fileURLToPath(new URL('../../../test-results/screenshots/', import.meta.url));
const HOSTILE = '<img src=x onerror=alert(1)>';
/** Generous: the machine is noisy; nothing here measures time, it only waits for what must happen. */
const WAIT = { timeout: 90_000 };
const PROJECT = 'demo/status';

const GATE_JOB = `  test:
    command: |
      sleep 1
      if [ -f broken ]; then echo "broken: <script>alert(3)</script>"; exit 1; fi
      cat *.txt
    pipelines: [gate]
`;
/** The project's config: a quick check (the Gerrit changes' checks) and the gate job. */
const CONFIG = `version: 1
environment: { image: airlock/base:busybox }
jobs:
  lint:
    command: [sh, -c, "echo lint ok"]
    pipelines: [check]
${GATE_JOB}`;
/**
 * The config of the change that holds the slot: its check is a job that prints a line every 0.2 s
 * for minutes (a job name no build ran before: the page knows no usual duration for it).
 */
const SLOW_CONFIG = `version: 1
environment: { image: airlock/base:busybox }
jobs:
  slow:
    command: |
      i=0
      while [ $i -lt 1500 ]; do i=$((i+1)); echo "tick $i <b>not bold</b>"; sleep 0.2; done
    pipelines: [check]
    timeout: 10m
${GATE_JOB}`;
const BROKEN_CONFIG = `version: 1
environment: { image: airlock/base:busybox }
"<script>alert(2)</script>": 1
jobs:
  other: { comand: "true" }
`;

describe('status page (real browser, real service, real Docker)', () => {
  let rig: GerritRig;
  let ci: TestCi & { url?: string };
  let url: string;
  let browser: Browser;
  let page: Page;
  let seen: PageWatch;

  beforeAll(async () => {
    mkdirSync(SHOTS, { recursive: true });
    rig = await startGerrit();
    rig.gerrit.createProject(PROJECT, { '.airlock.yaml': CONFIG, 'base.txt': 'base\n' });
    // With a review system the CI listens on 127.0.0.1 (a port the kernel chose): Gerrit's webhooks and the browser reach it there.
    ci = await startTestCi({ projects: [{ name: PROJECT, url: rig.gerrit.gitUrl(PROJECT) }], slots: 1 }, { review: rig });
    url = ci.url!;
    browser = await launchChromium();
    page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    seen = watchPage(page);
  });
  afterAll(async () => {
    await browser?.close();
    await ci?.close();
    await rig?.gerrit.close();
  });

  const api = async <T,>(method: 'GET' | 'POST', path: string, payload?: object): Promise<T> => {
    const r = await ci.service.app.inject({ method, url: path, ...(payload ? { payload } : {}) });
    if (r.statusCode >= 300) throw new Error(`${method} ${path} answered ${r.statusCode}: ${r.body}`);
    return r.json() as T;
  };
  const builds = async (): Promise<BuildView[]> => (await api<{ builds: BuildView[] }>('GET', '/api/builds?limit=200')).builds;
  /** A change approved in Gerrit by a core reviewer; resolves once the gate holds it (webhooks are not ordered: approve one at a time). */
  const approve = async (n: number): Promise<void> => {
    rig.gerrit.review(n, 'grace', { labels: { 'Code-Review': 2 } });
    await eventually(`change ${n} in the gate`, async () => {
      const inGate = (await api<GateView>('GET', '/api/gate')).queues.some((q) => q.items.some((i) => i.change === String(n)));
      const reported = (await api<{ events: GateEventView[] }>('GET', '/api/gate/events?kind=report&limit=1000')).events.some((e) => e.change === String(n));
      return inGate || reported ? true : undefined;
    });
  };
  const item = (pipeline: 'check' | 'gate', change: string): Locator => page.locator(`#${pipeline}-queues li.item[data-change="${change}"]`);
  const historyRow = (build: number): Locator => page.locator(`#history-list tr[data-build="${build}"]`);
  /** Polls `ok` until it holds (the page's own polling evaluates strings, which its policy forbids). */
  const until = async (ok: () => Promise<boolean>, timeoutMs = WAIT.timeout): Promise<void> => {
    const end = Date.now() + timeoutMs;
    while (!(await ok())) {
      if (Date.now() > end) throw new Error(`condition not met in ${timeoutMs} ms: ${ok.toString()}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  };
  const shot = async (name: string): Promise<void> => {
    const path = `${SHOTS}status-${name}.png`;
    await page.screenshot({ path, fullPage: true });
    console.log(`screenshot: ${path}`);
  };

  it('shows queues, progress, live logs, history and config errors live, and never runs the data', async () => {
    const response = await page.goto(url);
    // The page's own headers: a strict policy (own files only, nothing inline), no sniffing.
    const headers = response!.headers();
    expect(headers['content-type']).toBe('text/html; charset=utf-8');
    expect(headers['x-content-type-options']).toBe('nosniff');
    const csp = headers['content-security-policy'] ?? '';
    expect(csp).toContain("default-src 'self'");
    expect(csp).toContain("script-src 'self'");
    expect(csp).toContain("style-src 'self'");
    expect(csp).toContain("frame-ancestors 'none'");
    expect(csp).not.toContain('unsafe');
    await page.locator('#connection[data-state="live"]').waitFor(WAIT);
    // Landmarks and headings a screen reader navigates by.
    for (const role of ['banner', 'navigation', 'main', 'contentinfo'] as const) expect(await page.getByRole(role).count(), role).toBe(1);
    expect(await page.getByRole('heading', { level: 2 }).allTextContents()).toEqual(['Check pipeline', 'Gate pipeline', 'Recent builds']); // the log panel is hidden until asked for
    await page.evaluate('window.airlockMarker = 42'); // gone if the page ever reloads

    // 0. Three changes uploaded to Gerrit (gated in step 4), each checked (a quick `lint`) once
    // Gerrit tells the CI of its patch set; the CI votes on each in Gerrit.
    const g = rig.gerrit;
    const a = g.upload({ project: PROJECT, owner: 'ada', subject: 'add A', files: { 'a.txt': 'A\n' } });
    const b = g.upload({ project: PROJECT, owner: 'mallory', subject: 'break the build', files: { 'b.txt': 'B\n', broken: 'yes\n' } });
    const c = g.upload({ project: PROJECT, owner: 'ada', subject: 'add C', files: { 'c.txt': 'C\n' } });
    const [A, B, C] = [a, b, c].map((x) => String(x.number)) as [string, string, string];
    await eventually('the three checks voted in Gerrit', () => ([a, b, c].every((x) => g.changeState(x.number).votes.Verified?.[CI_ACCOUNT] === 1) ? true : undefined), WAIT.timeout);
    expect((await builds()).filter((x) => x.pipeline === 'check').map((x) => [x.change.change, x.result]).sort()).toEqual([[A, 'passed'], [B, 'passed'], [C, 'passed']]);

    // 1. A check change (over the API, as `airlock submit` sends one: a commit in the project's
    // repository that is no change in Gerrit) with a hostile subject and author: shown as text,
    // its job running with a progress bar.
    const slow = g.writeCommit(PROJECT, { '.airlock.yaml': SLOW_CONFIG, 'slow.txt': 'slow\n' }, { message: 'a slow check\n' });
    const slowBuild = await ci.submit({ project: PROJECT, ref: slow, change: 'api-301', patchset: 1, author: 'mallory <script>', subject: HOSTILE });
    const slowJob = item('check', 'api-301').locator('li.job[data-job="slow"][data-state="running"]');
    await slowJob.waitFor(WAIT);
    expect(await item('check', 'api-301').locator('.subject').textContent()).toBe(HOSTILE);
    expect(await item('check', 'api-301').locator('.author').textContent()).toBe('mallory <script>');
    expect(await item('check', 'api-301').locator('.tested-on').textContent()).toBe('the tip of master');
    // The progress bar is named for assistive technology, and says in words what its length shows.
    const bar = item('check', 'api-301').getByRole('progressbar', { name: /^slow: running for \d+ (ms|s) · limit 10 min$/ });
    expect(await bar.evaluate((el) => Number((el as { max?: number }).max))).toBe(600_000);
    expect(await slowJob.locator('.badge').textContent()).toBe('▶ running');

    // 2. Its live log, from the build's event stream: lines arrive while the page stays put.
    await slowJob.getByRole('link', { name: /live log/ }).click();
    await page.locator('#log:not([hidden])').waitFor(WAIT);
    await page.locator('#log-text').filter({ hasText: /tick 5 / }).waitFor(WAIT);
    expect(await page.locator('#log-title').textContent()).toBe(`Log of job slow in build #${slowBuild}`);
    expect(await page.locator('#log-text').textContent()).toContain('tick 1 <b>not bold</b>\n');
    expect(await page.locator('#log-text b').count()).toBe(0);
    // The progress bar moves on its own (the page ticks against the server's clock).
    const value = (): Promise<number> => bar.evaluate((el) => Number((el as { value?: number }).value));
    const firstValue = await value();
    await until(async () => (await value()) > firstValue);
    await shot('check-live-log');

    // 3. A broken .airlock.yaml: every problem readable, the hostile key as text.
    const broken = g.writeCommit(PROJECT, { '.airlock.yaml': BROKEN_CONFIG }, { message: 'a config with problems\n' });
    const brokenBuild = await ci.submit({ project: PROJECT, ref: broken, change: 'api-302', patchset: 1, subject: 'a config with problems' });
    const brokenRow = historyRow(brokenBuild);
    await brokenRow.and(page.locator('[data-result="config-error"]')).waitFor(WAIT);
    const issues = await brokenRow.locator('ul.issues li').allTextContents();
    expect(issues).toEqual(
      expect.arrayContaining([
        'error: .airlock.yaml at jobs.other: Unrecognized key: "comand"; did you mean "command"?',
        'error: .airlock.yaml (top level): Unrecognized key: "<script>alert(2)</script>"',
      ]),
    );
    expect(await brokenRow.locator('.reason').textContent()).toMatch(/^\.airlock\.yaml has \d+ problems$/);
    expect(await brokenRow.locator('th').textContent()).toBe(`#${brokenBuild}`); // the CI's build id, as the CLI names it

    // 4. The three changes approved in Gerrit (Code-Review +2 by a core reviewer), one after the
    // other: in the gate, in order, each tested on the ones ahead. The slot is still held, so they
    // stay queued while the page is looked at.
    for (const x of [a, b, c]) await approve(x.number);
    const gateItems = page.locator('#gate-queues li.item');
    await until(async () => (await gateItems.evaluateAll((els) => els.map((e) => e.getAttribute('data-change')).join(' '))) === `${A} ${B} ${C}`);
    await item('gate', A).locator('li.job[data-job="test"] progress').waitFor(WAIT);
    // Its build has started, but its job waits for the executor slot: waiting, not running.
    expect(await item('gate', A).locator('li.job[data-job="test"]').getAttribute('data-state')).toBe('waiting');
    expect(await gateItems.locator('.tested-on').allTextContents()).toEqual(['the tip of master', `master + ${A},1`, `master + ${A},1 + ${B},1`]);
    expect(await page.locator('#gate-queues .queue-meta').textContent()).toBe('3 changes · window 20');
    expect(await item('gate', B).locator('.subject').textContent()).toBe('break the build');
    await shot('gate-queue');

    // 5. Cancel the check: the slot frees, the gate runs; everything reaches the page over SSE.
    await api('POST', `/api/builds/${slowBuild}/cancel`);
    await page.locator('#log-state').filter({ hasText: /^Build #\d+ finished: cancelled \(cancelled by request\)/ }).waitFor(WAIT);
    await historyRow(slowBuild).and(page.locator('[data-result="cancelled"]')).waitFor(WAIT);
    await page.locator('#gate-queues p.empty').waitFor({ timeout: 120_000 });
    /** The results of a change's gate builds in the history, newest first (its check, in step 0, passed). */
    const results = async (change: string): Promise<string[]> =>
      page
        .locator('#history-list tr')
        .filter({ has: page.locator('.change', { hasText: new RegExp(`^${change},1$`) }) })
        .filter({ has: page.getByRole('cell', { name: 'gate', exact: true }) })
        .evaluateAll((rows) => rows.map((r) => r.getAttribute('data-result') ?? ''));
    await until(async () => (await results(A)).length > 0 && (await results(B)).length > 0 && (await results(C))[0] === 'passed');
    expect(await results(A)).toEqual(['passed']);
    expect(await results(B)).toEqual(['failed']);
    expect((await results(C))[0]).toBe('passed'); // newest first; an earlier run on A+B was thrown away
    expect(await page.locator('#check-queues p.empty').textContent()).toBe('No changes in the check pipeline.');
    // Gerrit merged A and C, submitted by the CI after its Verified +2; B stays open.
    expect(g.changeState(a.number)).toMatchObject({ status: 'MERGED', submitter: CI_ACCOUNT });
    expect(g.changeState(c.number)).toMatchObject({ status: 'MERGED', submitter: CI_ACCOUNT });
    expect(g.changeState(b.number).status).toBe('NEW');

    // 6. A finished build's log, linked from the history, is plain text.
    const failedRow = page.locator('#history-list tr[data-result="failed"]').filter({ has: page.locator('.change', { hasText: new RegExp(`^${B},1$`) }) });
    expect(await failedRow.locator('.badge').allTextContents()).toEqual(['✗ failed', '✗ failed']); // the build's result, then its job's
    const logHref = await failedRow.getByRole('link', { name: 'test' }).getAttribute('href');
    expect(logHref).toMatch(/^\/api\/builds\/\d+\/logs\/test$/);
    // Fetched by the page itself (same origin, under its policy).
    const log = (await page.evaluate(`fetch(${JSON.stringify(logHref)}).then(async (r) => ({ type: r.headers.get('content-type'), nosniff: r.headers.get('x-content-type-options'), text: await r.text() }))`)) as { type: string; nosniff: string; text: string };
    expect(log).toMatchObject({ type: 'text/plain; charset=utf-8', nosniff: 'nosniff' });
    expect(log.text).toContain('broken: <script>alert(3)</script>');
    await page.locator('#history').scrollIntoViewIfNeeded();
    await shot('history');

    // Live all along: one page load, one status stream, the page's own state kept.
    expect(seen.loads).toBe(1);
    expect(await page.evaluate('window.airlockMarker')).toBe(42);
    expect(seen.requests.filter((p) => p === '/api/status/stream')).toHaveLength(1);
    expect(await page.locator('#announcer p').count()).toBeGreaterThan(0);
    // Nothing of the data ran: no dialog, no error, no image, no request for "x".
    expect(seen.dialogs).toEqual([]);
    expect([...seen.errors, ...seen.responses.filter((r) => r.status >= 400).map((r) => `HTTP ${r.status}: ${r.url}`)]).toEqual([]);
    expect(await page.locator('img, script:not([src])').count()).toBe(0);
    expect(seen.requests.filter((p) => p.endsWith('/x'))).toEqual([]);
    expect(new Set(seen.requests.map((p) => p.split('/')[1]))).toEqual(new Set(['', 'status', 'api']));
  });
});
