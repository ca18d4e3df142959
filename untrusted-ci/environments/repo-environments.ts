/**
 * The executor's EnvironmentProvider over the builder: `.airlock.yaml`'s `environment` read from the
 * merged commit. A Dockerfile environment's content hash is the git tree id of its context, so an
 * unchanged environment is found by tag without reading a byte of the context; `{image}` must be
 * on the policy's allowlist and present locally.
 */
import type Docker from 'dockerode';
import { InvalidInputError, PolicyViolationError } from '#shared/errors.js';
import type { EnvironmentPolicy } from '../schemas/environment-policy.js';
import type { EnvironmentProvider } from '../executor/build-executor.js';
import { DOCKERFILE_MAX_BYTES } from '#shared/docker/dockerfile.js';
import { resolveImageEnvironment, type EnvironmentBuilder } from './environment-builder.js';
import type { Egress } from '../egress/egress.js';
import { dockerfileLocation, missingDockerfile } from '../executor/config-check.js';

const FILE = '.airlock.yaml';

export function createRepoEnvironments(deps: { docker: Docker; policy: EnvironmentPolicy; builder: EnvironmentBuilder; egress?: Egress }): EnvironmentProvider {
  return {
    async prepare({ project, environment, commit, onLog, signal }) {
      if ('image' in environment) {
        const r = await resolveImageEnvironment(deps.docker, environment.image, deps.policy, FILE);
        return { image: r.image, cached: true, release: () => {} };
      }
      const where = dockerfileLocation(environment, FILE);
      if ('issue' in where) throw new InvalidInputError([where.issue]);
      const { dockerfile, context, inContext } = where;
      const text = await commit.readFile(dockerfile, DOCKERFILE_MAX_BYTES);
      if (!text) throw new InvalidInputError([missingDockerfile(dockerfile, FILE)]);
      const treePath = context === '.' ? '' : context;
      const digest = await commit.treeId(treePath);
      if (!digest) throw bad('environment.context', `${context} is not a directory in the repository`);
      // network: packages — the RUN steps reach the sources policies/egress.yaml gives environment builds.
      const say = (line: string) => onLog(line.endsWith('\n') ? line : `${line}\n`);
      const run = environment.network === 'packages' ? deps.egress?.forRun('environments', say) : undefined;
      if (environment.network === 'packages' && !run) {
        throw new PolicyViolationError([{ file: FILE, path: 'environment.network', message: 'network: packages is not allowed here: policies/egress.yaml gives environment builds no package source', severity: 'error' }]);
      }
      const ensured = await deps.builder.ensure({
        project,
        dockerfilePath: inContext,
        dockerfileText: text.toString('utf8'),
        contextDigest: `git-tree:${digest}`,
        openContext: () => commit.archiveTree(treePath),
        onLog: say,
        signal,
        ...(run ? { packages: run.handlers } : {}),
      });
      const summary = run?.summary();
      if (summary) say(summary); // none when the build was another's (a shared build) or cached
      return ensured;
    },
  };
}

function bad(path: string, message: string): InvalidInputError {
  return new InvalidInputError([{ file: FILE, path, message, severity: 'error' }]);
}
