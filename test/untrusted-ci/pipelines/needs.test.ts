/**
 * Needs of a patchset: the Depends-On parser as a table, Merger.commitInfo against real git, and
 * resolveNeeds reading real upstream repos through a real Merger (git parents, Depends-On by
 * Change-Id across projects and by URL, unknown footers, missing refs, ambiguity).
 */
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { describe, expect, it, vi } from 'vitest';
import { InvalidInputError } from '#shared/errors.js';
import { Merger, type Project } from '../../../untrusted-ci/merger/merger.js';
import { changeIdOf, parseDependsOn, resolveNeeds, type CommitReader, type OpenChange, type ResolvedNeeds } from '../../../untrusted-ci/pipelines/needs.js';
import type { TestRepo } from '../../support/git-repo.js';
import { mergerRig } from '../../support/merger-rig.js';

// git's output handed over in pieces of `size` bytes when set, so every split of a record is tried.
const chunking = vi.hoisted(() => ({ size: 0 }));
vi.mock('#shared/git/git.js', async (importOriginal) => {
  const real = await importOriginal<typeof import('#shared/git/git.js')>();
  const streamGit: typeof real.streamGit = (args, opts) => {
    const out = real.streamGit(args, opts);
    const size = chunking.size;
    if (size === 0) return out;
    return Readable.from(
      (async function* () {
        for await (const chunk of out as AsyncIterable<Buffer>) for (let i = 0; i < chunk.length; i += size) yield chunk.subarray(i, i + size);
      })(),
    );
  };
  return { ...real, streamGit };
});

const ID_A = `I${'a'.repeat(40)}`;
const ID_B = `I${'b'.repeat(40)}`;
const ID_C = `I${'0123456789'.repeat(4)}`;

/** The resolved needs and problems; `sha` (the target's commit) is checked on its own. */
const withoutSha = ({ sha: _sha, candidates: _c, ...rest }: ResolvedNeeds): Omit<ResolvedNeeds, 'sha' | 'candidates'> => rest;

describe('parseDependsOn', () => {
  const cases: [name: string, message: string, expected: { changeIds: string[]; numbers: string[] }][] = [
    ['no footers', 'Fix a bug\n\nBody text.\n', { changeIds: [], numbers: [] }],
    ['a Change-Id', `Fix\n\nDepends-On: ${ID_A}\n`, { changeIds: [ID_A], numbers: [] }],
    ['no space after the colon, trailing blanks, CRLF', `Fix\r\n\r\nDepends-On:${ID_A}  \r\n`, { changeIds: [ID_A], numbers: [] }],
    ['a review URL', 'Fix\n\nDepends-On: https://review.example.org/c/org/project/+/12345\n', { changeIds: [], numbers: ['12345'] }],
    ['a review URL with a trailing slash', 'Depends-On: https://review.example.org/c/org/project/+/12345/', { changeIds: [], numbers: ['12345'] }],
    ['a review URL with a patchset', 'Depends-On: https://review.example.org/c/org/project/+/12345/3', { changeIds: [], numbers: ['12345'] }],
    ['a short URL', 'Depends-On: https://review.example.org/12345', { changeIds: [], numbers: ['12345'] }],
    ['an old-style fragment URL', 'Depends-On: https://review.example.org/#/c/12345/', { changeIds: [], numbers: ['12345'] }],
    ['leading zeros', 'Depends-On: https://review.example.org/c/p/+/0042', { changeIds: [], numbers: ['42'] }],
    ['the key in any case', `depends-on: ${ID_A}\nDEPENDS-ON: https://r.example.org/c/p/+/7`, { changeIds: [ID_A], numbers: ['7'] }],
    [
      'junk is ignored',
      [
        'Depends-On: 12345', // a bare number is no Gerrit form
        'Depends-On: I1234', // a short Change-Id
        `Depends-On: I${'A'.repeat(40)}`, // upper-case hex
        `Depends-On: ${ID_A} and more`,
        'Depends-On:',
        'Depends-On: https://review.example.org/c/org/project',
        'Depends-On: ftp://review.example.org/12345',
        'Depends-On: not a url',
        `  Depends-On: ${ID_B}`, // indented: not a footer
        `XDepends-On: ${ID_B}`,
        `Depends On: ${ID_B}`,
        `Change-Id: ${ID_C}`,
      ].join('\n'),
      { changeIds: [], numbers: [] },
    ],
    [
      'duplicates once, in order of first appearance',
      `Depends-On: ${ID_B}\nDepends-On: https://r.example.org/c/p/+/5\nDepends-On: ${ID_A}\nDepends-On: ${ID_B}\nDepends-On: https://r.example.org/5/`,
      { changeIds: [ID_B, ID_A], numbers: ['5'] },
    ],
    [
      'only the first 50 Depends-On lines count',
      Array.from({ length: 60 }, (_, i) => `Depends-On: https://r.example.org/c/p/+/${i + 1}`).join('\n'),
      { changeIds: [], numbers: Array.from({ length: 50 }, (_, i) => String(i + 1)) },
    ],
    [
      'junk lines count toward the 50',
      [...Array.from({ length: 50 }, () => 'Depends-On: junk'), `Depends-On: ${ID_A}`].join('\n'),
      { changeIds: [], numbers: [] },
    ],
  ];
  it.each(cases)('%s', (_name, message, expected) => {
    expect(parseDependsOn(message)).toEqual(expected);
  });
});

