/**
 * What the CI does with a parsed trigger event, whatever system sent it. Pure decision plus one
 * call into the scheduler: a new patchset of a registered project on a checked branch gets a check
 * build (superseding older patchsets); other kinds are acknowledged and ignored until a pipeline
 * acts on them (the gate, next).
 */
import type { TriggerEvent } from '../../shared/schemas/events/trigger.js';
import type { CiConfig } from '../config.js';
import type { Scheduler } from '../scheduler/scheduler.js';

export type TriggerOutcome = { accepted: true; builds: number[]; superseded: number[] } | { accepted: false; reason: string };

export function handleTrigger(event: TriggerEvent, deps: { config: Readonly<CiConfig>; scheduler: Scheduler }): TriggerOutcome {
  if (event.kind !== 'patchset') return { accepted: false, reason: `no pipeline acts on ${event.kind} events yet` };
  const project = deps.config.projects.find((p) => p.name === event.project);
  if (!project) return { accepted: false, reason: `project ${event.project} is not registered with this CI` };
  if (project.branches.length > 0 && !project.branches.includes(event.branch)) return { accepted: false, reason: `branch ${event.branch} of ${event.project} is not checked` };
  const { build, superseded } = deps.scheduler.submit(
    {
      project: event.project,
      branch: event.branch,
      change: event.change,
      patchset: event.patchset,
      ref: event.ref,
      author: event.author,
      ...(event.subject ? { subject: event.subject } : {}),
      source: event.source,
    },
    'check',
  );
  return { accepted: true, builds: [build.id], superseded };
}
