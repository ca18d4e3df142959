/**
 * The hardened container options, asserted flag by flag and as whole objects, after Woodpecker's
 * TestToConfigSmall / TestToConfigFull: a new or dropped option must show up here.
 */
import { describe, expect, it } from 'vitest';
import { loadJobPolicy, resolveLimits } from '#shared/policy/job-policy.js';
import { JobSpec, type JobSpecInput } from '#shared/schemas/job-spec.js';
import { LABEL_CREATED, LABEL_JOB, LABEL_KIND, LABEL_OWNER } from '#shared/runner/labels.js';
import { RUNSC_SENTRY_PIDS, toCreateOptions, WORKSPACE_PATH, type ContainerPlan } from '#shared/runner/convert.js';

const MiB = 1024 ** 2;
const GiB = 1024 ** 3;
const policy = loadJobPolicy();
const CREATED = 1_700_000_000_000;

function plan(input: JobSpecInput): ContainerPlan {
  const spec = JobSpec.parse(input);
  const { limits, runtime } = resolveLimits(spec.limits, spec.runtime, policy);
  return {
    spec,
    imageId: `sha256:${'ab'.repeat(32)}`,
    imageVolumes: [],
    limits,
    runtime,
    user: policy.user,
    owner: 'host-a/4242/9001',
    name: `airlock-job-${spec.id}`,
    workspaceVolume: `airlock-ws-${spec.id}`,
    createdAt: CREATED,
  };
}

const small = plan({ id: 'small', image: 'airlock/base:busybox', command: ['true'] });
const full = plan({
  id: 'full.1',
  image: 'airlock/base:debian',
  command: ['sh', '-c', 'make test'],
  env: { GOFLAGS: '-mod=vendor', EMPTY: '', WITH_EQUALS: 'a=b=c' },
  runtime: 'runsc',
  limits: { memory: '256m', cpus: 0.5, pids: 64, tmp: '16m', timeout: '5m' },
});

describe.each([
  ['small', small],
  ['full', full],
] as const)('toCreateOptions hardening (%s spec)', (_name, p) => {
  const o = toCreateOptions(p);
  const hc = o.HostConfig!;

  it('runs as the policy user, never root', () => {
    expect(o.User).toBe(`${policy.user.uid}:${policy.user.gid}`);
    expect(o.User).not.toMatch(/^(0|root)(:|$)/);
  });
  it('drops every capability and adds none', () => {
    expect(hc.CapDrop).toEqual(['ALL']);
    expect(hc.CapAdd ?? []).toEqual([]);
  });
  it('sets no-new-privileges and is not privileged', () => {
    expect(hc.SecurityOpt).toContain('no-new-privileges');
    expect(hc.SecurityOpt?.some((s: string) => /unconfined/.test(s))).toBe(false);
    expect(hc.Privileged).toBe(false);
  });
  it('has a read-only root filesystem', () => {
    expect(hc.ReadonlyRootfs).toBe(true);
  });
  it('has no network', () => {
    expect(hc.NetworkMode).toBe('none');
    expect(o.NetworkDisabled).toBe(true);
    expect(o.ExposedPorts).toBeUndefined();
    expect(hc.PortBindings).toBeUndefined();
  });
  it('applies memory with no swap, CPU and pids limits', () => {
    expect(hc.Memory).toBe(p.limits.memory);
    expect(hc.MemorySwap).toBe(hc.Memory);
    expect(hc.NanoCpus).toBe(Math.round(p.limits.cpus * 1e9));
    expect(hc.PidsLimit).toBe(p.runtime === 'runsc' ? p.limits.pids + RUNSC_SENTRY_PIDS : p.limits.pids);
    expect(hc.PidsLimit).toBeGreaterThan(0);
  });
  it('runs an init as pid 1', () => {
    expect(hc.Init).toBe(true);
  });
  it('mounts nothing from the host: only the workspace volume and a sized /tmp', () => {
    expect(hc.Binds ?? []).toEqual([]);
    expect(hc.Devices ?? []).toEqual([]);
    expect(hc.VolumesFrom).toBeUndefined();
    expect(o.Volumes).toBeUndefined();
    expect(hc.Mounts).toEqual([
      { Type: 'volume', Source: p.workspaceVolume, Target: WORKSPACE_PATH, ReadOnly: false, VolumeOptions: { NoCopy: true } },
    ]);
    expect(Object.keys(hc.Tmpfs ?? {})).toEqual(['/tmp']);
    const tmp = hc.Tmpfs!['/tmp']!.split(',');
    expect(tmp).toContain(`size=${p.limits.tmp}`);
    expect(tmp).toContain('nosuid');
    expect(tmp).toContain('nodev');
  });
  it('keeps no engine-side log', () => {
    expect(hc.LogConfig).toEqual({ Type: 'none', Config: {} });
  });
  it('labels the container for the reaper', () => {
    expect(o.Labels).toEqual({
      [LABEL_JOB]: p.spec.id,
      [LABEL_OWNER]: 'host-a/4242/9001',
      [LABEL_CREATED]: String(CREATED),
      [LABEL_KIND]: 'job',
    });
    expect(Object.keys(o.Labels!)).toEqual(expect.arrayContaining(['airlock.job', 'airlock.owner', 'airlock.created']));
  });
  it('uses the resolved runtime', () => {
    expect(hc.Runtime).toBe(p.runtime);
  });
  it('runs the command as given, with the image entrypoint reset', () => {
    expect(o.Cmd).toEqual(p.spec.command);
    expect(o.Entrypoint).toEqual([]);
    expect(o.Image).toBe(p.imageId); // the checked image id, never the tag a retag could move
  });
});

