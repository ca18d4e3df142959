/**
 * Pure mapping from (JobSpec, resolved limits, runtime) to the dockerode create options of one
 * hardened job container. No I/O here; job-runner.ts does the calls. Every isolation default
 * of docs/runner.md "Isolation defaults" is set here and asserted by test/shared/runner/convert.test.ts.
 *
 * The container's filesystem:
 *   /            image, read-only (ReadonlyRootfs)
 *   /workspace   the job's own ext4 filesystem of `limits.workspace` bytes (a Docker volume on a loop
 *                device; nosuid, nodev), owned by the job user; the source tar is put here
 *   /tmp         tmpfs of `limits.tmp` bytes, nosuid, nodev (its pages count against the memory limit)
 *   /dev/shm     Docker's default 64 MiB shm, private IPC namespace
 *   VOLUME paths of the image: a tmpfs like /tmp each, instead of an unbounded anonymous volume
 *   /run/secrets only for a trusted-builder step granted secrets: a read-only bind of a host tmpfs
 *                directory holding just those files (secret-files.ts)
 * Nothing else from the host is bind-mounted; the Docker socket is never present.
 */
import type Docker from 'dockerode';
import type { JobSpec } from '../schemas/job-spec.js';
import type { Limits, Runtime } from '../schemas/limits.js';
import { LABEL_CREATED, LABEL_JOB, LABEL_KIND, LABEL_OWNER } from './labels.js';
import { SECRETS_PATH } from './secret-files.js';

export const WORKSPACE_PATH = '/workspace';

/**
 * Under gVisor the job's processes are tasks inside the Sentry, not host processes, while the
 * host pids limit counts the Sentry's own threads (seen here: a sandbox does not start with 32).
 * The Sentry gets this headroom on top of the job's limit; the job's memory limit still bounds
 * a fork bomb inside the sandbox.
 */
export const RUNSC_SENTRY_PIDS = 128;

export interface ContainerPlan {
  spec: JobSpec;
  /** The image id the spec's image resolved to: the container runs exactly what was checked. */
  imageId: string;
  /** Paths the image declares as VOLUME: each gets a small tmpfs, so the engine makes no unbounded anonymous volume. */
  imageVolumes: readonly string[];
  limits: Limits;
  runtime: Runtime;
  user: { uid: number; gid: number };
  owner: string;
  name: string;
  workspaceVolume: string;
  /** ms since epoch, for the reaper's age check. */
  createdAt: number;
  /** A host tmpfs directory of the step's granted secret files, bind-mounted read-only at /run/secrets. */
  secretsDir?: string;
  /**
   * The job's package network (`container:<holder>`, shared/egress/package-network.ts) and what it
   * puts in the environment; absent: `none`, loopback only.
   */
  packages?: { networkMode: string; env: Record<string, string> };
  /**
   * The job's parent cgroup, which the runner limits to `limits.memory` and watches for OOM kills
   * (oom-cgroups.ts), and the container's own memory limit, a little above it so the parent is the
   * cgroup a charge fails at. Absent: the container's limit is the job's, under the engine's parent.
   */
  cgroup?: { parent: string; containerMemory: number };
}

/** Below 10 ms of CPU per 100 ms period the kernel (and runc) ignore or refuse the quota. */
export const MIN_NANO_CPUS = 10_000_000;

export function toCreateOptions(plan: ContainerPlan): Docker.ContainerCreateOptions {
  const { spec, limits } = plan;
  const nanoCpus = Math.round(limits.cpus * 1e9);
  if (nanoCpus < MIN_NANO_CPUS) throw new RangeError(`cpus ${limits.cpus} is below the smallest enforceable quota`);
  const tmpfs = `rw,exec,nosuid,nodev,size=${limits.tmp},mode=1777`;
  const covered = Object.fromEntries(plan.imageVolumes.filter((p) => p !== WORKSPACE_PATH && p !== '/tmp').map((p) => [p, tmpfs]));
  // The job may set HOME and anything else, but not the variables airlock itself vouches for.
  const env = { HOME: WORKSPACE_PATH, ...spec.env, ...plan.packages?.env, CI: 'true', AIRLOCK_JOB_ID: spec.id, ...(plan.secretsDir ? { AIRLOCK_SECRETS_DIR: SECRETS_PATH } : {}) };
  return {
    name: plan.name,
    Image: plan.imageId,
    Cmd: spec.command,
    Entrypoint: [],
    Env: Object.entries(env).map(([k, v]) => `${k}=${v}`),
    User: `${plan.user.uid}:${plan.user.gid}`,
    WorkingDir: WORKSPACE_PATH,
    // A container that joins another's network namespace takes its hostname too (the engine refuses both).
    ...(plan.packages ? {} : { Hostname: 'airlock-job' }),
    Tty: false,
    OpenStdin: false,
    AttachStdin: false,
    AttachStdout: true,
    AttachStderr: true,
    NetworkDisabled: !plan.packages,
    StopSignal: 'SIGTERM',
    Labels: {
      [LABEL_JOB]: spec.id,
      [LABEL_OWNER]: plan.owner,
      [LABEL_CREATED]: String(plan.createdAt),
      [LABEL_KIND]: 'job',
    },
    HostConfig: {
      Runtime: plan.runtime,
      NetworkMode: plan.packages?.networkMode ?? 'none',
      Init: true, // docker-init (tini) as pid 1: reaps orphans, forwards SIGTERM
      ReadonlyRootfs: true,
      CapDrop: ['ALL'],
      CapAdd: [],
      SecurityOpt: ['no-new-privileges'],
      Privileged: false,
      IpcMode: 'private',
      PidMode: '',
      ...(plan.cgroup ? { CgroupParent: plan.cgroup.parent } : {}),
      Memory: plan.cgroup?.containerMemory ?? limits.memory,
      MemorySwap: plan.cgroup?.containerMemory ?? limits.memory, // swap == memory: no swap at all
      MemorySwappiness: 0,
      OomKillDisable: false,
      OomScoreAdj: 500, // the kernel picks a job before host processes
      NanoCpus: nanoCpus,
      PidsLimit: plan.runtime === 'runsc' ? limits.pids + RUNSC_SENTRY_PIDS : limits.pids,
      Ulimits: [
        { Name: 'core', Soft: 0, Hard: 0 },
        { Name: 'nofile', Soft: 4096, Hard: 4096 },
      ],
      Tmpfs: { ...covered, '/tmp': tmpfs },
      // NoCopy: the image's /workspace content is never copied into the volume (and the engine
      // skips that check, which is measurably faster).
      Mounts: [
        { Type: 'volume', Source: plan.workspaceVolume, Target: WORKSPACE_PATH, ReadOnly: false, VolumeOptions: { NoCopy: true } as NonNullable<Docker.MountSettings['VolumeOptions']> },
        ...(plan.secretsDir ? [{ Type: 'bind' as const, Source: plan.secretsDir, Target: SECRETS_PATH, ReadOnly: true, BindOptions: { Propagation: 'rprivate' as const } }] : []),
      ],
      Binds: [],
      Devices: [],
      // The runner reads the log through attach; the engine keeps none on disk.
      LogConfig: { Type: 'none', Config: {} },
      AutoRemove: false,
      RestartPolicy: { Name: 'no', MaximumRetryCount: 0 },
    },
  };
}
