/**
 * airlock's error catalogue. Every error that crosses a module, process or HTTP boundary is an
 * `AirlockError` with a stable `code`; callers across boundaries match on `code`, never on
 * `instanceof` (a class identity does not survive JSON). Each code is documented in docs/errors.md
 * and the catalogue is pinned by test/shared/errors.test.ts.
 *
 * Two kinds of failure are kept apart on purpose (Woodpecker's IsStepFailure split):
 * a job that exits non-zero, is OOM-killed or times out is a *result* (JobResult), not an error;
 * an `ExecutorFailedError` means airlock or the engine failed and the job may be retried.
 */

/** The body every HTTP error answer carries, as fastify's fallback handler shapes it. */
export interface WireError {
  code: string;
  message: string;
  statusCode: number;
}

export abstract class AirlockError extends Error {
  abstract readonly code: `AIRLOCK_E_${string}`;
  readonly httpStatus: number = 500;
  /** true: the same request may succeed later (engine busy, transient I/O). */
  readonly retryable: boolean = false;

  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }

  toWire(): WireError {
    return { code: this.code, message: this.message, statusCode: this.httpStatus };
  }
}

/** One problem found in an input, named by its place: `limits.memory`, `jobs.test.command`. */
export interface Issue {
  file: string;
  path: string;
  message: string;
  severity: 'error' | 'warning';
  /** Where in the file, 1-based, when it is known (a YAML syntax error); the message says it too. */
  line?: number;
  column?: number;
}

export function formatIssues(issues: readonly Issue[]): string {
  return issues.map((i) => `${i.file}: ${i.path || '(root)'}: ${i.message}`).join('\n');
}

/** An error that is a list of problems, each naming its file and path. */
export abstract class IssuesError extends AirlockError {
  constructor(readonly issues: readonly Issue[]) {
    super(formatIssues(issues));
  }
}

/** Input from outside (CLI flags, API bodies, job specs) is malformed. Lists every issue. */
export class InvalidInputError extends IssuesError {
  readonly code = 'AIRLOCK_E_INVALID_INPUT';
  override readonly httpStatus = 400;
}

/** The input is well-formed but asks for more than policy allows (e.g. more memory). */
export class PolicyViolationError extends IssuesError {
  readonly code = 'AIRLOCK_E_POLICY_VIOLATION';
  override readonly httpStatus = 422;
}

/** An SRE-owned policy file is missing or broken: an operator problem, not the user's. */
export class PolicyInvalidError extends IssuesError {
  readonly code = 'AIRLOCK_E_POLICY_INVALID';
  override readonly httpStatus = 500;
}

/** The job's image is not present on the engine (there is no registry to pull from). */
export class ImageNotFoundError extends AirlockError {
  readonly code = 'AIRLOCK_E_IMAGE_NOT_FOUND';
  override readonly httpStatus = 422;
  constructor(readonly image: string) {
    super(`image ${JSON.stringify(image)} is not present on this engine`);
  }
}

/** The runtime asked for cannot run this image (e.g. runsc for an image that failed the self-test). */
export class RuntimeUnavailableError extends AirlockError {
  readonly code = 'AIRLOCK_E_RUNTIME_UNAVAILABLE';
  override readonly httpStatus = 422;
}

/** The container engine cannot be reached at all. */
export class EngineUnavailableError extends AirlockError {
  readonly code = 'AIRLOCK_E_ENGINE_UNAVAILABLE';
  override readonly httpStatus = 503;
  override readonly retryable = true;
}

/** airlock or the engine failed while running a job: not the job's fault; may be retried. */
export class ExecutorFailedError extends AirlockError {
  readonly code = 'AIRLOCK_E_EXECUTOR_FAILED';
  override readonly httpStatus = 502;
  override readonly retryable = true;
}

/** An artifact archive holds an entry that would land outside its destination, or an unsafe kind. */
export class ArtifactRejectedError extends AirlockError {
  readonly code = 'AIRLOCK_E_ARTIFACT_REJECTED';
  override readonly httpStatus = 422;
}

/** The job's artifacts exceed the size or file-count cap. */
export class ArtifactTooLargeError extends AirlockError {
  readonly code = 'AIRLOCK_E_ARTIFACT_TOO_LARGE';
  override readonly httpStatus = 422;
}

/** The operation was cancelled by its caller (AbortSignal). */
export class CancelledError extends AirlockError {
  readonly code = 'AIRLOCK_E_CANCELLED';
  override readonly httpStatus = 409;
}

/** The thing asked for (a build, a change, a stored object) does not exist. */
export class NotFoundError extends AirlockError {
  readonly code = 'AIRLOCK_E_NOT_FOUND';
  override readonly httpStatus = 404;
}

/** The request carries no valid credential or signature (a webhook's shared secret, a hint's HMAC). */
export class UnauthorizedError extends AirlockError {
  readonly code = 'AIRLOCK_E_UNAUTHORIZED';
  override readonly httpStatus = 401;
}

