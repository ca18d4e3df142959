/**
 * What drives a pipeline manager and what it asks of the world (docs/conventions.md "One event loop").
 *
 * Events in: *results* (a prepare, a build or a submit came back) and *triggers* (facts about a
 * change, a request to enqueue it, an abandon). A manager applies a batch's results before its
 * triggers — results can only stop work — and then processes its queues until nothing changes.
 *
 * Effects out: requests for the world (prepare a state, start or cancel builds, submit) and
 * records (reports, merges, ended build sets). Every answer names the build set or item it
 * belongs to; an answer for a build set that was reset meanwhile is ignored, so the world never has
 * to know which requests are still wanted.
 */
import type { BuildSetJson, JobNode, StateEntry } from './build-set.js';
import type { ChangeKey, ChangeRecord } from './changes.js';

/**
 * The facts about a change at its current patchset: the model's record of it without its status
 * (which the model keeps itself). A higher patchset replaces the old one.
 */
export type ChangeFacts = Omit<ChangeRecord, 'status'>;

export type TriggerEvent =
  /** Insert or update a change. A new patchset dequeues the old one's items. */
  | { type: 'change'; change: ChangeFacts }
  /** Check: test this change. Gate: enqueue it if it is ready (approved, its needs ready too). */
  | { type: 'enqueue'; change: ChangeKey }
  /** Approval given or taken back, at `patchset` when known (ignored if that is no longer current). */
  | { type: 'approval'; change: ChangeKey; approved: boolean; patchset?: number }
  | { type: 'abandon'; change: ChangeKey }
  /** An abandoned change was restored (it may be enqueued again). */
  | { type: 'restore'; change: ChangeKey }
  /** The change merged outside this pipeline (someone else submitted it). */
  | { type: 'merged-elsewhere'; change: ChangeKey };

/** The answer to a `prepare` effect. `jobs` may be empty (the change has no jobs in this pipeline). */
export type PrepareOutcome = { kind: 'ok'; jobs: JobNode[] } | { kind: 'conflict'; message: string } | { kind: 'config-error'; message: string };

/** A build's own result; ABORTED is the model's to give. */
export type BuildOutcomeResult = 'SUCCESS' | 'FAILURE' | 'ERROR';

export type ResultEvent =
  | { type: 'prepared'; buildSet: number; outcome: PrepareOutcome }
  | { type: 'build-completed'; buildSet: number; job: string; result: BuildOutcomeResult }
  | { type: 'submitted'; item: number; merged: boolean; message?: string };

export type PipelineEvent = TriggerEvent | ResultEvent;

export function isResultEvent(e: PipelineEvent): e is ResultEvent {
  return e.type === 'prepared' || e.type === 'build-completed' || e.type === 'submitted';
}

/**
 * A change's final report.
 * - SUCCESS: check passed, or (gate) it passed and merged;
 * - FAILURE: a voting job failed, or it could not be enqueued (a dependency in another queue, a cycle);
 * - MERGE_CONFLICT, CONFIG_ERROR: its state could not be built or configured;
 * - DEPENDENCY_FAILED: a change it needs left the queue without merging;
 * - DEQUEUED: abandoned, a new patchset, approval removed;
 * - MERGE_FAILURE: it passed but the review system did not merge it (it refused the submit, or
 *   the change was no longer approved, open or current when read again);
 * - NO_JOBS: no job of this pipeline applies to it (the gate does not merge it).
 */
export type ReportResult = 'SUCCESS' | 'FAILURE' | 'MERGE_CONFLICT' | 'CONFIG_ERROR' | 'DEPENDENCY_FAILED' | 'DEQUEUED' | 'MERGE_FAILURE' | 'NO_JOBS';

export type Effect =
  /** Build this state (`state` from the root to the item, the item last) and answer `prepared`. */
  | { type: 'prepare'; buildSet: number; item: number; queue: string; change: ChangeKey; patchset: number; state: StateEntry[] }
  /** Run this job on the build set's state and answer `build-completed`. */
  | { type: 'start-build'; buildSet: number; item: number; change: ChangeKey; job: JobNode; state: StateEntry[] }
  /** Stop these builds; their results, if they still come, are ignored. */
  | { type: 'cancel-builds'; buildSet: number; jobs: string[] }
  /** Move the branch(es) to this build set's tested state and answer `submitted`. */
  | { type: 'submit'; item: number; buildSet: number; change: ChangeKey; patchset: number; state: StateEntry[] }
  | { type: 'report-start'; item: number; change: ChangeKey; patchset: number }
  | { type: 'report'; item: number | null; change: ChangeKey; patchset: number; result: ReportResult; message: string }
  /** The change merged through this pipeline (the trusted tier's hint sender listens for this). */
  | { type: 'merged'; item: number; buildSet: number; change: ChangeKey; patchset: number; project: string; branch: string }
  /** A build set ended (history): its final record, with `fate`. */
  | { type: 'build-set-ended'; buildSet: BuildSetJson }
  | { type: 'window'; queue: string; window: number };
