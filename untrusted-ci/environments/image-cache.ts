/**
 * The local cache of built environment images (`airlock-env/<project>:<hash>`, labelled
 * `airlock.env=1`) and its garbage collector.
 *
 * Safety contract — GC never removes an image that someone is about to use:
 * - In this process, users `pin(tag)` before they look the image up, and both happen under
 *   `withLock`; `gc()` runs entirely under the same lock. So either the pin is taken before GC
 *   looks (GC skips the tag) or GC has finished (the lookup misses and the image is rebuilt).
 *   The lock is held only for "pin + inspect", never for a build: a build's tag is pinned before
 *   it starts, so the image it produces is protected from its first moment.
 * - Other processes: `externalPins()` (e.g. the tags queued and running jobs need, from the
 *   scheduler's database) is read under the lock on every GC; `minIdle` from the policy keeps an
 *   image that was used very recently (another process between its ensure() and its container).
 * - An image any container uses (running or not) is never removed; a container created in the
 *   moment between listing and removal makes the engine refuse the removal (409), which GC accepts.
 *
 * Recency is kept in `usageFile` (JSON: tag → last use in ms since the epoch), written atomically
 * (temp file + rename) and merged with what is on disk (newest wins) so processes sharing it lose
 * little; an image with no entry counts as used when it was created.
 */
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { randomBytes } from 'node:crypto';
import type Docker from 'dockerode';
import { isNotFound } from '#shared/docker/client.js';
import type { Logger } from '#shared/logging.js';
import { LABEL_OWNER } from '#shared/runner/labels.js';
import { ownerState } from '#shared/runner/owner.js';
import type { EnvironmentPolicy } from '../schemas/environment-policy.js';

/** On every environment image: `airlock.env=1`, and the project it was built for. */
export const LABEL_ENV = 'airlock.env';
export const LABEL_ENV_PROJECT = 'airlock.env.project';
/** Set by scripts/base-images.sh on every base image and inherited by every layer built on one. */
export const LABEL_BASE_IMAGE = 'org.airlock.base';

export interface ImageCacheOptions {
  docker: Docker;
  policy: EnvironmentPolicy;
  logger: Logger;
  /** JSON file of tag → last use (ms); its directory is created on first write. */
  usageFile: string;
  /** Tags (or image ids) other processes need: queued or running jobs. Read under the lock on every GC; a failure aborts the GC. */
  externalPins?: () => Promise<Iterable<string>>;
  /** Which projects' images this cache manages (default: all). Two CI instances sharing one engine each manage their own. */
  projects?: (project: string) => boolean;
  now?: () => number;
}

export interface GcReport {
  /** Tags removed. */
  removed: string[];
  /** Bytes of the removed images not shared with their base image. */
  freedBytes: number;
  /** Environment images left. */
  kept: number;
  /** Image records the dangling-image prune deleted (leftovers of failed or replaced builds). */
  prunedDangling: number;
  /** Stopped airlock job containers of dead runners removed. */
  removedContainers: number;
}

/** One environment image as GC sees it. */
export interface CachedImage {
  id: string;
  tags: string[];
  project: string;
  /** Bytes not shared with the base image. */
  bytes: number;
  /** Last use, ms since the epoch. */
  lastUsed: number;
}

export class ImageCache {
  private readonly docker: Docker;
  private readonly opts: ImageCacheOptions;
  private readonly now: () => number;
  private readonly pins = new Map<string, Map<symbol, string>>();
  private readonly usage = new Map<string, number>();
  private lockTail: Promise<void> = Promise.resolve();
  private writeTail: Promise<void> = Promise.resolve();

  constructor(opts: ImageCacheOptions) {
    this.opts = opts;
    this.docker = opts.docker;
    this.now = opts.now ?? Date.now;
  }

  /** Keep `tag` from GC until the returned function is called (calling it again does nothing). */
  pin(tag: string, holder: string): () => void {
    const token = Symbol(holder);
    let holders = this.pins.get(tag);
    if (!holders) this.pins.set(tag, (holders = new Map()));
    holders.set(token, holder);
    return () => {
      const h = this.pins.get(tag);
      if (!h?.delete(token)) return;
      if (h.size === 0) this.pins.delete(tag);
    };
  }

