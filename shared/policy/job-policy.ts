/**
 * Loading `policies/untrusted-job.yaml` and applying it to a job's request.
 * `checkAgainstPolicy` is pure and is tested as a table: a job may tighten every limit, loosen none.
 */
import { fileURLToPath } from 'node:url';
import { loadPolicyFile, parsePolicyText } from './policy-file.js';
import { PolicyViolationError, type Issue } from '../errors.js';
import { JobPolicy } from '../schemas/job-policy.js';
import { LIMIT_UNITS, type Limits, type LimitsRequest, type Runtime } from '../schemas/limits.js';
import { formatBytes, formatDuration } from '../units.js';

export const DEFAULT_JOB_POLICY_FILE = fileURLToPath(new URL('../../policies/untrusted-job.yaml', import.meta.url));

/** Parse policy text, collecting every problem. */
export function parseJobPolicy(text: string, file: string): { value?: JobPolicy; issues: Issue[] } {
  return parsePolicyText(JobPolicy, text, file);
}

/** Load the policy file or throw PolicyInvalidError listing every problem. */
export function loadJobPolicy(file: string = DEFAULT_JOB_POLICY_FILE): JobPolicy {
  return loadPolicyFile(JobPolicy, file);
}

/** gVisor is stricter than runc: asking for it tightens, asking for runc under a runsc default loosens. */
const RUNTIME_STRICTNESS: Record<Runtime, number> = { runc: 0, runsc: 1 };

function describe(key: keyof Limits, v: number): string {
  const unit = LIMIT_UNITS[key];
  return unit === 'ms' ? formatDuration(v) : unit === 'count' ? String(v) : formatBytes(v);
}

/**
 * The issues a request raises against policy: one per field asked above its ceiling, and one for
 * a runtime the policy does not allow or that would loosen isolation. Empty: the request fits.
 */
export function checkAgainstPolicy(request: LimitsRequest, runtime: Runtime | undefined, policy: JobPolicy, file = 'job'): Issue[] {
  const issues: Issue[] = [];
  const ceiling: Limits = policy.limits;
  for (const key of Object.keys(LIMIT_UNITS) as (keyof Limits)[]) {
    const asked = request[key];
    if (asked !== undefined && asked > ceiling[key]) {
      issues.push({
        file,
        path: `limits.${key}`,
        message: `asks for ${describe(key, asked)}, policy allows at most ${describe(key, ceiling[key])}`,
        severity: 'error',
      });
    }
  }
  if (runtime !== undefined) {
    if (!policy.runtime.allowed.includes(runtime)) {
      issues.push({ file, path: 'runtime', message: `runtime ${runtime} is not allowed by policy (allowed: ${policy.runtime.allowed.join(', ')})`, severity: 'error' });
    } else if (RUNTIME_STRICTNESS[runtime] < RUNTIME_STRICTNESS[policy.runtime.default]) {
      issues.push({ file, path: 'runtime', message: `runtime ${runtime} would loosen isolation below the policy default ${policy.runtime.default}`, severity: 'error' });
    }
  }
  return issues;
}

/** The limits and runtime a job gets: its request where it tightens, policy elsewhere. Throws on any loosening. */
export function resolveLimits(
  request: LimitsRequest,
  runtime: Runtime | undefined,
  policy: JobPolicy,
  file = 'job',
): { limits: Limits; runtime: Runtime } {
  const issues = checkAgainstPolicy(request, runtime, policy, file);
  if (issues.length > 0) throw new PolicyViolationError(issues);
  const limits: Limits = { ...policy.limits };
  for (const key of Object.keys(LIMIT_UNITS) as (keyof Limits)[]) {
    const asked = request[key];
    if (asked !== undefined) limits[key] = asked;
  }
  return { limits, runtime: runtime ?? policy.runtime.default };
}
