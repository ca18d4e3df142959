/** The build reference grammar (cli/build-ref.ts): parsing, and resolving against the API's ChangeLookup. */
import { describe, expect, it } from 'vitest';
import { AirlockError, InvalidInputError, NotFoundError } from '#shared/errors.js';
import type { ChangeLookup } from '#shared/schemas/api/builds.js';
import { buildName, checkBuildProject, describeRef, parseBuildId, parseBuildRef, parseChange, resolveChangeRef } from '../../cli/build-ref.js';

function thrown(fn: () => unknown): AirlockError {
  try {
    fn();
  } catch (e) {
    if (e instanceof AirlockError) return e;
    throw e;
  }
  throw new Error('did not throw');
}

describe('parsing a build reference', () => {
  it('takes the CI id as #17 or 17, and shows it as #17', () => {
    expect(parseBuildId('#17')).toBe(17);
    expect(parseBuildId('17')).toBe(17);
    expect(parseBuildRef({ build: '#5' }, true)).toEqual({ kind: 'id', id: 5 });
    expect(buildName(17)).toBe('#17');
  });

  it('refuses what is not a build id, and points a change,patchset to --change', () => {
    for (const bad of ['0', '#0', '-1', '1.5', '##1', 'abc', '', '#', '1e3', '99999999999999999', ' 17']) {
      const e = thrown(() => parseBuildId(bad));
      expect(e, bad).toBeInstanceOf(InvalidInputError);
      expect(e.message, bad).toContain('is not a build id');
    }
    expect(thrown(() => parseBuildId('3,2')).message).toContain('say --change 3,2');
  });

  it('takes --change N and N,PS (the patch set after the last comma), with or without --project', () => {
    expect(parseChange('3')).toEqual({ change: '3' });
    expect(parseChange('3,2')).toEqual({ change: '3', patchset: 2 });
    expect(parseChange('api-123')).toEqual({ change: 'api-123' });
    expect(parseChange('a,b,4')).toEqual({ change: 'a,b', patchset: 4 });
    expect(parseBuildRef({ change: '3,2', project: 'app' }, true)).toEqual({ kind: 'change', change: '3', patchset: 2, project: 'app' });
    expect(parseBuildRef({ change: '3' }, false)).toEqual({ kind: 'change', change: '3' });
  });

  it('refuses a bad change or patch set, both forms at once, and no reference where one is needed', () => {
    for (const bad of ['', ',2', '3,', '3,0', 'a b', '3;rm', '3,2\n']) expect(thrown(() => parseChange(bad)), JSON.stringify(bad)).toBeInstanceOf(InvalidInputError);
    expect(thrown(() => parseBuildRef({ build: '17', change: '3' }, true)).message).toContain('not both');
    expect(thrown(() => parseBuildRef({}, true)).message).toContain('--change N[,PS]');
    expect(parseBuildRef({ project: 'app' }, false)).toBeUndefined();
    expect(thrown(() => parseBuildRef({ project: 'app' }, true))).toBeInstanceOf(InvalidInputError);
  });

  it('an id with --project is checked against the build\'s project, never ignored', () => {
    const ref = parseBuildRef({ build: '#4', project: 'app' }, true)!;
    expect(ref).toEqual({ kind: 'id', id: 4, project: 'app' });
    expect(() => checkBuildProject(ref, { id: 4, project: 'app' })).not.toThrow();
    expect(() => checkBuildProject({ kind: 'id', id: 4 }, { id: 4, project: 'lib' })).not.toThrow();
    const e = thrown(() => checkBuildProject(ref, { id: 4, project: 'lib' }));
    expect(e).toBeInstanceOf(InvalidInputError);
    expect(e.message).toContain('#4 --project app: build #4 is of project lib, not app');
  });

  it('describes a reference as it was written', () => {
    expect(describeRef({ kind: 'id', id: 4 })).toBe('#4');
    expect(describeRef({ kind: 'change', change: '3', patchset: 2, project: 'app' })).toBe('--change 3,2 --project app');
  });
});

describe('resolving --change against the CI', () => {
  const one = (current: number, patchsets: ChangeLookup['changes'][number]['patchsets']): ChangeLookup => ({ changes: [{ project: 'app', change: '3', current, patchsets }], more: false });

  it("--change N is the latest build of the current patch set", () => {
    expect(resolveChangeRef({ kind: 'change', change: '3', project: 'app' }, one(4, [{ patchset: 4, build: 21 }, { patchset: 2, build: 12 }]))).toEqual({ id: 21 });
  });

  it('--change N,PS is that patch set\'s latest build; an outdated one comes with a note', () => {
    expect(resolveChangeRef({ kind: 'change', change: '3', patchset: 4 }, one(4, [{ patchset: 4, build: 21 }]))).toEqual({ id: 21 });
    const old = resolveChangeRef({ kind: 'change', change: '3', patchset: 2 }, one(4, [{ patchset: 2, build: 12 }]));
    expect(old).toEqual({ id: 12, note: 'patch set 2 is outdated: change 3 of app is at patch set 4; build #12 is of the old one' });
  });

  it('--change N whose current patch set has no build is an error naming the outdated one and how to see it', () => {
    const e = thrown(() => resolveChangeRef({ kind: 'change', change: '3' }, one(4, [{ patchset: 4 }, { patchset: 2, build: 12 }])));
    expect(e).toBeInstanceOf(InvalidInputError);
    expect(e.message).toBe(
      'command line: change: --change 3: change 3 of app is at patch set 4, which has no build yet; patch set 2 is outdated — say --change 3,2 --project app to see its build #12 anyway',
    );
    expect(thrown(() => resolveChangeRef({ kind: 'change', change: '3' }, one(4, [{ patchset: 4 }])))).toBeInstanceOf(NotFoundError);
  });

  it('a change in several projects without --project is ambiguous: the projects are listed, none is picked', () => {
    const lookup: ChangeLookup = {
      changes: [
        { project: 'app', change: '3', current: 1, patchsets: [{ patchset: 1, build: 5 }] },
        { project: 'lib', change: '3', current: 2, patchsets: [{ patchset: 2, build: 9 }] },
      ],
      more: true,
    };
    const e = thrown(() => resolveChangeRef({ kind: 'change', change: '3' }, lookup));
    expect(e).toBeInstanceOf(InvalidInputError);
    expect(e.message).toContain('change 3 is in several projects (app, lib, …); say which with --project P');
  });

  it('an unknown change, patch set or a patch set without a build is not found, naming the reference', () => {
    const none = thrown(() => resolveChangeRef({ kind: 'change', change: '7', project: 'app' }, { changes: [], more: false }));
    expect(none).toBeInstanceOf(NotFoundError);
    expect(none.message).toMatch(/^--change 7 --project app: this CI has no change 7 in project app/);
    const ps = thrown(() => resolveChangeRef({ kind: 'change', change: '3', patchset: 9 }, one(4, [])));
    expect(ps).toBeInstanceOf(NotFoundError);
    expect(ps.message).toContain('change 3 of app has no patch set 9 on this CI; it is at patch set 4');
    expect(thrown(() => resolveChangeRef({ kind: 'change', change: '3', patchset: 4 }, one(4, [{ patchset: 4 }]))).message).toContain('patch set 4 of change 3 of app has no build yet');
  });
});
