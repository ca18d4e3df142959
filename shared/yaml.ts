/**
 * YAML for files airlock did not write. Bounded: a size cap, a cap on alias expansion (billion
 * laughs), a nesting cap, a cap on entries, and duplicate keys are errors. Returns issues instead
 * of throwing. A syntax error names its line and column (1-based), in the message and in the
 * issue's `line` and `column`.
 *
 * Duplicate keys are found here with a Set per mapping, in one pass that also counts the entries:
 * the yaml library's own `uniqueKeys` check compares every key with every other (a 1 MiB file of
 * 88k keys took 25 s, blocking the service), and nothing after parsing should see 88k entries.
 */
import { isNode, isScalar, LineCounter, parseDocument, visit } from 'yaml';
import type { Issue } from './errors.js';

export const YAML_MAX_BYTES = 1024 * 1024; // 1 MiB
export const YAML_MAX_DEPTH = 32;
/** Mapping pairs and sequence items in all. */
export const YAML_MAX_ENTRIES = 20_000;

export function parseYaml(text: string, file: string): { value?: unknown; issues: Issue[] } {
  const err = (message: string): { issues: Issue[] } => ({ issues: [{ file, path: '', message, severity: 'error' }] });
  if (Buffer.byteLength(text) > YAML_MAX_BYTES) return err(`file is larger than ${YAML_MAX_BYTES} bytes`);
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { uniqueKeys: false, prettyErrors: false, strict: true, lineCounter });
  // Warnings (an unknown tag such as !!js/function, …) are errors here: nothing is guessed.
  const problems = [...doc.errors, ...doc.warnings];
  if (problems.length > 0) {
    return {
      issues: problems.map((e) => {
        const { line, col } = lineCounter.linePos(e.pos[0]);
        return { file, path: '', message: `YAML: ${e.message.split('\n')[0]} (line ${line}, column ${col})`, severity: 'error' as const, line, column: col };
      }),
    };
  }
  let entries = 0;
  let duplicate: { key: string; at?: number } | undefined;
  visit(doc, {
    Map(_, map) {
      entries += map.items.length;
      const seen = new Set<string>();
      for (const pair of map.items) {
        const key = isScalar(pair.key) ? `s:${String(pair.key.value)}` : `n:${String(pair.key)}`;
        if (seen.has(key)) {
          const at = isNode(pair.key) ? pair.key.range?.[0] : undefined;
          duplicate = { key: isScalar(pair.key) ? String(pair.key.value) : String(pair.key), ...(at !== undefined ? { at } : {}) };
          return visit.BREAK;
        }
        seen.add(key);
      }
      return entries > YAML_MAX_ENTRIES ? visit.BREAK : undefined;
    },
    Seq(_, seq) {
      entries += seq.items.length;
      return entries > YAML_MAX_ENTRIES ? visit.BREAK : undefined;
    },
  });
  if (duplicate !== undefined) {
    const message = `YAML: map keys must be unique (${JSON.stringify(duplicate.key.slice(0, 100))} is given twice)`;
    if (duplicate.at === undefined) return err(message);
    const { line, col } = lineCounter.linePos(duplicate.at);
    return { issues: [{ file, path: '', message: `${message} (line ${line}, column ${col})`, severity: 'error', line, column: col }] };
  }
  if (entries > YAML_MAX_ENTRIES) return err(`more than ${YAML_MAX_ENTRIES} entries`);
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
