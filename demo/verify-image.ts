/**
 * The consumer's side, with the real skopeo: the shipped policies/containers-policy.json and
 * policies/registries.d/airlock.yaml, adapted only where a deployment adapts them (the builder's
 * public key file, the registry's host:port, the builder's lookaside URL), written to `dir`.
 * Registry credentials go to skopeo in a 0600 auth file, never on its command line.
 */
import { execFile } from 'node:child_process';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { parse, stringify } from 'yaml';
import { REPO_ROOT } from './demo-root.js';

const run = promisify(execFile);
/** The scope both shipped files are written for. */
const SHIPPED_REGISTRY = '127.0.0.1:5000';
const SKOPEO_TIMEOUT_MS = 60_000;

export interface Consumer {
  /** Copy `reference` under the policy; resolves with skopeo's output, or rejects with its error. */
  pull(reference: string): Promise<void>;
  /** Push a local engine image to the registry with no signature at all (policy bypassed). */
  pushUnsigned(localImage: string, reference: string): Promise<void>;
  policyFile: string;
}

export function consumer(o: { dir: string; registry: { host: string; username: string; password: string }; publicKeyFile: string; lookasideUrl: string }): Consumer {
  mkdirSync(o.dir, { recursive: true, mode: 0o700 });
  const policy = JSON.parse(readFileSync(join(REPO_ROOT, 'policies', 'containers-policy.json'), 'utf8')) as { transports: { docker: Record<string, { keyPath?: string }[]> } };
  const scope = policy.transports.docker[SHIPPED_REGISTRY];
  if (!scope) throw new Error(`policies/containers-policy.json has no docker scope ${SHIPPED_REGISTRY}`);
  for (const req of scope) if (req.keyPath !== undefined) req.keyPath = o.publicKeyFile;
  policy.transports.docker = { [o.registry.host]: scope };
  const policyFile = join(o.dir, 'policy.json');
  writeFileSync(policyFile, `${JSON.stringify(policy, null, 2)}\n`);

  const registriesD = join(o.dir, 'registries.d');
  mkdirSync(registriesD, { recursive: true });
  const shipped = parse(readFileSync(join(REPO_ROOT, 'policies', 'registries.d', 'airlock.yaml'), 'utf8')) as { docker: Record<string, { lookaside: string }> };
  const entry = shipped.docker[SHIPPED_REGISTRY];
  if (!entry) throw new Error(`policies/registries.d/airlock.yaml has no entry for ${SHIPPED_REGISTRY}`);
  writeFileSync(join(registriesD, 'airlock.yaml'), stringify({ docker: { [o.registry.host]: { ...entry, lookaside: o.lookasideUrl } } }));

  const authFile = join(o.dir, 'auth.json');
  const auth = Buffer.from(`${o.registry.username}:${o.registry.password}`).toString('base64');
  writeFileSync(authFile, JSON.stringify({ auths: { [o.registry.host]: { auth } } }), { mode: 0o600 });

  let n = 0;
  return {
    policyFile,
    async pull(reference) {
      const out = join(o.dir, `pulled-${++n}`);
      try {
        await run('skopeo', ['--policy', policyFile, '--registries.d', registriesD, 'copy', '--quiet', '--src-tls-verify=false', '--src-authfile', authFile, `docker://${reference}`, `dir:${out}`], { timeout: SKOPEO_TIMEOUT_MS });
      } finally {
        rmSync(out, { recursive: true, force: true });
      }
    },
    async pushUnsigned(localImage, reference) {
      await run('skopeo', ['copy', '--quiet', '--insecure-policy', '--dest-tls-verify=false', '--dest-authfile', authFile, `docker-daemon:${localImage}`, `docker://${reference}`], { timeout: SKOPEO_TIMEOUT_MS });
    },
  };
}

/** Why a command failed: skopeo's `msg="…"`, else the first line of its stderr. */
export function firstErrorLine(e: unknown): string {
  const stderr = (e as { stderr?: string }).stderr || ((e as Error).message ?? String(e));
  const line = stderr.split('\n').find((l) => l.trim() !== '')?.trim() ?? '';
  return /\bmsg="((?:[^"\\]|\\.)*)"/.exec(line)?.[1]?.replace(/\\"/g, '"') ?? line;
}
