/**
 * Everything the two services need, generated in the demo root and never in the repository:
 *
 *   <root>/
 *     review/git/demo/greeter-<suffix>.git  the project's repository in the code-review stand-in
 *                           (Gerrit's role): what the CI fetches and the builder's canonical source
 *     ci/ci.yaml            the CI's config; ci/data (SQLite, mirrors, logs), ci/artifacts,
 *     ci/hint.secret        the HMAC key of promotion hints
 *     ci/gerrit.json        the CI's account in code review (airlock-ci: votes Verified, submits)
 *     ci/hook.secret        the secret in the URL code review posts its events to
 *     builder/builder.yaml  the builder's config; builder/data (audit log, lookaside, promotions),
 *     builder/secrets/      its file SecretStore (0600 JSON): signing key, its logins to both
 *                           registries, hint key, its own read-only account in code review
 *                           (airlock-builder)
 *     builder/promotion.yaml  the promotion policy: this project only, base image pinned by image id,
 *                           review checked in code review (Code-Review +2 from someone else)
 *     builder/signing-key.pub.asc  the signing key's public half (what a consumer's policy names)
 *     ci.log, builder.log   the services' logs
 *
 * The registries are the bootstrap's (scripts/bootstrap.sh, step 5), their logins the files it wrote:
 * public images on 127.0.0.1:5000 (the builder pushes with its own login; the demo's consumer pulls
 * with the consumers' login, never the builder's), and the embargo lane's own on 127.0.0.1:5001
 * (the builder's login there goes into its SecretStore; the plain demo submits no embargoed patch,
 * so the lane stays off, but the policy and the secret are what a lane that is on needs). With
 * `--security-team` the lane is on: builder/secrets gets the embargo key, builder/embargo-key.pub.asc
 * its public half, security-team/keys/dana.asc is the team directory of the builder's config and
 * security-team/dana.key.asc (0600) the member's private key. The repository's own policies (job limits, environments, secrets.yaml for the
 * secret paths) are used as shipped.
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { stringify } from 'yaml';
import { createDocker } from '#shared/docker/client.js';
import { loadSecretsPolicy } from '../trusted-builder/policy/secrets.js';
import { dashboardSecret } from '../scripts/dashboard-password.js';
import { generateEmbargoKey, generateSigningKey, secretValue } from '../scripts/make-signing-key.js';
import { BUILDER_ACCOUNT, CI_ACCOUNT } from '../test/support/gerrit-rig.js';
import type { CodeReview } from './code-review.js';

export const REPO_ROOT = fileURLToPath(new URL('..', import.meta.url));
/** The bootstrap's registry of public images (scripts/bootstrap.sh, step 5). */
export const REGISTRY = '127.0.0.1:5000';
/** The bootstrap's registry of the embargo lane (its logins: the builder's and the security team's). */
export const EMBARGO_REGISTRY = '127.0.0.1:5001';
/**
 * This run's own namespace: the project's name ends in a suffix new in each demo process, and every
 * image the run makes is named after it (the CI's `airlock-env/demo-greeter-<suffix>:…`, the
 * builder's `airlock-trusted(-env)/demo/greeter-<suffix>:…`). The demo removes the images made
 * under it at the end, and two demos at once (the two demo tests) never share or remove one
 * another's; a test checks nothing of it is left (test/support/demo-run.ts).
 */
export const PROJECT = `demo/greeter-${randomBytes(4).toString('hex')}`;
/** Where the builder publishes the project: `<registry>/<image>:<commit>`. */
export const IMAGE = PROJECT;
/** The base image every FROM of the sample project names, pinned by id in the promotion policy. */
export const BASE_IMAGE = 'airlock/base:busybox';
/** The base of the sample project's CI environment (Debian, for apt), pinned too: the builder re-runs the tests in it. */
export const ENV_BASE_IMAGE = 'airlock/base:bookworm';

export interface DemoLayout {
  root: string;
  /** Where the code-review stand-in keeps its repositories. */
  review: string;
  ciConfig: string;
  ciLog: string;
  builderConfig: string;
  builderData: string;
  builderLog: string;
  publicKeyFile: string;
  /** The signing key's fingerprint (what skopeo and gpg will see). */
  fingerprint: string;
  /** The public registry with the consumers' login (what the demo's consumer pulls with). */
  registry: { host: string; username: string; password: string };
  /** The login of the builder's page (`/ui`). */
  dashboard: { username: string; password: string };
  stateDir: string;
  /** With `--security-team` only: the embargo lane is on, and one team member's files. */
  securityTeam?: SecurityTeamLayout;
}

