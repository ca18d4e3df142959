/**
 * The security team: who may use the embargo lane. SRE-owned, in the repository like every policy:
 * `policies/security-team/<name>.asc`, one member per file, each an ASCII-armored OpenPGP *public*
 * key; the file name (without `.asc`) is the member's name. `README.md` and dotfiles are ignored.
 *
 * A member's key verifies the signature of every request they send and is a recipient of every
 * embargo file at rest, so it must be able to sign and to encrypt. Loaded once when the builder
 * starts (a change takes effect at the next start, which also re-encrypts the store to the new
 * team). Refused, with every problem listed in one PolicyInvalidError naming the file:
 * - a file holding a private key (put there by mistake: it is in the repository now, so the key
 *   must be revoked and replaced, not just moved);
 * - not exactly one key, or not a parseable armored key;
 * - a key without a valid self-signature, or with no valid signing or encryption (sub)key;
 * - a v6 key (RFC 9580): embargo files must stay readable with gpg 2.2, which cannot decrypt a
 *   message that also has a v6 recipient;
 * - the same fingerprint (or any key id) in two files;
 * - a file name that is not a member name, and any other file (e.g. `alice.gpg`, `alice.asc~`).
 * A revoked or expired key is refused too, but only that member is left out (listed in `excluded`,
 * a warning naming the file): a member's key expiring must not stop the builder's next start.
 */
import { lstatSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import * as openpgp from 'openpgp';
import { PolicyInvalidError, type Issue } from '#shared/errors.js';

export const MEMBER_NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const KEY_SUFFIX = '.asc';
/** A public key with its certifications is a few KiB; anything this large is not one. */
const MAX_KEY_FILE_BYTES = 1024 * 1024; // 1 MiB
const IGNORED_FILES = new Set(['README.md']);

export interface TeamMember {
  /** The file name without `.asc`. */
  readonly name: string;
  /** The file the key came from (for messages). */
  readonly file: string;
  /** The primary key's fingerprint, 40 uppercase hex digits. */
  readonly fingerprint: string;
  readonly key: openpgp.PublicKey;
}

export class SecurityTeam {
  readonly #byKeyId = new Map<string, TeamMember>();

  constructor(
    readonly dir: string,
    readonly members: readonly TeamMember[],
    /** Members left out because their key is revoked or expired (warnings naming the file). */
    readonly excluded: readonly Issue[] = [],
  ) {
    for (const m of members) for (const id of m.key.getKeyIDs()) this.#byKeyId.set(id.toHex(), m);
  }

  /** The member whose primary key or subkey has this key id (a signature's issuer). */
  memberFor(keyId: openpgp.KeyID): TeamMember | undefined {
    return this.#byKeyId.get(keyId.toHex());
  }

  get keys(): openpgp.PublicKey[] {
    return this.members.map((m) => m.key);
  }

  /** Sorted: what the store records as the recipients of its files. */
  get fingerprints(): string[] {
    return this.members.map((m) => m.fingerprint).sort();
  }
}

/** Read and check every member key in `dir`; see the module comment for what is refused. */
export async function loadSecurityTeam(dir: string, opts: { now?: Date } = {}): Promise<SecurityTeam> {
  const now = opts.now ?? new Date();
  const issues: Issue[] = [];
  const excluded: Issue[] = [];
  const add = (file: string, message: string): void => {
    issues.push({ file, path: '', message, severity: 'error' });
  };
  let names: string[];
  try {
    names = readdirSync(dir).sort();
  } catch (e) {
    throw new PolicyInvalidError([{ file: dir, path: '', message: `cannot read the security team directory: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, severity: 'error' }]);
  }
  const members: TeamMember[] = [];
  for (const entry of names) {
    if (IGNORED_FILES.has(entry) || entry.startsWith('.')) continue;
    const file = join(dir, entry);
    if (!entry.endsWith(KEY_SUFFIX)) {
      add(file, `not a member key: the directory holds only <name>${KEY_SUFFIX} files (armored public keys) and README.md`);
      continue;
    }
    const name = entry.slice(0, -KEY_SUFFIX.length);
    if (!MEMBER_NAME_PATTERN.test(name)) add(file, `"${name}" is not a member name (1-64 of A-Z a-z 0-9 . _ -, starting with a letter or digit)`);
    const member = await readMember(file, name, now, (m) => add(file, m), (m) => excluded.push({ file, path: '', message: `left out of the team: ${m}`, severity: 'warning' }));
    if (member) members.push(member);
  }
  const seen = new Map<string, TeamMember>();
  for (const m of members) {
    const clash = m.key.getKeyIDs().map((id) => seen.get(id.toHex())).find((other) => other !== undefined);
    if (clash) add(m.file, `the key (fingerprint ${m.fingerprint}) shares a key id with ${clash.file} (fingerprint ${clash.fingerprint}): one key, one member`);
    else for (const id of m.key.getKeyIDs()) seen.set(id.toHex(), m);
  }
  if (issues.length > 0) throw new PolicyInvalidError(issues);
  return new SecurityTeam(dir, members, excluded);
}

async function readMember(file: string, name: string, now: Date, refuse: (message: string) => void, exclude: (message: string) => void): Promise<TeamMember | undefined> {
  const st = lstatSync(file);
  if (!st.isFile()) return void refuse('not a regular file');
  if (st.size > MAX_KEY_FILE_BYTES) return void refuse(`larger than ${MAX_KEY_FILE_BYTES} bytes: not a public key`);
  const text = readFileSync(file, 'utf8');
  if (/-----BEGIN PGP PRIVATE KEY BLOCK-----/.test(text)) {
    return void refuse('holds a PRIVATE key: only public keys belong here (gpg --armor --export). It is in the repository now: revoke that key and make a new one');
  }
  const blocks = text.match(/-----BEGIN PGP [A-Z ]+-----/g)?.length ?? 0;
  if (blocks > 1) return void refuse(`holds ${blocks} armored blocks; one member, one key`);
  let keys: openpgp.Key[];
  try {
    keys = await openpgp.readKeys({ armoredKeys: text });
  } catch (e) {
    return void refuse(`not an armored OpenPGP public key: ${(e as Error).message}`);
  }
  if (keys.length !== 1) return void refuse(`holds ${keys.length} keys; one member, one key`);
  const key = keys[0] as openpgp.Key;
  if (key.isPrivate()) return void refuse('holds a PRIVATE key: only public keys belong here; revoke that key and make a new one');
  const problems = await keyProblems(key);
  if (problems.length > 0) return void problems.forEach(refuse);
  const lapsed = await lapse(key, now);
  if (lapsed) return void exclude(lapsed);
  return { name, file, fingerprint: key.getFingerprint().toUpperCase(), key: key as openpgp.PublicKey };
}

/** Why this key could never serve a member, whatever the date (empty when it could). */
async function keyProblems(key: openpgp.Key): Promise<string[]> {
  const problems: string[] = [];
  if (key.keyPacket.version !== 4) problems.push(`a v${key.keyPacket.version} key: use a v4 key (gpg 2.2 cannot read files that have a v${key.keyPacket.version} recipient)`);
  if (await key.isRevoked()) return problems; // left out as lapsed
  // A null date: validity in time is `lapse`'s question, not this one.
  await key.getSigningKey(undefined, null).catch((e: unknown) => problems.push(`the key cannot sign requests: ${(e as Error).message}`));
  await key.getEncryptionKey(undefined, null).catch((e: unknown) => problems.push(`the key has no encryption subkey (files and answers are encrypted to it): ${(e as Error).message}`));
  return problems;
}

/** Why this key is not valid at `now` (revoked, expired, its subkeys expired), or undefined. */
async function lapse(key: openpgp.Key, now: Date): Promise<string | undefined> {
  if (await key.isRevoked(undefined, undefined, now)) return 'the key is revoked';
  try {
    await key.verifyPrimaryKey(now);
    await key.getSigningKey(undefined, now);
    await key.getEncryptionKey(undefined, now);
    return undefined;
  } catch (e) {
    const expires = await key.getExpirationTime().catch(() => null);
    const when = expires instanceof Date && expires.getTime() <= now.getTime() ? ` on ${expires.toISOString()}` : '';
    return `the key is not valid now (expired${when}, or its signing or encryption subkey expired or was revoked): ${(e as Error).message}`;
  }
}
