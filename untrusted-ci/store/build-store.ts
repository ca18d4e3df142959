/**
 * BuildStore: changes, builds and jobs in the CI database — the durable queue and the record the API serves.
 * Each state change is one transaction (on either engine, see sql.ts), so the scheduler's view
 * and the database never disagree after a crash.
 *
 * Build lifecycle: enqueue (queued) → start (running, attempt+1) → finish (finished + result);
 * cancel/supersede may finish a queued build directly. `recover()` at startup turns every `running`
 * build back into `queued` and forgets its job rows: the build is re-run from scratch.
 */
import { ConflictError, NotFoundError, type Issue } from '#shared/errors.js';
import { LOOKUP_PATCHSETS, LOOKUP_PROJECTS, type BuildResult, type BuildState, type BuildView, type ChangeLookup, type ChangeView, type JobState, type JobView, type Pipeline } from '#shared/schemas/api/builds.js';
import type { Db, Sql, SqlValue } from './sql.js';

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

/**
 * What changed in the queue, for the scheduler's cached group heads (scheduler/queue-heads.ts): an
 * uploader's builds of a project, a project, a whole pipeline, or (none given) anything. Told after
 * the write committed.
 */
export type QueueChange = { pipeline?: Pipeline; project?: string; author?: string };

export class BuildStore {
  readonly #queueListeners = new Set<(c: QueueChange) => void>();

  constructor(
    private readonly db: Db,
    private readonly now: () => number = Date.now,
  ) {}

  /**
   * Be told of writes through this store that may change which builds are queued (enqueue, a
   * queued build finished, a build queued again, recovery). Starts are not told: the scheduler
   * makes them and knows. Writes by other processes are not seen either: a listener that caches
   * must read again now and then. Returns the unsubscribe.
   */
  onQueueChange(listener: (c: QueueChange) => void): () => void {
    this.#queueListeners.add(listener);
    return () => this.#queueListeners.delete(listener);
  }

  #queueChanged(c: QueueChange): void {
    for (const l of this.#queueListeners) l(c);
  }

  /**
   * Record a change and queue a build for it, in one transaction. A newer patchset of the same
   * change supersedes the older one's unfinished builds of this pipeline: they are returned so the
   * caller can abort the running ones. An older patchset than one already known is refused.
   */
  async enqueue(c: NewChange, pipeline: Pipeline): Promise<{ change: ChangeView; buildId: number; superseded: number[] }> {
    const r = await this.db.tx(async (t) => {
      const newest = await t.get<{ p: number | null }>('SELECT MAX(patchset) AS p FROM changes WHERE project = ? AND change = ?', [c.project, c.change]);
      if (newest?.p != null && newest.p > c.patchset) {
        throw new ConflictError(`change ${c.change} of ${c.project} is already at patchset ${newest.p}; patchset ${c.patchset} is outdated`);
      }
      const changeId = await this.changeRow(t, c);
      const superseded = (
        await t.all<{ id: number }>(
          `SELECT b.id FROM builds b JOIN changes ch ON ch.id = b.change_id
           WHERE ch.project = ? AND ch.change = ? AND ch.patchset < ? AND b.pipeline = ? AND b.state != 'finished' ORDER BY b.id`,
          [c.project, c.change, c.patchset, pipeline],
        )
      ).map((r) => r.id);
      const change = await this.changeView(changeId, t);
      const buildId = await insertId(t, "INSERT INTO builds (change_id, project, branch, pipeline, state, enqueued_at, author) VALUES (?,?,?,?,'queued',?,?) RETURNING id", [
        changeId,
        c.project,
        c.branch,
        pipeline,
        this.now(),
        change.author,
      ]);
      return { change, buildId, superseded };
    });
    this.#queueChanged({ pipeline, project: c.project, author: r.change.author });
    return r;
  }

  /** The row of this change at this patchset, inserted if new. */
  private async changeRow(t: Sql, c: NewChange): Promise<number> {
    const existing = await t.get<{ id: number }>('SELECT id FROM changes WHERE project = ? AND change = ? AND patchset = ?', [c.project, c.change, c.patchset]);
    if (existing) return existing.id;
    return insertId(t, 'INSERT INTO changes (project, branch, change, patchset, ref, author, subject, source, created_at) VALUES (?,?,?,?,?,?,?,?,?) RETURNING id', [
      c.project,
      c.branch,
      c.change,
      c.patchset,
      c.ref,
      c.author,
      c.subject ?? null,
      c.source,
      this.now(),
    ]);
  }

