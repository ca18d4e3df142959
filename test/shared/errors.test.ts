/** The error catalogue, tested as data (docs/conventions.md "The error catalogue", after fastify's test/internals/errors.test.js). */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { AirlockError, ERROR_CLASSES, formatIssues, isAirlockError, type Issue } from '#shared/errors.js';

type Catalogue = typeof ERROR_CLASSES;
const ISSUES: Issue[] = [
  { file: 'policies/untrusted-job.yaml', path: 'limits.memory', message: 'not a size: "lots"', severity: 'error' },
  { file: 'policies/untrusted-job.yaml', path: '', message: 'unknown key', severity: 'error' },
];

/** One instance of each class; the mapped type makes a new class without a row a compile error. */
const MAKE: { [K in keyof Catalogue]: () => InstanceType<Catalogue[K]> } = {
  InvalidInputError: () => new ERROR_CLASSES.InvalidInputError(ISSUES),
  PolicyViolationError: () => new ERROR_CLASSES.PolicyViolationError(ISSUES),
  PolicyInvalidError: () => new ERROR_CLASSES.PolicyInvalidError(ISSUES),
  ImageNotFoundError: () => new ERROR_CLASSES.ImageNotFoundError('airlock/base:missing'),
  RuntimeUnavailableError: () => new ERROR_CLASSES.RuntimeUnavailableError('runsc cannot run this image'),
  EngineUnavailableError: () => new ERROR_CLASSES.EngineUnavailableError('connect ENOENT /var/run/docker.sock'),
  ExecutorFailedError: () => new ERROR_CLASSES.ExecutorFailedError('container create failed'),
  ArtifactRejectedError: () => new ERROR_CLASSES.ArtifactRejectedError('symlink outside the root'),
  ArtifactTooLargeError: () => new ERROR_CLASSES.ArtifactTooLargeError('artifacts exceed the cap'),
  CancelledError: () => new ERROR_CLASSES.CancelledError('cancelled'),
  NotFoundError: () => new ERROR_CLASSES.NotFoundError('no build 42'),
  UnauthorizedError: () => new ERROR_CLASSES.UnauthorizedError('bad webhook signature'),
  ConflictError: () => new ERROR_CLASSES.ConflictError('patchset 1 is older than patchset 2'),
  RateLimitedError: () => new ERROR_CLASSES.RateLimitedError('too many requests'),
  NoLeaderError: () => new ERROR_CLASSES.NoLeaderError('no replica leads at the moment'),
  PayloadTooLargeError: () => new ERROR_CLASSES.PayloadTooLargeError('body larger than 1 MiB'),
  StorageFailedError: () => new ERROR_CLASSES.StorageFailedError('S3 PutObject failed'),
  GitFailedError: () => new ERROR_CLASSES.GitFailedError('git fetch failed'),
  EnvironmentBuildFailedError: () => new ERROR_CLASSES.EnvironmentBuildFailedError('RUN make failed'),
  RegistryUnavailableError: () => new ERROR_CLASSES.RegistryUnavailableError('registry 127.0.0.1:5000 unreachable after 5 attempts'),
  RegistryAuthFailedError: () => new ERROR_CLASSES.RegistryAuthFailedError('registry 127.0.0.1:5000 refused the credentials of airlock-builder'),
  ReviewUnavailableError: () => new ERROR_CLASSES.ReviewUnavailableError('the review system at https://review.example.org answered 503 to POST /changes/x/submit'),
  ReviewAuthFailedError: () => new ERROR_CLASSES.ReviewAuthFailedError('the review system refused airlock\'s credentials (401)'),
  ReviewRefusedError: () => new ERROR_CLASSES.ReviewRefusedError(409, 'the review system refused POST /changes/x/submit (409): change is closed'),
  SignatureInvalidError: () => new ERROR_CLASSES.SignatureInvalidError('the image signature is for sha256:…, not sha256:…'),
  InternalError: () => new ERROR_CLASSES.InternalError('internal error'),
};

const NAMES = Object.keys(ERROR_CLASSES) as (keyof Catalogue)[];
const instances = NAMES.map((name) => [name, MAKE[name]()] as const);
const DOC = readFileSync(new URL('../../docs/errors.md', import.meta.url), 'utf8');

