/**
 * The trusted builder's composition root: the only place its concrete adapters meet (dockerode,
 * git, the SecretStore, the registry, fastify). `airlock builder serve`, the tests, the demo and
 * the benchmark start it through `startBuilderService`. It shares no process, database or file
 * with the untrusted CI: its own config, data dir, port and logger.
 *
 * At start it reads its own secrets (the hint HMAC key, the registry credentials, the signing
 * key, the read-only credentials of each review system the promotion policy names) from the
 * SecretStore, each read an audit record naming the path (never the value), and refuses to start
 * when one is missing or the signing key is not one gpg and skopeo accept.
 *
 * The embargo lane (trusted-builder/embargo/) is on when the secret at `builder.embargoKey` exists:
 * its key, the security team (`policies.securityTeam`) and its store (`<dataDir>/embargo/`) are then
 * loaded and checked, and any problem stops the start. The lane pushes patched images only to a
 * registry of its own (the promotion policy's `embargoRegistry`, the builder's login there at
 * `builder.embargoRegistry`): with the key present and either missing, the builder does not start
 * (the lane would otherwise have nowhere safe to push). With no such secret the lane is off (an
 * audit record says so) and `POST /v1/embargo` answers 404.
 *
 * The builder's page (trusted-builder/dashboard/) and its Prometheus metrics (`/metrics`, fed by the
 * promotion store) are on when the secret at `builder.dashboard` exists (`{username,
 * passwordBcrypt}`; a malformed one stops the start); otherwise `/ui` and `/metrics` are 404.
 */
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type Docker from 'dockerode';
import type { FastifyInstance } from 'fastify';
import { createDocker } from '#shared/docker/client.js';
import { InvalidInputError, NotFoundError, PolicyInvalidError, RegistryAuthFailedError, type Issue } from '#shared/errors.js';
import { createLogger, type Logger } from '#shared/logging.js';
import { loadJobPolicy } from '#shared/policy/job-policy.js';
import { JobRunner } from '#shared/runner/job-runner.js';
import { buildBuilderApi } from './api/app.js';
import { createBuilderMetrics } from './api/metrics.js';
import { AuditLog } from './audit/audit-log.js';
import type { BuilderConfig } from './config.js';
import { AuditDigest } from './dashboard/audit-digest.js';
import { BasicAuth, parseDashboardLogin } from './dashboard/basic-auth.js';
import { builderSummary } from './dashboard/summary.js';
import { openEmbargoLane, type EmbargoLane } from './embargo/lane.js';
import type { EmbargoStore } from './embargo/store.js';
import { loadPromotionPolicy, projectPolicy, type LoadedPromotionPolicy } from './policy/promotion.js';
import { loadSecretsPolicy } from './policy/secrets.js';
import { Poller } from './promote/poller.js';
import { Promoter } from './promote/promoter.js';
import { WebhookNotifier } from './notify/webhook.js';
import { PromotionStore } from './promote/promotion-store.js';
import { checkRegistryLogin, type PushOptions, type RegistryCredentials } from './publish/registry.js';
import { FileSecretStore, type SecretStore, type SecretValue } from './secrets/secret-store.js';
import { VaultSecretStore } from './secrets/vault-store.js';
import { loadSigningKey } from './sign/signer.js';
import { SourceVerifier } from './verify/source.js';
import { GerritReader } from './verify/gerrit-reader.js';
import type { ReviewReader } from './verify/review.js';

export interface BuilderService {
  readonly app: FastifyInstance;
  readonly promoter: Promoter;
  readonly audit: AuditLog;
  readonly auditFile: string;
  readonly lookasideDir: string;
  /** The signing key's public half (what consumers put in their policy). */
  readonly publicKey: string;
  /** The embargo store when the lane is on (its `publicKey` is what the security team encrypts to). */
  readonly embargo?: EmbargoStore;
  /** The lane itself when it is on (`idle()`: its warnings sent). */
  readonly embargoLane?: EmbargoLane;
  listen(): Promise<string>;
  close(): Promise<void>;
}

export function builderPaths(dataDir: string): { audit: string; git: string; work: string; lookaside: string; pollState: string; promotions: string; embargo: string; privateLookaside: string } {
  return {
    embargo: join(dataDir, 'embargo'),
    audit: join(dataDir, 'audit.jsonl'),
    git: join(dataDir, 'git'),
    work: join(dataDir, 'work'),
    lookaside: join(dataDir, 'lookaside'),
    privateLookaside: join(dataDir, 'private-lookaside'),
    pollState: join(dataDir, 'poll-state.json'),
    promotions: join(dataDir, 'promotions.sqlite'),
  };
}

