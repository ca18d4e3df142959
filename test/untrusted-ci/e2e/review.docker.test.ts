/**
 * The CI and its review system, end to end: the Gerrit stand-in (REST, webhooks, submit rules, its
 * own merges), the real service and real Docker. What the issue asks of trust rooted in review:
 * a change is checked and voted; an unapproved ancestor is not merged; an approved change that is
 * abandoned is not merged (told by the event, or found by the re-read before the submit); an
 * approval withdrawn while in the gate dequeues it; events missed while the CI was down are caught
 * up; an approval recorded but never saved into the gate's state (the process died in between) is
 * gated after the restart; `recheck` checks again.
 */
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { GateView } from '../../../untrusted-ci/api/schemas/gate.js';
import type { BuildView } from '#shared/schemas/api/builds.js';
import type { GateEventView } from '../../../untrusted-ci/store/gate-store.js';
import { startTestCi, type TestCi } from '../../support/ci.js';
import { tempDir } from '../../support/docker.js';
import { CI_ACCOUNT, startGerrit, type GerritRig } from '../../support/gerrit-rig.js';
import { until } from '../../support/until.js';

// A change with a file `slow` holds its gate job a few seconds (time to act on it meanwhile); one
// with `broken` fails.
const CONFIG = `version: 1
environment: { image: airlock/base:busybox }
jobs:
  test:
    command: [sh, -c, "if [ -f slow ]; then sleep 4; fi; if [ -f broken ]; then echo broken; exit 1; fi; echo ok"]
`;
const PROJECT = 'demo/reviewed';

