/**
 * Embargoed patches applied on a public commit with real git: nothing of them enters the mirror,
 * a patch that no longer applies is named by id, and a fix that became public (merged as is, or
 * re-done with other context) is recognised for retirement.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { PatchWorkspace } from '../../trusted-builder/embargo/apply.js';
import { createRepo } from '../support/git-repo.js';

const root = mkdtempSync(join(tmpdir(), 'airlock-embargo-apply-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

const CANARY = 'CANARY-7f3e-embargoed-fix';
const BASE = { 'src/auth.c': 'int check(int x) {\n  return x > 0;\n}\n', 'README': 'public\n' };

/** A patch as the security team makes it: format-patch of a commit on a private branch. */
function patchOf(repo: ReturnType<typeof createRepo>, files: Record<string, string | null>, message: string): string {
  const base = repo.tip();
  const fix = repo.commit(files, message, { branch: `private-${Math.random().toString(36).slice(2)}` });
  return repo.git('format-patch', '--stdout', `${base}..${fix}`);
}

function objectCount(gitDir: string): number {
  return Number(/count: (\d+)/.exec(execFileSync('git', ['--git-dir', gitDir, 'count-objects', '-v'], { encoding: 'utf8' }))?.[1]) + Number(/in-pack: (\d+)/.exec(execFileSync('git', ['--git-dir', gitDir, 'count-objects', '-v'], { encoding: 'utf8' }))?.[1]);
}

