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
 *   tests       the project's gate jobs re-run in the hardened runner, on the builder's own
 *               archive of the commit, in an environment the builder made itself (a pinned base
 *               image, or its Dockerfile built here without cache); a step the secrets policy
 *               grants secrets gets them as read-only tmpfs files; a voting failure ends it
 *   build       the publish image, hermetically (network off, no cache, pinned bases only)
 *   leak check  every secret value in use is searched for in the image's layers and config, the
 *               job logs and the build log (raw, base64, JSON-escaped…); a hit ends it, unpushed
 *   push        that very export of the image to the private registry, with retries; the digest
 *               the registry serves is kept
 *   sign        a simple-signing signature of that digest in the lookaside, and a detached
 *               signature over an in-toto/SLSA provenance statement next to it (naming the
 *               reviewed changes, their approvers and submitters)
 * Promotions run one at a time, in arrival order; a commit already promoted (or queued) is not
 * promoted again (hints arrive at least once).
 */
import { createHash, randomUUID } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { PassThrough, type Readable } from 'node:stream';
import { finished } from 'node:stream/promises';
import type Docker from 'dockerode';
import { z } from 'zod';
import { InternalError, InvalidInputError, isAirlockError } from '#shared/errors.js';
import type { Logger } from '#shared/logging.js';
import { AIRLOCK_YAML, parseAirlockYaml } from '#shared/repo-config/airlock-yaml.js';
import { RepoPath } from '#shared/schemas/airlock-yaml.js';
import { compileJobs } from '#shared/repo-config/compile-jobs.js';
import { runJobPlan, type JobRunnerPort } from '#shared/runner/job-plan.js';
import type { SecretFile } from '#shared/runner/secret-files.js';
import type { JobPolicy } from '#shared/schemas/job-policy.js';
import type { PromotionHint } from '#shared/schemas/promotion-hint.js';
import type { HintSink } from '../api/app.js';
import type { AuditKind, AuditLog, JsonValue } from '../audit/audit-log.js';
import { PatchWorkspace } from '../embargo/apply.js';
import type { BreakWarning, EmbargoNotifier } from '../notify/webhook.js';
import { buildTrustedImage, checkBases, type BaseImagePin } from '../build/image-build.js';
import type { LoadedPromotionPolicy, PromotedProject } from '../policy/promotion.js';
import { argv, grantFor, type SecretsPolicy } from '../policy/secrets.js';
import { pushImage, type PushOptions, type RegistryCredentials } from '../publish/registry.js';
import { findLeaks, imageLayerSources, type Leak, type LeakSource } from '../secrets/leak-check.js';
import { secretValues, type SecretStore } from '../secrets/secret-store.js';
import { provenanceStatement } from '../sign/provenance.js';
import type { SigningKey } from '../sign/signer.js';
import { lookasideDir, signImage, simpleSigningPayload, writeLookaside } from '../sign/simple-signing.js';
import type { SourceVerifier } from '../verify/source.js';
import { verifyReview, type ReviewEvidence, type ReviewReader } from '../verify/review.js';
import type { PromotionStore } from './promotion-store.js';

/** The `publish` section of `.airlock.yaml`, as the trusted builder reads it. */
export const PublishSection = z.strictObject({
  /** The Dockerfile of the published image, relative to the repository root. */
  dockerfile: RepoPath,
  /** The build context (a directory of the repository). */
  context: RepoPath.default('.'),
});

export interface PromoterDeps {
  docker: Docker;
  runner: JobRunnerPort;
  verifier: SourceVerifier;
  policy: LoadedPromotionPolicy;
  secretsPolicy: Readonly<SecretsPolicy>;
  secrets: SecretStore;
  jobPolicy: JobPolicy;
  audit: AuditLog;
  signingKey: SigningKey;
  registryCredentials: RegistryCredentials;
  lookasideDir: string;
  workDir: string;
  logger: Logger;
  pushOptions?: PushOptions;
  /** The durable queue and record of promotions. */
  store: PromotionStore;
  /** Readers of the review systems the policy names (`reviewSystems`), each with the builder's own account. */
  reviewers?: ReadonlyMap<string, ReviewReader>;
  /** The embargo lane: active embargoed patches of each promoted project (absent: the lane is off). */
  embargo?: EmbargoPort;
  /** Warnings to the security team when an embargoed patch breaks. */
  notifier?: EmbargoNotifier;
  /** Signatures and provenance of private images (never served without authentication). */
  privateLookasideDir?: string;
  now?: () => number;
}