  /** Who pins `tag` in this process. */
  pinHolders(tag: string): string[] {
    return [...(this.pins.get(tag)?.values() ?? [])];
  }

  /** Record a use of `tag` now (persisted to the usage file). */
  touch(tag: string): Promise<void> {
    this.usage.set(tag, this.now());
    return this.persist(new Set());
  }

  /** Run `fn` alone among everything else under this lock in this process. Not re-entrant. */
  withLock<T>(fn: () => Promise<T>): Promise<T> {
    const result = this.lockTail.then(fn);
    this.lockTail = result.then(
      () => undefined,
      () => undefined,
    );
    return result;
  }

  /** Trim unpinned, unused environment images, least recently used first, to `budgetBytes` (policy's budget by default). */
  gc(opts: { budgetBytes?: number } = {}): Promise<GcReport> {
    return this.withLock(async () => {
      const { policy, logger } = this.opts;
      const budget = opts.budgetBytes ?? policy.cache.budget;
      const removedContainers = await this.removeDeadContainers();
      const external = new Set(this.opts.externalPins ? await this.opts.externalPins() : []);
      const [candidates, containers] = await Promise.all([this.list(), this.docker.listContainers({ all: true })]);
      const inUse = new Set(containers.map((c) => c.ImageID));
      const now = this.now();

      // The N most recently used per project stay whatever the budget.
      const recent = new Set<string>();
      const byProject = new Map<string, CachedImage[]>();
      for (const c of candidates) byProject.set(c.project, [...(byProject.get(c.project) ?? []), c]);
      for (const group of byProject.values()) {
        group.sort((a, b) => b.lastUsed - a.lastUsed);
        for (const c of group.slice(0, policy.cache.keepRecent)) recent.add(c.id);
      }
      const evictable = candidates
        .filter((c) => c.tags.length > 0) // untagged ones go with the dangling prune below
        .filter((c) => !recent.has(c.id) && !inUse.has(c.id) && !external.has(c.id))
        .filter((c) => !c.tags.some((t) => this.pins.has(t) || external.has(t)))
        .filter((c) => now - c.lastUsed >= policy.cache.minIdle)
        .sort((a, b) => a.lastUsed - b.lastUsed);

      let total = candidates.reduce((n, c) => n + c.bytes, 0);
      const removed: string[] = [];
      let freedBytes = 0;
      let removedImages = 0;
      for (const c of evictable) {
        if (budget > 0 && total <= budget) break; // a budget of 0 keeps nothing unprotected, even 0-byte images
        if (await this.removeImage(c)) {
          total -= c.bytes;
          freedBytes += c.bytes;
          removed.push(...c.tags);
          removedImages++;
        }
      }
      const prunedDangling = await this.pruneDangling();
      await this.persist(new Set(removed));
      const report = { removed, freedBytes, kept: candidates.length - removedImages, prunedDangling, removedContainers };
      logger.info({ ...report, removed: removed.length, budget }, 'environment image GC');
      return report;
    });
  }

  /**
   * Every environment image with its tags, project, bytes not shared with its base image (the
   * image's size less that of its nearest tagged ancestor) and last use (usage file, else created).
   */
  async list(): Promise<CachedImage[]> {
    const [envImages, allImages, onDisk] = await Promise.all([
      this.docker.listImages({ filters: { label: [`${LABEL_ENV}=1`] } }),
      this.docker.listImages({ all: true }),
      this.readUsage(),
    ]);
    const byId = new Map(allImages.map((i) => [i.Id, i]));
    const tagged = (i: Docker.ImageInfo): boolean => (i.RepoTags ?? []).some((t) => t !== '<none>:<none>');
    const mine = this.opts.projects ?? (() => true);
    return envImages
      .filter((img) => mine(img.Labels?.[LABEL_ENV_PROJECT] ?? ''))
      .map((img) => {
      const tags = (img.RepoTags ?? []).filter((t) => t !== '<none>:<none>');
      let parent = byId.get(img.ParentId);
      while (parent && !tagged(parent)) parent = byId.get(parent.ParentId);
      const uses = tags.map((t) => Math.max(this.usage.get(t) ?? 0, onDisk.get(t) ?? 0)).filter((t) => t > 0);
      return {
        id: img.Id,
        tags,
        project: img.Labels?.[LABEL_ENV_PROJECT] ?? '',
        bytes: Math.max(0, img.Size - (parent?.Size ?? 0)),
        lastUsed: uses.length > 0 ? Math.max(...uses) : img.Created * 1000,
      };
    });
  }

