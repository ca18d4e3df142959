/**
 * The gate's metrics: a real DependentPipelineManager driven with events as the gate runtime
 * drives it (one batch at a time, the residents taken before each), its batches observed into the
 * CI's real Prometheus registry, and the scraped text read back.
 */
import { describe, expect, it } from 'vitest';
import { createCiMetrics } from '../../../untrusted-ci/api/metrics.js';
import { gateQueues, observeBatch, residents } from '../../../untrusted-ci/pipelines/gate-metrics.js';
import { DependentPipelineManager } from '../../../untrusted-ci/pipelines/managers/dependent.js';
import { changeKey } from '../../../untrusted-ci/pipelines/model/changes.js';
import type { Effect, PipelineEvent } from '../../../untrusted-ci/pipelines/model/events.js';
import { WindowConfig } from '../../../untrusted-ci/pipelines/model/window.js';

class Gate {
  now = 0;
  readonly m: DependentPipelineManager;
  readonly metrics = createCiMetrics({ queued: () => ({ check: 0, gate: 0 }), busy: () => 0, slots: 1, gateQueues: () => gateQueues(this.m) });
  /** Builds the model started and that have not finished: [build set, job, change]. */
  running: { buildSet: number; job: string; change: string }[] = [];

  constructor(window: Partial<WindowConfig>) {
    this.m = new DependentPipelineManager({ now: () => this.now, window: WindowConfig.parse(window), queues: {} });
  }

  /** One batch, as GateRuntime.drain hands it in; prepares and submits are answered in later batches. */
  send(events: PipelineEvent[]): void {
    for (let batch = events; batch.length > 0; ) {
      const before = residents(this.m);
      const effects = this.m.handle(batch);
      observeBatch(this.metrics.gate, 'gate', before, this.m, effects, this.now);
      batch = this.answer(effects);
    }
  }

  private answer(effects: Effect[]): PipelineEvent[] {
    const out: PipelineEvent[] = [];
    for (const e of effects) {
      if (e.type === 'prepare') out.push({ type: 'prepared', buildSet: e.buildSet, outcome: { kind: 'ok', jobs: [{ name: 'unit', voting: true, needs: [] }] } });
      else if (e.type === 'start-build') this.running.push({ buildSet: e.buildSet, job: e.job.name, change: e.change });
      else if (e.type === 'cancel-builds') this.running = this.running.filter((b) => b.buildSet !== e.buildSet);
      else if (e.type === 'submit') out.push({ type: 'submitted', item: e.item, merged: true });
    }
    return out;
  }

  enqueue(project: string, change: string): void {
    const id = changeKey(project, change);
    this.send([
      { type: 'change', change: { id, project, branch: 'master', patchset: 1, needs: [], approved: false, ref: `refs/changes/${change}/1` } },
      { type: 'approval', change: id, approved: true },
    ]);
  }

  /** Finish the running build of `change`. */
  finish(project: string, change: string, result: 'SUCCESS' | 'FAILURE'): void {
    const b = this.running.find((r) => r.change === changeKey(project, change));
    expect(b, `a running build of ${change}`).toBeDefined();
    this.running = this.running.filter((r) => r !== b);
    this.send([{ type: 'build-completed', buildSet: b!.buildSet, job: b!.job, result }]);
  }

  async scrape(): Promise<string> {
    return this.metrics.registry.metrics();
  }
}

const sample = (body: string, name: string): number | undefined => {
  const esc = name.replace(/[{}"\\[\]().+*?^$|]/g, '\\$&');
  const m = new RegExp(`^${esc} (\\S+)$`, 'm').exec(body);
  return m ? Number(m[1]) : undefined;
};

describe('gate metrics', () => {
  it('counts the resets a failing head causes, shrinks the window, and times each item from enqueue to dequeue', async () => {
    const g = new Gate({ initial: 8, floor: 2, decreaseFactor: 2, increase: 1 });
    g.now = 1_000;
    g.enqueue('org/app', '1');
    g.now = 2_000;
    g.enqueue('org/app', '2');
    g.enqueue('org/lib', '3');
    expect(g.running.map((r) => r.change)).toEqual(['org/app~1', 'org/app~2', 'org/lib~3']);
    let body = await g.scrape();
    expect(sample(body, 'airlock_ci_gate_queue_items{queue="org/app"}')).toBe(2);
    expect(sample(body, 'airlock_ci_gate_window{queue="org/app"}')).toBe(8);
    expect(body).not.toMatch(/^airlock_ci_gate_resets_total\{/m);

    // The head fails at 61 s: the one item behind it in its queue is reset (its build set starts over).
    g.now = 61_000;
    g.finish('org/app', '1', 'FAILURE');
    body = await g.scrape();
    expect(sample(body, 'airlock_ci_gate_resets_total{pipeline="gate",project="org/app"}')).toBe(1);
    expect(sample(body, 'airlock_ci_gate_resident_seconds_count{pipeline="gate",project="org/app"}')).toBe(1);
    expect(sample(body, 'airlock_ci_gate_resident_seconds_sum{pipeline="gate",project="org/app"}')).toBe(60);
    expect(sample(body, 'airlock_ci_gate_resident_seconds_bucket{le="30",pipeline="gate",project="org/app"}')).toBe(0);
    expect(sample(body, 'airlock_ci_gate_resident_seconds_bucket{le="60",pipeline="gate",project="org/app"}')).toBe(1);
    expect(sample(body, 'airlock_ci_gate_window{queue="org/app"}')).toBe(4);
    expect(sample(body, 'airlock_ci_gate_queue_items{queue="org/app"}')).toBe(1);

    // Change 2, tested again on the branch alone, passes and merges at 122 s; the window grows.
    g.now = 122_000;
    g.finish('org/app', '2', 'SUCCESS');
    g.finish('org/lib', '3', 'SUCCESS');
    body = await g.scrape();
    expect(sample(body, 'airlock_ci_gate_resident_seconds_count{pipeline="gate",project="org/app"}')).toBe(2);
    expect(sample(body, 'airlock_ci_gate_resident_seconds_sum{pipeline="gate",project="org/app"}')).toBe(180);
    expect(sample(body, 'airlock_ci_gate_resident_seconds_sum{pipeline="gate",project="org/lib"}')).toBe(120);
    expect(sample(body, 'airlock_ci_gate_window{queue="org/app"}')).toBe(5);
    expect(sample(body, 'airlock_ci_gate_queue_items{queue="org/app"}')).toBe(0);
    expect(sample(body, 'airlock_ci_gate_resets_total{pipeline="gate",project="org/app"}')).toBe(1);
    expect(sample(body, 'airlock_ci_gate_resets_total{pipeline="gate",project="org/lib"}')).toBeUndefined();
  });
});

describe('egress metrics', () => {
  it('counts each request of a network: packages run by kind, source and outcome', async () => {
    const m = createCiMetrics({ queued: () => ({ check: 0, gate: 0 }), busy: () => 0, slots: 1 });
    m.egress('jobs', 'npm', 'hit');
    m.egress('jobs', 'npm', 'hit');
    m.egress('environments', 'other', 'refused');
    const body = await m.registry.metrics();
    expect(sample(body, 'airlock_ci_egress_requests_total{kind="jobs",source="npm",outcome="hit"}')).toBe(2);
    expect(sample(body, 'airlock_ci_egress_requests_total{kind="environments",source="other",outcome="refused"}')).toBe(1);
  });
});
