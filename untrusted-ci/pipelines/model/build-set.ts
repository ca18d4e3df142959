/**
 * One attempt at testing a queue item against one speculative state (Zuul's `BuildSet`,
 * docs/gate.md "Speculative state"). The state is fixed the first time the item is prepared: the changes of every item
 * from the root of its tree down to the item itself. A reset throws the build set away and starts a
 * new one; results never carry over from another state.
 *
 * Lifecycle: created (no state) → `configure(state)` when first prepared (merge `pending`) →
 * `mergeCompleted(jobs)` or `unableToMerge(message)` or `configError(message)` → builds start and
 * finish → `end(fate)` once, when the item is reported, reset or dequeued.
 */
import { z } from 'zod';
import { ChangeKey } from './changes.js';

/** A job as the pipeline sees it: a name, whether it votes, and the jobs it waits for. */
export const JobNode = z.strictObject({
  name: z.string().min(1).max(200),
  voting: z.boolean(),
  needs: z.array(z.string().min(1).max(200)).max(100),
});
export type JobNode = z.infer<typeof JobNode>;

/** A build's result. ABORTED is set by the model when it cancels a running build. */
export const JobResult = z.enum(['SUCCESS', 'FAILURE', 'ERROR', 'SKIPPED', 'ABORTED']);
export type JobResult = z.infer<typeof JobResult>;

export const BuildRecord = z.strictObject({
  result: JobResult.nullable(),
  startedAt: z.number(),
  endedAt: z.number().nullable(),
});
export type BuildRecord = z.infer<typeof BuildRecord>;

/** One change in a speculative state, with what the merger needs to fetch it. */
export const StateEntry = z.strictObject({
  change: ChangeKey,
  patchset: z.number().int().min(1),
  project: z.string(),
  branch: z.string(),
  ref: z.string().nullable(),
});
export type StateEntry = z.infer<typeof StateEntry>;

/** How a build set ended. The check pipeline's passed/failed; the gate's merged/failed; either's reset/dequeued. */
export const Fate = z.enum(['merged', 'failed', 'passed', 'reset', 'dequeued']);
export type Fate = z.infer<typeof Fate>;

export const BuildSetJson = z.strictObject({
  id: z.number().int(),
  item: z.number().int(),
  change: ChangeKey,
  patchset: z.number().int(),
  state: z.array(StateEntry).nullable(),
  merge: z.enum(['none', 'pending', 'complete']),
  unableToMerge: z.string().nullable(),
  configError: z.string().nullable(),
  jobs: z.array(JobNode).nullable(),
  builds: z.record(z.string(), BuildRecord),
  failingReasons: z.array(z.string()),
  preparedAt: z.number().nullable(),
  endedAt: z.number().nullable(),
  fate: Fate.nullable(),
});
export type BuildSetJson = z.infer<typeof BuildSetJson>;

/** A voting failure: anything but SUCCESS and SKIPPED (Zuul `Build.failed`). */
export function isFailed(r: JobResult | null): boolean {
  return r !== null && r !== 'SUCCESS' && r !== 'SKIPPED';
}

export class BuildSet {
  private constructor(private readonly j: BuildSetJson) {}

  static create(id: number, item: number, change: ChangeKey, patchset: number): BuildSet {
    return new BuildSet({
      id,
      item,
      change,
      patchset,
      state: null,
      merge: 'none',
      unableToMerge: null,
      configError: null,
      jobs: null,
      builds: {},
      failingReasons: [],
      preparedAt: null,
      endedAt: null,
      fate: null,
    });
  }

