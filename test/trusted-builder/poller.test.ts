/**
 * Poll mode against real git: new tips of protected branches become promotions, once each, and a
 * restart remembers what it saw.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { createLogger } from '#shared/logging.js';
import type { PromotionHint } from '#shared/schemas/promotion-hint.js';
import { AuditLog } from '../../trusted-builder/audit/audit-log.js';
import { Poller } from '../../trusted-builder/promote/poller.js';
import { SourceVerifier } from '../../trusted-builder/verify/source.js';
import { createRepo } from '../support/git-repo.js';

const dir = mkdtempSync(join(tmpdir(), 'airlock-poll-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('Poller', () => {
  it('promotes each new protected tip once, ignores other branches, and remembers across restarts', async () => {
    const up = createRepo({ 'a.txt': 'a\n' });
    try {
      const project = { name: 'demo/poll', url: up.dir, protectedBranches: ['master'], image: 'team/poll', review: 'none' as const };
      const got: PromotionHint[] = [];
      const audit = await AuditLog.open(join(dir, 'audit.jsonl'));
      const make = () =>
        new Poller({ projects: [project], verifier: new SourceVerifier(join(dir, 'git')), sink: { accept: (h) => (got.push(h), { queued: true }) }, audit, stateFile: join(dir, 'poll.json'), everyMs: 60_000, logger: createLogger({ level: 'silent' }) });
      const p = make();
      await p.poll();
      expect(got.map((h) => h.commit)).toEqual([up.tip()]);
      await p.poll();
      expect(got).toHaveLength(1);
      up.commit({ 'dev.txt': 'x\n' }, 'unprotected', { branch: 'dev' });
      const next = up.commit({ 'b.txt': 'b\n' });
      await p.poll();
      expect(got.map((h) => [h.branch, h.commit])).toEqual([
        ['master', got[0]!.commit],
        ['master', next],
      ]);
      await p.close();
      // A new process reads what the last one saw.
      const q = make();
      await q.start();
      await q.poll();
      expect(got).toHaveLength(2);
      await q.close();
      await audit.close();
    } finally {
      up.dispose();
    }
  });
});
