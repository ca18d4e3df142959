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
  if (doc.errors.length > 0) {
    return { issues: doc.errors.map((e) => ({ file, path: '', message: `YAML: ${e.message.split('\n')[0]}`, severity: 'error' as const })) };
  }
  let value: unknown;
  try {
    value = doc.toJS({ maxAliasCount: 100 });
  } catch (e) {
    return err(`YAML: ${(e as Error).message.split('\n')[0]}`);
  }
  if (depth(value, 0) > YAML_MAX_DEPTH) return err(`nested deeper than ${YAML_MAX_DEPTH} levels`);
  return { value, issues: [] };
}

function depth(v: unknown, d: number): number {
  if (d > YAML_MAX_DEPTH) return d;
  if (v === null || typeof v !== 'object') return d;
  let max = d;
  for (const child of Object.values(v)) max = Math.max(max, depth(child, d + 1));
  return max;
}