  get id(): number {
    return this.j.id;
  }
  get item(): number {
    return this.j.item;
  }
  get change(): ChangeKey {
    return this.j.change;
  }
  get state(): readonly StateEntry[] | null {
    return this.j.state;
  }
  get merge(): 'none' | 'pending' | 'complete' {
    return this.j.merge;
  }
  get unableToMerge(): string | null {
    return this.j.unableToMerge;
  }
  get configError(): string | null {
    return this.j.configError;
  }
  get jobs(): readonly JobNode[] | null {
    return this.j.jobs;
  }
  get failingReasons(): readonly string[] {
    return this.j.failingReasons;
  }
  set failingReasons(r: readonly string[]) {
    this.j.failingReasons = [...r];
  }
  get fate(): Fate | null {
    return this.j.fate;
  }
  /** True once the state was fixed (Zuul: `build_set.ref` is set). */
  get configured(): boolean {
    return this.j.state !== null;
  }
  build(job: string): BuildRecord | undefined {
    return this.j.builds[job];
  }

  configure(state: StateEntry[], now: number): void {
    this.j.state = state;
    this.j.merge = 'pending';
    this.j.preparedAt = now;
  }

  /** The merge and the job list came back. An empty list is a valid (no-jobs) outcome. */
  mergeCompleted(jobs: JobNode[]): void {
    this.j.merge = 'complete';
    this.j.jobs = jobs;
  }

  setUnableToMerge(message: string): void {
    this.j.merge = 'complete';
    this.j.unableToMerge = message;
    this.j.jobs = [];
  }

  setConfigError(message: string): void {
    this.j.merge = 'complete';
    this.j.configError = message;
    this.j.jobs = [];
  }

  startBuild(job: string, now: number): void {
    this.j.builds[job] = { result: null, startedAt: now, endedAt: null };
  }

  /** Record a result; false if that build is not running (a stale or duplicate report). */
  completeBuild(job: string, result: JobResult, now: number): boolean {
    const b = this.j.builds[job];
    if (!b || b.result !== null) return false;
    b.result = result;
    b.endedAt = now;
    return true;
  }

  skip(job: string, now: number): void {
    this.j.builds[job] = { result: 'SKIPPED', startedAt: now, endedAt: now };
  }

  /** Builds still running. */
  running(): string[] {
    return Object.entries(this.j.builds)
      .filter(([, b]) => b.result === null)
      .map(([n]) => n);
  }

  /** Mark every running build ABORTED; returns their names. */
  abortRunning(now: number): string[] {
    const names = this.running();
    for (const n of names) this.completeBuild(n, 'ABORTED', now);
    return names;
  }

  /** Zuul `areAllJobsComplete`: a merge conflict or config error completes it; else every job has a result. */
  allJobsComplete(): boolean {
    if (this.j.unableToMerge !== null || this.j.configError !== null) return true;
    if (this.j.merge !== 'complete' || this.j.jobs === null) return false;
    return this.j.jobs.every((job) => {
      const b = this.j.builds[job.name];
      return b !== undefined && b.result !== null;
    });
  }

  /** Zuul `hasAnyJobFailed`: a voting job failed (non-voting jobs never make an item fail). */
  anyVotingJobFailed(): boolean {
    return (this.j.jobs ?? []).some((job) => job.voting && isFailed(this.j.builds[job.name]?.result ?? null));
  }

  /** Zuul `didAllJobsSucceed`: every voting job SUCCESS or SKIPPED, and not every job skipped. */
  allVotingJobsSucceeded(): boolean {
    const jobs = this.j.jobs ?? [];
    if (jobs.length === 0) return false;
    if (jobs.every((job) => this.j.builds[job.name]?.result === 'SKIPPED')) return false;
    return jobs.every((job) => {
      if (!job.voting) return true;
      const r = this.j.builds[job.name]?.result;
      return r === 'SUCCESS' || r === 'SKIPPED';
    });
  }

  end(fate: Fate, now: number): void {
    if (this.j.fate !== null) return;
    this.j.fate = fate;
    this.j.endedAt = now;
  }

  toJSON(): BuildSetJson {
    return structuredClone(this.j);
  }

  static fromJSON(json: unknown): BuildSet {
    return new BuildSet(BuildSetJson.parse(json));
  }
}
