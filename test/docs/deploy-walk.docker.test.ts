/**
 * docs/deploy.md, walked end to end on this one machine, as literally as it can be: the example
 * configs of examples/ placed where the guide puts them (under a temporary root), changed only as
 * an operator changes them for their own site (every change is a row of SITE below), the secrets
 * made and put into Vault as step 2 says, both services started with the real CLI, a change of the
 * operator's own project through check and gate in code review, its promotion, and the real skopeo
 * under examples/consumer's policy: the signed image copies, an unsigned one is refused.
 *
 * The parts that stand in for the operator's site are the ones the other tests use: the Gerrit
 * stand-in (test/support/gerrit-rig.ts), the Vault stand-in (test/support/vault-double.ts), two
 * real docker-registry instances (test/support/registry.ts) and a real s3rver (test/support/s3.ts).
 * Anything else this test had to change to make the walk work would be a defect of the guide or
 * the examples: fix those instead of adding a row that is no site's choice.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import { createDocker } from '#shared/docker/client.js';
import { startService, logTail, type ServiceProcess } from '../../demo/services.js';
import { firstErrorLine } from '../../demo/verify-image.js';
import { LABEL_ENV_PROJECT } from '../../untrusted-ci/environments/image-cache.js';
import { STATE_DIR, BOOKWORM, BUSYBOX } from '../support/docker.js';
import { BUILDER_ACCOUNT, CI_ACCOUNT, filesOf, startGerrit, type GerritRig } from '../support/gerrit-rig.js';
import { freePort, startRegistry, type TestRegistry } from '../support/registry.js';
import { startS3, type TestS3 } from '../support/s3.js';
import { sharedPostgres } from '../support/postgres-shared.js';
import { until } from '../support/until.js';
import { VaultDouble, type Capability, type Policy } from '../support/vault-double.js';

const run = promisify(execFile);
const ROOT = fileURLToPath(new URL('../../', import.meta.url)).replace(/\/$/, '');
const EXAMPLES = join(ROOT, 'examples');
const AIRLOCK = join(ROOT, 'bin', 'airlock.js');
const TSX = join(ROOT, 'node_modules', '.bin', 'tsx');
/** The operator's own project, as examples/ names it. */
const PROJECT = 'team/app';
const BRANCH = 'main';
const WALK_TIMEOUT_MS = 6 * 60_000; // about 20-60 s on an idle 2-core machine

/** One change an operator makes to a shipped example for their own site. */
interface Row {
  file: 'ci.yaml' | 'builder.yaml' | 'promotion.yaml' | 'policy.json' | 'registries.d/airlock.yaml';
  /** Exact text of the example (it must be there: an example that changes fails here, by name). */
  from: string;
  to: string;
  why: string;
}

/** Where the guide's host paths go on this machine: /etc/airlock and the data dirs under the temporary root, /opt/airlock is this checkout. */
function placement(root: string): Row[] {
  const rows: Row[] = [];
  for (const file of ['ci.yaml', 'builder.yaml'] as const) {
    rows.push({ file, from: '/etc/airlock', to: `${root}/etc/airlock`, why: 'the config directory, under the temporary root' });
    rows.push({ file, from: `dataDir: /var/lib/airlock/${file === 'ci.yaml' ? 'ci' : 'builder'}`, to: `dataDir: ${root}/var/lib/airlock/${file === 'ci.yaml' ? 'ci' : 'builder'}`, why: 'a fresh data dir' });
  }
  rows.push({ file: 'ci.yaml', from: '/opt/airlock', to: ROOT, why: 'the install directory: this checkout' });
  // runnerStateDir stays /var/lib/airlock: the bootstrap's directory on this machine (AIRLOCK_STATE_DIR in tests).
  if (STATE_DIR !== '/var/lib/airlock') for (const file of ['ci.yaml', 'builder.yaml'] as const) rows.push({ file, from: 'runnerStateDir: /var/lib/airlock', to: `runnerStateDir: ${STATE_DIR}`, why: "the bootstrap's state directory" });
  return rows;
}

