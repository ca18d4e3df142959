import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { PolicyInvalidError } from '#shared/errors.js';
import { checkDockerfile, checkImageAllowed, normalizeImageRef, parseDockerfile } from '#shared/docker/dockerfile.js';
import { DEFAULT_ENVIRONMENT_POLICY_FILE, loadEnvironmentPolicy, parseEnvironmentPolicy } from '../../../untrusted-ci/environments/policy.js';
import { BuildLog } from '#shared/docker/build-log.js';
import { environmentTag, sanitizeProject } from '../../../untrusted-ci/environments/environment-builder.js';

const ALLOW = ['airlock/base:busybox', 'airlock/base:bookworm'];
const F = 'ci/Dockerfile';

/** [name, Dockerfile, expected error messages (substrings, in order) per line: `line: text`, expected base images]. */
const TABLE: [string, string, string[], string[]][] = [
  ['plain', 'FROM airlock/base:busybox\nRUN echo hi > /hi\n', [], ['airlock/base:busybox']],
  ['docker.io prefix and case of keyword', 'from docker.io/airlock/base:bookworm\n', [], ['airlock/base:bookworm']],
  ['platform flag and AS', 'FROM --platform=linux/amd64 airlock/base:busybox AS build\nRUN true\nFROM build\n', [], ['airlock/base:busybox']],
  ['multi-stage with earlier names and COPY --from', 'FROM airlock/base:busybox AS a\nFROM airlock/base:bookworm AS b\nCOPY --from=a /x /x\nCOPY --from=0 /y /y\nFROM B\n', [], ['airlock/base:busybox', 'airlock/base:bookworm']],
  ['scratch is not an image', 'FROM scratch\nCOPY x /x\n', [], []],
  ['not allowed', 'FROM debian:bookworm\n', ['1: FROM image "debian:bookworm" is not an allowed base image'], []],
  ['no tag means latest', 'FROM airlock/base\n', ['1: FROM image "airlock/base" is not an allowed base image'], []],
  ['stage name used before it exists', 'FROM later\nFROM airlock/base:busybox AS later\n', ['1: FROM image "later" is not an allowed base image'], ['airlock/base:busybox']],
  ['ARG in FROM', 'ARG BASE=airlock/base:busybox\nFROM $BASE\n', ['2: FROM image "$BASE" uses variable substitution'], []],
  ['ARG in FROM with braces', 'ARG T=busybox\nFROM airlock/base:${T}\n', ['2: uses variable substitution'], []],
  ['continuation across a comment', 'FROM \\\n# a comment\n  airlock/base:busybox \\\n  AS x\nRUN a \\\n\n b\nFROM evil:1\n', ['8: FROM image "evil:1" is not an allowed'], ['airlock/base:busybox']],
  ['escape directive', '# escape=`\nFROM airlock/base:busybox `\n  AS x\nRUN echo \\\nFROM evil\n', ['5: FROM image "evil"'], ['airlock/base:busybox']],
  ['COPY --from an image', 'FROM airlock/base:busybox\nCOPY --from=nginx:latest /etc/nginx /x\n', ['2: COPY --from "nginx:latest" is not an allowed base image'], ['airlock/base:busybox']],
  ['COPY --from a variable', 'FROM airlock/base:busybox\nARG S\nCOPY --from=$S /a /b\n', ['3: COPY --from "$S" uses variable substitution'], ['airlock/base:busybox']],
  ['ADD url', 'FROM airlock/base:busybox\nADD https://example.com/x.tgz /x\n', ['2: ADD "https://example.com/x.tgz" would download'], ['airlock/base:busybox']],
  ['ADD url, JSON form', 'FROM airlock/base:busybox\nADD ["http://127.0.0.1:1/x", "/x"]\n', ['2: ADD "http://127.0.0.1:1/x" would download'], ['airlock/base:busybox']],
  ['ADD git', 'FROM airlock/base:busybox\nADD --keep-git-dir=true git@github.com:a/b.git /b\n', ['2: ADD "git@github.com:a/b.git" would download'], ['airlock/base:busybox']],
  ['ADD variable source', 'FROM airlock/base:busybox\nARG U=http://x\nADD $U /x\n', ['3: ADD source "$U" uses variable substitution'], ['airlock/base:busybox']],
  ['ADD local file is fine', 'FROM airlock/base:busybox\nADD files.tar /opt/\n', [], ['airlock/base:busybox']],
  ['RUN --network', 'FROM airlock/base:busybox\nRUN --network=host wget x\n', ['2: RUN --network is refused'], ['airlock/base:busybox']],
  ['RUN --security', 'FROM airlock/base:busybox\nRUN --security=insecure true\n', ['2: RUN --security is refused'], ['airlock/base:busybox']],
  ['RUN --mount from an image', 'FROM airlock/base:busybox\nRUN --mount=type=bind,from=evil:1,target=/e true\n', ['2: RUN --mount from "evil:1" is not an allowed'], ['airlock/base:busybox']],
  ['instruction before FROM', 'RUN true\nFROM airlock/base:busybox\n', ['1: RUN before the first FROM'], ['airlock/base:busybox']],
  ['no FROM', '# nothing\n', ['1: no FROM instruction'], []],
  ['FROM with junk', 'FROM airlock/base:busybox extra words\n', ['1: FROM takes an image'], []],
  ['several problems, all reported', 'FROM a:1\nFROM b:2\nADD http://x /y\n', ['1: "a:1"', '2: "b:2"', '3: ADD "http://x"'], []],
];

