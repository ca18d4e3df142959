/**
 * The promoter's durable queue: accepted hints survive a restart, a published commit is never
 * built again, a refused or failed one may be asked for again.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { createLogger } from '#shared/logging.js';
import { AuditLog } from '../../trusted-builder/audit/audit-log.js';
import { Promoter, type PromoterDeps } from '../../trusted-builder/promote/promoter.js';
import { PromotionStore } from '../../trusted-builder/promote/promotion-store.js';

const dir = mkdtempSync(join(tmpdir(), 'airlock-promotions-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const hint = (c: string) => ({ version: 1 as const, project: 'demo/none', branch: 'master', commit: c.repeat(40) });

describe('PromotionStore', () => {
  it('keeps queued work across a reopen, in order, and records states and results', () => {
    const file = join(dir, 'a.sqlite');
    const s = new PromotionStore(file);
    s.enqueue('p@1', hint('1'));
    s.enqueue('p@2', hint('2'));
    s.set('p@1', 'running');
    s.enqueue('p@3', hint('3'));
    s.set('p@3', 'published', { state: 'published', digest: 'sha256:x' });
    s.close();
    const t = new PromotionStore(file);
    expect(t.unfinished().map((u) => u.key)).toEqual(['p@1', 'p@2']);
    expect(t.state('p@3')).toBe('published');
    expect(t.result('p@3')).toEqual({ state: 'published', digest: 'sha256:x' });
    t.set('p@2', 'failed', { state: 'failed' });
    t.enqueue('p@2', hint('2')); // asked again
    expect(t.state('p@2')).toBe('queued');
    expect(t.result('p@2')).toBeUndefined();
    t.close();
  });
});

describe('Promoter with its store', () => {
  it('writes a hint down before answering, finishes it after a restart, and never rebuilds a published commit', async () => {
    const file = join(dir, 'b.sqlite');
    const audit = await AuditLog.open(join(dir, 'audit.jsonl'));
    // A policy with no project: every promotion is refused at the first step, without Docker or git.
    const deps = (store: PromotionStore): PromoterDeps =>
      ({ store, audit, logger: createLogger({ level: 'silent' }), workDir: join(dir, 'work'), policy: { policy: { projects: [], baseImages: [], registry: 'x', builderId: 'https://x.invalid' }, digest: 'sha256:0', file: 'p' } }) as unknown as PromoterDeps;
    // First process: the hint is stored, and the process "dies" before running it.
    const s1 = new PromotionStore(file);
    s1.enqueue('demo/none@' + 'a'.repeat(40), hint('a'));
    s1.close();
    // Second process: resume runs it.
    const s2 = new PromotionStore(file);
    const p = new Promoter(deps(s2));
    expect(p.resume()).toBe(1);
    await p.idle();
    expect(p.result('demo/none', 'a'.repeat(40))).toMatchObject({ state: 'refused', step: 'policy' });
    expect(s2.unfinished()).toEqual([]);
    // A refused commit may be asked for again; a published one is not rebuilt.
    expect(p.accept(hint('a'))).toEqual({ queued: true, retryOf: 'refused' });
    await p.idle();
    s2.enqueue('demo/none@' + 'b'.repeat(40), hint('b'));
    s2.set('demo/none@' + 'b'.repeat(40), 'published', { state: 'published' });
    expect(p.accept(hint('b'))).toEqual({ queued: false, reason: 'already published' });
    s2.close();
    await audit.close();
  });
});