/** The walk is one host: no executor hosts, so its jobs run on the CI's engine (before placement, which rewrites the paths). */
function oneHost(): Row[] {
  const ci = readFileSync(join(EXAMPLES, 'ci', 'ci.yaml'), 'utf8');
  const hosts = /^ {2}hosts:.*\n(?: {4}- .*\n)+/m.exec(ci)?.[0] ?? 'executors.hosts, as a block list';
  return [{ file: 'ci.yaml', from: hosts, to: '  hosts: []\n', why: 'no executor hosts: the jobs run on the CI host (docs/deploy.md "Executor hosts" is optional)' }];
}

interface Site {
  gerrit: GerritRig;
  vault: VaultDouble;
  registry: TestRegistry;
  embargoRegistry: TestRegistry;
  s3: TestS3;
  ciPort: number;
  builderPort: number;
  baseImageId: string;
  /** The sample project's CI environment is built on bookworm: pinned too. */
  envImageId: string;
  publicKey: string;
  /** The protected branch's tip when the operator adopts airlock. */
  since: string;
}

/** The site-specific changes, one table: every edit the walk makes to examples/, and why an operator makes it. */
function site(s: Site): Row[] {
  const review = s.gerrit.gerrit.url;
  const projectUrl = s.gerrit.gerrit.gitUrl(PROJECT);
  const builderUrl = `http://127.0.0.1:${s.builderPort}`;
  const ciUrl = `http://127.0.0.1:${s.ciPort}`;
  return [
    // ci.yaml (docs/deploy.md step 3: "the project list, the review URL, hints.url, publicUrl and the artifact store")
    { file: 'ci.yaml', from: 'host: 0.0.0.0', to: 'host: 127.0.0.1', why: 'listen on loopback: one host' },
    { file: 'ci.yaml', from: 'port: 8080', to: `port: ${s.ciPort}`, why: 'a free port' },
    { file: 'ci.yaml', from: 'url: https://review.example.org/team/app', to: `url: ${projectUrl}`, why: "the project's URL in code review" },
    { file: 'ci.yaml', from: 'url: https://review.example.org\n', to: `url: ${review}\n`, why: 'the review URL' },
    { file: 'ci.yaml', from: 'endpoint: https://s3.example.org', to: `endpoint: ${s.s3.endpoint}`, why: 'the artifact store: S3 here' },
    { file: 'ci.yaml', from: 'url: https://builder.internal.example.org:8090', to: `url: ${builderUrl}`, why: "hints.url: the builder's base URL" },
    { file: 'ci.yaml', from: 'publicUrl: https://ci.example.org', to: `publicUrl: ${ciUrl}`, why: "the CI's own address" },
    // builder.yaml (step 4)
    { file: 'builder.yaml', from: 'host: 0.0.0.0', to: 'host: 127.0.0.1', why: 'listen on loopback: one host' },
    { file: 'builder.yaml', from: 'port: 8090', to: `port: ${s.builderPort}`, why: 'a free port' },
    { file: 'builder.yaml', from: 'address: https://vault.internal.example.org:8200', to: `address: ${s.vault.url}`, why: "Vault's address" },
    // promotion.yaml (step 4: "your registry, your project (its canonical URL, protected branches, image name), its review rule and the pinned base images")
    { file: 'promotion.yaml', from: 'registry: registry.internal.example.org:5000', to: `registry: ${s.registry.url}`, why: 'the registry' },
    { file: 'promotion.yaml', from: 'embargoRegistry: embargo-registry.internal.example.org:5000', to: `embargoRegistry: ${s.embargoRegistry.url}`, why: "the embargo lane's registry" },
    { file: 'promotion.yaml', from: 'url: https://review.example.org/team/app', to: `url: ${projectUrl}`, why: "the project's canonical URL" },
    { file: 'promotion.yaml', from: 'url: https://review.example.org\n', to: `url: ${review}\n`, why: "code review's URL" },
    { file: 'promotion.yaml', from: 'since: "0000000000000000000000000000000000000000"', to: `since: "${s.since}"`, why: "review starts after the branch's tip when airlock is adopted (git ls-remote)" },
    {
      file: 'promotion.yaml',
      from: '{ name: airlock/base:bookworm, digest: "sha256:0000000000000000000000000000000000000000000000000000000000000000" }',
      to: `{ name: ${BOOKWORM}, digest: "${s.envImageId}" }\n  - { name: ${BUSYBOX}, digest: "${s.baseImageId}" }`,
      why: "the base images this project's Dockerfiles name (its CI environment's and its published image's), pinned to `docker image inspect`'s id",
    },
    // the consumer's files (step 6: "the registry's host:port ... the lookaside is the builder's base URL plus /lookaside")
    { file: 'policy.json', from: 'registry.internal.example.org:5000', to: s.registry.url, why: 'the registry' },
    { file: 'policy.json', from: '/etc/pki/containers/airlock-builder.pub.asc', to: s.publicKey, why: "where the builder's public key is installed" },
    { file: 'registries.d/airlock.yaml', from: 'registry.internal.example.org:5000', to: s.registry.url, why: 'the registry' },
    { file: 'registries.d/airlock.yaml', from: 'https://builder.internal.example.org:8090/lookaside', to: `${builderUrl}/lookaside`, why: "the builder's base URL plus /lookaside" },
  ];
}