describe('embargoed patches on a public commit (real git)', () => {
  it('applies in order into a scratch object store; the mirror gains nothing; the archive has the fix', async () => {
    const up = createRepo(BASE);
    const p1 = patchOf(up, { 'src/auth.c': `int check(int x) {\n  /* ${CANARY} */\n  return x > 0 && x < 100;\n}\n` }, `fix: ${CANARY}`);
    const mirror = join(root, 'mirror1.git');
    execFileSync('git', ['clone', '-q', '--bare', '--no-local', '--single-branch', '--branch', 'master', up.dir, mirror]);
    const before = objectCount(mirror);
    const ws = await PatchWorkspace.open(mirror, join(root, 'scratch1'));
    const r = await ws.apply(up.tip('master'), [{ id: 'e1', patch: p1 }]);
    expect(r.ok).toBe(true);
    if (!r.ok) return;
    expect(objectCount(mirror)).toBe(before);
    expect((await ws.readFile(r.tree, 'src/auth.c', 1024))?.toString()).toContain(CANARY);
    await ws.archive(r.tree, join(root, 'patched.tar'));
    expect(readFileSync(join(root, 'patched.tar')).includes(Buffer.from(CANARY))).toBe(true);
    expect(readdirSync(join(root, 'scratch1', 'objects')).length).toBeGreaterThan(0);
    up.dispose();
  });

  it('a patch that no longer applies is named by id, with git\'s detail kept apart', async () => {
    const up = createRepo(BASE);
    const p1 = patchOf(up, { 'src/auth.c': `int check(int x) {\n  return x > 0 && x != 13; /* ${CANARY} */\n}\n` }, 'fix');
    up.commit({ 'src/auth.c': 'int check(long x) {\n  return x >= 1;\n}\n' }, 'public refactor');
    const mirror = join(root, 'mirror2.git');
    execFileSync('git', ['clone', '-q', '--bare', '--no-local', '--single-branch', '--branch', 'master', up.dir, mirror]);
    const ws = await PatchWorkspace.open(mirror, join(root, 'scratch2'));
    const r = await ws.apply(up.tip('master'), [{ id: 'e-broken', patch: p1 }]);
    expect(r).toMatchObject({ ok: false, failed: 'e-broken' });
    expect(!r.ok && r.detail).toMatch(/src\/auth\.c/);
    up.dispose();
  });

  it('recognises a fix that became public: merged as is (reverse-applies) or re-done elsewhere (same patch-id)', async () => {
    const up = createRepo(BASE);
    const fixed = { 'src/auth.c': 'int check(int x) {\n  return x > 0 && x < 100;\n}\n' };
    const p1 = patchOf(up, fixed, 'fix');
    const mirror = join(root, 'mirror3.git');
    execFileSync('git', ['clone', '-q', '--bare', '--no-local', '--single-branch', '--branch', 'master', up.dir, mirror]);
    const ws = await PatchWorkspace.open(mirror, join(root, 'scratch3'));
    expect(await ws.isPublic(up.tip('master'), p1)).toEqual({ public: false });
    // Disclosure: the same change lands publicly, then more work on top changes the file again.
    const landed = up.commit(fixed, 'disclosed fix');
    up.commit({ 'src/auth.c': 'int check(int x) {\n  return x > 0 && x < 100;\n}\n/* more */\n', 'README': 'public 2\n' }, 'later');
    execFileSync('git', ['--git-dir', mirror, 'fetch', '-q', up.dir, '+master:master']);
    const now = up.tip('master');
    const found = await ws.isPublic(now, p1);
    expect(found.public).toBe(true);
    // The later change still lets it reverse-apply; with a conflicting later change only the patch-id finds it.
    up.commit({ 'src/auth.c': 'int check(int x) {\n  return x > 0 && x < 100; /* reviewed */\n}\n/* more */\n' }, 'touch the same line');
    execFileSync('git', ['--git-dir', mirror, 'fetch', '-q', up.dir, '+master:master']);
    expect(await ws.isPublic(up.tip('master'), p1)).toEqual({ public: true, how: 'patch-id', match: landed });
    up.dispose();
  });

  it('does not judge public what is not fixed: a similar hunk elsewhere, a reverted fix, a deletion', async () => {
    const check = '  if (len > 64) return -1;\n';
    const fn = (name: string, guarded: boolean) => `int ${name}(const char *s, int len) {\n  /* copy */\n${guarded ? check : ''}  return copy(s, len);\n}\n`;
    const up = createRepo({ 'parse.c': `${fn('parse_a', false)}\n${fn('parse_b', true)}` });
    const fix = patchOf(up, { 'parse.c': `${fn('parse_a', true)}\n${fn('parse_b', true)}` }, 'guard parse_a');
    const mirror = join(root, 'mirror4.git');
    const fetch = () => execFileSync('git', ['--git-dir', mirror, 'fetch', '-q', up.dir, '+master:master']);
    execFileSync('git', ['clone', '-q', '--bare', '--no-local', '--single-branch', '--branch', 'master', up.dir, mirror]);
    const ws = await PatchWorkspace.open(mirror, join(root, 'scratch4'));
    // parse_b already has the same three lines: the reverse patch finds them at an offset, but the fix still applies forward.
    expect(await ws.isPublic(up.tip('master'), fix)).toEqual({ public: false });
    // Published, then reverted: its patch-id is in the history, yet the tree is not fixed.
    up.commit({ 'parse.c': `${fn('parse_a', true)}\n${fn('parse_b', true)}` }, 'guard parse_a (public)');
    up.commit({ 'parse.c': `${fn('parse_a', false)}\n${fn('parse_b', true)}` }, 'Revert "guard parse_a"');
    fetch();
    expect(await ws.isPublic(up.tip('master'), fix)).toEqual({ public: false });
    // A patch that only deletes a file: the file moving away publicly is not the fix.
    const gone = createRepo({ 'vuln.c': 'int v;\n' });
    const delPatch = patchOf(gone, { 'vuln.c': null }, 'remove vuln.c');
    gone.commit({ 'vuln2.c': 'int v;\n', 'vuln.c': null }, 'rename');
    const mirror5 = join(root, 'mirror5.git');
    execFileSync('git', ['clone', '-q', '--bare', '--no-local', '--single-branch', '--branch', 'master', gone.dir, mirror5]);
    const ws5 = await PatchWorkspace.open(mirror5, join(root, 'scratch5'));
    expect(await ws5.isPublic(gone.tip('master'), delPatch)).toEqual({ public: false });
    expect(delPatch).toContain('deleted file mode');
    up.dispose();
    gone.dispose();
  });
});
