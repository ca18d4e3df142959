/**
 * The private lane (embargoed security patches): the project's active embargoed patches — first
 * retiring any the public history now contains — applied in order on the verified public commit,
 * then the same stages as the public lane (pipeline.ts) in a private lane (lanes.ts): the tests
 * re-run and the image built, signed and pushed to `<embargoRegistry>/private/<image>` (the lane's
 * own registry, whose only logins are the builder's and the security team's), with its signature
 * and provenance in the private lookaside. A patch that does not apply, failing tests
 * or a failing build: no patched image for this commit, and the team is warned. Whatever happens
 * here never changes the public result, and nothing of a patch reaches a public place: details go
 * to the embargo's encrypted log; the audit log and the builder's log get embargo ids, digests
 * and step names only.
 */
import { randomUUID } from 'node:crypto';
import { mkdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { isAirlockError } from '#shared/errors.js';
import type { Logger } from '#shared/logging.js';
import type { AuditLog } from '../audit/audit-log.js';
import { PatchWorkspace } from '../embargo/apply.js';
import { PRIVATE_ARTIFACTS, type BreakStep } from '../embargo/wire.js';
import type { EmbargoNotifier } from '../notify/webhook.js';
import type { PromotedProject } from '../policy/promotion.js';
import type { RegistryCredentials } from '../publish/registry.js';
import { privateLane } from './lanes.js';
import { buildLane, type PromotionStages } from './pipeline.js';
import { Stop } from './stages/lane.js';

/** What the promoter needs of the embargo store (trusted-builder/embargo/store.ts). */
export interface EmbargoPort {
  active(project: string): Promise<readonly { id: string; patch: string; digest: string }[]>;
  retire(id: string, reason: string): Promise<unknown>;
  appendLog(id: string, text: string): Promise<unknown>;
  recordBreak(id: string, b: { commit: string; step: BreakStep; reason: string }): Promise<unknown>;
  recordBuild(id: string, b: { commit: string; reference: string; digest: string }): Promise<unknown>;
  /** Keep a copy of the private image's signature and provenance with the embargo (sealed), for `airlock embargo verify`. */
  putArtifact(id: string, name: string, bytes: Uint8Array): Promise<unknown>;
}

export interface EmbargoLanePort {
  embargo: EmbargoPort;
  /** Warnings to the security team when an embargoed patch breaks or retires. */
  notifier?: EmbargoNotifier;
  audit: Pick<AuditLog, 'append'>;
  /** The builder's own mirror of the project (the patches are applied in a workspace over it). */
  mirrorOf(project: PromotedProject): string;
  workDir: string;
  /** The lane's own registry (the promotion policy's `embargoRegistry`) and the builder's login there. */
  registry: { host: string; credentials: RegistryCredentials };
  privateLookasideDir: string;
  logger: Logger;
  now: () => number;
  stages: PromotionStages;
  /** Untag what the lane built, off its path. */
  removeImages(tags: readonly string[], log: Logger): void;
}

export async function embargoLane(p: EmbargoLanePort, project: PromotedProject, commit: string, branch: string): Promise<void> {
  const e = p.embargo;
  const log = p.logger.child({ component: 'embargo' });
  const work = join(p.workDir, `private-${randomUUID()}`);
  const built: string[] = [];
  const at = (): string => new Date(p.now()).toISOString();
  let ids: string[] = [];
  try {
    const patches = await e.active(project.name);
    if (patches.length === 0) return;
    // From here on, whatever fails leaves these without an image for this commit: all are told.
    ids = patches.map((x) => x.id);
    await mkdir(work, { recursive: true, mode: 0o700 });
    const ws = await PatchWorkspace.open(p.mirrorOf(project), join(work, 'git'));
    const live: { id: string; patch: string; digest: string }[] = [];
    for (const x of patches) {
      const pub = await ws.isPublic(commit, x.patch);
      if (pub.public) {
        // The store records the retirement in the audit log (id and digest); the team is told.
        await e.retire(x.id, `the public history contains it at ${commit} (${pub.how}${pub.match ? ` ${pub.match}` : ''})`);
        await warn(p, x.id);
      } else live.push(x);
    }
    ids = live.map((x) => x.id);
    if (live.length === 0) return;
    const applied = await ws.apply(commit, live.map((x) => ({ id: x.id, patch: x.patch })));
    if (!applied.ok) {
      // The patch that stopped applying is the broken one; the others only get no image this time.
      await e.appendLog(applied.failed, `${at()} does not apply on ${commit}:\n${applied.detail}\n`);
      const blocked = ids.filter((x) => x !== applied.failed);
      for (const id of blocked) await e.appendLog(id, `${at()} no patched image for ${commit}: ${applied.failed} does not apply\n`);
      await broken(p, [applied.failed], commit, 'apply', 'does not apply');
      if (blocked.length > 0) await broken(p, blocked, commit, 'blocked', `${applied.failed} does not apply`);
      return;
    }
    const lane = privateLane(
      { project, commit, branch, work, built, startedOn: new Date(p.now()), log },
      {
        workspace: ws,
        tree: applied.tree,
        registry: p.registry,
        privateLookasideDir: p.privateLookasideDir,
        patches: live.map((x) => x.digest),
        onJobLog: async (job, data, passed) => {
          for (const id of ids) await e.appendLog(id, `${at()} ${commit} job ${job}: ${passed ? 'passed' : 'FAILED'}\n${data.toString('utf8')}\n`);
        },
      },
    );
    const out = await buildLane(p.stages, lane);
    // The signature and provenance stay in the private lookaside too; the team reads these copies.
    const files = await Promise.all([readFile(out.signature), readFile(out.provenance), readFile(`${out.provenance}.asc`)]);
    for (const x of live) {
      for (const [i, name] of PRIVATE_ARTIFACTS.entries()) await e.putArtifact(x.id, name, files[i]!);
      await e.recordBuild(x.id, { commit, reference: out.reference, digest: out.digest });
    }
    // Ids and patch digests only: a commit or an image digest would name the project.
    await p.audit.append('embargo', { event: 'published', embargoes: ids, patches: live.map((x) => x.digest) });
  } catch (err) {
    const stop = err instanceof Stop ? err : undefined;
    const step = stop?.step === 'tests' ? 'tests' : stop ? 'build' : 'internal';
    const detail = err instanceof Error ? err.message : String(err);
    for (const id of ids) await e.appendLog(id, `${at()} ${commit} ${stop?.step ?? 'internal'}: ${detail}\n`).catch(() => undefined);
    if (!stop) log.error({ embargoes: ids, code: isAirlockError(err) ? err.code : 'internal' }, 'the private lane failed (details in the embargo log)');
    if (ids.length > 0) await broken(p, ids, commit, step, stop?.step ?? 'internal').catch(() => undefined);
  } finally {
    await rm(work, { recursive: true, force: true }).catch(() => undefined);
    p.removeImages(built, log);
  }
}

/** No patched image for `commit`: recorded (encrypted), audited (ids), and the team warned. */
async function broken(p: EmbargoLanePort, ids: readonly string[], commit: string, step: BreakStep, what: string): Promise<void> {
  // The store records each break in the audit log (id and digest).
  for (const id of ids) await p.embargo.recordBreak(id, { commit, step, reason: `${step}: ${what}` });
  for (const id of ids) await warn(p, id);
}

/** One opaque warning per embargo that changed (the body names none of them: webhook.ts); the audit record names the id. */
export async function warn(p: Pick<EmbargoLanePort, 'notifier' | 'audit'>, embargo: string): Promise<void> {
  const sent = (await p.notifier?.warn()) ?? { delivered: false, attempts: 0, error: 'no notifier configured' };
  await p.audit.append('embargo', { event: 'warned', embargo, delivered: sent.delivered, attempts: sent.attempts, ...(sent.error ? { error: sent.error } : {}) });
}
