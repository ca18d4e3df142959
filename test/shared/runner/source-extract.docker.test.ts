/**
 * The source extractor against real workspaces: a freshly formatted ext4 on a loop device, mounted
 * on the host by WorkspaceManager.withMounted, fed hostile tars straight (without the repack that
 * the runner puts in front of it). Each refusal must name the entry, write nothing outside the
 * mount, and leave nothing mounted. Then the runner: what a job sees, hostile sources through
 * run(), the fallback to the archive API, and a runner killed mid-extraction.
 */
import { spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { lstat, readFile, readlink, stat, symlink } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import type Docker from 'dockerode';
import { tarOf, type TarEntry } from '../../support/tar.js';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { loadJobPolicy } from '#shared/policy/job-policy.js';
import { createDocker } from '#shared/docker/client.js';
import { JobRunner } from '#shared/runner/job-runner.js';
import { newOwnerId, ownerToken } from '#shared/runner/owner.js';
import { reap } from '#shared/runner/reaper.js';
import { extractSource } from '#shared/runner/source-extract.js';
import { MountFailedError, WorkspaceManager, type Workspace } from '#shared/runner/workspace.js';
import { BUSYBOX, expectNothingLeft, makeRunner, spec, STATE_DIR, tempDir } from '../../support/docker.js';

const MiB = 1024 * 1024;

/** A lone ustar header for a regular file that claims `size` bytes (at most 8 GiB - 1). */
async function headerClaiming(name: string, size: number): Promise<Buffer> {
  const h = Buffer.from((await tarOf([{ name, body: '' }])).subarray(0, 512));
  h.write(`${size.toString(8).padStart(11, '0')}\0`, 124, 12, 'ascii');
  h.fill(' ', 148, 156);
  let sum = 0;
  for (const b of h) sum += b;
  h.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 8, 'ascii');
  return h;
}

type Entry = TarEntry;

let docker: Docker;
let runner: JobRunner;
let manager: WorkspaceManager;
let hostUid: number;
let hostGid: number;
/** Each test's own directory outside the workspace: an escape would land here. */
let outside = '';
const escapeName = `airlock-escape-${process.pid}`;
const owner = newOwnerId();

beforeAll(async () => {
  ({ docker, runner } = await makeRunner());
  const policy = loadJobPolicy();
  hostUid = runner.jobHostUid;
  hostGid = hostUid - policy.user.uid + policy.user.gid;
  manager = new WorkspaceManager({ docker, stateDir: STATE_DIR, owner, hostUid, hostGid });
});
afterAll(async () => {
  await manager?.close();
  await runner?.close();
});
afterEach(async () => {
  expect(workspaceMounts()).toEqual([]);
  expect(existsSync(`/etc/${escapeName}`)).toBe(false);
  expect(existsSync(`/tmp/${escapeName}`)).toBe(false);
  if (outside) expect(readdirSync(outside)).toEqual([]);
  outside = '';
  await expectNothingLeft(docker, runner.owner, runner);
});

/** Workspace fill mounts anywhere in this mount namespace. */
/** Workspaces of one owner's directory still mounted (other test files' runners mount theirs meanwhile); default: this file's. */
function workspaceMounts(ownerDir = join(STATE_DIR, 'workspaces', ownerToken(owner))): string[] {
  const own = join(ownerDir, '');
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[4] ?? '')
    .filter((p) => p.startsWith(own) && p.endsWith('.mnt'));
}

/** A fresh workspace, `fn` run on it, and the workspace destroyed whatever happens. */
async function withWorkspace<T>(fn: (ws: Workspace) => Promise<T>, bytes = 64 * MiB): Promise<T> {
  outside = tempDir('airlock-outside-');
  const ws = await manager.create(bytes);
  try {
    return await fn(ws);
  } finally {
    await manager.destroy(ws);
  }
}

const extract = (ws: Workspace, body: Buffer, maxBytes = 32 * MiB) =>
  manager.withMounted(ws, (root) => extractSource(Readable.from([body]), { root, owner: { uid: hostUid, gid: hostGid }, maxBytes, label: 'source.tar' }));

