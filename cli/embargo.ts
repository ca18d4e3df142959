/**
 * The security team's side of the embargo lane (trusted-builder/embargo/):
 *
 *   airlock embargo submit --project P --patch fix.patch   embargo a patch for project P
 *   airlock embargo list [--project P]                     every embargo, its state and last event
 *   airlock embargo show ID                                one embargo with its patch and breaks
 *   airlock embargo retire ID [--reason TEXT]              stop applying it (the fix is public)
 *   airlock embargo logs ID                                its private build log
 *   airlock embargo replace ID --patch FILE                its patch replaced (a rebase), built again at once
 *   airlock embargo rebuild ID                             its project built privately again now
 *   airlock embargo verify ID --signing-key FILE           check its last patched image's signature and provenance
 *
 * Every command takes `--key FILE` (your armored private key, as `gpg --armor --export-secret-keys`
 * writes it; env AIRLOCK_EMBARGO_KEY; its passphrase only from env AIRLOCK_KEY_PASSPHRASE, never a
 * flag that `ps` would show), `--builder URL` (env AIRLOCK_BUILDER_URL, default
 * http://127.0.0.1:8090) and `--builder-key FILE` (the builder's embargo public key; env
 * AIRLOCK_BUILDER_KEY). The request is signed with your key and encrypted to the builder's; the
 * answer is encrypted to you and must carry the builder's signature. Exit codes as in main.ts.
 */
import { readFileSync, statSync } from 'node:fs';
import type { Command } from 'commander';
import { InternalError, InvalidInputError, NotFoundError } from '#shared/errors.js';
import { loadEmbargoKey } from '../trusted-builder/embargo/embargo-key.js';
import { makeRequest, openResponse, readBuilderKey } from '../trusted-builder/embargo/request.js';
import type { EmbargoAsk, EmbargoResult } from '../trusted-builder/embargo/wire.js';
import { errorFromAnswer, parseServerUrl } from './ci-client.js';
import { withJsonErrors } from './ci.js';
import { formatEmbargoResult } from './embargo-render.js';
import { formatVerified, readSigningPublicKey, verifyArtifacts, writeVerifiedLookaside } from './embargo-verify.js';

export const DEFAULT_BUILDER = 'http://127.0.0.1:8090';
/** A submit carries up to a MiB of patch; the builder answers within seconds. */
const REQUEST_TIMEOUT_MS = 60_000; // 60 s
/** A key file or a patch (the builder takes 1 MiB of patch; it says so when more is sent). */
const MAX_INPUT_FILE_BYTES = 2 * 1024 * 1024; // 2 MiB

interface EmbargoFlags {
  key?: string;
  builder: string;
  builderKey?: string;
  json?: boolean;
}