describe('the CI and its review system (real Docker, Gerrit stand-in)', () => {
  let rig: GerritRig;
  let ci: TestCi & { url?: string };
  const dataDir = tempDir('airlock-ci-review-');
  const start = () => startTestCi({ projects: [{ name: PROJECT, url: rig.gerrit.gitUrl(PROJECT) }], slots: 2 }, { review: rig, dataDir, keepData: true, catchUpEveryMs: 0 });
  beforeAll(async () => {
    rig = await startGerrit();
    rig.gerrit.createProject(PROJECT, { '.airlock.yaml': CONFIG, 'base.txt': 'base\n' });
    ci = await start();
  });
  afterAll(async () => {
    await ci?.close();
    await rig?.gerrit.close();
  });

  const get = async <T,>(url: string): Promise<T> => {
    const r = await ci.service.app.inject({ method: 'GET', url });
    if (r.statusCode >= 300) throw new Error(`GET ${url} answered ${r.statusCode}: ${r.body}`);
    return r.json() as T;
  };
  const buildsOf = async (n: number, pipeline: 'check' | 'gate'): Promise<BuildView[]> => {
    const r = await get<BuildView[] | { builds: BuildView[] }>('/api/builds?limit=200');
    return (Array.isArray(r) ? r : r.builds).filter((b) => b.pipeline === pipeline && b.change.change === String(n)).sort((a, b) => a.id - b.id);
  };
  const reportsOf = async (n: number): Promise<GateEventView[]> => (await get<{ events: GateEventView[] }>('/api/gate/events?kind=report&limit=1000')).events.filter((e) => e.change === String(n));
  const report = (n: number) => until(`a gate report on change ${n}`, async () => (await reportsOf(n))[0], 60_000);
  const inGate = (n: number) => until(`change ${n} in the gate`, async () => ((await get<GateView>('/api/gate')).queues.flatMap((q) => q.items).some((i) => i.change === String(n) && i.build !== undefined) ? true : undefined));
  /** Its gate build has merged and its job runs: what is merged from now on is news to the build. */
  const testing = (n: number) => until(`change ${n}'s gate job running`, async () => ((await buildsOf(n, 'gate')).some((b) => b.state === 'running' && b.jobs.some((j) => j.state === 'running')) ? true : undefined));
  const messages = (n: number) => rig.gerrit.events.filter((e) => e.type === 'comment-added' && (e.body as { change: { number: number }; author: { username: string } }).change.number === n && (e.body as { author: { username: string } }).author.username === CI_ACCOUNT).map((e) => (e.body as { comment: string }).comment);

  it('checks each patch set and votes Verified in Gerrit, with a message linking the logs', async () => {
    const g = rig.gerrit;
    const good = g.upload({ project: PROJECT, owner: 'ada', subject: 'good', files: { 'g.txt': 'g\n' } });
    const bad = g.upload({ project: PROJECT, owner: 'ada', subject: 'bad', files: { broken: 'yes\n' } });
    await until('both votes', async () => (g.changeState(good.number).votes.Verified?.[CI_ACCOUNT] !== undefined && g.changeState(bad.number).votes.Verified?.[CI_ACCOUNT] !== undefined ? true : undefined));
    expect(g.changeState(good.number).votes.Verified).toEqual({ [CI_ACCOUNT]: 1 });
    expect(g.changeState(bad.number).votes.Verified).toEqual({ [CI_ACCOUNT]: -1 });
    const [build] = await buildsOf(good.number, 'check');
    const said = messages(good.number).join('\n');
    expect(said).toContain('Build succeeded (check pipeline).');
    expect(said).toContain(`${ci.url}/api/builds/${build!.id}/logs/test`);
    expect(messages(bad.number).join('\n')).toMatch(/Build failed \(check pipeline\)[\s\S]*- test .* : FAILED/);
    // Nothing merged: a check never asks for a submit.
    expect(g.changeState(good.number).status).toBe('NEW');
  });

  it('"recheck" in a comment runs the check again', async () => {
    const g = rig.gerrit;
    const c = g.upload({ project: PROJECT, owner: 'ada', subject: 'flaky', files: { 'f.txt': 'f\n' } });
    await until('the first check', async () => ((await buildsOf(c.number, 'check')).length === 1 ? true : undefined));
    g.review(c.number, 'ada', { message: 'recheck' });
    await until('a second check', async () => ((await buildsOf(c.number, 'check')).length === 2 ? true : undefined));
  });

  it('takes an event only as a hint: a forged +2 (with the webhook secret) puts nothing in the gate', async () => {
    const g = rig.gerrit;
    const f = g.upload({ project: PROJECT, owner: 'mallory', subject: 'F', files: { 'f.txt': 'f\n' } });
    const created = g.events.filter((e) => e.type === 'patchset-created').map((e) => e.body as Record<string, unknown> & { change: { number: number } }).find((e) => e.change.number === f.number)!;
    const forged = { ...created, type: 'comment-added', author: { name: 'grace', username: 'grace', email: 'grace@example.org' }, approvals: [{ type: 'Code-Review', description: 'Code-Review', value: '2', oldValue: '0' }], comment: 'Patch Set 1: Code-Review+2', eventCreatedOn: Math.floor(Date.now() / 1000) };
    const r = await fetch(`${ci.url}/hooks/gerrit/${encodeURIComponent(rig.hookSecret)}`, { method: 'POST', body: JSON.stringify(forged), headers: { 'content-type': 'application/json' } });
    expect(r.status).toBe(202);
    await ci.service.review!.rereads.idle();
    await ci.service.gate.idle();
    expect((await get<GateView>('/api/gate')).queues.flatMap((q) => q.items).map((i) => i.change)).not.toContain(String(f.number));
    expect(await reportsOf(f.number)).toEqual([]);
    expect((await ci.service.review!.state.get(PROJECT, String(f.number)))?.votes['Code-Review']).toBeUndefined();
  });

  it('votes and submits only where it tested: a change whose branch an event lied about is not merged', async () => {
    const g = rig.gerrit;
    execFileSync('git', ['--git-dir', g.gitUrl(PROJECT), 'update-ref', 'refs/heads/stable', g.branchTip(PROJECT)]);
    g.pauseWebhooks({ drop: true }); // the real event never arrives
    const s = g.upload({ project: PROJECT, branch: 'stable', owner: 'ada', subject: 'S', files: { 's.txt': 's\n' } });
    await g.resumeWebhooks();
    // Someone with the webhook secret announces S's patch set as a change for master.
    const created = g.events.filter((e) => e.type === 'patchset-created').map((e) => e.body as Record<string, unknown> & { change: { number: number; branch: string } }).find((e) => e.change.number === s.number)!;
    const forged = { ...created, change: { ...created.change, branch: 'master' } };
    const posted = await fetch(`${ci.url}/hooks/gerrit/${encodeURIComponent(rig.hookSecret)}`, { method: 'POST', body: JSON.stringify(forged), headers: { 'content-type': 'application/json' } });
    expect(posted.status).toBe(202);
    expect((await ci.service.store.latestChange(PROJECT, String(s.number)))?.branch).toBe('master');
    g.review(s.number, 'grace', { labels: { 'Code-Review': 2 } });
    const r = await report(s.number);
    expect(r.result).toBe('MERGE_FAILURE');
    expect(r.message).toContain('the review system says it targets branch stable, not master, where it was tested');
    expect(g.changeState(s.number).status).toBe('NEW');
    expect(g.changeState(s.number).votes.Verified?.[CI_ACCOUNT]).not.toBe(2);
  });

  it('does not merge an unapproved ancestor: a change on an outdated patch set is kept out, with the reason', async () => {
    const g = rig.gerrit;
    const tip = g.branchTip(PROJECT);
    const x1 = g.upload({ project: PROJECT, owner: 'mallory', subject: 'X', files: { 'x.txt': 'never reviewed\n' } });
    const x2 = g.upload({ project: PROJECT, owner: 'mallory', change: x1.number, files: { 'x.txt': 'reworked\n' } });
    expect(x2.kind).toBe('REWORK');
    // Y sits on X's first, never-approved patch set; Y itself is approved.
    const y = g.upload({ project: PROJECT, owner: 'mallory', subject: 'Y', files: { 'y.txt': 'y\n' }, parent: x1.sha });
    g.review(y.number, 'grace', { labels: { 'Code-Review': 2 } });
    const r = await report(y.number);
    expect(r).toMatchObject({ result: 'FAILURE' });
    expect(r.message).toContain(`commit ${x1.sha.slice(0, 12)} between branch master and this change is not the current patch set of an open change`);
    expect(g.changeState(y.number).status).toBe('NEW');
    expect(g.branchTip(PROJECT)).toBe(tip);
  });

  it('does not merge a change approved and then abandoned', async () => {
    const g = rig.gerrit;
    const tip = g.branchTip(PROJECT);
    const z = g.upload({ project: PROJECT, owner: 'ada', subject: 'Z', files: { slow: '1\n', 'z.txt': 'z\n' } });
    g.review(z.number, 'grace', { labels: { 'Code-Review': 2 } });
    await inGate(z.number);
    g.abandon(z.number, 'ada', 'not needed after all');
    // Out of the gate, its build stopped (a report comes only if its start was reported, as in Zuul).
    await until('Z out of the gate', async () => ((await get<GateView>('/api/gate')).queues.flatMap((q) => q.items).some((i) => i.change === String(z.number)) ? undefined : true));
    const [gateBuild] = await buildsOf(z.number, 'gate');
    expect((await ci.waitFor(gateBuild!.id)).result).toBe('cancelled');
    for (const r of await reportsOf(z.number)) expect(r.result).toBe('DEQUEUED');
    expect(g.changeState(z.number).status).toBe('ABANDONED');
    expect(g.branchTip(PROJECT)).toBe(tip);
  });

  it('takes a change out of the gate when its approval is withdrawn while it is tested', async () => {
    const g = rig.gerrit;
    const tip = g.branchTip(PROJECT);
    const w = g.upload({ project: PROJECT, owner: 'ada', subject: 'W', files: { slow: '1\n', 'w.txt': 'w\n' } });
    g.review(w.number, 'grace', { labels: { 'Code-Review': 2 } });
    await inGate(w.number);
    g.review(w.number, 'grace', { labels: { 'Code-Review': 0 }, message: 'wait, one more thing' });
    const r = await report(w.number);
    expect(r.result).toBe('DEQUEUED');
    expect(r.message).toMatch(/lost its approval/);
    expect(g.changeState(w.number).status).toBe('NEW');
    expect(g.branchTip(PROJECT)).toBe(tip);
  });

  it('re-reads the change before the submit: an abandonment it was never told of stops the merge', async () => {
    const g = rig.gerrit;
    const tip = g.branchTip(PROJECT);
    const v = g.upload({ project: PROJECT, owner: 'ada', subject: 'V', files: { slow: '1\n', 'v.txt': 'v\n' } });
    g.review(v.number, 'grace', { labels: { 'Code-Review': 2 } });
    await inGate(v.number);
    g.pauseWebhooks({ drop: true }); // the CI never hears of it
    g.abandon(v.number, 'ada');
    g.resumeWebhooks().catch(() => undefined);
    const r = await report(v.number);
    // The re-read is the only way the CI can learn of it here. Which of its two outcomes reaches
    // the model first is a race: the refused submit (MERGE_FAILURE), or the abandonment the re-read
    // also hands to the review state, which takes the change out (DEQUEUED). Either way, not merged.
    expect(['MERGE_FAILURE', 'DEQUEUED']).toContain(r.result);
    expect(r.message).toContain('abandoned');
    expect(g.changeState(v.number).status).toBe('ABANDONED');
    expect(g.branchTip(PROJECT)).toBe(tip);
  });

  it('a submit Gerrit refuses (409: a conflict with a change merged meanwhile) is MERGE_FAILURE, voted -2', async () => {
    const g = rig.gerrit;
    const q = g.upload({ project: PROJECT, owner: 'ada', subject: 'Q', files: { slow: '1\n', 'shared.txt': 'from Q\n' } });
    const other = g.upload({ project: PROJECT, owner: 'mallory', subject: 'R', files: { 'shared.txt': 'from R\n' } });
    g.review(q.number, 'grace', { labels: { 'Code-Review': 2 } });
    await inGate(q.number);
    // Once Q's build has merged it and runs its job (merged earlier, R would be a merge conflict the CI finds itself)…
    await testing(q.number);
    // …R is merged by someone with the rights to (outside the gate).
    g.review(other.number, 'linus', { labels: { 'Code-Review': 2 } });
    g.review(other.number, CI_ACCOUNT, { labels: { Verified: 2 } });
    g.submitAs(other.number, CI_ACCOUNT);
    const tip = g.branchTip(PROJECT);
    const r = await report(q.number);
    expect(r.result).toBe('MERGE_FAILURE');
    expect(r.message).toMatch(/refused POST \/changes\/.*\/submit \(409\)[\s\S]*path conflict/);
    expect(g.changeState(q.number).status).toBe('NEW');
    await until('the -2 on Q', async () => (g.changeState(q.number).votes.Verified?.[CI_ACCOUNT] === -2 ? true : undefined));
    expect(g.branchTip(PROJECT)).toBe(tip);
  });

  it('catches up after a restart with what it missed: a new change is checked, an approval gated and merged', async () => {
    const g = rig.gerrit;
    await ci.close();
    g.pauseWebhooks({ drop: true }); // airlock is down: the webhooks plugin gives up on it
    const u = g.upload({ project: PROJECT, owner: 'ada', subject: 'U', files: { 'u.txt': 'u\n' } });
    g.review(u.number, 'grace', { labels: { 'Code-Review': 2 } });
    await g.resumeWebhooks();
    ci = await start(); // the catch-up reads what was updated since it last heard
    const r = await report(u.number);
    expect(r.result).toBe('SUCCESS');
    expect((await buildsOf(u.number, 'check')).length).toBe(1);
    expect(g.changeState(u.number)).toMatchObject({ status: 'MERGED', submitter: CI_ACCOUNT });
  });

  it('gates after a restart an approval the review state recorded but the gate never saved (the process died in between)', async () => {
    const g = rig.gerrit;
    const v = g.upload({ project: PROJECT, owner: 'ada', subject: 'V', files: { 'v.txt': 'v\n' } });
    await until('its check vote', async () => (g.changeState(v.number).votes.Verified?.[CI_ACCOUNT] === 1 ? true : undefined));
    await ci.close();
    g.pauseWebhooks({ drop: true });
    g.review(v.number, 'grace', { labels: { 'Code-Review': 2 } });
    await g.resumeWebhooks();
    // What handling the approval's event wrote before the process died: the vote in the review
    // state (the gate's snapshot, saved after its batch, never got the change).
    const db = new Database(join(dataDir, 'ci.sqlite'));
    try {
      const { patchset } = db.prepare('SELECT patchset FROM review_changes WHERE project = ? AND change = ?').get(PROJECT, String(v.number)) as { patchset: number };
      db.prepare('INSERT INTO review_votes (project, change, patchset, account, label, value) VALUES (?,?,?,?,?,?)').run(PROJECT, String(v.number), patchset, 'grace', 'Code-Review', 2);
    } finally {
      db.close();
    }
    // The catch-up reads the change again, but the review state already says approved: only the
    // resume at the gate's start tells the gate.
    ci = await start();
    const r = await report(v.number);
    expect(r.result).toBe('SUCCESS');
    expect(g.changeState(v.number)).toMatchObject({ status: 'MERGED', submitter: CI_ACCOUNT });
  });
});
