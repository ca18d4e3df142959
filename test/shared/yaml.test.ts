import { describe, expect, it } from 'vitest';
import { formatIssues } from '#shared/errors.js';
import { parseYaml, YAML_MAX_BYTES, YAML_MAX_DEPTH, YAML_MAX_ENTRIES } from '#shared/yaml.js';

/** `levels` nested flow sequences around one scalar: `[[[1]]]` is 3. */
const nested = (levels: number) => `${'['.repeat(levels)}1${']'.repeat(levels)}`;

/** The classic: nine levels of nine aliases each, 9^9 "lol"s if expanded. */
function billionLaughs(): string {
  const names = 'abcdefghi';
  let text = `a: &a [${Array(9).fill('"lol"').join(', ')}]\n`;
  for (let i = 1; i < names.length; i++) {
    text += `${names[i]}: &${names[i]} [${Array(9).fill(`*${names[i - 1]}`).join(', ')}]\n`;
  }
  return text;
}

describe('parseYaml', () => {
  it('returns the value of valid YAML', () => {
    const r = parseYaml('version: 1\nlimits: { memory: 256m, cpus: 0.5 }\nlist:\n  - a\n  - 2\nshared: &x { k: v }\nagain: *x\n', 'ok.yaml');
    expect(r.issues).toEqual([]);
    expect(r.value).toEqual({ version: 1, limits: { memory: '256m', cpus: 0.5 }, list: ['a', 2], shared: { k: 'v' }, again: { k: 'v' } });
  });

  it('rejects a billion-laughs alias bomb with an issue, quickly', () => {
    const started = performance.now();
    const r = parseYaml(billionLaughs(), 'bomb.yaml');
    expect(performance.now() - started).toBeLessThan(2000);
    expect(r.value).toBeUndefined();
    expect(r.issues).toHaveLength(1);
    expect(r.issues[0]).toMatchObject({ file: 'bomb.yaml', severity: 'error' });
    expect(r.issues[0]?.message).toMatch(/alias/i);
  }, 10_000);

  it(`accepts ${YAML_MAX_DEPTH} levels of nesting and rejects ${YAML_MAX_DEPTH + 1}`, () => {
    const ok = parseYaml(nested(YAML_MAX_DEPTH), 'deep.yaml');
    expect(ok.issues).toEqual([]);
    expect(ok.value).toBeDefined();
    const tooDeep = parseYaml(nested(YAML_MAX_DEPTH + 1), 'deep.yaml');
    expect(tooDeep.value).toBeUndefined();
    expect(tooDeep.issues).toEqual([{ file: 'deep.yaml', path: '', message: `nested deeper than ${YAML_MAX_DEPTH} levels`, severity: 'error' }]);
  });

  it('rejects deep block mappings too', () => {
    let text = '';
    for (let i = 0; i <= YAML_MAX_DEPTH + 1; i++) text += `${'  '.repeat(i)}k${i}:\n`;
    text += `${'  '.repeat(YAML_MAX_DEPTH + 2)}leaf\n`;
    const r = parseYaml(text, 'deep.yaml');
    expect(r.value).toBeUndefined();
    expect(r.issues[0]?.message).toContain('nested deeper');
  });

  it('rejects absurd nesting with an issue instead of overflowing the stack', () => {
    const r = parseYaml(nested(100_000), 'abyss.yaml');
    expect(r.value).toBeUndefined();
    expect(r.issues.length).toBeGreaterThan(0);
    expect(r.issues.every((i) => i.file === 'abyss.yaml' && i.severity === 'error')).toBe(true);
  }, 20_000);

  it('rejects a file larger than 1 MiB before parsing it', () => {
    expect(YAML_MAX_BYTES).toBe(1024 * 1024);
    const text = `a: "${'x'.repeat(YAML_MAX_BYTES)}"\n`;
    const r = parseYaml(text, 'big.yaml');
    expect(r.value).toBeUndefined();
    expect(r.issues).toHaveLength(1);
    expect(r.issues[0]?.message).toContain(String(YAML_MAX_BYTES));
  });

  it('counts the cap in UTF-8 bytes, not characters', () => {
    const euro = '€'; // 3 bytes in UTF-8
    const text = `a: "${euro.repeat(Math.ceil(YAML_MAX_BYTES / 3))}"\n`;
    expect(text.length).toBeLessThan(YAML_MAX_BYTES);
    expect(parseYaml(text, 'utf8.yaml').issues[0]?.message).toContain('larger than');
  });

  it('accepts a file just under the cap', () => {
    const text = `a: ${'x'.repeat(YAML_MAX_BYTES - 10)}\n`;
    const r = parseYaml(text, 'edge.yaml');
    expect(r.issues).toEqual([]);
    expect((r.value as { a: string }).a).toHaveLength(YAML_MAX_BYTES - 10);
  });

  it('rejects duplicate keys, also nested ones', () => {
    for (const text of ['a: 1\na: 2\n', 'limits:\n  memory: 1g\n  memory: 2g\n']) {
      const r = parseYaml(text, 'dup.yaml');
      expect(r.value).toBeUndefined();
      expect(r.issues).toHaveLength(1);
      expect(r.issues[0]?.message).toMatch(/unique/i);
    }
  });

  it('turns a syntax error into an issue naming the file', () => {
    const r = parseYaml('limits: [1, 2\nversion: 1\n', 'policies/bad.yaml');
    expect(r.value).toBeUndefined();
    expect(r.issues.length).toBeGreaterThan(0);
    expect(r.issues[0]).toMatchObject({ file: 'policies/bad.yaml', severity: 'error' });
    expect(r.issues[0]?.message).toMatch(/^YAML: /);
    expect(formatIssues(r.issues)).toContain('policies/bad.yaml: (root): YAML:');
    // Where: the unclosed flow sequence is found at the start of line 2; in the message and in the fields.
    expect(r.issues[0]).toMatchObject({ line: 2, column: 1 });
    expect(r.issues[0]?.message).toMatch(/ \(line 2, column 1\)$/);
  });

  it('rejects unknown tags instead of passing them on as strings', () => {
    const r = parseYaml('a: !!js/function "function () {}"\n', 'tags.yaml');
    expect(r.value).toBeUndefined();
    expect(r.issues[0]?.message).toMatch(/Unresolved tag/);
  });

  it('rejects more than one document', () => {
    const r = parseYaml('a: 1\n---\nb: 2\n', 'multi.yaml');
    expect(r.value).toBeUndefined();
    expect(r.issues[0]?.message).toMatch(/multiple documents/);
  });
});

describe('parseYaml bounds (a hostile config must not hold the event loop)', () => {
  it('refuses more than YAML_MAX_ENTRIES entries, and finds a duplicate key among many without comparing every pair', () => {
    let text = 'jobs:\n';
    for (let i = 0; i <= YAML_MAX_ENTRIES; i++) text += `  j${i}: 1\n`;
    expect(parseYaml(text, 'f').issues.map((i) => i.message)).toEqual([`more than ${YAML_MAX_ENTRIES} entries`]);
    let dup = 'jobs:\n';
    for (let i = 0; i < 5000; i++) dup += `  j${i}: 1\n`;
    dup += '  j17: 2\n';
    // Named where it is given the second time: after `jobs:` and the 5000 keys, line 5002, column 3.
    expect(parseYaml(dup, 'f').issues).toEqual([{ file: 'f', path: '', message: 'YAML: map keys must be unique ("j17" is given twice) (line 5002, column 3)', severity: 'error', line: 5002, column: 3 }]);
  });
});