/** The workspace's files (but lost+found) as the host sees them: `name uid gid mode [-> target | :content]`. */
const listing = (ws: Workspace) =>
  manager.withMounted(ws, async (root) => {
    const out: string[] = [];
    const walk = async (rel: string): Promise<void> => {
      for (const n of readdirSync(join(root, rel)).sort()) {
        const name = rel ? `${rel}/${n}` : n;
        if (name === 'lost+found') continue;
        const st = await lstat(join(root, name));
        const what = st.isSymbolicLink() ? ` -> ${await readlink(join(root, name))}` : st.isFile() ? ` :${await readFile(join(root, name), 'utf8')}` : '/';
        out.push(`${name} ${st.uid - hostUid} ${st.gid - hostGid} ${(st.mode & 0o7777).toString(8)}${what}`);
        if (st.isDirectory()) await walk(name);
      }
    };
    await walk('');
    return out;
  });

describe('extractSource into a mounted workspace', () => {
  it('writes files, directories and symlinks owned by the job user, with their modes and times', async () => {
    await withWorkspace(async (ws) => {
      const mtime = new Date('2020-01-02T03:04:05Z');
      const report = await extract(
        ws,
        await tarOf([
          { name: './', type: 'directory', mode: 0o755 },
          { name: 'bin/', type: 'directory', mode: 0o750, mtime },
          { name: 'bin/run.sh', mode: 0o755, body: '#!/bin/sh\necho ran\n', mtime },
          { name: 'deep/er/data.txt', mode: 0o600, body: 'data' }, // parents made on the way
          { name: 'README', mode: 0o644, body: 'old' },
          { name: 'README', mode: 0o644, body: 'new' }, // a later entry replaces a file, as tar does
          { name: 'run', type: 'symlink', linkname: 'bin/run.sh' },
        ]),
      );
      expect(report).toEqual({ entries: 6, bytes: 29 }); // the replaced README counts too
      expect(await listing(ws)).toEqual([
        'README 0 0 644 :new',
        'bin 0 0 750/',
        'bin/run.sh 0 0 755 :#!/bin/sh\necho ran\n',
        'deep 0 0 755/',
        'deep/er 0 0 755/',
        'deep/er/data.txt 0 0 600 :data',
        'run 0 0 777 -> bin/run.sh',
      ]);
      await manager.withMounted(ws, async (root) => {
        expect((await stat(join(root, 'bin/run.sh'))).mtime).toEqual(mtime);
        expect((await stat(join(root, 'bin'))).mtime).toEqual(mtime);
      });
    });
  });

  const refusals: [string, Entry[], RegExp][] = [
    ['a symlink out, then a file through it', [{ name: 'a', type: 'symlink', linkname: '/etc' }, { name: `a/${escapeName}`, body: 'x' }], /^source\.tar: a: symlink to "\/etc" is absolute/],
    ['a symlink inside, then a file through it', [{ name: 'd/', type: 'directory' }, { name: 'a', type: 'symlink', linkname: 'd' }, { name: 'a/x', body: 'x' }], /^source\.tar: a\/x: would be written through the symlink "a"/],
    ['a symlink that climbs out', [{ name: 'up', type: 'symlink', linkname: '../..' }], /^source\.tar: up: symlink to "..\/.." leaves the workspace/],
    ['../x', [{ name: `../${escapeName}`, body: 'x' }], /tar entry would land outside the workspace/],
    ['a/../../x', [{ name: `a/../../${escapeName}`, body: 'x' }], /tar entry would land outside the workspace/],
    ['an absolute path', [{ name: `/tmp/${escapeName}`, body: 'x' }], /^source\.tar: \/tmp\/airlock-escape-\d+: tar entry would land outside the workspace/],
    ['a hardlink to a path outside', [{ name: 'pw', type: 'link', linkname: '/etc/passwd' }], /^source\.tar: pw: hardlink to "\/etc\/passwd" \(outside the workspace\): hardlinks are not accepted/],
    ['a hardlink climbing out', [{ name: 'pw', type: 'link', linkname: '../../../etc/passwd' }], /hardlink to "..\/..\/..\/etc\/passwd" \(outside the workspace\)/],
    ['a setuid file', [{ name: 'suid', mode: 0o4755, body: 'x' }], /^source\.tar: suid: mode 4755 has a setuid, setgid or sticky bit/],
    ['a setgid directory', [{ name: 'sgid/', type: 'directory', mode: 0o2755 }], /^source\.tar: sgid: mode 2755 has a setuid/],
    ['a device node', [{ name: 'mem', type: 'character-device', devmajor: 1, devminor: 1, mode: 0o666 }], /^source\.tar: mem: device nodes are not accepted/],
    ['a block device', [{ name: 'disk', type: 'block-device', devmajor: 7, devminor: 0 }], /^source\.tar: disk: device nodes are not accepted/],
    ['a fifo', [{ name: 'pipe', type: 'fifo' }], /^source\.tar: pipe: fifos are not accepted/],
    ['a file over the cap', [{ name: 'small', body: 'x' }, { name: 'big', body: Buffer.alloc(2 * MiB) }], /^source\.tar: big: source is larger than the workspace \(1048576 bytes\)/],
    ['a file over a directory', [{ name: 'd/', type: 'directory' }, { name: 'd', body: 'x' }], /^source\.tar: d: would replace a directory/],
  ];
  it.each(refusals)('refuses %s, names it, and writes nothing outside', async (_, entries, message) => {
    await withWorkspace(async (ws) => {
      const err = await extract(ws, await tarOf(entries), MiB).catch((e: unknown) => e);
      expect(err).toMatchObject({ code: 'AIRLOCK_E_INVALID_INPUT' });
      expect((err as Error).message).toMatch(message);
      // Nothing of the refused entry itself is there (entries before it may be).
      expect((await listing(ws)).join('\n')).not.toMatch(/escape|pw |suid|mem |disk |pipe |big /);
    });
  });

  it('refuses a file whose header claims more than the cap before reading any of it', async () => {
    await withWorkspace(async (ws) => {
      // A header claiming 8 GiB, then a stream that never ends: refused on the header alone.
      const input = new PassThrough();
      input.write(await headerClaiming('huge', 2 ** 33 - 1));
      input.write(Buffer.alloc(4096));
      const err = await manager
        .withMounted(ws, (root) => extractSource(input, { root, owner: { uid: hostUid, gid: hostGid }, maxBytes: 64 * MiB, label: 'source.tar' }))
        .catch((e: unknown) => e);
      expect((err as Error).message).toMatch(/^source\.tar: huge: source is larger than the workspace/);
      expect(input.destroyed).toBe(true); // and it stopped reading
      expect(await listing(ws)).toEqual([]);
    });
  });

  it('refuses a truncated tar and one that is not a tar', async () => {
    await withWorkspace(async (ws) => {
      const whole = await tarOf([{ name: 'f', body: Buffer.alloc(10_000, 1) }]);
      const cut = await extract(ws, whole.subarray(0, 3000)).catch((e: unknown) => e);
      expect(cut).toMatchObject({ code: 'AIRLOCK_E_INVALID_INPUT' });
      const junk = await extract(ws, Buffer.alloc(4096, 0x41)).catch((e: unknown) => e);
      expect(junk).toMatchObject({ code: 'AIRLOCK_E_INVALID_INPUT' });
      expect((junk as Error).message).toMatch(/not a readable tar/);
    });
  });

  it('does not write through a symlink that is already on the filesystem (lstat of every parent)', async () => {
    await withWorkspace(async (ws) => {
      // A link the stream never mentioned, so the entry guard cannot know it: the walk must.
      await manager.withMounted(ws, (root) => symlink(outside, join(root, 'planted')));
      const err = await extract(ws, await tarOf([{ name: 'planted/x', body: 'x' }])).catch((e: unknown) => e);
      expect((err as Error).message).toMatch(/^source\.tar: planted\/x: its parent "planted" is a symlink/);
      // And with the check gone, the kernel still would not follow it (nosymfollow).
      const direct = await manager.withMounted(ws, (root) => stat(join(root, 'planted', '.')).catch((e: NodeJS.ErrnoException) => e.code));
      expect(direct).toBe('ELOOP');
    });
  });

  it('says a source that needs more inodes than the workspace has does not fit', async () => {
    await withWorkspace(async (ws) => {
      const entries: Entry[] = Array.from({ length: 5000 }, (_, i) => ({ name: `f${i}`, body: '' }));
      const err = await extract(ws, await tarOf(entries)).catch((e: unknown) => e);
      expect(err).toMatchObject({ code: 'AIRLOCK_E_INVALID_INPUT' });
      expect((err as Error).message).toMatch(/does not fit the workspace/);
    }, 16 * MiB);
  });

  it('unmounts and removes the mountpoint when the writer throws', async () => {
    await withWorkspace(async (ws) => {
      await expect(manager.withMounted(ws, async () => { throw new Error('boom'); })).rejects.toThrow('boom');
      expect(workspaceMounts()).toEqual([]);
      // Only this manager's directory: other files' runners mount their workspaces under the same root meanwhile.
      const own = join(manager.workspacesDir, ownerToken(owner));
      expect(readdirSync(own, { recursive: true }).map(String).filter((n) => n.endsWith('.mnt'))).toEqual([]);
    });
  });
});

