/**
 * Act 8 (`--security-team` only): the security team's embargo lane, as a member runs it from
 * docs/security-team.md, through the functions `airlock embargo …` calls (cli/embargo.ts: each
 * request signed with the member's key and encrypted to the builder's embargo key).
 *
 * A member embargoes a patch that changes the greeting; the builder builds the published commit
 * with it privately (on submission: the project has a published commit), pushes the patched image
 * to the lane's own registry and signs it. The member waits with `embargo show`, checks it with
 * `embargo verify --signing-key … --lookaside DIR`, and copies it with skopeo and the team's login
 * under a policy that requires the builder's signature; the consumers' login is refused there.
 * Then the patch's unique string is looked for where the public can look: the CI's and the
 * builder's logs and the CI's data dir, the public registry's copy of the project, the builder's
 * public lookaside and its page.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { gunzipSync } from 'node:zlib';
import { embargoRequest } from '../cli/embargo.js';
import { readSigningPublicKey, verifyArtifacts, writeVerifiedLookaside } from '../cli/embargo-verify.js';
import { builderPaths } from '../trusted-builder/service.js';
import type { CodeReview } from './code-review.js';
import { EMBARGO_REGISTRY, PROJECT, REGISTRY, type DemoLayout } from './demo-root.js';
import type { Story } from './story.js';
import { consumer, firstErrorLine } from './verify-image.js';
import { until } from './wait.js';

const BUILD_TIMEOUT_MS = 120_000; // 2 min: the patched tests and image, on a loaded machine

interface Ctx {
  story: Story;
  layout: DemoLayout;
  builderUrl: string;
  review: CodeReview;
  signal: AbortSignal;
  /** The commits this run published (their public images are searched for the patch). */
  published: string[];
}

export async function securityTeamAct(c: Ctx): Promise<void> {
  const { story, layout } = c;
  const team = layout.securityTeam;
  if (!team) throw new Error('the demo root has no security team (run with --security-team)');
  story.begin("the security team's embargo lane", `a member (dana, key ${team.memberFingerprint.slice(-16)}) submits a fix that must stay private until disclosed; the builder builds it privately, signs it, pushes it to ${EMBARGO_REGISTRY} only`);
  const flags = { key: team.memberKeyFile, builder: c.builderUrl, builderKey: team.builderKeyFile };
  const secret = `embargoed-${randomBytes(6).toString('hex')}`;
  const scratch = mkdtempSync(join(layout.root, 'security-team', 'work-'));

  // The patch, made as the team makes one: `git format-patch` of a commit on a private clone.
  const clone = join(scratch, 'clone');
  execFileSync('git', ['clone', '-q', c.review.gerrit.gitUrl(PROJECT), clone]);
  const edit = (file: string, change: (text: string) => string): void => {
    const p = join(clone, file);
    const before = readFileSync(p, 'utf8');
    const after = change(before);
    if (after === before) throw new Error(`the sample project's ${file} changed: the demo's embargoed patch no longer applies`);
    writeFileSync(p, after);
  };
  edit('greet.sh', (t) => t.replace(/^greeting="([^"]*)"$/m, `greeting="$1 (${secret})"`));
  const greeting = /^greeting="([^"]*)"$/m.exec(readFileSync(join(clone, 'greet.sh'), 'utf8'))?.[1] ?? '';
  edit('tests/greet.sh', (t) => t.replace(/"[^",]*, /g, `"${greeting}, `));
  const git = (...a: string[]): string => execFileSync('git', ['-C', clone, '-c', 'user.name=dana', '-c', 'user.email=dana@security.invalid', ...a], { encoding: 'utf8' });
  git('commit', '-q', '-a', '-m', `greet: ${secret}`);
  const patchFile = join(scratch, 'fix.patch');
  execFileSync('sh', ['-c', 'git -C "$1" format-patch --stdout HEAD~1 > "$2"', 'sh', clone, patchFile]);

  const submitted = await embargoRequest({ action: 'submit', project: PROJECT, patch: readFileSync(patchFile, 'utf8') }, flags);
  if (submitted.action !== 'submit') throw new Error(`the builder answered ${submitted.action} to submit`);
  const id = submitted.id;
  story.check(`airlock embargo submit --project ${PROJECT} --patch fix.patch: ${id}`, true, `a patch that changes the greeting to "${greeting.replace(secret, '…')}", signed by dana and encrypted to the builder's embargo key`);

  type Detail = Extract<Awaited<ReturnType<typeof embargoRequest>>, { action: 'show' }>['embargo'];
  const shown = await until(`a private build of ${id}`, async () => {
    const r = await embargoRequest({ action: 'show', id }, flags);
    if (r.action !== 'show') throw new Error(`the builder answered ${r.action} to show`);
    return r.embargo.lastBuild || r.embargo.lastBreak ? r.embargo : undefined;
    // Every 2.5 s: the embargo API takes 30 requests a minute from one address, and the private
    // build (its dependencies fetched and verified, its environment built) takes a while.
  }, { signal: c.signal, timeoutMs: BUILD_TIMEOUT_MS, everyMs: 2_500 }).catch((e: Error): Detail | undefined => (story.check(`airlock embargo show ${id}: built`, false, e.message), undefined));
  if (!shown) return done();
  const build = shown.lastBuild;
  if (!story.check(`airlock embargo show ${id}: built privately on the published commit ${build?.commit.slice(0, 10) ?? '?'}`, build !== undefined && !shown.lastBreak, build ? build.reference : `broken: ${shown.lastBreak?.step ?? '?'} ${shown.lastBreak?.reason ?? ''}`) || !build) return done();

  // `airlock embargo verify ID --signing-key … --lookaside DIR`.
  const lookaside = join(scratch, 'team-lookaside');
  let verifiedOk = false;
  try {
    const artifacts = await embargoRequest({ action: 'artifacts', id }, flags);
    if (artifacts.action !== 'artifacts') throw new Error(`the builder answered ${artifacts.action} to artifacts`);
    const signingKey = await readSigningPublicKey(readFileSync(layout.publicKeyFile, 'utf8'), layout.publicKeyFile);
    const v = await verifyArtifacts(artifacts, signingKey);
    await writeVerifiedLookaside(artifacts, lookaside);
    verifiedOk = v.signer === layout.fingerprint && v.patches.includes(artifacts.digest);
    story.check(`airlock embargo verify ${id} --signing-key signing-key.pub.asc --lookaside DIR: signed by ${v.signer.slice(-16)}`, verifiedOk, `the provenance names the patch only by ${artifacts.digest.slice(0, 19)}…`);
  } catch (e) {
    story.check(`airlock embargo verify ${id}`, false, (e as Error).message);
  }

  // skopeo with the team's login, under a policy that requires the builder's signature.
  if (verifiedOk) {
    const teamSkopeo = consumer({ dir: join(scratch, 'skopeo-team'), registry: { host: EMBARGO_REGISTRY, ...team.registryLogin }, publicKeyFile: layout.publicKeyFile, lookasideUrl: `file://${lookaside}` });
    await teamSkopeo.pull(build.reference).then(
      () => story.check(`skopeo copy docker://${build.reference.replace(/:[0-9a-f]{40}$/, ':…')} with the team's login: signature accepted`, true, `policy: signedBy ${layout.fingerprint.slice(-16)}; lookaside written by verify`),
      (e: unknown) => story.check(`skopeo copy docker://${build.reference} with the team's login`, false, firstErrorLine(e)),
    );
  }
  const [repo, tag] = [build.reference.slice(EMBARGO_REGISTRY.length + 1).replace(/:[^:/]+$/, ''), build.commit];
  const asConsumer = await fetch(`http://${EMBARGO_REGISTRY}/v2/${repo}/manifests/${tag}`, { headers: { authorization: basic(team.consumerLogin) } }).then((r) => r.status, (e: Error) => e.message);
  story.check(`the consumers' login on ${EMBARGO_REGISTRY}: ${asConsumer}`, asConsumer === 401, `GET /v2/${repo}/manifests/<commit>`);

  // The patch's unique string, wherever the public can look.
  const places: [string, () => Promise<Buffer | string>][] = [
    ["the CI's log and data dir", async () => Buffer.concat([readFileSync(layout.ciLog), ...filesUnder(join(layout.root, 'ci'))])],
    ["the builder's log", async () => readFileSync(layout.builderLog)],
    ["the builder's public lookaside", async () => Buffer.concat(filesUnder(builderPaths(layout.builderData).lookaside))],
    [`the public registry's ${PROJECT} (its tags, this run's manifests and layers)`, () => publicImages(layout, c.published)],
    ["the builder's page", async () => fetch(`${c.builderUrl}/ui`, { headers: { authorization: basic(layout.dashboard) } }).then((r) => r.text())],
  ];
  const leaks: string[] = [];
  for (const [what, read] of places) {
    const data = await read().catch((e: Error) => `unreadable: ${e.message}`);
    if (typeof data === 'string' && data.startsWith('unreadable: ')) leaks.push(`${what} ${data}`);
    else if ((Buffer.isBuffer(data) ? data : Buffer.from(data)).includes(secret)) leaks.push(what);
  }
  story.check(`the patch's unique string is in no public output`, leaks.length === 0, leaks.length === 0 ? places.map(([w]) => w).join(', ') : `found in (or could not read): ${leaks.join('; ')}`);
  return done();

  function done(): void {
    rmSync(scratch, { recursive: true, force: true });
  }
}

