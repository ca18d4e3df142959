/**
 * The builder's own source check against real git: a commit is promoted only when the builder's
 * own fetch of the protected branches (from the policy's URL) contains it.
 */
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { GitFailedError, InvalidInputError } from '#shared/errors.js';
import type { PromotedProject } from '../../trusted-builder/policy/promotion.js';
import { SourceVerifier } from '../../trusted-builder/verify/source.js';
import { createRepo, type TestRepo } from '../support/git-repo.js';

const root = mkdtempSync(join(tmpdir(), 'airlock-verify-'));
const repos: TestRepo[] = [];
afterAll(() => {
  repos.forEach((r) => r.dispose());
  rmSync(root, { recursive: true, force: true });
});

function project(up: TestRepo, o: Partial<PromotedProject> = {}): PromotedProject {
  return { name: `demo/p${repos.length}`, url: up.dir, protectedBranches: ['master'], image: 'team/app', review: 'none', ...o };
}

describe('SourceVerifier', () => {
  const verifier = new SourceVerifier(root);

  it('accepts a commit on a protected branch (tip or older), refuses one elsewhere', async () => {
    const up = createRepo({ 'a.txt': 'a\n' });
    repos.push(up);
    const older = up.tip();
    const tip = up.commit({ 'b.txt': 'b\n' });
    const dev = up.commit({ 'c.txt': 'c\n' }, 'on dev', { branch: 'dev' });
    const change = up.change(7, 1, { 'd.txt': 'd\n' });
    const p = project(up);
    expect(await verifier.verify(p, tip)).toMatchObject({ ok: true, branch: 'master', tips: { master: tip } });
    expect(await verifier.verify(p, older)).toMatchObject({ ok: true, branch: 'master' });
    for (const sha of [dev, change.sha, 'f'.repeat(40)]) {
      const r = await verifier.verify(p, sha);
      expect(r).toMatchObject({ ok: false, reason: `commit ${sha} is not on a protected branch of ${p.name} (master)` });
    }
    // dev becomes protected: now it is fine.
    expect(await verifier.verify({ ...p, protectedBranches: ['master', 'dev'] }, dev)).toMatchObject({ ok: true, branch: 'dev' });
  });

  it('follows the canonical branch: a commit force-pushed away is refused afterwards', async () => {
    const up = createRepo({ 'a.txt': 'a\n' });
    repos.push(up);
    const base = up.tip();
    const bad = up.commit({ 'evil.txt': 'x\n' });
    const p = project(up);
    expect(await verifier.verify(p, bad)).toMatchObject({ ok: true });
    up.branch('master', base); // rewritten upstream
    expect(await verifier.verify(p, bad)).toMatchObject({ ok: false });
  });

  it('refuses a malformed commit id, and fails (retryably) when the repository cannot be fetched', async () => {
    const up = createRepo({ 'a.txt': 'a\n' });
    repos.push(up);
    const p = project(up);
    await expect(verifier.verify(p, 'HEAD')).rejects.toBeInstanceOf(InvalidInputError);
    await expect(verifier.verify(p, '--upload-pack=touch /tmp/x')).rejects.toBeInstanceOf(InvalidInputError);
    const gone = project(up, { url: join(root, 'no-such-repo.git') });
    const e = await verifier.verify(gone, up.tip()).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(GitFailedError);
    expect((e as GitFailedError).retryable).toBe(true);
  });

  it('reads files and archives a verified commit from its own mirror', async () => {
    const up = createRepo({ '.airlock.yaml': 'version: 1\n', 'src/x.txt': 'x\n', '.gitattributes': 'hidden.txt export-ignore\nsubst.txt export-subst\n', 'hidden.txt': 'still here\n', 'subst.txt': '$Format:%H$\n' });
    repos.push(up);
    const p = project(up);
    const tip = up.tip();
    expect(await verifier.verify(p, tip)).toMatchObject({ ok: true });
    expect((await verifier.readFile(p, tip, '.airlock.yaml', 1024))?.toString()).toBe('version: 1\n');
    expect(await verifier.readFile(p, tip, 'missing.txt', 1024)).toBeUndefined();
    await expect(verifier.readFile(p, tip, '../etc/passwd', 1024)).rejects.toBeInstanceOf(InvalidInputError);
    const tar = join(root, 'src.tar');
    await verifier.archive(p, tip, tar);
    const bytes = readFileSync(tar);
    expect(bytes.includes(Buffer.from('src/x.txt'))).toBe(true);
    // The repository's attributes do not change the archive: nothing hidden, nothing rewritten.
    expect(bytes.includes(Buffer.from('still here'))).toBe(true);
    expect(bytes.includes(Buffer.from('$Format:%H$'))).toBe(true);
  });

  it('refuses a file or an archive over its size cap with an error naming it, leaving no partial file', async () => {
    const up = createRepo({ '.airlock.yaml': `version: 1\n# ${'x'.repeat(5000)}\n`, 'big.bin': 'y'.repeat(200_000) });
    repos.push(up);
    const p = project(up);
    const tip = up.tip();
    expect(await verifier.verify(p, tip)).toMatchObject({ ok: true });
    const e = await verifier.readFile(p, tip, '.airlock.yaml', 1024).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(InvalidInputError);
    expect(String((e as Error).message) + JSON.stringify((e as InvalidInputError).issues)).toMatch(/more than the 1024 allowed/);
    const tar = join(root, 'capped.tar');
    await expect(verifier.archive(p, tip, tar, '.', 100_000)).rejects.toBeInstanceOf(InvalidInputError);
    expect(existsSync(tar)).toBe(false);
    await verifier.archive(p, tip, tar, '.', 300_000);
    expect(existsSync(tar)).toBe(true);
  });
});
