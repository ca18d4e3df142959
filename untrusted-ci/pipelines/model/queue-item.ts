/**
 * One entry of a change queue (Zuul's `QueueItem`, docs/gate.md "Vocabulary"): a change at one patchset, its
 * place in the queue's tree (`ahead`: the item whose state it is tested on top of; null at the root)
 * and its current build set. A non-live item only lends its change to the state of the items
 * behind it (the check pipeline's dependencies): it runs nothing and is never reported.
 */
import { z } from 'zod';
import { BuildSet, BuildSetJson } from './build-set.js';
import { ChangeKey } from './changes.js';

export const QueueItemJson = z.strictObject({
  id: z.number().int(),
  change: ChangeKey,
  patchset: z.number().int().min(1),
  ahead: z.number().int().nullable(),
  live: z.boolean(),
  active: z.boolean(),
  enqueuedAt: z.number(),
  reportedStart: z.boolean(),
  /** A submit was requested for this item and its answer has not come back yet. */
  submitting: z.boolean(),
  buildSet: BuildSetJson,
});
export type QueueItemJson = z.infer<typeof QueueItemJson>;

export class QueueItem {
  ahead: number | null;
  active: boolean;
  reportedStart: boolean;
  submitting: boolean;
  buildSet: BuildSet;

  private constructor(
    readonly id: number,
    readonly change: ChangeKey,
    readonly patchset: number,
    readonly live: boolean,
    readonly enqueuedAt: number,
    j: { ahead: number | null; active: boolean; reportedStart: boolean; submitting: boolean; buildSet: BuildSet },
  ) {
    this.ahead = j.ahead;
    this.active = j.active;
    this.reportedStart = j.reportedStart;
    this.submitting = j.submitting;
    this.buildSet = j.buildSet;
  }

  static create(o: { id: number; buildSetId: number; change: ChangeKey; patchset: number; live: boolean; ahead: number | null; now: number }): QueueItem {
    return new QueueItem(o.id, o.change, o.patchset, o.live, o.now, {
      ahead: o.ahead,
      active: false,
      reportedStart: false,
      submitting: false,
      buildSet: BuildSet.create(o.buildSetId, o.id, o.change, o.patchset),
    });
  }

  /** `change,patchset`, the label reports and logs use. */
  get label(): string {
    return `${this.change},${this.patchset}`;
  }

  toJSON(): QueueItemJson {
    return {
      id: this.id,
      change: this.change,
      patchset: this.patchset,
      ahead: this.ahead,
      live: this.live,
      active: this.active,
      enqueuedAt: this.enqueuedAt,
      reportedStart: this.reportedStart,
      submitting: this.submitting,
      buildSet: this.buildSet.toJSON(),
    };
  }

  static fromJSON(json: unknown): QueueItem {
    const j = QueueItemJson.parse(json);
    return new QueueItem(j.id, j.change, j.patchset, j.live, j.enqueuedAt, { ...j, buildSet: BuildSet.fromJSON(j.buildSet) });
  }
}
