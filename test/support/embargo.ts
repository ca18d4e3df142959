/**
 * For the embargo lane's tests: security team members with real OpenPGP keys (written as the
 * `<name>.asc` public keys of a team directory), the builder's embargo key, and a canary patch whose
 * unique strings (content, file names, commit message, project name) must never show up anywhere
 * but inside the encryption.
 */
import { mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import * as openpgp from 'openpgp';
import { generateEmbargoKey } from '../../scripts/make-signing-key.js';
import { loadEmbargoKey, type EmbargoKey } from '../../trusted-builder/embargo/embargo-key.js';

export interface TestMember {
  name: string;
  fingerprint: string;
  privateArmored: string;
  publicArmored: string;
  privateKey: openpgp.PrivateKey;
}

export async function makeMember(name: string, passphrase?: string): Promise<TestMember> {
  // Made "an hour ago", so that a test can sign as of a few minutes back.
  const k = await generateEmbargoKey({ name, email: `${name}@security.invalid`, now: new Date(Date.now() - 3_600_000), ...(passphrase ? { passphrase } : {}) });
  const parsed = await openpgp.readPrivateKey({ armoredKey: k.privateArmored });
  const privateKey = passphrase ? await openpgp.decryptKey({ privateKey: parsed, passphrase }) : parsed;
  return { name, fingerprint: k.fingerprint, privateArmored: k.privateArmored, publicArmored: k.publicArmored, privateKey };
}

/** Write members' public keys into `dir` (created) as `<name>.asc`. */
export function writeTeam(dir: string, members: readonly TestMember[]): string {
  mkdirSync(dir, { recursive: true });
  for (const m of members) writeFileSync(join(dir, `${m.name}.asc`), m.publicArmored);
  return dir;
}

export async function makeBuilderKey(): Promise<{ key: EmbargoKey; armored: string }> {
  const k = await generateEmbargoKey({ name: 'test builder embargo', email: 'embargo@airlock.invalid', now: new Date(Date.now() - 3_600_000) });
  return { key: await loadEmbargoKey(k.privateArmored, undefined, { source: 'test' }), armored: k.privateArmored };
}

/** Strings that exist only in the canary patch and its project name. */
export const CANARY = {
  project: 'canary-proj-7f3k2q',
  file: 'src/canary-file-9x2mzq.c',
  content: 'CANARY_CONTENT_q8w7e6r5t4',
  message: 'CANARY-MESSAGE-fix-heap-overflow-zz81',
} as const;

/** A `git format-patch` email carrying every canary string. */
export const CANARY_PATCH = `From 0123456789abcdef0123456789abcdef01234567 Mon Sep 17 00:00:00 2001
From: Security Team <security@example.invalid>
Date: Mon, 1 Jan 2024 00:00:00 +0000
Subject: [PATCH] ${CANARY.message}

---
 ${CANARY.file} | 1 +
 1 file changed, 1 insertion(+)

diff --git a/${CANARY.file} b/${CANARY.file}
index 0000000..1111111 100644
--- a/${CANARY.file}
+++ b/${CANARY.file}
@@ -1,1 +1,2 @@
 int main(void) { return 0; }
+/* ${CANARY.content} */
--
2.39.2
`;

/** Every canary string (and the raw patch) found in `text`. */
export function canaryHits(text: string | Buffer, opts: { project?: boolean } = {}): string[] {
  const haystack = Buffer.isBuffer(text) ? text : Buffer.from(text, 'utf8');
  const needles = [CANARY.file, CANARY.content, CANARY.message, 'canary-file-9x2mzq', ...(opts.project === false ? [] : [CANARY.project])];
  return needles.filter((n) => haystack.includes(Buffer.from(n, 'utf8')) || haystack.includes(Buffer.from(Buffer.from(n).toString('base64').slice(0, 12))));
}

/** Every file under `dir` (recursively), with its path relative to `dir`. */
export function filesUnder(dir: string): { rel: string; data: Buffer }[] {
  const out: { rel: string; data: Buffer }[] = [];
  const walk = (at: string, rel: string): void => {
    for (const entry of readdirSync(at)) {
      const p = join(at, entry);
      const r = rel ? `${rel}/${entry}` : entry;
      if (statSync(p).isDirectory()) walk(p, r);
      else out.push({ rel: r, data: readFileSync(p) });
    }
  };
  walk(dir, '');
  return out;
}
