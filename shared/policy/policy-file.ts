/**
 * One way to read an SRE policy file (`policies/*.yaml`): bounded YAML, then its zod schema, every
 * problem collected with file and path. A broken policy is an operator problem (PolicyInvalidError),
 * never a project's.
 */
import { readFileSync } from 'node:fs';
import type { z } from 'zod';
import { PolicyInvalidError, type Issue } from '../errors.js';
import { zodIssues } from '../schemas/issues.js';
import { parseYaml } from '../yaml.js';

/** Parse policy text against `schema`, collecting every problem. */
export function parsePolicyText<S extends z.ZodType>(schema: S, text: string, file: string): { value?: z.infer<S>; issues: Issue[] } {
  const y = parseYaml(text, file);
  if (y.issues.length > 0) return { issues: y.issues };
  const r = schema.safeParse(y.value);
  return r.success ? { value: r.data, issues: [] } : { issues: zodIssues(r.error, file) };
}

/** A policy file's text, or PolicyInvalidError naming the file when it cannot be read. */
export function readPolicyText(file: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch (e) {
    throw new PolicyInvalidError([{ file, path: '', message: `cannot read: ${(e as Error).message}`, severity: 'error' }]);
  }
}

/** Read and parse a policy file, or throw PolicyInvalidError listing every problem. */
export function loadPolicyFile<S extends z.ZodType>(schema: S, file: string): z.infer<S> {
  const r = parsePolicyText(schema, readPolicyText(file), file);
  if (!r.value) throw new PolicyInvalidError(r.issues);
  return r.value;
}
