/**
 * The check pipeline: Zuul's independent pipeline manager (`zuul/manager/independent.py`,
 * docs/gate.md "Check and gate"). Each enqueued change gets a queue of its own, with no window. The open changes it
 * needs (recursively, dependencies first) go ahead of it as non-live items, so it is tested on
 * branch tip + its dependencies + itself; they run nothing and are never reported. Nothing merges:
 * a finished item is reported SUCCESS or FAILURE (or the merge-conflict / config-error verdicts) and
 * leaves.
 */
import { ChangeQueue } from '../model/change-queue.js';
import type { ChangeKey, ChangeRecord } from '../model/changes.js';
import type { ReportResult } from '../model/events.js';
import type { QueueItem } from '../model/queue-item.js';
import { PipelineManager } from './pipeline-manager.js';

export class IndependentPipelineManager extends PipelineManager {
  readonly kind = 'check' as const;

  static fromJSON(now: () => number, json: unknown): IndependentPipelineManager {
    const m = new IndependentPipelineManager(now);
    m.restore(json);
    return m;
  }

  protected addChange(id: ChangeKey): boolean {
    const c = this.changes.get(id);
    if (!c || c.status !== 'open') return false;
    const live = this.liveItem(id);
    if (live && live.item.patchset === c.patchset) return true;
    const cycle = this.cycleFrom(id);
    if (cycle) {
      this.reportChange(c, 'FAILURE', `dependency cycle detected (${cycle.join(' → ')}) and circular dependencies are not allowed`);
      return false;
    }
    const q = new ChangeQueue(`check:${c.id},${c.patchset}#${this.nextId}`, [c.project], true, 0);
    this.queues.push(q);
    for (const dep of this.dependencies(c)) this.newItem(q, dep, false);
    this.newItem(q, c, true);
    return true;
  }

  /** Open, unmerged changes `c` needs, transitively, each before the changes that need it. */
  private dependencies(c: ChangeRecord): ChangeRecord[] {
    const out: ChangeRecord[] = [];
    const seen = new Set<ChangeKey>([c.id]);
    const visit = (x: ChangeRecord): void => {
      for (const need of x.needs) {
        const n = this.changes.get(need.change);
        if (!n || n.status !== 'open' || seen.has(n.id)) continue;
        seen.add(n.id);
        visit(n);
        out.push(n);
      }
    };
    visit(c);
    return out;
  }

  protected meetsRequirements(item: QueueItem, c: ChangeRecord | undefined): boolean {
    return c !== undefined && c.status === 'open' && c.patchset === item.patchset;
  }

  protected missingNeeds(): string | null {
    return null;
  }

  protected needsFailingItem(): boolean {
    return false;
  }

  protected finish(item: QueueItem, q: ChangeQueue, result: ReportResult, message: string): void {
    this.report(item, result, message);
    this.endBuildSet(item.buildSet, result === 'SUCCESS' ? 'passed' : 'failed');
    q.dequeue(item);
  }

  protected submitted(): void {}
}
