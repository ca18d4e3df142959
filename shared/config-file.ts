/**
 * Reading a service's config file (the CI's, the builder's): its YAML as a plain value, or an
 * InvalidInputError naming the file and every problem. Validation is the caller's schema.
 */
import { readFileSync } from 'node:fs';
import { basename, isAbsolute, resolve } from 'node:path';
import { InvalidInputError, type Issue } from './errors.js';
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

/**
 * For an error about a path written in a config file: what a relative one was resolved against
 * (the config file's directory), so that a path that exists in the operator's shell but not beside
 * the config reads as what it is. `given` undefined: the path was the schema's default. An absolute
 * path needs no note ('').
 */
export function resolvedNote(given: string | undefined, baseDir: string, configFile: string): string {
  if (given !== undefined && isAbsolute(given)) return '';
  const what = given === undefined ? 'the default, a relative path,' : `the relative path ${JSON.stringify(given)}`;
  return ` (${what} resolves against ${baseDir}, the directory of ${basename(configFile)}; write an absolute path to use another)`;
}

/**
 * A secret (token, key) from a file a config names: its text trimmed, at least 16 bytes. Undefined,
 * with an issue at `at` pushed on `issues`, when the file cannot be read or holds less.
 */
export function readSecretFile(path: string, at: string, configFile: string, baseDir: string, issues: Issue[]): Buffer | undefined {
  const full = isAbsolute(path) ? path : resolve(baseDir, path);
  try {
    const trimmed = Buffer.from(readFileSync(full, 'utf8').trim(), 'utf8');
    if (trimmed.length < 16) issues.push({ file: configFile, path: at, message: 'the secret must be at least 16 bytes', severity: 'error' });
    return trimmed;
  } catch (e) {
    issues.push({ file: configFile, path: at, message: `cannot read ${full}: ${(e as NodeJS.ErrnoException).code ?? 'error'}${resolvedNote(path, baseDir, configFile)}`, severity: 'error' });
    return undefined;
  }
}
