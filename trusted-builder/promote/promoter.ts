/**
 * The promoter: what the trusted builder does with a hint. A hint is only a trigger; every fact
 * is re-derived here, in order, each decision an audit record:
 *
 *   policy      the project is listed in policies/promotion.yaml (else refused)
 *   verify      the builder's own fetch of the canonical repository has the commit on a protected
 *               branch (else refused); it descends from the last commit of that branch promoted (no
 *               old commits, no rewinds); and every commit it adds came through review, as the
 *               review system itself reports it to the builder's own read-only account, with the
 *               approvals the policy requires (verify/review.ts; else refused)
 *   config      `.airlock.yaml` read from that commit in the builder's own mirror; its `publish`
 *               section names the Dockerfile of the published image (else refused)
 *   dependencies every file the lockfiles `.airlock.yaml` names, fetched by the builder from the
 *               sources the policy allows and checked against its digest (trusted-builder/deps/);
 *               a weak or missing digest, a git source, a mismatch: refused
 *   tests       the project's gate jobs re-run in the hardened runner, on the builder's own
 *               archive of the commit, in an environment the builder made itself (a pinned base
 *               image, or its Dockerfile built here without cache); a step the secrets policy
 *               grants secrets gets them as read-only tmpfs files; a voting failure ends it
 *   build       the publish image, hermetically (network off, no cache, pinned bases only)
 *   leak check  every secret value in use is searched for in the image's layers and config, the
 *               job logs and the build log (raw, base64, JSON-escaped…); a hit ends it, unpushed
 *   push        that very export of the image to the registry (the embargo lane: to its own), with
 *               retries; the digest the registry serves is kept
 *   sign        a simple-signing signature of that digest in the lookaside, and a detached
 *               signature over an in-toto/SLSA provenance statement next to it (naming the
 *               reviewed changes, their approvers and submitters)
 * Promotions run one at a time, in arrival order; a commit already promoted (or queued) is not
 * promoted again (hints arrive at least once).
 *
 * This file is the queue and the orchestration. Each step is its own module under stages/ with a
 * port of only what it needs; pipeline.ts runs them in order for a lane; lanes.ts describes the
 * public lane and the embargo lane's private one, which run the same stages (embargo-lane.ts).
 */
import { randomUUID } from 'node:crypto';
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { InternalError, isAirlockError } from '#shared/errors.js';
import { retry } from '#shared/retry.js';
import { phaseClock } from '#shared/phase-clock.js';
import type { Logger } from '#shared/logging.js';
import type { PromotionHint } from '#shared/schemas/promotion-hint.js';
import type { HintSink } from '../api/app.js';
import type { EmbargoNotifier } from '../notify/webhook.js';
import type { PromotedProject } from '../policy/promotion.js';
import { embargoLane, type EmbargoPort } from './embargo-lane.js';
import { publicLane } from './lanes.js';
import { buildLane, realStages, type PromotionStages } from './pipeline.js';
import { Stop } from './stages/lane.js';

export { PublishSection } from './stages/config.js';
export type { EmbargoPort } from './embargo-lane.js';
export type { PromotionStages } from './pipeline.js';
import type { StageParts } from './pipeline.js';
import type { RegistryCredentials } from '../publish/registry.js';
import type { PromotionState } from './promotion-store.js';

/** What the promoter is made of: the stages' parts (pipeline.ts), and its own. */
export interface PromoterDeps extends StageParts {
  /** The builder's login to the public registry (the policy's `registry`). */
  registryCredentials: RegistryCredentials;
  lookasideDir: string;
  workDir: string;
  logger: Logger;
  /** The embargo lane: active embargoed patches of each promoted project (absent: the lane is off). */
  embargo?: EmbargoPort;
  /** Warnings to the security team when an embargoed patch breaks. */
  notifier?: EmbargoNotifier;
  /** Signatures and provenance of private images (never served without authentication). */
  privateLookasideDir?: string;
  /** The builder's login to the embargo lane's own registry (the policy's `embargoRegistry`); needed with `embargo`. */
  embargoRegistryCredentials?: RegistryCredentials;
  now?: () => number;
  /**
   * Stages run instead of the real ones (pipeline.ts `realStages`), each on its own: the
   * orchestration is the same whatever the stages are made of (the pure-tier tests give stages
   * that need no engine or registry).
   */
  stages?: Partial<PromotionStages>;
}

export type PromotionResult =
  | { state: 'published'; project: string; commit: string; branch?: string; reference: string; digest: string; signature: string; provenance: string }
  | { state: 'refused' | 'failed'; project: string; commit: string; step: string; reason: string };

/** Promotions waiting at most (a flood of hints must not starve the real ones for ever). */
const MAX_PENDING = 100;

