/**
 * The two lanes the stages build in, as descriptions (see stages/lane.ts): what each reads, where
 * it pushes and signs, what it names things, what it records.
 *
 *   public   the verified commit, read from the builder's own mirror; pushed to the project's
 *            image in the public registry; every stage an audit record naming the project and commit; the provenance
 *            names the review and each step
 *   private  the embargo lane's patched tree; pushed to `private/<image>` in the embargo lane's own
 *            registry (no consumer or public-tier login reads it), signed into the private
 *            lookaside; nothing it makes is named after the project, the commit or a job (those
 *            come from patched config); no stage record (the embargo lane records ids and digests
 *            only); job logs go to the embargo's encrypted log; the provenance names the patches
 *            by digest and the steps by position and command digest
 */
import { createHash, randomUUID } from 'node:crypto';
import { InvalidInputError, isAirlockError } from '#shared/errors.js';
import type { AuditLog } from '../audit/audit-log.js';
import type { PatchWorkspace } from '../embargo/apply.js';
import type { RegistryCredentials } from '../publish/registry.js';
import type { ReviewEvidence } from '../verify/review.js';
import type { SourceVerifier } from '../verify/source.js';
import { Stop, type Lane, type LaneRun } from './stages/lane.js';

export function publicLane(
  run: LaneRun,
  o: {
    verifier: Pick<SourceVerifier, 'readFile' | 'archive'>;
    audit: Pick<AuditLog, 'append'>;
    /** The public registry (the promotion policy's `registry`) and the builder's login there. */
    registry: { host: string; credentials: RegistryCredentials };
    lookasideDir: string;
    review: ReviewEvidence | 'none';
    phase: (name: string) => void;
  },
): Lane {
  const { project, commit } = run;
  return {
    ...run,
    phase: o.phase,
    source: {
      readText: async (path, max) => {
        const b = await o.verifier.readFile(project, commit, path, max).catch((e: unknown) => {
          if (isAirlockError(e) && !e.retryable) throw new Stop('refused', 'config', `${path}: ${e.message}`);
          throw e;
        });
        if (!b) throw new Stop('refused', 'config', `no ${path} at ${commit.slice(0, 12)}`);
        return b.toString('utf8');
      },
      // The verifier's archive; a repository or directory over the size cap is a refusal.
      archive: (file, subdir) =>
        o.verifier.archive(project, commit, file, subdir).catch((e: unknown) => {
          if (e instanceof InvalidInputError) throw new Stop('refused', 'source', e.message);
          throw e;
        }),
    },
    registry: o.registry,
    repository: project.image,
    lookasideRoot: o.lookasideDir,
    names: {
      environment: () => `airlock-trusted-env/${project.image}:${commit.slice(0, 12)}`,
      publishImage: () => `airlock-trusted/${project.image}:${commit}`,
      job: (name) => `trusted-${randomUUID().slice(0, 12)}-${name}`,
    },
    record: (kind, fields) => o.audit.append(kind, { project: project.name, commit, ...fields }).then(() => undefined),
    secretReadFields: { project: project.name, commit },
    pushLog: run.log,
    provenance: { steps: (steps) => [...steps], review: o.review },
  };
}

export function privateLane(
  run: LaneRun,
  o: {
    workspace: Pick<PatchWorkspace, 'readFile' | 'archive'>;
    /** The patched tree (PatchWorkspace.apply). */
    tree: string;
    /** The embargo lane's own registry (`embargoRegistry`) and the builder's login there: never the public one. */
    registry: { host: string; credentials: RegistryCredentials };
    privateLookasideDir: string;
    /** The digests of the patches applied, in order. */
    patches: string[];
    onJobLog: (job: string, data: Buffer, passed: boolean) => Promise<void>;
  },
): Lane {
  const { project } = run;
  return {
    ...run,
    phase: () => undefined,
    source: {
      readText: async (path, max) => {
        const b = await o.workspace.readFile(o.tree, path, max).catch((err: unknown) => {
          throw new Stop('refused', 'config', `${path}: ${err instanceof Error ? err.message : String(err)}`);
        });
        if (!b) throw new Stop('refused', 'config', `no ${path} in the patched tree`);
        return b.toString('utf8');
      },
      archive: (file, subdir) =>
        o.workspace.archive(o.tree, file, subdir).catch((err: unknown) => {
          throw err instanceof InvalidInputError ? new Stop('refused', 'source', err.message) : err;
        }),
    },
    registry: o.registry,
    repository: `private/${project.image}`,
    lookasideRoot: o.privateLookasideDir,
    // A private lane's job names come from patched config: they stay out of container names.
    names: {
      environment: () => `airlock-trusted-private/${randomUUID()}:env`,
      publishImage: () => `airlock-trusted-private/${randomUUID()}:latest`,
      job: (_name, index) => `private-${randomUUID().slice(0, 12)}-${index}`,
    },
    record: async () => undefined,
    // The private lane's reads name no project or commit (the audit log is not the team's).
    secretReadFields: { lane: 'private' },
    onJobLog: o.onJobLog,
    // A private image's steps come from patched config: named by position, commands by digest.
    provenance: {
      steps: (steps) => steps.map((st, i) => ({ name: `step-${i}`, command: `sha256:${sha256(JSON.stringify(st.command))}`, ...(st.exitCode !== undefined ? { exitCode: st.exitCode } : {}) })),
      patches: o.patches,
    },
  };
}

function sha256(text: string): string {
  return createHash('sha256').update(text).digest('hex');
}
