/**
 * The CI service config: validated once, every problem listed with its path, relative paths
 * resolved against the config file's folder, secrets read from files (never echoed), deep-frozen.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { InvalidInputError, type Issue } from '#shared/errors.js';
import { buildCiConfig, loadCiConfig } from '../../untrusted-ci/config.js';

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'airlock-config-'));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

/** The issues an invalid config throws with (fails the test if it does not throw InvalidInputError). */
function issuesOf(input: unknown, baseDir = dir): Issue[] {
  try {
    buildCiConfig(input, 'ci.yaml', baseDir);
  } catch (e) {
    expect(e).toBeInstanceOf(InvalidInputError);
    return [...(e as InvalidInputError).issues];
  }
  throw new Error('expected the config to be refused');
}

const SECRET = 'correct-horse-battery-staple-42';

describe('buildCiConfig: executor hosts', () => {
  it('reads each host token, and refuses one shared with another host or with another secret', () => {
    for (const [f, t] of [['a.token', 'token-of-host-a-0123456789'], ['b.token', 'token-of-host-b-0123456789'], ['hook.secret', 'token-of-host-a-0123456789'], ['short.token', 'short']] as const) writeFileSync(join(dir, f), t);
    const ok = buildCiConfig({ version: 1, dataDir: '/srv/airlock', executors: { hosts: [{ name: 'exec-a', tokenFile: 'a.token' }, { name: 'exec-b', tokenFile: 'b.token' }] } }, 'ci.yaml', dir);
    expect([...(ok.executorTokens ?? new Map()).entries()]).toEqual([
      ['exec-a', 'token-of-host-a-0123456789'],
      ['exec-b', 'token-of-host-b-0123456789'],
    ]);
    expect(issuesOf({ version: 1, dataDir: '/srv/airlock', executors: { hosts: [{ name: 'exec-a', tokenFile: 'a.token' }, { name: 'exec-b', tokenFile: 'a.token' }] } })).toEqual([
      expect.objectContaining({ path: 'executors.hosts[1].tokenFile', message: expect.stringContaining('exec-a') }),
    ]);
    expect(issuesOf({ version: 1, dataDir: '/srv/airlock', webhooks: { gerritSecretFile: 'hook.secret' }, executors: { hosts: [{ name: 'exec-a', tokenFile: 'a.token' }] } })).toEqual([
      expect.objectContaining({ path: 'executors.hosts[0].tokenFile', message: expect.stringContaining('webhook secret') }),
    ]);
    expect(issuesOf({ version: 1, dataDir: '/srv/airlock', executors: { hosts: [{ name: 'exec-a', tokenFile: 'short.token' }, { name: 'exec-a', tokenFile: 'b.token' }] } })).toEqual([
      expect.objectContaining({ path: 'executors.hosts[0].tokenFile', message: expect.stringContaining('16 bytes') }),
      expect.objectContaining({ path: 'executors.hosts[1].name', message: expect.stringContaining('duplicate') }),
    ]);
    expect(issuesOf({ version: 1, dataDir: '/srv/airlock', executors: { hosts: [{ name: 'Exec A', tokenFile: 'a.token' }] } })).toEqual([expect.objectContaining({ path: 'executors.hosts[0].name' })]);
  });
});

describe('buildCiConfig: database', () => {
  it('reads a PostgreSQL URL from database.urlFile, and refuses a file that does not hold one', () => {
    writeFileSync(join(dir, 'db.url'), 'postgres://ci:pw@db.internal:5432/ci\n');
    const ok = buildCiConfig({ version: 1, dataDir: '/srv/airlock', database: { engine: 'postgres', urlFile: 'db.url' } }, 'ci.yaml', dir);
    expect(ok.databaseUrl).toBe('postgres://ci:pw@db.internal:5432/ci');
    expect(ok.config.database).toEqual({ engine: 'postgres', urlFile: join(dir, 'db.url'), maxConnections: 10 });
    writeFileSync(join(dir, 'bad.url'), 'mysql://ci:pw@db/ci\n');
    expect(issuesOf({ version: 1, dataDir: '/srv/airlock', database: { engine: 'postgres', urlFile: 'bad.url' } }, dir)).toEqual([
      expect.objectContaining({ path: 'database.urlFile', message: expect.stringMatching(/must hold one postgres:\/\/.*does not/) }),
    ]);
    expect(issuesOf({ version: 1, dataDir: '/srv/airlock', database: { engine: 'postgres', urlFile: 'missing.url' } }, dir)).toEqual([
      expect.objectContaining({ path: 'database.urlFile', message: expect.stringContaining('ENOENT') }),
    ]);
    // The password of a refused URL is not in the message.
    writeFileSync(join(dir, 'bad.url'), 'http://ci:hunter2-password@db/ci\n');
    expect(JSON.stringify(issuesOf({ version: 1, dataDir: '/srv/airlock', database: { engine: 'postgres', urlFile: 'bad.url' } }, dir))).not.toContain('hunter2');
  });
});

