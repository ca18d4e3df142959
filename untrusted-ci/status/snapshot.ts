/**
 * The status page's snapshot (`StatusView`), read from the sources the API already serves: check
 * builds from the BuildStore (the check pipeline runs each change on its branch tip, so each is an
 * independent item), the gate's queues from `GateRuntime.view()` joined with their builds' job
 * states, and the recent finished builds. Reads only; nothing here decides anything.
 */
import { isAirlockError } from '#shared/errors.js';
import type { BuildView, JobState } from '#shared/schemas/api/builds.js';
import type { GateItemView, GateQueueView, GateView } from '../api/schemas/gate.js';
import type { StatusBuild, StatusHints, StatusItem, StatusJob, StatusPipeline, StatusQueue, StatusView } from '../api/schemas/status.js';
import type { BuildStore } from '../store/build-store.js';

/** How many finished builds the snapshot lists. */
export const HISTORY_LIMIT = 25;
/** Check builds shown at most (queued and running): the page stays small under a flood of submissions. */
const CHECK_ITEMS_LIMIT = 200;

export interface StatusSources {
  store: BuildStore;
  scheduler: { readonly slots: number; readonly busy: number };
  /** The gate; absent where it does not run (its pipeline is then shown empty). */
  gate?: { view(): GateView };
  /** The hint sender's backlog (absent: no hints configured). */
  hints?: () => StatusHints | Promise<StatusHints>;
  now?: () => number;
}

/** The gate model's job verdicts, as the job states the build record uses. */
const STATE_OF_RESULT: Record<string, JobState> = { SUCCESS: 'passed', FAILURE: 'failed', ERROR: 'error', SKIPPED: 'skipped', ABORTED: 'cancelled', CANCELED: 'cancelled' };

export async function statusView(src: StatusSources): Promise<StatusView> {
  const now = (src.now ?? Date.now)();
  const expected = new ExpectedDurations(src.store);
  const check = await checkPipeline(src.store, expected);
  const gate = await gatePipeline(src, expected);
  const history = await src.store.builds({ state: 'finished', limit: HISTORY_LIMIT });
  const hints = src.hints ? await src.hints() : undefined;
  return {
    version: 1,
    generatedAt: now,
    slots: src.scheduler.slots,
    busy: src.scheduler.busy,
    pipelines: [check, gate],
    history,
    ...(hints ? { hints } : {}),
  };
}

/** Recent passing durations, read once per project and job within one snapshot (load, then get). */
class ExpectedDurations {
  private readonly memo = new Map<string, number | undefined>();
  constructor(private readonly store: BuildStore) {}
  private key = (project: string, job: string): string => JSON.stringify([project, job]);
  async load(project: string, jobs: readonly string[]): Promise<void> {
    for (const job of jobs) {
      const key = this.key(project, job);
      if (!this.memo.has(key)) this.memo.set(key, await this.store.recentJobDuration(project, job));
    }
  }
  readonly get: Expected = (project, job) => this.memo.get(this.key(project, job));
}

type Expected = (project: string, job: string) => number | undefined;

/** Unfinished check builds in arrival order, one queue per project. */
async function checkPipeline(store: BuildStore, durations: ExpectedDurations): Promise<StatusPipeline> {
  const expected = durations.get;
  const unfinished = [...(await store.builds({ pipeline: 'check', state: 'running', limit: CHECK_ITEMS_LIMIT })), ...(await store.builds({ pipeline: 'check', state: 'queued', limit: CHECK_ITEMS_LIMIT }))]
    .sort((a, b) => a.id - b.id)
    .slice(0, CHECK_ITEMS_LIMIT);
  const queues = new Map<string, StatusQueue>();
  for (const b of unfinished) {
    await durations.load(b.project, b.jobs.map((j) => j.name));
    let q = queues.get(b.project);
    if (!q) queues.set(b.project, (q = { name: b.project, items: [] }));
    q.items.push({
      project: b.project,
      branch: b.branch,
      change: b.change.change,
      patchset: b.change.patchset,
      ...changeText(b.change),
      testedOn: [],
      active: true,
      live: true,
      failing: [],
      build: buildPart(b),
      jobs: b.jobs.map((j) => statusJob(b.project, j, undefined, expected)),
      enqueuedAt: b.enqueuedAt,
    });
  }
  return { name: 'check', queues: [...queues.values()] };
}