describe('changeIdOf', () => {
  it.each([
    ['a footer', `Fix\n\nChange-Id: ${ID_A}\n`, ID_A],
    ['none', 'Fix\n\nBody\n', undefined],
    ['the last of several', `Fix\n\nChange-Id: ${ID_A}\nChange-Id: ${ID_B}`, ID_B],
    ['not a Change-Id', 'Change-Id: I123\n', undefined],
    ['in any case, with CRLF', `change-id: ${ID_C}\r\n`, ID_C],
  ])('%s', (_name, message, expected) => {
    expect(changeIdOf(message)).toBe(expected);
  });
});

const { root, merger, upstream } = mergerRig('needs');

/** A Gerrit-style change `number`,`patchset` with `message`, on `parent` (default master's tip). */
function change(up: TestRepo, project: Project, number: number, patchset: number, message: string, parent?: string): OpenChange & { sha: string } {
  const sha = up.write({ [`c${number}.txt`]: `${number},${patchset}\n` }, { message, ...(parent ? { parents: [parent] } : {}) });
  const ref = `refs/changes/${String(number % 100).padStart(2, '0')}/${number}/${patchset}`;
  up.ref(ref, sha);
  return { project: project.name, change: String(number), patchset, ref, sha };
}

/** A reader over the merger, counting its calls per project. */
function reader(...projects: Project[]): { read: CommitReader; calls: string[] } {
  const calls: string[] = [];
  const byName = new Map(projects.map((p) => [p.name, p]));
  const read: CommitReader = (name, refs) => {
    calls.push(name);
    const p = byName.get(name);
    if (!p) throw new Error(`unknown project ${name}`);
    return merger.commitInfo(p, refs);
  };
  return { read, calls };
}

const key = (c: OpenChange): string => `${c.project}~${c.change}`;