/** Copies an example to `dest` with `rows` (those of its file) applied; every row's text must be in the example. */
function edit(src: string, dest: string, file: Row['file'], rows: Row[]): string {
  let text = readFileSync(src, 'utf8');
  for (const r of rows.filter((x) => x.file === file)) {
    expect(text.includes(r.from), `${file}: the example no longer says "${r.from}" (${r.why})`).toBe(true);
    text = text.replaceAll(r.from, r.to);
  }
  mkdirSync(dirname(dest), { recursive: true, mode: 0o700 });
  writeFileSync(dest, text, { mode: 0o600 });
  return dest;
}

/** `head -c 32 /dev/urandom | base64 > FILE` under `umask 077`. */
function randomSecretFile(file: string): string {
  const value = randomBytes(32).toString('base64');
  writeFileSync(file, `${value}\n`, { mode: 0o600 });
  return value;
}

/** examples/builder/vault/airlock-builder.hcl in the Vault stand-in's policy form (its `path "…" { capabilities = [...] }` blocks). */
function hclPolicy(file: string): Policy {
  const text = readFileSync(file, 'utf8').replace(/^\s*#.*$/gm, '');
  const policy: Record<string, Capability[]> = {};
  for (const m of text.matchAll(/path\s+"([^"]+)"\s*\{\s*capabilities\s*=\s*\[([^\]]*)\]\s*\}/g)) {
    policy[m[1]!] = [...m[2]!.matchAll(/"([a-z]+)"/g)].map((c) => c[1] as Capability);
  }
  expect(Object.keys(policy).length, `${file}: no path rule`).toBeGreaterThan(0);
  return policy;
}

const cleanups: (() => Promise<unknown>)[] = [];
afterAll(async () => {
  for (const c of cleanups.reverse()) await c().catch((e: unknown) => console.error(`deploy walk: cleanup: ${(e as Error).message}`));
});

