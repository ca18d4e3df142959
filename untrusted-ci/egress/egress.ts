/**
 * Egress for public builds, as the CI service holds it: the caching proxies of this host, and for
 * each run that asks for `network: packages` the front that answers its two ports (./front.ts),
 * with the run's own tally. What a run reached is written to its log (each refusal at once, a
 * summary at the end) and counted in /metrics (`airlock_ci_egress_requests_total`).
 */
import { join } from 'node:path';
import type { PackageHandlers } from '#shared/egress/package-network.js';
import type { Logger } from '#shared/logging.js';
import { pruneCache, type PruneReport } from './cache-gc.js';
import { egressHandlers, type EgressEvent } from './front.js';
import { allowedSources, type EgressPolicy, type SourceKind } from './policy.js';
import { PackageProxies } from './proxies.js';

export type RunKind = 'environments' | 'jobs';

export interface EgressOptions {
  /** The runner's state directory; the proxies keep theirs under `egress/`. */
  stateDir: string;
  policy: EgressPolicy;
  logger?: Logger;
  /** Each request of every run (for metrics). */
  onEvent?: (kind: RunKind, e: EgressEvent) => void;
  /** The user the proxies run as (default airlock-proxy). */
  user?: string;
}

/** One run's side of the front: its handlers, and what it reached. */
export interface EgressRun {
  handlers: PackageHandlers;
  /** The sources this run may use. */
  allowed: readonly SourceKind[];
  /** One line for the log: how many requests, from the cache, fetched, refused, failed. */
  summary(): string;
}

export class Egress {
  private constructor(
    private readonly o: EgressOptions,
    readonly proxies: PackageProxies | undefined,
  ) {}

  /** Starts the proxies when the policy allows any run any source; otherwise nothing runs and no run may ask. */
  static async start(o: EgressOptions): Promise<Egress> {
    const used = new Set([...allowedSources(o.policy, 'environments'), ...allowedSources(o.policy, 'jobs')]);
    if (used.size === 0) return new Egress(o, undefined);
    const sources: EgressPolicy['sources'] = {};
    if (used.has('debian') && o.policy.sources.debian) sources.debian = o.policy.sources.debian;
    if (used.has('npm') && o.policy.sources.npm) sources.npm = o.policy.sources.npm;
    const proxies = await PackageProxies.start({
      dir: join(o.stateDir, 'egress'),
      policy: { ...o.policy, sources },
      ...(o.logger ? { logger: o.logger.child({ component: 'egress' }) } : {}),
      ...(o.user ? { user: o.user } : {}),
    });
    return new Egress(o, proxies);
  }

  /** The sources a run of `kind` may use ([] when none: then it may not ask). */
  allowed(kind: RunKind): SourceKind[] {
    return this.proxies ? allowedSources(this.o.policy, kind) : [];
  }

  /** The front of one run; `log` gets a line for each refusal. Undefined when runs of `kind` get no source. */
  forRun(kind: RunKind, log: (line: string) => void): EgressRun | undefined {
    const allowed = this.allowed(kind);
    if (!this.proxies || allowed.length === 0) return undefined;
    const tally = { hit: 0, miss: 0, refused: 0, error: 0 };
    const handlers = egressHandlers({
      proxies: this.proxies,
      allowed,
      onEvent: (e) => {
        tally[e.outcome] += 1;
        this.o.onEvent?.(kind, e);
        if (e.outcome === 'refused' || e.outcome === 'error') log(`[airlock] packages: ${e.outcome} ${e.method} ${e.url}: ${e.reason ?? ''}\n`);
      },
    });
    return {
      handlers,
      allowed,
      summary: () => {
        const n = tally.hit + tally.miss + tally.refused + tally.error;
        return `[airlock] packages (${allowed.join(', ')}): ${n} request${n === 1 ? '' : 's'}, ${tally.hit} from the cache, ${tally.miss} fetched, ${tally.refused} refused, ${tally.error} failed\n`;
      },
    };
  }

  /** Bring the cache back under the policy's size, least recently used first. */
  async gc(): Promise<PruneReport> {
    if (!this.proxies) return { files: 0, bytes: 0, keptBytes: 0 };
    return pruneCache(this.proxies.cacheDirs, this.o.policy.cache.maxSize);
  }

  async stop(): Promise<void> {
    await this.proxies?.stop();
  }
}