describe('toCreateOptions, whole objects', () => {
  it('small spec: policy defaults, runc', () => {
    expect(toCreateOptions(small)).toEqual({
      name: 'airlock-job-small',
      Image: `sha256:${'ab'.repeat(32)}`,
      Cmd: ['true'],
      Entrypoint: [],
      Env: ['HOME=/workspace', 'CI=true', 'AIRLOCK_JOB_ID=small'],
      User: '1000:1000',
      WorkingDir: '/workspace',
      Hostname: 'airlock-job',
      Tty: false,
      OpenStdin: false,
      AttachStdin: false,
      AttachStdout: true,
      AttachStderr: true,
      NetworkDisabled: true,
      StopSignal: 'SIGTERM',
      Labels: { 'airlock.job': 'small', 'airlock.owner': 'host-a/4242/9001', 'airlock.created': String(CREATED), 'airlock.kind': 'job' },
      HostConfig: {
        Runtime: 'runc',
        NetworkMode: 'none',
        Init: true,
        ReadonlyRootfs: true,
        CapDrop: ['ALL'],
        CapAdd: [],
        SecurityOpt: ['no-new-privileges'],
        Privileged: false,
        IpcMode: 'private',
        PidMode: '',
        Memory: GiB,
        MemorySwap: GiB,
        MemorySwappiness: 0,
        OomKillDisable: false,
        OomScoreAdj: 500,
        NanoCpus: 1_000_000_000,
        PidsLimit: 256,
        Ulimits: [
          { Name: 'core', Soft: 0, Hard: 0 },
          { Name: 'nofile', Soft: 4096, Hard: 4096 },
        ],
        Tmpfs: { '/tmp': `rw,exec,nosuid,nodev,size=${64 * MiB},mode=1777` },
        Mounts: [{ Type: 'volume', Source: 'airlock-ws-small', Target: '/workspace', ReadOnly: false, VolumeOptions: { NoCopy: true } }],
        Binds: [],
        Devices: [],
        LogConfig: { Type: 'none', Config: {} },
        AutoRemove: false,
        RestartPolicy: { Name: 'no', MaximumRetryCount: 0 },
      },
    });
  });

  it('full spec: env, runsc, custom limits', () => {
    const o = toCreateOptions(full);
    expect([...o.Env!].sort()).toEqual(['AIRLOCK_JOB_ID=full.1', 'CI=true', 'EMPTY=', 'GOFLAGS=-mod=vendor', 'HOME=/workspace', 'WITH_EQUALS=a=b=c']);
    expect(o.Cmd).toEqual(['sh', '-c', 'make test']);
    expect(o.HostConfig).toMatchObject({
      Runtime: 'runsc',
      Memory: 256 * MiB,
      MemorySwap: 256 * MiB,
      NanoCpus: 500_000_000,
      PidsLimit: 64 + RUNSC_SENTRY_PIDS,
      Tmpfs: { '/tmp': `rw,exec,nosuid,nodev,size=${16 * MiB},mode=1777` },
    });
    // Only the limits and runtime differ from the small spec's host config.
    const { Runtime, Memory, MemorySwap, NanoCpus, PidsLimit, Tmpfs, Mounts, ...rest } = o.HostConfig!;
    const { Runtime: _r, Memory: _m, MemorySwap: _s, NanoCpus: _n, PidsLimit: _p, Tmpfs: _t, Mounts: _v, ...smallRest } = toCreateOptions(small).HostConfig!;
    expect(rest).toEqual(smallRest);
    expect([Runtime, Memory, MemorySwap, NanoCpus, PidsLimit, Tmpfs, Mounts]).not.toContain(undefined);
  });

  it('a step granted secrets (trusted builder) gets their tmpfs directory read-only at /run/secrets, and the variable naming it; nothing else changes', () => {
    const o = toCreateOptions({ ...small, secretsDir: '/dev/shm/airlock-secrets/job-1' });
    expect(o.HostConfig!.Mounts).toEqual([
      ...toCreateOptions(small).HostConfig!.Mounts!,
      { Type: 'bind', Source: '/dev/shm/airlock-secrets/job-1', Target: '/run/secrets', ReadOnly: true, BindOptions: { Propagation: 'rprivate' } },
    ]);
    expect(o.Env).toContain('AIRLOCK_SECRETS_DIR=/run/secrets');
    expect(toCreateOptions(small).Env!.some((e) => e.startsWith('AIRLOCK_SECRETS_DIR='))).toBe(false);
    const { Mounts: _a, ...with_ } = o.HostConfig!;
    const { Mounts: _b, ...without } = toCreateOptions(small).HostConfig!;
    expect(with_).toEqual(without);
  });

  it('a job in a parent cgroup of the runner (oom-cgroups.ts) names it, with its own memory limit as given; nothing else changes', () => {
    const o = toCreateOptions({ ...small, cgroup: { parent: '/airlock-jobs/0123456789abcdef/fedcba9876543210', containerMemory: GiB + 8 * MiB } });
    const { CgroupParent, Memory, MemorySwap, ...rest } = o.HostConfig!;
    expect({ CgroupParent, Memory, MemorySwap }).toEqual({ CgroupParent: '/airlock-jobs/0123456789abcdef/fedcba9876543210', Memory: GiB + 8 * MiB, MemorySwap: GiB + 8 * MiB });
    const { Memory: _m, MemorySwap: _s, ...without } = toCreateOptions(small).HostConfig!;
    expect(rest).toEqual(without);
    expect(toCreateOptions(small).HostConfig!.CgroupParent).toBeUndefined();
  });

  it('takes the created and owner labels from the plan', () => {
    const o = toCreateOptions({ ...small, createdAt: 42, owner: 'h/1/2' });
    expect(o.Labels?.[LABEL_CREATED]).toBe('42');
    expect(o.Labels?.[LABEL_OWNER]).toBe('h/1/2');
  });
});