  /** Unfinished builds of one pipeline for any patch set of a change (an abandoned or private change's builds are stopped). */
  async unfinishedOf(project: string, change: string, pipeline: Pipeline): Promise<number[]> {
    return (
      await this.db.all<{ id: number }>(
        `SELECT b.id FROM builds b JOIN changes ch ON ch.id = b.change_id WHERE ch.project = ? AND ch.change = ? AND b.pipeline = ? AND b.state != 'finished' ORDER BY b.id`,
        [project, change, pipeline],
      )
    ).map((r) => r.id);
  }

  /** Record a change (an approval may name a patchset no build has run for yet); no build. */
  recordChange(c: NewChange): Promise<ChangeView> {
    return this.db.tx(async (t) => this.changeView(await this.changeRow(t, c), t));
  }

  /** The newest patchset recorded for a change, if any. */
  async latestChange(project: string, change: string): Promise<ChangeView | undefined> {
    const row = await this.db.get<{ id: number }>('SELECT id FROM changes WHERE project = ? AND change = ? ORDER BY patchset DESC LIMIT 1', [project, change]);
    return row ? this.changeView(row.id) : undefined;
  }

  /** A change by its review-system id, in every project (or one) that has it: see ChangeLookup. Bounded. */
  async lookupChange(q: { change: string; project?: string; patchset?: number }): Promise<ChangeLookup> {
    const projects = await this.db.all<{ project: string; current: number }>(
      `SELECT project, MAX(patchset) AS current FROM changes WHERE change = ?${q.project !== undefined ? ' AND project = ?' : ''} GROUP BY project ORDER BY project LIMIT ?`,
      [q.change, ...(q.project !== undefined ? [q.project] : []), LOOKUP_PROJECTS + 1],
    );
    const changes: ChangeLookup['changes'] = [];
    for (const p of projects.slice(0, LOOKUP_PROJECTS)) {
      const patchsets = await this.db.all<{ patchset: number; build: number | null }>(
        `SELECT c.patchset, (SELECT MAX(b.id) FROM builds b WHERE b.change_id = c.id) AS build FROM changes c
         WHERE c.project = ? AND c.change = ?${q.patchset !== undefined ? ' AND c.patchset = ?' : ''} ORDER BY c.patchset DESC LIMIT ?`,
        [p.project, q.change, ...(q.patchset !== undefined ? [q.patchset] : []), LOOKUP_PATCHSETS],
      );
      changes.push({
        project: p.project,
        change: q.change,
        current: p.current,
        patchsets: patchsets.map((r) => ({ patchset: r.patchset, ...(r.build !== null ? { build: r.build } : {}) })),
      });
    }
    return { changes, more: projects.length > LOOKUP_PROJECTS };
  }

  /**
   * A gate build: runs build set `buildSet` of the gate's model, on the branch with `stack` merged
   * in order (the changes ahead, then this one). Queued like any build; never superseded by the
   * store (the gate model decides when it is cancelled).
   */
  async enqueueGateBuild(changeId: number, stack: { ref: string; label: string }[], buildSet: number): Promise<number> {
    const id = await this.db.tx(async (t) => {
      const c = await this.changeView(changeId, t);
      return insertId(t, "INSERT INTO builds (change_id, project, branch, pipeline, state, enqueued_at, gate_buildset, stack, author) VALUES (?,?,?,'gate','queued',?,?,?,?) RETURNING id", [
        changeId,
        c.project,
        c.branch,
        this.now(),
        buildSet,
        JSON.stringify(stack),
        c.author,
      ]);
    });
    this.#queueChanged({ pipeline: 'gate' });
    return id;
  }

  /** What a gate build merges and which build set it runs; undefined for other builds. */
  async gateBuild(id: number): Promise<{ buildSet: number; stack: { ref: string; label: string }[]; base: string | null; commit: string | null } | undefined> {
    const row = await this.db.get<{ gate_buildset: number | null; stack: string | null; base_sha: string | null; commit_sha: string | null }>(
      'SELECT gate_buildset, stack, base_sha, commit_sha FROM builds WHERE id = ?',
      [id],
    );
    if (!row || row.gate_buildset === null || row.stack === null) return undefined;
    return { buildSet: row.gate_buildset, stack: JSON.parse(row.stack) as { ref: string; label: string }[], base: row.base_sha, commit: row.commit_sha };
  }

