/**
 * BuildStore: changes, builds and jobs in SQLite — the durable queue and the record the API serves.
 * All methods are synchronous (better-sqlite3) and each state change is one transaction, so the
 * scheduler's view and the database never disagree after a crash.
 *
 * Build lifecycle: enqueue (queued) → start (running, attempt+1) → finish (finished + result);
 * cancel/supersede may finish a queued build directly. `recover()` at startup turns every `running`
 * build back into `queued` and forgets its job rows: the build is re-run from scratch.
 */
import { ConflictError, NotFoundError, type Issue } from '#shared/errors.js';
import { LOOKUP_PATCHSETS, LOOKUP_PROJECTS, type BuildResult, type BuildState, type BuildView, type ChangeLookup, type ChangeView, type JobState, type JobView, type Pipeline } from '#shared/schemas/api/builds.js';
import type { Db } from './database.js';

export interface NewChange {
  project: string;
  branch: string;
  change: string;
  patchset: number;
  ref: string;
  author: string;
  subject?: string;
  source: string;
}

/** The scheduler's view of a build waiting for or holding a slot. */
export interface QueuedBuild {
  id: number;
  project: string;
  pipeline: Pipeline;
  enqueuedAt: number;
  /** The change's uploader (from the review system) or the API's author: fairness is per uploader. */
  author: string;
}

interface ChangeRow {
  id: number;
  project: string;
  branch: string;
  change: string;
  patchset: number;
  ref: string;
  author: string;
  subject: string | null;
  source: string;
  created_at: number;
}
interface BuildRow {
  id: number;
  change_id: number;
  project: string;
  branch: string;
  pipeline: Pipeline;
  state: BuildState;
  result: BuildResult | null;
  reason: string | null;
  issues: string | null;
  attempt: number;
  enqueued_at: number;
  started_at: number | null;
  finished_at: number | null;
  commit_sha: string | null;
  env_image: string | null;
  env_cached: number | null;
  reported_at: number | null;
}
interface JobRow {
  build_id: number;
  name: string;
  seq: number;
  state: JobState;
  voting: number;
  reason: string | null;
  exit_code: number | null;
  started_at: number | null;
  finished_at: number | null;
  log_bytes: number | null;
  artifacts: string | null;
  timeout_ms: number | null;
}

const opt = <T>(v: T | null): T | undefined => (v === null ? undefined : v);

export class BuildStore {
  constructor(
    private readonly db: Db,
    private readonly now: () => number = Date.now,
  ) {}

  /**
   * Record a change and queue a build for it, in one transaction. A newer patchset of the same
   * change supersedes the older one's unfinished builds of this pipeline: they are returned so the
   * caller can abort the running ones. An older patchset than one already known is refused.
   */
  enqueue(c: NewChange, pipeline: Pipeline): { change: ChangeView; buildId: number; superseded: number[] } {
    return this.db.transaction(() => {
      const newest = this.db
        .prepare<[string, string], { p: number | null }>('SELECT MAX(patchset) AS p FROM changes WHERE project = ? AND change = ?')
        .get(c.project, c.change);
      if (newest?.p != null && newest.p > c.patchset) {
        throw new ConflictError(`change ${c.change} of ${c.project} is already at patchset ${newest.p}; patchset ${c.patchset} is outdated`);
      }
      const changeId = this.changeRow(c);
      const superseded = this.db
        .prepare<[string, string, number, Pipeline], { id: number }>(
          `SELECT b.id FROM builds b JOIN changes ch ON ch.id = b.change_id
           WHERE ch.project = ? AND ch.change = ? AND ch.patchset < ? AND b.pipeline = ? AND b.state != 'finished'`,
        )
        .all(c.project, c.change, c.patchset, pipeline)
        .map((r) => r.id);
      const buildId = Number(
        this.db
          .prepare("INSERT INTO builds (change_id, project, branch, pipeline, state, enqueued_at) VALUES (?,?,?,?,'queued',?)")
          .run(changeId, c.project, c.branch, pipeline, this.now()).lastInsertRowid,
      );
      return { change: this.changeView(changeId), buildId, superseded };
    })();
  }

