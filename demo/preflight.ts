/**
 * What the demo needs from the machine, checked before anything starts, so that a machine the
 * bootstrap has not set up gets one clear message instead of a failure halfway through.
 */
import { execFileSync } from 'node:child_process';
import type Docker from 'dockerode';
import { BASE_IMAGE, EMBARGO_REGISTRY, REGISTRY } from './demo-root.js';

/** Every problem found; empty when the machine is ready. */
export async function preflight(docker: Docker): Promise<string[]> {
  const problems: string[] = [];
  for (const tool of ['git', 'skopeo', 'gpg']) {
    try {
      execFileSync(tool, ['--version'], { stdio: 'ignore' });
    } catch {
      problems.push(`${tool} is not installed`);
    }
  }
  const engine = await docker.ping().then(() => true, () => false);
  if (!engine) problems.push('the Docker engine does not answer');
  else if (!(await docker.getImage(BASE_IMAGE).inspect().then(() => true, () => false))) problems.push(`the base image ${BASE_IMAGE} is missing`);
  // Both of the bootstrap's registries: public images, and the embargo lane's own.
  for (const host of [REGISTRY, EMBARGO_REGISTRY]) {
    const registry = await fetch(`http://${host}/v2/`, { signal: AbortSignal.timeout(5_000) }).then((r) => r.status, () => 0);
    if (registry !== 401) problems.push(registry === 0 ? `no registry answers on ${host} (scripts/bootstrap.sh starts it)` : `the registry on ${host} answered GET /v2/ with ${registry}, not 401 (it must ask for credentials)`);
  }
  return problems;
}
