/**
 * Labels on every container and volume the runner makes. The reaper finds leftovers by them:
 * `airlock.owner` names the runner process (host/pid/start time), so a reaper can tell a live
 * runner's job from a crashed runner's leftover without any shared state.
 */
export const LABEL_JOB = 'airlock.job';
export const LABEL_OWNER = 'airlock.owner';
export const LABEL_CREATED = 'airlock.created';
export const LABEL_KIND = 'airlock.kind';
/** The loop device behind a workspace volume, so the reaper can free it. */
export const LABEL_LOOP = 'airlock.loop';