  /** The row of this change at this patchset, inserted if new. */
  private changeRow(c: NewChange): number {
    const existing = this.db
      .prepare<[string, string, number], ChangeRow>('SELECT * FROM changes WHERE project = ? AND change = ? AND patchset = ?')
      .get(c.project, c.change, c.patchset);
    if (existing) return existing.id;
    return Number(
      this.db
        .prepare('INSERT INTO changes (project, branch, change, patchset, ref, author, subject, source, created_at) VALUES (?,?,?,?,?,?,?,?,?)')
        .run(c.project, c.branch, c.change, c.patchset, c.ref, c.author, c.subject ?? null, c.source, this.now()).lastInsertRowid,
    );
  }

  /** Unfinished builds of one pipeline for any patch set of a change (an abandoned or private change's builds are stopped). */
  unfinishedOf(project: string, change: string, pipeline: Pipeline): number[] {
    return this.db
      .prepare<[string, string, Pipeline], { id: number }>(
        `SELECT b.id FROM builds b JOIN changes ch ON ch.id = b.change_id WHERE ch.project = ? AND ch.change = ? AND b.pipeline = ? AND b.state != 'finished' ORDER BY b.id`,
      )
      .all(project, change, pipeline)
      .map((r) => r.id);
  }

  /** Record a change (an approval may name a patchset no build has run for yet); no build. */
  recordChange(c: NewChange): ChangeView {
    return this.db.transaction(() => this.changeView(this.changeRow(c)))();
  }

  /** The newest patchset recorded for a change, if any. */
  latestChange(project: string, change: string): ChangeView | undefined {
    const row = this.db
      .prepare<[string, string], { id: number }>('SELECT id FROM changes WHERE project = ? AND change = ? ORDER BY patchset DESC LIMIT 1')
      .get(project, change);
    return row ? this.changeView(row.id) : undefined;
  }

  /** A change by its review-system id, in every project (or one) that has it: see ChangeLookup. Bounded. */
  lookupChange(q: { change: string; project?: string; patchset?: number }): ChangeLookup {
    const projects = this.db
      .prepare<(string | number)[], { project: string; current: number }>(
        `SELECT project, MAX(patchset) AS current FROM changes WHERE change = ?${q.project !== undefined ? ' AND project = ?' : ''} GROUP BY project ORDER BY project LIMIT ?`,
      )
      .all(...[q.change, ...(q.project !== undefined ? [q.project] : []), LOOKUP_PROJECTS + 1]);
    const patchsets = this.db.prepare<(string | number)[], { patchset: number; build: number | null }>(
      `SELECT c.patchset, (SELECT MAX(b.id) FROM builds b WHERE b.change_id = c.id) AS build FROM changes c
       WHERE c.project = ? AND c.change = ?${q.patchset !== undefined ? ' AND c.patchset = ?' : ''} ORDER BY c.patchset DESC LIMIT ?`,
    );
    return {
      changes: projects.slice(0, LOOKUP_PROJECTS).map((p) => ({
        project: p.project,
        change: q.change,
        current: p.current,
        patchsets: patchsets
          .all(...[p.project, q.change, ...(q.patchset !== undefined ? [q.patchset] : []), LOOKUP_PATCHSETS])
          .map((r) => ({ patchset: r.patchset, ...(r.build !== null ? { build: r.build } : {}) })),
      })),
      more: projects.length > LOOKUP_PROJECTS,
    };
  }

  /**
   * A gate build: runs build set `buildSet` of the gate's model, on the branch with `stack` merged
   * in order (the changes ahead, then this one). Queued like any build; never superseded by the
   * store (the gate model decides when it is cancelled).
   */
  enqueueGateBuild(changeId: number, stack: { ref: string; label: string }[], buildSet: number): number {
    const c = this.changeView(changeId);
    return Number(
      this.db
        .prepare("INSERT INTO builds (change_id, project, branch, pipeline, state, enqueued_at, gate_buildset, stack) VALUES (?,?,?,'gate','queued',?,?,?)")
        .run(changeId, c.project, c.branch, this.now(), buildSet, JSON.stringify(stack)).lastInsertRowid,
    );
  }

  /** What a gate build merges and which build set it runs; undefined for other builds. */
  gateBuild(id: number): { buildSet: number; stack: { ref: string; label: string }[]; base: string | null; commit: string | null } | undefined {
    const row = this.db
      .prepare<[number], { gate_buildset: number | null; stack: string | null; base_sha: string | null; commit_sha: string | null }>(
        'SELECT gate_buildset, stack, base_sha, commit_sha FROM builds WHERE id = ?',
      )
      .get(id);
    if (!row || row.gate_buildset === null || row.stack === null) return undefined;
    return { buildSet: row.gate_buildset, stack: JSON.parse(row.stack) as { ref: string; label: string }[], base: row.base_sha, commit: row.commit_sha };
  }

