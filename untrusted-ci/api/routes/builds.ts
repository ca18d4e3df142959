/**
 * Builds, the queue, logs and the live stream.
 *
 * `GET /api/builds/:id/events` is server-sent events: every event of the build from its start
 * (backfill), then live ones, then `event: end`. Each SSE `data:` is one BuildEvent as JSON.
 */
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { NotFoundError, RateLimitedError } from '#shared/errors.js';
import { JobName } from '#shared/schemas/airlock-yaml.js';
import { BuildState, BuildView, QueueView, type BuildEvent } from '#shared/schemas/api/builds.js';
import { logKey } from '../../storage/keys.js';
import type { ApiDeps, RequireToken, ZodApp } from '../app.js';
import { openEventStream, streamCapacityLeft } from '../event-stream.js';

const Id = z.coerce.number().int().min(1).max(Number.MAX_SAFE_INTEGER);

export function registerBuildRoutes(app: ZodApp, deps: ApiDeps, requireToken: RequireToken): void {
  app.get(
    '/api/builds',
    {
      schema: {
        description: 'Builds, newest first',
        querystring: z
          .object({ project: z.string().max(200).optional(), state: BuildState.optional(), limit: z.coerce.number().int().min(1).max(500).default(50), before: Id.optional() })
          .strict(),
        response: { 200: z.object({ builds: z.array(BuildView) }) },
      },
    },
    async (req) => ({
      builds: await deps.store.builds({
        limit: req.query.limit,
        ...(req.query.project ? { project: req.query.project } : {}),
        ...(req.query.state ? { state: req.query.state } : {}),
        ...(req.query.before ? { before: req.query.before } : {}),
      }),
    }),
  );

  app.get('/api/builds/:id', { schema: { description: 'One build with its jobs', params: z.object({ id: Id }), response: { 200: BuildView } } }, async (req) =>
    deps.store.build(req.params.id),
  );

  app.post(
    '/api/builds/:id/cancel',
    {
      schema: { description: 'Cancel a queued or running build (the cancel token, not the submit token)', params: z.object({ id: Id }), response: { 202: BuildView } },
      onRequest: async (req) => requireToken(req.headers.authorization, 'cancel'),
    },
    async (req, reply) => {
    await deps.store.build(req.params.id); // 404 before anything else
    await deps.scheduler.cancel(req.params.id, 'cancelled', 'cancelled by request');
    return reply.status(202).send(await deps.store.build(req.params.id));
    },
  );

  app.get('/api/queue', { schema: { description: 'What is queued and running', response: { 200: QueueView } } }, async () => {
    const queued = (await deps.store.builds({ state: 'queued', limit: 500 })).reverse();
    const running = await deps.store.builds({ state: 'running', limit: 500 });
    return {
      slots: deps.scheduler.slots,
      busy: deps.scheduler.busy,
      queued: queued.map((b) => ({ id: b.id, project: b.project, pipeline: b.pipeline, change: b.change.change, patchset: b.change.patchset, enqueuedAt: b.enqueuedAt })),
      running: running.map((b) => ({ id: b.id, project: b.project, pipeline: b.pipeline, change: b.change.change, patchset: b.change.patchset, startedAt: b.startedAt ?? b.enqueuedAt })),
    };
  });

  app.get(
    '/api/builds/:id/logs/:job',
    { schema: { description: "One job's whole log, as text", params: z.object({ id: Id, job: JobName.or(z.literal('setup')) }) } },
    async (req, reply) => {
      const build = await deps.store.build(req.params.id);
      void reply.type('text/plain; charset=utf-8').header('x-content-type-options', 'nosniff');
      const local = join(deps.events.buildDir(build.id), 'logs', `${req.params.job}.log`);
      if (deps.events.isLive(build.id) && (await stat(local).catch(() => undefined))) return reply.send(createReadStream(local));
      if (!build.jobs.some((j) => j.name === req.params.job)) throw new NotFoundError(`build #${build.id} has no job ${req.params.job}`);
      return reply.send(await deps.artifacts.get(logKey(String(build.id), req.params.job)));
    },
  );

  app.get('/api/builds/:id/events', { schema: { description: 'Server-sent events: the build from its start, then live', params: z.object({ id: Id }) } }, async (req, reply) => {
    const build = await deps.store.build(req.params.id);
    if (!streamCapacityLeft(req.ip)) throw new RateLimitedError('too many event streams are open (for this address, or in all); try again shortly');
    let unsubscribe = (): void => {};
    const stream = openEventStream(req, reply, { onEnd: () => unsubscribe() });
    const send = (e: BuildEvent): boolean => stream.send(e.type, JSON.stringify(e));
    const end = (): void => stream.end('event: end\ndata: {}\n\n');
    // A build that is queued has no stream yet: tell the client its state, then follow when it starts.
    if (build.state === 'queued') send({ type: 'build', state: 'queued' });
    // Each subscribe delivers the attempt from its start. Asking again after the stream ended must
    // not send what this client already has: skip that many, unless a new attempt began.
    let attempt = build.attempt;
    let delivered = 0;
    const follow = async (): Promise<void> => {
      const current = (await deps.store.build(build.id)).attempt;
      if (current !== attempt) {
        attempt = current;
        delivered = 0;
      }
      let skip = delivered;
      const sub = await deps.events.subscribe(
        build.id,
        (e) => {
          if (skip > 0) {
            skip--;
            return;
          }
          delivered++;
          const keptUp = send(e);
          if (e.type === 'build' && e.state === 'finished') end();
          // A replay of a finished build waits for a slow reader rather than buffering it all.
          return keptUp ? undefined : stream.drained();
        },
        // The stream ended without a final event (cancelled, errored, re-queued): ask the record.
        () => {
          if (!stream.ended) setTimeout(() => void follow(), 50);
        },
      );
      unsubscribe = sub.unsubscribe;
      if (stream.ended) unsubscribe();
      if (!sub.live && !stream.ended) {
        const record = await deps.store.build(build.id);
        if (record.state === 'finished') {
          send({ type: 'build', state: 'finished', ...(record.result ? { result: record.result } : {}), ...(record.reason ? { reason: record.reason } : {}) });
          end();
        } else if (!stream.ended) setTimeout(() => void follow(), 200); // not started yet, or between attempts
      }
    };
    await follow();
  });
}