function basic(login: { username: string; password: string }): string {
  return `Basic ${Buffer.from(`${login.username}:${login.password}`).toString('base64')}`;
}

function filesUnder(dir: string): Buffer[] {
  let entries: string[];
  try {
    entries = readdirSync(dir, { recursive: true, encoding: 'utf8' });
  } catch {
    return [];
  }
  return entries.map((e) => join(dir, e)).filter((p) => statSync(p, { throwIfNoEntry: false })?.isFile()).map((p) => readFileSync(p));
}

/** The project's tags in the public registry, and this run's images there: manifests and layers (gunzipped), with the consumers' login. */
async function publicImages(layout: DemoLayout, commits: string[]): Promise<Buffer> {
  const auth = { authorization: basic(layout.registry) };
  const accept = 'application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json';
  const base = `http://${REGISTRY}/v2/${PROJECT}`;
  const tags = (((await (await fetch(`${base}/tags/list`, { headers: auth })).json()) as { tags?: string[] | null }).tags ?? []);
  const out: Buffer[] = [Buffer.from(tags.join('\n'))];
  for (const t of tags.filter((x) => commits.includes(x))) {
    const text = await (await fetch(`${base}/manifests/${t}`, { headers: { ...auth, accept } })).text();
    out.push(Buffer.from(text));
    const m = JSON.parse(text) as { layers?: { digest: string }[]; config?: { digest: string } };
    for (const d of [...(m.layers ?? []), ...(m.config ? [m.config] : [])].map((l) => l.digest)) {
      const b = Buffer.from(await (await fetch(`${base}/blobs/${d}`, { headers: auth })).arrayBuffer());
      out.push(b[0] === 0x1f && b[1] === 0x8b ? gunzipSync(b) : b);
    }
  }
  return Buffer.concat(out);
}
