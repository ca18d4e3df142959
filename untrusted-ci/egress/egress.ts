/**
 * Egress for public builds, as the CI service holds it: the caching proxies of this host, and for
 * each run that asks for `network: packages` the front that answers its two ports (./front.ts),
 * with the run's own tally. What a run reached is written to its log (each refusal at once, a
 * summary at the end) and counted in /metrics (`airlock_ci_egress_requests_total`).
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ExecutorFailedError } from '#shared/errors.js';
import { newOwnerId, ownerState } from '#shared/runner/owner.js';
import type { PackageHandlers } from '#shared/egress/package-network.js';
import type { Logger } from '#shared/logging.js';
import { pruneCache, type PruneReport } from './cache-gc.js';
import { egressHandlers, type EgressEvent } from './front.js';
import { allowedSources, type EgressPolicy, type SourceKind } from './policy.js';
import { PackageProxies } from './proxies.js';

export type RunKind = 'environments' | 'jobs';

/** Refused or failed requests written to a run's log, at most (the rest are counted only). */
export const LOGGED_PROBLEMS = 50;

export interface EgressOptions {
  /** The runner's state directory; the proxies keep theirs under `egress/`. */
  stateDir: string;
  policy: EgressPolicy;
  logger?: Logger;
  /** Each request of every run (for metrics). */
  onEvent?: (kind: RunKind, e: EgressEvent) => void;
  /** The user the proxies run as (default airlock-proxy). */
  user?: string;
  /** Check at start that this host can run the proxies (default true; false: tests of the front alone). */
  checkHost?: boolean;
}

/** One run's side of the front: its handlers, and what it reached. */
export interface EgressRun {
  handlers: PackageHandlers;
  /** The sources this run may use. */
  allowed: readonly SourceKind[];
  /** One line for the log: how many requests, from the cache, fetched, refused, failed ('' when the run made none). */
  summary(): string;
}

export class Egress {
  private proxiesStarting: Promise<PackageProxies> | undefined;
  private started: PackageProxies | undefined;
  private privateDir: string | undefined;
  private stopped = false;
  private readonly owner = newOwnerId();
  private fetchedSinceGc = 0;
  private collecting: Promise<unknown> | undefined;

  private constructor(private readonly o: EgressOptions) {}

  /**
   * Nothing starts here: the proxies start at the first run that asks for packages (most CI
   * processes in tests never do), and only when the policy allows any run any source. What they
   * need is checked here, though (PackageProxies.preflight): the CI does not start without it.
   */
  static async start(o: EgressOptions): Promise<Egress> {
    const e = new Egress(o);
    if (o.checkHost !== false && e.allowed('environments').length + e.allowed('jobs').length > 0) PackageProxies.preflight(e.usedPolicy(), o.user);
    return e;
  }

  /** The policy with only the sources some run may use (what the proxies are started for). */
  private usedPolicy(): EgressPolicy {
    const used = new Set([...allowedSources(this.o.policy, 'environments'), ...allowedSources(this.o.policy, 'jobs')]);
    const sources: EgressPolicy['sources'] = {};
    if (used.has('debian') && this.o.policy.sources.debian) sources.debian = this.o.policy.sources.debian;
    if (used.has('npm') && this.o.policy.sources.npm) sources.npm = this.o.policy.sources.npm;
    return { ...this.o.policy, sources };
  }

  /** The running proxies (undefined until a run asked for packages, or when none may). */
  get proxies(): PackageProxies | undefined {
    return this.started;
  }

  /** The proxies, started on first use; a failed start is tried again by the next run. */
  private ready(): Promise<PackageProxies> {
    if (this.stopped) return Promise.reject(new ExecutorFailedError('the CI is stopping'));
    this.proxiesStarting ??= (async () => {
      const p = await PackageProxies.start({
        dir: this.claimDir(),
        policy: this.usedPolicy(),
        ...(this.o.logger ? { logger: this.o.logger.child({ component: 'egress' }) } : {}),
        ...(this.o.user ? { user: this.o.user } : {}),
      });
      this.started = p;
      return p;
    })();
    this.proxiesStarting.catch((e: unknown) => {
      this.o.logger?.warn({ err: e }, 'package proxies did not start; the next run that asks tries again');
      this.proxiesStarting = undefined;
    });
    return this.proxiesStarting;
  }

