/**
 * The embargo lane end to end, both tiers on real parts: changes are uploaded to the Gerrit
 * stand-in (test/support/gerrit-rig.ts) and approved there by a core reviewer; the public CI gates
 * them (real git, Docker, SQLite), votes Verified and has Gerrit submit them, and sends a promotion
 * hint per merge; the trusted builder, whose canonical repository is Gerrit's, checks the review
 * record itself with its own read-only Gerrit account, promotes each public commit and, privately,
 * the commit with the project's active embargoed patches on top (submitted over `POST /v1/embargo`
 * as a member's signed, encrypted request).
 *
 *   M1  public image + patched image (E1, the canary, and E2) in `private/<image>` of the embargo
 *       lane's own registry, signed; that registry refuses every login but the builder's and the
 *       team's (the consumer's, the builder's public push login, none), and the public registry
 *       holds no `private/` repository
 *   M2  changes the line E2 patches: E2 no longer applies → no patched image, E2's team warned
 *   M3  contains E2's change: E2 retires itself; patched image with E1 alone
 *   M4  with E3 (breaks the tests) active: the patched tests fail → warned, no patched image
 *
 * Then the canary scan: the canary patch's strings (its file name, content and message) are in
 * none of the public outputs — the CI's data dir (SQLite, logs), API answers and log lines; the
 * review system (Gerrit's repository, every event it raised: the CI's messages among them); the
 * builder's data dir (the embargo store is encrypted), its log lines, unauthenticated endpoints
 * and public lookaside; the public images' layers; any process's command line sampled throughout;
 * the engine's container and image names; the warnings sent — while the private image does carry
 * the fix (the scan's positive control).
 */
import { execFile, execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { promisify } from 'node:util';
import { gunzipSync } from 'node:zlib';
import * as openpgp from 'openpgp';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createDocker } from '#shared/docker/client.js';
import { makeRequest, openResponse } from '../../trusted-builder/embargo/request.js';
import type { EmbargoResult } from '../../trusted-builder/embargo/wire.js';
import { readSigningPublicKey, verifyArtifacts, writeVerifiedLookaside } from '../../cli/embargo-verify.js';
import { startBuilderService, type BuilderService } from '../../trusted-builder/service.js';
import { builderRig } from '../support/builder-rig.js';
import { startTestCi, type TestCi } from '../support/ci.js';
import { makeMember, writeTeam, type TestMember } from '../support/embargo.js';
import { BUILDER_ACCOUNT, CI_ACCOUNT, startGerrit, type GerritRig } from '../support/gerrit-rig.js';
import { startRegistry, type TestRegistry } from '../support/registry.js';

const run = promisify(execFile);
const STATE_DIR = process.env.AIRLOCK_STATE_DIR ?? '/var/lib/airlock';
const BASE = 'airlock/base:busybox';
const HINT_SECRET = 'hint-secret-for-the-embargo-lane-test';
const PROJECT = 'demo/app';
const TAG = randomBytes(4).toString('hex');
const CANARY = { file: `canary-file-${TAG}.c`, content: `CANARY_CONTENT_${TAG}_q8w7e6`, message: `CANARY-MESSAGE-${TAG}-heap-overflow` };
const CANARIES = Object.values(CANARY);

const CONFIG = `version: 1
environment: { image: ${BASE} }
jobs:
  unit:
    command: [sh, ./test.sh]
    pipelines: [check, gate]
publish:
  dockerfile: Dockerfile
`;

/** Every canary string found in `data`. */
const hits = (data: Buffer | string): string[] => CANARIES.filter((c) => (Buffer.isBuffer(data) ? data : Buffer.from(data)).includes(c));

/** Every file under `dir`, recursively. */
function files(dir: string): { path: string; data: Buffer }[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile())
    .map((e) => join(e.parentPath, e.name))
    .map((path) => ({ path, data: readFileSync(path) }));
}

/** A logger that keeps every line. */
function capture(): { logger: pino.Logger; lines: string[] } {
  const lines: string[] = [];
  return { lines, logger: pino({ level: 'debug' }, new Writable({ write: (c: Buffer, _e, done) => (lines.push(c.toString('utf8')), done()) })) };
}

