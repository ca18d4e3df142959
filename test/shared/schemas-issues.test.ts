/** zod failures as airlock issues: what a union wanted is said, not just "Invalid input". */
import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { MAX_LISTED_ISSUES, zodIssues } from '#shared/schemas/issues.js';

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
