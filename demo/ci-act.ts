/**
 * Acts 3 and 4: the public CI and code review. Changes are uploaded to code review (the Gerrit
 * stand-in); its webhooks tell the CI, which checks each patch set and votes Verified there; a
 * reviewer's Code-Review +2 in code review puts a change in the gate; the gate votes Verified +2
 * and asks code review to submit, and code review merges. The CI never writes the branch.
 *
 * The story: three contributors' changes. Each passes the check pipeline on its own. Approved
 * together, the gate tests them as a speculative stack (master+A, master+A+B, master+A+B+C):
 * A renames the greeting, B adds a test that expects the old one, so B fails on top of A (a
 * conflict no check of B alone could see); C is re-tested without B; A and C merge, in order,
 * and master never holds B.
 */
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { z } from 'zod';
import type { CiClient } from '../cli/ci-client.js';
import { sanitizeForTerminal } from '#shared/runner/log-capture.js';
import type { BuildView } from '#shared/schemas/api/builds.js';
import { CI_ACCOUNT } from '../test/support/gerrit-rig.js';
import { GateEventView, type GateEventKind } from '../untrusted-ci/store/gate-store.js';
import type { CodeReview } from './code-review.js';
import { PROJECT } from './demo-root.js';
import type { Story } from './story.js';
import { until } from './wait.js';

const template = (path: string): string => readFileSync(fileURLToPath(new URL(`./sample-project/${path}`, import.meta.url)), 'utf8');

/** The three changes: [owner, subject, files]. */
const CHANGES: [string, string, Record<string, string>][] = [
  [
    'ada',
    'greet: say Hi, it is friendlier',
    { 'greet.sh': template('greet.sh').replace('greeting="Hello"', 'greeting="Hi"'), 'tests/greet.sh': template('tests/greet.sh').replaceAll('"Hello,', '"Hi,') },
  ],
  ['mallory', 'tests: greet several people at once', { 'tests/crowd.sh': `# greet: several names, one line each.\ncheck "$(printf 'Hello, Ada!\\nHello, Grace!')" greet Ada Grace\n` }],
  [
    'ada',
    'farewell: a second command',
    {
      'farewell.sh': '#!/bin/sh\n# farewell: the other half of the application. Usage: farewell [NAME...]\n[ $# -gt 0 ] || set -- world\nfor name in "$@"; do\n  echo "Goodbye, $name!"\ndone\n',
      'tests/farewell.sh': '# farewell: one name.\ncheck "Goodbye, Ada!" farewell Ada\n',
      Dockerfile: template('Dockerfile').replace(/^(COPY greet\.sh .*)$/m, '$1\nCOPY farewell.sh /usr/local/bin/farewell'),
    },
  ],
];

/** A change as uploaded to code review. */
export interface SampleChange {
  number: number;
  subject: string;
  ref: string;
  sha: string;
  owner: string;
}

const CHECK_TIMEOUT_MS = 120_000; // 2 min, the first build also builds the environment
const GATE_TIMEOUT_MS = 180_000; // 3 min

export interface Merge {
  change: string;
  commit: string;
  build?: number;
}

interface Ctx {
  story: Story;
  client: CiClient;
  review: CodeReview;
  /** The CI's git mirrors (under its data dir): where the commits it tested are. */
  ciMirrors: string;
  signal: AbortSignal;
}

