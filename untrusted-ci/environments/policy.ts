/**
 * Loading `policies/environments.yaml`. Every problem is collected with its path; a broken file is
 * an operator problem (PolicyInvalidError), never the project's.
 */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { PolicyInvalidError, type Issue } from '../../shared/errors.js';
import { EnvironmentPolicy } from '../../shared/schemas/environment-policy.js';
import { zodIssues } from '../../shared/schemas/issues.js';
import { parseYaml } from '../../shared/yaml.js';

export const DEFAULT_ENVIRONMENT_POLICY_FILE = fileURLToPath(new URL('../../policies/environments.yaml', import.meta.url));

/** Parse policy text, collecting every problem. */
export function parseEnvironmentPolicy(text: string, file: string): { value?: EnvironmentPolicy; issues: Issue[] } {
  const y = parseYaml(text, file);
  if (y.issues.length > 0) return { issues: y.issues };
  const r = EnvironmentPolicy.safeParse(y.value);
  return r.success ? { value: r.data, issues: [] } : { issues: zodIssues(r.error, file) };
}

/** Load the policy file or throw PolicyInvalidError listing every problem. */
export function loadEnvironmentPolicy(file: string = DEFAULT_ENVIRONMENT_POLICY_FILE): EnvironmentPolicy {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new PolicyInvalidError([{ file, path: '', message: `cannot read: ${(e as Error).message}`, severity: 'error' }]);
  }
  const r = parseEnvironmentPolicy(text, file);
  if (!r.value) throw new PolicyInvalidError(r.issues);
  return r.value;
}