/** What the promoter needs of the embargo store (trusted-builder/embargo/store.ts). */
export interface EmbargoPort {
  active(project: string): Promise<readonly { id: string; patch: string; digest: string }[]>;
  retire(id: string, reason: string): Promise<unknown>;
  appendLog(id: string, text: string): Promise<unknown>;
  recordBreak(id: string, b: { commit: string; reason: string }): Promise<unknown>;
  recordBuild(id: string, b: { commit: string; reference: string; digest: string }): Promise<unknown>;
}

/** Where a lane reads its tree from: the verified public commit, or the patched private tree. */
interface LaneSource {
  readText(path: string, maxBytes: number): Promise<string>;
  archive(file: string, subdir: string): Promise<void>;
}

interface Lane {
  project: PromotedProject;
  commit: string;
  branch: string;
  work: string;
  built: string[];
  startedOn: Date;
  phase: (name: string) => void;
  log: Logger;
  /** The registry repository pushed to: the project's image, or `private/<image>`. */
  repository: string;
  lookasideRoot: string;
  source: LaneSource;
  /** Audit records of each step (the public lane); the private lane's are the caller's. */
  audit?: (kind: AuditKind, fields: Record<string, JsonValue>) => Promise<void>;
  /** Set for the private lane. */
  private?: { patches: string[]; onJobLog: (job: string, data: Buffer, passed: boolean) => Promise<void> };
  /** What review the builder found (the public lane); written into the provenance. */
  review?: ReviewEvidence | 'none';
}

export type PromotionResult =
  | { state: 'published'; project: string; commit: string; branch?: string; reference: string; digest: string; signature: string; provenance: string }
  | { state: 'refused' | 'failed'; project: string; commit: string; step: string; reason: string };

const CONFIG_MAX_BYTES = 1024 * 1024; // 1 MiB
const DOCKERFILE_MAX_BYTES = 256 * 1024; // 256 KiB
/** Promotions waiting at most (a flood of hints must not starve the real ones for ever). */
const MAX_PENDING = 100;
/** The review check of one promotion at most (a slow or hostile review system must not hold the queue). */
const REVIEW_TIMEOUT_MS = 10 * 60_000; // 10 min
/** One image build at most (a `RUN sleep infinity` must not hold the builder). */
const BUILD_TIMEOUT_MS = 30 * 60_000; // 30 min