/** What the security team holds (`--security-team`): as docs/security-team.md has a member set up. */
export interface SecurityTeamLayout {
  /** The member's armored private key (0600), what `airlock embargo --key` reads. */
  memberKeyFile: string;
  memberFingerprint: string;
  /** The builder's embargo public key (`embargo-key.pub.asc`), what `--builder-key` reads. */
  builderKeyFile: string;
  /** The team's login to the lane's registry (the bootstrap's registry-private/team.json). */
  registryLogin: { username: string; password: string };
  /** The consumers' login, which the lane's registry must refuse. */
  consumerLogin: { username: string; password: string };
}

export function layout(root: string, stateDir: string): Omit<DemoLayout, 'fingerprint' | 'registry' | 'dashboard'> {
  return {
    root,
    review: join(root, 'review'),
    ciConfig: join(root, 'ci', 'ci.yaml'),
    ciLog: join(root, 'ci.log'),
    builderConfig: join(root, 'builder', 'builder.yaml'),
    builderData: join(root, 'builder', 'data'),
    builderLog: join(root, 'builder.log'),
    publicKeyFile: join(root, 'builder', 'signing-key.pub.asc'),
    stateDir,
  };
}

/**
 * Writes the builder's side (key, secrets, policy, config) and the CI's hint key; the CI's config
 * is written by `writeCiConfig` once the builder's address is known. `review` is the code-review
 * stand-in, already started (its repositories are under `<root>/review`).
 */
export async function prepareDemoRoot(root: string, stateDir: string, review: CodeReview, opts: { securityTeam?: boolean } = {}): Promise<DemoLayout> {
  const l = layout(root, stateDir);
  const registry = registryCredentials(stateDir, join('registry', 'credentials.json'));
  const consumerLogin = registryCredentials(stateDir, join('registry', 'consumer.json'));
  const embargoRegistry = registryCredentials(stateDir, join('registry-private', 'builder.json'));
  for (const d of ['review', 'ci', 'builder']) mkdirSync(join(root, d), { recursive: true, mode: 0o700 });

  // The hint key: one random value, in the CI's file and in the builder's SecretStore.
  const hintSecret = randomBytes(32).toString('base64url');
  writeFileSync(join(root, 'ci', 'hint.secret'), `${hintSecret}\n`, { mode: 0o600 });

  const key = await generateSigningKey({ name: 'airlock demo builder', email: 'builder@airlock.invalid' });
  writeFileSync(l.publicKeyFile, key.publicArmored);
  const paths = loadSecretsPolicy(join(REPO_ROOT, 'policies', 'secrets.yaml')).builder;
  const secrets = join(root, 'builder', 'secrets');
  const put = (path: string, value: Record<string, string>): void => {
    const file = join(secrets, `${path}.json`);
    mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
    writeFileSync(file, JSON.stringify(value), { mode: 0o600 });
  };
  put(paths.signingKey, { armored: key.privateArmored });
  put(paths.registry, { username: registry.username, password: registry.password });
  if (!paths.embargoRegistry) throw new Error('policies/secrets.yaml names no builder.embargoRegistry');
  put(paths.embargoRegistry, { username: embargoRegistry.username, password: embargoRegistry.password });
  put(paths.hintSecret, { secret: hintSecret });
  // The builder's own account in code review: it only reads (never the CI's account).
  put('airlock/gerrit-reader', { username: BUILDER_ACCOUNT, password: review.passwords[BUILDER_ACCOUNT]! });
  // The CI's account there (votes Verified, asks for submits) and the secret of its webhook URL.
  writeFileSync(join(root, 'ci', 'gerrit.json'), JSON.stringify({ username: CI_ACCOUNT, password: review.passwords[CI_ACCOUNT] }), { mode: 0o600 });
  writeFileSync(join(root, 'ci', 'hook.secret'), `${review.hookSecret}\n`, { mode: 0o600 });
  // The builder's page: a login made here (bcrypt; the password is printed at the end).
  const dashboard = { username: 'airlock-demo-sre', password: randomBytes(12).toString('base64url') };
  if (paths.dashboard) put(paths.dashboard, { ...dashboardSecret(dashboard.username, dashboard.password, 8) });

  // --security-team: the lane on (its key in the store, as `make-signing-key.ts --embargo` writes
  // embargo-key.json), and one member whose public key is the team directory the config names.
  let team: SecurityTeamLayout | undefined;
  if (opts.securityTeam) {
    if (!paths.embargoKey) throw new Error('policies/secrets.yaml names no builder.embargoKey');
    const embargoKey = await generateEmbargoKey({ name: 'airlock demo builder embargo', email: 'embargo@airlock.invalid' });
    put(paths.embargoKey, secretValue(embargoKey.privateArmored, undefined) as Record<string, string>);
    const builderKeyFile = join(root, 'builder', 'embargo-key.pub.asc');
    writeFileSync(builderKeyFile, embargoKey.publicArmored);
    const member = await generateEmbargoKey({ name: 'dana', email: 'dana@security.invalid' });
    mkdirSync(join(root, 'security-team', 'keys'), { recursive: true, mode: 0o700 });
    writeFileSync(join(root, 'security-team', 'keys', 'dana.asc'), member.publicArmored);
    const memberKeyFile = join(root, 'security-team', 'dana.key.asc');
    writeFileSync(memberKeyFile, member.privateArmored, { mode: 0o600 });
    team = {
      memberKeyFile,
      memberFingerprint: member.fingerprint,
      builderKeyFile,
      registryLogin: registryCredentials(stateDir, join('registry-private', 'team.json')),
      consumerLogin,
    };
  }

  const baseId = ((await createDocker().getImage(BASE_IMAGE).inspect()) as { Id: string }).Id;
  const envBaseId = ((await createDocker().getImage(ENV_BASE_IMAGE).inspect()) as { Id: string }).Id;
  const promotion = join(root, 'builder', 'promotion.yaml');
  writeFileSync(
    promotion,
    `# The demo's promotion policy (SRE-owned in a real deployment): one project, its base image pinned by id,\n# its review read from code review with the builder's own account.\n${stringify({
      version: 1,
      builderId: 'https://airlock.invalid/trusted-builder/demo',
      registry: REGISTRY,
      embargoRegistry: EMBARGO_REGISTRY,
      reviewSystems: { gerrit: { kind: 'gerrit', url: review.gerrit.url, credentials: 'airlock/gerrit-reader' } },
      projects: [
        {
          name: PROJECT,
          url: review.gerrit.gitUrl(PROJECT),
          protectedBranches: ['master'],
          image: IMAGE,
          review: { system: 'gerrit', since: review.initial, require: [{ label: 'Code-Review', value: 2 }], selfApproval: false },
        },
      ],
      baseImages: [
        { name: BASE_IMAGE, digest: baseId },
        { name: ENV_BASE_IMAGE, digest: envBaseId },
      ],
      // Where the builder fetches the project's locked dependencies from (docs/dependencies.md).
      dependencies: { npmRegistry: 'https://registry.npmjs.org/', debianMirrors: ['http://deb.debian.org/debian'], debianKeyring: '/usr/share/keyrings/debian-archive-keyring.gpg' },
    })}`,
  );
  writeFileSync(
    l.builderConfig,
    stringify({
      version: 1,
      listen: { host: '127.0.0.1', port: 0 },
      dataDir: l.builderData,
      runnerStateDir: stateDir,
      policies: { promotion, secrets: join(REPO_ROOT, 'policies', 'secrets.yaml'), securityTeam: team ? join(root, 'security-team', 'keys') : join(REPO_ROOT, 'policies', 'security-team') },
      secrets: { kind: 'file', dir: secrets },
    }),
  );
  return { ...l, fingerprint: key.fingerprint, registry: { host: REGISTRY, ...consumerLogin }, dashboard, ...(team ? { securityTeam: team } : {}) };
}

