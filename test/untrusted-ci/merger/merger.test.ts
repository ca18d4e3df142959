/**
 * The merger against real git: upstream repos in temp dirs, a mirror root per test file.
 * Covers fast-forward, merge, conflicts (with the branch, with a change ahead), missing refs,
 * a gate stack, concurrency, reading files and trees, tar export, hostile input and hooks.
 */
import { execFileSync } from 'node:child_process';
import { createReadStream, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { extract } from 'tar-stream';
import { beforeAll, describe, expect, it } from 'vitest';
import { CancelledError, GitFailedError, InvalidInputError, NotFoundError } from '#shared/errors.js';
import { runGit } from '#shared/git/git.js';
import { Merger, type PrepareRequest, type PrepareResult } from '../../../untrusted-ci/merger/merger.js';
import { Mirror } from '../../../untrusted-ci/merger/mirror.js';
import type { TestChange } from '../../support/git-repo.js';
import { mergerRig } from '../../support/merger-rig.js';

const { root, merger, upstream } = mergerRig('p');
/** No cap that matters (the cap has its own test). */
const BIG = { maxBytes: 2 ** 40, maxEntries: 1_000_000 };
let seq = 0;
const change = (c: TestChange): { ref: string; label: string } => ({ ref: c.ref, label: c.label });
function prepare(req: Omit<PrepareRequest, 'buildId' | 'branch'> & { buildId?: string; branch?: string }): Promise<PrepareResult> {
  return merger.prepare({ branch: 'master', buildId: `b${++seq}`, ...req });
}
function merged(r: PrepareResult): Extract<PrepareResult, { kind: 'merged' }> {
  if (r.kind !== 'merged') throw new Error(`expected merged, got ${JSON.stringify(r)}`);
  return r;
}
async function mirrorGit(name: string, ...args: string[]): Promise<string> {
  return (await runGit(args, { gitDir: Mirror.of(root, name).dir })).stdout.toString('utf8').trim();
}
async function tarEntries(stream: Readable): Promise<Map<string, { type: string; body: string; mode: number; linkname?: string }>> {
  const entries = new Map<string, { type: string; body: string; mode: number; linkname?: string }>();
  const ex = extract();
  stream.pipe(ex);
  for await (const entry of ex) {
    const chunks: Buffer[] = [];
    for await (const c of entry) chunks.push(c as Buffer);
    const h = entry.header;
    entries.set(h.name, { type: h.type ?? 'file', body: Buffer.concat(chunks).toString('utf8'), mode: h.mode ?? 0, ...(h.linkname ? { linkname: h.linkname } : {}) });
  }
  return entries;
}

describe('prepare', () => {
  it('fast-forwards a change based on the tip; its fetch ref holds it, so no build ref is written', async () => {
    const { up, project } = upstream();
    const a = up.change(12345, 3, { 'a.txt': 'A\n' });
    const r = merged(await prepare({ project, changes: [change(a)], buildId: 'ff-1' }));
    expect(r).toEqual({ kind: 'merged', commit: a.sha, branchTip: up.tip(), steps: [{ label: '12345,3', commit: a.sha, result: a.sha, mode: 'fast-forward' }] });
    expect(await mirrorGit(project.name, 'for-each-ref', '--format=%(objectname)', 'refs/airlock/fetch/')).toContain(a.sha);
    await expect(mirrorGit(project.name, 'rev-parse', '--verify', '--quiet', 'refs/airlock/builds/ff-1')).rejects.toThrow();
    await merger.release('ff-1', project);
  });

  it('merges onto a branch that moved on, as airlock, with both parents', async () => {
    const { up, project } = upstream();
    const a = up.change(1, 1, { 'a.txt': 'A\n' });
    const tip = up.commit({ 'b.txt': 'B\n' });
    const r = merged(await prepare({ project, branch: 'refs/heads/master', changes: [change(a)] }));
    expect(r.branchTip).toBe(tip);
    expect(r.steps[0]?.mode).toBe('merge');
    const info = await mirrorGit(project.name, 'log', '-1', '--format=%P%n%cn <%ce>%n%s', r.commit);
    expect(info.split('\n')).toEqual([`${tip} ${a.sha}`, 'airlock <airlock@localhost>', 'Merge 1,1 into master']);
    // Dated at the later committer date of the two parents, both as author and committer.
    const later = Math.max(...(await mirrorGit(project.name, 'log', '--no-walk', '--format=%ct', tip, a.sha)).split('\n').map(Number));
    expect(await mirrorGit(project.name, 'log', '-1', '--format=%ct %at', r.commit)).toBe(`${later} ${later}`);
    expect((await merger.readFile(project, r.commit, 'a.txt', 100))?.toString()).toBe('A\n');
    expect((await merger.readFile(project, r.commit, 'b.txt', 100))?.toString()).toBe('B\n');
  });

  it('with no changes, is the branch tip; an already merged change is up to date', async () => {
    const { up, project } = upstream();
    const a = up.change(2, 1, { 'a.txt': 'A\n' });
    up.branch('master', a.sha);
    expect(merged(await prepare({ project, changes: [] })).commit).toBe(a.sha);
    const r = merged(await prepare({ project, changes: [change(a)] }));
    expect(r.steps).toEqual([{ label: '2,1', commit: a.sha, result: a.sha, mode: 'up-to-date' }]);
  });

  it('reports a conflict with the branch, naming the files', async () => {
    const { up, project } = upstream({ 'README.md': 'hello\n', 'src/x.ts': 'x\n' });
    const a = up.change(3, 1, { 'README.md': 'mine\n', 'src/x.ts': 'mine\n', 'ok.txt': 'fine\n' });
    up.commit({ 'README.md': 'theirs\n', 'src/x.ts': 'theirs\n' });
    expect(await prepare({ project, changes: [change(a)] })).toEqual({
      kind: 'conflict',
      label: '3,1',
      message: 'merge conflict with branch master',
      files: ['README.md', 'src/x.ts'],
    });
  });

  it('reports a change with no history in common with the branch', async () => {
    const { up, project } = upstream();
    const a = up.change(6, 1, { 'a.txt': 'A\n' });
    // An orphan commit (git's empty tree, no parent) as a change of its own.
    const orphan = up.git('commit-tree', '4b825dc642cb6eb9a060e54bf8d69288fbee4904', '-m', 'orphan');
    up.git('update-ref', 'refs/changes/77/77/1', orphan);
    const unrelated = { kind: 'conflict', label: '77,1', message: 'change 77,1 has no history in common with branch master', files: [] };
    expect(await prepare({ project, changes: [{ ref: 'refs/changes/77/77/1', label: '77,1' }] })).toEqual(unrelated);
    // Behind a change that merged: the same answer, for the second step.
    expect(await prepare({ project, changes: [change(a), { ref: 'refs/changes/77/77/1', label: '77,1' }] })).toEqual(unrelated);
  });

  it('reports a missing branch, ref or commit', async () => {
    const { up, project } = upstream();
    const a = up.change(4, 1, { 'a.txt': 'A\n' });
    expect(await prepare({ project, branch: 'nope', changes: [change(a)] })).toEqual({ kind: 'missing', message: 'branch nope not found' });
    expect(await prepare({ project, changes: [change(a), { ref: 'refs/changes/99/99/1', label: '99,1' }] })).toEqual({
      kind: 'missing',
      label: '99,1',
      message: 'ref refs/changes/99/99/1 not found',
    });
    const ghost = 'f'.repeat(40);
    expect(await prepare({ project, changes: [{ ref: ghost, label: 'ghost' }] })).toEqual({ kind: 'missing', label: 'ghost', message: `commit ${ghost} not found` });
  });

  it('takes a change by commit id (fetched by id when absent) or as a branch ref', async () => {
    const { up, project } = upstream();
    const loose = up.write({ 'loose.txt': 'L\n' }); // reachable from no ref at all
    up.branch('feature', up.write({ 'f.txt': 'F\n' }));
    const r = merged(await prepare({ project, changes: [{ ref: loose, label: 'loose' }, { ref: 'refs/heads/feature', label: 'feature' }] }));
    expect(r.steps.map((s) => s.mode)).toEqual(['fast-forward', 'merge']);
    const again = merged(await prepare({ project, changes: [{ ref: loose, label: 'loose' }] }));
    expect(again.commit).toBe(loose);
  });

  it('builds a gate stack: C on B on A on the tip', async () => {
    const { up, project } = upstream();
    const a = up.change(10, 1, { 'a.txt': 'A\n' });
    const b = up.change(11, 1, { 'b.txt': 'B\n' }, { parent: a.sha }); // B depends on A
    const c = up.change(12, 1, { 'c.txt': 'C\n' });
    const tip = up.commit({ 'README.md': 'moved on\n' });
    const r = merged(await prepare({ project, changes: [change(a), change(b), change(c)] }));
    expect(r.steps.map((s) => [s.label, s.mode])).toEqual([['10,1', 'merge'], ['11,1', 'merge'], ['12,1', 'merge']]);
    expect(r.steps[2]?.result).toBe(r.commit);
    expect(await mirrorGit(project.name, 'rev-list', '--first-parent', '--max-count=4', r.commit)).toBe(
      [r.commit, r.steps[1]?.result, r.steps[0]?.result, tip].join('\n'),
    );
    for (const [file, body] of [['a.txt', 'A\n'], ['b.txt', 'B\n'], ['c.txt', 'C\n'], ['README.md', 'moved on\n']] as const) {
      expect((await merger.readFile(project, r.commit, file, 100))?.toString()).toBe(body);
    }
  });

  it('names the change ahead that a change conflicts with', async () => {
    const { up, project } = upstream({ 'x.txt': 'x\n', 'y.txt': 'y\n' });
    const a = up.change(20, 1, { 'x.txt': 'from A\n' });
    const harmless = up.change(21, 1, { 'h.txt': 'h\n' });
    const b = up.change(22, 1, { 'x.txt': 'from B\n' });
    const c = up.change(23, 1, { 'y.txt': 'from C\n' });
    const r = await prepare({ project, changes: [change(harmless), change(a), change(c), change(b)] });
    expect(r).toEqual({ kind: 'conflict', label: '22,1', message: 'merge conflict with change 20,1', files: ['x.txt'] });
    up.commit({ 'y.txt': 'moved on\n' });
    expect(await prepare({ project, changes: [change(a), change(c)] })).toMatchObject({ label: '23,1', message: 'merge conflict with branch master' });
  });

  it('serialises concurrent fetches of one project and gets every state right', async () => {
    const { up, project } = upstream();
    const changes = Array.from({ length: 6 }, (_, i) => up.change(30 + i, 1, { [`f${i}.txt`]: `${i}\n` }));
    up.commit({ 'README.md': 'moved\n' });
    const results = await Promise.all(changes.map((c, i) => prepare({ project, changes: [change(c)], buildId: `conc-${i}` })));
    for (const [i, r] of results.entries()) {
      const m = merged(r);
      expect((await merger.readFile(project, m.commit, `f${i}.txt`, 10))?.toString()).toBe(`${i}\n`);
      expect(await mirrorGit(project.name, 'rev-parse', `refs/airlock/builds/conc-${i}`)).toBe(m.commit);
    }
  });

  it('release drops the build ref (idempotent, found without the project); gc runs and drops refs no build holds', async () => {
    const { up, project } = upstream();
    const a = up.change(40, 1, { 'a.txt': 'A\n' });
    up.commit({ 'moved.txt': 'on\n' }); // a real merge, so a build ref is written
    merged(await prepare({ project, changes: [change(a)], buildId: 'rel-1' }));
    expect(await mirrorGit(project.name, 'rev-parse', 'refs/airlock/builds/rel-1')).toMatch(/^[0-9a-f]{40}$/);
    // A ref left by a process that died is dropped by gc; one a live build holds is kept.
    const other = new Merger({ root });
    merged(await other.prepare({ project, branch: 'master', changes: [change(a)], buildId: 'orphan-1' }));
    await merger.gc();
    await expect(mirrorGit(project.name, 'rev-parse', '--verify', '--quiet', 'refs/airlock/builds/orphan-1')).rejects.toThrow();
    expect(await mirrorGit(project.name, 'rev-parse', 'refs/airlock/builds/rel-1')).toMatch(/^[0-9a-f]{40}$/);
    await new Merger({ root }).release('rel-1'); // a fresh instance: scans every mirror
    await merger.release('rel-1');
    await expect(runGit(['rev-parse', '--verify', 'refs/airlock/builds/rel-1'], { gitDir: Mirror.of(root, project.name).dir })).rejects.toThrow(GitFailedError);
    await merger.gc();
  });

  it('fetchedSince: a check whose refs a fetch since its enqueue found fetches nothing; older fetches, unknown refs and the gate fetch', async () => {
    const { up, project } = upstream();
    const a = up.change(31, 1, { 'a.txt': 'A\n' });
    const enqueued = Date.now();
    await merger.prefetch(project, 'master', a.ref);
    const tipThen = up.tip();
    const moved = up.commit({ 'moved.txt': 'on\n' });
    // Fetched ahead since the enqueue: the branch as the prefetch found it, no fetch.
    const r1 = merged(await prepare({ project, changes: [change(a)], fetchedSince: enqueued }));
    expect([r1.branchTip, r1.commit]).toEqual([tipThen, a.sha]);
    // Enqueued after that fetch began: fetched again, the branch as it is now.
    const r2 = merged(await prepare({ project, changes: [change(a)], fetchedSince: Date.now() + 1 }));
    expect(r2.branchTip).toBe(moved);
    // A ref no fetch has found yet is fetched (and the branch with it).
    const b = up.change(32, 1, { 'b.txt': 'B\n' }, { parent: moved });
    const r3 = merged(await prepare({ project, changes: [change(b)], fetchedSince: enqueued }));
    expect([r3.branchTip, r3.steps[0]?.mode]).toEqual([moved, 'fast-forward']);
    // No fetchedSince (the gate): always fetched.
    const last = up.commit({ 'last.txt': 'L\n' });
    expect(merged(await prepare({ project, changes: [change(a)] })).branchTip).toBe(last);
    // A prefetch of a ref that is not there never throws; the build says what is missing.
    await merger.prefetch(project, 'master', 'refs/changes/99/99/1');
    await merger.prefetch(project, 'no-such-branch', 'refs/changes/99/99/1');
    await merger.prefetch(project, 'master', 'not a ref');
    expect(await prepare({ project, changes: [{ ref: 'refs/changes/99/99/1', label: '99,1' }], fetchedSince: enqueued })).toEqual({ kind: 'missing', label: '99,1', message: 'ref refs/changes/99/99/1 not found' });
  });

  it('fetchedSince: after gc nothing fetched before counts', async () => {
    const { up, project } = upstream();
    const a = up.change(33, 1, { 'a.txt': 'A\n' });
    const enqueued = Date.now();
    await merger.prefetch(project, 'master', a.ref);
    const moved = up.commit({ 'moved.txt': 'on\n' });
    await merger.gc();
    expect(merged(await prepare({ project, changes: [change(a)], fetchedSince: enqueued })).branchTip).toBe(moved);
  });

  it('stops with CancelledError when aborted', async () => {
    const { up, project } = upstream();
    const a = up.change(41, 1, { 'a.txt': 'A\n' });
    await expect(prepare({ project, changes: [change(a)], signal: AbortSignal.abort() })).rejects.toBeInstanceOf(CancelledError);
  });
});

describe('reading a prepared commit', () => {
  const { up, project } = upstream({
    'README.md': 'hello\n',
    'link': { symlink: 'README.md' },
    'bin/run': { mode: '100755', content: '#!/bin/sh\n' },
    'docker/Dockerfile': 'FROM scratch\n',
    'big.txt': 'x'.repeat(1000),
    '.gitattributes': 'secret.txt export-ignore\nversion.txt export-subst\n',
    'secret.txt': 'still here\n',
    'version.txt': '$Format:%H$\n',
  });
  up.commit({ 'vendor/lib': { submodule: 'a'.repeat(40) } });
  let commit = '';
  beforeAll(async () => {
    commit = merged(await prepare({ project, changes: [] })).commit;
  });

  it('readFile returns bytes, or undefined when absent', async () => {
    expect((await merger.readFile(project, commit, 'README.md', 6))?.toString()).toBe('hello\n');
    expect(await merger.readFile(project, commit, 'nope.txt', 100)).toBeUndefined();
    expect(await merger.readFile(project, commit, 'docker/nope', 100)).toBeUndefined();
  });

  it.each([
    ['link', /symbolic link/],
    ['vendor/lib', /submodule/],
    ['docker', /directory/],
    ['big.txt', /1000 bytes, over the limit of 999/],
    ['../etc/passwd', /component/],
    ['/etc/passwd', /absolute/],
  ])('readFile refuses %j', async (path, message) => {
    await expect(merger.readFile(project, commit, path, 999)).rejects.toThrow(message);
    await expect(merger.readFile(project, commit, path, 999)).rejects.toBeInstanceOf(InvalidInputError);
  });

  it('refuses a partial commit id, and reports an unknown commit or project as not found', async () => {
    await expect(merger.readFile(project, commit.slice(0, 12), 'README.md', 10)).rejects.toBeInstanceOf(InvalidInputError);
    await expect(merger.readFile(project, '0'.repeat(40), 'README.md', 10)).rejects.toBeInstanceOf(NotFoundError);
    await expect(merger.readFile({ name: 'never-prepared' }, commit, 'README.md', 10)).rejects.toBeInstanceOf(NotFoundError);
  });

  it('exportTar writes the whole tree, exactly as committed', async () => {
    const file = join(root, 'src.tar');
    await merger.exportTar(project, commit, file, BIG);
    const entries = await tarEntries(createReadStream(file));
    expect(entries.get('README.md')?.body).toBe('hello\n');
    expect(entries.get('link')).toMatchObject({ type: 'symlink', linkname: 'README.md' });
    expect((entries.get('bin/run')?.mode ?? 0) & 0o111).not.toBe(0);
    expect(entries.get('secret.txt')?.body).toBe('still here\n'); // export-ignore is neutralised
    expect(entries.get('version.txt')?.body).toBe('$Format:%H$\n'); // so is export-subst
    expect(entries.get('docker/Dockerfile')?.body).toBe('FROM scratch\n');
  });

  it('exportTar of an unknown commit fails and leaves no file', async () => {
    const file = join(root, 'none.tar');
    await expect(merger.exportTar(project, '0'.repeat(40), file, BIG)).rejects.toThrow(GitFailedError);
    expect(existsSync(file)).toBe(false);
  });

  it('exportTar stops a tree that a tiny pack blows up (one blob named many times), and leaves no file', async () => {
    // One 1 MiB blob, named 300 times in one tree (and that tree four times): a pack of a few KiB, an archive of 1.2 GiB.
    const mib = execFileSync('git', ['--git-dir', up.dir, 'hash-object', '-w', '--stdin'], { input: Buffer.alloc(1024 * 1024, 0x61) }).toString().trim();
    const inner = execFileSync('git', ['--git-dir', up.dir, 'mktree'], { input: Array.from({ length: 300 }, (_, i) => `100644 blob ${mib}\tf${i}\n`).join('') }).toString().trim();
    const outer = execFileSync('git', ['--git-dir', up.dir, 'mktree'], { input: Array.from({ length: 4 }, (_, i) => `040000 tree ${inner}\td${i}\n`).join('') }).toString().trim();
    const bomb = execFileSync('git', ['--git-dir', up.dir, 'commit-tree', outer, '-m', 'bomb'], { env: { ...process.env, GIT_AUTHOR_NAME: 'a', GIT_AUTHOR_EMAIL: 'a@a', GIT_COMMITTER_NAME: 'a', GIT_COMMITTER_EMAIL: 'a@a' } }).toString().trim();
    up.ref('refs/changes/77/77/1', bomb);
    await merger.commitInfo(project, ['refs/changes/77/77/1']);
    const file = join(root, 'bomb.tar');
    const e = await merger.exportTar(project, bomb, file, { maxBytes: 16 * 1024 * 1024, maxEntries: 100_000 }).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(InvalidInputError);
    expect((e as InvalidInputError).message).toContain(`the tree of ${bomb.slice(0, 12)}: its archive is larger than 16777216 bytes`);
    expect(existsSync(file)).toBe(false);
    const many = await merger.exportTar(project, bomb, file, { maxBytes: 2 ** 40, maxEntries: 500 }).catch((x: unknown) => x);
    expect((many as InvalidInputError).message).toContain('its archive has more than 500 entries');
    expect(existsSync(file)).toBe(false);
  });

  it('archiveTree streams a directory rooted at itself', async () => {
    const entries = await tarEntries(merger.archiveTree(project, commit, 'docker'));
    expect([...entries.keys()]).toEqual(['Dockerfile']);
  });

  it('treeId is a content hash of a directory: stable across unrelated commits', async () => {
    const before = await merger.treeId(project, commit, 'docker');
    expect(before).toMatch(/^[0-9a-f]{40}$/);
    expect(await merger.treeId(project, commit, '')).toBe(await merger.treeId(project, commit, '.'));
    up.commit({ 'README.md': 'unrelated\n' });
    const unrelated = merged(await prepare({ project, changes: [] })).commit;
    expect(await merger.treeId(project, unrelated, 'docker/')).toBe(before);
    expect(await merger.treeId(project, unrelated, '')).not.toBe(await merger.treeId(project, commit, ''));
    up.commit({ 'docker/Dockerfile': 'FROM other\n' });
    const related = merged(await prepare({ project, changes: [] })).commit;
    expect(await merger.treeId(project, related, 'docker')).not.toBe(before);
    expect(await merger.treeId(project, related, 'nope')).toBeUndefined();
    await expect(merger.treeId(project, related, 'README.md')).rejects.toBeInstanceOf(InvalidInputError);
  });
});

describe('hostile input', () => {
  it('rejects option-like and malformed refs, branches, build ids and labels, listing every problem', async () => {
    const { project } = upstream();
    const err = await merger
      .prepare({
        project,
        branch: '-x',
        buildId: '../x',
        changes: [
          { ref: '--upload-pack=evil', label: 'a' },
          { ref: '-x', label: 'b' },
          { ref: 'refs/../x', label: 'c' },
          { ref: 'refs/heads/ok', label: 'bad\nlabel' },
        ],
      })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(InvalidInputError);
    expect((err as InvalidInputError).issues.map((i) => i.path)).toEqual(['branch', 'changes[0].ref', 'changes[1].ref', 'changes[2].ref', 'changes[3].label', 'buildId']);
  });

  it('refuses an ext:: remote before running anything', async () => {
    const marker = join(root, 'ext-pwned');
    const project = { name: 'ext', url: `ext::sh -c touch% ${marker}` };
    await expect(prepare({ project, changes: [] })).rejects.toBeInstanceOf(InvalidInputError);
    expect(existsSync(marker)).toBe(false);
  });

  it('runs no hook of the upstream or of the mirror', async () => {
    const { up, project } = upstream();
    const marker = join(root, `hooks-${seq}`);
    const names = ['pre-receive', 'update', 'post-update', 'post-checkout', 'post-merge', 'reference-transaction', 'pre-auto-gc', 'post-commit', 'pre-commit', 'post-rewrite', 'fsmonitor-watchman'];
    const plant = (dir: string): void => {
      mkdirSync(join(dir, 'hooks'), { recursive: true });
      for (const h of names) writeFileSync(join(dir, 'hooks', h), `#!/bin/sh\necho ${h} >> ${marker}\n`, { mode: 0o755 });
    };
    plant(up.dir);
    up.git('config', 'core.fsmonitor', join(up.dir, 'hooks', 'fsmonitor-watchman'));
    const a = up.change(50, 1, { 'a.txt': 'A\n' });
    up.commit({ 'b.txt': 'B\n' });
    merged(await prepare({ project, changes: [change(a)] }));
    plant(Mirror.of(root, project.name).dir);
    const b = up.change(51, 1, { 'c.txt': 'C\n' });
    const r = merged(await prepare({ project, changes: [change(a), change(b)], buildId: 'hooked' }));
    await merger.release('hooked', project);
    await merger.gc();
    await merger.exportTar(project, r.commit, join(root, 'hooked.tar'), BIG);
    expect(existsSync(marker)).toBe(false);
    // The control: the planted hooks are real and would run under plain git.
    execFileSync('git', ['update-ref', 'refs/heads/x', r.commit], { env: { PATH: process.env.PATH, GIT_DIR: Mirror.of(root, project.name).dir, GIT_CONFIG_GLOBAL: '/dev/null' } });
    expect(readFileSync(marker, 'utf8')).toContain('reference-transaction');
  });

  it.skipIf(process.getuid?.() !== 0)('fetches from an upstream, and into a mirror, owned by another uid', async () => {
    const { up, project } = upstream();
    const a = up.change(60, 1, { 'a.txt': 'A\n' });
    execFileSync('chown', ['-R', '4242:4242', up.dir]);
    merged(await prepare({ project, changes: [change(a)] }));
    execFileSync('chown', ['-R', '4343:4343', Mirror.of(root, project.name).dir]);
    up.commit({ 'b.txt': 'B\n' });
    expect(merged(await prepare({ project, changes: [change(a)] })).steps[0]?.mode).toBe('merge');
  });

  it('rejects objects that fail fsck (a tree entry named "..") as invalid input, not a retryable failure', async () => {
    const { up, project } = upstream();
    const blob = up.git('hash-object', '-w', '--stdin');
    const evilTree = execFileSync('git', ['mktree'], { input: `100644 blob ${blob}\t..\n`, env: { PATH: process.env.PATH, GIT_DIR: up.dir }, encoding: 'utf8' }).trim();
    const evil = up.git('commit-tree', evilTree, '-p', up.tip(), '-m', 'evil');
    up.ref('refs/changes/70/70/1', evil);
    const err = await prepare({ project, changes: [{ ref: 'refs/changes/70/70/1', label: '70,1' }] }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(InvalidInputError);
    expect((err as InvalidInputError).message).toMatch(/fail git fsck: .*hasDotdot/);
  });
});
