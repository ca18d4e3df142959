/**
 * Poll mode: the builder watches the protected branches of every project in its policy and
 * promotes each new tip, needing no inbound connection from the CI at all (hints and polling may
 * run together: the promoter skips a commit it already published or has queued).
 *
 * Every `everyMs`, per project, one fetch of the protected branches into the builder's own mirror
 * (the same one verification uses); a tip not seen before becomes a promotion. The tips seen are
 * kept in `<stateFile>` (JSON), so a restart does not promote the same tips again; the first poll of
 * a project promotes its current tips. Errors (a repository unreachable) are logged and retried at
 * the next round.
 */
import { readFile, rename, writeFile } from 'node:fs/promises';
import type { Logger } from '#shared/logging.js';
import type { PromotionHint } from '#shared/schemas/promotion-hint.js';
import type { HintSink } from '../api/app.js';
import type { AuditLog } from '../audit/audit-log.js';
import type { PromotedProject } from '../policy/promotion.js';
import type { SourceVerifier } from '../verify/source.js';

export interface PollerOptions {
  projects: readonly PromotedProject[];
  verifier: Pick<SourceVerifier, 'tips'>;
  sink: HintSink;
  audit: AuditLog;
  stateFile: string;
  everyMs: number;
  logger: Logger;
}

export class Poller {
  private seen: Record<string, Record<string, string>> = {};
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private closed = false;

  constructor(private readonly o: PollerOptions) {}

  async start(): Promise<void> {
    try {
      this.seen = JSON.parse(await readFile(this.o.stateFile, 'utf8')) as Record<string, Record<string, string>>;
    } catch {
      this.seen = {};
    }
    this.schedule(0);
  }

  /** One round over every project (also what the timer runs). */
  async poll(): Promise<void> {
    for (const p of this.o.projects) {
      if (this.closed) return;
      let tips: Record<string, string>;
      try {
        tips = await this.o.verifier.tips(p);
      } catch (e) {
        this.o.logger.warn({ err: e, project: p.name }, 'poll: cannot fetch the protected branches');
        continue;
      }
      const before = this.seen[p.name] ?? {};
      for (const [branch, commit] of Object.entries(tips)) {
        if (before[branch] === commit) continue;
        const hint: PromotionHint = { version: 1, project: p.name, branch, commit };
        const r = this.o.sink.accept(hint);
        await this.o.audit.append('hint-accepted', { source: 'poll', project: p.name, branch, commit, queued: r.queued, ...(r.reason ? { note: r.reason } : {}) });
      }
      this.seen[p.name] = tips;
      const tmp = `${this.o.stateFile}.tmp`;
      await writeFile(tmp, JSON.stringify(this.seen));
      await rename(tmp, this.o.stateFile);
    }
  }

  private schedule(ms: number): void {
    if (this.closed) return;
    this.timer = setTimeout(() => {
      this.running = this.poll()
        .catch((e: unknown) => this.o.logger.error({ err: e }, 'poll round failed'))
        .finally(() => this.schedule(this.o.everyMs));
    }, ms);
    this.timer.unref();
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    await this.running;
  }
}
