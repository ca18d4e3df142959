import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { InvalidInputError, PolicyInvalidError } from '#shared/errors.js';
import { buildBuilderConfig, loadBuilderConfig } from '../../trusted-builder/config.js';
import { loadPromotionPolicy, parsePromotionPolicy, projectPolicy } from '../../trusted-builder/policy/promotion.js';
import { grantFor, loadSecretsPolicy } from '../../trusted-builder/policy/secrets.js';

const dir = mkdtempSync(join(tmpdir(), 'airlock-builder-config-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('builder config', () => {
  it('fills defaults, resolves paths against the file, and freezes', () => {
    const file = join(dir, 'builder.yaml');
    writeFileSync(file, 'version: 1\ndataDir: data\nsecrets: {kind: file, dir: secrets}\n');
    mkdirSync(join(dir, 'policies'), { recursive: true });
    mkdirSync(join(dir, 'secrets'), { recursive: true });
    for (const f of ['promotion.yaml', 'secrets.yaml']) writeFileSync(join(dir, 'policies', f), '');
    const c = loadBuilderConfig(file);
    expect(c).toMatchObject({ listen: { host: '127.0.0.1', port: 8090 }, dataDir: join(dir, 'data'), secrets: { kind: 'file', dir: join(dir, 'secrets') }, pollEveryMs: 0 });
    expect(c.policies.promotion).toBe(join(dir, 'policies/promotion.yaml'));
    expect(c.policies.securityTeam).toBe(join(dir, 'policies/security-team'));
    expect(Object.isFrozen(c.secrets)).toBe(true);
  });

  it('names a path that does not exist with what it was resolved against, and the shipped policy', () => {
    const at = mkdtempSync(join(tmpdir(), 'airlock-builder-paths-'));
    try {
      const file = join(at, 'builder.yaml');
      writeFileSync(file, `version: 1\ndataDir: data\npolicies: {secrets: ${JSON.stringify(join(at, 'nowhere.yaml'))}, securityTeam: team}\nsecrets: {kind: vault, address: "https://vault.example:8200", roleIdFile: role, secretIdFile: ${JSON.stringify(join(at, 'secret-id'))}}\n`);
      writeFileSync(join(at, 'role'), 'x');
      let thrown: unknown;
      try {
        loadBuilderConfig(file);
      } catch (e) {
        thrown = e;
      }
      expect(thrown).toBeInstanceOf(InvalidInputError);
      const shipped = fileURLToPath(new URL('../../policies/promotion.yaml', import.meta.url));
      expect((thrown as InvalidInputError).issues.map((i) => [i.path, i.message])).toEqual([
        ['policies.promotion', `${join(at, 'policies/promotion.yaml')} does not exist (the default, a relative path, resolves against ${at}, the directory of builder.yaml; write an absolute path to use another); the shipped one is ${shipped}`],
        ['policies.secrets', `${join(at, 'nowhere.yaml')} does not exist`],
        ['policies.securityTeam', `${join(at, 'team')} does not exist (the relative path "team" resolves against ${at}, the directory of builder.yaml; write an absolute path to use another)`],
        ['secrets.secretIdFile', `${join(at, 'secret-id')} does not exist`],
      ]);
    } finally {
      rmSync(at, { recursive: true, force: true });
    }
  });

  it('lists every problem', () => {
    const e = (() => {
      try {
        buildBuilderConfig({ version: 2, dataDir: '', secrets: { kind: 'vault', address: 'not a url' }, extra: 1 }, 'b.yaml');
      } catch (x) {
        return x as InvalidInputError;
      }
      throw new Error('accepted');
    })();
    expect(e).toBeInstanceOf(InvalidInputError);
    const paths = e.issues.map((i) => i.path);
    expect(paths).toEqual(expect.arrayContaining(['version', 'dataDir', 'secrets.address', 'secrets.roleIdFile', 'secrets.secretIdFile']));
  });
});

