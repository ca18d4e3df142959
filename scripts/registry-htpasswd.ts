// Credentials for the private registry, run by scripts/bootstrap.sh (there is no `htpasswd` binary
// on the machine: apache2-utils is not installed, and docker-registry only accepts bcrypt).
//
//   tsx scripts/registry-htpasswd.ts CREDENTIALS_JSON HTPASSWD USERNAME
//
// CREDENTIALS_JSON (`{"username","password"}`, mode 0600) is the source of truth: it is created with
// a random password only when missing, and never rewritten. HTPASSWD is rewritten only when it does
// not hold a bcrypt hash of exactly that user and password. Prints `changed` or `unchanged`, so the
// caller knows whether a running registry must be restarted. The password never goes through argv.
import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import bcrypt from 'bcryptjs';

export interface RegistryCredentials {
  username: string;
  password: string;
}

/** bcrypt cost. The registry checks it on every request, so each step up doubles per-request CPU. */
export const BCRYPT_ROUNDS = 10;

/** One htpasswd line for docker-registry's `auth.htpasswd` (bcrypt is the only scheme it accepts). */
export function htpasswdLine(username: string, password: string, rounds = BCRYPT_ROUNDS): string {
  if (!/^[A-Za-z0-9._-]+$/.test(username)) throw new Error(`unusable registry user name ${JSON.stringify(username)}`);
  return `${username}:${bcrypt.hashSync(password, rounds)}\n`;
}

/** A fresh random password: 24 bytes, base64url (no characters that need quoting anywhere). */
export function randomPassword(): string {
  return randomBytes(24).toString('base64url');
}

/** Write `text` to `file` with `mode` by rename, so no reader ever sees a partial file. */
export function writeAtomic(file: string, text: string, mode: number): void {
  const part = `${file}.part`;
  writeFileSync(part, text, { mode });
  chmodSync(part, mode); // in case `.part` was left behind by an earlier run with another mode
  renameSync(part, file);
}

function readCredentials(file: string): RegistryCredentials {
  const value = JSON.parse(readFileSync(file, 'utf8')) as Partial<RegistryCredentials>;
  if (typeof value.username !== 'string' || typeof value.password !== 'string' || value.password === '') {
    throw new Error(`${file}: expected {"username": string, "password": string}`);
  }
  return { username: value.username, password: value.password };
}

/** Does `htpasswd` hold a hash of exactly `creds` (and nothing for other users)? */
function htpasswdMatches(file: string, creds: RegistryCredentials): boolean {
  if (!existsSync(file)) return false;
  const lines = readFileSync(file, 'utf8').split('\n').filter((l) => l !== '');
  const line = lines.length === 1 ? lines[0]! : '';
  const colon = line.indexOf(':');
  const hash = line.slice(colon + 1);
  return colon > 0 && line.slice(0, colon) === creds.username && /^\$2[aby]\$/.test(hash) && bcrypt.compareSync(creds.password, hash);
}

/** Make both files consistent; true when the htpasswd file was (re)written. */
export function ensureRegistryCredentials(credentialsFile: string, htpasswdFile: string, username: string): boolean {
  if (!existsSync(credentialsFile)) {
    writeAtomic(credentialsFile, `${JSON.stringify({ username, password: randomPassword() })}\n`, 0o600);
  }
  const creds = readCredentials(credentialsFile);
  if (htpasswdMatches(htpasswdFile, creds)) return false;
  writeAtomic(htpasswdFile, htpasswdLine(creds.username, creds.password), 0o600);
  return true;
}

if (process.argv[1]?.endsWith('registry-htpasswd.ts')) {
  const usage = `usage: npx tsx scripts/registry-htpasswd.ts CREDENTIALS_JSON HTPASSWD USERNAME

Run by scripts/bootstrap.sh. Creates CREDENTIALS_JSON ({"username","password"}, 0600, a random
password) when it is missing, never rewrites it, and rewrites the registry's HTPASSWD file only when
it does not hold a bcrypt hash of exactly that user and password. Prints "changed" (restart the
registry) or "unchanged".
`;
  const args = process.argv.slice(2);
  if (args.includes('--help') || args.includes('-h')) {
    process.stdout.write(usage);
    process.exit(0);
  }
  const [credentialsFile, htpasswdFile, username] = args;
  if (!credentialsFile || !htpasswdFile || !username || args.length !== 3) {
    process.stderr.write(usage);
    process.exit(2);
  }
  process.stdout.write(ensureRegistryCredentials(credentialsFile, htpasswdFile, username) ? 'changed\n' : 'unchanged\n');
}