describe('embargoed patches: a private lane, and nothing of it in public (two tiers, real parts)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'airlock-embargo-lane-'));
  /** The public registry: the builder's push login, and a consumer's. */
  let registry: TestRegistry;
  /** The embargo lane's own registry: the builder's login, and the security team's; no other. */
  let embargoRegistry: TestRegistry;
  let review: GerritRig;
  let ci: TestCi;
  let builder: BuilderService;
  let builderUrl: string;
  let alice: TestMember;
  let hook: Server;
  /** The warnings' bodies, as posted (opaque: no id, commit or step). */
  const warnings: Record<string, unknown>[] = [];
  /** How many warnings the builder sent about `id` (its audit log names the id; the body does not). */
  const warnedAbout = (id: string): number => readFileSync(builder.auditFile, 'utf8').split('\n').filter((l) => l.includes('"event":"warned"') && l.includes(`"embargo":"${id}"`) && l.includes('"delivered":true')).length;
  /** The last break the team reads for `id` (through the lane's API, as `airlock embargo show`). */
  const lastBreak = async (id: string): Promise<{ commit?: string; step?: string } | undefined> => ((await embargo({ action: 'show', id })).embargo as { lastBreak?: { commit: string; step: string } }).lastBreak;
  const ciLog = capture();
  const builderLog = capture();
  const cmdlines = new Set<string>();
  let sampler: NodeJS.Timeout | undefined;
  const merged: string[] = [];
  const ids: Record<'e1' | 'e2' | 'e3' | 'e4', string> = { e1: '', e2: '', e3: '', e4: '' };

  /** A patch the way the team makes one: `git format-patch` of a commit on a private clone. */
  const patchOf = (files: Record<string, string>, message: string): string => {
    const clone = join(dir, `clone-${randomBytes(3).toString('hex')}`);
    execFileSync('git', ['clone', '-q', review.gerrit.gitUrl(PROJECT), clone]);
    for (const [p, text] of Object.entries(files)) {
      mkdirSync(join(clone, p, '..'), { recursive: true });
      writeFileSync(join(clone, p), text);
    }
    const g = (...a: string[]) => execFileSync('git', ['-C', clone, '-c', 'user.name=Sec', '-c', 'user.email=sec@example.invalid', ...a], { encoding: 'utf8' });
    g('add', '-A');
    g('commit', '-q', '-m', message);
    const patch = g('format-patch', '--stdout', 'HEAD~1');
    rmSync(clone, { recursive: true, force: true });
    return patch;
  };

  const embargo = async (ask: Parameters<typeof makeRequest>[0]): Promise<Record<string, unknown>> => {
    const builderKey = await openpgp.readKey({ armoredKey: builder.embargo!.publicKey });
    const { armored, request } = await makeRequest(ask, { memberKey: alice.privateKey, builderKey });
    const r = await builder.app.inject({ method: 'POST', url: '/v1/embargo', payload: armored, headers: { 'content-type': 'application/pgp-encrypted' } });
    expect(r.statusCode, r.body).toBe(200);
    const answer = await openResponse(r.body, { memberKey: alice.privateKey, builderKey, nonce: request.nonce });
    expect(answer.ok, JSON.stringify(answer)).toBe(true);
    return (answer as { result: Record<string, unknown> }).result;
  };

  /**
   * Upload a change to Gerrit and approve it there (Code-Review +2 by a core reviewer); wait until
   * the gate had Gerrit merge it and the builder promoted the merge. The merged event names the
   * branch tip Gerrit's submit left (here a fast-forward to the change: it sits on the tip).
   */
  const land = async (subject: string, files: Record<string, string>) => {
    const g = review.gerrit;
    const c = g.upload({ project: PROJECT, owner: 'ada', subject, files });
    g.review(c.number, 'grace', { labels: { 'Code-Review': 2 } });
    const n = String(c.number);
    const end = Date.now() + 120_000;
    for (;;) {
      const events = (await ci.service.app.inject({ method: 'GET', url: '/api/gate/events?kind=merged' })).json() as { events: { change: string; commit: string }[] };
      const m = events.events.find((e) => e.change === n);
      if (m) {
        expect(g.changeState(c.number)).toMatchObject({ status: 'MERGED', submitter: CI_ACCOUNT });
        expect(m.commit).toBe(g.branchTip(PROJECT));
        for (;;) {
          const res = builder.promoter.result(PROJECT, m.commit);
          if (res) {
            await builder.promoter.drain();
            merged.push(m.commit);
            return { change: c.number, commit: m.commit, result: res };
          }
          if (Date.now() > end) throw new Error(`no promotion of ${m.commit}`);
          await new Promise((x) => setTimeout(x, 100));
        }
      }
      if (Date.now() > end) throw new Error(`change ${n} did not merge: ${JSON.stringify(events)}`);
      await new Promise((x) => setTimeout(x, 100));
    }
  };

  const basic = (login: { username: string; password: string }): string => `Basic ${Buffer.from(`${login.username}:${login.password}`).toString('base64')}`;
  /** The patched images' tags, as the builder's login to the embargo lane's registry lists them. */
  const tags = async (repo: string): Promise<string[]> => {
    const r = await fetch(`http://${embargoRegistry.url}/v2/${repo}/tags/list`, { headers: { authorization: basic(embargoRegistry) } });
    return r.status === 200 ? (((await r.json()) as { tags: string[] | null }).tags ?? []) : [];
  };

  /**
   * skopeo under a policy requiring the builder's signature, looking for signatures in `lookaside`
   * (a URL); from the public registry with the consumer's login unless another registry and login are given.
   */
  const pull = async (reference: string, lookaside: string, out: string, from: { url: string; login: { username: string; password: string } } = { url: registry.url, login: registry.logins.consumer! }) => {
    const policy = { default: [{ type: 'reject' }], transports: { docker: { [from.url]: [{ type: 'signedBy', keyType: 'GPGKeys', keyPath: join(dir, 'builder.pub.asc') }] } } };
    writeFileSync(join(dir, 'policy.json'), JSON.stringify(policy));
    const regd = join(dir, `registries.d-${randomBytes(3).toString('hex')}`);
    mkdirSync(regd);
    writeFileSync(join(regd, 'r.yaml'), `docker:\n  ${from.url}:\n    lookaside: ${lookaside}\n`);
    await run('skopeo', ['--policy', join(dir, 'policy.json'), '--registries.d', regd, 'copy', '--src-tls-verify=false', '--src-creds', `${from.login.username}:${from.login.password}`, `docker://${reference}`, `dir:${out}`]);
    // Every layer, uncompressed, as one buffer to search.
    return Buffer.concat(readdirSync(out).filter((f) => /^[0-9a-f]{64}$/.test(f)).map((f) => { const b = readFileSync(join(out, f)); return b[0] === 0x1f && b[1] === 0x8b ? gunzipSync(b) : b; }));
  };

  beforeAll(async () => {
    // Every command line on the machine, sampled all along.
    sampler = setInterval(() => {
      for (const pid of readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
        try {
          cmdlines.add(readFileSync(`/proc/${pid}/cmdline`, 'utf8').replaceAll('\0', ' '));
        } catch {
          // gone already
        }
      }
    }, 25);
    hook = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        warnings.push(JSON.parse(Buffer.concat(chunks).toString('utf8')) as Record<string, unknown>);
        res.statusCode = 204;
        res.end();
      });
    });
    await new Promise<void>((r) => hook.listen(0, '127.0.0.1', r));

    registry = await startRegistry({ auth: true, username: 'airlock-builder', others: ['consumer'] });
    embargoRegistry = await startRegistry({ auth: true, username: 'airlock-builder', others: ['security-team'] });
    review = await startGerrit();
    const initial = review.gerrit.createProject(PROJECT, { '.airlock.yaml': CONFIG, 'test.sh': 'test -f app.txt && echo unit ok\n', Dockerfile: `FROM ${BASE}\nCOPY . /app\n`, 'app.txt': 'version 1\n', 'src/main.c': 'int main(void) { return 0; }\n' });
    alice = await makeMember('alice');
    const teamDir = writeTeam(join(dir, 'team'), [alice]);
    const rig = await builderRig({
      dir,
      registry,
      project: { name: PROJECT, url: review.gerrit.gitUrl(PROJECT), image: 'team/app' },
      hintSecret: HINT_SECRET,
      baseImage: BASE,
      runnerStateDir: STATE_DIR,
      embargo: { teamDir, registry: embargoRegistry },
      // The project's first commit was made with it, not through review: review is checked from there on.
      review: { url: review.gerrit.url, username: BUILDER_ACCOUNT, password: review.passwords[BUILDER_ACCOUNT]!, since: initial },
    });
    builder = await startBuilderService({ ...rig, embargoWebhook: `http://127.0.0.1:${(hook.address() as AddressInfo).port}/warn` }, { logger: builderLog.logger });
    builderUrl = await builder.listen();
    writeFileSync(join(dir, 'builder.pub.asc'), builder.publicKey);
    writeFileSync(join(dir, 'hint.secret'), HINT_SECRET, { mode: 0o600 });
    ci = await startTestCi({ projects: [{ name: PROJECT, url: review.gerrit.gitUrl(PROJECT) }], hints: { url: builderUrl, secretFile: join(dir, 'hint.secret') } }, { logger: ciLog.logger, review });
    chmodSync(dir, 0o700);
  }, 120_000);

  afterAll(async () => {
    clearInterval(sampler);
    await ci?.close();
    await builder?.close();
    await registry?.stop();
    await embargoRegistry?.stop();
    await review?.gerrit.close();
    hook?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('M1: the public image, and privately the image with the embargoed patches, signed', async () => {
    ids.e1 = (await embargo({ action: 'submit', project: PROJECT, patch: patchOf({ [`src/${CANARY.file}`]: `/* ${CANARY.content} */\n` }, CANARY.message) })).id as string;
    ids.e2 = (await embargo({ action: 'submit', project: PROJECT, patch: patchOf({ 'app.txt': 'version 1 (hardened)\n' }, 'harden the app') })).id as string;
    expect(ids.e1).toMatch(/^emb-/);

    const m1 = await land('one', { 'one.txt': '1\n' });
    expect(m1.result, JSON.stringify(m1.result)).toMatchObject({ state: 'published' });
    // The builder read the review record itself: the change, approved by grace (not its owner).
    const verified = readFileSync(builder.auditFile, 'utf8').split('\n').filter((l) => l.includes('"verify-passed"') && l.includes(m1.commit));
    expect(verified.join('\n')).toContain(`"review":"${m1.change},1 approved by grace"`);
    expect(await tags('private/team/app')).toEqual([m1.commit]);
    const e1 = builder.embargo!.status(ids.e1);
    expect(e1.lastBuild?.commit).toBe(m1.commit);

    // `airlock embargo verify`: the team gets the signature and provenance over the lane's API and
    // checks them against the builder's signing key, without the private lookaside.
    const artifacts = (await embargo({ action: 'artifacts', id: ids.e1 })) as Extract<EmbargoResult, { action: 'artifacts' }>;
    const checked = await verifyArtifacts(artifacts, await readSigningPublicKey(builder.publicKey, 'signing-key.pub.asc'));
    expect(checked).toMatchObject({ reference: `${embargoRegistry.url}/private/team/app:${m1.commit}`, digest: e1.lastBuild!.digest, commit: m1.commit });
    expect(checked.files.map((f) => f.name)).toEqual(['image.signature', 'provenance.json', 'provenance.json.asc']);
    // `verify --lookaside DIR` lays the signature out for skopeo: the team's pull below checks it from there.
    const teamLookaside = join(dir, 'team-lookaside');
    await writeVerifiedLookaside(artifacts, teamLookaside);
    // The patched image carries the fix and is signed (its signature in the private lookaside); the
    // security team pulls it from the lane's own registry with its own login.
    const team = embargoRegistry.logins['security-team']!;
    const privateRef = `${embargoRegistry.url}/private/team/app:${m1.commit}`;
    const privateLayers = await pull(privateRef, `file://${teamLookaside}`, join(dir, 'pulled-private'), { url: embargoRegistry.url, login: team });
    expect(hits(privateLayers)).toEqual(expect.arrayContaining([CANARY.file, CANARY.content]));
    expect(privateLayers.includes('version 1 (hardened)')).toBe(true);
    // The public image does not, and it is signed in the public lookaside as usual.
    const publicLayers = await pull(`${registry.url}/team/app:${m1.commit}`, `${builderUrl}/lookaside`, join(dir, 'pulled-public-1'));
    expect(publicLayers.includes('version 1\n')).toBe(true);
    expect(hits(publicLayers)).toEqual([]);
    // The private image's signature is not served publicly.
    expect(files(join(dir, 'data', 'lookaside')).some((f) => f.path.includes('private'))).toBe(false);

    // The public registry holds the public image and no private/ repository at all.
    const catalog = async (url: string, authorization?: string): Promise<{ status: number; repositories?: string[] }> => {
      const r = await fetch(`http://${url}/v2/_catalog`, authorization ? { headers: { authorization } } : {});
      return { status: r.status, ...(r.status === 200 ? ((await r.json()) as { repositories: string[] }) : {}) };
    };
    const publicCatalog = await catalog(registry.url, basic(registry.logins.consumer!));
    expect(publicCatalog.repositories).toContain('team/app');
    expect(publicCatalog.repositories!.filter((r) => r.startsWith('private'))).toEqual([]);
    expect((await catalog(registry.url, basic(registry))).repositories!.filter((r) => r.startsWith('private'))).toEqual([]);

    // The lane's registry refuses the consumer's login, the builder's public push login and no login
    // at all: its catalog, the private image's manifest, and a skopeo copy of it. The team's login
    // (and the builder's) get the very same things: the refusals are about the login.
    const manifest = async (authorization?: string): Promise<number> =>
      (await fetch(`http://${embargoRegistry.url}/v2/private/team/app/manifests/${m1.commit}`, { headers: { accept: 'application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json', ...(authorization ? { authorization } : {}) } })).status;
    const copy = (creds: string[]): Promise<string> =>
      run('skopeo', ['--insecure-policy', 'copy', '--src-tls-verify=false', ...creds, `docker://${privateRef}`, `dir:${join(dir, `refused-${randomBytes(3).toString('hex')}`)}`]).then(
        () => 'copied',
        (e: unknown) => String((e as { stderr?: string }).stderr ?? e),
      );
    expect(await catalog(embargoRegistry.url, basic(team))).toEqual({ status: 200, repositories: ['private/team/app'] });
    expect(await manifest(basic(team))).toBe(200);
    expect(await manifest(basic(embargoRegistry))).toBe(200);
    const outsiders: [string, string[], string | undefined][] = [
      ['the consumer', ['--src-creds', `${registry.logins.consumer!.username}:${registry.logins.consumer!.password}`], basic(registry.logins.consumer!)],
      ['the builder’s public push login', ['--src-creds', `${registry.username}:${registry.password}`], basic(registry)],
      ['no login', ['--src-no-creds'], undefined],
    ];
    for (const [who, creds, authorization] of outsiders) {
      expect((await catalog(embargoRegistry.url, authorization)).status, `${who}: GET /v2/_catalog`).toBe(401);
      expect(await manifest(authorization), `${who}: GET the private manifest`).toBe(401);
      expect(await copy(creds), `${who}: skopeo copy`).toMatch(/401|unauthorized|authentication required/i);
    }
  }, 180_000);

  it('M2: a public change makes E2 stop applying: no patched image, the team is warned', async () => {
    const m2 = await land('version 2', { 'app.txt': 'version 2\n' });
    expect(m2.result).toMatchObject({ state: 'published' });
    expect(await tags('private/team/app')).not.toContain(m2.commit);
    // The team is warned about both (opaque warnings) and reads what happened through the lane.
    expect(warnedAbout(ids.e2)).toBe(1);
    expect(warnedAbout(ids.e1)).toBe(1);
    expect(await lastBreak(ids.e2)).toMatchObject({ commit: m2.commit, step: 'apply' });
    // E1 still applies, but gets no image for M2 either: recorded as "blocked", not as broken.
    expect(await lastBreak(ids.e1)).toMatchObject({ commit: m2.commit, step: 'blocked' });
    const shown = await embargo({ action: 'show', id: ids.e2 });
    expect(JSON.stringify(shown)).toMatch(/does not apply|apply/);
  }, 180_000);

  it('M3: the public history now contains E2: it retires itself; the patched image has E1 alone', async () => {
    const m3 = await land('harden the app, in public', { 'app.txt': 'version 1 (hardened)\n' });
    expect(m3.result).toMatchObject({ state: 'published' });
    expect(builder.embargo!.status(ids.e2)).toMatchObject({ state: 'retired' });
    expect(warnedAbout(ids.e2)).toBe(2);
    expect(await tags('private/team/app')).toContain(m3.commit);
    const audit = readFileSync(builder.auditFile, 'utf8');
    expect(audit).toMatch(new RegExp(`"event":"retired"[^\\n]*"embargo":"${ids.e2}"|"embargo":"${ids.e2}"[^\\n]*"event":"retired"`));
  }, 180_000);

  it('M4: an embargoed patch that breaks the tests: no patched image, warned with step tests', async () => {
    ids.e3 = (await embargo({ action: 'submit', project: PROJECT, patch: patchOf({ 'test.sh': 'echo the fix broke the tests; exit 1\n' }, 'a bad fix') })).id as string;
    const m4 = await land('four', { 'four.txt': '4\n' });
    expect(m4.result).toMatchObject({ state: 'published' });
    expect(await tags('private/team/app')).not.toContain(m4.commit);
    // Warned for M4 (and already for the build its submission queued on M3).
    const warned = warnedAbout(ids.e3);
    expect(warned).toBeGreaterThanOrEqual(1);
    expect(await lastBreak(ids.e3)).toMatchObject({ commit: m4.commit, step: 'tests' });
    const logs = await embargo({ action: 'logs', id: ids.e3 });
    expect(JSON.stringify(logs)).toContain('the fix broke the tests');
    // A member's retirement warns too.
    await embargo({ action: 'retire', id: ids.e3, reason: 'withdrawn' });
    await builder.embargoLane!.idle();
    expect(warnedAbout(ids.e3)).toBe(warned + 1);
    // …and queues a private build of M4 with the others (E1): they get their image without E3.
    await builder.promoter.drain();
    expect(await tags('private/team/app')).toContain(m4.commit);
    expect(builder.embargo!.status(ids.e1).lastBuild?.commit).toBe(m4.commit);
  }, 180_000);

  it('a newly submitted patch is built at once, on the latest published commit', async () => {
    const latest = merged.at(-1)!;
    ids.e4 = (await embargo({ action: 'submit', project: PROJECT, patch: patchOf({ 'late.txt': 'a late fix\n' }, 'a late fix') })).id as string;
    await builder.promoter.drain();
    expect(await tags('private/team/app')).toContain(latest);
    expect(builder.embargo!.status(ids.e4).lastBuild?.commit).toBe(latest);
  }, 180_000);

  it('the canary is in no public output of either tier', async () => {
    const found: string[] = [];
    const check = (where: string, data: Buffer | string) => {
      for (const h of hits(data)) found.push(`${where}: ${h}`);
    };
    // The public CI: its whole data dir, its API, its log.
    for (const f of files(ci.dataDir)) check(`ci ${f.path}`, f.data);
    for (const url of ['/api/builds?limit=200', '/api/gate', '/api/gate/events', '/api/status', '/healthz', '/']) {
      const r = await ci.service.app.inject({ method: 'GET', url });
      check(`ci GET ${url}`, r.body);
    }
    check('ci log', ciLog.lines.join(''));
    // The review system: its repository (every object, through git) and every event it raised (the CI's messages among them).
    check('gerrit repository', execFileSync('git', ['--git-dir', review.gerrit.gitUrl(PROJECT), 'cat-file', '--batch-all-objects', '--batch'], { maxBuffer: 256 * 1024 * 1024 }));
    check('gerrit events', JSON.stringify(review.gerrit.events));
    // The builder: its data dir (store encrypted, mirror and lookasides clean), log, endpoints.
    for (const f of files(join(dir, 'data'))) check(`builder ${f.path}`, f.data);
    // The mirror's objects are compressed on disk: read every one of them through git.
    const mirrors = join(dir, 'data', 'git');
    for (const m of readdirSync(mirrors)) check(`mirror ${m}`, execFileSync('git', ['--git-dir', join(mirrors, m), 'cat-file', '--batch-all-objects', '--batch'], { maxBuffer: 256 * 1024 * 1024 }));
    expect(readdirSync(mirrors).length).toBeGreaterThan(0);
    check('builder log', builderLog.lines.join(''));
    for (const url of ['/healthz', '/lookaside/', '/v1/embargo', '/']) check(`builder GET ${url}`, (await builder.app.inject({ method: 'GET', url })).body);
    for (const c of merged) check(`promotion result ${c}`, JSON.stringify(builder.promoter.result(PROJECT, c)));
    // Every public image's layers.
    for (const [i, c] of merged.entries()) check(`public image ${c}`, await pull(`${registry.url}/team/app:${c}`, `${builderUrl}/lookaside`, join(dir, `pulled-scan-${i}`)));
    // Command lines seen while all of this ran, and what the engine names.
    expect(cmdlines.size).toBeGreaterThan(50);
    check('process command lines', [...cmdlines].join('\n'));
    const docker = createDocker();
    check('containers', JSON.stringify(await docker.listContainers({ all: true })));
    const images = await docker.listImages();
    check('images', JSON.stringify(images));
    expect(images.flatMap((i) => i.RepoTags ?? []).filter((t) => t.startsWith('airlock-trusted-private/'))).toEqual([]);
    // The warnings went out as the opaque notice alone: no id, no commit, no step.
    check('warnings', JSON.stringify(warnings));
    expect(warnings.length).toBeGreaterThanOrEqual(6);
    for (const w of warnings) expect(Object.keys(w).sort()).toEqual(['at', 'event', 'nonce', 'notice', 'version']);
    const bodies = JSON.stringify(warnings);
    for (const secret of [...Object.values(ids), ...merged]) expect(bodies).not.toContain(secret);
    expect(found).toEqual([]);
  }, 180_000);
});