/** The SecretStore the config names (a directory of 0600 files, or Vault). */
export function openSecretStore(config: Readonly<BuilderConfig>, logger: Logger): SecretStore {
  return config.secrets.kind === 'file'
    ? new FileSecretStore(config.secrets.dir)
    : new VaultSecretStore({ endpoint: config.secrets.address, mount: config.secrets.mount, roleIdFile: config.secrets.roleIdFile, secretIdFile: config.secrets.secretIdFile, logger });
}

export async function startBuilderService(
  config: Readonly<BuilderConfig>,
  opts: { logger?: Logger; docker?: Docker; secrets?: SecretStore; pushOptions?: PushOptions; workspacePool?: number } = {},
): Promise<BuilderService> {
  const logger = opts.logger ?? createLogger({ name: 'airlock-builder' });
  const paths = builderPaths(config.dataDir);
  const docker = opts.docker ?? createDocker();
  const cleanups: (() => unknown)[] = [];
  try {
    const policy = loadPromotionPolicy(config.policies.promotion);
    const secretsPolicy = loadSecretsPolicy(config.policies.secrets);
    const jobPolicy = loadJobPolicy(config.policies.job);
    const secrets = opts.secrets ?? openSecretStore(config, logger);
    cleanups.push(() => secrets.close());
    const audit = await AuditLog.open(paths.audit);
    cleanups.push(() => audit.close());

    const read = async (path: string, fields: readonly string[]): Promise<SecretValue> => {
      const v = await secrets.read(path);
      await audit.append('secret-read', { path, store: secrets.kind, purpose: 'builder' });
      const missing = fields.filter((f) => typeof v[f] !== 'string' || v[f] === '');
      if (missing.length > 0) throw new InvalidInputError(missing.map((f) => ({ file: `secret ${path}`, path: f, message: 'missing', severity: 'error' as const })));
      return v;
    };
    const hint = await read(secretsPolicy.builder.hintSecret, ['secret']);
    const registry = await read(secretsPolicy.builder.registry, ['username', 'password']);
    const key = await read(secretsPolicy.builder.signingKey, ['armored']);
    const signingKey = await loadSigningKey(key.armored!, key.passphrase, { source: `secret ${secretsPolicy.builder.signingKey}` });
    let lane: EmbargoLane | undefined;
    const embargoPath = secretsPolicy.builder.embargoKey;
    const absent = (e: unknown): Promise<undefined> => (e instanceof NotFoundError ? Promise.resolve(undefined) : Promise.reject(e));
    const embargoKey = embargoPath ? await read(embargoPath, ['armored']).catch(absent) : undefined;
    const embargoRegistry = embargoPath && embargoKey ? await embargoRegistryLogin(policy, config.policies, secretsPolicy.builder.embargoRegistry, embargoPath, read) : undefined;
    if (embargoPath && embargoKey) {
      const secret = { armored: embargoKey.armored!, ...(embargoKey.passphrase ? { passphrase: embargoKey.passphrase } : {}) };
      const knownProject = (p: string): boolean => projectPolicy(policy.policy, p) !== undefined;
      lane = await openEmbargoLane({ secret, source: `secret ${embargoPath}`, teamDir: config.policies.securityTeam, dir: paths.embargo, audit, logger, knownProject });
      const opened = lane;
      cleanups.push(() => opened.close());
    } else {
      await audit.append('embargo', { event: 'lane-off', ...(embargoPath ? { path: embargoPath } : {}) });
      logger.info({ path: embargoPath ?? null }, 'no embargo key: the embargo lane is off');
    }

    // Log in to every registry the builder pushes to now, not at the first push (docs/deploy.md).
    await registryLoginAtStart(policy.policy.registry, { username: registry.username!, password: registry.password! }, `secret ${secretsPolicy.builder.registry} (${secrets.kind} store)`, logger);
    if (embargoRegistry && policy.policy.embargoRegistry) {
      await registryLoginAtStart(policy.policy.embargoRegistry, embargoRegistry, `secret ${secretsPolicy.builder.embargoRegistry} (${secrets.kind} store)`, logger);
      await embargoRegistryIsApart(policy.policy.embargoRegistry, policy.policy.registry, { username: registry.username!, password: registry.password! }, config.policies.promotion, logger);
    }

    const dashboardPath = secretsPolicy.builder.dashboard;
    const dashboardSecret = dashboardPath ? await read(dashboardPath, ['username', 'passwordBcrypt']).catch(absent) : undefined;
    const dashboardLogin = dashboardSecret && parseDashboardLogin(dashboardSecret, `secret ${dashboardPath}`);
    if (!dashboardLogin) logger.info({ path: dashboardPath ?? null }, 'no login for the builder page: /ui and /metrics are off');

    // The review systems the policy names, each read with the builder's own read-only account.
    const reviewers = new Map<string, ReviewReader>();
    for (const [name, sys] of Object.entries(policy.policy.reviewSystems)) {
      const cred = await read(sys.credentials, ['username', 'password']);
      reviewers.set(name, new GerritReader({ url: sys.url, credentials: { username: cred.username!, password: cred.password! } }));
    }

    const runner = await JobRunner.create({ docker, policy: jobPolicy, stateDir: config.runnerStateDir, logger, workspacePool: opts.workspacePool ?? 0 });
    cleanups.push(() => runner.close());
    const verifier = new SourceVerifier(paths.git);
    const store = new PromotionStore(paths.promotions);
    cleanups.push(() => store.close());
    // Watching from the start: promotions resumed below are timed too.
    const metrics = createBuilderMetrics({ queued: () => store.count('queued'), running: () => store.count('running') });
    cleanups.push(store.watch(metrics.onPromotion));
    // What a promotion that a crash interrupted left in its work dir (sources, image exports, an
    // embargo lane's patched tree) is removed before anything runs again.
    await rm(paths.work, { recursive: true, force: true });
    await mkdir(paths.work, { recursive: true, mode: 0o700 });
    // One notifier for the promoter's warnings (breaks, automatic retirements) and the lane's (a member's retirement).
    const notifier = lane && config.embargoWebhook ? new WebhookNotifier({ url: config.embargoWebhook, signingKey: lane }) : undefined;
    lane?.notifyWith(notifier);
    const promoter = new Promoter({
      docker,
      runner,
      verifier,
      policy,
      secretsPolicy,
      secrets,
      jobPolicy,
      audit,
      signingKey,
      registryCredentials: { username: registry.username!, password: registry.password! },
      lookasideDir: paths.lookaside,
      workDir: paths.work,
      logger,
      store,
      reviewers,
      ...(opts.pushOptions ? { pushOptions: opts.pushOptions } : {}),
      ...(lane
        ? {
            embargo: lane.store,
            privateLookasideDir: paths.privateLookaside,
            ...(embargoRegistry ? { embargoRegistryCredentials: embargoRegistry } : {}),
            ...(notifier ? { notifier } : {}),
          }
        : {}),
    });
    cleanups.push(() => promoter.drain());
    lane?.onSubmitted((project) => promoter.buildPrivately(project));
    const resumed = promoter.resume();
    if (resumed > 0) logger.warn({ promotions: resumed }, 'promotions accepted before the last stop are run now');
    // The page shows nothing of the embargo lane: not the reads of its key or of its registry's login.
    const digest = new AuditDigest(paths.audit, { hiddenSecretPaths: [embargoPath, secretsPolicy.builder.embargoRegistry].filter((x): x is string => x !== undefined) });
    const dashboard = dashboardLogin && {
      auth: new BasicAuth(dashboardLogin),
      summary: () => builderSummary({ promotions: store, audit: digest, lookasideDir: paths.lookaside }),
      metrics: metrics.registry,
    };
    const app = await buildBuilderApi({
      logger,
      audit,
      hintSecret: Buffer.from(hint.secret!, 'utf8'),
      promoter,
      lookasideDir: paths.lookaside,
      ...(lane ? { embargo: lane } : {}),
      ...(dashboard ? { dashboard } : {}),
    });
    cleanups.push(() => app.close());
    if (config.pollEveryMs > 0) {
      const poller = new Poller({ projects: policy.policy.projects, verifier, sink: promoter, audit, stateFile: paths.pollState, everyMs: config.pollEveryMs, logger });
      await poller.start();
      cleanups.push(() => poller.close());
    }
    return {
      app,
      promoter,
      audit,
      auditFile: paths.audit,
      lookasideDir: paths.lookaside,
      publicKey: signingKey.publicArmored,
      ...(lane ? { embargo: lane.store, embargoLane: lane } : {}),
      async listen() {
        return app.listen({ host: config.listen.host, port: config.listen.port });
      },
      async close() {
        for (const fn of cleanups.splice(0).reverse()) await Promise.resolve(fn()).catch((e: unknown) => logger.warn({ err: e }, 'close failed'));
      },
    };
  } catch (e) {
    for (const fn of cleanups.reverse()) await Promise.resolve(fn()).catch(() => {});
    throw e;
  }
}

