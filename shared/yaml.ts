/**
 * YAML for files airlock did not write. Bounded: a size cap, a cap on alias expansion (billion
 * laughs), a nesting cap, and duplicate keys are errors. Returns issues instead of throwing.
 */
import { parseDocument } from 'yaml';
import type { Issue } from './errors.js';

export const YAML_MAX_BYTES = 1024 * 1024; // 1 MiB
export const YAML_MAX_DEPTH = 32;

export function parseYaml(text: string, file: string): { value?: unknown; issues: Issue[] } {
  const err = (message: string): { issues: Issue[] } => ({ issues: [{ file, path: '', message, severity: 'error' }] });
  if (Buffer.byteLength(text) > YAML_MAX_BYTES) return err(`file is larger than ${YAML_MAX_BYTES} bytes`);
  const doc = parseDocument(text, { uniqueKeys: true, prettyErrors: false, strict: true });
  // Warnings (an unknown tag such as !!js/function, …) are errors here: nothing is guessed.
  const problems = [...doc.errors, ...doc.warnings];
  if (problems.length > 0) {
    return { issues: problems.map((e) => ({ file, path: '', message: `YAML: ${e.message.split('\n')[0]}`, severity: 'error' as const })) };
  }
  let value: unknown;
  try {
    value = doc.toJS({ maxAliasCount: 100 });
  } catch (e) {
    return err(`YAML: ${(e as Error).message.split('\n')[0]}`);
  }
  if (depth(value) > YAML_MAX_DEPTH) return err(`nested deeper than ${YAML_MAX_DEPTH} levels`);
  return { value, issues: [] };
}

/** Levels of nested mappings and sequences (a scalar is 0, `{}` and `[]` are 1); iterative, so any depth is safe to measure. */
function depth(root: unknown): number {
  let max = 0;
  const stack: [unknown, number][] = [[root, 0]];
  while (stack.length > 0) {
    const [v, d] = stack.pop() as [unknown, number];
    if (v === null || typeof v !== 'object') continue;
    max = Math.max(max, d + 1);
    if (max > YAML_MAX_DEPTH) return max;
    for (const child of Object.values(v)) stack.push([child, d + 1]);
  }
  return max;
}
