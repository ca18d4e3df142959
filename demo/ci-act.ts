/**
 * Acts 2 and 3: the public CI, over its HTTP API as `airlock submit` and `airlock approve` use it.
 *
 * The story: three contributors' changes. Each passes the check pipeline on its own. Approved
 * together, the gate tests them as a speculative stack (master+A, master+A+B, master+A+B+C):
 * A renames the greeting, B adds a test that expects the old one, so B fails on top of A (a
 * conflict no check of B alone could see); C is re-tested without B; A and C merge, in order,
 * and master never holds B.
 */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { z } from 'zod';
import type { CiClient } from '../cli/ci-client.js';
import { sanitizeForTerminal } from '../shared/runner/log-capture.js';
import type { BuildView } from '../shared/schemas/api/builds.js';
import { GateEventView, type GateEventKind } from '../untrusted-ci/store/gate-store.js';
import { PROJECT } from './demo-root.js';
import type { SampleChange, SampleRepo } from './sample-repo.js';
import type { Story } from './story.js';
import { until } from './wait.js';

const template = (path: string): string => readFileSync(fileURLToPath(new URL(`./sample-project/${path}`, import.meta.url)), 'utf8');

/** The three changes: [number, subject, files]. */
const CHANGES: [number, string, Record<string, string>][] = [
  [
    1,
    'greet: say Hi, it is friendlier',
    { 'greet.sh': template('greet.sh').replace('greeting="Hello"', 'greeting="Hi"'), 'tests/greet.sh': template('tests/greet.sh').replaceAll('"Hello,', '"Hi,') },
  ],
  [2, 'tests: greet several people at once', { 'tests/crowd.sh': `# greet: several names, one line each.\ncheck "$(printf 'Hello, Ada!\\nHello, Grace!')" greet Ada Grace\n` }],
  [
    3,
    'farewell: a second command',
    {
      'farewell.sh': '#!/bin/sh\n# farewell: the other half of the application. Usage: farewell [NAME...]\n[ $# -gt 0 ] || set -- world\nfor name in "$@"; do\n  echo "Goodbye, $name!"\ndone\n',
      'tests/farewell.sh': '# farewell: one name.\ncheck "Goodbye, Ada!" farewell Ada\n',
      Dockerfile: template('Dockerfile').replace(/^(COPY greet\.sh .*)$/m, '$1\nCOPY farewell.sh /usr/local/bin/farewell'),
    },
  ],
];

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
  repo: SampleRepo;
  signal: AbortSignal;
}

/** Check: the three changes are written, pushed for review and submitted; each must pass. */
export async function checkAct(c: Ctx): Promise<{ changes: SampleChange[]; ids: Map<number, number> }> {
  const { story, client, repo } = c;
  story.begin('check: every patchset is tested on its own', `the CI at ${client.server} fetches each change from the review repository, merges it onto master and runs its jobs in its Dockerfile environment`);
  const changes = CHANGES.map(([n, subject, files]) => repo.change(n, subject, files));
  for (const ch of changes) story.info(`change ${ch.number}: "${ch.subject}" → ${ch.ref} (${ch.sha.slice(0, 10)})`);
  const ids = new Map<number, number>();
  const builds: number[] = [];
  for (const ch of changes) {
    const answer = await client.submit({ project: PROJECT, branch: 'master', ref: ch.ref, change: String(ch.number), patchset: 1, author: 'ada', subject: ch.subject, pipeline: 'check' });
    ids.set(ch.number, answer.change.id);
    builds.push(answer.builds[0]!);
  }
  story.info(`following build ${builds[0]} live (GET /api/builds/${builds[0]}/events):`);
  for await (const e of client.events(builds[0]!, c.signal)) {
    if (e.type === 'job') story.info(`│ ${e.job} → ${e.state}${e.reason ? ` (${e.reason})` : ''}`);
    else if (e.type === 'log' && e.job !== 'setup') story.info(`│ [${e.job}] ${sanitizeForTerminal(e.text).replace(/\n$/, '').replace(/\n/g, `\n│ [${e.job}] `)}`);
  }
  for (const [i, ch] of changes.entries()) {
    const b = await finished(c, builds[i]!, CHECK_TIMEOUT_MS);
    story.check(`check of change ${ch.number} "${ch.subject}": ${b.result}`, b.result === 'passed', describe(b));
  }
  return { changes, ids };
}

