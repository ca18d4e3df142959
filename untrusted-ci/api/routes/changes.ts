/**
 * Submitting changes for a check (`POST /api/changes`, what `airlock submit` calls) and reading
 * them back. A submission is durable before the 202 answer; the project must be registered in the
 * service config, the ref must be a full ref name or commit id, and a token is required when
 * configured. The gate is not reachable from here: approvals come from the review system (409).
 */
import { z } from 'zod';
import { ConflictError, InvalidInputError, NotFoundError } from '#shared/errors.js';
import { isSha, refNameProblem } from '#shared/git/git.js';
import { BuildView, ChangeLookup, ChangeName, ChangeView, SubmitAnswer, SubmitChange } from '#shared/schemas/api/builds.js';
import type { ApiDeps, RequireToken, ZodApp } from '../app.js';

const IdParams = z.object({ id: z.coerce.number().int().min(1).max(Number.MAX_SAFE_INTEGER) });

export function registerChangeRoutes(app: ZodApp, deps: ApiDeps, requireToken: RequireToken): void {
  app.post(
    '/api/changes',
    {
      schema: { description: 'Submit a change for a check (or gate) run', body: SubmitChange, response: { 202: SubmitAnswer } },
      // Before the body is validated: a caller without the token learns nothing about the schema.
      onRequest: async (req) => requireToken(req.headers.authorization),
    },
    async (req, reply) => {
      const c = req.body;
      const project = deps.config.projects.find((p) => p.name === c.project);
      if (!project) throw new NotFoundError(`project ${c.project} is not registered with this CI`);
      const issues = [];
      if (!isSha(c.ref) && (!c.ref.startsWith('refs/') || refNameProblem(c.ref))) {
        issues.push({ file: 'body', path: 'ref', message: `must be a full ref name (refs/…) or a 40-hex commit id${refNameProblem(c.ref) ? `: ${refNameProblem(c.ref)}` : ''}`, severity: 'error' as const });
      }
      // The merger refuses a leading "-" (an option on a git command line): refuse it here, not after the 202.
      const branchProblem = c.branch.startsWith('-') ? 'starts with "-"' : refNameProblem(`refs/heads/${c.branch}`);
      if (branchProblem) issues.push({ file: 'body', path: 'branch', message: branchProblem, severity: 'error' as const });
      else if (project.branches.length > 0 && !project.branches.includes(c.branch)) {
        issues.push({ file: 'body', path: 'branch', message: `${project.name} is checked on ${project.branches.join(', ')} only`, severity: 'error' as const });
      }
      // With a review system, its changes are numbers: an API check must not take one's identity
      // (a patch set number above the real one would shut the real change out of checks and the gate).
      if (deps.config.review && /^[0-9]+$/.test(c.change ?? c.ref)) {
        issues.push({ file: 'body', path: 'change', message: "numbers are the review system's change ids on this CI: name an API check otherwise (e.g. api-123)", severity: 'error' as const });
      }
      if (issues.length > 0) throw new InvalidInputError(issues);
      if (c.pipeline === 'gate') {
        // Approvals come from the review system alone, which also merges: the API cannot put a change in the gate.
        throw new ConflictError('the gate takes changes approved in the review system (Code-Review +2 there), not from this API');
      }
      const { build } = await deps.scheduler.submit(
        { project: c.project, branch: c.branch, change: c.change ?? c.ref, patchset: c.patchset, ref: c.ref, author: c.author, ...(c.subject ? { subject: c.subject } : {}), source: 'api' },
        c.pipeline,
      );
      deps.gate?.patchset(build.change); // the gate learns of it (a possible dependency; an older patchset leaves)
      return reply.status(202).send({ change: build.change, builds: [build.id] });
    },
  );

  app.get(
    '/api/changes',
    {
      schema: {
        description: "A change by its review-system id: each project that has it, its current patch set, and each patch set's latest build",
        querystring: z.object({ change: ChangeName, project: z.string().min(1).max(200).optional(), patchset: z.coerce.number().int().min(1).max(1_000_000).optional() }).strict(),
        response: { 200: ChangeLookup },
      },
    },
    async (req) =>
      deps.store.lookupChange({
        change: req.query.change,
        ...(req.query.project !== undefined ? { project: req.query.project } : {}),
        ...(req.query.patchset !== undefined ? { patchset: req.query.patchset } : {}),
      }),
  );

  app.get(
    '/api/changes/:id',
    { schema: { description: 'A change and its builds', params: IdParams, response: { 200: z.object({ change: ChangeView, builds: z.array(BuildView) }) } } },
    async (req) => {
      const change = await deps.store.changeView(req.params.id);
      return { change, builds: await deps.store.builds({ change: change.id, limit: 100 }) };
    },
  );
}