  /** The highest build set id any gate build names (0 if none). */
  async maxGateBuildSet(): Promise<number> {
    return (await this.db.get<{ m: number | null }>('SELECT MAX(gate_buildset) AS m FROM builds'))?.m ?? 0;
  }

  /** The newest gate build of a build set. */
  async buildForBuildSet(buildSet: number): Promise<number | undefined> {
    return (await this.db.get<{ id: number }>('SELECT id FROM builds WHERE gate_buildset = ? ORDER BY id DESC LIMIT 1', [buildSet]))?.id;
  }

  /** The state a gate build's own change was merged onto: what the branch must still be at when it is submitted. */
  async setBase(id: number, base: string): Promise<void> {
    await this.db.run('UPDATE builds SET base_sha = ? WHERE id = ?', [base, id]);
  }

  /** Finish every unfinished build of a pipeline as cancelled (the gate re-runs its work after a restart). */
  async cancelUnfinished(pipeline: Pipeline, reason: string): Promise<number[]> {
    const cancelled = await this.db.tx(async (t) => {
      const ids = (await t.all<{ id: number }>("SELECT id FROM builds WHERE pipeline = ? AND state != 'finished' ORDER BY id", [pipeline])).map((r) => r.id);
      for (const id of ids) await this.finishIn(t, id, 'cancelled', reason, []);
      return ids;
    });
    if (cancelled.length > 0) this.#queueChanged({ pipeline });
    return cancelled;
  }

  /** Queued builds in arrival order (the scheduler applies fairness on top). */
  async queued(limit = 10_000): Promise<QueuedBuild[]> {
    return (
      await this.db.all<{ id: number; project: string; pipeline: Pipeline; enqueued_at: number; author: string }>(
        "SELECT b.id, b.project, b.pipeline, b.enqueued_at, c.author FROM builds b JOIN changes c ON c.id = b.change_id WHERE b.state = 'queued' ORDER BY b.id LIMIT ?",
        [limit],
      )
    ).map((r) => ({ id: r.id, project: r.project, pipeline: r.pipeline, enqueuedAt: r.enqueued_at, author: r.author }));
  }

  /**
   * The projects with queued builds of a pipeline, each with its oldest one's id: what the fair
   * queue chooses a project from (scheduler/fair-queue.ts `pickNextFrom`). Read by index seeks, one
   * per project (a skip scan), not by reading the queue: its cost grows with the projects waiting,
   * not with the builds.
   */
  async queuedProjects(pipeline: Pipeline): Promise<{ project: string; id: number }[]> {
    return this.db.all<{ project: string; id: number }>(
      `WITH RECURSIVE p(project) AS (
         SELECT MIN(project) FROM builds WHERE state = 'queued' AND pipeline = ?
         UNION ALL
         SELECT (SELECT MIN(b.project) FROM builds b WHERE b.state = 'queued' AND b.pipeline = ? AND b.project > p.project) FROM p WHERE p.project IS NOT NULL
       )
       SELECT p.project AS project, (SELECT MIN(b.id) FROM builds b WHERE b.state = 'queued' AND b.pipeline = ? AND b.project = p.project) AS id FROM p WHERE p.project IS NOT NULL`,
      [pipeline, pipeline, pipeline],
    );
  }

  /** Of one project's queued builds of a pipeline, each uploader's oldest (a skip scan, as queuedProjects). */
  async queuedUploaders(pipeline: Pipeline, project: string): Promise<{ author: string; id: number }[]> {
    return this.db.all<{ author: string; id: number }>(
      `WITH RECURSIVE a(author) AS (
         SELECT MIN(author) FROM builds WHERE state = 'queued' AND pipeline = ? AND project = ?
         UNION ALL
         SELECT (SELECT MIN(b.author) FROM builds b WHERE b.state = 'queued' AND b.pipeline = ? AND b.project = ? AND b.author > a.author) FROM a WHERE a.author IS NOT NULL
       )
       SELECT a.author AS author, (SELECT MIN(b.id) FROM builds b WHERE b.state = 'queued' AND b.pipeline = ? AND b.project = ? AND b.author = a.author) AS id FROM a WHERE a.author IS NOT NULL`,
      [pipeline, project, pipeline, project, pipeline, project],
    );
  }