/** A step's refusal (the policy or the source said no) or failure (tests, build, registry…). */
class Stop extends Error {
  constructor(
    readonly state: 'refused' | 'failed',
    readonly step: string,
    reason: string,
  ) {
    super(reason);
  }
}

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

  constructor(private readonly d: PromoterDeps) {
    this.now = d.now ?? Date.now;
    if (d.embargo && !d.privateLookasideDir) throw new InternalError('the embargo lane needs a private lookaside directory');
  }

  /** Queue again what the last process accepted but did not finish (call once, at start). */
  resume(): number {
    const left = this.d.store.unfinished();
    for (const { key, hint } of left) this.schedule(key, hint);
    return left.length;
  }

  accept(hint: PromotionHint): { queued: boolean; reason?: string } {
    const key = `${hint.project}@${hint.commit}`;
    if (this.pending.has(key)) return { queued: false, reason: 'already queued' };
    if (this.pending.size >= MAX_PENDING) return { queued: false, reason: `${MAX_PENDING} promotions are already waiting; try again later` };
    if (this.d.store.state(key) === 'published') return { queued: false, reason: 'already published' };
    this.d.store.enqueue(key, hint); // durable before the hint is answered
    this.schedule(key, hint);
    return { queued: true };
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
   * patch was submitted: it need not wait for the next public merge). Nothing happens when the
   * project was never published or the lane is off.
   */
  buildPrivately(projectName: string): void {
    const e = this.d.embargo;
    const project = this.d.policy.policy.projects.find((p) => p.name === projectName);
    const commit = this.d.store.latestPublished(projectName);
    if (!e || !project || !commit) return;
    // Verified when it was published (no second fetch here: the public chain may be fetching).
    const published = this.d.store.result<PromotionResult>(`${projectName}@${commit}`);
    const branch = (published?.state === 'published' ? published.branch : undefined) ?? project.protectedBranches[0]!;
    this.privateChain = this.privateChain.then(() => this.embargoLane(e, project, commit, branch));
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
        for (let attempt = 1; ; attempt++) {
          const status = await this.d.docker
            .getImage(tag)
            .remove()
            .then(() => 200)
            .catch((e: unknown) => (e as { statusCode?: number }).statusCode ?? 500);
          if (status === 200 || status === 404) break;
          if (status !== 409 || attempt >= 10) {
            log.warn({ image: tag, status }, 'cannot remove an image the promotion built');
            break;
          }
          await new Promise((r) => setTimeout(r, 500));
        }
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
    const phases: Record<string, number> = {};
    let mark = performance.now();
    const phase = (name: string): void => {
      const t = performance.now();
      phases[name] = Math.round(t - mark);
      mark = t;
    };
    try {
      await mkdir(work, { recursive: true, mode: 0o700 });
      const project = d.policy.policy.projects.find((p) => p.name === hint.project);
      if (!project) throw new Stop('refused', 'policy', `project ${hint.project} is not in the promotion policy`);

      const v = await d.verifier.verify(project, hint.commit);
      if (!v.ok) throw new Stop('refused', 'verify', v.reason);
      const review = await this.checkReview(project, hint.commit, v.branch, v.tips);
      phase('verify');
      await d.audit.append('verify-passed', {
        project: project.name,
        commit: hint.commit,
        branch: v.branch,
        hintBranch: hint.branch,
        policy: d.policy.digest,
        review: review === 'none' ? 'none (branch protection only)' : review.changes.map((c) => `${c.number},${c.patchset} approved by ${[...new Set(c.approvals.map((a) => a.by))].join(' ')}`).join('; ') || `no new commits since ${review.from?.slice(0, 12) ?? 'the root'}`,
      });

      const out = await this.lane({
        project,
        commit: hint.commit,
        branch: v.branch,
        work,
        built,
        startedOn,
        phase,
        log,
        repository: project.image,
        lookasideRoot: d.lookasideDir,
        source: { readText: (path, max) => this.readText(project, hint.commit, path, max), archive: (file, subdir) => this.archive(project, hint.commit, file, subdir) },
        audit: (kind, fields) => d.audit.append(kind, { project: project.name, commit: hint.commit, ...fields }).then(() => undefined),
        review,
      });
      log.info({ reference: out.reference, digest: out.digest, phases }, 'promoted');
      const published: PromotionResult = { state: 'published', ...base, branch: v.branch, ...out };
      const e = d.embargo;
      if (e) this.privateChain = this.privateChain.then(() => this.embargoLane(e, project, hint.commit, v.branch));
      return published;
    } catch (e) {
      const stop = e instanceof Stop ? e : new Stop('failed', 'internal', isAirlockError(e) ? `${e.code}: ${e.message}` : `internal error: ${(e as Error).message}`);
      if (!(e instanceof Stop)) log.error({ err: e }, 'promotion failed');
      await d.audit
        .append(['policy', 'verify', 'history', 'review'].includes(stop.step) ? 'verify-refused' : 'promotion-failed', { project: hint.project, commit: hint.commit, step: stop.step, state: stop.state, reason: stop.message.slice(0, 2000) })
        .catch((err: unknown) => log.error({ err }, 'cannot write the audit record'));
      return { state: stop.state, ...base, step: stop.step, reason: stop.message };
    } finally {
      await rm(work, { recursive: true, force: true }).catch(() => undefined);
      this.removeImages(built, log);
    }
  }

  /**
   * Only forward, and only reviewed: `commit` must descend from the last commit promoted of every
   * protected branch that holds it (an old commit signed anew, or a rewound branch, is refused),
   * and every commit since the last one promoted of `branch` (or since the policy's `since`) must
   * come from a merged change with the approvals the policy requires, as the review system tells
   * the builder's own account.
   */
  private async checkReview(project: PromotedProject, commit: string, branch: string, tips: Readonly<Record<string, string>>): Promise<ReviewEvidence | 'none'> {
    const { d } = this;
    for (const [b, tip] of Object.entries(tips)) {
      const lastOfB = d.store.latestPublishedOn(project.name, b);
      if (!lastOfB || lastOfB === commit || !(await d.verifier.isAncestor(project, commit, tip))) continue;
      if (!(await d.verifier.isAncestor(project, lastOfB, commit))) {
        throw new Stop('refused', 'history', `commit ${commit.slice(0, 12)} does not descend from ${lastOfB.slice(0, 12)}, the last commit of ${b} promoted: an older commit, or a rewound branch, is not promoted`);
      }
    }
    const last = d.store.latestPublishedOn(project.name, branch);
    const policy = project.review;
    if (policy === 'none') return 'none';
    const base = last ?? policy.since;
    if (base && last === undefined && !(await d.verifier.isAncestor(project, base, commit))) {
      throw new Stop('refused', 'history', `commit ${commit.slice(0, 12)} does not descend from ${base.slice(0, 12)}, the commit review.since names`);
    }
    const reader = d.reviewers?.get(policy.system);
    if (!reader) throw new Stop('failed', 'review', `no reader for review system ${policy.system} (its credentials were not loaded)`);
    const r = await verifyReview({
      gitDir: d.verifier.mirrorOf(project),
      review: policy,
      reviewProject: policy.project ?? project.name,
      branch,
      branches: project.protectedBranches,
      commit,
      base,
      reader,
      signal: AbortSignal.timeout(REVIEW_TIMEOUT_MS),
    }).catch((e: unknown) => {
      if (isAirlockError(e)) throw new Stop(e.retryable ? 'failed' : 'refused', 'review', `reading the review record failed: ${e.message}`);
      throw e;
    });
    if (!r.ok) throw new Stop('refused', 'review', `no review: ${r.reason}`);
    return r.evidence;
  }

  /**
   * One build of a source tree, public or private: config → tests → image → leak check → push →
   * sign. Throws Stop (or anything unexpected); returns what was published.
   */
  private async lane(l: Lane): Promise<{ reference: string; digest: string; signature: string; provenance: string }> {
    const { d } = this;
    const { project, commit, work } = l;
    const { cfg, publish } = await this.readConfig(l.source);
    const source = join(work, 'source.tar');
    await l.source.archive(source, '.');
    const pins = d.policy.policy.baseImages;

    // Tests: the gate jobs again, in an environment made here.
    const steps: { name: string; command: string | string[]; exitCode?: number }[] = [];
    const logs: LeakSource[] = [];
    const envImage = await this.environment(l, cfg.environment, pins);
    const compiled = compileJobs(cfg, {
      buildId: 0,
      attempt: 1,
      pipeline: 'gate',
      image: envImage,
      budget: { jobs: d.jobPolicy.build.jobs, timeMs: d.jobPolicy.build.time, defaultTimeoutMs: d.jobPolicy.limits.timeout },
      vars: { project: project.name, branch: l.branch, change: commit.slice(0, 12), patchset: 1, commit },
    });
    if (compiled.issues.length > 0) throw new Stop('refused', 'config', `${AIRLOCK_YAML}: ${compiled.issues.map((i) => `${i.path}: ${i.message}`).join('; ')}`);
    const { failedVoting: failed } = await runJobPlan(compiled.jobs, {
      run: async (job, index) => {
        const chunks: Buffer[] = [];
        const secretFiles = await this.grantedFiles(project.name, commit, job.name, job.spec.command, l.private !== undefined);
        // A private lane's job names come from patched config: they stay out of container names.
        const id = l.private ? `private-${randomUUID().slice(0, 12)}-${index}` : `trusted-${randomUUID().slice(0, 12)}-${job.name}`;
        // Artifacts are taken out as in the CI, only to be searched for secrets with the logs.
        const artifactsDir = join(work, 'artifacts', String(index));
        if (job.spec.artifacts.length > 0) await mkdir(artifactsDir, { recursive: true, mode: 0o700 });
        const r = await d.runner.run(
          { ...job.spec, id },
          { source: { tar: source }, includeLog: false, onLog: (c) => chunks.push(c.data), ...(job.spec.artifacts.length > 0 ? { artifactsDir } : {}), ...(secretFiles.length > 0 ? { secretFiles } : {}) },
        );
        const data = Buffer.concat(chunks);
        logs.push({ name: `log of ${job.name}`, data });
        for (const a of r.artifacts) logs.push({ name: `artifact ${a.path} of ${job.name}`, data: createReadStream(join(artifactsDir, a.path)) });
        await l.private?.onJobLog(job.name, data, r.passed);
        // A step that held secrets controls its own result: it could spell them out in its exit code.
        // The public provenance says the step ran, not how it ended (a voting failure still stops all).
        steps.push({ name: `test:${job.name}`, command: job.spec.command, ...(secretFiles.length > 0 ? {} : { exitCode: r.exitCode ?? -1 }) });
        return r.passed ? 'passed' : 'failed';
      },
    });
    if (failed.length > 0) {
      await l.audit?.('tests-failed', { jobs: failed });
      throw new Stop('failed', 'tests', `tests failed on the trusted rebuild: ${failed.join(', ')}`);
    }
    // The test containers are removed before the image build starts, so that the build does
    // not compete with their teardown (and a test's cost is counted as the tests').
    await d.runner.drain?.();
    l.phase('tests');
    await l.audit?.('tests-passed', { jobs: compiled.jobs.map((j) => j.name) });

    // The publish image.
    const dockerfileText = await l.source.readText(publish.dockerfile, DOCKERFILE_MAX_BYTES);
    const contextTar = join(work, 'context.tar');
    await l.source.archive(contextTar, publish.context);
    const tag = l.private ? `airlock-trusted-private/${randomUUID()}:latest` : `airlock-trusted/${project.image}:${commit}`;
    const image = await buildTrustedImage({
      docker: d.docker,
      context: createReadStream(contextTar),
      dockerfileText,
      file: publish.dockerfile,
      tag,
      pins,
      signal: AbortSignal.timeout(BUILD_TIMEOUT_MS),
    }).catch((e: unknown) => {
      if (isAirlockError(e) && e.code === 'AIRLOCK_E_POLICY_VIOLATION') throw new Stop('refused', 'build', e.message);
      if (isAirlockError(e) && e.code === 'AIRLOCK_E_ENVIRONMENT_BUILD_FAILED') throw new Stop('failed', 'build', e.message);
      throw e;
    });
    l.built.push(tag);
    steps.push({ name: 'publish-image', command: ['docker', 'build', '--network=none', '--no-cache', `--file=${publish.dockerfile}`, publish.context], exitCode: 0 });
    l.phase('build');
    await l.audit?.('image-built', { image: image.imageId, bases: image.bases.map((b) => `${b.name}@${b.digest}`) });

    // Leak check before anything leaves the builder, on the one export of the image that is
    // then pushed (the bytes pushed are the bytes searched).
    const secrets = secretValues(d.secrets);
    const imageTar = join(work, 'image.tar');
    const leaks = await saveAndSearch(d.docker, image.imageId, imageTar, secrets, [...logs, { name: 'publish build log', data: Buffer.from(image.log.join('\n')) }]);
    l.phase('leak-check');
    await l.audit?.('leak-check', { searched: secrets.length, leaks: leaks.length, where: leaks.slice(0, 20).map((x) => `${x.source} (${x.form})`) });
    if (leaks.length > 0) throw new Stop('refused', 'leak-check', `a secret in use appears in ${leaks.map((x) => `${x.source} (${x.form})`).slice(0, 5).join(', ')}: nothing was published`);

    // Push, then sign what the registry serves.
    const registry = d.policy.policy.registry;
    const pushed = await pushImage(image.imageId, { registry, repository: l.repository, tag: commit }, d.registryCredentials, {
      ...d.pushOptions,
      archive: imageTar,
      ...(l.private ? {} : { logger: l.log }),
    }).catch((e: unknown) => {
      if (isAirlockError(e)) throw new Stop('failed', 'push', e.message);
      throw e;
    });
    l.phase('push');
    await l.audit?.('pushed', { reference: pushed.reference, digest: pushed.digest, attempts: pushed.attempts });

    const statement = provenanceStatement({
      subject: { name: `${registry}/${l.repository}`, digest: pushed.digest },
      builderId: d.policy.policy.builderId,
      source: { repo: project.url, commit },
      policyDigest: d.policy.digest,
      baseImages: image.bases.map((b) => ({ name: b.name, digest: b.digest })),
      // A private image's steps come from patched config: named by position, commands by digest.
      steps: l.private ? steps.map((st, i) => ({ name: `step-${i}`, command: `sha256:${sha256(JSON.stringify(st.command))}`, ...(st.exitCode !== undefined ? { exitCode: st.exitCode } : {}) })) : steps,
      startedOn: l.startedOn,
      finishedOn: new Date(this.now()),
      invocationId: randomUUID(),
      ...(l.private ? { patches: l.private.patches.map((digest) => ({ digest })) } : {}),
      ...(l.review ? { review: l.review } : {}),
    });
    const dir = join(l.lookasideRoot, lookasideDir(l.repository, pushed.digest));
    await mkdir(dir, { recursive: true });
    const provenance = join(dir, 'provenance.json');
    await writeFile(provenance, statement);
    await writeFile(`${provenance}.asc`, await d.signingKey.signDetached(statement));
    // The image signature last: once it is public, everything it vouches for is in place.
    const payload = simpleSigningPayload({ dockerReference: pushed.reference, manifestDigest: pushed.digest, creator: 'airlock trusted-builder', timestamp: Math.floor(this.now() / 1000) });
    const signature = await writeLookaside(l.lookasideRoot, l.repository, pushed.digest, await signImage(d.signingKey, payload));
    await l.audit?.('signed', { digest: pushed.digest, key: d.signingKey.fingerprint, signature: signature.path, provenance });
    l.phase('sign');
    return { reference: pushed.reference, digest: pushed.digest, signature: signature.path, provenance };
  }

  /**
   * The private lane (issue: embargoed security patches): the project's active embargoed patches
   * — first retiring any the public history now contains — applied in order on the verified
   * public commit, the tests re-run and the image built, signed and pushed to
   * `<registry>/private/<image>`, with its signature and provenance in the private lookaside. A
   * patch that does not apply, failing tests or a failing build: no patched image for this
   * commit, and the team is warned. Whatever happens here never changes the public result, and
   * nothing of a patch reaches a public place: details go to the embargo's encrypted log; the
   * audit log and the builder's log get embargo ids, digests and step names only.
   */
  private async embargoLane(e: EmbargoPort, project: PromotedProject, commit: string, branch: string): Promise<void> {
    const { d } = this;
    const privateLookaside = d.privateLookasideDir!; // checked in the constructor
    const log = d.logger.child({ component: 'embargo' });
    const work = join(d.workDir, `private-${randomUUID()}`);
    const built: string[] = [];
    let ids: string[] = [];
    try {
      const patches = await e.active(project.name);
      if (patches.length === 0) return;
      // From here on, whatever fails leaves these without an image for this commit: all are told.
      ids = patches.map((p) => p.id);
      await mkdir(work, { recursive: true, mode: 0o700 });
      const ws = await PatchWorkspace.open(d.verifier.mirrorOf(project), join(work, 'git'));
      const live: { id: string; patch: string; digest: string }[] = [];
      for (const p of patches) {
        const pub = await ws.isPublic(commit, p.patch);
        if (pub.public) {
          // The store records the retirement in the audit log (id and digest); the team is told.
          await e.retire(p.id, `the public history contains it at ${commit} (${pub.how}${pub.match ? ` ${pub.match}` : ''})`);
          await this.warn(p.id, commit, 'retired');
        } else live.push(p);
      }
      ids = live.map((p) => p.id);
      if (live.length === 0) return;
      const applied = await ws.apply(commit, live.map((p) => ({ id: p.id, patch: p.patch })));
      if (!applied.ok) {
        // The patch that stopped applying is the broken one; the others only get no image this time.
        await e.appendLog(applied.failed, `${new Date(this.now()).toISOString()} does not apply on ${commit}:\n${applied.detail}\n`);
        const blocked = ids.filter((x) => x !== applied.failed);
        for (const id of blocked) await e.appendLog(id, `${new Date(this.now()).toISOString()} no patched image for ${commit}: ${applied.failed} does not apply\n`);
        await this.broken(e, [applied.failed], commit, 'apply', 'does not apply');
        if (blocked.length > 0) await this.broken(e, blocked, commit, 'blocked', `${applied.failed} does not apply`);
        return;
      }
      const startedOn = new Date(this.now());
      const out = await this.lane({
        project,
        commit,
        branch,
        work,
        built,
        startedOn,
        phase: () => undefined,
        log,
        repository: `private/${project.image}`,
        lookasideRoot: privateLookaside,
        source: {
          readText: async (path, max) => {
            const b = await ws.readFile(applied.tree, path, max).catch((err: unknown) => {
              throw new Stop('refused', 'config', `${path}: ${err instanceof Error ? err.message : String(err)}`);
            });
            if (!b) throw new Stop('refused', 'config', `no ${path} in the patched tree`);
            return b.toString('utf8');
          },
          archive: (file, subdir) =>
            ws.archive(applied.tree, file, subdir).catch((err: unknown) => {
              throw err instanceof InvalidInputError ? new Stop('refused', 'source', err.message) : err;
            }),
        },
        private: {
          patches: live.map((p) => p.digest),
          onJobLog: async (job, data, passed) => {
            for (const id of ids) await e.appendLog(id, `${new Date(this.now()).toISOString()} ${commit} job ${job}: ${passed ? 'passed' : 'FAILED'}\n${data.toString('utf8')}\n`);
          },
        },
      });
      for (const p of live) await e.recordBuild(p.id, { commit, reference: out.reference, digest: out.digest });
      // Ids and patch digests only: a commit or an image digest would name the project.
      await d.audit.append('embargo', { event: 'published', embargoes: ids, patches: live.map((p) => p.digest) });
    } catch (err) {
      const stop = err instanceof Stop ? err : undefined;
      const step = stop?.step === 'tests' ? 'tests' : stop ? 'build' : 'internal';
      const detail = err instanceof Error ? err.message : String(err);
      for (const id of ids) await e.appendLog(id, `${new Date(this.now()).toISOString()} ${commit} ${stop?.step ?? 'internal'}: ${detail}\n`).catch(() => undefined);
      if (!stop) log.error({ embargoes: ids, code: isAirlockError(err) ? err.code : 'internal' }, 'the private lane failed (details in the embargo log)');
      if (ids.length > 0) await this.broken(e, ids, commit, step, stop?.step ?? 'internal').catch(() => undefined);
    } finally {
      await rm(work, { recursive: true, force: true }).catch(() => undefined);
      this.removeImages(built, log);
    }
  }

  /** No patched image for `commit`: recorded (encrypted), audited (ids), and the team warned. */
  private async broken(e: EmbargoPort, ids: readonly string[], commit: string, step: BreakWarning['step'], what: string): Promise<void> {
    // The store records each break in the audit log (id and digest).
    for (const id of ids) await e.recordBreak(id, { commit, reason: `${step}: ${what}` });
    for (const id of ids) await this.warn(id, commit, step);
  }

  private async warn(embargo: string, commit: string, step: BreakWarning['step']): Promise<void> {
    const sent = (await this.d.notifier?.warn({ embargo, commit, step })) ?? { delivered: false, attempts: 0, error: 'no notifier configured' };
    await this.d.audit.append('embargo', { event: 'warned', embargo, delivered: sent.delivered, attempts: sent.attempts, ...(sent.error ? { error: sent.error } : {}) });
  }

  /**
   * The secrets policy grants step `job` of `project`, as files for /run/secrets: one file per
   * field, `<path>/<field>` (e.g. `team/app/npm/token`). Only if the step runs exactly the command
   * the grant names: otherwise the promotion is refused (the repository wrote that command; the
   * grant was for another). Each read is an audit record (the path, never the value); the values
   * join the leak check's list by being read through the store.
   */
  private async grantedFiles(project: string, commit: string, job: string, command: readonly string[], privately: boolean): Promise<SecretFile[]> {
    const files: SecretFile[] = [];
    const grant = grantFor(this.d.secretsPolicy, project, job);
    if (!grant) return files;
    if (JSON.stringify(argv(grant.command)) !== JSON.stringify([...command])) {
      throw new Stop('refused', 'secrets', `step ${job} does not run the command the secrets policy grants its secrets to: it is not given them, and nothing is published`);
    }
    for (const path of grant.secrets) {
      const value = await this.d.secrets.read(path).catch((e: unknown) => {
        throw new Stop('failed', 'secrets', `step ${job}: ${isAirlockError(e) ? e.message : `cannot read granted secret ${path}`}`);
      });
      // The private lane's reads name no project or commit (the audit log is not the team's).
      await this.d.audit.append('secret-read', { path, store: this.d.secrets.kind, purpose: `step ${job}`, ...(privately ? { lane: 'private' } : { project, commit }) });
      for (const [field, text] of Object.entries(value)) files.push({ path: `${path}/${field}`, data: Buffer.from(text, 'utf8') });
    }
    return files;
  }

  /** The verifier's archive; a repository or directory over the size cap is a refusal. */
  private async archive(project: PromotedProject, commit: string, file: string, subdir = '.'): Promise<void> {
    await this.d.verifier.archive(project, commit, file, subdir).catch((e: unknown) => {
      if (e instanceof InvalidInputError) throw new Stop('refused', 'source', e.message);
      throw e;
    });
  }

  private async readText(project: PromotedProject, commit: string, path: string, max: number): Promise<string> {
    const b = await this.d.verifier.readFile(project, commit, path, max).catch((e: unknown) => {
      if (isAirlockError(e) && !e.retryable) throw new Stop('refused', 'config', `${path}: ${e.message}`);
      throw e;
    });
    if (!b) throw new Stop('refused', 'config', `no ${path} at ${commit.slice(0, 12)}`);
    return b.toString('utf8');
  }

  private async readConfig(source: LaneSource) {
    const text = await source.readText(AIRLOCK_YAML, CONFIG_MAX_BYTES);
    const parsed = parseAirlockYaml(text, this.d.jobPolicy);
    if (!parsed.value) throw new Stop('refused', 'config', `${AIRLOCK_YAML}: ${parsed.issues.map((i) => `${i.path}: ${i.message}`).join('; ')}`);
    const publish = PublishSection.safeParse(parsed.value.publish);
    if (!publish.success) throw new Stop('refused', 'config', `${AIRLOCK_YAML}: publish: ${publish.error.issues.map((i) => `${i.path.join('.') || '(section)'}: ${i.message}`).join('; ')}`);
    return { cfg: parsed.value, publish: publish.data };
  }

  /** The test environment: a pinned base image as is, or the repo's Dockerfile built here. */
  private async environment(l: Lane, env: { image: string } | { dockerfile: string; context?: string | undefined }, pins: readonly BaseImagePin[]): Promise<string> {
    const { d } = this;
    if ('image' in env) {
      const { bases, issues } = await checkBases(d.docker, `FROM ${env.image}\n`, `${AIRLOCK_YAML} environment`, pins);
      if (issues.length > 0 || !bases[0]) throw new Stop('refused', 'environment', issues.map((i) => i.message).join('; ') || `${env.image} is not a pinned base image`);
      // By id, not by name: a name can be re-pointed on a shared engine after the check.
      return bases[0].digest;
    }
    const text = await l.source.readText(env.dockerfile, DOCKERFILE_MAX_BYTES);
    const tar = join(l.work, 'env-context.tar');
    await l.source.archive(tar, env.context ?? '.');
    const tag = l.private ? `airlock-trusted-private/${randomUUID()}:env` : `airlock-trusted-env/${l.project.image}:${l.commit.slice(0, 12)}`;
    const image = await buildTrustedImage({ docker: d.docker, context: createReadStream(tar), dockerfileText: text, file: env.dockerfile, tag, pins, signal: AbortSignal.timeout(BUILD_TIMEOUT_MS) }).catch((e: unknown) => {
      if (isAirlockError(e) && e.code === 'AIRLOCK_E_POLICY_VIOLATION') throw new Stop('refused', 'environment', e.message);
      if (isAirlockError(e) && e.code === 'AIRLOCK_E_ENVIRONMENT_BUILD_FAILED') throw new Stop('failed', 'environment', e.message);
      throw e;
    });
    l.built.push(tag);
    return image.imageId;
  }

}