/** The table rows of docs/errors.md: code → [HTTP status, retryable]. */
function documentedRows(): Map<string, string[]> {
  const rows = new Map<string, string[]>();
  for (const line of DOC.split('\n')) {
    const cells = line.split('|').map((c) => c.trim());
    const code = /^`(AIRLOCK_E_[A-Z_]+)`$/.exec(cells[1] ?? '')?.[1];
    if (code) rows.set(code, cells.slice(2, -1));
  }
  return rows;
}

describe('error catalogue', () => {
  it('has a factory for exactly the exported classes', () => {
    expect(Object.keys(MAKE).sort()).toEqual([...NAMES].sort());
    expect(NAMES.length).toBeGreaterThanOrEqual(10);
  });

  it('codes are unique', () => {
    const codes = instances.map(([, e]) => e.code);
    expect(new Set(codes).size).toBe(codes.length);
  });

  it.each(instances)('%s: code, name, status, wire shape', (name, e) => {
    expect(e).toBeInstanceOf(AirlockError);
    expect(e).toBeInstanceOf(Error);
    expect(isAirlockError(e)).toBe(true);
    expect(e.code).toMatch(/^AIRLOCK_E_[A-Z_]+$/);
    expect(e.name).toBe(name);
    expect(e.constructor.name).toBe(name);
    expect(e.httpStatus).toBeGreaterThanOrEqual(400);
    expect(e.httpStatus).toBeLessThan(600);
    expect(typeof e.retryable).toBe('boolean');
    expect(e.message).not.toBe('');
    expect(e.stack).toContain(name);

    const wire = e.toWire();
    expect(Object.keys(wire).sort()).toEqual(['code', 'message', 'statusCode']);
    expect(wire).toEqual({ code: e.code, message: e.message, statusCode: e.httpStatus });
    expect(JSON.parse(JSON.stringify(wire))).toEqual(wire);
  });

  it('only infrastructure failures (5xx) and rate limiting (429) are retryable', () => {
    const retryable = instances.filter(([, e]) => e.retryable).map(([n]) => n);
    expect(retryable.sort()).toEqual(['EngineUnavailableError', 'ExecutorFailedError', 'GitFailedError', 'NoLeaderError', 'RateLimitedError', 'RegistryUnavailableError', 'ReviewUnavailableError', 'StorageFailedError']);
    for (const [, e] of instances) if (e.retryable) expect(e.httpStatus === 429 || e.httpStatus >= 500).toBe(true);
  });

  it('errors built from issues list every issue with file and path', () => {
    for (const name of ['InvalidInputError', 'PolicyViolationError', 'PolicyInvalidError'] as const) {
      const e = MAKE[name]();
      expect(e.issues).toEqual(ISSUES);
      expect(e.message).toBe(formatIssues(ISSUES));
      expect(e.message).toBe('policies/untrusted-job.yaml: limits.memory: not a size: "lots"\npolicies/untrusted-job.yaml: (root): unknown key');
    }
  });

  it('ImageNotFoundError names the image', () => {
    const e = MAKE.ImageNotFoundError();
    expect(e.image).toBe('airlock/base:missing');
    expect(e.message).toContain('"airlock/base:missing"');
  });

  it('keeps a cause', () => {
    const cause = new Error('ECONNREFUSED');
    expect(new ERROR_CLASSES.ExecutorFailedError('create failed', { cause }).cause).toBe(cause);
  });

  it('isAirlockError is false for other errors and non-errors', () => {
    expect(isAirlockError(new Error('x'))).toBe(false);
    expect(isAirlockError({ code: 'AIRLOCK_E_CANCELLED', message: 'fake' })).toBe(false);
    expect(isAirlockError(undefined)).toBe(false);
  });
});

describe('docs/errors.md', () => {
  const rows = documentedRows();

  it.each(instances)('documents %s with its HTTP status and retry flag', (_name, e) => {
    expect(DOC).toContain(e.code);
    expect(rows.get(e.code)).toEqual([String(e.httpStatus), e.retryable ? 'yes' : 'no', expect.stringMatching(/\S/)]);
  });

  it('documents no code that does not exist', () => {
    const codes = new Set(instances.map(([, e]) => e.code as string));
    expect([...rows.keys()].filter((c) => !codes.has(c))).toEqual([]);
    expect([...DOC.matchAll(/AIRLOCK_E_[A-Z_]+/g)].map((m) => m[0]).filter((c) => !codes.has(c))).toEqual([]);
  });

  it('says to match on code and that job failures are results', () => {
    expect(DOC).toMatch(/match on `code`/i);
    expect(DOC).toMatch(/job that fails is a result, not an error/i);
  });
});