const sh = (script: string) => ['sh', '-c', script];
const runnerVia = (sourceVia: 'mount' | 'archive') => JobRunner.create({ docker: createDocker(), policy: loadJobPolicy(), stateDir: STATE_DIR, workspacePool: 0, sourceVia });

describe('the runner writes the source through the workspace mount', () => {
  it('the job sees its files owned by its own uid, with their content and modes', async () => {
    const src = tempDir();
    const file = join(src, 'src.tar');
    writeFileSync(
      file,
      await tarOf([
        { name: 'bin/', type: 'directory', mode: 0o755 },
        { name: 'bin/run.sh', mode: 0o755, body: '#!/bin/sh\necho from-script\n' },
        { name: 'secret.txt', mode: 0o600, body: 'mine' },
        { name: 'link', type: 'symlink', linkname: 'bin/run.sh' },
      ]),
    );
    const r = await runner.run(
      spec({ image: BUSYBOX, command: sh('./link; cat secret.txt; echo; stat -c "%u %g %a %n" bin bin/run.sh secret.txt; readlink link; echo new > bin/new && echo writable'), limits: { timeout: '20s' } }),
      { source: { tar: file } },
    );
    expect(r.log).toBe('from-script\nmine\n1000 1000 755 bin\n1000 1000 755 bin/run.sh\n1000 1000 600 secret.txt\nbin/run.sh\nwritable\n');
    expect(r.passed).toBe(true);
  });

  it('refuses a hostile source before the job runs, for both ways in', async () => {
    const file = join(tempDir(), 'evil.tar');
    writeFileSync(file, await tarOf([{ name: 'a', type: 'symlink', linkname: '.' }, { name: 'a/x', body: 'x' }]));
    for (const via of ['mount', 'archive'] as const) {
      const r = await runnerVia(via);
      try {
        await expect(r.run(spec({ image: BUSYBOX, command: ['true'] }), { source: { tar: file } })).rejects.toMatchObject({ code: 'AIRLOCK_E_INVALID_INPUT', message: expect.stringMatching(/would be written through the symlink "a"/) });
      } finally {
        await r.close();
      }
      await expectNothingLeft(docker, r.owner);
    }
  });

  it('refuses a source larger than an odd-size (unpooled) workspace', async () => {
    const file = join(tempDir(), 'big.tar');
    writeFileSync(file, await tarOf([{ name: 'big', body: Buffer.alloc(17 * MiB) }]));
    await expect(runner.run(spec({ image: BUSYBOX, command: ['true'], limits: { workspace: '16m' } }), { source: { tar: file } })).rejects.toMatchObject({
      code: 'AIRLOCK_E_INVALID_INPUT',
      message: expect.stringMatching(/: big: source is larger than the workspace \(16777216 bytes\)/),
    });
  });

  it('falls back to the archive API when the workspace cannot be mounted, for good after repeated failures', async () => {
    const r = await runnerVia('mount');
    try {
      const internals = r as unknown as { workspaces: WorkspaceManager };
      internals.workspaces.withMounted = () => Promise.reject(new MountFailedError('mount: permission denied (simulated)'));
      const src = tempDir();
      writeFileSync(join(src, 'f'), 'via-archive');
      for (let i = 0; i < 3; i++) {
        expect(r.sourceInjection).toBe('mount');
        const res = await r.run(spec({ image: BUSYBOX, command: sh('cat f; stat -c " %u" f'), limits: { timeout: '20s' } }), { source: { dir: src } });
        expect(res.log).toBe('via-archive 1000\n');
      }
      expect(r.sourceInjection).toBe('archive');
    } finally {
      await r.close();
    }
    await expectNothingLeft(docker, r.owner);
  });
});