/** The CI's config: the project in code review, its own data dir, and where its hints go. */
export function writeCiConfig(l: DemoLayout, builderUrl: string, review: CodeReview): void {
  writeFileSync(
    l.ciConfig,
    stringify({
      version: 1,
      listen: { host: '127.0.0.1', port: 0 },
      dataDir: join(l.root, 'ci', 'data'),
      runnerStateDir: l.stateDir,
      slots: 2,
      imageGcEveryMs: 0,
      projects: [{ name: PROJECT, url: review.gerrit.gitUrl(PROJECT), branches: ['master'] }],
      artifactStore: { kind: 'fs', root: join(l.root, 'ci', 'artifacts') },
      hints: { url: builderUrl, secretFile: join(l.root, 'ci', 'hint.secret') },
      review: { kind: 'gerrit', url: review.gerrit.url, credentialsFile: join(l.root, 'ci', 'gerrit.json') },
      webhooks: { gerritSecretFile: join(l.root, 'ci', 'hook.secret') },
    }),
  );
}

/** A registry login the bootstrap wrote (`<state>/<rel>`, 0600: registry/credentials.json, registry/consumer.json, registry-private/builder.json). */
function registryCredentials(stateDir: string, rel: string): { username: string; password: string } {
  const file = join(stateDir, rel);
  let value: { username?: unknown; password?: unknown };
  try {
    value = JSON.parse(readFileSync(file, 'utf8')) as typeof value;
  } catch (e) {
    throw new Error(`cannot read the registry credentials ${file} (${(e as NodeJS.ErrnoException).code ?? (e as Error).message}): run scripts/bootstrap.sh (as root) to write it`);
  }
  if (typeof value.username !== 'string' || typeof value.password !== 'string') throw new Error(`${file}: expected {"username", "password"}`);
  return { username: value.username, password: value.password };
}