/** How long the start waits for a registry's answer to its login check. */
const LOGIN_CHECK_TIMEOUT_MS = 10_000;

/**
 * `GET /v2/` with the builder's login, once, at start. A refusal (401/403) stops the start: every
 * push would fail the same way, and only an operator can fix it. A registry that does not answer
 * is a warning: pushes retry with backoff, and a promotion that failed meanwhile can be asked for
 * again (`airlock builder promote`).
 */
async function registryLoginAtStart(host: string, credentials: RegistryCredentials, source: string, logger: Logger): Promise<void> {
  let r: Awaited<ReturnType<typeof checkRegistryLogin>>;
  try {
    r = await checkRegistryLogin(host, credentials, { requestTimeoutMs: LOGIN_CHECK_TIMEOUT_MS, retry: { attempts: 1 } });
  } catch (e) {
    if (e instanceof RegistryAuthFailedError) {
      throw new RegistryAuthFailedError(
        `${e.message}: the builder's login is read from ${source}; put there the {username, password} that registry accepts (or add that user to the registry's htpasswd), then start the builder again (docs/deploy.md "When something is wrong")`,
        { cause: e },
      );
    }
    throw e;
  }
  if (r === 'ok') logger.info({ registry: host }, 'registry login checked');
  else logger.warn({ registry: host, reason: r.unreachable }, `registry ${host} does not answer GET /v2/ (${r.unreachable}): starting anyway; pushes retry, and a promotion that failed meanwhile can be asked for again with airlock builder promote`);
}

