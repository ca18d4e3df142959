/**
 * The gate over HTTP: approve a change (`POST /api/changes/:id/approve`, what `airlock approve`
 * calls; `DELETE` takes the approval back), the change queues (`GET /api/gate`) and the gate's
 * outbox of merges and reports (`GET /api/gate/events`). Approving needs the API token when one
 * is configured; the change must be registered and at its newest patchset.
 */
import { z } from 'zod';
import { ConflictError, NotFoundError } from '../../../shared/errors.js';
import { ApproveAnswer, GateView } from '../../../shared/schemas/api/gate.js';
import { GateEventKind, GateEventView } from '../../store/gate-store.js';
import type { ApiDeps, RequireToken, ZodApp } from '../app.js';

const IdParams = z.object({ id: z.coerce.number().int().min(1).max(Number.MAX_SAFE_INTEGER) });

export function registerGateRoutes(app: ZodApp, deps: ApiDeps, requireToken: RequireToken): void {
  const gate = () => {
    if (!deps.gate) throw new NotFoundError('the gate is not running on this CI');
    return deps.gate;
  };
  const approve = (approved: boolean) => async (req: { params: { id: number } }) => {
    const c = deps.store.changeView(req.params.id);
    if (!deps.config.projects.some((p) => p.name === c.project)) throw new NotFoundError(`project ${c.project} is not registered with this CI`);
    const latest = deps.store.latestChange(c.project, c.change);
    if (latest && latest.patchset > c.patchset) throw new ConflictError(`change ${c.change} of ${c.project} is at patchset ${latest.patchset}; patchset ${c.patchset} is outdated`);
    gate().approval(c, approved);
    return { change: { id: c.id, project: c.project, change: c.change, patchset: c.patchset }, approved };
  };
  for (const [method, approved] of [['POST', true], ['DELETE', false]] as const) {
    app.route({
      method,
      url: '/api/changes/:id/approve',
      schema: { description: approved ? 'Approve a change: the gate enqueues it once it is ready' : 'Take an approval back: the change leaves the gate', params: IdParams, response: { 202: ApproveAnswer } },
      onRequest: async (req) => requireToken(req.headers.authorization),
      handler: async (req, reply) => reply.status(202).send(await approve(approved)(req)),
    });
  }

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
      return { events: deps.gateStore.events({ after: req.query.after, limit: req.query.limit, ...(req.query.kind ? { kind: req.query.kind } : {}) }) };
    },
  );
}
