/**
 * What the stages of a promotion share: the refusal/failure they throw, and the lane they build
 * in. A lane is one build of one source tree — the public one (the verified commit, pushed to the
 * project's repository, audited step by step) or the embargo lane's private one (the patched tree,
 * pushed to `private/<image>` in the embargo lane's own registry, named so that nothing of the patch reaches a public place). The
 * stages do not ask which lane they are in: everything that differs is a field of the lane.
 */
import type { Logger } from '#shared/logging.js';
import type { AuditKind, JsonValue } from '../../audit/audit-log.js';
import type { PromotedProject } from '../../policy/promotion.js';
import type { RegistryCredentials } from '../../publish/registry.js';
import type { ReviewEvidence } from '../../verify/review.js';
import type { VerifiedDependencies } from '../../deps/dependencies.js';

/** A step's refusal (the policy or the source said no) or failure (tests, build, registry…). */
export class Stop extends Error {
  constructor(
    readonly state: 'refused' | 'failed',
    readonly step: string,
    reason: string,
  ) {
    super(reason);
  }
}

/** Where a lane reads its tree from: the verified public commit, or the patched private tree. */
export interface LaneSource {
  readText(path: string, maxBytes: number): Promise<string>;
  archive(file: string, subdir: string): Promise<void>;
}

/** A step as the provenance names it. */
export interface ProvenanceStep {
  name: string;
  command: string | string[];
  exitCode?: number;
}

/** The names a lane gives what it makes on the engine. */
export interface LaneNames {
  /** The tag of a test environment built from the repository's Dockerfile. */
  environment(): string;
  /** The tag of the publish image. */
  publishImage(): string;
  /** The id (container name) of test job `name`, the `index`th of the plan. */
  job(name: string, index: number): string;
}

/** What every lane has: the tree it builds and the run's own bookkeeping. */
export interface LaneRun {
  project: PromotedProject;
  commit: string;
  branch: string;
  /** This lane's own work directory (sources, contexts, the image export). */
  work: string;
  /** Tags of the images this lane made, removed when it ends. */
  built: string[];
  startedOn: Date;
  log: Logger;
}

export interface Lane extends LaneRun {
  phase: (name: string) => void;
  source: LaneSource;
  /**
   * The registry pushed to, and the builder's login there: the public registry (`registry` of the
   * promotion policy), or the embargo lane's own (`embargoRegistry`), which no consumer can read.
   */
  registry: { host: string; credentials: RegistryCredentials };
  /** The registry repository pushed to: the project's image, or `private/<image>`. */
  repository: string;
  lookasideRoot: string;
  names: LaneNames;
  /** The audit record of a stage's outcome (the public lane's; the private lane records none: its caller does). */
  record(kind: AuditKind, fields: Record<string, JsonValue>): Promise<void>;
  /** What a granted secret's read is audited with besides its path (the private lane names no project or commit). */
  secretReadFields: Record<string, JsonValue>;
  /** Each test job's log as it ends (the private lane: into the embargo's encrypted log). */
  onJobLog?: (job: string, data: Buffer, passed: boolean) => Promise<void>;
  /** The logger the push reports its attempts to (none for the private lane). */
  pushLog?: Logger;
  /**
   * The project's locked dependencies, fetched and verified by the builder (stages/dependencies.ts).
   * Set by pipeline.ts `buildLane` once that stage has run, before any later stage: the
   * environment, tests and build stages serve them to their containers with
   * `dependencies.handlers()`, and the sign stage lists them in the provenance.
   */
  dependencies?: VerifiedDependencies;
  /** What the provenance says of the lane's steps, patches and review. */
  provenance: {
    steps(steps: readonly ProvenanceStep[]): ProvenanceStep[];
    patches?: string[];
    review?: ReviewEvidence | 'none';
  };
}