describe('checkDockerfile', () => {
  it.each(TABLE)('%s', (_name, text, expected, bases) => {
    const r = checkDockerfile(text, F, ALLOW);
    const errors = r.issues.filter((i) => i.severity === 'error');
    expect(errors.map((i) => `${i.path.slice(F.length + 1)}: ${i.message}`)).toHaveLength(expected.length);
    expected.forEach((e, k) => {
      const [line, text] = [e.slice(0, e.indexOf(':')), e.slice(e.indexOf(':') + 2)];
      expect(errors[k]?.path).toBe(`${F}:${line}`);
      expect(errors[k]?.message).toContain(text);
      expect(errors[k]?.file).toBe(F);
    });
    expect(r.baseImages).toEqual(bases);
  });

  it('refuses # syntax (a frontend image would read the file instead) and warns of RUN --mount', () => {
    const r = checkDockerfile('# syntax=docker/dockerfile:1\nFROM airlock/base:busybox\nRUN --mount=type=cache,target=/c true\n', F, ALLOW);
    expect(r.issues.map((i) => [i.severity, i.path])).toEqual([
      ['error', `${F}:1`],
      ['warning', `${F}:3`],
    ]);
  });

  it('refuses an oversized Dockerfile', () => {
    const r = checkDockerfile(`FROM airlock/base:busybox\n${'# x\n'.repeat(70_000)}`, F, ALLOW);
    expect(r.issues[0]?.message).toContain('larger than');
  });

  it('parses instructions with their first line, flags and args', () => {
    expect(parseDockerfile('FROM --platform=x a AS b\nRUN a \\\n  b\n').instructions).toEqual([
      { line: 1, keyword: 'FROM', flags: [{ name: 'platform', value: 'x' }], args: 'a AS b' },
      { line: 2, keyword: 'RUN', flags: [], args: 'a   b' },
    ]);
  });
});

describe('image references', () => {
  it.each([
    ['airlock/base', 'airlock/base:latest'],
    ['docker.io/library/debian', 'debian:latest'],
    ['localhost:5000/x', 'localhost:5000/x:latest'],
    ['localhost:5000/x:1', 'localhost:5000/x:1'],
    ['x@sha256:' + 'a'.repeat(64), 'x@sha256:' + 'a'.repeat(64)],
  ])('%s → %s', (ref, out) => expect(normalizeImageRef(ref)).toBe(out));

  it('checks environment.image against the allowlist', () => {
    expect(checkImageAllowed('airlock/base:busybox', ALLOW, '.airlock.yaml', 'environment.image')).toEqual([]);
    expect(checkImageAllowed('Evil', ALLOW, '.airlock.yaml', 'environment.image')[0]?.message).toContain('not a Docker image reference');
  });
});

