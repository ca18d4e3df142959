/**
 * The job plan both tiers share. With `concurrency: 1` (the trusted builder's): order, skipping of
 * dependents (transitively, with the jobs that blocked them), independent jobs still run after a
 * failure, the voting jobs that did not pass, and cancellation before a job and after the last.
 * As a graph (the default): independent jobs run at once (seen with a runner the test ends job by
 * job), a diamond, a failure skips only its dependants, cancellation mid-run waits for the running
 * jobs, results in plan order whatever the finishing order, and the concurrency bound.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { CancelledError } from '#shared/errors.js';
import { runJobPlan, skipReason, type PlanJob, type RunState } from '#shared/runner/job-plan.js';

const job = (name: string, needs: string[] = [], voting = true): PlanJob => ({ name, needs, voting });

/** Runs `jobs` with each job ending as `ends` says (passed when not named); returns what happened. */
async function plan(jobs: PlanJob[], ends: Record<string, RunState> = {}, signal?: AbortSignal) {
  const events: string[] = [];
  const r = await runJobPlan(jobs, {
    concurrency: 1,
    ...(signal ? { signal } : {}),
    run: async (j, index) => {
      events.push(`run ${j.name} #${index}`);
      return ends[j.name] ?? 'passed';
    },
    skipped: (j, blocked, index) => {
      events.push(`skip ${j.name} #${index}: ${skipReason(blocked)}`);
    },
  });
  return { ...r, events };
}

describe('runJobPlan, one at a time (concurrency 1)', () => {
  it('runs every job once, in the order given, when all pass', async () => {
    const r = await plan([job('build'), job('unit', ['build']), job('lint'), job('e2e', ['build', 'unit'])]);
    expect(r.events).toEqual(['run build #0', 'run unit #1', 'run lint #2', 'run e2e #3']);
    expect(r.failedVoting).toEqual([]);
    expect(r.voting).toBe(4);
    expect([...r.states.values()]).toEqual(['passed', 'passed', 'passed', 'passed']);
  });

  it('skips the dependents of a failed job (transitively, naming only the needs that did not pass) and still runs the independent ones', async () => {
    const r = await plan([job('build'), job('lint'), job('unit', ['build']), job('e2e', ['lint', 'unit']), job('docs')], { build: 'failed' });
    expect(r.events).toEqual([
      'run build #0',
      'run lint #1',
      'skip unit #2: needs build, which did not pass',
      'skip e2e #3: needs unit, which did not pass',
      'run docs #4',
    ]);
    expect(Object.fromEntries(r.states)).toEqual({ build: 'failed', lint: 'passed', unit: 'skipped', e2e: 'skipped', docs: 'passed' });
    expect(r.failedVoting).toEqual(['build', 'unit', 'e2e']);
  });

  it('names every blocking need, in the order the job lists them; a cancelled job blocks like a failed one', async () => {
    const r = await plan([job('a'), job('b'), job('c', ['b', 'a'])], { a: 'cancelled', b: 'failed' });
    expect(r.events.at(-1)).toBe('skip c #2: needs b, a, which did not pass');
  });

  it('leaves non-voting jobs out of the failures, but their dependents are still skipped', async () => {
    const r = await plan([job('flaky', [], false), job('after', ['flaky']), job('report', ['flaky'], false)], { flaky: 'failed' });
    expect(r.failedVoting).toEqual(['after']);
    expect(r.voting).toBe(1);
    expect(r.states.get('report')).toBe('skipped');
  });

  it('stops before the next job once the signal is aborted, and after the last job', async () => {
    const ac = new AbortController();
    const ran: string[] = [];
    const p = runJobPlan([job('a'), job('b')], {
      concurrency: 1,
      signal: ac.signal,
      run: async (j) => {
        ran.push(j.name);
        ac.abort();
        return 'cancelled';
      },
    });
    await expect(p).rejects.toBeInstanceOf(CancelledError);
    expect(ran).toEqual(['a']);

    const last = new AbortController();
    const q = runJobPlan([job('only')], {
      signal: last.signal,
      run: async () => {
        last.abort();
        return 'passed';
      },
    });
    await expect(q).rejects.toThrow('build cancelled');
  });

  it('runs nothing when aborted before it starts; an error of a job ends the plan there', async () => {
    const ac = new AbortController();
    ac.abort();
    const ran: string[] = [];
    await expect(runJobPlan([job('a')], { signal: ac.signal, run: async (j) => (ran.push(j.name), 'passed') })).rejects.toBeInstanceOf(CancelledError);
    expect(ran).toEqual([]);
    await expect(
      runJobPlan([job('a'), job('b')], {
        concurrency: 1,
        run: async (j) => {
          ran.push(j.name);
          throw new Error('engine gone');
        },
      }),
    ).rejects.toThrow('engine gone');
    expect(ran).toEqual(['a']);
  });
});