  /** The highest build set id any gate build names (0 if none). */
  maxGateBuildSet(): number {
    return this.db.prepare<[], { m: number | null }>('SELECT MAX(gate_buildset) AS m FROM builds').get()?.m ?? 0;
  }

  /** The newest gate build of a build set. */
  buildForBuildSet(buildSet: number): number | undefined {
    return this.db.prepare<[number], { id: number }>('SELECT id FROM builds WHERE gate_buildset = ? ORDER BY id DESC LIMIT 1').get(buildSet)?.id;
  }

  /** The state a gate build's own change was merged onto: what the branch must still be at when it is submitted. */
  setBase(id: number, base: string): void {
    this.db.prepare('UPDATE builds SET base_sha = ? WHERE id = ?').run(base, id);
  }

  /** Finish every unfinished build of a pipeline as cancelled (the gate re-runs its work after a restart). */
  cancelUnfinished(pipeline: Pipeline, reason: string): number[] {
    return this.db.transaction(() => {
      const ids = this.db
        .prepare<[Pipeline], { id: number }>("SELECT id FROM builds WHERE pipeline = ? AND state != 'finished'")
        .all(pipeline)
        .map((r) => r.id);
      for (const id of ids) this.finish(id, 'cancelled', reason);
      return ids;
    })();
  }

  /** Queued builds in arrival order (the scheduler applies fairness on top). */
  queued(limit = 10_000): QueuedBuild[] {
    return this.db
      .prepare<[number], { id: number; project: string; pipeline: Pipeline; enqueued_at: number; author: string }>(
        "SELECT b.id, b.project, b.pipeline, b.enqueued_at, c.author FROM builds b JOIN changes c ON c.id = b.change_id WHERE b.state = 'queued' ORDER BY b.id LIMIT ?",
      )
      .all(limit)
      .map((r) => ({ id: r.id, project: r.project, pipeline: r.pipeline, enqueuedAt: r.enqueued_at, author: r.author }));
  }

  /** queued → running; false when the build is no longer queued (cancelled meanwhile). */
  start(id: number): boolean {
    const r = this.db.prepare("UPDATE builds SET state = 'running', started_at = ?, attempt = attempt + 1 WHERE id = ? AND state = 'queued'").run(this.now(), id);
    return r.changes === 1;
  }

  /** Remember what a build runs on (and pins, for the image GC of another process). */
  setCommit(id: number, commit: string): void {
    this.db.prepare('UPDATE builds SET commit_sha = ? WHERE id = ?').run(commit, id);
  }
  setEnvironment(id: number, image: string, cached: boolean): void {
    this.db.prepare('UPDATE builds SET env_image = ?, env_cached = ? WHERE id = ?').run(image, cached ? 1 : 0, id);
  }

  /** The jobs a build will run, in order; replaces any earlier plan of the same build. */
  planJobs(id: number, jobs: { name: string; voting: boolean; timeoutMs?: number }[]): void {
    this.db.transaction(() => {
      this.db.prepare('DELETE FROM jobs WHERE build_id = ?').run(id);
      const ins = this.db.prepare("INSERT INTO jobs (build_id, name, seq, state, voting, timeout_ms) VALUES (?,?,?,'waiting',?,?)");
      jobs.forEach((j, i) => ins.run(id, j.name, i, j.voting ? 1 : 0, j.timeoutMs ?? null));
    })();
  }

  /** How long job `name` of `project` took on average in its last `runs` passing runs (ms); undefined if it never passed. */
  recentJobDuration(project: string, name: string, runs = 5): number | undefined {
    const row = this.db
      .prepare<[string, string, number], { ms: number | null }>(
        `SELECT AVG(ms) AS ms FROM (
           SELECT j.finished_at - j.started_at AS ms FROM jobs j JOIN builds b ON b.id = j.build_id
           WHERE j.name = ? AND j.state = 'passed' AND b.project = ? AND j.started_at IS NOT NULL AND j.finished_at IS NOT NULL
           ORDER BY j.build_id DESC LIMIT ?)`,
      )
      .get(name, project, runs);
    return row?.ms == null ? undefined : Math.round(row.ms);
  }

