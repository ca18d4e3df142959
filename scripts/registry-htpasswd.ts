// Logins of a registry, run by scripts/bootstrap.sh (there is no `htpasswd` binary on the machine:
// apache2-utils is not installed, and docker-registry only accepts bcrypt).
//
//   tsx scripts/registry-htpasswd.ts CREDENTIALS_JSON HTPASSWD USERNAME          one login
//   tsx scripts/registry-htpasswd.ts --users HTPASSWD USERNAME=CREDENTIALS_JSON…  several
//
// Each CREDENTIALS_JSON (`{"username","password"}`, mode 0600) is the source of truth: it is created
// with a random password only when missing, and never rewritten. HTPASSWD is rewritten only when it
// does not hold a bcrypt hash of exactly those users and passwords (no other user). Prints `changed`
// or `unchanged`, so the caller knows whether a running registry must be restarted. No password
// ever goes through argv.
import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
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
  // A `.part` left behind (or put there: a link to elsewhere) is removed, never written through.
  rmSync(part, { force: true });
  writeFileSync(part, text, { mode, flag: 'wx' });
  chmodSync(part, mode); // the umask may have narrowed `mode`
  renameSync(part, file);
}

function readCredentials(file: string): RegistryCredentials {
  const value = JSON.parse(readFileSync(file, 'utf8')) as Partial<RegistryCredentials>;
  if (typeof value.username !== 'string' || typeof value.password !== 'string' || value.password === '') {
    throw new Error(`${file}: expected {"username": string, "password": string}`);
  }
  return { username: value.username, password: value.password };
}

/** Does `htpasswd` hold a hash of exactly each of `logins`, and nothing for any other user? */
function htpasswdMatches(file: string, logins: readonly RegistryCredentials[]): boolean {
  if (!existsSync(file)) return false;
  const lines = readFileSync(file, 'utf8').split('\n').filter((l) => l !== '');
  if (lines.length !== logins.length) return false;
  const hashes = new Map<string, string>();
  for (const line of lines) {
    const colon = line.indexOf(':');
    if (colon <= 0) return false;
    hashes.set(line.slice(0, colon), line.slice(colon + 1));
  }
  return logins.every((c) => {
    const hash = hashes.get(c.username);
    return hash !== undefined && /^\$2[aby]\$/.test(hash) && bcrypt.compareSync(c.password, hash);
  });
}

/** One login of a registry: the user it is created for, and its credentials file. */
export interface RegistryLogin {
  username: string;
  credentialsFile: string;
}

/**
 * Make every credentials file and the one htpasswd of all of them consistent (each file created
 * with a random password when missing, never rewritten); true when the htpasswd was (re)written.
 */
export function ensureRegistryLogins(htpasswdFile: string, logins: readonly RegistryLogin[]): boolean {
  if (logins.length === 0) throw new Error(`${htpasswdFile}: no login to write (a registry nobody can log in to)`);
  const creds = logins.map((l) => {
    if (!existsSync(l.credentialsFile)) writeAtomic(l.credentialsFile, `${JSON.stringify({ username: l.username, password: randomPassword() })}\n`, 0o600);
    const c = readCredentials(l.credentialsFile);
    // A file copied from another login must not slip that login into this registry.
    if (c.username !== l.username) throw new Error(`${l.credentialsFile} holds user ${JSON.stringify(c.username)}, not ${JSON.stringify(l.username)}: fix the file or the login it is named for`);
    return { file: l.credentialsFile, ...c };
  });
  const seen = new Map<string, string>();
  for (const c of creds) {
    const other = seen.get(c.username);
    if (other !== undefined) throw new Error(`${c.file} and ${other} both hold user ${JSON.stringify(c.username)}: each login of a registry needs a user of its own`);
    seen.set(c.username, c.file);
  }
  const wanted = creds.map(({ username, password }) => ({ username, password }));
  if (htpasswdMatches(htpasswdFile, wanted)) return false;
  writeAtomic(htpasswdFile, wanted.map((c) => htpasswdLine(c.username, c.password)).join(''), 0o600);
  return true;
}

/** Make both files consistent for one login; true when the htpasswd file was (re)written. */
export function ensureRegistryCredentials(credentialsFile: string, htpasswdFile: string, username: string): boolean {
  return ensureRegistryLogins(htpasswdFile, [{ username, credentialsFile }]);
}

if (process.argv[1]?.endsWith('registry-htpasswd.ts')) {
  const usage = `usage: npx tsx scripts/registry-htpasswd.ts CREDENTIALS_JSON HTPASSWD USERNAME
       npx tsx scripts/registry-htpasswd.ts --users HTPASSWD USERNAME=CREDENTIALS_JSON...

Run by scripts/bootstrap.sh. Creates each CREDENTIALS_JSON ({"username","password"}, 0600, a random
password) when it is missing, never rewrites it, and rewrites the registry's HTPASSWD file only when
it does not hold a bcrypt hash of exactly those users and passwords, and no other user (docker-
registry's htpasswd gives every user it lists all of the registry: list only who may read it all).
Prints "changed" (restart the registry) or "unchanged".
`;
  const args = process.argv.slice(2);
  if (args.includes('--help') || args.includes('-h')) {
    process.stdout.write(usage);
    process.exit(0);
  }
  const fail = (why: string): never => {
    process.stderr.write(`${why ? `registry-htpasswd: ${why}\n` : ''}${usage}`);
    process.exit(2);
  };
  let changed: boolean;
  if (args[0] === '--users') {
    const [, htpasswdFile, ...pairs] = args;
    if (!htpasswdFile || pairs.length === 0) fail('--users needs HTPASSWD and at least one USERNAME=CREDENTIALS_JSON');
    const logins = pairs.map((p) => {
      const eq = p.indexOf('=');
      if (eq <= 0 || eq === p.length - 1) fail(`${JSON.stringify(p)} is not USERNAME=CREDENTIALS_JSON`);
      return { username: p.slice(0, eq), credentialsFile: p.slice(eq + 1) };
    });
    changed = ensureRegistryLogins(htpasswdFile!, logins);
  } else {
    const [credentialsFile, htpasswdFile, username] = args;
    if (!credentialsFile || !htpasswdFile || !username || args.length !== 3 || args.some((a) => a.startsWith('-'))) fail('');
    changed = ensureRegistryCredentials(credentialsFile!, htpasswdFile!, username!);
  }
  process.stdout.write(changed ? 'changed\n' : 'unchanged\n');
}