/** The request is well-formed but contradicts what is stored (e.g. a patchset older than the newest). */
export class ConflictError extends AirlockError {
  readonly code = 'AIRLOCK_E_CONFLICT';
  override readonly httpStatus = 409;
}

/** Too many requests from one client in the window (webhooks, API): try again later. */
/** No CI replica leads at the moment, or the leader does not answer a follower (untrusted-ci/api/forward.ts): one takes over within seconds. */
export class NoLeaderError extends AirlockError {
  readonly code = 'AIRLOCK_E_UNAVAILABLE';
  override readonly httpStatus = 503;
  override readonly retryable = true;
}

export class RateLimitedError extends AirlockError {
  readonly code = 'AIRLOCK_E_RATE_LIMITED';
  override readonly httpStatus = 429;
  override readonly retryable = true;
}

/** The request body is larger than the endpoint accepts. */
export class PayloadTooLargeError extends AirlockError {
  readonly code = 'AIRLOCK_E_PAYLOAD_TOO_LARGE';
  override readonly httpStatus = 413;
}

/** Log or artifact storage (filesystem, S3) failed: not the job's fault; may be retried. */
export class StorageFailedError extends AirlockError {
  readonly code = 'AIRLOCK_E_STORAGE_FAILED';
  override readonly httpStatus = 502;
  override readonly retryable = true;
}

/** A git operation airlock ran (fetch, clone, merge machinery) failed for a reason other than a merge conflict. */
export class GitFailedError extends AirlockError {
  readonly code = 'AIRLOCK_E_GIT_FAILED';
  override readonly httpStatus = 502;
  override readonly retryable = true;
}

/** The project's build environment (its Dockerfile) could not be built: the project's fault, reported as a result. */
export class EnvironmentBuildFailedError extends AirlockError {
  readonly code = 'AIRLOCK_E_ENVIRONMENT_BUILD_FAILED';
  override readonly httpStatus = 422;
}

/** The image registry cannot be reached or keeps answering 5xx, even after retries with backoff; nothing was published. */
export class RegistryUnavailableError extends AirlockError {
  readonly code = 'AIRLOCK_E_REGISTRY_UNAVAILABLE';
  override readonly httpStatus = 503;
  override readonly retryable = true;
}

/** The image registry refused airlock's own credentials (401/403): an operator problem that a retry cannot fix. */
export class RegistryAuthFailedError extends AirlockError {
  readonly code = 'AIRLOCK_E_REGISTRY_AUTH_FAILED';
  override readonly httpStatus = 502;
}

/** The code-review system (Gerrit) could not be reached, timed out or kept answering 5xx/429. */
export class ReviewUnavailableError extends AirlockError {
  readonly code = 'AIRLOCK_E_REVIEW_UNAVAILABLE';
  override readonly httpStatus = 503;
  override readonly retryable = true;
}

/** The code-review system refused our own credentials (401): its account or password needs fixing. */
export class ReviewAuthFailedError extends AirlockError {
  readonly code = 'AIRLOCK_E_REVIEW_AUTH_FAILED';
  override readonly httpStatus = 502;
}

/**
 * The code-review system refused a request for a reason about the request itself (400, 403, 404,
 * 409, 412, 422): a change that is not submittable, a vote on a closed change, a permission our
 * account lacks. `status` is its HTTP status; the message quotes its reason (capped).
 */
export class ReviewRefusedError extends AirlockError {
  readonly code = 'AIRLOCK_E_REVIEW_REFUSED';
  override readonly httpStatus = 409;
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

/** A signature or provenance does not verify, or vouches for something else than what it came with (the message says what differs). */
export class SignatureInvalidError extends AirlockError {
  readonly code = 'AIRLOCK_E_SIGNATURE_INVALID';
  override readonly httpStatus = 422;
}

/** A bug or an unexpected failure inside airlock; the message names no internals beyond the cause's summary. */
export class InternalError extends AirlockError {
  readonly code = 'AIRLOCK_E_INTERNAL';
  override readonly httpStatus = 500;
}

/** Every concrete error class, for the catalogue test and for docs. */
export const ERROR_CLASSES = {
  InvalidInputError,
  PolicyViolationError,
  PolicyInvalidError,
  ImageNotFoundError,
  RuntimeUnavailableError,
  EngineUnavailableError,
  ExecutorFailedError,
  ArtifactRejectedError,
  ArtifactTooLargeError,
  CancelledError,
  NotFoundError,
  UnauthorizedError,
  ConflictError,
  RateLimitedError,
  NoLeaderError,
  PayloadTooLargeError,
  StorageFailedError,
  GitFailedError,
  EnvironmentBuildFailedError,
  RegistryUnavailableError,
  RegistryAuthFailedError,
  ReviewUnavailableError,
  ReviewAuthFailedError,
  ReviewRefusedError,
  SignatureInvalidError,
  InternalError,
} as const;

export function isAirlockError(e: unknown): e is AirlockError {
  return e instanceof AirlockError;
}