  updateJob(
    id: number,
    name: string,
    u: { state: JobState; reason?: string; exitCode?: number; logBytes?: number; artifacts?: { path: string; bytes: number }[] },
  ): void {
    const t = this.now();
    this.db
      .prepare(
        `UPDATE jobs SET state = ?, reason = COALESCE(?, reason), exit_code = COALESCE(?, exit_code), log_bytes = COALESCE(?, log_bytes),
           artifacts = COALESCE(?, artifacts),
           started_at = CASE WHEN ? = 'running' THEN ? ELSE started_at END,
           finished_at = CASE WHEN ? IN ('passed','failed','skipped','cancelled','error') THEN ? ELSE finished_at END
         WHERE build_id = ? AND name = ?`,
      )
      .run(u.state, u.reason ?? null, u.exitCode ?? null, u.logBytes ?? null, u.artifacts ? JSON.stringify(u.artifacts) : null, u.state, t, u.state, t, id, name);
  }

  /** → finished with a result; idempotent (a second finish of a finished build changes nothing). */
  finish(id: number, result: BuildResult, reason: string, issues: readonly Issue[] = []): boolean {
    return this.db.transaction(() => {
      const r = this.db
        .prepare("UPDATE builds SET state = 'finished', result = ?, reason = ?, issues = ?, finished_at = ? WHERE id = ? AND state != 'finished'")
        .run(result, reason, issues.length ? JSON.stringify(issues) : null, this.now(), id);
      if (r.changes === 1) {
        // Jobs that never got to run end with the build.
        const end: JobState = result === 'cancelled' || result === 'superseded' ? 'cancelled' : 'skipped';
        this.db.prepare("UPDATE jobs SET state = ?, finished_at = ? WHERE build_id = ? AND state IN ('waiting','running')").run(end, this.now(), id);
      }
      return r.changes === 1;
    })();
  }

  /** Records a webhook delivery id; true when it was seen before (a redelivery to ignore). */
  seenEvent(eventId: string): boolean {
    return this.db.prepare('INSERT OR IGNORE INTO seen_events (event_id, seen_at) VALUES (?, ?)').run(eventId, this.now()).changes === 0;
  }

  /** Undo `seenEvent` when acting on the event failed, so a redelivery is acted on. */
  forgetEvent(eventId: string): void {
    this.db.prepare('DELETE FROM seen_events WHERE event_id = ?').run(eventId);
  }

  markReported(id: number): void {
    this.db.prepare('UPDATE builds SET reported_at = ? WHERE id = ?').run(this.now(), id);
  }

  /** Finished builds whose result has not reached the reporter yet (e.g. the process died in between). */
  unreported(): number[] {
    return this.db.prepare<[], { id: number }>("SELECT id FROM builds WHERE state = 'finished' AND reported_at IS NULL ORDER BY id").all().map((r) => r.id);
  }

  /** running → queued, to be run again from scratch (a retryable failure outside the change). */
  requeue(id: number): void {
    this.db.transaction(() => {
      this.db.prepare('DELETE FROM jobs WHERE build_id = ?').run(id);
      this.db.prepare("UPDATE builds SET state = 'queued', started_at = NULL, commit_sha = NULL, env_image = NULL, env_cached = NULL WHERE id = ? AND state = 'running'").run(id);
    })();
  }

  /** Restart recovery: every build that was running is queued again from scratch. Returns their ids. */
  recover(): number[] {
    return this.db.transaction(() => {
      const ids = this.db.prepare<[], { id: number }>("SELECT id FROM builds WHERE state = 'running'").all().map((r) => r.id);
      for (const id of ids) this.requeue(id);
      return ids;
    })();
  }

  /** Environment images that queued or running builds need: the image GC must keep them. */
  pinnedImages(): string[] {
    return this.db
      .prepare<[], { env_image: string }>("SELECT DISTINCT env_image FROM builds WHERE state != 'finished' AND env_image IS NOT NULL")
      .all()
      .map((r) => r.env_image);
  }

  build(id: number): BuildView {
    const row = this.db.prepare<[number], BuildRow>('SELECT * FROM builds WHERE id = ?').get(id);
    if (!row) throw new NotFoundError(`no build #${id}`);
    return this.buildView(row);
  }