describe('a runner killed while it writes a source', () => {
  it('leaves a mounted workspace that the reaper unmounts and frees', async () => {
    // A child process fills a workspace from a tar stream that stalls after its first file, says
    // where, and is killed there: its mount, volume and loop device stay behind.
    const script = `
      import { PassThrough } from 'node:stream';
      import tar from 'tar-stream';
      import { createDocker } from './shared/docker/client.js';
      import { newOwnerId } from './shared/runner/owner.js';
      import { extractSource } from './shared/runner/source-extract.js';
      import { WorkspaceManager } from './shared/runner/workspace.js';
      const m = new WorkspaceManager({ docker: createDocker(), stateDir: ${JSON.stringify(STATE_DIR)}, owner: newOwnerId(), hostUid: ${hostUid}, hostGid: ${hostGid} });
      const ws = await m.create(${16 * MiB});
      const pack = tar.pack();
      pack.entry({ name: 'first' }, 'x');
      const input = new PassThrough();
      pack.on('data', (d) => input.write(d)); // never finalized: the extraction waits for more
      setInterval(() => {}, 1000); // alive until killed
      await m.withMounted(ws, (root) => { console.log(JSON.stringify({ root, ws })); return extractSource(input, { root, owner: { uid: ${hostUid}, gid: ${hostGid} }, maxBytes: ${16 * MiB}, label: 'stall' }); });
    `;
    const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { cwd: process.cwd(), stdio: ['ignore', 'pipe', 'inherit'] });
    const line = await new Promise<string>((resolve, reject) => {
      let buf = '';
      child.stdout.on('data', (d: Buffer) => {
        buf += d.toString();
        if (buf.includes('\n')) resolve(buf.split('\n')[0]!);
      });
      child.once('exit', (code) => reject(new Error(`child exited early (${code})`)));
    });
    const { root, ws } = JSON.parse(line) as { root: string; ws: Workspace };
    for (let i = 0; i < 50 && !existsSync(join(root, 'first')); i++) await new Promise((r) => setTimeout(r, 100));
    expect(readFileSync(join(root, 'first'), 'utf8')).toBe('x');
    const exited = new Promise((r) => (child.exitCode === null ? child.once('exit', r) : r(undefined)));
    child.kill('SIGKILL');
    await exited;
    expect(workspaceMounts(dirname(root))).toEqual([root]);

    const report = await reap({ docker, workspacesDir: join(STATE_DIR, 'workspaces') });
    expect(report.mounts).toEqual([root]);
    expect(report.volumes).toContain(ws.volume);
    expect(workspaceMounts(dirname(root))).toEqual([]);
    expect(existsSync(root)).toBe(false);
    expect(readFileSync('/proc/self/mountinfo', 'utf8')).not.toContain(`${ws.loopDevice} `);
    const backing = (() => {
      try {
        return readFileSync(`/sys/block/${ws.loopDevice.slice(5)}/loop/backing_file`, 'utf8');
      } catch {
        return '';
      }
    })();
    expect(backing).not.toContain(ws.volume);
  });
});