/** Gate: the three are approved together; A and C must merge in order, B must be reported failing. */
export async function gateAct(c: Ctx, changes: SampleChange[], ids: Map<number, number>): Promise<Merge[]> {
  const { story, client, repo } = c;
  story.begin('gate: approved changes are tested together, then merged', 'each on master plus the changes ahead of it, at once (Zuul\'s dependent pipeline); a failure is taken out and the ones behind are re-tested without it');
  const before = repo.history(1)[0]!.sha;
  for (const ch of changes) {
    const a = await client.approve(ids.get(ch.number)!);
    story.info(`approved change ${a.change.change},${a.change.patchset} (POST /api/changes/${a.change.id}/approve)`);
  }
  const view = await until('the gate to take the three changes in', async () => {
    const v = await client.gate();
    const items = v.queues.flatMap((q) => q.items);
    const reported = (await gateEvents(client, 'report')).length;
    return items.length >= changes.length || reported > 0 ? v : undefined;
  }, { signal: c.signal, timeoutMs: 30_000, everyMs: 50 });
  for (const q of view.queues) {
    story.info(`queue ${q.name} (window ${q.window}):`);
    for (const i of q.items) story.info(`  ${i.change},${i.patchset} tested on master + [${i.state.join(' ')}]`);
  }

  const reports = await until('a gate report for each change', async () => {
    const r = await gateEvents(client, 'report');
    return r.length >= changes.length ? r : undefined;
  }, { signal: c.signal, timeoutMs: GATE_TIMEOUT_MS });
  const result = new Map(reports.map((e) => [e.change, e.result]));
  const want: Record<string, string> = { '1': 'SUCCESS', '2': 'FAILURE', '3': 'SUCCESS' };
  const gateBuilds = (await client.builds({ project: PROJECT, limit: 50 })).filter((b) => b.pipeline === 'gate').sort((x, y) => x.id - y.id);
  for (const ch of changes) {
    const label = String(ch.number);
    const mine = await Promise.all(gateBuilds.filter((b) => b.change.change === label).map((b) => finished(c, b.id, 60_000)));
    const runs = mine.map((b) => `#${b.id} ${b.result}`).join(', ');
    story.check(`gate verdict on change ${ch.number}: ${result.get(label) ?? 'none'}`, result.get(label) === want[label], `builds ${runs}`);
    if (mine.length > 1) story.info(`its first build set included a change ahead that failed: discarded, and re-tested without it`);
    if (label === '2') {
      const failed = mine.find((b) => b.result === 'failed');
      const log = failed ? await client.log(failed.id, 'test').catch(() => '') : '';
      for (const l of log.split('\n').filter((x) => /^not ok|tests,/.test(x))) story.info(`│ ${sanitizeForTerminal(l)}`);
    }
  }

  const merged = (await gateEvents(client, 'merged')).map((e) => ({ change: e.change, commit: e.commit ?? '', ...(e.build !== undefined ? { build: e.build } : {}) }));
  story.check(`merged in order: ${merged.map((m) => `change ${m.change}`).join(', ') || 'nothing'}`, merged.map((m) => m.change).join(' ') === '1 3');
  const history = repo.history(3);
  const a = changes[0]!;
  const c3 = changes[2]!;
  const exact =
    merged.length === 2 &&
    merged[0]!.commit === a.sha && // A was a fast-forward: the tested commit itself
    history[0]?.sha === merged[1]!.commit &&
    history[1]?.sha === a.sha &&
    history[2]?.sha === before &&
    repo.revParse(`${merged[1]!.commit}^2`) === c3.sha;
  story.check('master moved to exactly the tested commits: it holds changes 1 and 3, never 2', exact && repo.has('farewell.sh') && !repo.has('tests/crowd.sh'));
  for (const h of history) story.info(`${h.sha.slice(0, 10)} ${h.subject}`);
  return merged;
}

/** The gate's outbox (`GET /api/gate/events`), oldest first. */
async function gateEvents(client: CiClient, kind: GateEventKind): Promise<GateEventView[]> {
  const r = await fetch(`${client.server}/api/gate/events?kind=${kind}&limit=100`, { signal: AbortSignal.timeout(10_000) });
  if (!r.ok) throw new Error(`GET /api/gate/events answered ${r.status}`);
  return z.object({ events: z.array(GateEventView) }).parse(await r.json()).events;
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