  /** A project's oldest queued build of a pipeline (one index seek): what a cached head is read again from. */
  async queuedHead(pipeline: Pipeline, project: string): Promise<number | undefined> {
    const r = await this.db.get<{ id: number | null }>("SELECT MIN(id) AS id FROM builds WHERE state = 'queued' AND pipeline = ? AND project = ?", [pipeline, project]);
    return r?.id == null ? undefined : Number(r.id);
  }

  /** An uploader's oldest queued build of a project and pipeline (one index seek). */
  async queuedAuthorHead(pipeline: Pipeline, project: string, author: string): Promise<number | undefined> {
    const r = await this.db.get<{ id: number | null }>("SELECT MIN(id) AS id FROM builds WHERE state = 'queued' AND pipeline = ? AND project = ? AND author = ?", [pipeline, project, author]);
    return r?.id == null ? undefined : Number(r.id);
  }

  /** One queued build as the scheduler sees it (undefined once it is no longer queued). */
  async queuedBuild(id: number): Promise<QueuedBuild | undefined> {
    const r = await this.db.get<{ id: number; project: string; pipeline: Pipeline; enqueued_at: number; author: string }>(
      "SELECT id, project, pipeline, enqueued_at, author FROM builds WHERE id = ? AND state = 'queued'",
      [id],
    );
    return r ? { id: r.id, project: r.project, pipeline: r.pipeline, enqueuedAt: r.enqueued_at, author: r.author } : undefined;
  }

  /** queued → running; false when the build is no longer queued (cancelled meanwhile). */
  async start(id: number): Promise<boolean> {
    const r = await this.db.run("UPDATE builds SET state = 'running', started_at = ?, attempt = attempt + 1 WHERE id = ? AND state = 'queued'", [this.now(), id]);
    return r.changes === 1;
  }

  /** Remember what a build runs on (and pins, for the image GC of another process). */
  async setCommit(id: number, commit: string): Promise<void> {
    await this.db.run('UPDATE builds SET commit_sha = ? WHERE id = ?', [commit, id]);
  }
  async setEnvironment(id: number, image: string, cached: boolean): Promise<void> {
    await this.db.run('UPDATE builds SET env_image = ?, env_cached = ? WHERE id = ?', [image, cached ? 1 : 0, id]);
  }

  /** The jobs a build will run, in order; replaces any earlier plan of the same build. */
  planJobs(id: number, jobs: { name: string; voting: boolean; timeoutMs?: number }[]): Promise<void> {
    return this.db.tx(async (t) => {
      await t.run('DELETE FROM jobs WHERE build_id = ?', [id]);
      for (const [i, j] of jobs.entries()) {
        await t.run("INSERT INTO jobs (build_id, name, seq, state, voting, timeout_ms) VALUES (?,?,?,'waiting',?,?)", [id, j.name, i, j.voting ? 1 : 0, j.timeoutMs ?? null]);
      }
    });
  }

  /** How long job `name` of `project` took on average in its last `runs` passing runs (ms); undefined if it never passed. */
  async recentJobDuration(project: string, name: string, runs = 5): Promise<number | undefined> {
    const row = await this.db.get<{ ms: number | null }>(
      `SELECT AVG(ms) AS ms FROM (
         SELECT j.finished_at - j.started_at AS ms FROM jobs j JOIN builds b ON b.id = j.build_id
         WHERE j.name = ? AND j.state = 'passed' AND b.project = ? AND j.started_at IS NOT NULL AND j.finished_at IS NOT NULL
         ORDER BY j.build_id DESC LIMIT ?) recent`,
      [name, project, runs],
    );
    return row?.ms == null ? undefined : Math.round(row.ms);
  }

  async updateJob(
    id: number,
    name: string,
    u: { state: JobState; reason?: string; exitCode?: number; logBytes?: number; artifacts?: { path: string; bytes: number }[] },
  ): Promise<void> {
    const t = this.now();
    const ends = ['passed', 'failed', 'skipped', 'cancelled', 'error'].includes(u.state);
    await this.db.run(
      `UPDATE jobs SET state = ?, reason = COALESCE(?, reason), exit_code = COALESCE(?, exit_code), log_bytes = COALESCE(?, log_bytes),
         artifacts = COALESCE(?, artifacts), started_at = COALESCE(?, started_at), finished_at = COALESCE(?, finished_at)
       WHERE build_id = ? AND name = ?`,
      [
        u.state,
        u.reason ?? null,
        u.exitCode ?? null,
        u.logBytes ?? null,
        u.artifacts ? JSON.stringify(u.artifacts) : null,
        u.state === 'running' ? t : null,
        ends ? t : null,
        id,
        name,
      ],
    );
  }