/** Check: the three changes are uploaded to code review; the CI checks each and votes there. */
export async function checkAct(c: Ctx): Promise<SampleChange[]> {
  const { story, client, review } = c;
  const g = review.gerrit;
  story.begin('check: every patch set is tested on its own, and the CI votes in code review', `code review (${g.url}, a stand-in for Gerrit) posts each new patch set to the CI at ${client.server}; the CI fetches it, merges it onto master and runs its jobs in its Dockerfile environment`);
  const changes: SampleChange[] = CHANGES.map(([owner, subject, files]) => {
    const u = g.upload({ project: PROJECT, owner, subject, files });
    return { number: u.number, subject, ref: u.ref, sha: u.sha, owner };
  });
  for (const ch of changes) story.info(`${ch.owner} uploads change ${ch.number}: "${ch.subject}" → ${ch.ref} (${ch.sha.slice(0, 10)})`);
  const builds = await until('a check build of each change', async () => {
    const all = (await client.builds({ project: PROJECT, limit: 50 })).filter((b) => b.pipeline === 'check');
    const mine = changes.map((ch) => all.find((b) => b.change.change === String(ch.number)));
    return mine.every((b) => b !== undefined) ? (mine as BuildView[]) : undefined;
  }, { signal: c.signal, timeoutMs: 30_000, everyMs: 50 });
  story.info(`following build ${builds[0]!.id} live (GET /api/builds/${builds[0]!.id}/events):`);
  const packageLines: string[] = [];
  for await (const e of client.events(builds[0]!.id, c.signal)) {
    if (e.type === 'log' && e.text.includes('[airlock] packages')) packageLines.push(`[${e.job}] ${sanitizeForTerminal(e.text).trim()}`);
    if (e.type === 'job') story.info(`│ ${e.job} → ${e.state}${e.reason ? ` (${e.reason})` : ''}`);
    else if (e.type === 'log' && e.job !== 'setup') story.info(`│ [${e.job}] ${sanitizeForTerminal(e.text).replace(/\n$/, '').replace(/\n/g, `\n│ [${e.job}] `)}`);
  }
  // The environment's apt-get and the license job's npm package came through the CI host's cache.
  for (const l of packageLines) story.info(`│ ${l}`);
  story.check(
    'packages came only through the CI\'s allowlisting cache (the license job\'s npm package; the environment\'s apt-get, when this build built it)',
    packageLines.some((l) => l.startsWith('[license]')),
    packageLines.length === 0 ? 'no package summary in the build log' : undefined,
  );
  for (const [i, ch] of changes.entries()) {
    const b = await finished(c, builds[i]!.id, CHECK_TIMEOUT_MS);
    story.check(`check of change ${ch.number} "${ch.subject}": ${b.result}`, b.result === 'passed', describe(b));
  }
  const votes = await until('the CI\'s votes in code review', () => {
    const v = changes.map((ch) => g.changeState(ch.number).votes.Verified?.[CI_ACCOUNT]);
    return v.every((x) => x !== undefined) ? v : undefined;
  }, { signal: c.signal, timeoutMs: 30_000, everyMs: 100 });
  const said = g.events.filter((e) => e.type === 'comment-added' && (e.body as { author?: { username?: string } }).author?.username === CI_ACCOUNT).map((e) => String((e.body as { comment?: string }).comment ?? ''));
  story.check(`code review shows the CI's votes: Verified ${votes.map((v) => (v! > 0 ? `+${v}` : String(v))).join(', ')}`, votes.every((v) => v === 1), `as ${CI_ACCOUNT}, with a message linking each job's log`);
  const first = said.find((m) => m.includes('/logs/'));
  if (first) for (const l of first.split('\n').filter((x) => x.includes('/logs/'))) story.info(`│ ${sanitizeForTerminal(l)}`);
  return changes;
}

/**
 * Gate: grace approves the three in code review (Code-Review +2); the gate tests them together,
 * votes, and asks code review to submit A and C; B is voted -2 and stays open.
 */
