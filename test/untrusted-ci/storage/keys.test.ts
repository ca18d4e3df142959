import { describe, expect, it } from 'vitest';
import { validateKey } from '../../../untrusted-ci/storage/artifact-store.js';
import { artifactPrefix, buildIdOf, buildPrefix, logKey, logsPrefix, resultKey } from '../../../untrusted-ci/storage/keys.js';

describe('key layout', () => {
  it('lays one build out under builds/<id>/', () => {
    expect(buildPrefix('42')).toBe('builds/42/');
    expect(logsPrefix('42')).toBe('builds/42/logs/');
    expect(logKey('42', 'unit-tests')).toBe('builds/42/logs/unit-tests.log');
    expect(artifactPrefix('42', 'unit')).toBe('builds/42/artifacts/unit/');
    expect(resultKey('01J9ZK.x_y-z')).toBe('builds/01J9ZK.x_y-z/result.json');
    expect(() => validateKey(logKey('42', 'unit'))).not.toThrow();
  });

  it.each(['', '.', '..', '../x', 'a/b', '-rf', 'a\\b', 'x'.repeat(129), 'nul\0'])('refuses the build id %j', (id) => {
    expect(() => buildPrefix(id)).toThrow(expect.objectContaining({ code: 'AIRLOCK_E_INVALID_INPUT' }));
    expect(() => logKey(id, 'unit')).toThrow(expect.objectContaining({ code: 'AIRLOCK_E_INVALID_INPUT' }));
  });

  it.each(['', '..', 'Unit', 'a/b', 'a.b', '-x'])('refuses the job name %j', (job) => {
    expect(() => logKey('1', job)).toThrow(expect.objectContaining({ code: 'AIRLOCK_E_INVALID_INPUT' }));
    expect(() => artifactPrefix('1', job)).toThrow(expect.objectContaining({ code: 'AIRLOCK_E_INVALID_INPUT' }));
  });

  it.each([
    ['builds/42/logs/unit.log', '42'],
    ['builds/42/result.json', '42'],
    ['builds/42', undefined],
    ['builds//x', undefined],
    ['other/42/x', undefined],
    ['builds/-bad/x', undefined],
  ])('buildIdOf(%j) is %j', (key, id) => expect(buildIdOf(key)).toBe(id));
});