export class Promoter implements HintSink {
  private readonly pending = new Set<string>();
  private chain: Promise<unknown> = Promise.resolve();
  /**
   * The embargo lane's builds, one at a time, on a chain of their own: the public promotions never
   * wait for them (their results and timings say nothing of the private lane), and a private
   * lane's failure or crash cannot touch a public result, which is stored before it starts.
   */
  private privateChain: Promise<unknown> = Promise.resolve();
  /** Removal of the images a promotion built, off its path (the registry has what was published). */
  private readonly removals = new Set<Promise<void>>();
  private readonly now: () => number;
  private readonly stages: PromotionStages;

  constructor(private readonly d: PromoterDeps) {
    this.now = d.now ?? Date.now;
    this.stages = { ...realStages(d, this.now), ...d.stages };
    if (d.embargo && !d.privateLookasideDir) throw new InternalError('the embargo lane needs a private lookaside directory');
    if (d.embargo && (!d.policy.policy.embargoRegistry || !d.embargoRegistryCredentials)) {
      throw new InternalError('the embargo lane needs its own registry (embargoRegistry in the promotion policy) and the builder’s login there');
    }
  }

  /** Queue again what the last process accepted but did not finish (call once, at start). */
  resume(): number {
    const left = this.d.store.unfinished();
    for (const { key, hint } of left) this.schedule(key, hint);
    return left.length;
  }

  /**
   * Queue a promotion of the hint's commit. A commit already published is never promoted again
   * (it would sign a second digest under its tag); one whose last promotion was refused or failed
   * is promoted afresh, every step again (`retryOf` says which it was, for the audit record).
   */
  accept(hint: PromotionHint): { queued: boolean; reason?: string; retryOf?: 'refused' | 'failed' } {
    const key = `${hint.project}@${hint.commit}`;
    if (this.pending.has(key)) return { queued: false, reason: 'already queued' };
    if (this.pending.size >= MAX_PENDING) return { queued: false, reason: `${MAX_PENDING} promotions are already waiting; try again later` };
    const before = this.d.store.state(key);
    if (before === 'published') return { queued: false, reason: 'already published' };
    this.d.store.enqueue(key, hint); // durable before the hint is answered
    this.schedule(key, hint);
    return { queued: true, ...(before === 'refused' || before === 'failed' ? { retryOf: before } : {}) };
  }

  /** Where the promotion of `commit` stands: its state, and its result once it has ended (`airlock builder promote` polls it). */
  status(project: string, commit: string): { state: PromotionState; result?: PromotionResult } | undefined {
    const key = `${project}@${commit}`;
    const state = this.d.store.state(key);
    if (!state) return undefined;
    const result = state === 'published' || state === 'refused' || state === 'failed' ? this.d.store.result<PromotionResult>(key) : undefined;
    return { state, ...(result ? { result } : {}) };
  }

  private schedule(key: string, hint: PromotionHint): void {
    this.pending.add(key);
    this.chain = this.chain.then(async () => {
      try {
        this.d.store.set(key, 'running');
        const r = await this.promote(hint);
        this.d.store.set(key, r.state, r);
      } finally {
        this.pending.delete(key);
      }
    });
  }

  /**
   * A private build of `project`'s most recently published commit, now (after a new embargoed
   * patch was submitted: it need not wait for the next public merge). Nothing happens (false) when the
   * project was never published or the lane is off.
   */
  buildPrivately(projectName: string): boolean {
    const e = this.d.embargo;
    const project = this.d.policy.policy.projects.find((p) => p.name === projectName);
    const commit = this.d.store.latestPublished(projectName);
    if (!e || !project || !commit) return false;
    // Verified when it was published (no second fetch here: the public chain may be fetching).
    const published = this.d.store.result<PromotionResult>(`${projectName}@${commit}`);
    const branch = (published?.state === 'published' ? published.branch : undefined) ?? project.protectedBranches[0]!;
    this.privateChain = this.privateChain.then(() => this.embargoLane(project, commit, branch));
    return true;
  }

  /** Resolves when every accepted hint has been dealt with (and the private builds they started). */
  async idle(): Promise<void> {
    for (let seen: Promise<unknown>[] = []; seen[0] !== this.chain || seen[1] !== this.privateChain; ) {
      seen = [this.chain, this.privateChain];
      await Promise.all(seen);
    }
  }

  /** idle(), and the images the promotions built are gone from the engine (call before closing). */
  async drain(): Promise<void> {
    await this.idle();
    await Promise.all(this.removals);
  }