/**
 * A runner the test drives: each job runs until the test ends it. `running` is what runs now;
 * `settle()` lets the plan react to what the test did (no timers: it only drains pending work).
 */
class HeldRunner {
  readonly running = new Map<string, (state: RunState | Error) => void>();
  readonly events: string[] = [];
  most = 0;

  readonly run = (j: PlanJob): Promise<RunState> =>
    new Promise<RunState>((resolve, reject) => {
      this.events.push(`start ${j.name}`);
      this.running.set(j.name, (s) => {
        this.running.delete(j.name);
        this.events.push(`end ${j.name}`);
        if (s instanceof Error) reject(s);
        else resolve(s);
      });
      this.most = Math.max(this.most, this.running.size);
    });

  readonly skipped = (j: PlanJob, blocked: readonly string[]): void => {
    this.events.push(`skip ${j.name}: ${blocked.join(', ')}`);
  };

  names(): string[] {
    return [...this.running.keys()].sort();
  }

  async end(name: string, state: RunState | Error = 'passed'): Promise<void> {
    const finish = this.running.get(name);
    if (!finish) throw new Error(`${name} is not running (running: ${this.names().join(', ')})`);
    finish(state);
    await settle();
  }
}

/** Lets every pending promise reaction run (a macrotask comes only after all microtasks). */
async function settle(): Promise<void> {
  for (let i = 0; i < 3; i++) await new Promise<void>((r) => setImmediate(r));
}

/** Whether a promise has settled yet (without waiting for it). */
function watch<T>(p: Promise<T>): { done: () => boolean; p: Promise<T> } {
  let done = false;
  const q = p.finally(() => {
    done = true;
  });
  q.catch(() => undefined);
  return { done: () => done, p: q };
}

