/**
 * The trusted builder's image builds (the publish image, and a Dockerfile test environment):
 * - the Dockerfile is checked first (shared/docker/dockerfile.ts): every base image (FROM,
 *   COPY --from, RUN --mount from=) must be one the promotion policy pins, and the engine's image
 *   of that name must have exactly the pinned id (a tag moved, or an untrusted build re-tagged it:
 *   refused);
 * - built by the classic builder with the network off, **no layer cache** (the engine may be
 *   shared with the untrusted tier: its cached layers are not ours) and no pulls;
 * - the context is the builder's own `git archive` of the verified commit, never a directory or
 *   image the untrusted tier made;
 * - no build labels: the classic builder adds each as one more step (a container and a commit,
 *   ~50 ms apiece), and the signed provenance already names the source and commit.
 * Refusals (a base not pinned, an id that does not match) are PolicyViolationError listing every
 * problem; a failing build is EnvironmentBuildFailedError with the tail of its log.
 */
import type { Readable } from 'node:stream';
import type Docker from 'dockerode';
import { withCheckedDockerfile, CHECKED_DOCKERFILE } from '#shared/docker/build-context.js';
import { BuildLog, followBuildStream } from '#shared/docker/build-log.js';
import { checkDockerfile, normalizeImageRef, rewriteImageRefs } from '#shared/docker/dockerfile.js';
import { EnvironmentBuildFailedError, PolicyViolationError, type Issue } from '#shared/errors.js';

export interface BaseImagePin {
  name: string;
  digest: string;
}

export interface TrustedBuildInput {
  docker: Docker;
  /** A tar of the build context (the builder's own archive of the verified commit). */
  context: Readable;
  dockerfileText: string;
  /** For messages: the Dockerfile's path in the repository. */
  file: string;
  tag: string;
  pins: readonly BaseImagePin[];
  /** Context size cap. */
  maxContextBytes?: number;
  logCapBytes?: number;
  onLine?: (line: string) => void;
  signal?: AbortSignal;
  /**
   * `network: packages`: the RUN steps join this namespace (`container:<holder>`, a loopback where
   * only the builder's verified files are served; shared/egress/package-network.ts) and get these
   * build arguments. Absent: `--network none`.
   */
  packages?: { networkMode: string; buildArgs: Record<string, string> };
}

const DEFAULT_CONTEXT_MAX = 512 * 1024 * 1024; // 512 MiB
const DEFAULT_LOG_CAP = 4 * 1024 * 1024; // 4 MiB

/** Every base the Dockerfile uses, each pinned by the policy and present with exactly that id. */
export async function checkBases(docker: Docker, dockerfileText: string, file: string, pins: readonly BaseImagePin[]): Promise<{ bases: BaseImagePin[]; issues: Issue[] }> {
  const byName = new Map(pins.map((p) => [normalizeImageRef(p.name), p]));
  const check = checkDockerfile(dockerfileText, file, [...byName.keys()]);
  const issues = check.issues.filter((i) => i.severity === 'error');
  const bases: BaseImagePin[] = [];
  for (const name of [...new Set(check.baseImages)]) {
    const pin = byName.get(normalizeImageRef(name));
    if (!pin) continue; // already an issue from checkDockerfile
    let id: string | undefined;
    try {
      id = ((await docker.getImage(pin.name).inspect()) as { Id: string }).Id;
    } catch {
      id = undefined;
    }
    if (id !== pin.digest) {
      issues.push({ file, path: file, message: `base image ${pin.name} is ${id ?? 'not present'} on this engine, not the pinned ${pin.digest}`, severity: 'error' });
      continue;
    }
    bases.push(pin);
  }
  return { bases, issues };
}

/**
 * The Dockerfile with every pinned base named by its image id (`FROM sha256:…`, `COPY --from=sha256:…`):
 * checked by id and then resolved by name at build time would leave a window in which a name on a
 * shared engine could be re-pointed. Stage names and unpinned words are left as they are. The
 * references are found by the checker's own parser (shared/docker/dockerfile.ts), which throws
 * rather than return a file that would read differently.
 */
export function pinBaseImages(text: string, pins: readonly BaseImagePin[]): string {
  const byName = new Map(pins.map((p) => [normalizeImageRef(p.name), p.digest]));
  return rewriteImageRefs(text, (ref) => byName.get(normalizeImageRef(ref)));
}

/** Build, hermetically; returns the image id and the bases it used. */
export async function buildTrustedImage(i: TrustedBuildInput): Promise<{ imageId: string; bases: BaseImagePin[]; log: string[] }> {
  const { bases, issues } = await checkBases(i.docker, i.dockerfileText, i.file, i.pins);
  if (issues.length > 0) throw new PolicyViolationError(issues);
  const lines: string[] = [];
  const log = new BuildLog(i.logCapBytes ?? DEFAULT_LOG_CAP, (line) => {
    lines.push(line);
    i.onLine?.(line);
  });
  const context = withCheckedDockerfile(i.context, pinBaseImages(i.dockerfileText, bases), { maxBytes: i.maxContextBytes ?? DEFAULT_CONTEXT_MAX, file: i.file });
  const stream = await i.docker.buildImage(context, {
    t: i.tag,
    dockerfile: CHECKED_DOCKERFILE,
    version: '1', // the classic builder: honours networkmode for every RUN, fetches no frontend
    networkmode: i.packages?.networkMode ?? 'none',
    ...(i.packages ? { buildargs: i.packages.buildArgs } : {}),
    nocache: true,
    pull: false,
    rm: true,
    forcerm: true,
    ...(i.signal ? { abortSignal: i.signal } : {}),
  });
  const outcome = await followBuildStream(stream, log);
  if (!outcome.ok) {
    const tail = log.tail();
    throw new EnvironmentBuildFailedError(`the image build failed: ${outcome.error}${tail.length > 0 ? `\n--- last lines ---\n${tail.join('\n')}` : ''}`);
  }
  // The id the build reported, not whatever the tag points at by now (the engine may be shared).
  const imageId = outcome.imageId ?? ((await i.docker.getImage(i.tag).inspect()) as { Id: string }).Id;
  return { imageId, bases, log: lines };
}