  /**
   * Untag what a promotion built (by tag, never forced: the engine deletes the image only when
   * nothing else names or uses it, so a build that came out identical to a pinned base leaves the
   * base alone). A test container still being removed holds its image for a moment: retried.
   */
  private removeImages(tags: readonly string[], log: Logger): void {
    if (tags.length === 0) return;
    const p = (async () => {
      for (const tag of tags) {
        // 200 removed, 404 already gone; 409 (still in use) is worth ten tries half a second apart.
        await retry(
          async () => {
            const status = await this.d.docker
              .getImage(tag)
              .remove()
              .then(() => 200)
              .catch((e: unknown) => (e as { statusCode?: number }).statusCode ?? 500);
            if (status !== 200 && status !== 404) throw new RemovalAnswer(status);
          },
          { attempts: 10, baseDelayMs: 500, factor: 1, retryable: (e) => e instanceof RemovalAnswer && e.status === 409 },
        ).catch((e: unknown) => log.warn({ image: tag, status: e instanceof RemovalAnswer ? e.status : null }, 'cannot remove an image the promotion built'));
      }
    })().finally(() => this.removals.delete(p));
    this.removals.add(p);
  }

  result(project: string, commit: string): PromotionResult | undefined {
    return this.d.store.result<PromotionResult>(`${project}@${commit}`);
  }

  /** One promotion, start to end; never throws (the result says what happened). */
  async promote(hint: PromotionHint): Promise<PromotionResult> {
    const { d } = this;
    const base = { project: hint.project, commit: hint.commit };
    const log = d.logger.child({ project: hint.project, commit: hint.commit });
    const work = join(d.workDir, randomUUID());
    const built: string[] = []; // tags of the images this promotion made, removed when it ends
    const startedOn = new Date(this.now());
    const { phases, phase } = phaseClock();
    try {
      await mkdir(work, { recursive: true, mode: 0o700 });
      const project = d.policy.policy.projects.find((p) => p.name === hint.project);
      if (!project) throw new Stop('refused', 'policy', `project ${hint.project} is not in the promotion policy`);

      const v = await this.stages.verify(project, hint);
      phase('verify');
      const lane = publicLane(
        { project, commit: hint.commit, branch: v.branch, work, built, startedOn, log },
        { verifier: d.verifier, audit: d.audit, registry: { host: d.policy.policy.registry, credentials: d.registryCredentials }, lookasideDir: d.lookasideDir, review: v.review, phase },
      );
      const out = await buildLane(this.stages, lane);
      log.info({ reference: out.reference, digest: out.digest, phases }, 'promoted');
      const published: PromotionResult = { state: 'published', ...base, branch: v.branch, ...out };
      if (d.embargo) this.privateChain = this.privateChain.then(() => this.embargoLane(project, hint.commit, v.branch));
      return published;
    } catch (e) {
      const stop = e instanceof Stop ? e : new Stop('failed', 'internal', isAirlockError(e) ? `${e.code}: ${e.message}` : `internal error: ${(e as Error).message}`);
      // Every end but a publish is in the service log too, with its step and reason.
      // (The reason is cut as the audit record cuts it: a hostile .airlock.yaml can make it long.)
      const reason = stop.message.slice(0, 2000);
      if (stop.state === 'refused') log.warn({ step: stop.step, reason }, 'promotion refused');
      else log.error({ step: stop.step, reason, ...(e instanceof Stop ? {} : { err: e }) }, 'promotion failed');
      await d.audit
        .append(['policy', 'verify', 'history', 'review'].includes(stop.step) ? 'verify-refused' : 'promotion-failed', { project: hint.project, commit: hint.commit, step: stop.step, state: stop.state, reason })
        .catch((err: unknown) => log.error({ err }, 'cannot write the audit record'));
      return { state: stop.state, ...base, step: stop.step, reason: stop.message };
    } finally {
      await rm(work, { recursive: true, force: true }).catch(() => undefined);
      this.removeImages(built, log);
    }
  }

  /** The embargo lane's build of `commit` (embargo-lane.ts); a no-op when the lane is off. */
  private async embargoLane(project: PromotedProject, commit: string, branch: string): Promise<void> {
    const { d } = this;
    if (!d.embargo) return;
    await embargoLane(
      {
        embargo: d.embargo,
        ...(d.notifier ? { notifier: d.notifier } : {}),
        audit: d.audit,
        mirrorOf: (p) => d.verifier.mirrorOf(p),
        workDir: d.workDir,
        // Both checked in the constructor.
        registry: { host: d.policy.policy.embargoRegistry!, credentials: d.embargoRegistryCredentials! },
        privateLookasideDir: d.privateLookasideDir!,
        logger: d.logger,
        now: this.now,
        stages: this.stages,
        removeImages: (tags, log) => this.removeImages(tags, log),
      },
      project,
      commit,
      branch,
    );
  }
}

/** The engine's answer to removing an image, when it is neither 200 nor 404. */
class RemovalAnswer extends Error {
  constructor(readonly status: number) {
    super(`image removal answered ${status}`);
  }
}
