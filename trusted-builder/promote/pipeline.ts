/**
 * The stages of a promotion, and the one order a lane runs them in:
 *
 *   config → dependencies → source archive → environment → tests → build → leak check → push → sign
 *
 * (verify comes first, on the public lane only: the embargo lane builds on a commit that lane
 * already verified). Each stage is its own module with a port of only what it needs; the
 * `PromotionStages` here are those stages bound to their ports. Both lanes run `buildLane`; what
 * differs between them is in the lane (stages/lane.ts), never in a stage.
 */
import { join } from 'node:path';
import type Docker from 'dockerode';
import type { JobRunnerPort } from '#shared/runner/job-plan.js';
import type { JobPolicy } from '#shared/schemas/job-policy.js';
import type { PromotionHint } from '#shared/schemas/promotion-hint.js';
import type { AirlockYaml } from '#shared/schemas/airlock-yaml.js';
import type { AuditLog } from '../audit/audit-log.js';
import type { BaseImagePin } from '../build/image-build.js';
import type { LoadedPromotionPolicy, PromotedProject } from '../policy/promotion.js';
import type { SecretsPolicy } from '../policy/secrets.js';
import type { PushOptions, PushResult } from '../publish/registry.js';
import type { LeakSource } from '../secrets/leak-check.js';
import type { SecretStore } from '../secrets/secret-store.js';
import type { SigningKey } from '../sign/signer.js';
import type { ReviewReader } from '../verify/review.js';
import type { SourceVerifier } from '../verify/source.js';
import type { PromotionStore } from './promotion-store.js';
import { environment, publishImage, type BuiltImage, type EnvironmentSpec } from './stages/build.js';
import { readConfig, type LaneConfig } from './stages/config.js';
import { dependencies, type VerifiedDependencies } from './stages/dependencies.js';
import type { Lane, ProvenanceStep } from './stages/lane.js';
import { leakCheck } from './stages/leak-check.js';
import { push } from './stages/push.js';
import { sign, type Signed } from './stages/sign.js';
import { runTests, type TestsOutcome } from './stages/tests.js';
import { verify, type Verified } from './stages/verify.js';

export interface PromotionStages {
  verify(project: PromotedProject, hint: PromotionHint): Promise<Verified>;
  config(l: Lane): Promise<LaneConfig>;
  /** The lockfiles `.airlock.yaml` names, fetched and verified; buildLane sets the result as `l.dependencies`. */
  dependencies(l: Lane, section: AirlockYaml['dependencies']): Promise<VerifiedDependencies>;
  environment(l: Lane, env: EnvironmentSpec): Promise<string>;
  tests(l: Lane, cfg: AirlockYaml, envImage: string, sourceTar: string): Promise<TestsOutcome>;
  build(l: Lane, publish: LaneConfig['publish']): Promise<BuiltImage>;
  /** The path of the searched export (what is pushed). */
  leakCheck(l: Lane, image: BuiltImage, logs: readonly LeakSource[]): Promise<string>;
  push(l: Lane, imageId: string, imageTar: string): Promise<PushResult>;
  sign(l: Lane, pushed: PushResult, bases: readonly BaseImagePin[], steps: readonly ProvenanceStep[]): Promise<Signed>;
}

/** What the real stages are made of (a subset of PromoterDeps). */
export interface StageParts {
  docker: Docker;
  runner: JobRunnerPort;
  verifier: SourceVerifier;
  policy: LoadedPromotionPolicy;
  secretsPolicy: Readonly<SecretsPolicy>;
  secrets: SecretStore;
  jobPolicy: JobPolicy;
  audit: AuditLog;
  signingKey: SigningKey;
  pushOptions?: PushOptions;
  /** The durable queue and record of promotions. */
  store: PromotionStore;
  /** Readers of the review systems the policy names (`reviewSystems`), each with the builder's own account. */
  reviewers?: ReadonlyMap<string, ReviewReader>;
}

/** The stages as the builder runs them, each given only its port. */
export function realStages(d: StageParts, now: () => number): PromotionStages {
  const pins = d.policy.policy.baseImages;
  const build = { docker: d.docker, pins };
  const tests = { runner: d.runner, jobPolicy: d.jobPolicy, secretsPolicy: d.secretsPolicy, secrets: d.secrets, audit: d.audit };
  const pushPort = d.pushOptions ? { options: d.pushOptions } : {};
  const signPort = { signingKey: d.signingKey, builderId: d.policy.policy.builderId, policyDigest: d.policy.digest, now };
  const verifyPort = { verifier: d.verifier, store: d.store, policy: d.policy, audit: d.audit, ...(d.reviewers ? { reviewers: d.reviewers } : {}) };
  return {
    verify: (project, hint) => verify(verifyPort, project, hint),
    config: (l) => readConfig(l.source, d.jobPolicy),
    dependencies: (l, section) => dependencies({ policy: d.policy.policy.dependencies, now }, l, section),
    environment: (l, env) => environment(build, l, env),
    tests: (l, cfg, envImage, sourceTar) => runTests(tests, l, cfg, envImage, sourceTar),
    build: (l, publish) => publishImage(build, l, publish),
    leakCheck: (l, image, logs) => leakCheck({ docker: d.docker, secrets: d.secrets }, l, image, logs),
    push: (l, imageId, imageTar) => push(pushPort, l, imageId, imageTar),
    sign: (l, pushed, bases, steps) => sign(signPort, l, pushed, bases, steps),
  };
}

/**
 * One build of a lane's tree, public or private: config → dependencies → tests → image → leak
 * check → push → sign. Throws Stop (or anything unexpected); returns what was published.
 */
export async function buildLane(s: PromotionStages, l: Lane): Promise<Signed> {
  const { cfg, publish } = await s.config(l);
  // Before anything is built: later stages serve these (l.dependencies) and the provenance lists them.
  l.dependencies = await s.dependencies(l, cfg.dependencies);
  const source = join(l.work, 'source.tar');
  await l.source.archive(source, '.');
  // Tests: the gate jobs again, in an environment made here.
  const envImage = await s.environment(l, cfg.environment);
  const tested = await s.tests(l, cfg, envImage, source);
  // The publish image, searched before anything leaves the builder; then pushed and signed.
  const image = await s.build(l, publish);
  const imageTar = await s.leakCheck(l, image, tested.logs);
  const pushed = await s.push(l, image.imageId, imageTar);
  return s.sign(l, pushed, image.bases, [...tested.steps, image.step]);
}
