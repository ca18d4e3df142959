/**
 * The example configs of docs/deploy.md (under examples/) load through the services' own loaders,
 * placed as the guide places them (its paths under a temporary root, the secret files it tells the
 * operator to create), and name every key their schema has, so that neither the examples nor the
 * guide can fall behind the code: a key added to `ci.yaml` or `builder.yaml` fails here until the
 * example shows it. The random secrets and tokens are the files the guide's commands write under
 * /etc/airlock/<service>/, read from docs/deploy.md itself: a token file an example names and the
 * guide does not tell the operator to make fails the load here.
 */
import { randomBytes } from 'node:crypto';
import { cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { parseYaml } from '#shared/yaml.js';
import { BuilderConfig, loadBuilderConfig } from '../../trusted-builder/config.js';
import { loadPromotionPolicy } from '../../trusted-builder/policy/promotion.js';
import { loadSecretsPolicy } from '../../trusted-builder/policy/secrets.js';
import { CiConfig, loadCiConfig } from '../../untrusted-ci/config.js';
import { ExecutorConfig, loadExecutorConfig } from '../../untrusted-ci/remote/executor-config.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url)).replace(/\/$/, '');
const EXAMPLES = join(ROOT, 'examples');
const tmp = mkdtempSync(join(tmpdir(), 'airlock-deploy-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

/** The guide's paths, moved under `root`: /etc/airlock and /var/lib/airlock there, /opt/airlock = this checkout. */
function place(text: string, root: string): string {
  return text.replaceAll('/etc/airlock', `${root}/etc/airlock`).replaceAll('/var/lib/airlock', `${root}/var/lib/airlock`).replaceAll('/opt/airlock', ROOT);
}

const GUIDE = readFileSync(join(ROOT, 'docs', 'deploy.md'), 'utf8');

/**
 * The secret files deploy.md's commands make in /etc/airlock/<dir>/ with a random or copied value:
 * `… | base64 > FILE`, `cp SRC FILE`, `install -m 0600 SRC FILE` (configs, *.yaml, are not secrets).
 */
export function guideSecretFiles(guide: string, dir: string): string[] {
  const at = `/etc/airlock/${dir}/`;
  const names = new Set<string>();
  for (const m of guide.matchAll(/^\s*(?:.*\| base64 > |cp \S+ |install -m 0600 \S+ )(\S+)/gm)) {
    const f = m[1]!;
    if (f.startsWith(at) && !f.endsWith('.yaml')) names.add(f.slice(at.length));
  }
  return [...names];
}

function yaml(file: string): unknown {
  const y = parseYaml(readFileSync(file, 'utf8'), file);
  expect(y.issues).toEqual([]);
  return y.value;
}

function secretFile(path: string, body = randomBytes(32).toString('base64')): void {
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
  writeFileSync(path, `${body}\n`, { mode: 0o600 });
}

/** What the walk reads of a zod (v4) schema: its definition and safeParse. */
interface Zodish {
  _zod: { def: object };
  safeParse(v: unknown): { success: boolean };
}

/** Every key path `schema` knows that `value` leaves out (into arrays' elements, records' values, the union member used). */
export function missingKeys(schema: Zodish, value: unknown, path = ''): string[] {
  const def = schema._zod.def as { type: string } & Record<string, unknown>;
  const isObject = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === 'object' && !Array.isArray(v);
  switch (def.type) {
    case 'optional':
    case 'default':
    case 'prefault':
    case 'nullable':
    case 'readonly':
      return missingKeys(def.innerType as Zodish, value, path);
    case 'pipe':
      return missingKeys(def.in as Zodish, value, path);
    case 'object': {
      if (!isObject(value)) return [];
      return Object.entries(def.shape as Record<string, Zodish>).flatMap(([k, s]) => {
        const p = path ? `${path}.${k}` : k;
        return k in value ? missingKeys(s, value[k], p) : [p];
      });
    }
    case 'array':
      return Array.isArray(value) ? value.flatMap((v) => missingKeys(def.element as Zodish, v, `${path}[]`)) : [];
    case 'record':
      return isObject(value) ? Object.entries(value).flatMap(([k, v]) => missingKeys(def.valueType as Zodish, v, `${path}.${k}`)) : [];
    case 'union': {
      const used = (def.options as Zodish[]).find((o) => o.safeParse(value).success);
      return used ? missingKeys(used, value, path) : [];
    }
    default:
      return [];
  }
}

describe('missingKeys', () => {
  it('finds what an example leaves out, and nothing in a complete one', () => {
    const raw = yaml(join(EXAMPLES, 'ci', 'ci.yaml')) as Record<string, unknown>;
    expect(missingKeys(CiConfig, raw)).toEqual([]);
    const { publicUrl: _u, ...withoutUrl } = raw;
    const review = { ...(raw.review as Record<string, unknown>), approval: { label: 'Code-Review' } };
    expect(missingKeys(CiConfig, { ...withoutUrl, review })).toEqual(['review.approval.value', 'review.approval.selfApproval', 'publicUrl']);
  });
});

describe('examples/ci/ci.yaml', () => {
  it('names every key of ci.yaml', () => {
    expect(missingKeys(CiConfig, yaml(join(EXAMPLES, 'ci', 'ci.yaml')))).toEqual([]);
  });

  it('loads, placed as docs/deploy.md says, with the secret files it lists', () => {
    const root = join(tmp, 'ci-host');
    const file = join(root, 'etc/airlock/ci/ci.yaml');
    mkdirSync(dirname(file), { recursive: true });
    writeFileSync(file, place(readFileSync(join(EXAMPLES, 'ci', 'ci.yaml'), 'utf8'), root));
    const etc = join(root, 'etc/airlock/ci');
    const made = guideSecretFiles(GUIDE, 'ci');
    expect(made).toEqual(expect.arrayContaining(['gerrit-hook.secret', 'api.token', 'cancel.token', 'hint.secret']));
    for (const f of made) secretFile(join(etc, f));
    secretFile(join(etc, 'gerrit.json'), JSON.stringify({ username: 'airlock-ci', password: randomBytes(16).toString('base64') }));
    secretFile(join(etc, 's3.json'), JSON.stringify({ accessKeyId: 'AKIAEXAMPLE', secretAccessKey: randomBytes(20).toString('base64') }));
    secretFile(join(etc, 'database.url'), `postgres://airlock_ci:${randomBytes(16).toString('hex')}@db.internal:5432/airlock_ci`);
    const loaded = loadCiConfig(file);
    expect(loaded.config.database).toMatchObject({ engine: 'postgres' });
    expect(loaded.databaseUrl).toMatch(/^postgres:\/\/airlock_ci:/);
    expect(loaded.config.projects.map((p) => p.name)).toEqual(['team/app']);
    expect(loaded.config.policies.job).toBe(join(ROOT, 'policies/untrusted-job.yaml'));
    expect(loaded.hintSecret?.length).toBeGreaterThanOrEqual(32);
    expect(loaded.reviewCredentials?.username).toBe('airlock-ci');
    expect([...(loaded.executorTokens?.keys() ?? [])]).toEqual(['exec-1', 'exec-2']);
  });
});

describe('examples/executor/executor.yaml', () => {
  it('names every key of executor.yaml', () => {
    expect(missingKeys(ExecutorConfig, yaml(join(EXAMPLES, 'executor', 'executor.yaml')))).toEqual([]);
  });

  it('loads, placed as docs/deploy.md says, with the token file it lists; the host is one the CI example lists', () => {
    const root = join(tmp, 'executor-host');
    const file = join(root, 'etc/airlock/executor/executor.yaml');
    mkdirSync(dirname(file), { recursive: true });
    writeFileSync(file, place(readFileSync(join(EXAMPLES, 'executor', 'executor.yaml'), 'utf8'), root));
    const made = guideSecretFiles(GUIDE, 'executor');
    expect(made).toEqual(['executor.token']);
    for (const f of made) secretFile(join(root, 'etc/airlock/executor', f));
    const { config, token } = loadExecutorConfig(file);
    expect(token.length).toBeGreaterThanOrEqual(16);
    expect(config.policies.job).toBe(join(ROOT, 'policies/untrusted-job.yaml'));
    expect(config.stateDir).toBe(join(root, 'var/lib/airlock'));
    const ci = CiConfig.parse(yaml(join(EXAMPLES, 'ci', 'ci.yaml')));
    expect(ci.executors.hosts.map((h) => h.name)).toContain(config.name);
    // The CI's port, as the CI example listens on it.
    expect(new URL(config.ci.url).port).toBe(String(ci.listen.port));
  });
});

describe('examples/builder', () => {
  it('builder.yaml names every key of builder.yaml', () => {
    expect(missingKeys(BuilderConfig, yaml(join(EXAMPLES, 'builder', 'builder.yaml')))).toEqual([]);
  });

  it('loads, placed as docs/deploy.md says: its promotion policy, the shipped secrets, job and team policies, the AppRole files', () => {
    const root = join(tmp, 'builder-host');
    const etc = join(root, 'etc/airlock/builder');
    mkdirSync(join(etc, 'policies'), { recursive: true });
    writeFileSync(join(etc, 'builder.yaml'), place(readFileSync(join(EXAMPLES, 'builder', 'builder.yaml'), 'utf8'), root));
    cpSync(join(EXAMPLES, 'builder', 'policies', 'promotion.yaml'), join(etc, 'policies', 'promotion.yaml'));
    for (const f of ['secrets.yaml', 'untrusted-job.yaml', 'security-team']) cpSync(join(ROOT, 'policies', f), join(etc, 'policies', f), { recursive: true });
    secretFile(join(etc, 'vault-role-id'), '6a3c1f0e-role');
    secretFile(join(etc, 'vault-secret-id'), '9b2d4e7a-secret');
    const c = loadBuilderConfig(join(etc, 'builder.yaml'));
    expect(c.secrets).toMatchObject({ kind: 'vault', mount: 'secret' });
    const { policy } = loadPromotionPolicy(c.policies.promotion);
    expect(policy.projects.map((p) => p.image)).toEqual(['team/app']);
    expect(loadSecretsPolicy(c.policies.secrets).builder.registry).toBe('airlock/registry');
    // The embargo lane's own registry, and the builder's login there (docs/deploy.md, security-team.md).
    expect(policy.embargoRegistry).toMatch(/\./);
    expect(policy.embargoRegistry).not.toBe(policy.registry);
    expect(loadSecretsPolicy(c.policies.secrets).builder.embargoRegistry).toBe('airlock/embargo-registry');
  });

  it('the Vault policy grants read on exactly the KV v2 paths the secrets policy names', () => {
    const hcl = readFileSync(join(EXAMPLES, 'builder', 'vault', 'airlock-builder.hcl'), 'utf8');
    const paths = [...hcl.matchAll(/^path "([^"]+)"\s*\{\s*capabilities = \["read"\]\s*\}/gm)].map((m) => m[1]);
    expect(paths).toEqual(['secret/data/airlock/*']);
    const builder = loadSecretsPolicy(join(ROOT, 'policies', 'secrets.yaml')).builder;
    for (const p of Object.values(builder)) if (p) expect(p, 'every builder secret lives under airlock/').toMatch(/^airlock\//);
  });
});

describe('examples/consumer', () => {
  it('names the registry the builder pushes to and the lookaside the builder serves', () => {
    const policy = JSON.parse(readFileSync(join(EXAMPLES, 'consumer', 'policy.json'), 'utf8')) as {
      default: unknown;
      transports: { docker: Record<string, { type: string; keyType: string; keyPath: string; signedIdentity: { type: string } }[]> };
    };
    const { policy: promotion } = loadPromotionPolicy(join(EXAMPLES, 'builder', 'policies', 'promotion.yaml'));
    expect(policy.default).toEqual([{ type: 'reject' }]);
    expect(Object.keys(policy.transports.docker)).toEqual([promotion.registry]);
    expect(policy.transports.docker[promotion.registry]).toEqual([
      { type: 'signedBy', keyType: 'GPGKeys', keyPath: '/etc/pki/containers/airlock-builder.pub.asc', signedIdentity: { type: 'matchRepoDigestOrExact' } },
    ]);
    const registries = yaml(join(EXAMPLES, 'consumer', 'registries.d', 'airlock.yaml')) as { docker: Record<string, { lookaside: string }> };
    const builder = yaml(join(EXAMPLES, 'builder', 'builder.yaml')) as { listen: { port: number } };
    const ci = yaml(join(EXAMPLES, 'ci', 'ci.yaml')) as { hints: { url: string } };
    expect(Object.keys(registries.docker)).toEqual([promotion.registry]);
    // The builder the CI sends hints to is the one consumers read signatures from.
    expect(registries.docker[promotion.registry]!.lookaside).toBe(`${ci.hints.url}/lookaside`);
    expect(new URL(ci.hints.url).port).toBe(String(builder.listen.port));
  });
});
