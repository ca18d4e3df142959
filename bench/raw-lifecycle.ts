/**
 * The baseline every airlock benchmark is measured against: a raw container lifecycle through
 * dockerode — create → start → wait → remove — with the same image and the same hardened create
 * options the runner uses. With `withWorkspace`, it mounts one of a few ready-made ext4 workspace
 * volumes (one per concurrent slot), so it pays the engine's volume mount but never makes, formats
 * or frees one.
 */
import type Docker from 'dockerode';
import { resolveLimits } from '#shared/policy/job-policy.js';
import { toCreateOptions } from '#shared/runner/convert.js';
import type { JobRunner } from '#shared/runner/job-runner.js';
import { newOwnerId } from '#shared/runner/owner.js';
import { WorkspaceManager, type Workspace } from '#shared/runner/workspace.js';
import type { JobPolicy } from '#shared/schemas/job-policy.js';
import { JobSpec } from '#shared/schemas/job-spec.js';
import type { Runtime } from '#shared/schemas/limits.js';

export interface RawLifecycle {
  /** One container lifecycle; `command` defaults to `true`. */
  run(runtime: Runtime, slot?: number, withWorkspace?: boolean, command?: string[]): Promise<void>;
  close(): Promise<void>;
}

export async function createRawLifecycle(o: { docker: Docker; policy: JobPolicy; runner: JobRunner; stateDir: string; image: string; slots: number }): Promise<RawLifecycle> {
  const imageId = (await o.docker.getImage(o.image).inspect()).Id;
  const workspaces = new WorkspaceManager({ docker: o.docker, stateDir: o.stateDir, owner: newOwnerId(), hostUid: o.runner.jobHostUid, hostGid: o.runner.jobHostUid, poolSize: 0 });
  const ready: Workspace[] = await Promise.all(Array.from({ length: o.slots }, () => workspaces.create(o.policy.limits.workspace)));
  let n = 0;
  return {
    async run(runtime, slot = 0, withWorkspace = true, command = ['true']) {
      const spec = JobSpec.parse({ id: `raw-${process.pid}-${++n}`, image: o.image, command, runtime });
      const { limits } = resolveLimits(spec.limits, runtime, o.policy);
      const opts = toCreateOptions({ spec, limits, runtime, imageId, imageVolumes: [], user: o.policy.user, owner: o.runner.owner, name: `airlock-raw-${spec.id}`, workspaceVolume: ready[slot]!.volume, createdAt: Date.now() });
      if (!withWorkspace) opts.HostConfig!.Mounts = [];
      const c: Docker.Container = await o.docker.createContainer(opts);
      await c.start();
      await c.wait();
      await c.remove({ force: true });
    },
    async close() {
      await Promise.all(ready.map((w) => workspaces.destroy(w)));
      await workspaces.close();
    },
  };
}