  builds(q: { project?: string; pipeline?: Pipeline; state?: BuildState; change?: number; limit?: number; before?: number }): BuildView[] {
    const where: string[] = [];
    const args: (string | number)[] = [];
    if (q.project) (where.push('project = ?'), args.push(q.project));
    if (q.pipeline) (where.push('pipeline = ?'), args.push(q.pipeline));
    if (q.state) (where.push('state = ?'), args.push(q.state));
    if (q.change !== undefined) (where.push('change_id = ?'), args.push(q.change));
    if (q.before !== undefined) (where.push('id < ?'), args.push(q.before));
    const sql = `SELECT * FROM builds ${where.length ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY id DESC LIMIT ?`;
    return this.db
      .prepare<(string | number)[], BuildRow>(sql)
      .all(...args, Math.min(q.limit ?? 50, 500))
      .map((r) => this.buildView(r));
  }

  /** Finished builds for retention: id, result, finish time and job names. */
  finishedBuilds(): { buildId: number; result: BuildResult; finishedAt: number; jobs: string[] }[] {
    const rows = this.db.prepare<[], { id: number; result: BuildResult; finished_at: number }>("SELECT id, result, finished_at FROM builds WHERE state = 'finished'").all();
    const jobs = this.db.prepare<[number], { name: string }>('SELECT name FROM jobs WHERE build_id = ?');
    return rows.map((r) => ({ buildId: r.id, result: r.result, finishedAt: r.finished_at, jobs: jobs.all(r.id).map((j) => j.name) }));
  }

  changeView(id: number): ChangeView {
    const c = this.db.prepare<[number], ChangeRow>('SELECT * FROM changes WHERE id = ?').get(id);
    if (!c) throw new NotFoundError(`no change ${id}`);
    return {
      id: c.id,
      project: c.project,
      branch: c.branch,
      change: c.change,
      patchset: c.patchset,
      ref: c.ref,
      author: c.author,
      ...(c.subject !== null ? { subject: c.subject } : {}),
      source: c.source,
      createdAt: c.created_at,
    };
  }

  counts(): { queued: number; running: number } {
    const rows = this.db.prepare<[], { state: BuildState; n: number }>("SELECT state, COUNT(*) AS n FROM builds WHERE state != 'finished' GROUP BY state").all();
    return { queued: rows.find((r) => r.state === 'queued')?.n ?? 0, running: rows.find((r) => r.state === 'running')?.n ?? 0 };
  }

  private buildView(b: BuildRow): BuildView {
    const jobs = this.db.prepare<[number], JobRow>('SELECT * FROM jobs WHERE build_id = ? ORDER BY seq').all(b.id);
    return {
      id: b.id,
      pipeline: b.pipeline,
      project: b.project,
      branch: b.branch,
      change: this.changeView(b.change_id),
      state: b.state,
      ...(b.result ? { result: b.result } : {}),
      ...(b.reason !== null ? { reason: b.reason } : {}),
      issues: b.issues ? (JSON.parse(b.issues) as Issue[]) : [],
      attempt: b.attempt,
      enqueuedAt: b.enqueued_at,
      ...(b.started_at !== null ? { startedAt: b.started_at } : {}),
      ...(b.finished_at !== null ? { finishedAt: b.finished_at } : {}),
      ...(b.commit_sha ? { commit: b.commit_sha } : {}),
      ...(b.env_image ? { environment: { image: b.env_image, cached: b.env_cached === 1 } } : {}),
      jobs: jobs.map((j) => jobView(j)),
    };
  }
}

function jobView(j: JobRow): JobView {
  return {
    name: j.name,
    state: j.state,
    voting: j.voting === 1,
    ...(j.reason !== null ? { reason: j.reason } : {}),
    ...(opt(j.exit_code) !== undefined ? { exitCode: j.exit_code! } : {}),
    ...(j.started_at !== null ? { startedAt: j.started_at } : {}),
    ...(j.finished_at !== null ? { finishedAt: j.finished_at } : {}),
    ...(j.log_bytes !== null ? { logBytes: j.log_bytes } : {}),
    artifacts: j.artifacts ? (JSON.parse(j.artifacts) as { path: string; bytes: number }[]) : [],
    ...(j.timeout_ms !== null ? { timeoutMs: j.timeout_ms } : {}),
  };
}
