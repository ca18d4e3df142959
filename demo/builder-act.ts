/**
 * Acts 4 and 5: the trusted builder, seen from outside as its operators and consumers see it.
 * Its audit log (append-only, hash-chained) says what it decided; the registry and the lookaside
 * hold what it published; skopeo, under the shipped consumer policy, is the judge of the result.
 * The demo never tells the builder anything: the CI's hint sender does, once per gate merge.
 */
import { execFile } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { join, relative } from 'node:path';
import { promisify } from 'node:util';
import { verifyAuditLog } from '../trusted-builder/audit/audit-log.js';
import { builderPaths } from '../trusted-builder/service.js';
import { BASE_IMAGE, IMAGE, type DemoLayout } from './demo-root.js';
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
    if (verify) story.info(`verified: on protected branch ${String(verify.branch)} of its own clone`);
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
  story.check(`an unsigned image in the same registry (${unsigned}) is refused`, refused !== undefined && /signature/i.test(refused), refused ?? 'it was accepted');
}
