/**
 * The login of the builder's page: HTTP Basic (RFC 7617; browsers and playwright speak it with no
 * page code) against one `{username, passwordBcrypt}` from the SecretStore
 * (`builder.dashboard` of policies/secrets.yaml; scripts/dashboard-password.ts makes the value).
 *
 * - The user name is compared in constant time (sha256 of both, then `timingSafeEqual`), and the
 *   password is always checked with bcrypt, whether or not the name matched, so the answer's
 *   timing says nothing about which of the two was wrong.
 * - A header that passed is remembered (its sha256, never the header) for `PROVEN_FOR_MS`, so the
 *   page's polling does not cost a bcrypt each time; `known()` answers from that memory alone and
 *   lets the caller skip its rate limit of failed attempts (trusted-builder/dashboard/routes.ts).
 * - The credentials are read once, at start, like the builder's other secrets: a new password
 *   takes a restart.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import bcrypt from 'bcryptjs';
import { z } from 'zod';
import { InvalidInputError } from '#shared/errors.js';

/** What bcrypt reads of a password. */
export const BCRYPT_MAX_BYTES = 72;

/** A bcrypt hash as bcryptjs and htpasswd write it: `$2a$`/`$2b$`/`$2y$`, cost, 53 characters. */
const BCRYPT_HASH = /^\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}$/;

/** The secret's value. Strict: a plain `password` field is a mistake to refuse, not to ignore. */
export const DashboardLogin = z.strictObject({
  /** No `:` (Basic splits at the first one) and no control characters. */
  username: z.string().min(1).max(128).regex(/^[^:\p{Cc}]+$/u, 'no ":" and no control characters'),
  passwordBcrypt: z.string().regex(BCRYPT_HASH, 'a bcrypt hash ($2b$12$…)'),
});
export type DashboardLogin = z.infer<typeof DashboardLogin>;

/** How long a header that passed bcrypt is taken without checking it again. */
const PROVEN_FOR_MS = 5 * 60_000; // 5 min
/** Headers remembered at most (a few viewers; the oldest is forgotten first). */
const PROVEN_MAX = 32;
/** Longer headers are refused unread: bcrypt reads 72 bytes of a password anyway. */
const MAX_HEADER_CHARS = 1024;

/** The secret at `source`, checked; the error names the fields, never a value. */
export function parseDashboardLogin(value: Readonly<Record<string, string>>, source: string): DashboardLogin {
  const r = DashboardLogin.safeParse(value);
  if (r.success) return r.data;
  throw new InvalidInputError(r.error.issues.map((i) => ({ file: source, path: i.path.join('.') || '(value)', message: i.code === 'unrecognized_keys' ? `unknown field(s) ${i.keys.join(', ')}` : i.message, severity: 'error' as const })));
}

const sha256 = (text: string): Buffer => createHash('sha256').update(text, 'utf8').digest();

export class BasicAuth {
  private readonly user: Buffer;
  /** sha256 (hex) of a header that passed → until when it is taken as is. */
  private readonly proven = new Map<string, number>();

  constructor(
    private readonly login: DashboardLogin,
    private readonly now: () => number = Date.now,
  ) {
    this.user = sha256(login.username);
  }

  /** The `WWW-Authenticate` challenge of a 401. */
  readonly challenge = 'Basic realm="airlock trusted builder", charset="UTF-8"';

  /** Whether `authorization` passed `check` within the last few minutes (no bcrypt here). */
  known(authorization: string | undefined): boolean {
    if (!authorization || authorization.length > MAX_HEADER_CHARS) return false;
    const key = sha256(authorization).toString('hex');
    const until = this.proven.get(key);
    if (until === undefined) return false;
    if (until > this.now()) return true;
    this.proven.delete(key);
    return false;
  }

  /** Whether `authorization` carries the right user name and password. */
  async check(authorization: string | undefined): Promise<boolean> {
    if (this.known(authorization)) return true;
    const given = parseBasic(authorization);
    // Both checks always run: which one failed must not show in the time taken.
    const userOk = timingSafeEqual(sha256(given?.username ?? ''), this.user) && given !== undefined;
    const passwordOk = await bcrypt.compare(given?.password ?? '', this.login.passwordBcrypt);
    // bcrypt reads 72 bytes at most: a longer password would let any suffix in. None is made longer.
    const fits = Buffer.byteLength(given?.password ?? '') <= BCRYPT_MAX_BYTES;
    if (!userOk || !passwordOk || !fits) return false;
    this.remember(sha256(authorization!).toString('hex'));
    return true;
  }

  private remember(key: string): void {
    this.proven.delete(key);
    this.proven.set(key, this.now() + PROVEN_FOR_MS);
    for (const oldest of this.proven.keys()) {
      if (this.proven.size <= PROVEN_MAX) break;
      this.proven.delete(oldest);
    }
  }
}

/** `Basic base64(user:password)` → its parts; anything else → undefined. */
export function parseBasic(authorization: string | undefined): { username: string; password: string } | undefined {
  if (!authorization || authorization.length > MAX_HEADER_CHARS) return undefined;
  const m = /^Basic +([A-Za-z0-9+/]+={0,2}) *$/i.exec(authorization);
  if (!m) return undefined;
  const text = Buffer.from(m[1]!, 'base64').toString('utf8');
  const colon = text.indexOf(':');
  if (colon < 0) return undefined;
  return { username: text.slice(0, colon), password: text.slice(colon + 1) };
}
