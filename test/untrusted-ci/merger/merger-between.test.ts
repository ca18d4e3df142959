/**
 * Merger.commitsBetween: what merging a change into its branch would bring in, read from the
 * mirror after fetching the branch (the gate's approval-completeness check stands on it).
 */
import { describe, expect, it } from 'vitest';
import { InvalidInputError } from '#shared/errors.js';
import { mergerRig } from '../../support/merger-rig.js';

const rig = mergerRig('between');

describe('Merger.commitsBetween', () => {
  it('lists the change and every commit under it that the branch lacks, newest first', async () => {
    const { up, project } = rig.upstream();
    const a = up.change(1, 1, { 'a.txt': 'A\n' });
    const b = up.change(2, 1, { 'b.txt': 'B\n' }, { parent: a.sha });
    await rig.merger.commitInfo(project, [b.ref]);
    expect(await rig.merger.commitsBetween(project, 'master', b.sha, 10)).toEqual({ kind: 'ok', commits: [b.sha, a.sha] });
  });

  it('leaves out what the branch already has: once A is on master, only B is new', async () => {
    const { up, project } = rig.upstream();
    const a = up.change(1, 1, { 'a.txt': 'A\n' });
    const b = up.change(2, 1, { 'b.txt': 'B\n' }, { parent: a.sha });
    up.ref('refs/heads/master', a.sha);
    await rig.merger.commitInfo(project, [b.ref]);
    expect(await rig.merger.commitsBetween(project, 'refs/heads/master', b.sha, 10)).toEqual({ kind: 'ok', commits: [b.sha] });
  });

  it('says too-many past the cap, and missing for a branch that does not exist', async () => {
    const { up, project } = rig.upstream();
    let parent = up.tip();
    for (let i = 0; i < 4; i++) parent = up.write({ [`f${i}`]: `${i}\n` }, { parents: [parent] });
    up.ref('refs/changes/01/1/1', parent);
    await rig.merger.commitInfo(project, ['refs/changes/01/1/1']);
    expect(await rig.merger.commitsBetween(project, 'master', parent, 3)).toEqual({ kind: 'too-many' });
    expect((await rig.merger.commitsBetween(project, 'master', parent, 4)).kind).toBe('ok');
    expect(await rig.merger.commitsBetween(project, 'nope', parent, 4)).toEqual({ kind: 'missing', message: 'branch nope not found' });
  });

  it('refuses a commit that is not a full id and a branch that is an option', async () => {
    const { project } = rig.upstream();
    await expect(rig.merger.commitsBetween(project, 'master', 'HEAD', 10)).rejects.toBeInstanceOf(InvalidInputError);
    await expect(rig.merger.commitsBetween(project, '-x', 'a'.repeat(40), 10)).rejects.toBeInstanceOf(InvalidInputError);
  });
});