describe('buildCiConfig', () => {
  it('fills every default', () => {
    const { config, gerritSecret, apiToken } = buildCiConfig({ version: 1, dataDir: '/srv/airlock' }, 'ci.yaml');
    expect(config).toEqual({
      version: 1,
      listen: { host: '127.0.0.1', port: 8080 },
      dataDir: '/srv/airlock',
      database: { engine: 'sqlite' },
      runnerStateDir: '/var/lib/airlock',
      slots: 2,
      capacity: { reserve: 1024 ** 3, overtakes: 4 },
      projects: [],
      policies: {},
      webhooks: { ratePerMinute: 600 },
      api: { bodyLimit: 1024 * 1024 },
      imageGcEveryMs: 600_000,
      replicas: { leaseMs: 10_000 },
      executors: { hosts: [], leaseMs: 15_000 },
      gate: { window: { initial: 20, floor: 3, ceiling: null, increase: 1, decreaseFactor: 2 }, queues: {} },
    });
    expect(gerritSecret).toBeUndefined();
    expect(apiToken).toBeUndefined();
  });

  it('parses human sizes and fills project defaults', () => {
    const { config } = buildCiConfig({ version: 1, dataDir: '/d', api: { bodyLimit: '64k' }, projects: [{ name: 'org/app', url: 'https://git.example.com/app.git' }] }, 'ci.yaml');
    expect(config.api.bodyLimit).toBe(64 * 1024);
    expect(config.projects).toEqual([{ name: 'org/app', url: 'https://git.example.com/app.git', branches: [] }]);
  });

  it('refuses unknown keys, naming their path', () => {
    const issues = issuesOf({ version: 1, dataDir: '/d', slot: 3, webhooks: { secret: 'x' }, projects: [{ name: 'a', url: '/r', branch: 'main' }] });
    expect(issues.map((i) => i.path).sort()).toEqual(['', 'projects[0]', 'webhooks'].sort());
    expect(issues.map((i) => i.message).join('\n')).toMatch(/slot/);
    expect(issues.map((i) => i.message).join('\n')).toMatch(/secret/);
    expect(issues.map((i) => i.message).join('\n')).toMatch(/branch/);
    expect(issues.every((i) => i.file === 'ci.yaml' && i.severity === 'error')).toBe(true);
  });

  it('lists every problem at once', () => {
    const issues = issuesOf({
      version: 2,
      slots: 0,
      listen: { port: 70_000 },
      projects: [{ name: '../etc', url: 'ext::sh -c touch% /tmp/pwned' }, { name: 'ok', url: '-oProxyCommand=x' }],
      api: { bodyLimit: 'lots' },
    });
    expect([...new Set(issues.map((i) => i.path))].sort()).toEqual(
      ['version', 'dataDir', 'slots', 'listen.port', 'projects[0].name', 'projects[0].url', 'projects[1].url', 'api.bodyLimit'].sort(),
    );
  });

  it('refuses duplicate project names', () => {
    const issues = issuesOf({ version: 1, dataDir: '/d', projects: [{ name: 'a', url: '/r/a' }, { name: 'b', url: '/r/b' }, { name: 'a', url: '/r/c' }] });
    expect(issues).toEqual([{ file: 'ci.yaml', path: 'projects[2].name', message: 'duplicate project a', severity: 'error' }]);
  });

  it.each(['ext::sh -c id', 'fd::17', 'FD::3/x', '-uhttps://x', 'https://x/\nrepo'])('refuses the project URL %j', (url) => {
    const issues = issuesOf({ version: 1, dataDir: '/d', projects: [{ name: 'a', url }] });
    expect(issues.map((i) => i.path)).toEqual(['projects[0].url']);
  });

  it.each(['https://git.example.com/a.git', 'ssh://git@host/a.git', 'git@host:org/a.git', 'file:///srv/git/a.git', '/srv/git/a.git'])('accepts the project URL %j as is', (url) => {
    expect(buildCiConfig({ version: 1, dataDir: '/d', projects: [{ name: 'a', url }] }, 'ci.yaml').config.projects[0]!.url).toBe(url);
  });

  it('resolves relative paths against the base folder', () => {
    const { config } = buildCiConfig(
      {
        version: 1,
        dataDir: 'data',
        runnerStateDir: './state',
        policies: { job: 'policies/job.yaml', environments: '/etc/airlock/env.yaml' },
        artifactStore: { kind: 'fs', root: 'artifacts' },
        projects: [{ name: 'a', url: 'repos/a' }],
      },
      'ci.yaml',
      '/srv/airlock',
    );
    expect(config.dataDir).toBe('/srv/airlock/data');
    expect(config.runnerStateDir).toBe('/srv/airlock/state');
    expect(config.policies).toEqual({ job: '/srv/airlock/policies/job.yaml', environments: '/etc/airlock/env.yaml' });
    expect(config.artifactStore).toEqual({ kind: 'fs', root: '/srv/airlock/artifacts' });
    expect(config.projects[0]!.url).toBe('/srv/airlock/repos/a');
  });

  it('reads the webhook secret and the API token from their files, trimmed', () => {
    writeFileSync(join(dir, 'hook.secret'), `${SECRET}\n`, { mode: 0o600 });
    writeFileSync(join(dir, 'api.token'), `  ${SECRET}-api  \n`, { mode: 0o600 });
    const loaded = buildCiConfig({ version: 1, dataDir: '/d', webhooks: { gerritSecretFile: 'hook.secret' }, api: { tokenFile: join(dir, 'api.token') } }, 'ci.yaml', dir);
    expect(loaded.gerritSecret).toEqual(Buffer.from(SECRET));
    expect(loaded.apiToken).toBe(`${SECRET}-api`);
    // The config holds the paths, never the secrets.
    expect(JSON.stringify(loaded.config)).not.toContain(SECRET);
    expect(loaded.config.webhooks.gerritSecretFile).toBe('hook.secret');
  });

  it('refuses a short secret without ever quoting it, and a missing one by its error code', () => {
    writeFileSync(join(dir, 'short'), 'hunter2-shorty\n');
    let thrown: unknown;
    try {
      buildCiConfig({ version: 1, dataDir: '/d', webhooks: { gerritSecretFile: 'short' }, api: { tokenFile: 'absent' } }, 'ci.yaml', dir);
    } catch (e) {
      thrown = e;
    }
    expect(thrown).toBeInstanceOf(InvalidInputError);
    const e = thrown as InvalidInputError;
    expect(e.issues).toEqual([
      { file: 'ci.yaml', path: 'webhooks.gerritSecretFile', message: 'the secret must be at least 16 bytes', severity: 'error' },
      {
        file: 'ci.yaml',
        path: 'api.tokenFile',
        message: `cannot read ${join(dir, 'absent')}: ENOENT (the relative path "absent" resolves against ${dir}, the directory of ci.yaml; write an absolute path to use another)`,
        severity: 'error',
      },
    ]);
    expect(e.message).not.toContain('hunter2');
    expect(JSON.stringify(e.toWire())).not.toContain('hunter2');
  });

  it('refuses an empty secret file (a missing configuration must fail closed)', () => {
    writeFileSync(join(dir, 'empty'), '\n');
    expect(issuesOf({ version: 1, dataDir: '/d', webhooks: { gerritSecretFile: 'empty' } }).map((i) => i.path)).toEqual(['webhooks.gerritSecretFile']);
  });

  it('refuses to listen beyond loopback without both API tokens, and one token for both', () => {
    writeFileSync(join(dir, 'submit.token'), 'submit-token-of-enough-length');
    writeFileSync(join(dir, 'cancel.token'), 'cancel-token-of-enough-length');
    const open = { version: 1, dataDir: '/d', listen: { host: '0.0.0.0', port: 8080 } };
    const problems = (input: unknown): Issue[] => {
      try {
        buildCiConfig(input, 'ci.yaml', dir);
        return [];
      } catch (e) {
        return [...(e as InvalidInputError).issues];
      }
    };
    expect(problems(open).map((i) => [i.path, i.message])).toEqual([
      ['api.tokenFile', 'required when the service listens beyond loopback (listen.host 0.0.0.0)'],
      ['api.cancelTokenFile', 'required when the service listens beyond loopback (listen.host 0.0.0.0)'],
    ]);
    expect(problems({ ...open, api: { tokenFile: 'submit.token', cancelTokenFile: 'cancel.token' } })).toEqual([]);
    expect(problems({ ...open, api: { tokenFile: 'submit.token', cancelTokenFile: 'submit.token' } }).map((i) => i.path)).toEqual(['api.cancelTokenFile']);
    // On loopback, a developer's CI may run open.
    expect(problems({ ...open, listen: { host: '127.0.0.1', port: 8080 } })).toEqual([]);
    expect(problems({ ...open, listen: { host: '::1', port: 8080 } })).toEqual([]);
  });

  it('takes the builder\'s base URL for hints, and says so when given the endpoint', () => {
    writeFileSync(join(dir, 'hint.secret'), 'a-hint-secret-of-enough-length');
    expect(issuesOf({ version: 1, dataDir: '/d', hints: { url: 'http://builder:8090/v1/hints', secretFile: 'hint.secret' } }).map((i) => [i.path, i.message])).toEqual([
      ['hints.url', "the builder's base URL, without /v1/hints (hints go to <url>/v1/hints)"],
    ]);
  });

  it('returns a deep-frozen config, and each call gets its own', () => {
    const a = buildCiConfig({ version: 1, dataDir: '/d', projects: [{ name: 'a', url: '/r', branches: ['main'] }] }, 'ci.yaml').config;
    expect(Object.isFrozen(a)).toBe(true);
    expect(Object.isFrozen(a.listen)).toBe(true);
    expect(Object.isFrozen(a.webhooks)).toBe(true);
    expect(Object.isFrozen(a.projects)).toBe(true);
    expect(Object.isFrozen(a.projects[0])).toBe(true);
    expect(Object.isFrozen(a.projects[0]!.branches)).toBe(true);
    expect(() => {
      (a as { slots: number }).slots = 99;
    }).toThrow(TypeError);
    expect(() => (a.projects as unknown as unknown[]).push({})).toThrow(TypeError);
    // Defaults are not shared between configs: the second one is built normally.
    const b = buildCiConfig({ version: 1, dataDir: 'rel', policies: { job: 'j.yaml' } }, 'ci.yaml', '/base').config;
    expect(b.policies.job).toBe('/base/j.yaml');
  });
});