describe('Merger.commitInfo', () => {
  it('reads parents and full messages of refs and commit ids; a missing ref is undefined', async () => {
    const { up, project } = upstream();
    const a = change(up, project, 101, 1, `Add a\n\nLonger body.\n\nChange-Id: ${ID_A}\n`);
    const merge = up.write({ 'm.txt': 'm\n' }, { parents: [up.tip(), a.sha], message: 'Merge a\n' });
    up.ref('refs/heads/merged', merge);
    const info = await merger.commitInfo(project, [a.ref, 'refs/heads/merged', 'refs/changes/99/199/1', a.sha, a.ref]);
    expect([...info.keys()]).toEqual([a.ref, 'refs/heads/merged', 'refs/changes/99/199/1', a.sha]);
    expect(info.get(a.ref)).toEqual({ sha: a.sha, parents: [up.tip()], message: `Add a\n\nLonger body.\n\nChange-Id: ${ID_A}\n` });
    expect(info.get(a.sha)).toEqual(info.get(a.ref));
    expect(info.get('refs/heads/merged')).toEqual({ sha: merge, parents: [up.tip(), a.sha], message: 'Merge a\n' });
    expect(info.get('refs/changes/99/199/1')).toBeUndefined();
  });

  it('cuts a message at 64 KiB', async () => {
    const { up, project } = upstream();
    const big = change(up, project, 102, 1, `Big\n\n${'x'.repeat(100 * 1024)}\n`);
    const info = await merger.commitInfo(project, [big.ref]);
    expect(info.get(big.ref)?.message).toBe(`Big\n\n${'x'.repeat(64 * 1024 - 5)}`);
  });

  it.each([1, 7, 4096])('parses git\'s output handed over in pieces of %i bytes', async (size) => {
    const body = (i: number): string => `C${i}\n\n${'y'.repeat(i * 1500)}\n`;
    const { up, project } = upstream();
    const made = Array.from({ length: 4 }, (_, i) => change(up, project, 500 + i, 1, body(i)));
    chunking.size = size;
    try {
      const info = await merger.commitInfo(project, made.map((c) => c.ref));
      made.forEach((c, i) => expect(info.get(c.ref)).toEqual({ sha: c.sha, parents: [up.tip()], message: body(i) }));
    } finally {
      chunking.size = 0;
    }
  });

  it('refuses bad refs and projects, listing every problem', async () => {
    const { project } = upstream();
    const err = await merger.commitInfo({ name: project.name, url: 'ext::sh -c evil' }, ['master', 'refs/heads/a..b', '-x', 'a'.repeat(40)]).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(InvalidInputError);
    const paths = (err as InvalidInputError).issues.map((i) => i.path);
    expect(paths).toEqual(['project.url', 'refs[0]', 'refs[1]', 'refs[2]']);
  });

  it('answers an empty list without git', async () => {
    const { project } = upstream();
    expect((await merger.commitInfo(project, [])).size).toBe(0);
  });
});

