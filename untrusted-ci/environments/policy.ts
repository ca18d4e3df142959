/**
 * Loading `policies/environments.yaml`. Every problem is collected with its path; a broken file is
 * an operator problem (PolicyInvalidError), never the project's.
 */
import { fileURLToPath } from 'node:url';
import { loadPolicyFile, parsePolicyText } from '#shared/policy/policy-file.js';
import type { Issue } from '#shared/errors.js';
import { EnvironmentPolicy } from '../schemas/environment-policy.js';

export const DEFAULT_ENVIRONMENT_POLICY_FILE = fileURLToPath(new URL('../../policies/environments.yaml', import.meta.url));

/** Parse policy text, collecting every problem. */
export function parseEnvironmentPolicy(text: string, file: string): { value?: EnvironmentPolicy; issues: Issue[] } {
  return parsePolicyText(EnvironmentPolicy, text, file);
}

/** Load the policy file or throw PolicyInvalidError listing every problem. */
export function loadEnvironmentPolicy(file: string = DEFAULT_ENVIRONMENT_POLICY_FILE): EnvironmentPolicy {
  return loadPolicyFile(EnvironmentPolicy, file);
}
