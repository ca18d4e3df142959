/**
 * What a trusted builder needs around it, for tests and benchmarks: a fresh signing key, its
 * three secrets as 0600 files (the file SecretStore's layout), and a promotion policy for one
 * project whose base image is pinned by the id the local engine has. Returns the builder config.
 * With `embargo`, also an embargo key (the lane is on), that security team directory and the lane's
 * own registry (`embargoRegistry` and the builder's login there; left out, the builder refuses to
 * start: the test of that refusal leaves it out); with
 * `dashboard`, the login of the builder's page (the page is on).
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createDocker } from '#shared/docker/client.js';
import { buildBuilderConfig, type BuilderConfig } from '../../trusted-builder/config.js';
import { dashboardSecret } from '../../scripts/dashboard-password.js';
import { generateEmbargoKey, generateSigningKey } from '../../scripts/make-signing-key.js';
import type { TestRegistry } from './registry.js';

export interface BuilderRigOptions {
  dir: string;
  registry: Pick<TestRegistry, 'url' | 'username' | 'password'>;
  project: { name: string; url: string; image: string };
  hintSecret: string;
  baseImage: string;
  runnerStateDir: string;
  builderId?: string;
  /**
   * Turn the embargo lane on, with the member keys in `teamDir` (`<name>.asc` files), pushing to
   * `registry` (a second test registry: never the public one).
   */
  embargo?: { teamDir: string; registry?: Pick<TestRegistry, 'url' | 'username' | 'password'> };
  /** Turn the builder's page on, with this login (bcrypt at the lowest cost: tests need no strength). */
  dashboard?: { username: string; password: string };
  /**
   * Check review in this review system (a Gerrit stand-in) with this read-only account; `require`
   * is the policy's list as YAML flow (default: Code-Review +2 from anyone). Absent: `review: none`.
   */
  review?: { url: string; username: string; password: string; since?: string; require?: string; selfApproval?: boolean; project?: string };
}

export async function builderRig(o: BuilderRigOptions): Promise<Readonly<BuilderConfig>> {
  const key = await generateSigningKey({ name: 'airlock test builder', email: 'builder@airlock.invalid' });
  const secrets = join(o.dir, 'secrets');
  const put = (path: string, value: Record<string, string>): void => {
    mkdirSync(join(secrets, path, '..'), { recursive: true });
    writeFileSync(join(secrets, `${path}.json`), JSON.stringify(value), { mode: 0o600 });
  };
  put('airlock/signing-key', { armored: key.privateArmored });
  put('airlock/registry', { username: o.registry.username, password: o.registry.password });
  put('airlock/hint-hmac', { secret: o.hintSecret });
  if (o.dashboard) put('airlock/builder-dashboard', { ...dashboardSecret(o.dashboard.username, o.dashboard.password, 4) });
  if (o.review) put('airlock/gerrit-reader', { username: o.review.username, password: o.review.password });
  if (o.embargo?.registry) put('airlock/embargo-registry', { username: o.embargo.registry.username, password: o.embargo.registry.password });
  if (o.embargo) put('airlock/embargo-key', { armored: (await generateEmbargoKey({ name: 'airlock test embargo', email: 'embargo@airlock.invalid' })).privateArmored });
  const id = ((await createDocker().getImage(o.baseImage).inspect()) as { Id: string }).Id;
  const promotion = join(o.dir, 'promotion.yaml');
  writeFileSync(
    promotion,
    `version: 1
builderId: ${o.builderId ?? 'https://airlock.invalid/trusted-builder/test'}
registry: ${o.registry.url}
${o.embargo?.registry ? `embargoRegistry: ${o.embargo.registry.url}\n` : ''}${o.review ? `reviewSystems:\n  gerrit: {kind: gerrit, url: "${o.review.url}", credentials: airlock/gerrit-reader}\n` : ''}projects:
  - {name: ${o.project.name}, url: ${o.project.url}, protectedBranches: [master], image: ${o.project.image}, review: ${reviewYaml(o.review)}}
baseImages:
  - {name: "${o.baseImage}", digest: "${id}"}
`,
  );
  return buildBuilderConfig(
    { version: 1, listen: { port: 0 }, dataDir: join(o.dir, 'data'), runnerStateDir: o.runnerStateDir, policies: { promotion, secrets: 'policies/secrets.yaml', ...(o.embargo ? { securityTeam: o.embargo.teamDir } : {}) }, secrets: { kind: 'file', dir: secrets } },
    'builder-rig',
  );
}

function reviewYaml(r: BuilderRigOptions['review']): string {
  if (!r) return 'none';
  const parts = [`system: gerrit`, `require: ${r.require ?? '[{label: Code-Review, value: 2}]'}`];
  if (r.since) parts.push(`since: "${r.since}"`);
  if (r.project) parts.push(`project: ${r.project}`);
  if (r.selfApproval !== undefined) parts.push(`selfApproval: ${r.selfApproval}`);
  return `{${parts.join(', ')}}`;
}