  /**
   * → finished with a result; idempotent (a second finish of a finished build changes nothing).
   * With `attempt`, only that run of it: a run that another process started again since (a
   * leader that lost its lease and did not know yet) records nothing over its successor's.
   */
  async finish(id: number, result: BuildResult, reason: string, issues: readonly Issue[] = [], attempt?: number): Promise<boolean> {
    const done = await this.db.tx((t) => this.finishIn(t, id, result, reason, issues, undefined, attempt));
    // Without `attempt` the build may have been queued (a cancel of an orphan); with it, it is the
    // run's own build, running.
    if (done && attempt === undefined) this.#queueChanged({});
    return done;
  }

  /**
   * → finished, only from queued; false when it is not queued (running, or finished). What a cancel
   * uses: a build that became running meanwhile is its runner's to stop, not to be marked over.
   */
  async finishQueued(id: number, result: BuildResult, reason: string): Promise<boolean> {
    const done = await this.db.tx((t) => this.finishIn(t, id, result, reason, [], 'queued'));
    if (done) this.#queueChanged({});
    return done;
  }

  private async finishIn(t: Sql, id: number, result: BuildResult, reason: string, issues: readonly Issue[], from?: 'queued', attempt?: number): Promise<boolean> {
    const r = await t.run(
      `UPDATE builds SET state = 'finished', result = ?, reason = ?, issues = ?, finished_at = ? WHERE id = ? AND ${from === 'queued' ? "state = 'queued'" : "state != 'finished'"}${attempt === undefined ? '' : ' AND attempt = ?'}`,
      [result, reason, issues.length ? JSON.stringify(issues) : null, this.now(), id, ...(attempt === undefined ? [] : [attempt])],
    );
    if (r.changes === 1) {
      // Jobs that never got to run end with the build.
      const end: JobState = result === 'cancelled' || result === 'superseded' ? 'cancelled' : 'skipped';
      await t.run("UPDATE jobs SET state = ?, finished_at = ? WHERE build_id = ? AND state IN ('waiting','running')", [end, this.now(), id]);
    }
    return r.changes === 1;
  }

  /** Records a webhook delivery id; true when it was seen before (a redelivery to ignore). */
  async seenEvent(eventId: string): Promise<boolean> {
    return (await this.db.run('INSERT INTO seen_events (event_id, seen_at) VALUES (?, ?) ON CONFLICT (event_id) DO NOTHING', [eventId, this.now()])).changes === 0;
  }

  /** Undo `seenEvent` when acting on the event failed, so a redelivery is acted on. */
  async forgetEvent(eventId: string): Promise<void> {
    await this.db.run('DELETE FROM seen_events WHERE event_id = ?', [eventId]);
  }

  async markReported(id: number): Promise<void> {
    await this.db.run('UPDATE builds SET reported_at = ? WHERE id = ?', [this.now(), id]);
  }

  /** Finished builds whose result has not reached the reporter yet (e.g. the process died in between). */
  async unreported(): Promise<number[]> {
    return (await this.db.all<{ id: number }>("SELECT id FROM builds WHERE state = 'finished' AND reported_at IS NULL ORDER BY id")).map((r) => r.id);
  }

  /** running → queued, to be run again from scratch (a retryable failure outside the change); with `attempt`, only that run (see finish). */
  async requeue(id: number, attempt?: number): Promise<void> {
    if (await this.db.tx((t) => this.requeueIn(t, id, attempt))) this.#queueChanged({});
  }

  private async requeueIn(t: Sql, id: number, attempt?: number): Promise<boolean> {
    const r = await t.run(
      `UPDATE builds SET state = 'queued', started_at = NULL, commit_sha = NULL, env_image = NULL, env_cached = NULL WHERE id = ? AND state = 'running'${attempt === undefined ? '' : ' AND attempt = ?'}`,
      [id, ...(attempt === undefined ? [] : [attempt])],
    );
    if (r.changes === 1) await t.run('DELETE FROM jobs WHERE build_id = ?', [id]);
    return r.changes === 1;
  }

