/**
 * The needs-ordered job loop both tiers share: order, skipping of dependents (transitively, with
 * the jobs that blocked them), independent jobs still run after a failure, the voting jobs that
 * did not pass, and cancellation before a job and after the last.
 */
import { describe, expect, it } from 'vitest';
import { CancelledError } from '#shared/errors.js';
import { runJobPlan, skipReason, type PlanJob, type RunState } from '#shared/runner/job-plan.js';

const job = (name: string, needs: string[] = [], voting = true): PlanJob => ({ name, needs, voting });

/** Runs `jobs` with each job ending as `ends` says (passed when not named); returns what happened. */
async function plan(jobs: PlanJob[], ends: Record<string, RunState> = {}, signal?: AbortSignal) {
  const events: string[] = [];
  const r = await runJobPlan(jobs, {
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

describe('runJobPlan', () => {
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
        run: async (j) => {
          ran.push(j.name);
          throw new Error('engine gone');
        },
      }),
    ).rejects.toThrow('engine gone');
    expect(ran).toEqual(['a']);
  });
});