/**
 * `docker save` of `imageId` written to `file` and searched for `secrets` in the same pass (with
 * the `extra` sources first): one export, read once, and the file is what gets pushed.
 */
async function saveAndSearch(docker: Docker, imageId: string, file: string, secrets: readonly string[], extra: readonly LeakSource[]): Promise<Leak[]> {
  const image = (await docker.getImage(imageId).get()) as Readable;
  const toSearch = new PassThrough();
  const toFile = createWriteStream(file, { mode: 0o600, flags: 'wx' });
  image.on('error', (e) => {
    toSearch.destroy(e);
    toFile.destroy(e);
  });
  image.pipe(toSearch);
  image.pipe(toFile);
  const written = finished(toFile);
  written.catch(() => undefined); // awaited below; a failure of the search must not leave it unhandled
  try {
    // Fast: each layer searched as one raw tar. Only on a hit, again file by file (from the
    // export on disk), to say where.
    const sources = async function* (): AsyncGenerator<LeakSource> {
      yield* extra;
      yield* imageLayerSources(toSearch, { perFile: false });
    };
    const leaks = await findLeaks(secrets, sources());
    await written;
    const inLayers = leaks.filter((l) => l.source.startsWith('layer '));
    if (inLayers.length === 0) return leaks;
    const fromExtra = new Set(extra.map((x) => x.name));
    const detailed = await findLeaks(secrets, imageLayerSources(createReadStream(file)));
    // A raw hit the per-file pass cannot place (e.g. in a tar header field) still counts.
    const unplaced = inLayers.filter((l) => !detailed.some((x) => x.source.startsWith(`${l.source}:`)));
    return [...leaks.filter((l) => fromExtra.has(l.source)), ...detailed, ...unplaced];
  } catch (e) {
    image.destroy();
    toFile.destroy();
    throw e;
  }
}

function sha256(text: string): string {
  return createHash('sha256').update(text).digest('hex');
}