async function gatePipeline(src: StatusSources, durations: ExpectedDurations): Promise<StatusPipeline> {
  const view = src.gate?.view() ?? { queues: [] };
  const queues: StatusQueue[] = [];
  for (const q of view.queues) {
    const items: StatusItem[] = [];
    for (const i of q.items) items.push(await gateItem(src.store, q, i, durations));
    queues.push({ name: q.name, window: q.window, items });
  }
  return { name: 'gate', queues };
}

async function gateItem(store: BuildStore, q: GateQueueView, i: GateItemView, durations: ExpectedDurations): Promise<StatusItem> {
  const expected = durations.get;
  const build = i.build !== undefined ? await buildOrNone(store, i.build) : undefined;
  const change = await store.latestChange(i.project, i.change);
  await durations.load(i.project, [...i.jobs.map((m) => m.name), ...(build?.jobs ?? []).map((j) => j.name)]);
  const byName = new Map((build?.jobs ?? []).map((j) => [j.name, j]));
  // The model's job list once the build set is prepared; the build's own plan until then.
  const jobs = i.jobs.length > 0 ? i.jobs.map((m) => statusJob(i.project, byName.get(m.name) ?? { name: m.name, voting: m.voting, state: 'waiting' }, m.result, expected)) : (build?.jobs ?? []).map((j) => statusJob(i.project, j, undefined, expected));
  return {
    project: i.project,
    branch: change?.branch ?? build?.branch ?? '',
    change: i.change,
    patchset: i.patchset,
    ...(change ? changeText(change) : {}),
    // The speculative state names the item itself last; before it is prepared, the items ahead.
    testedOn: i.state.length > 0 ? i.state.slice(0, -1) : itemsAhead(q, i),
    active: i.active,
    live: i.live,
    failing: i.failing,
    ...(build ? { build: buildPart(build) } : {}),
    jobs,
    enqueuedAt: i.enqueuedAt,
  };
}

/** `change,patchset` of each item ahead of `item`, nearest the branch tip first. */
function itemsAhead(q: GateQueueView, item: GateItemView): string[] {
  const out: string[] = [];
  const seen = new Set<GateItemView>([item]);
  for (let ahead = item.ahead; ahead !== null; ) {
    const next = q.items.find((x) => x.change === ahead && !seen.has(x));
    if (!next) break;
    seen.add(next);
    out.unshift(`${next.change},${next.patchset}`);
    ahead = next.ahead;
  }
  return out;
}

function statusJob(project: string, j: Pick<BuildView['jobs'][number], 'name' | 'voting' | 'state'> & Partial<BuildView['jobs'][number]>, result: string | null | undefined, expected: Expected): StatusJob {
  // A build that is gone (reset, cancelled) leaves the model's verdict as the only word on the job.
  const state = j.state === 'waiting' && result ? (STATE_OF_RESULT[result] ?? 'waiting') : j.state;
  const ms = expected(project, j.name);
  return {
    name: j.name,
    voting: j.voting,
    state,
    ...(result ? { result } : {}),
    ...(j.reason !== undefined ? { reason: j.reason } : {}),
    ...(j.startedAt !== undefined ? { startedAt: j.startedAt } : {}),
    ...(j.finishedAt !== undefined ? { finishedAt: j.finishedAt } : {}),
    ...(ms !== undefined ? { expectedMs: ms } : {}),
    ...(j.timeoutMs !== undefined ? { timeoutMs: j.timeoutMs } : {}),
  };
}

function buildPart(b: BuildView): StatusBuild {
  return {
    id: b.id,
    state: b.state,
    attempt: b.attempt,
    issues: b.issues,
    ...(b.result ? { result: b.result } : {}),
    ...(b.reason !== undefined ? { reason: b.reason } : {}),
    ...(b.startedAt !== undefined ? { startedAt: b.startedAt } : {}),
  };
}

function changeText(c: BuildView['change']): Pick<StatusItem, 'subject' | 'author'> {
  return { author: c.author, ...(c.subject !== undefined ? { subject: c.subject } : {}) };
}

async function buildOrNone(store: BuildStore, id: number): Promise<BuildView | undefined> {
  try {
    return await store.build(id);
  } catch (e) {
    if (isAirlockError(e) && e.code === 'AIRLOCK_E_NOT_FOUND') return undefined;
    throw e;
  }
}
