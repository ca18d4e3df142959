/** zod failures as airlock issues: what a union wanted is said, not just "Invalid input". */
import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { knownKeys, MAX_LISTED_ISSUES, nearMiss, zodIssues } from '#shared/schemas/issues.js';

const S = z.object({ command: z.union([z.string(), z.array(z.string())]), n: z.number() });

describe('zodIssues', () => {
  it('a missing union field is "required", a wrong one names the alternatives; other messages are zod\'s', () => {
    const missing = zodIssues(S.safeParse({ n: 1 }).error!, '.airlock.yaml');
    expect(missing).toEqual([{ file: '.airlock.yaml', path: 'command', message: 'required', severity: 'error' }]);
    const wrong = zodIssues(S.safeParse({ command: 3, n: 'x' }).error!, '.airlock.yaml');
    expect(wrong.map((i) => [i.path, i.message])).toEqual([
      ['command', 'expected string or array'],
      ['n', 'Invalid input: expected number, received string'],
    ]);
  });
});

describe('zodIssues on a hostile input', () => {
  it('lists MAX_LISTED_ISSUES problems and counts the rest in one more', () => {
    const many = z.record(z.string(), z.number()).safeParse(Object.fromEntries(Array.from({ length: 5000 }, (_, i) => [`k${i}`, 'x'])));
    const issues = zodIssues(many.error!, 'f');
    expect(issues).toHaveLength(MAX_LISTED_ISSUES + 1);
    expect(issues.at(-1)).toEqual({ file: 'f', path: '', message: `and ${5000 - MAX_LISTED_ISSUES} more problems`, severity: 'error' });
  });
});

describe('zodIssues with the input and the schema', () => {
  const T = z
    .object({
      version: z.literal(1),
      jobs: z.record(z.string(), z.object({ needs: z.array(z.string()).default([]), timeout: z.number().optional() }).strict()),
      env: z.union([z.object({ image: z.string() }).strict(), z.object({ dockerfile: z.string() }).strict()]),
    })
    .strict();

  it('a key that is not there says "required" whatever its type; one that is there but wrong keeps zod\'s words', () => {
    const input = { jobs: {}, env: { image: 'x' } };
    expect(zodIssues(T.safeParse(input).error!, 'f', { input }).map((i) => `${i.path}: ${i.message}`)).toEqual(['version: required']);
    const wrong = { version: 2, jobs: {}, env: { image: 'x' } };
    expect(zodIssues(T.safeParse(wrong).error!, 'f', { input: wrong }).map((i) => `${i.path}: ${i.message}`)).toEqual(['version: Invalid input: expected 1']);
  });

  it('an unknown key near a known one (through records and unions) says which; several unknown keys, one issue each', () => {
    const input = { version: 1, Jobs: {}, jobs: { a: { neds: [], timeuot: 1, colour: 'x' } }, env: { imgae: 'x' } };
    const issues = zodIssues(T.safeParse(input).error!, 'f', { input, schema: T });
    expect(issues.map((i) => `${i.path}: ${i.message}`).sort()).toEqual(
      [
        ': Unrecognized key: "Jobs"; did you mean "jobs"?',
        'jobs.a: Unrecognized key: "neds"; did you mean "needs"?',
        'jobs.a: Unrecognized key: "timeuot"; did you mean "timeout"?',
        'jobs.a: Unrecognized key: "colour"',
        'env: Unrecognized key: "imgae"; did you mean "image"?',
      ].sort(),
    );
  });

  it('knownKeys and nearMiss', () => {
    const empty = { version: 1, jobs: {}, env: {} };
    expect(zodIssues(T.safeParse(empty).error!, 'f', { input: empty, schema: T }).map((i) => `${i.path}: ${i.message}`)).toEqual(['env: required: "image" or "dockerfile"']);
    expect(knownKeys(T, ['jobs', 'a']).sort()).toEqual(['needs', 'timeout']);
    expect(knownKeys(T, ['env']).sort()).toEqual(['dockerfile', 'image']);
    expect(knownKeys(T, ['nowhere', 'deep'])).toEqual([]);
    expect(nearMiss('NEEDS', ['needs'])).toBe('needs'); // case only, however far
    expect(nearMiss('nedes', ['needs', 'env'])).toBe('needs'); // a swap is one edit
    expect(nearMiss('neXXs', ['needs'])).toBe('needs'); // two edits
    expect(nearMiss('nXXXs', ['needs'])).toBeUndefined(); // three
    expect(nearMiss('x', ['env', 'tmp'])).toBeUndefined(); // not shorter than the key
    expect(nearMiss('a'.repeat(100), ['a'.repeat(99)])).toBeUndefined(); // long keys are not compared
  });
});
