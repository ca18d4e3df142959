/**
 * A builder API with the embargo lane on, for the endpoint and CLI tests: a fresh embargo key, a
 * security team directory, the lane opened as the service opens it (openEmbargoLane), an audit
 * log, and a logger whose every line is kept (to search for the canary).
 */
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import type { FastifyInstance } from 'fastify';
import { pino } from 'pino';
import { buildBuilderApi } from '../../trusted-builder/api/app.js';
import { AuditLog } from '../../trusted-builder/audit/audit-log.js';
import { openEmbargoLane, type EmbargoLane } from '../../trusted-builder/embargo/lane.js';
import { WebhookNotifier } from '../../trusted-builder/notify/webhook.js';
import { writeTeam, type TestMember } from './embargo.js';

export interface LaneApi {
  app: FastifyInstance;
  lane: EmbargoLane;
  auditFile: string;
  /** Every line the builder logged. */
  logs: string[];
  /** The projects the lane asked the promoter to build privately (in order); the stand-in says each was queued. */
  built: string[];
  close(): Promise<void>;
}

/** Open the lane on `dir` (again: a restart keeps the store and the nonces). */
export async function laneApi(dir: string, o: { builderArmored: string; members: readonly TestMember[]; projects?: readonly string[]; webhook?: string }): Promise<LaneApi> {
  mkdirSync(dir, { recursive: true });
  const logs: string[] = [];
  const logger = pino({ level: 'debug' }, new Writable({ write: (chunk: Buffer, _enc, done) => (logs.push(chunk.toString('utf8')), done()) }));
  const auditFile = join(dir, 'audit.jsonl');
  const audit = await AuditLog.open(auditFile);
  const known = o.projects;
  const lane = await openEmbargoLane({
    secret: { armored: o.builderArmored },
    source: 'secret airlock/embargo-key',
    teamDir: writeTeam(join(dir, 'security-team'), o.members),
    dir: join(dir, 'embargo'),
    audit,
    logger,
    ...(known ? { knownProject: (p: string) => known.includes(p) } : {}),
  });
  // As the service does: the lane's own warnings (a member's retirement) go to the webhook, signed by the embargo key.
  const built: string[] = [];
  lane.onSubmitted((project) => (built.push(project), true));
  if (o.webhook) lane.notifyWith(new WebhookNotifier({ url: o.webhook, signingKey: lane, baseDelayMs: 10 }));
  const app = await buildBuilderApi({ logger, audit, hintSecret: Buffer.from('hint secret'), promoter: { accept: () => ({ queued: false }) }, lookasideDir: join(dir, 'lookaside'), embargo: lane });
  return {
    app,
    lane,
    auditFile,
    logs,
    built,
    async close() {
      await app.close();
      await lane.close();
      await audit.close();
    },
  };
}