describe('docs/deploy.md, walked end to end with examples/', () => {
  it('gives the operator a signed image of their own project that skopeo verifies, and refuses an unsigned one', async () => {
    const root = mkdtempSync(join(tmpdir(), 'airlock-deploy-walk-'));
    cleanups.push(async () => rmSync(root, { recursive: true, force: true }));
    const docker = createDocker();
    const imagesBefore = new Set((await docker.listImages()).map((i) => i.Id));
    cleanups.push(async () => {
      for (const img of await docker.listImages()) {
        if (imagesBefore.has(img.Id)) continue;
        const ours = img.Labels?.[LABEL_ENV_PROJECT] === PROJECT || (img.RepoTags ?? []).some((t) => /^airlock-trusted(-env)?\/team\/app:/.test(t));
        if (ours) await docker.getImage(img.Id).remove().catch(() => undefined);
      }
    });

    // The operator's site: code review with their project, Vault, the registries, S3.
    const gerrit = await startGerrit({ dir: join(root, 'review') });
    cleanups.push(() => gerrit.gerrit.close());
    const template = join(ROOT, 'demo', 'sample-project');
    const initial = gerrit.gerrit.createProject(PROJECT, filesOf(template, (p) => p.endsWith('report.txt')), { branch: BRANCH });
    const vault = await VaultDouble.start();
    cleanups.push(() => vault.close());
    const registry = await startRegistry({ username: 'airlock-builder', others: ['consumer'] });
    cleanups.push(() => registry.stop());
    const embargoRegistry = await startRegistry({ username: 'airlock-builder', others: ['security-team'] });
    cleanups.push(() => embargoRegistry.stop());
    const s3 = await startS3('airlock-ci-logs');
    cleanups.push(() => s3.stop());

    const etcCi = join(root, 'etc/airlock/ci');
    const etcBuilder = join(root, 'etc/airlock/builder');
    const work = join(root, 'operator'); // the operator's working directory (hint.secret, the key's DIR)
    mkdirSync(work, { recursive: true, mode: 0o700 });

    // Step 1: pin the base image (docker image inspect --format '{{.Id}}').
    const baseImageId = (await run('docker', ['image', 'inspect', '--format', '{{.Id}}', BUSYBOX])).stdout.trim();
    expect(baseImageId).toMatch(/^sha256:[0-9a-f]{64}$/);
    const envImageId = (await run('docker', ['image', 'inspect', '--format', '{{.Id}}', BOOKWORM])).stdout.trim();

    // Step 2: secrets. The key with make-signing-key.ts, the hint key with /dev/urandom.
    const keyDir = join(work, 'key');
    await run(TSX, ['scripts/make-signing-key.ts', '--out', keyDir], { cwd: ROOT, env: { ...process.env, AIRLOCK_SIGNING_KEY_PASSPHRASE: randomBytes(16).toString('base64') } });
    const hintSecret = randomSecretFile(join(work, 'hint.secret'));
    // vault policy write / auth enable approle / write role / read role-id / write secret-id
    const approle = vault.addRole('airlock-builder', { policy: hclPolicy(join(EXAMPLES, 'builder', 'vault', 'airlock-builder.hcl')), tokenTtl: 3600, tokenMaxTtl: 86400 });
    mkdirSync(etcBuilder, { recursive: true, mode: 0o700 });
    writeFileSync(join(etcBuilder, 'vault-role-id'), approle.roleId, { mode: 0o600 });
    writeFileSync(join(etcBuilder, 'vault-secret-id'), approle.secretId, { mode: 0o600 });
    // vault kv put secret/airlock/…
    await vault.put('airlock/signing-key', JSON.parse(readFileSync(join(keyDir, 'signing-key.json'), 'utf8')) as Record<string, unknown>);
    rmSync(join(keyDir, 'signing-key.json'));
    rmSync(join(keyDir, 'signing-key.asc')); // "then delete DIR's private files"
    await vault.put('airlock/registry', { username: registry.username, password: registry.password });
    await vault.put('airlock/hint-hmac', { secret: readFileSync(join(work, 'hint.secret'), 'utf8').trim() });
    await vault.put('airlock/gerrit-reader', { username: BUILDER_ACCOUNT, password: gerrit.passwords[BUILDER_ACCOUNT]! });

    // The site's table, now that every address is known.
    const publicKey = join(root, 'etc/pki/containers/airlock-builder.pub.asc');
    mkdirSync(dirname(publicKey), { recursive: true });
    cpSync(join(keyDir, 'signing-key.pub.asc'), publicKey);
    const [ciPort, builderPort] = [await freePort(), await freePort()];
    const since = (await run('git', ['ls-remote', gerrit.gerrit.gitUrl(PROJECT), `refs/heads/${BRANCH}`])).stdout.split('\t')[0]!;
    expect(since).toBe(initial);
    const rows = [...oneHost(), ...placement(root), ...site({ gerrit, vault, registry, embargoRegistry, s3, ciPort, builderPort, baseImageId, envImageId, publicKey, since })];

    // Step 3: the CI host's files.
    const ciYaml = edit(join(EXAMPLES, 'ci', 'ci.yaml'), join(etcCi, 'ci.yaml'), 'ci.yaml', rows);
    const hookSecret = randomSecretFile(join(etcCi, 'gerrit-hook.secret'));
    randomSecretFile(join(etcCi, 'api.token'));
    randomSecretFile(join(etcCi, 'cancel.token'));
    cpSync(join(work, 'hint.secret'), join(etcCi, 'hint.secret'));
    chmodSync(join(etcCi, 'hint.secret'), 0o600);
    writeFileSync(join(etcCi, 'gerrit.json'), `${JSON.stringify({ username: CI_ACCOUNT, password: gerrit.passwords[CI_ACCOUNT] })}\n`, { mode: 0o600 });
    writeFileSync(join(etcCi, 's3.json'), `${JSON.stringify({ accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey })}\n`, { mode: 0o600 });
    // createuser / createdb / the URL file: a database of its own on the run's PostgreSQL.
    writeFileSync(join(etcCi, 'database.url'), `${await (await sharedPostgres()).createDatabase()}\n`, { mode: 0o600 });
    expect(readFileSync(join(etcCi, 'hint.secret'), 'utf8').trim()).toBe(hintSecret);

    // Step 4: the builder host's files.
    const builderYaml = edit(join(EXAMPLES, 'builder', 'builder.yaml'), join(etcBuilder, 'builder.yaml'), 'builder.yaml', rows);
    edit(join(EXAMPLES, 'builder', 'policies', 'promotion.yaml'), join(etcBuilder, 'policies', 'promotion.yaml'), 'promotion.yaml', rows);
    for (const f of ['secrets.yaml', 'untrusted-job.yaml', 'security-team']) cpSync(join(ROOT, 'policies', f), join(etcBuilder, 'policies', f), { recursive: true });

    // Both services, builder first (the CI sends it hints), with the real CLI as systemd would start them.
    const stop = new AbortController();
    cleanups.push(async () => stop.abort());
    const services: ServiceProcess[] = [];
    cleanups.push(async () => {
      for (const s of [...services].reverse()) await s.stop();
    });
    const env = { AIRLOCK_LOG_LEVEL: 'info' };
    const builder = await startService({ name: 'trusted builder', args: ['builder', 'serve', '--config', builderYaml], logFile: join(root, 'builder.log'), env, signal: stop.signal });
    services.push(builder);
    expect(builder.url).toBe(`http://127.0.0.1:${builderPort}`);
    const ci = await startService({ name: 'CI', args: ['ci', 'serve', '--config', ciYaml], logFile: join(root, 'ci.log'), env, signal: stop.signal });
    services.push(ci);
    expect(ci.url).toBe(`http://127.0.0.1:${ciPort}`);
    const logs = (): string => services.map((s) => `\n--- the end of the ${s.name}'s log:\n${logTail(s.logFile)}`).join('');
    // Gerrit's webhook (docs/review.md): the secret of gerrit-hook.secret in the URL.
    gerrit.gerrit.addWebhook({ url: `${ci.url}/hooks/gerrit/${encodeURIComponent(hookSecret)}`, retryIntervalMs: 200 });

    // Step 5: upload a change; the CI checks it (Verified +1); approve it (Code-Review +2); the gate
    // votes +2 and asks for submit; code review merges; the builder publishes.
    const g = gerrit.gerrit;
    const greet = readFileSync(join(template, 'greet.sh'), 'utf8');
    const tests = readFileSync(join(template, 'tests', 'greet.sh'), 'utf8');
    expect(greet).toContain('greeting="Hello"');
    const change = g.upload({ project: PROJECT, branch: BRANCH, owner: 'ada', subject: 'greet: say Hi', files: { 'greet.sh': greet.replace('greeting="Hello"', 'greeting="Hi"'), 'tests/greet.sh': tests.replaceAll('"Hello,', '"Hi,') } });
    const verified = await until('the CI\'s Verified vote on the change', () => g.changeState(change.number).votes.Verified?.[CI_ACCOUNT], 180_000, 200).catch((e: Error) => {
      throw new Error(`${e.message}${logs()}`);
    });
    expect(verified, logs()).toBe(1);
    g.review(change.number, 'grace', { labels: { 'Code-Review': 2 }, message: 'Looks good to me, approved' });
    await until('code review to merge the change', () => (g.changeState(change.number).status === 'MERGED' ? true : undefined), 180_000, 200).catch((e: Error) => {
      throw new Error(`${e.message}: ${JSON.stringify(g.changeState(change.number))}${logs()}`);
    });
    const state = g.changeState(change.number);
    expect(state.votes.Verified?.[CI_ACCOUNT]).toBe(2);
    expect(state.submitter).toBe(CI_ACCOUNT);
    const commit = (await run('git', ['--git-dir', g.gitUrl(PROJECT), 'rev-parse', `refs/heads/${BRANCH}`])).stdout.trim();
    expect(commit).not.toBe(initial);

    // The builder's audit log (<dataDir>/audit.jsonl), and its chain checked with the guide's command.
    const audit = join(root, 'var/lib/airlock/builder', 'audit.jsonl');
    type Rec = { kind: string; commit?: string; reference?: string; reason?: unknown; step?: unknown };
    const records = (): Rec[] => (existsSync(audit) ? readFileSync(audit, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as Rec) : []);
    const end = await until('the builder to finish the promotion', () => records().find((r) => r.commit === commit && ['signed', 'promotion-failed', 'verify-refused'].includes(r.kind)), 240_000, 500).catch((e: Error) => {
      throw new Error(`${e.message}${logs()}`);
    });
    expect(end, JSON.stringify(records().filter((r) => r.commit === commit)) + logs()).toMatchObject({ kind: 'signed' });
    const pushed = records().find((r) => r.commit === commit && r.kind === 'pushed');
    const reference = `${registry.url}/team/app:${commit}`;
    expect(pushed?.reference).toBe(reference);
    const chain = await run(process.execPath, [AIRLOCK, 'builder', 'audit', 'verify', audit]);
    expect(chain.stdout).toMatch(/^ok: \d+ records, head [0-9a-f]+/);

    // Step 6: the consumer's files, and the real skopeo.
    const containers = join(root, 'etc/containers');
    const policy = edit(join(EXAMPLES, 'consumer', 'policy.json'), join(containers, 'policy.json'), 'policy.json', rows);
    const registriesD = dirname(edit(join(EXAMPLES, 'consumer', 'registries.d', 'airlock.yaml'), join(containers, 'registries.d', 'airlock.yaml'), 'registries.d/airlock.yaml', rows));
    // The guide's `skopeo copy docker://<registry>/team/app:<commit> dir:/tmp/app`, with the files
    // above in place of /etc/containers' and the consumers' login to the registry (docs/deploy.md,
    // "The hosts"); --src-tls-verify=false only because the test registry speaks plain HTTP.
    const consumer = registry.logins.consumer!;
    const authFile = join(root, 'consumer-auth.json');
    writeFileSync(authFile, JSON.stringify({ auths: { [registry.url]: { auth: Buffer.from(`${consumer.username}:${consumer.password}`).toString('base64') } } }), { mode: 0o600 });
    const copy = (ref: string): Promise<string | undefined> => {
      const out = mkdtempSync(join(root, 'app-'));
      return run('skopeo', ['--policy', policy, '--registries.d', registriesD, 'copy', '--quiet', '--src-tls-verify=false', '--src-authfile', authFile, `docker://${ref}`, `dir:${out}`], { timeout: 60_000 }).then(
        () => undefined,
        (e: unknown) => firstErrorLine(e),
      );
    };
    expect(await copy(reference), `skopeo copy docker://${reference}`).toBeUndefined();
    // An unsigned image in the same registry (what any of its logins can push) is refused.
    const unsigned = `${registry.url}/team/app:unsigned`;
    await run('skopeo', ['copy', '--quiet', '--insecure-policy', '--dest-tls-verify=false', '--dest-authfile', authFile, `docker-daemon:${BUSYBOX}`, `docker://${unsigned}`], { timeout: 60_000 });
    const refused = await copy(unsigned);
    expect(refused, 'an unsigned image was accepted').toBeDefined();
    expect(refused).toMatch(/signature/i);
  }, WALK_TIMEOUT_MS);
});
