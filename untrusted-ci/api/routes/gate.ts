/**
 * The gate over HTTP, read-only: the change queues (`GET /api/gate`) and the gate's outbox of
 * merges and reports (`GET /api/gate/events`). Nothing here approves a change: approvals come from
 * the review system (Code-Review +2 there), which also merges.
 */
import { z } from 'zod';
import { NotFoundError } from '#shared/errors.js';
import { GateView } from '../schemas/gate.js';
import { GateEventKind, GateEventView } from '../../store/gate-store.js';
import type { ApiDeps, ZodApp } from '../app.js';

export function registerGateRoutes(app: ZodApp, deps: ApiDeps): void {
  const gate = () => {
    if (!deps.gate) throw new NotFoundError('the gate is not running on this CI');
    return deps.gate;
  };
  app.get('/api/gate', { schema: { description: 'The gate: change queues, what each item is tested on, its jobs, the window', response: { 200: GateView } } }, async () => gate().view());

  app.get(
    '/api/gate/events',
    {
      schema: {
        description: "The gate's outbox: merges (project, branch, commit) and reports, oldest first",
        querystring: z.object({ after: z.coerce.number().int().min(0).default(0), kind: GateEventKind.optional(), limit: z.coerce.number().int().min(1).max(1000).default(100) }),
        response: { 200: z.object({ events: z.array(GateEventView) }) },
      },
    },
    async (req) => {
      if (!deps.gateStore) throw new NotFoundError('the gate is not running on this CI');
      return { events: await deps.gateStore.events({ after: req.query.after, limit: req.query.limit, ...(req.query.kind ? { kind: req.query.kind } : {}) }) };
    },
  );
}