describe('loadCiConfig', () => {
  it('reads YAML and resolves paths against the file’s folder', () => {
    const file = join(dir, 'ci.yaml');
    writeFileSync(file, 'version: 1\ndataDir: data\nslots: 4\nprojects:\n  - name: app\n    url: https://git.example.com/app.git\n');
    const { config } = loadCiConfig(file);
    expect(config.dataDir).toBe(join(dir, 'data'));
    expect(config.slots).toBe(4);
  });

  it('names a policy file that does not exist with what it was resolved against', () => {
    const at = mkdtempSync(join(tmpdir(), 'airlock-ci-paths-'));
    try {
      const file = join(at, 'ci.yaml');
      writeFileSync(file, 'version: 1\ndataDir: data\npolicies: {job: policies/untrusted-job.yaml}\n');
      expect(() => loadCiConfig(file)).toThrow(
        `ci.yaml: policies.job: ${join(at, 'policies/untrusted-job.yaml')} is not a readable file (the relative path "policies/untrusted-job.yaml" resolves against ${at}, the directory of ci.yaml; write an absolute path to use another)`,
      );
    } finally {
      rmSync(at, { recursive: true, force: true });
    }
  });

  it('names the file in every issue, and refuses a file that cannot be read', () => {
    const file = join(dir, 'ci.yaml');
    writeFileSync(file, 'version: 1\ndataDir: d\nextra: true\n');
    expect(() => loadCiConfig(file)).toThrow(/ci\.yaml/);
    expect(() => loadCiConfig(join(dir, 'nope.yaml'))).toThrow(InvalidInputError);
  });
});