describe('policies/environments.yaml', () => {
  it('loads with the documented values', () => {
    const p = loadEnvironmentPolicy();
    expect(p.baseImages).toEqual(ALLOW);
    expect(p.build).toEqual({ memory: 2 * 1024 ** 3, cpus: 2, pids: 256, disk: 8 * 1024 ** 3, runtime: 'runc', timeout: 600_000, contextMax: 100 * 1024 ** 2, logCap: 5 * 1024 ** 2 });
    expect(p.cache).toEqual({ budget: 20 * 1024 ** 3, keepRecent: 2, minIdle: 600_000 });
    expect(parseEnvironmentPolicy(readFileSync(DEFAULT_ENVIRONMENT_POLICY_FILE, 'utf8'), 'x').issues).toEqual([]);
  });

  it('lists every problem of a broken policy', () => {
    const r = parseEnvironmentPolicy('version: 1\nbaseImages: [Bad]\nbuild: {memory: 1k, cpus: 2, timeout: 1m, contextMax: 1m, logCap: 1m}\ncache: {budget: 0, keepRecent: -1, extra: 1}\n', 'p.yaml');
    expect(r.issues.map((i) => i.path).sort()).toEqual(['baseImages[0]', 'build.memory', 'cache', 'cache.keepRecent'].sort());
    expect(() => loadEnvironmentPolicy('/nonexistent.yaml')).toThrow(PolicyInvalidError);
  });
});

describe('tags and logs', () => {
  it('sanitises project names and addresses content', () => {
    expect(sanitizeProject('Org/My_Project.git')).toBe('org-my-project-git');
    expect(sanitizeProject('///')).toBe('project');
    const parts = { contextDigest: 'd', dockerfilePath: 'Dockerfile', dockerfileText: 'FROM x', baseImageIds: ['sha256:1'] };
    const t = environmentTag('p', parts);
    expect(t).toMatch(/^airlock-env\/p:[0-9a-f]{32}$/);
    expect(environmentTag('p', parts)).toBe(t);
    expect(environmentTag('p', { ...parts, baseImageIds: ['sha256:2'] })).not.toBe(t);
    expect(environmentTag('p', { ...parts, contextDigest: 'e' })).not.toBe(t);
  });

  it('caps the log passed on but keeps the tail', () => {
    const lines: string[] = [];
    const log = new BuildLog(20, (l) => lines.push(l));
    log.write('aaaa\nbbbb\ncc');
    log.write('cc\ndddddddddd\neeee\n');
    log.end();
    expect(lines).toEqual(['aaaa', 'bbbb', 'cccc', expect.stringContaining('cap of 20 bytes')]);
    expect(log.truncated).toBe(true);
    expect(log.tail()).toEqual(['aaaa', 'bbbb', 'cccc', 'dddddddddd', 'eeee']);
  });
});

describe('checkDockerfile: evasions', () => {
  it('refuses a quoted or escaped ADD URL and any ONBUILD', () => {
    for (const text of [
      'FROM airlock/base:busybox\nADD "http://127.0.0.1:9000/x" /x\n',
      "FROM airlock/base:busybox\nADD 'https://example.invalid/x' /x\n",
      'FROM airlock/base:busybox\nADD ht\\tp://127.0.0.1/x /x\n',
      'FROM airlock/base:busybox AS a\nONBUILD ADD http://127.0.0.1/x /z\nFROM a\n',
    ]) {
      const r = checkDockerfile(text, 'Dockerfile', ['airlock/base:busybox']);
      expect(r.issues.filter((i) => i.severity === 'error').length, text).toBeGreaterThan(0);
    }
  });
});
