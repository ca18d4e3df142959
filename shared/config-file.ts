/**
 * Reading a service's config file (the CI's, the builder's): its YAML as a plain value, or an
 * InvalidInputError naming the file and every problem. Validation is the caller's schema.
 */
import { readFileSync } from 'node:fs';
import { InvalidInputError } from './errors.js';
import { parseYaml } from './yaml.js';

export function readConfigFile(file: string): unknown {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new InvalidInputError([{ file, path: '', message: `cannot read: ${(e as NodeJS.ErrnoException).code ?? 'error'}`, severity: 'error' }]);
  }
  const y = parseYaml(text, file);
  if (y.issues.length > 0) throw new InvalidInputError(y.issues);
  return y.value;
}