  /**
   * `<stateDir>/egress`, the host's shared cache, when no live process holds it (its `owner` file);
   * else a private directory of this process's, removed at stop (two CI processes on one host, as
   * in tests: two verdaccios must not share one storage).
   */
  private claimDir(): string {
    const base = join(this.o.stateDir, 'egress');
    mkdirSync(base, { recursive: true, mode: 0o711 });
    const lock = join(base, 'owner');
    let holder = '';
    try {
      holder = readFileSync(lock, 'utf8').trim();
    } catch {
      // nobody
    }
    if (holder === '' || holder === this.owner || ownerState(holder) === 'dead') {
      writeFileSync(lock, `${this.owner}\n`, { mode: 0o600 });
      return base;
    }
    this.privateDir = join(base, `private-${randomBytes(4).toString('hex')}`);
    return this.privateDir;
  }

  /** The policy the proxies were started from (what the config check bounds `network: packages` by). */
  get policy(): EgressPolicy {
    return this.o.policy;
  }

  /** The sources a run of `kind` may use ([] when none: then it may not ask). */
  allowed(kind: RunKind): SourceKind[] {
    return allowedSources(this.o.policy, kind);
  }

  /** The front of one run; `log` gets a line for each refusal. Undefined when runs of `kind` get no source. */
  forRun(kind: RunKind, log: (line: string) => void): EgressRun | undefined {
    const allowed = this.allowed(kind);
    if (allowed.length === 0) return undefined;
    const tally = { hit: 0, miss: 0, refused: 0, error: 0 };
    let logged = 0;
    const handlers = egressHandlers({
      proxies: () => this.ready(),
      allowed,
      mirrors: this.o.policy.sources.debian?.mirrors ?? [],
      // The size bound is kept between the periodic passes too: after a tenth of it was fetched.
      onFetched: (bytes) => {
        this.fetchedSinceGc += bytes;
        if (this.fetchedSinceGc >= this.o.policy.cache.maxSize / 10 && !this.collecting) {
          this.fetchedSinceGc = 0;
          this.collecting = this.gc()
            .catch((err: unknown) => this.o.logger?.warn({ err }, 'package cache GC failed'))
            .then(() => (this.collecting = undefined));
        }
      },
      onEvent: (e) => {
        tally[e.outcome] += 1;
        this.o.onEvent?.(kind, e);
        if (e.outcome !== 'refused' && e.outcome !== 'error') return;
        // A run may ask as often as it likes: its log gets the first LOGGED_PROBLEMS, then one line.
        logged += 1;
        if (logged <= LOGGED_PROBLEMS) log(`[airlock] packages: ${e.outcome} ${e.method} ${e.url}: ${e.reason ?? ''}\n`);
        else if (logged === LOGGED_PROBLEMS + 1) log(`[airlock] packages: more refused or failed requests than ${LOGGED_PROBLEMS}: counted in the summary, not logged\n`);
      },
    });
    return {
      handlers,
      allowed,
      summary: () => {
        const n = tally.hit + tally.miss + tally.refused + tally.error;
        if (n === 0) return '';
        return `[airlock] packages (${allowed.join(', ')}): ${n} request${n === 1 ? '' : 's'}, ${tally.hit} from the cache, ${tally.miss} fetched, ${tally.refused} refused, ${tally.error} failed\n`;
      },
    };
  }

  /** Bring the cache back under the policy's size, least recently used first. */
  async gc(): Promise<PruneReport> {
    if (!this.started) return { files: 0, bytes: 0, keptBytes: 0 };
    return pruneCache(this.started.cacheDirs, this.o.policy.cache.maxSize);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    const p = await this.proxiesStarting?.catch(() => undefined);
    await p?.stop();
    if (this.privateDir) rmSync(this.privateDir, { recursive: true, force: true });
    else if (p) rmSync(join(this.o.stateDir, 'egress', 'owner'), { force: true });
  }
}