export async function gateAct(c: Ctx, changes: SampleChange[]): Promise<Merge[]> {
  const { story, client, review } = c;
  const g = review.gerrit;
  story.begin('gate: approved in code review, tested together, merged by code review', "each on master plus the changes ahead of it, at once (Zuul's dependent pipeline); a failure is taken out and the ones behind are re-tested without it; the CI only votes and asks code review to submit");
  const before = review.history(1)[0]!.sha;
  for (const ch of changes) {
    g.review(ch.number, 'grace', { labels: { 'Code-Review': 2 }, message: 'Looks good to me, approved' });
    story.info(`grace: Code-Review +2 on change ${ch.number} in code review`);
    // Webhooks are not ordered: each approval reaches the gate before the next is given.
    await until(`change ${ch.number} in the gate`, async () => ((await client.gate()).queues.flatMap((q) => q.items).some((i) => i.change === String(ch.number)) || (await gateEvents(client, 'report')).some((e) => e.change === String(ch.number)) ? true : undefined), { signal: c.signal, timeoutMs: 30_000, everyMs: 50 });
  }
  const view = await client.gate();
  for (const q of view.queues) {
    story.info(`queue ${q.name} (window ${q.window}):`);
    for (const i of q.items) story.info(`  ${i.change},${i.patchset} tested on master + [${i.state.join(' ')}]`);
  }

  const reports = await until('a gate report for each change', async () => {
    const r = await gateEvents(client, 'report');
    return r.length >= changes.length ? r : undefined;
  }, { signal: c.signal, timeoutMs: GATE_TIMEOUT_MS });
  const result = new Map(reports.map((e) => [e.change, e.result]));
  const [a, b, c3] = changes as [SampleChange, SampleChange, SampleChange];
  const want: Record<string, string> = { [a.number]: 'SUCCESS', [b.number]: 'FAILURE', [c3.number]: 'SUCCESS' };
  const gateBuilds = (await client.builds({ project: PROJECT, limit: 50 })).filter((x) => x.pipeline === 'gate').sort((x, y) => x.id - y.id);
  for (const ch of changes) {
    const label = String(ch.number);
    const mine = await Promise.all(gateBuilds.filter((x) => x.change.change === label).map((x) => finished(c, x.id, 60_000)));
    const runs = mine.map((x) => `#${x.id} ${x.result}`).join(', ');
    story.check(`gate verdict on change ${ch.number}: ${result.get(label) ?? 'none'}`, result.get(label) === want[label], `builds ${runs}`);
    if (mine.length > 1) story.info(`its first build set included a change ahead that failed: discarded, and re-tested without it`);
    if (ch === b) {
      const failed = mine.find((x) => x.result === 'failed');
      const log = failed ? await client.log(failed.id, 'test').catch(() => '') : '';
      for (const l of log.split('\n').filter((x) => /^not ok|tests,/.test(x))) story.info(`│ ${sanitizeForTerminal(l)}`);
    }
  }

  const merged = (await gateEvents(client, 'merged')).map((e) => ({ change: e.change, commit: e.commit ?? '', ...(e.build !== undefined ? { build: e.build } : {}) }));
  story.check(`merged in order: ${merged.map((m) => `change ${m.change}`).join(', ') || 'nothing'}`, merged.map((m) => m.change).join(' ') === `${a.number} ${c3.number}`);
  const stateOf = (ch: SampleChange) => g.changeState(ch.number);
  await until('the -2 on the failing change', () => (stateOf(b).votes.Verified?.[CI_ACCOUNT] === -2 ? true : undefined), { signal: c.signal, timeoutMs: 30_000, everyMs: 100 });
  story.check(
    `code review merged changes ${a.number} and ${c3.number} (submitted by ${CI_ACCOUNT} after its Verified +2); change ${b.number} stays open with Verified -2`,
    stateOf(a).status === 'MERGED' && stateOf(c3).status === 'MERGED' && stateOf(a).submitter === CI_ACCOUNT && stateOf(c3).submitter === CI_ACCOUNT && stateOf(b).status === 'NEW',
  );
  const history = review.history(3);
  const exact = merged.length === 2 && history[0]?.sha === merged[1]!.commit && history[1]?.sha === a.sha && history[2]?.sha === before && review.revParse(`${merged[1]!.commit}^2`) === c3.sha;
  const tested = gateBuilds.filter((x) => x.change.change === String(c3.number)).at(-1);
  story.check('master holds changes 1 and 3, never 2, and its tree is exactly the one the gate tested', exact && review.has('farewell.sh') && !review.has('tests/crowd.sh') && tested?.commit !== undefined && review.revParse('master^{tree}') === testedTree(c.ciMirrors, tested.commit));
  for (const h of history) story.info(`${h.sha.slice(0, 10)} ${h.subject}`);
  return merged;
}

/** The gate's outbox (`GET /api/gate/events`), oldest first. */
async function gateEvents(client: CiClient, kind: GateEventKind): Promise<GateEventView[]> {
  const r = await fetch(`${client.server}/api/gate/events?kind=${kind}&limit=100`, { signal: AbortSignal.timeout(10_000) });
  if (!r.ok) throw new Error(`GET /api/gate/events answered ${r.status}`);
  return z.object({ events: z.array(GateEventView) }).parse(await r.json()).events;
}

/** The tree of a commit the CI tested, from its own mirror (undefined if it cannot be read). */
function testedTree(mirrors: string, commit: string): string | undefined {
  for (const m of readdirSync(mirrors)) {
    try {
      return execFileSync('git', ['--git-dir', join(mirrors, m), 'rev-parse', '--verify', '--quiet', `${commit}^{tree}`], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
    } catch {
      // not in this mirror
    }
  }
  return undefined;
}

function finished(c: Ctx, id: number, timeoutMs: number): Promise<BuildView> {
  return until(`build ${id} to finish`, async () => {
    const b = await c.client.build(id);
    return b.state === 'finished' ? b : undefined;
  }, { signal: c.signal, timeoutMs });
}

function describe(b: BuildView): string {
  const jobs = b.jobs.map((j) => `${j.name} ${j.state}`).join(', ');
  const env = b.environment ? `, environment ${b.environment.cached ? 'reused' : 'built'}` : '';
  const issues = b.issues.map((i) => `; ${i.file}: ${i.path ? `${i.path}: ` : ''}${i.message}`).join('');
  return `build #${b.id}: ${jobs || 'no jobs'}${env}${b.result !== 'passed' && b.reason ? ` (${b.reason}${issues})` : ''}`;
}
