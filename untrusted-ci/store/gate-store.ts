/**
 * GateStore: the gate's durable state in the CI database.
 * - `pipeline_state`: one JSON snapshot of the pipeline model per pipeline, replaced after every
 *   batch of events the model handled;
 * - `gate_events`: an append-only outbox of what the gate decided: `merged` (a change landed:
 *   project, branch, the commit the branch now points at — the trusted tier's hint sender reads
 *   these) and `report` (a change's final verdict). Each batch's snapshot and events are written in
 *   one transaction, so after a crash the model and the outbox agree.
 */
import { z } from 'zod';
import type { Db, Sql } from './sql.js';

export const GateEventKind = z.enum(['merged', 'report', 'start']);
export type GateEventKind = z.infer<typeof GateEventKind>;

export const GateEventView = z.object({
  id: z.number().int(),
  kind: GateEventKind,
  project: z.string(),
  branch: z.string(),
  change: z.string(),
  patchset: z.number().int(),
  result: z.string().optional(),
  message: z.string().optional(),
  commit: z.string().optional(),
  build: z.number().int().optional(),
  createdAt: z.number().int(),
});
export type GateEventView = z.infer<typeof GateEventView>;

export type NewGateEvent = Omit<GateEventView, 'id' | 'createdAt'>;

interface Row {
  id: number;
  kind: GateEventKind;
  project: string;
  branch: string;
  change: string;
  patchset: number;
  result: string | null;
  message: string | null;
  commit_sha: string | null;
  build_id: number | null;
  created_at: number;
}

export class GateStore {
  constructor(
    private readonly db: Db,
    private readonly now: () => number = Date.now,
    /** Checked inside each save's transaction: throws when this process may no longer write the gate's state (lease.ts). */
    private readonly fence?: (t: Sql) => Promise<void>,
  ) {}

  async loadState(pipeline: string): Promise<unknown> {
    const row = await this.db.get<{ json: string }>('SELECT json FROM pipeline_state WHERE pipeline = ?', [pipeline]);
    return row ? (JSON.parse(row.json) as unknown) : undefined;
  }

  /** The model's new snapshot and the events of the same batch, atomically. */
  save(pipeline: string, state: unknown, events: readonly NewGateEvent[]): Promise<void> {
    const json = JSON.stringify(state);
    return this.db.tx(async (t) => {
      await this.fence?.(t);
      await t.run('INSERT INTO pipeline_state (pipeline, json, updated_at) VALUES (?,?,?) ON CONFLICT(pipeline) DO UPDATE SET json = excluded.json, updated_at = excluded.updated_at', [
        pipeline,
        json,
        this.now(),
      ]);
      for (const e of events) {
        await t.run('INSERT INTO gate_events (kind, project, branch, change, patchset, result, message, commit_sha, build_id, created_at) VALUES (?,?,?,?,?,?,?,?,?,?)', [
          e.kind,
          e.project,
          e.branch,
          e.change,
          e.patchset,
          e.result ?? null,
          e.message ?? null,
          e.commit ?? null,
          e.build ?? null,
          this.now(),
        ]);
      }
    });
  }

  /** Events after `after` (an event id), oldest first. */
  async events(q: { kind?: GateEventKind; after?: number; limit?: number } = {}): Promise<GateEventView[]> {
    const where = ['id > ?'];
    const args: (string | number)[] = [q.after ?? 0];
    if (q.kind) (where.push('kind = ?'), args.push(q.kind));
    return (await this.db.all<Row>(`SELECT * FROM gate_events WHERE ${where.join(' AND ')} ORDER BY id LIMIT ?`, [...args, Math.min(q.limit ?? 100, 1000)]))
      .map((r) => ({
        id: r.id,
        kind: r.kind,
        project: r.project,
        branch: r.branch,
        change: r.change,
        patchset: r.patchset,
        ...(r.result !== null ? { result: r.result } : {}),
        ...(r.message !== null ? { message: r.message } : {}),
        ...(r.commit_sha !== null ? { commit: r.commit_sha } : {}),
        ...(r.build_id !== null ? { build: r.build_id } : {}),
        createdAt: r.created_at,
      }));
  }
}
