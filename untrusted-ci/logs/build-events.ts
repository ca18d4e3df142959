/**
 * BuildEvents: the live stream of one build — log pieces, job states, the build's end — for SSE
 * subscribers, with backfill from the start. A running build's events are held in memory (Node is
 * single-threaded, so "copy the backlog, then subscribe" cannot miss an event) and appended to
 * `<dir>/<build>/events.jsonl`; a finished build is served from that file. Job logs are also
 * written whole to `<dir>/<build>/logs/<job>.log`, which the executor uploads to the ArtifactStore.
 *
 * Memory is bounded: each build's backlog keeps at most `maxBacklogBytes`; past that the oldest
 * log pieces are dropped from memory (the file still has them, and late subscribers read the file).
 */
import { createReadStream, createWriteStream, mkdirSync, rmSync, type WriteStream } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { BuildEvent } from '#shared/schemas/api/builds.js';

/** An event's receiver; a promise it returns paces a replay (the next event waits for it). */
export type Listener = (e: BuildEvent) => void | Promise<void>;

interface Live {
  backlog: BuildEvent[];
  /** Events published so far: the first `count` lines of the file once it is flushed. */
  count: number;
  bytes: number;
  truncated: boolean;
  listeners: Set<Listener>;
  /** Told when the stream ends, whether or not a final `build` event was published. */
  enders: Set<() => void>;
  file: WriteStream;
}

export class BuildEvents {
  private readonly live = new Map<number, Live>();
  /** Told of every event of every build (the status page's change feed). */
  private readonly watchers = new Set<(buildId: number, e: BuildEvent) => void>();
  /** Builds whose file is still being flushed after `end`: a reader waits for it. */
  private readonly closing = new Map<number, Promise<void>>();

  constructor(
    private readonly dir: string,
    private readonly maxBacklogBytes = 32 * 1024 * 1024, // 32 MiB per build
  ) {}

  buildDir(buildId: number): string {
    return join(this.dir, String(buildId));
  }

  /** Start (or restart, after recovery) a build's stream: earlier events of a previous attempt are dropped. */
  begin(buildId: number): void {
    this.live.get(buildId)?.file.destroy();
    const d = this.buildDir(buildId);
    rmSync(d, { recursive: true, force: true });
    mkdirSync(join(d, 'logs'), { recursive: true });
    const prev = this.live.get(buildId);
    this.live.set(buildId, { backlog: [], count: 0, bytes: 0, truncated: false, listeners: prev?.listeners ?? new Set(), enders: prev?.enders ?? new Set(), file: createWriteStream(join(d, 'events.jsonl'), { flags: 'a' }) });
  }

  publish(buildId: number, e: BuildEvent): void {
    const l = this.live.get(buildId);
    if (!l) return;
    const line = JSON.stringify(e);
    l.file.write(`${line}\n`);
    l.count++;
    l.backlog.push(e);
    l.bytes += line.length;
    while (l.bytes > this.maxBacklogBytes && l.backlog.length > 1) {
      const i = l.backlog.findIndex((x) => x.type === 'log');
      if (i < 0) break;
      l.bytes -= JSON.stringify(l.backlog[i]).length;
      l.backlog.splice(i, 1);
      l.truncated = true;
    }
    for (const fn of l.listeners) fn(e);
    for (const fn of this.watchers) fn(buildId, e);
  }

  /** Calls `fn` with each event any build publishes from now on, until the returned function is called. */
  watch(fn: (buildId: number, e: BuildEvent) => void): () => void {
    this.watchers.add(fn);
    return () => void this.watchers.delete(fn);
  }

  /** Close a build's stream after its final `build` event; subscribers get nothing more. */
  async end(buildId: number): Promise<void> {
    const l = this.live.get(buildId);
    if (!l) return;
    this.live.delete(buildId);
    l.listeners.clear();
    const enders = [...l.enders];
    l.enders.clear();
    for (const fn of enders) fn();
    const closed = new Promise<void>((res) => l.file.end(res));
    this.closing.set(buildId, closed);
    await closed;
    if (this.closing.get(buildId) === closed) this.closing.delete(buildId);
  }

  /**
   * Every event so far, then each new one to `fn` until the build ends. Returns an unsubscribe
   * function and whether the build is still live (false: the backlog is all there will be).
   */
  async subscribe(buildId: number, fn: Listener, onEnd?: () => void): Promise<{ live: boolean; unsubscribe: () => void }> {
    const l = this.live.get(buildId);
    const unsubscribe = (): void => {
      l?.listeners.delete(fn);
      if (onEnd) l?.enders.delete(onEnd);
    };
    if (onEnd) l?.enders.add(onEnd);
    if (l && !l.truncated) {
      for (const e of l.backlog) fn(e);
      l.listeners.add(fn);
      return { live: true, unsubscribe };
    }
    if (l) {
      // The in-memory backlog was trimmed: replay the file's first `count` events (once flushed: the
      // stream writes asynchronously), then the events that arrived meanwhile.
      const pending: BuildEvent[] = [];
      const buffer: Listener = (e) => {
        pending.push(e);
      };
      const count = l.count;
      l.listeners.add(buffer);
      await new Promise<void>((res) => l.file.write('', () => res()));
      await this.replay(buildId, fn, count);
      l.listeners.delete(buffer);
      pending.forEach(fn);
      if (!this.live.has(buildId)) return { live: false, unsubscribe };
      l.listeners.add(fn);
      return { live: true, unsubscribe };
    }
    await this.closing.get(buildId);
    await this.replay(buildId, fn);
    return { live: false, unsubscribe: () => {} };
  }

  isLive(buildId: number): boolean {
    return this.live.has(buildId);
  }

  /** The recorded events of a build, read line by line (a build's file can be large). */
  private async replay(buildId: number, fn: Listener, max = Infinity): Promise<void> {
    const file = join(this.buildDir(buildId), 'events.jsonl');
    const input = createReadStream(file, { encoding: 'utf8' });
    const lines = createInterface({ input, crlfDelay: Infinity });
    let n = 0;
    try {
      for await (const line of lines) {
        if (n >= max) break;
        if (!line) continue;
        n++;
        let json: unknown;
        try {
          json = JSON.parse(line);
        } catch {
          continue; // a line torn by a crash mid-write
        }
        const r = BuildEvent.safeParse(json);
        if (r.success) await fn(r.data);
      }
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    } finally {
      lines.close();
      input.destroy();
    }
  }

}