describe('image volumes and CPU floor', () => {
  it('covers each VOLUME the image declares with a tmpfs like /tmp, leaving /workspace and /tmp as they are', () => {
    const p = { ...plan({ id: 'vol', image: 'x', command: ['true'] }), imageVolumes: ['/data', '/var/lib/db', '/workspace', '/tmp'] };
    const tmpfs = toCreateOptions(p).HostConfig!.Tmpfs!;
    expect(Object.keys(tmpfs).sort()).toEqual(['/data', '/tmp', '/var/lib/db']);
    expect(tmpfs['/data']).toBe(tmpfs['/tmp']);
    expect(toCreateOptions(p).HostConfig!.Mounts).toHaveLength(1);
  });

  it('refuses to build options whose CPU quota the kernel would ignore', () => {
    const p = plan({ id: 'cpu', image: 'x', command: ['true'] });
    expect(() => toCreateOptions({ ...p, limits: { ...p.limits, cpus: 0.001 } })).toThrow(RangeError);
  });
});

describe('the spec env', () => {
  it('only ever becomes Env strings: it cannot reach labels, user or host config', () => {
    const hostile = plan({
      id: 'hostile',
      image: 'airlock/base:busybox',
      command: ['true'],
      env: { User: '0', Privileged: 'true', HostConfig: '{"Privileged":true}', Labels: 'x', airlock_job: 'other', NetworkMode: 'host', Binds: '/:/host' },
    });
    const o = toCreateOptions(hostile);
    const base = toCreateOptions({ ...hostile, spec: { ...hostile.spec, env: {} } });
    expect([...o.Env!].sort()).toEqual([...base.Env!, 'User=0', 'Privileged=true', 'HostConfig={"Privileged":true}', 'Labels=x', 'airlock_job=other', 'NetworkMode=host', 'Binds=/:/host'].sort());
    const { Env: _e, ...withoutEnv } = o;
    const { Env: _b, ...baseWithoutEnv } = base;
    expect(withoutEnv).toEqual(baseWithoutEnv);
    expect(o.User).toBe('1000:1000');
    expect(o.HostConfig?.Privileged).toBe(false);
    expect(o.Labels?.[LABEL_JOB]).toBe('hostile');
  });

  it('may set HOME, but not the variables airlock vouches for (CI, AIRLOCK_JOB_ID); each is set once', () => {
    const o = toCreateOptions(plan({ id: 'envy', image: 'airlock/base:busybox', command: ['true'], env: { HOME: '/tmp/home', CI: 'false', AIRLOCK_JOB_ID: 'someone-else' } }));
    expect([...o.Env!].sort()).toEqual(['AIRLOCK_JOB_ID=envy', 'CI=true', 'HOME=/tmp/home']);
    expect(o.WorkingDir).toBe(WORKSPACE_PATH);
    expect(o.Labels?.[LABEL_JOB]).toBe('envy');
  });

  it('is refused by the schema when a name is not an environment variable name', () => {
    for (const name of ['A=B', 'A B', '1X', '', 'X\nY']) {
      expect(JobSpec.safeParse({ id: 'x', image: 'airlock/base:busybox', command: ['true'], env: { [name]: 'v' } }).success).toBe(false);
    }
  });
});
