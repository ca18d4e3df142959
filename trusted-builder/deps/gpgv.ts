/**
 * An InRelease checked with `gpgv` against the keyring the SRE names (no key is ever fetched from
 * the network), and the signed text gpgv hands back (`--output`): only that text is read, never
 * what surrounds the signature in the file. A bad signature, a signature by a key not in the
 * keyring, or no signature at all is a refusal.
 */
import { execFile } from 'node:child_process';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { DependencyFailed, DependencyRefused } from './errors.js';

const GPGV_TIMEOUT_MS = 60_000;

/** The signed text of `inRelease` (its bytes), checked against `keyring`; files under `scratch` (a path prefix). */
export async function verifyInRelease(inRelease: Buffer, keyring: string, scratch: string, what: string): Promise<string> {
  const input = `${scratch}.in`;
  const output = `${scratch}.signed`;
  // An empty home of its own: gpgv reads no keyring but the one named (not ~/.gnupg/trustedkeys.kbx).
  const home = `${scratch}.gnupg`;
  await mkdir(home, { mode: 0o700 });
  await writeFile(input, inRelease, { mode: 0o600 });
  try {
    const { code, status, stderr } = await new Promise<{ code: number; status: string; stderr: string }>((resolve, reject) => {
      execFile(
        'gpgv',
        ['--status-fd', '1', '--keyring', keyring, '--output', output, input],
        { timeout: GPGV_TIMEOUT_MS, maxBuffer: 1024 * 1024, env: { PATH: process.env.PATH ?? '/usr/bin:/bin', LC_ALL: 'C', GNUPGHOME: home } },
        (err, stdout, stderr) => {
          if (err && typeof (err as { code?: unknown }).code !== 'number') return reject(err);
          resolve({ code: err ? Number((err as { code?: number }).code) : 0, status: stdout, stderr });
        },
      );
    }).catch((e: unknown) => {
      throw new DependencyFailed(`${what}: cannot run gpgv: ${(e as Error).message}`);
    });
    const lines = status.split('\n');
    const valid = lines.filter((l) => l.startsWith('[GNUPG:] VALIDSIG ')).length;
    const bad = lines.some((l) => /^\[GNUPG:\] (BADSIG|ERRSIG|EXPKEYSIG|REVKEYSIG|EXPSIG)\b/.test(l));
    if (code !== 0 || valid === 0 || bad) {
      const why = lines.find((l) => /^\[GNUPG:\] (BADSIG|ERRSIG|NO_PUBKEY|NODATA|EXPKEYSIG|REVKEYSIG|EXPSIG)\b/.test(l)) ?? stderr.split('\n').find((l) => l.trim() !== '') ?? `gpgv exit ${code}`;
      throw new DependencyRefused(`${what}: the InRelease signature does not verify against ${keyring}: ${why.replace('[GNUPG:] ', '').slice(0, 300)}`);
    }
    return (await readFile(output)).toString('utf8');
  } finally {
    await rm(input, { force: true });
    await rm(output, { force: true });
    await rm(home, { recursive: true, force: true });
  }
}
