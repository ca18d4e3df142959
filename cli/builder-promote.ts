/**
 * `airlock builder promote --config builder.yaml --project P --commit C [--branch B]`: ask the
 * running builder, on its own host, to promote a commit (again): after a promotion failed (the
 * registry was down) or was refused (the commit was not yet on a protected branch) and the cause
 * is fixed. Nothing is bypassed: it reads the hint key from the builder's SecretStore, signs a hint
 * exactly as the CI does (shared/hints/hint-auth.ts) and posts it to the builder's own address
 * (`listen` in the config), so the builder checks it like any hint and re-derives every fact. The
 * hint's `ciRun` is `operator:<host>`, which the audit record of the hint keeps (with `retryOf`
 * when it retries a refused or failed promotion). A commit already published is not promoted again.
 *
 * It then polls `POST /v1/promotions/status` until the promotion ends and prints the outcome.
 * Exit codes: 0 published (now or before) · 1 refused or failed (the step and reason printed) ·
 * 2 bad input (usage, config, a hint the builder refuses to read) · 3 the builder does not answer.
 */
import { hostname } from 'node:os';
import type { Command } from 'commander';
import { InvalidInputError } from '#shared/errors.js';
import { signHint } from '#shared/hints/hint-auth.js';
import { createLogger } from '#shared/logging.js';
import { parseOrThrow } from '#shared/schemas/issues.js';
import { PROMOTION_HINT_VERSION, PromotionHint } from '#shared/schemas/promotion-hint.js';
import { loadBuilderConfig, type BuilderConfig } from '../trusted-builder/config.js';
import { loadPromotionPolicy, projectPolicy } from '../trusted-builder/policy/promotion.js';
import { loadSecretsPolicy } from '../trusted-builder/policy/secrets.js';
import { openSecretStore } from '../trusted-builder/service.js';

export const PROMOTE_EXIT = { published: 0, notPublished: 1, badInput: 2, unreachable: 3 } as const;

export interface PromoteFlags {
  config: string;
  project: string;
  commit: string;
  branch?: string;
  /** Between two status polls (tests shorten it). */
  pollMs?: number;
}

interface Io {
  out: (s: string) => void;
  err: (s: string) => void;
  sleep: (ms: number) => Promise<void>;
}

const DEFAULT_IO: Io = {
  out: (s) => void process.stdout.write(s),
  err: (s) => void process.stderr.write(s),
  sleep: (ms) => new Promise((r) => setTimeout(r, ms)),
};

export function registerBuilderPromoteCommand(builder: Command): void {
  builder
    .command('promote')
    .description('ask the running builder (on its host) to promote a commit again, as a signed hint; waits for the outcome')
    .requiredOption('--config <file>', 'the builder config (YAML)')
    .requiredOption('--project <name>', 'the project, as named in the promotion policy')
    .requiredOption('--commit <sha>', 'the full commit id (40 or 64 hex digits)')
    .option('--branch <name>', "the branch the commit is on (default: the project's first protected branch)")
    .action(async (f: PromoteFlags) => {
      process.exitCode = await runPromote(f);
    });
}