describe('policies', () => {
  it("refuses a grant of one of the builder's own secrets to a project's step", () => {
    const file = join(dir, 'secrets-grant.yaml');
    writeFileSync(
      file,
      'version: 1\nbuilder: {signingKey: airlock/signing-key, registry: airlock/registry, hintSecret: airlock/hint-hmac, embargoRegistry: airlock/embargo-registry}\n' +
        'grants:\n  team/app:\n    publish: {command: sh x.sh, secrets: [team/app/npm, airlock/embargo-registry]}\n    other: {command: sh y.sh, secrets: [airlock/registry/extra]}\n    fine: {command: sh z.sh, secrets: [airlock/registry-mirror]}\n',
    );
    expect(() => loadSecretsPolicy(file)).toThrow(PolicyInvalidError);
    let message = '';
    try {
      loadSecretsPolicy(file);
    } catch (e) {
      message = (e as Error).message;
    }
    expect(message).toContain('grants.team/app.publish.secrets[1]');
    expect(message).toContain("airlock/embargo-registry is the builder's own secret (builder.embargoRegistry): no project step may read it");
    expect(message).toContain('airlock/registry/extra is the builder');
    expect(message).not.toContain('airlock/registry-mirror');
  });

  it('says what a base image entry is when given a bare name', () => {
    const text = 'version: 1\nbuilderId: https://b.invalid/x\nregistry: 127.0.0.1:5000\nprojects: []\nbaseImages: [airlock/base:busybox]\n';
    expect(() => parsePromotionPolicy(text, 'promotion.yaml')).toThrow(
      "promotion.yaml: baseImages[0]: a base image is {name, digest}, digest being its image id: docker image inspect --format '{{.Id}}' NAME",
    );
  });

  it('the shipped promotion and secrets policies load', () => {
    const p = loadPromotionPolicy('policies/promotion.yaml');
    expect(p.digest).toMatch(/^sha256:[0-9a-f]{64}$/);
    expect(projectPolicy(p.policy, 'demo/app')).toMatchObject({ image: 'team/app', protectedBranches: ['master'], review: { system: 'gerrit', require: [{ label: 'Code-Review', value: 2 }], selfApproval: false } });
    expect(p.policy.reviewSystems.gerrit).toEqual({ kind: 'gerrit', url: 'https://review.example.invalid', credentials: 'airlock/gerrit-reader' });
    expect(projectPolicy(p.policy, 'nope')).toBeUndefined();
    const s = loadSecretsPolicy('policies/secrets.yaml');
    expect(s.builder.signingKey).toBe('airlock/signing-key');
    expect(s.builder.embargoKey).toBe('airlock/embargo-key');
    expect(s.builder.embargoRegistry).toBe('airlock/embargo-registry');
    expect(p.policy.embargoRegistry).toBe('127.0.0.1:5001');
    expect(grantFor(s, 'demo/app', 'publish')).toBeUndefined();
  });

  it('refuses a bad promotion policy naming each problem', () => {
    const text = `version: 1
builderId: not-a-url
registry: "Bad Host"
projects:
  - {name: a/b, url: "ext::sh -c evil", protectedBranches: [], image: Team/App, review: none}
  - {name: a/b, url: /srv/a.git, protectedBranches: [main], image: team/app, review: none}
baseImages: [{name: "airlock/base:busybox", digest: sha1:abc}]
`;
    const e = (() => {
      try {
        parsePromotionPolicy(text, 'promotion.yaml');
      } catch (x) {
        return x as PolicyInvalidError;
      }
      throw new Error('accepted');
    })();
    expect(e).toBeInstanceOf(PolicyInvalidError);
    expect(e.issues.map((i) => i.path)).toEqual(
      expect.arrayContaining(['builderId', 'registry', 'projects[0].url', 'projects[0].protectedBranches', 'projects[0].image', 'baseImages[0].digest']),
    );
    // Duplicates are a second pass, once the shape is right.
    const dup = text.replace('not-a-url', 'https://b.invalid/x').replace('"Bad Host"', '127.0.0.1:5000').replace('"ext::sh -c evil"', '/srv/b.git').replace('protectedBranches: []', 'protectedBranches: [main]').replace('Team/App', 'team/app').replace('sha1:abc', `sha256:${'a'.repeat(64)}`);
    expect(() => parsePromotionPolicy(dup, 'promotion.yaml')).toThrow(/listed twice/);
  });

  it('wants the embargo lane’s registry to be another registry than the public one', () => {
    const policy = (embargoRegistry: string): string => `version: 1\nbuilderId: https://b.invalid/x\nregistry: registry.example.org\nembargoRegistry: ${embargoRegistry}\nprojects: []\n`;
    const issuesOf = (text: string): string[] => {
      try {
        parsePromotionPolicy(text, 'promotion.yaml');
        return [];
      } catch (x) {
        return (x as PolicyInvalidError).issues.map((i) => `${i.path}: ${i.message}`);
      }
    };
    expect(issuesOf(policy('embargo.example.org:5001'))).toEqual([]);
    for (const same of ['registry.example.org', 'registry.example.org:443']) {
      expect(issuesOf(policy(same))).toEqual([expect.stringMatching(/^embargoRegistry: is the public registry registry\.example\.org: every login of that registry \(consumers' too\) could read the embargoed images/)]);
    }
    expect(issuesOf(policy('"Bad Host"'))).toEqual([expect.stringMatching(/^embargoRegistry: /)]);
  });

  it('wants every project to say how its review is checked, and names a review system that is not defined', () => {
    const base = `version: 1
builderId: https://b.invalid/x
registry: 127.0.0.1:5000
reviewSystems:
  gerrit: {kind: gerrit, url: "https://review.example.org", credentials: airlock/gerrit-reader}
projects:
`;
    const issuesOf = (projects: string): string[] => {
      try {
        parsePromotionPolicy(base + projects, 'promotion.yaml');
        return [];
      } catch (x) {
        return (x as PolicyInvalidError).issues.map((i) => `${i.path}: ${i.message}`);
      }
    };
    expect(issuesOf('  - {name: a/b, url: /srv/a.git, protectedBranches: [main], image: team/app}\n')).toEqual([expect.stringMatching(/^projects\[0\]\.review: /)]);
    expect(issuesOf('  - {name: a/b, url: /srv/a.git, protectedBranches: [main], image: team/app, review: {system: gitlab, require: [{label: Code-Review, value: 2}]}}\n')).toEqual([
      'projects[0].review.system: no review system "gitlab" in reviewSystems',
    ]);
    expect(issuesOf('  - {name: a/b, url: /srv/a.git, protectedBranches: [main], image: team/app, review: {system: gerrit, require: []}}\n')).toEqual([expect.stringMatching(/^projects\[0\]\.review\.require: /)]);
    expect(issuesOf('  - {name: a/b, url: /srv/a.git, protectedBranches: [main], image: team/app, review: {system: gerrit, require: [{label: Code-Review, value: 2}], since: HEAD}}\n')).toEqual([expect.stringMatching(/^projects\[0\]\.review\.since: /)]);
    expect(issuesOf('  - {name: a/b, url: /srv/a.git, protectedBranches: [main], image: team/app, review: {system: gerrit, require: [{label: Code-Review, value: 2, by: {accounts: [alice]}}]}}\n')).toEqual([]);
    expect(
      (() => {
        try {
          parsePromotionPolicy(base.replace('https://review.example.org', 'https://u:p@review.example.org') + '  - {name: a/b, url: /srv/a.git, protectedBranches: [main], image: team/app, review: none}\n', 'promotion.yaml');
          return 'accepted';
        } catch (x) {
          return (x as PolicyInvalidError).issues.map((i) => i.path).join();
        }
      })(),
    ).toBe('reviewSystems.gerrit.url');
  });
});
