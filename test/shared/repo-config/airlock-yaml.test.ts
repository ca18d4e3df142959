import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { loadJobPolicy } from '#shared/policy/job-policy.js';
import { parseAirlockYaml } from '#shared/repo-config/airlock-yaml.js';
import { airlockYamlJsonSchema } from '#shared/schemas/airlock-yaml.js';
import { render, SCHEMA_FILES } from '../../../scripts/gen-schemas.js';

const policy = loadJobPolicy();
const parse = (text: string) => parseAirlockYaml(text, policy);

const GOOD = `
version: 1
environment:
  dockerfile: ci/Dockerfile
jobs:
  build:
    command: make
    resources: { memory: 512m, cpus: 0.5 }
    timeout: 5m
    artifacts: ["dist/**"]
  test:
    command: [make, test]
    needs: [build]
    pipelines: [check]
  lint:
    command: make lint
    voting: false
publish:
  dockerfile: deploy/Dockerfile
`;

describe('.airlock.yaml', () => {
  it('parses a good file, with defaults filled in and sizes in bytes', () => {
    const r = parse(GOOD);
    expect(r.issues).toEqual([]);
    expect(r.value?.environment).toEqual({ dockerfile: 'ci/Dockerfile' });
    // resources and timeout become one limits object, in bytes and milliseconds
    expect(r.value?.jobs.build?.limits).toEqual({ memory: 512 * 1024 ** 2, cpus: 0.5, timeout: 300_000 });
    expect(r.value?.jobs.build).not.toHaveProperty('resources');
    expect(r.value?.jobs.build).not.toHaveProperty('timeout');
    expect(r.value?.jobs.test?.pipelines).toEqual(['check']);
    expect(r.value?.jobs.lint?.pipelines).toEqual(['check', 'gate']);
    expect(r.value?.jobs.lint?.voting).toBe(false);
    expect(r.value?.publish).toEqual({ dockerfile: 'deploy/Dockerfile', context: '.' });
  });

  it('lists every problem at once, each named by file and path', () => {
    const r = parse(`
version: 1
environment: { image: "Not An Image!" }
jobs:
  Bad-Name: { command: x }
  test:
    command: []
    resources: { memory: lots, gpus: 1 }
    timeout: forever
    pipelines: [deploy]
`);
    expect(r.value).toBeUndefined();
    const got = r.issues.map((i) => i.path);
    expect(got).toEqual(expect.arrayContaining(['environment.image', 'jobs.Bad-Name', 'jobs.test.command', 'jobs.test.resources.memory', 'jobs.test.resources', 'jobs.test.timeout', 'jobs.test.pipelines[0]']));
    expect(r.issues.every((i) => i.file === '.airlock.yaml' && i.severity === 'error' && i.message.length > 0)).toBe(true);
    expect(r.issues.find((i) => i.path === 'jobs.Bad-Name')?.message).toMatch(/^invalid name "Bad-Name": job names are 1-63 characters/);
  });

  it('refuses requests beyond policy, naming the field as the repo wrote it', () => {
    const r = parse('version: 1\nenvironment: { image: airlock/base:busybox }\njobs:\n  t: { command: x, resources: { memory: 64g, pids: 100000 }, timeout: 48h }\n');
    expect(r.value).toBeUndefined();
    expect(r.issues.map((i) => i.path).sort()).toEqual(['jobs.t.resources.memory', 'jobs.t.resources.pids', 'jobs.t.timeout']);
    expect(r.issues.find((i) => i.path === 'jobs.t.resources.memory')?.message).toBe('asks for 64 GiB, policy allows at most 1 GiB');
  });

  it.each([
    ['a need that is not a job', 'a: { command: x, needs: [nope] }', ['jobs.a.needs[0]']],
    ['a job that needs itself', 'a: { command: x, needs: [a] }', ['jobs.a.needs[0]']],
    ['a cycle', 'a: { command: x, needs: [b] }\n  b: { command: x, needs: [c] }\n  c: { command: x, needs: [a] }', ['jobs.c.needs']],
  ])('refuses %s', (_name, jobs, want) => {
    const r = parse(`version: 1\nenvironment: { image: airlock/base:busybox }\njobs:\n  ${jobs}\n`);
    expect(r.value).toBeUndefined();
    expect(r.issues.map((i) => i.path)).toEqual(want);
  });

  it('names the cycle it found', () => {
    const r = parse('version: 1\nenvironment: { image: airlock/base:busybox }\njobs:\n  a: { command: x, needs: [b] }\n  b: { command: x, needs: [a] }\n');
    expect(r.issues[0]?.message).toBe('needs form a cycle: a → b → a');
  });

  it.each([
    ['a Dockerfile outside the repo', 'environment: { dockerfile: ../../etc/Dockerfile }'],
    ['an absolute Dockerfile path', 'environment: { dockerfile: /etc/Dockerfile }'],
    ['an artifact glob that climbs', 'environment: { image: airlock/base:busybox }\njobs: { a: { command: x, artifacts: ["../x"] } }'],
  ])('refuses %s', (_name, body) => {
    const text = body.includes('jobs:') ? `version: 1\n${body}\n` : `version: 1\n${body}\njobs: { a: { command: x } }\n`;
    expect(parse(text).value).toBeUndefined();
  });

  it('rejects hostile YAML with an issue, never a crash: alias bombs, deep nesting, unknown tags, huge files', () => {
    const bomb = ['a: &a ["x","x","x","x","x","x","x","x","x"]', ...Array.from({ length: 8 }, (_, i) => `${String.fromCharCode(98 + i)}: &${String.fromCharCode(98 + i)} [*${String.fromCharCode(97 + i)},*${String.fromCharCode(97 + i)},*${String.fromCharCode(97 + i)},*${String.fromCharCode(97 + i)},*${String.fromCharCode(97 + i)},*${String.fromCharCode(97 + i)},*${String.fromCharCode(97 + i)},*${String.fromCharCode(97 + i)},*${String.fromCharCode(97 + i)}]`)].join('\n');
    for (const text of [bomb, `${'['.repeat(200)}${']'.repeat(200)}`, 'version: !!js/function "x"', `x: "${'a'.repeat(2 * 1024 * 1024)}"`, '', 'just a string', '- a list']) {
      const r = parse(text);
      expect(r.value).toBeUndefined();
      expect(r.issues.length).toBeGreaterThan(0);
    }
  });

  it('a YAML syntax error names its line and column, in the issue and in its message', () => {
    const r = parse('version: 1\nenvironment: { image: airlock/base:busybox }\njobs:\n  test: { command: make\n  lint: { command: make lint }\n');
    expect(r.value).toBeUndefined();
    expect(r.partial).toBeUndefined();
    expect(r.issues[0]).toMatchObject({ file: '.airlock.yaml', path: '', severity: 'error', line: 5, column: 3 });
    expect(r.issues[0]?.message).toMatch(/^YAML: .* \(line 5, column 3\)$/);
  });

  it('a missing key says "required", whatever its type', () => {
    const r = parse('environment: { image: airlock/base:busybox }\njobs:\n  test: { timeout: 5m }\npublish: { context: . }\n');
    expect(r.issues.map((i) => `${i.path}: ${i.message}`)).toEqual(['version: required', 'jobs.test.command: required', 'publish.dockerfile: required']);
    const none = parse('version: 1\n');
    expect(none.issues.map((i) => `${i.path}: ${i.message}`)).toEqual(['environment: required', 'jobs: required']);
  });

  it('an unknown key that is a near miss of a known one says which: within 2 edits, or in another case', () => {
    const r = parse(
      [
        'version: 1',
        'Environment: { image: airlock/base:busybox }',
        'jobs:',
        '  build: { command: make }',
        '  test: { comand: make test, nedds: [build], resources: { memroy: 512m }, colour: blue }',
        'pubish: { dockerfile: Dockerfile }',
        '',
      ].join('\n'),
    );
    expect(r.issues.map((i) => `${i.path}: ${i.message}`).sort()).toEqual(
      [
        '(root): Unrecognized key: "Environment"; did you mean "environment"?',
        '(root): Unrecognized key: "pubish"; did you mean "publish"?',
        'environment: required',
        'jobs.test.command: required',
        'jobs.test: Unrecognized key: "comand"; did you mean "command"?',
        'jobs.test: Unrecognized key: "nedds"; did you mean "needs"?',
        'jobs.test: Unrecognized key: "colour"',
        'jobs.test.resources: Unrecognized key: "memroy"; did you mean "memory"?',
      ]
        .map((x) => x.replace(/^\(root\)/, ''))
        .sort(),
    );
  });

  it('lists structural, needs and policy problems together; a broken job is skipped, not the others', () => {
    const r = parse(
      [
        'version: 1',
        'environment: { image: airlock/base:busybox }',
        'jobs:',
        '  build: { command: make, colour: blue }', // structural: this job is not checked further
        '  test: { command: make test, needs: [biuld] }', // needs
        '  big: { command: make, needs: [build], resources: { memory: 64g } }', // policy; needing the broken job is not "no job named"
        '',
      ].join('\n'),
    );
    expect(r.value).toBeUndefined();
    expect(r.issues.map((i) => `${i.path}: ${i.message}`)).toEqual([
      'jobs.build: Unrecognized key: "colour"',
      'jobs.test.needs[0]: no job named "biuld"; did you mean "build"?',
      'jobs.big.resources.memory: asks for 64 GiB, policy allows at most 1 GiB',
    ]);
    expect(Object.keys(r.partial?.jobs ?? {})).toEqual(['test', 'big']);
    expect(r.partial?.brokenJobs).toEqual(['build']);
    expect(r.partial?.environment).toEqual({ image: 'airlock/base:busybox' });
  });

  it('keeps the committed JSON Schema in step with the zod schema', () => {
    for (const [file, make] of Object.entries(SCHEMA_FILES)) {
      expect(readFileSync(new URL(`../../../${file}`, import.meta.url), 'utf8')).toBe(render(make));
    }
    const schema = airlockYamlJsonSchema() as { required?: string[]; additionalProperties?: boolean };
    expect(schema.required).toEqual(['version', 'environment', 'jobs']);
    expect(schema.additionalProperties).toBe(false);
  });
});