/** The action of `builder promote`; returns the exit code. Config and secret problems throw (cli/main.ts: exit 2 or 3). */
export async function runPromote(f: PromoteFlags, io: Io = DEFAULT_IO): Promise<number> {
  const config = loadBuilderConfig(f.config);
  const secretsPolicy = loadSecretsPolicy(config.policies.secrets);
  const policy = loadPromotionPolicy(config.policies.promotion);
  // The builder decides: an unknown project is sent all the same, and refused by it, audited.
  const branch = f.branch ?? projectPolicy(policy.policy, f.project)?.protectedBranches[0] ?? 'master';
  const hint = parseOrThrow(
    PromotionHint,
    { version: PROMOTION_HINT_VERSION, project: f.project, branch, commit: f.commit, ciRun: `operator:${hostname().replace(/[^A-Za-z0-9._-]/g, '-').slice(0, 100) || 'builder'}` },
    'airlock builder promote',
  );
  const store = openSecretStore(config, createLogger({ level: 'warn', name: 'airlock-builder-promote' }));
  let secret: Buffer;
  try {
    const v = await store.read(secretsPolicy.builder.hintSecret);
    if (typeof v.secret !== 'string' || v.secret === '') throw new InvalidInputError([{ file: `secret ${secretsPolicy.builder.hintSecret}`, path: 'secret', message: 'missing', severity: 'error' }]);
    secret = Buffer.from(v.secret, 'utf8');
  } finally {
    await Promise.resolve(store.close()).catch(() => undefined);
  }

  const base = builderBase(config);
  const post = async (path: string, body: object): Promise<{ status: number; json: Record<string, unknown> } | { unreachable: string }> => {
    const raw = Buffer.from(JSON.stringify(body));
    try {
      const res = await fetch(`${base}${path}`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', ...signHint(secret, raw, Math.floor(Date.now() / 1000)) },
        body: raw,
        redirect: 'manual',
        signal: AbortSignal.timeout(30_000),
      });
      const text = await res.text();
      let json: Record<string, unknown> = {};
      try {
        json = JSON.parse(text) as Record<string, unknown>;
      } catch {
        json = { message: text.slice(0, 500) };
      }
      return { status: res.status, json };
    } catch (e) {
      const cause = (e as { cause?: { code?: unknown } }).cause?.code;
      return { unreachable: typeof cause === 'string' ? cause : (e as Error).message };
    }
  };
  const unreachable = (why: string): number => {
    io.err(`airlock: the builder does not answer at ${base} (${why}): is \`airlock builder serve --config ${f.config}\` running, and is this its host?\n`);
    return PROMOTE_EXIT.unreachable;
  };
  const refusedRequest = (status: number, json: Record<string, unknown>): number => {
    const why = `${typeof json.code === 'string' ? `${json.code}: ` : ''}${String(json.message ?? '')}`;
    if (status === 401) {
      io.err(
        `airlock: ${base}/v1/hints refused the hint (${why}): the running builder read another hint key at start than the one at ${secretsPolicy.builder.hintSecret} in its SecretStore now; restart the builder after changing the key\n`,
      );
      return PROMOTE_EXIT.notPublished;
    }
    io.err(`airlock: ${base} answered ${status}: ${why}\n`);
    return status < 500 && status !== 429 ? PROMOTE_EXIT.badInput : PROMOTE_EXIT.unreachable;
  };

  const sent = await post('/v1/hints', hint);
  if ('unreachable' in sent) return unreachable(sent.unreachable);
  if (sent.status !== 202) return refusedRequest(sent.status, sent.json);
  const key = `${hint.project}@${hint.commit}`;
  if (sent.json.queued === true) io.err(`${key}: queued${typeof sent.json.retryOf === 'string' ? ` (its last promotion was ${sent.json.retryOf}: every step runs again)` : ''}\n`);
  else if (sent.json.reason !== 'already published' && sent.json.reason !== 'already queued') {
    io.out(`${key}: not queued: ${String(sent.json.reason ?? 'no reason given')}\n`);
    return PROMOTE_EXIT.notPublished;
  } else io.err(`${key}: ${String(sent.json.reason)}\n`);

  let last = '';
  for (;;) {
    const s = await post('/v1/promotions/status', { project: hint.project, commit: hint.commit });
    if ('unreachable' in s) return unreachable(s.unreachable);
    if (s.status !== 200) return refusedRequest(s.status, s.json);
    const state = String(s.json.state);
    const result = (s.json.result ?? {}) as Record<string, unknown>;
    if (state === 'published') {
      io.out(`${key}: published ${String(result.reference ?? '')} ${String(result.digest ?? '')}\n`);
      return PROMOTE_EXIT.published;
    }
    if (state === 'refused' || state === 'failed') {
      io.out(`${key}: ${state} at ${String(result.step ?? '?')}: ${String(result.reason ?? '')}\n`);
      return PROMOTE_EXIT.notPublished;
    }
    if (state !== last) io.err(`${key}: ${state}\n`);
    last = state;
    await io.sleep(f.pollMs ?? 1000);
  }
}

/** The builder's own address from its `listen` (a wildcard host is reached on loopback). */
export function builderBase(config: Pick<BuilderConfig, 'listen'>): string {
  const h = config.listen.host;
  const host = h === '0.0.0.0' || h === '' ? '127.0.0.1' : h === '::' ? '[::1]' : h.includes(':') ? `[${h}]` : h;
  return `http://${host}:${config.listen.port}`;
}