describe('resolveNeeds', () => {
  it('a git parent that is another open change is needed; an outdated patchset or the branch tip is not', async () => {
    const { up, project } = upstream();
    const a1 = change(up, project, 1001, 1, 'A\n');
    const a = change(up, project, 1001, 2, 'A, second try\n');
    const b = change(up, project, 1002, 1, 'B on A\n', a.sha);
    const c = change(up, project, 1003, 4, 'C on the first A\n', a1.sha);
    const { read, calls } = reader(project);
    const candidates = [a, b, c];

    expect(withoutSha(await resolveNeeds(b, candidates, read))).toEqual({ needs: [{ change: key(a), patchset: 2 }], problems: [] });
    expect(calls).toEqual([project.name]);
    expect(withoutSha(await resolveNeeds(a, candidates, read))).toEqual({ needs: [], problems: [] });
    expect(withoutSha(await resolveNeeds(c, candidates, read))).toEqual({ needs: [], problems: [] });
    // The commit the ref pointed at is returned: the gate gates that commit, not the ref.
    expect((await resolveNeeds(b, candidates, read)).sha).toBe(b.sha);
    // The commit each candidate read points at (the gate's approval-completeness check uses them).
    expect((await resolveNeeds(b, candidates, read)).candidates.map((x) => [x.change, x.patchset, x.sha])).toEqual(
      expect.arrayContaining([[key(a), 2, a.sha]]),
    );
  });

  it('Depends-On by Change-Id names a change of another project; one read per project', async () => {
    const x = upstream();
    const y = upstream();
    const z = upstream();
    const a = change(x.up, x.project, 2001, 3, `A in x\n\nChange-Id: ${ID_A}\n`);
    const other = change(z.up, z.project, 4001, 1, `Unrelated in z\n\nChange-Id: ${ID_C}\n`);
    const b = change(y.up, y.project, 3001, 1, `B in y\n\nDepends-On: ${ID_A}\nChange-Id: ${ID_B}\n`);
    const { read, calls } = reader(x.project, y.project, z.project);

    expect(withoutSha(await resolveNeeds(b, [a, b, other], read))).toEqual({ needs: [{ change: key(a), patchset: 3 }], problems: [] });
    expect(calls.sort()).toEqual([x.project.name, y.project.name, z.project.name].sort());
  });

  it('Depends-On by review URL needs the change with that number, reading no other project', async () => {
    const x = upstream();
    const y = upstream();
    const a = change(x.up, x.project, 2101, 2, 'A in x\n');
    const b = change(y.up, y.project, 3101, 1, `B in y\n\nDepends-On: https://review.example.org/c/${x.project.name}/+/2101/\n`);
    const { read, calls } = reader(x.project, y.project);

    expect(withoutSha(await resolveNeeds(b, [a], read))).toEqual({ needs: [{ change: key(a), patchset: 2 }], problems: [] });
    expect(calls).toEqual([y.project.name]);
  });

  it('orders parents before footers, in footer order, without duplicates', async () => {
    const x = upstream();
    const y = upstream();
    const a = change(x.up, x.project, 2201, 1, 'A\n');
    const c = change(y.up, y.project, 3201, 1, `C\n\nChange-Id: ${ID_C}\n`);
    const d = change(x.up, x.project, 2203, 1, `D\n\nChange-Id: ${ID_B}\n`);
    const message = [
      'B on A',
      '',
      `Depends-On: ${ID_C}`,
      'Depends-On: https://review.example.org/c/x/+/2201', // A again: already needed as the parent
      'Depends-On: https://review.example.org/2203',
      `Depends-On: ${ID_B}`, // D again
      '',
    ].join('\n');
    const b = change(x.up, x.project, 2202, 5, message, a.sha);
    const { read } = reader(x.project, y.project);

    const got = await resolveNeeds(b, [d, c, b, a], read);
    expect(withoutSha(got)).toEqual({
      needs: [
        { change: key(a), patchset: 1 },
        { change: key(c), patchset: 1 },
        { change: key(d), patchset: 1 },
      ],
      problems: [],
    });
  });

  it('ignores a Depends-On naming no candidate, and never needs the change itself', async () => {
    const { up, project } = upstream();
    const b = change(up, project, 2301, 1, `B\n\nDepends-On: ${ID_A}\nDepends-On: https://review.example.org/c/p/+/99999\nDepends-On: https://review.example.org/2301\nDepends-On: ${ID_B}\nChange-Id: ${ID_B}\n`);
    const { read } = reader(project);
    expect(withoutSha(await resolveNeeds(b, [b], read))).toEqual({ needs: [], problems: [] });
  });

  it('a missing ref is a problem, not an error', async () => {
    const { up, project } = upstream();
    const a = change(up, project, 2401, 1, `A\n\nChange-Id: ${ID_A}\n`);
    const lost: OpenChange = { project: project.name, change: '2402', patchset: 1, ref: 'refs/changes/02/2402/1' };
    const b = change(up, project, 2403, 1, `B\n\nDepends-On: ${ID_A}\nDepends-On: https://review.example.org/2402\n`);
    const { read } = reader(project);

    expect(withoutSha(await resolveNeeds(b, [lost, a], read))).toEqual({
      needs: [
        { change: key(a), patchset: 1 },
        { change: key(lost), patchset: 1 }, // named by number: its commit is not needed for that
      ],
      problems: [`ref refs/changes/02/2402/1 of change ${key(lost)} not found`],
    });
    const gone: OpenChange = { project: project.name, change: '2404', patchset: 2, ref: 'refs/changes/04/2404/2' };
    expect(withoutSha(await resolveNeeds(gone, [a], read))).toEqual({ needs: [], problems: [`ref refs/changes/04/2404/2 of change ${key(gone)} not found`] });
  });

  it('a change number open in two projects is ambiguous: a problem and no need', async () => {
    const x = upstream();
    const y = upstream();
    const ax = change(x.up, x.project, 2501, 1, 'A in x\n');
    const ay = change(y.up, y.project, 2501, 1, 'A in y\n');
    const b = change(x.up, x.project, 2502, 1, 'B\n\nDepends-On: https://review.example.org/c/x/+/2501\n');
    const { read } = reader(x.project, y.project);

    expect(withoutSha(await resolveNeeds(b, [ax, ay], read))).toEqual({
      needs: [],
      problems: [`Depends-On change 2501 is ambiguous: it is open in projects ${x.project.name}, ${y.project.name}`],
    });
  });
});