/**
 * The embargo lane's registry must refuse the builder's login to the public one. If it takes it, it
 * is the same registry under another name (`localhost:5000` and `127.0.0.1:5000`, a DNS alias) or it
 * shares the public one's logins, and consumers' logins could read patched images: the start stops.
 * A registry that does not answer cannot tell, and is a warning like the login check's.
 */
async function embargoRegistryIsApart(embargo: string, pub: string, publicLogin: RegistryCredentials, file: string, logger: Logger): Promise<void> {
  let r: Awaited<ReturnType<typeof checkRegistryLogin>>;
  try {
    r = await checkRegistryLogin(embargo, publicLogin, { requestTimeoutMs: LOGIN_CHECK_TIMEOUT_MS, retry: { attempts: 1 } });
  } catch (e) {
    if (e instanceof RegistryAuthFailedError) return; // refused: a registry apart, as it must be
    throw e;
  }
  if (r === 'ok') {
    throw new PolicyInvalidError([
      {
        file,
        path: 'embargoRegistry',
        severity: 'error',
        message: `the embargo lane's registry ${embargo} accepts the builder's login to the public registry ${pub}: it is the same registry under another name, or shares its logins, so a consumer's login could read embargoed images; give embargoRegistry a registry of its own whose htpasswd holds only the builder's and the security team's logins (docs/security-team.md)`,
      },
    ]);
  }
  logger.warn({ registry: embargo, reason: r.unreachable }, `cannot check that ${embargo} refuses the public registry's login: it does not answer`);
}

/**
 * The builder's login to the embargo lane's own registry, when the lane is on: every problem at
 * once (the policy's `embargoRegistry`, the secrets policy's path, the secret itself), each saying
 * why — without them the lane's patched images would have nowhere consumers cannot read.
 */
async function embargoRegistryLogin(
  policy: LoadedPromotionPolicy,
  files: { promotion: string; secrets: string },
  secretPath: string | undefined,
  embargoKeyPath: string,
  read: (path: string, fields: readonly string[]) => Promise<SecretValue>,
): Promise<RegistryCredentials> {
  const why = `the embargo key (secret ${embargoKeyPath}) turns the embargo lane on, and its patched images go only to a registry of its own that no consumer or public-tier login can read (docs/security-team.md); add it, or remove the embargo key to turn the lane off`;
  const issues: Issue[] = [];
  if (!policy.policy.embargoRegistry) issues.push({ file: files.promotion, path: 'embargoRegistry', message: `missing (host:port of the embargo lane's registry): ${why}`, severity: 'error' });
  let login: SecretValue | undefined;
  if (!secretPath) issues.push({ file: files.secrets, path: 'builder.embargoRegistry', message: `missing (the secret path of the builder's login to the embargo lane's registry, e.g. airlock/embargo-registry): ${why}`, severity: 'error' });
  else {
    login = await read(secretPath, ['username', 'password']).catch((e: unknown) => {
      if (!(e instanceof NotFoundError)) throw e;
      issues.push({ file: `secret ${secretPath}`, path: '', message: `missing ({username, password}: the builder's login to the embargo lane's registry): ${why}`, severity: 'error' });
      return undefined;
    });
  }
  if (issues.length > 0 || !login) throw new PolicyInvalidError(issues);
  return { username: login.username!, password: login.password! };
}