  /** Untag every tag of `c` (the last untag deletes it). False if the engine refused (a container appeared). */
  private async removeImage(c: CachedImage): Promise<boolean> {
    try {
      for (const tag of c.tags) await this.docker.getImage(tag).remove();
      return true;
    } catch (e) {
      if (isNotFound(e)) return true;
      this.opts.logger.warn({ err: e, image: c.id }, 'environment image GC: engine refused removal; kept');
      return false;
    }
  }

  /**
   * Stopped job containers (labelled by our runner) whose runner process is dead. A live runner's
   * stopped container is its own business (it reads exit codes, logs and artifacts from it);
   * containers without our labels and running ones are never touched.
   */
  private async removeDeadContainers(): Promise<number> {
    const stopped = await this.docker.listContainers({ all: true, filters: { label: [LABEL_OWNER], status: ['created', 'exited', 'dead'] } });
    let n = 0;
    for (const c of stopped) {
      if (ownerState(c.Labels[LABEL_OWNER] ?? '') !== 'dead') continue;
      try {
        await this.docker.getContainer(c.Id).remove({ v: true }); // no force: one that started since is kept
        n++;
      } catch (e) {
        if (!isNotFound(e)) this.opts.logger.warn({ err: e, container: c.Id }, 'environment image GC: cannot remove container');
      }
    }
    return n;
  }

  /**
   * Dangling images from our builds only (labelled as environments, or built on our base images),
   * and only those older than a build may last: a running build's last step is dangling until the
   * next step uses it, and must not vanish under it.
   */
  private async pruneDangling(): Promise<number> {
    const until = `${Math.ceil(this.opts.policy.build.timeout / 1000) + 60}s`;
    let n = 0;
    for (const label of [`${LABEL_ENV}=1`, LABEL_BASE_IMAGE]) {
      const r = await this.docker.pruneImages({ filters: { dangling: ['true'], label: [label], until: [until] } });
      n += (r.ImagesDeleted ?? []).filter((d) => d.Deleted).length;
    }
    return n;
  }

  private async readUsage(): Promise<Map<string, number>> {
    let text: string;
    try {
      text = await readFile(this.opts.usageFile, 'utf8');
    } catch {
      return new Map();
    }
    try {
      const v: unknown = JSON.parse(text);
      if (!v || typeof v !== 'object' || Array.isArray(v)) return new Map();
      return new Map(Object.entries(v).filter((e): e is [string, number] => typeof e[1] === 'number' && Number.isFinite(e[1])));
    } catch {
      this.opts.logger.warn({ file: this.opts.usageFile }, 'environment image usage file is not JSON; starting afresh');
      return new Map();
    }
  }

  /** Merge memory into the file (newest wins), dropping `forget`; one write at a time; never rejects. */
  private persist(forget: ReadonlySet<string>): Promise<void> {
    for (const t of forget) this.usage.delete(t);
    const run = this.writeTail.then(async () => {
      const merged = await this.readUsage();
      for (const [t, ms] of this.usage) merged.set(t, Math.max(ms, merged.get(t) ?? 0));
      for (const t of forget) merged.delete(t);
      const file = this.opts.usageFile;
      await mkdir(dirname(file), { recursive: true });
      const tmp = `${file}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
      await writeFile(tmp, `${JSON.stringify(Object.fromEntries([...merged].sort()), null, 1)}\n`);
      await rename(tmp, file);
    });
    // A lost usage record only makes GC's order less exact: it is logged, never thrown.
    this.writeTail = run.catch((e: unknown) => this.opts.logger.warn({ err: e, file: this.opts.usageFile }, 'cannot write environment image usage file'));
    return this.writeTail;
  }
}