export function registerEmbargoCommands(program: Command): void {
  const env = { key: process.env.AIRLOCK_EMBARGO_KEY, builder: process.env.AIRLOCK_BUILDER_URL ?? DEFAULT_BUILDER, builderKey: process.env.AIRLOCK_BUILDER_KEY };
  const embargo = program.command('embargo').description("embargoed security patches: the security team's private lane in the trusted builder");
  const client = (c: Command): Command =>
    c
      .option('--key <file>', 'your private key, armored (env AIRLOCK_EMBARGO_KEY; passphrase in env AIRLOCK_KEY_PASSPHRASE)', env.key)
      .option('--builder <url>', 'the trusted builder (env AIRLOCK_BUILDER_URL)', env.builder)
      .option('--builder-key <file>', "the builder's embargo public key (env AIRLOCK_BUILDER_KEY)", env.builderKey)
      .option('--json', 'print the answer as JSON');
  const run = (f: EmbargoFlags, ask: () => EmbargoAsk): Promise<void> =>
    withJsonErrors(f.json, async () => {
      const result = await embargoRequest(ask(), f);
      process.stdout.write(f.json ? `${JSON.stringify(result)}\n` : formatEmbargoResult(result));
      if (result.action === 'logs' && result.truncated && !f.json) process.stderr.write('airlock: only the end of the log is shown\n');
    });

  client(embargo.command('submit').description('embargo a patch: applied to every promotion of the project until retired'))
    .requiredOption('--project <name>', 'the project, as in the promotion policy')
    .requiredOption('--patch <file>', 'the fix as a unified diff (git diff, git format-patch)')
    .action((f: EmbargoFlags & { project: string; patch: string }) => run(f, () => ({ action: 'submit', project: f.project, patch: readText(f.patch, 'patch') })));
  client(embargo.command('list').description('every embargo: state, project, last event'))
    .option('--project <name>', 'only this project')
    .action((f: EmbargoFlags & { project?: string }) => run(f, () => ({ action: 'list', ...(f.project ? { project: f.project } : {}) })));
  client(embargo.command('show').description('one embargo: its patch, breaks and artifacts').argument('<id>', 'the embargo id (emb-…)')).action((id: string, f: EmbargoFlags) =>
    run(f, () => ({ action: 'show', id })),
  );
  client(embargo.command('retire').description('retire an embargo: its patch is no longer applied').argument('<id>', 'the embargo id (emb-…)'))
    .option('--reason <text>', 'why (e.g. "disclosed as CVE-…, fix merged")')
    .action((id: string, f: EmbargoFlags & { reason?: string }) => run(f, () => ({ action: 'retire', id, ...(f.reason ? { reason: f.reason } : {}) })));
  client(embargo.command('replace').description("replace an active embargo's patch (e.g. its rebase after it broke): same id, built again at once").argument('<id>', 'the embargo id (emb-…)'))
    .requiredOption('--patch <file>', 'the new fix as a unified diff')
    .action((id: string, f: EmbargoFlags & { patch: string }) => run(f, () => ({ action: 'replace', id, patch: readText(f.patch, 'patch') })));
  client(embargo.command('rebuild').description("build an active embargo's project privately again now, on its latest published commit").argument('<id>', 'the embargo id (emb-…)')).action(
    (id: string, f: EmbargoFlags) => run(f, () => ({ action: 'rebuild', id })),
  );
  client(embargo.command('verify').description("check the embargo's last patched image: its signature and provenance, here, against the builder's signing key").argument('<id>', 'the embargo id (emb-…)'))
    .option('--signing-key <file>', "the builder's image signing public key, signing-key.pub.asc (env AIRLOCK_SIGNING_PUBLIC_KEY)", process.env.AIRLOCK_SIGNING_PUBLIC_KEY)
    .option('--lookaside <dir>', 'also write the verified signature and provenance there, laid out as a lookaside for skopeo (lookaside: file://DIR)')
    .action((id: string, f: EmbargoFlags & { signingKey?: string; lookaside?: string }) =>
      withJsonErrors(f.json, async () => {
        if (!f.signingKey) throw missing('signing-key', "--signing-key FILE (or AIRLOCK_SIGNING_PUBLIC_KEY): the builder's image signing public key");
        const signingKey = await readSigningPublicKey(readText(f.signingKey, 'signing-key'), f.signingKey);
        const result = await embargoRequest({ action: 'artifacts', id }, f);
        if (result.action !== 'artifacts') throw new InternalError(`the builder answered ${result.action} to artifacts`);
        const verified = await verifyArtifacts(result, signingKey);
        if (f.lookaside) verified.lookaside = await writeVerifiedLookaside(result, f.lookaside);
        process.stdout.write(f.json ? `${JSON.stringify(verified)}\n` : formatVerified(verified));
      }),
    );
  client(embargo.command('logs').description("an embargo's private build log").argument('<id>', 'the embargo id (emb-…)')).action((id: string, f: EmbargoFlags) =>
    run(f, () => ({ action: 'logs', id })),
  );
}

/** Sign, encrypt and send one request; the builder's answer, decrypted and checked, or its error thrown. */
export async function embargoRequest(ask: EmbargoAsk, f: EmbargoFlags): Promise<EmbargoResult> {
  const builder = parseServerUrl(f.builder);
  if (!f.key) throw missing('key', '--key FILE (or AIRLOCK_EMBARGO_KEY): your private key');
  if (!f.builderKey) throw missing('builder-key', "--builder-key FILE (or AIRLOCK_BUILDER_KEY): the builder's embargo public key");
  const passphrase = process.env.AIRLOCK_KEY_PASSPHRASE;
  const member = await loadEmbargoKey(readText(f.key, 'key'), passphrase || undefined, { source: f.key });
  const builderKey = await readBuilderKey(readText(f.builderKey, 'builder-key'), f.builderKey);
  const { armored, request } = await makeRequest(ask, { memberKey: member.privateKey, builderKey });
  const url = new URL('/v1/embargo', builder);
  let res: Response;
  try {
    res = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/pgp-encrypted' }, body: armored, signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS) });
  } catch (e) {
    const cause = (e as { cause?: { code?: string } }).cause;
    const why = (e as Error).name === 'TimeoutError' ? `no answer within ${REQUEST_TIMEOUT_MS / 1000} s` : (cause?.code ?? (e as Error).message);
    throw new InternalError(`cannot reach the builder at ${builder.href}: ${why}`, { cause: e });
  }
  const text = await res.text();
  if (res.status === 404) throw new NotFoundError(`${builder.href} has no embargo lane (404): its embargo key is not configured`);
  if (!res.ok) throw errorFromAnswer(res.status, text, 'POST /v1/embargo');
  const response = await openResponse(text, { memberKey: member.privateKey, builderKey, nonce: request.nonce });
  if (!response.ok) throw errorFromAnswer(response.error.code === 'AIRLOCK_E_INTERNAL' ? 500 : 400, JSON.stringify(response.error), 'the builder');
  return response.result;
}

function readText(file: string, flag: string): string {
  let size: number;
  try {
    size = statSync(file).size;
  } catch (e) {
    throw new InvalidInputError([{ file, path: flag, message: `cannot read: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, severity: 'error' }]);
  }
  if (size > MAX_INPUT_FILE_BYTES) throw new InvalidInputError([{ file, path: flag, message: `larger than ${MAX_INPUT_FILE_BYTES} bytes`, severity: 'error' }]);
  return readFileSync(file, 'utf8');
}

function missing(flag: string, what: string): InvalidInputError {
  return new InvalidInputError([{ file: 'command line', path: flag, message: `missing: ${what}`, severity: 'error' }]);
}