describe('runJobPlan as a graph (the default)', () => {
  it('runs independent jobs at the same time, and a job that needs both only once both passed; results in plan order', async () => {
    const r = new HeldRunner();
    const p = watch(runJobPlan([job('a'), job('b'), job('c', ['a', 'b'])], { run: r.run }));
    await settle();
    expect(r.names()).toEqual(['a', 'b']);
    await r.end('b');
    expect(r.names()).toEqual(['a']);
    await r.end('a');
    expect(r.names()).toEqual(['c']);
    await r.end('c');
    const res = await p.p;
    expect(r.most).toBe(2);
    expect([...res.states.entries()]).toEqual([['a', 'passed'], ['b', 'passed'], ['c', 'passed']]);
    expect(r.events).toEqual(['start a', 'start b', 'end b', 'end a', 'start c', 'end c']);
  });

  it('runs a diamond: the two middle jobs at once, the last after both', async () => {
    const r = new HeldRunner();
    const p = runJobPlan([job('build'), job('unit', ['build']), job('lint', ['build']), job('e2e', ['unit', 'lint'])], { run: r.run });
    await settle();
    expect(r.names()).toEqual(['build']);
    await r.end('build');
    expect(r.names()).toEqual(['lint', 'unit']);
    await r.end('lint');
    expect(r.names()).toEqual(['unit']);
    await r.end('unit');
    expect(r.names()).toEqual(['e2e']);
    await r.end('e2e', 'failed');
    const res = await p;
    expect(res.failedVoting).toEqual(['e2e']);
  });

  it('skips only the dependants of a failed job, at once, while the other jobs keep running', async () => {
    const r = new HeldRunner();
    const p = runJobPlan([job('a'), job('b'), job('x', ['a']), job('y', ['b']), job('z', ['x'])], { run: r.run, skipped: r.skipped });
    await settle();
    await r.end('a', 'failed');
    expect(r.events).toEqual(['start a', 'start b', 'end a', 'skip x: a', 'skip z: x']);
    expect(r.names()).toEqual(['b']);
    await r.end('b');
    await r.end('y');
    const res = await p;
    expect(Object.fromEntries(res.states)).toEqual({ a: 'failed', b: 'passed', x: 'skipped', y: 'passed', z: 'skipped' });
    expect(res.failedVoting).toEqual(['a', 'x', 'z']);
  });

  it('cancelled mid-run: starts nothing more, waits for the running jobs to end, then throws CancelledError', async () => {
    const ac = new AbortController();
    const r = new HeldRunner();
    const p = watch(runJobPlan([job('a'), job('b'), job('c', ['a']), job('d')], { run: r.run, skipped: r.skipped, signal: ac.signal, concurrency: 2 }));
    await settle();
    ac.abort();
    await r.end('a');
    expect(r.names()).toEqual(['b']);
    expect(p.done()).toBe(false);
    await r.end('b', 'cancelled');
    await expect(p.p).rejects.toBeInstanceOf(CancelledError);
    expect(r.events).toEqual(['start a', 'start b', 'end a', 'end b']);
  });

  it('an error of one job starts nothing more and is thrown once the running jobs ended', async () => {
    const r = new HeldRunner();
    const p = watch(runJobPlan([job('a'), job('b'), job('c', ['b']), job('d')], { run: r.run, concurrency: 2 }));
    await settle();
    await r.end('a', new Error('engine gone'));
    expect(r.names()).toEqual(['b']);
    expect(p.done()).toBe(false);
    await r.end('b');
    expect(p.done()).toBe(true);
    await expect(p.p).rejects.toThrow('engine gone');
    expect(r.events).toEqual(['start a', 'start b', 'end a', 'end b']);
  });

  it('a job that ends while a skip is being recorded still lets its dependants start', async () => {
    const r = new HeldRunner();
    let recorded: () => void = () => undefined;
    // y comes before x: the pass that records x's skip has already looked at y (b was running then).
    const p = runJobPlan([job('a'), job('b'), job('y', ['b']), job('x', ['a'])], {
      run: r.run,
      // Recording the skip takes a while (the CI writes it to its store): b ends meanwhile.
      skipped: (j) => new Promise<void>((res) => (r.events.push(`skipping ${j.name}`), (recorded = res))),
    });
    await settle();
    await r.end('a', 'failed');
    expect(r.events.at(-1)).toBe('skipping x');
    await r.end('b');
    recorded();
    await settle();
    expect(r.names()).toEqual(['y']);
    await r.end('y');
    expect([...(await p).states.entries()]).toEqual([['a', 'failed'], ['b', 'passed'], ['y', 'passed'], ['x', 'skipped']]);
  });

  it('runs at most `concurrency` jobs at once, starting the ready ones in plan order', async () => {
    const r = new HeldRunner();
    const p = runJobPlan([job('a'), job('b'), job('c'), job('d')], { run: r.run, concurrency: 2 });
    await settle();
    expect(r.names()).toEqual(['a', 'b']);
    await r.end('b');
    expect(r.names()).toEqual(['a', 'c']);
    await r.end('c');
    expect(r.names()).toEqual(['a', 'd']);
    await r.end('a');
    await r.end('d');
    await p;
    expect(r.most).toBe(2);
    await expect(runJobPlan([job('a')], { run: r.run, concurrency: 0 })).rejects.toThrow('at least 1');
  });

  it('whatever the outcomes and the order jobs end in: the same states and failures as one at a time, in plan order, and no job before its needs passed', async () => {
    // A plan: job i needs a subset of the jobs before it; each job's outcome; then the order of ends.
    const arb = fc
      .integer({ min: 1, max: 7 })
      .chain((n) =>
        fc.record({
          needs: fc.tuple(...Array.from({ length: n }, (_, i) => fc.subarray(Array.from({ length: i }, (_, k) => k)))),
          outcomes: fc.array(fc.constantFrom<RunState>('passed', 'passed', 'failed', 'cancelled'), { minLength: n, maxLength: n }),
          voting: fc.array(fc.boolean(), { minLength: n, maxLength: n }),
          picks: fc.array(fc.nat(), { minLength: n, maxLength: n }),
        }),
      );
    await fc.assert(
      fc.asyncProperty(arb, async ({ needs, outcomes, voting, picks }) => {
        const jobs = needs.map((ns, i) => job(`j${i}`, ns.map((k) => `j${k}`), voting[i]!));
        const outcome = (name: string): RunState => outcomes[Number(name.slice(1))]!;
        const serial = await runJobPlan(jobs, { concurrency: 1, run: async (j) => outcome(j.name) });

        const r = new HeldRunner();
        const passed = new Set<string>();
        const p = watch(
          runJobPlan(jobs, {
            run: (j) => {
              for (const n of j.needs) expect(passed.has(n)).toBe(true);
              return r.run(j);
            },
          }),
        );
        await settle();
        for (let step = 0; r.running.size > 0; step++) {
          const names = r.names();
          const name = names[(picks[step % picks.length] ?? 0) % names.length]!;
          if (outcome(name) === 'passed') passed.add(name);
          await r.end(name, outcome(name));
        }
        expect(p.done()).toBe(true);
        const graph = await p.p;
        expect([...graph.states.entries()]).toEqual([...serial.states.entries()]);
        expect([...graph.states.keys()]).toEqual(jobs.map((j) => j.name));
        expect(graph.failedVoting).toEqual(serial.failedVoting);
        expect(graph.voting).toBe(serial.voting);
      }),
      { numRuns: 150 },
    );
  });
});