  /** Restart recovery: every build that was running is queued again from scratch. Returns their ids. */
  async recover(): Promise<number[]> {
    const requeued = await this.db.tx(async (t) => {
      const ids = (await t.all<{ id: number }>("SELECT id FROM builds WHERE state = 'running' ORDER BY id")).map((r) => r.id);
      for (const id of ids) await this.requeueIn(t, id);
      return ids;
    });
    if (requeued.length > 0) this.#queueChanged({});
    return requeued;
  }

  /** Environment images that queued or running builds need: the image GC must keep them. */
  async pinnedImages(): Promise<string[]> {
    return (await this.db.all<{ env_image: string }>("SELECT DISTINCT env_image FROM builds WHERE state != 'finished' AND env_image IS NOT NULL")).map((r) => r.env_image);
  }

  async build(id: number): Promise<BuildView> {
    const row = await this.db.get<BuildRow>('SELECT * FROM builds WHERE id = ?', [id]);
    if (!row) throw new NotFoundError(`no build #${id}`);
    return this.buildView(row);
  }

  async builds(q: { project?: string; pipeline?: Pipeline; state?: BuildState; change?: number; limit?: number; before?: number }): Promise<BuildView[]> {
    const where: string[] = [];
    const args: (string | number)[] = [];
    if (q.project) (where.push('project = ?'), args.push(q.project));
    if (q.pipeline) (where.push('pipeline = ?'), args.push(q.pipeline));
    if (q.state) (where.push('state = ?'), args.push(q.state));
    if (q.change !== undefined) (where.push('change_id = ?'), args.push(q.change));
    if (q.before !== undefined) (where.push('id < ?'), args.push(q.before));
    const sql = `SELECT * FROM builds ${where.length ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY id DESC LIMIT ?`;
    const rows = await this.db.all<BuildRow>(sql, [...args, Math.min(q.limit ?? 50, 500)]);
    const out: BuildView[] = [];
    for (const r of rows) out.push(await this.buildView(r));
    return out;
  }

  /** Finished builds for retention: id, result, finish time and job names. */
  async finishedBuilds(): Promise<{ buildId: number; result: BuildResult; finishedAt: number; jobs: string[] }[]> {
    const rows = await this.db.all<{ id: number; result: BuildResult; finished_at: number }>("SELECT id, result, finished_at FROM builds WHERE state = 'finished' ORDER BY id");
    const jobs = new Map<number, string[]>();
    for (const j of await this.db.all<{ build_id: number; name: string }>("SELECT j.build_id, j.name FROM jobs j JOIN builds b ON b.id = j.build_id WHERE b.state = 'finished' ORDER BY j.build_id, j.seq")) {
      let names = jobs.get(j.build_id);
      if (!names) jobs.set(j.build_id, (names = []));
      names.push(j.name);
    }
    return rows.map((r) => ({ buildId: r.id, result: r.result, finishedAt: r.finished_at, jobs: jobs.get(r.id) ?? [] }));
  }

  async changeView(id: number, on: Sql = this.db): Promise<ChangeView> {
    const c = await on.get<ChangeRow>('SELECT * FROM changes WHERE id = ?', [id]);
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

  async counts(): Promise<{ queued: number; running: number }> {
    const rows = await this.db.all<{ state: BuildState; n: number }>("SELECT state, COUNT(*) AS n FROM builds WHERE state != 'finished' GROUP BY state");
    return { queued: rows.find((r) => r.state === 'queued')?.n ?? 0, running: rows.find((r) => r.state === 'running')?.n ?? 0 };
  }

  private async buildView(b: BuildRow): Promise<BuildView> {
    const jobs = await this.db.all<JobRow>('SELECT * FROM jobs WHERE build_id = ? ORDER BY seq', [b.id]);
    return {
      id: b.id,
      pipeline: b.pipeline,
      project: b.project,
      branch: b.branch,
      change: await this.changeView(b.change_id),
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

/** Insert a row and return its id (the statement ends in `RETURNING id`). */
async function insertId(t: Sql, sql: string, params: readonly SqlValue[]): Promise<number> {
  const row = await t.get<{ id: number }>(sql, params);
  if (!row) throw new Error(`no id returned by: ${sql.slice(0, 60)}`);
  return row.id;
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
