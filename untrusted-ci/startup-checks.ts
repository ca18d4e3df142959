/**
 * What the CI checks before it starts, so that a wrong URL is found now and not at the first
 * change (docs/ci.md "Startup checks"):
 *
 * - every project's `url`: one `git ls-remote` through the hardened git runner (shared/git/git.ts;
 *   no credential prompt, a deadline). The remote refusing our access (authentication) or saying
 *   there is no such repository stops the start; a remote that does not answer (DNS, connection
 *   refused, the deadline) is a warning: the merger fetches again at each change.
 * - `hints.url`: one unsigned `POST <url>/v1/hints`. A real builder answers 401 (the signature is
 *   missing): the endpoint is there. 404 or 405 means the URL is not the builder's base URL: the
 *   start stops, naming it. No answer is a warning: hints are kept and sent once it answers.
 *
 * Every message names the URL and the fix. The checks run side by side; the start waits for all.
 */
import { GitFailedError, InvalidInputError, type Issue } from '#shared/errors.js';
import type { Logger } from '#shared/logging.js';
import { runGit } from '#shared/git/git.js';
import type { CiConfig } from './config.js';

/** Deadline of each check (a remote that answers nothing in this time is unreachable, not wrong). */
export const STARTUP_CHECK_TIMEOUT_MS = 15_000;

const AUTH = /Authentication failed|could not read (?:Username|Password)|terminal prompts disabled|Permission denied \(publickey|Host key verification failed|returned error: 40[13]\b|HTTP 40[13]\b|\b40[13] (?:Unauthorized|Forbidden)/i;
const NOT_FOUND = /does not appear to be a git repository|Repository not found|repository '[^']*' not found|No such file or directory|returned error: 404\b|HTTP 404\b|\b404 Not Found|not a git repository|Not a valid repository|project not found/i;

export type RemoteVerdict = { ok: true } | { ok: false; fatal: boolean; why: string };

/** What `git ls-remote` says about `url`. Never throws on what the remote answers. */
export async function probeRemote(url: string, timeoutMs = STARTUP_CHECK_TIMEOUT_MS): Promise<RemoteVerdict> {
  try {
    const r = await runGit(['ls-remote', '--end-of-options', url, 'HEAD'], { timeoutMs, maxOutputBytes: 64 * 1024, allowFail: [1, 2, 128] });
    if (r.code === 0) return { ok: true };
    const detail = lastLines(r.stderr);
    if (AUTH.test(r.stderr)) return { ok: false, fatal: true, why: `the remote refused access (${detail}): give the CI's host read access to it (an ssh key or https credentials git finds without a prompt), or fix the URL` };
    if (NOT_FOUND.test(r.stderr)) return { ok: false, fatal: true, why: `no repository there (${detail}): fix projects[].url (the repository's clone URL, or an absolute path to a local one)` };
    return { ok: false, fatal: false, why: `git ls-remote failed (${detail || `exit ${r.code}`})` };
  } catch (e) {
    if (e instanceof GitFailedError) return { ok: false, fatal: false, why: e.message };
    throw e;
  }
}

export type HintsVerdict = { ok: true } | { ok: false; fatal: boolean; why: string };

/** What an unsigned `POST <base>/v1/hints` says about the builder's base URL. */
export async function probeHints(base: string, options: { fetch?: typeof fetch; timeoutMs?: number } = {}): Promise<HintsVerdict> {
  const endpoint = `${base.replace(/\/+$/, '')}/v1/hints`;
  let status: number;
  try {
    const res = await (options.fetch ?? globalThis.fetch)(endpoint, { method: 'POST', body: '', redirect: 'manual', signal: AbortSignal.timeout(options.timeoutMs ?? STARTUP_CHECK_TIMEOUT_MS) });
    await res.body?.cancel().catch(() => undefined);
    status = res.status;
  } catch (e) {
    const cause = (e as { cause?: { code?: unknown } }).cause?.code;
    return { ok: false, fatal: false, why: `${endpoint} does not answer (${typeof cause === 'string' ? cause : (e as Error).message}): hints are kept and sent once the builder answers` };
  }
  if (status === 401) return { ok: true };
  if (status === 404 || status === 405) {
    return { ok: false, fatal: true, why: `${endpoint} answered ${status}: no hint endpoint there; hints.url must be the trusted builder's base URL (e.g. http://builder:8090), hints go to <hints.url>/v1/hints` };
  }
  return { ok: false, fatal: false, why: `${endpoint} answered ${status} to an unsigned hint, where a trusted builder answers 401: is hints.url the builder's base URL?` };
}

/**
 * Run every check; log each problem (error or warning) with its URL; throw `InvalidInputError`
 * listing the fatal ones (`file`: the config file, for the issues' `file`).
 */
export async function startupChecks(config: Pick<Readonly<CiConfig>, 'projects' | 'hints'>, logger: Logger, opts: { file?: string; fetch?: typeof fetch; timeoutMs?: number } = {}): Promise<void> {
  const file = opts.file ?? 'ci config';
  const timeoutMs = opts.timeoutMs ?? STARTUP_CHECK_TIMEOUT_MS;
  const issues: Issue[] = [];
  const projectChecks = config.projects.map(async (p, i) => {
    const v = await probeRemote(p.url, timeoutMs);
    if (v.ok) return;
    const url = shownUrl(p.url);
    const message = `project ${p.name}: ${url}: ${v.why}`;
    if (v.fatal) {
      logger.error({ project: p.name, url }, message);
      issues.push({ file, path: `projects.${i}.url`, message, severity: 'error' });
    } else logger.warn({ project: p.name, url }, `${message}; starting anyway (the merger fetches again at each change)`);
  });
  const hints = config.hints;
  const hintCheck = hints
    ? probeHints(hints.url, { ...(opts.fetch ? { fetch: opts.fetch } : {}), timeoutMs }).then((v) => {
        if (v.ok) return;
        if (v.fatal) {
          logger.error({ url: hints.url }, v.why);
          issues.push({ file, path: 'hints.url', message: v.why, severity: 'error' });
        } else logger.warn({ url: hints.url }, `${v.why}; starting anyway`);
      })
    : Promise.resolve();
  await Promise.all([...projectChecks, hintCheck]);
  if (issues.length > 0) throw new InvalidInputError(issues.sort((a, b) => a.path.localeCompare(b.path)));
}

/** A URL as messages show it: without a password it may carry. */
export function shownUrl(url: string): string {
  return url.replace(/^([A-Za-z][A-Za-z0-9+.-]*:\/\/[^/@:]*):[^/@]*@/, '$1:***@');
}

/** The last two lines of git's stderr, without its `fatal:`/`remote:` prefixes noise kept short. */
function lastLines(stderr: string): string {
  return stderr
    .trim()
    .split('\n')
    .filter((l) => l.trim() !== '' && !l.startsWith('hint:'))
    .slice(-2)
    .join(' ')
    .replace(/[\u0000-\u001f\u007f]+/g, ' ')
    .slice(0, 400);
}
