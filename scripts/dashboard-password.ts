// The login of the trusted builder's page (`/ui`): the value of the secret at `builder.dashboard` of
// policies/secrets.yaml, `{"username": …, "passwordBcrypt": …}` (trusted-builder/dashboard/basic-auth.ts).
//
//   printf '%s' "$PASSWORD" | npx tsx scripts/dashboard-password.ts --username NAME [--out FILE] [--rounds 12]
//   npx tsx scripts/dashboard-password.ts --username NAME --out FILE     # no stdin: a random password
//
// The password comes on stdin (never argv, which `ps` shows); from a terminal, a random one is made
// and printed once on stderr. The secret's JSON goes to stdout, or to FILE (0600, replaced by rename):
// for the file SecretStore that is `<dir>/airlock/builder-dashboard.json`; for Vault,
// `vault kv put secret/airlock/builder-dashboard @FILE`. The builder reads it at start.
// The user name is a secret value like any other there, so the leak check looks for it in every
// image it publishes: pick one that no image will contain (e.g. `airlock-sre-7f3c`), 6 characters or more.
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import bcrypt from 'bcryptjs';
import { BCRYPT_MAX_BYTES, parseDashboardLogin, type DashboardLogin } from '../trusted-builder/dashboard/basic-auth.js';
import { randomPassword, writeAtomic } from './registry-htpasswd.js';

/** bcrypt cost: the page checks it once per login (then remembers the login for a few minutes). */
export const DASHBOARD_BCRYPT_ROUNDS = 12;

/** The secret's value for `username` and `password`; refuses what the builder would refuse. */
export function dashboardSecret(username: string, password: string, rounds = DASHBOARD_BCRYPT_ROUNDS): DashboardLogin {
  if (password === '') throw new Error('an empty password');
  if (Buffer.byteLength(password) > BCRYPT_MAX_BYTES) throw new Error(`a password longer than ${BCRYPT_MAX_BYTES} bytes (bcrypt would ignore the rest)`);
  return parseDashboardLogin({ username, passwordBcrypt: bcrypt.hashSync(password, rounds) }, 'dashboard login');
}

if (process.argv[1]?.endsWith('dashboard-password.ts')) {
  const usage = `usage: printf %s "$PASSWORD" | npx tsx scripts/dashboard-password.ts --username NAME [--out FILE] [--rounds 4-31]
       npx tsx scripts/dashboard-password.ts --username NAME [--out FILE]     (no stdin: a random password, shown once)

Makes the login of the trusted builder's page (/ui): the value of the secret at builder.dashboard of
policies/secrets.yaml, {"username", "passwordBcrypt"}. Written to FILE (0600) or stdout. File
SecretStore: <dir>/airlock/builder-dashboard.json; Vault (KV v2):
vault kv put secret/airlock/builder-dashboard @FILE. The builder reads it at start.
`;
  let values: { username?: string | undefined; out?: string | undefined; rounds?: string | undefined; help?: boolean | undefined };
  try {
    ({ values } = parseArgs({ options: { username: { type: 'string' }, out: { type: 'string' }, rounds: { type: 'string', default: String(DASHBOARD_BCRYPT_ROUNDS) }, help: { type: 'boolean', short: 'h', default: false } } }));
  } catch (e) {
    process.stderr.write(`dashboard-password: ${e instanceof Error ? e.message : String(e)}\n${usage}`);
    process.exit(2);
  }
  if (values.help) {
    process.stdout.write(usage);
    process.exit(0);
  }
  const rounds = Number(values.rounds);
  if (!values.username || !Number.isInteger(rounds) || rounds < 4 || rounds > 31) {
    process.stderr.write(usage);
    process.exit(2);
  }
  let password: string;
  if (process.stdin.isTTY) {
    password = randomPassword();
    process.stderr.write(`password (shown only now): ${password}\n`);
  } else {
    password = readFileSync(0, 'utf8').replace(/\r?\n$/, '');
  }
  const text = `${JSON.stringify(dashboardSecret(values.username, password, rounds))}\n`;
  if (values.out) {
    writeAtomic(values.out, text, 0o600);
    process.stderr.write(`wrote ${values.out}\n`);
  } else {
    process.stdout.write(text);
  }
}
