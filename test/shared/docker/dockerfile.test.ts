/**
 * shared/docker/dockerfile.ts reads Dockerfiles as Docker's parser does (buildkit's
 * frontend/dockerfile/parser) and refuses what Docker versions read differently. Pure tests:
 * buildkit's own parser test data, airlock's corpus (dockerfile-corpus.ts), the hostile cases
 * from the security review, hostile bytes in linear time, and the base-image pinning.
 */
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { checkDockerfile, dumpDockerfile, parseDockerfile, readDockerfile, rewriteImageRefs, type DockerfileNode } from '#shared/docker/dockerfile.js';
import { pinBaseImages } from '../../../trusted-builder/build/image-build.js';
import { CORPUS, type Brief } from './dockerfile-corpus.js';

const FIXTURES = fileURLToPath(new URL('../../fixtures/dockerfiles/buildkit/', import.meta.url));
const ALLOW = ['airlock/base:busybox'];
const F = 'Dockerfile';
const ID = `sha256:${'a'.repeat(64)}`;

const brief = (nd: DockerfileNode): Brief => [nd.command, nd.flagWords, ...nd.next.map((x) => (typeof x === 'string' ? x : brief(x)))];
const errorsOf = (text: string | Buffer): [number, string][] =>
  readDockerfile(text)
    .problems.filter((p) => p.severity === 'error')
    .map((p) => [p.line, p.message]);
/** checkDockerfile's errors as `line: message`. */
const refusals = (text: string): string[] =>
  checkDockerfile(text, F, ALLOW)
    .issues.filter((i) => i.severity === 'error')
    .map((i) => `${i.path.slice(F.length + 1)}: ${i.message}`);

describe("buildkit's parser test data (test/fixtures/dockerfiles/buildkit)", () => {
  const dirs = readdirSync(join(FIXTURES, 'testfiles'));
  it('has the cases', () => expect(dirs.length).toBeGreaterThanOrEqual(30));

  it.each(dirs)('testfiles/%s reads as its `result`', (dir) => {
    const parsed = readDockerfile(readFileSync(join(FIXTURES, 'testfiles', dir, 'Dockerfile')));
    expect(`${dumpDockerfile(parsed)}\n`).toBe(readFileSync(join(FIXTURES, 'testfiles', dir, 'result'), 'utf8'));
    // Only `# syntax=` (escape-with-syntax) is refused: Docker reads all the others alike.
    expect(parsed.problems.filter((p) => p.severity === 'error').map((p) => p.message.slice(0, 23))).toEqual(dir === 'escape-with-syntax' ? ['a `# syntax=` directive'] : []);
  });

  it.each(readdirSync(join(FIXTURES, 'testfiles-negative')))('testfiles-negative/%s is an error', (dir) => {
    expect(errorsOf(readFileSync(join(FIXTURES, 'testfiles-negative', dir, 'Dockerfile'))).length).toBeGreaterThan(0);
  });

  it('testfile-line: instructions know their first and last lines', () => {
    const parsed = readDockerfile(readFileSync(join(FIXTURES, 'testfile-line', 'Dockerfile')));
    expect(parsed.nodes.map((nd) => [nd.line, nd.endLine])).toEqual([
      [5, 5],
      [11, 12],
      [17, 31],
    ]);
  });
});

describe("airlock's corpus: one case per rule", () => {
  it.each(CORPUS.map((c) => [c.name, c] as const))('%s', (_name, c) => {
    const parsed = readDockerfile(c.text);
    expect(parsed.nodes.map(brief)).toEqual(c.nodes);
    if (c.lines) expect(parsed.nodes.map((nd) => [nd.line, nd.endLine])).toEqual(c.lines);
    expect(parsed.escape).toBe(c.escape ?? '\\');
    const errors = errorsOf(c.text);
    expect(errors.map(([line]) => line)).toEqual((c.errors ?? []).map(([line]) => line));
    (c.errors ?? []).forEach(([, part], k) => expect(errors[k]?.[1]).toContain(part));
  });

  it('keeps parseDockerfile: instructions with their first line, keyword, flags and rest', () => {
    expect(parseDockerfile('from --platform=x a AS b\nRUN a \\\n  b\n').instructions).toEqual([
      { line: 1, keyword: 'FROM', flags: [{ name: 'platform', value: 'x' }], args: 'a AS b' },
      { line: 2, keyword: 'RUN', flags: [], args: 'a   b' },
    ]);
    expect(parseDockerfile('# escape=`\n# check=skip=all\nFROM a\n').directives).toEqual({ escape: '`', check: 'skip=all' });
  });
});

describe('the hostile cases of issue 15: hidden ADD, FROM and COPY --from are refused', () => {
  const URL = 'http://127.0.0.1:8080/x';
  // [name, Dockerfile, the refusal expected (`line: part of the message`)]
  const CASES: [string, string, string][] = [
    ['ADD after a line ending in `\\\\`', `FROM airlock/base:busybox\nRUN echo hi \\\\\nADD ${URL} /x\n`, `3: ADD "${URL}" would download`],
    ['ADD after a BOM and `# escape=`', `\ufeff# escape=\`\nFROM airlock/base:busybox\nRUN echo hi \\\nADD ${URL} /x\n`, `4: ADD "${URL}" would download`],
    ['ADD after an unknown directive before `# escape=`', `# foo=bar\n# escape=\`\nFROM airlock/base:busybox\nRUN echo hi \`\nADD ${URL} /x\n`, `5: ADD "${URL}" would download`],
    ['ADD after a line ending in `\\` and a vertical tab', `FROM airlock/base:busybox\nRUN echo hi \\\v\nADD ${URL} /x\n`, `3: ADD "${URL}" would download`],
    ['ADD after a line ending in `\\` and a no-break space', `FROM airlock/base:busybox\nRUN echo hi \\\u00a0\nADD ${URL} /x\n`, `3: ADD "${URL}" would download`],
    ['ADD after a line ending in `\\` and two CRs (Docker 20.10 drops one)', `FROM airlock/base:busybox\nRUN echo hi \\\r\r\nADD ${URL} /x\n`, '2: a carriage return'],
    ['ADD after heredoc lines (newer Docker resumes after the delimiter `END\\`)', `FROM airlock/base:busybox\nRUN cat <<"END\\\\"\nhello\nEND\\\nADD ${URL} /x\n`, '2: `<<` in RUN'],
    ['ADD of a URL spelled with backtick escapes', `# escape=\`\nFROM airlock/base:busybox\nADD h\`ttp:\`/\`/127.0.0.1:8080/x /x\n`, '3: ADD "h`ttp:`/`/127.0.0.1:8080/x" would download'],
    ['ADD in the JSON form, text after it', `FROM airlock/base:busybox\nADD ["f", "/y"] ${URL} /x\n`, `2: text after the JSON array`],
    ['FROM after a line ending in `\\\\`', 'FROM airlock/base:busybox\nRUN echo hi \\\\\nFROM evil:1\n', '3: FROM image "evil:1" is not an allowed base image'],
    ['FROM after a BOM and `# escape=`', '\ufeff# escape=`\nFROM airlock/base:busybox\nRUN echo hi \\\nFROM evil:1\n', '4: FROM image "evil:1" is not an allowed base image'],
    ['FROM after an unknown directive before `# escape=`', '# foo=bar\n# escape=`\nFROM airlock/base:busybox\nRUN echo hi `\nFROM evil:1\n', '5: FROM image "evil:1" is not an allowed base image'],
    ['FROM after heredoc lines', 'FROM airlock/base:busybox\nRUN cat <<"END\\\\"\nEND\\\nFROM evil:1\n', '2: `<<` in RUN'],
    ['COPY --from after a line ending in `\\\\`', 'FROM airlock/base:busybox\nRUN echo hi \\\\\nCOPY --from=evil:1 / /x\n', '3: COPY --from "evil:1" is not an allowed base image'],
    ['COPY --from after a BOM and `# escape=`', '\ufeff# escape=`\nFROM airlock/base:busybox\nRUN echo hi \\\nCOPY --from=evil:1 / /x\n', '4: COPY --from "evil:1" is not an allowed base image'],
    ['COPY --from after an unknown directive before `# escape=`', '# foo=bar\n# escape=`\nFROM airlock/base:busybox\nRUN echo hi `\nCOPY --from=evil:1 / /x\n', '5: COPY --from "evil:1" is not an allowed base image'],
    ['COPY --from after heredoc lines', 'FROM airlock/base:busybox\nCOPY <<"END\\\\" /x\nEND\\\nCOPY --from=evil:1 / /x\n', '2: `<<` in COPY'],
    ['COPY --from naming its own stage (the classic builder then reads an image of that name)', 'FROM airlock/base:busybox AS me\nCOPY --from=me /x /y\n', '2: COPY --from "me" is not an allowed base image'],
    ['RUN --mount with the key `FROM`', 'FROM airlock/base:busybox\nRUN --mount=type=bind,FROM=evil:1,target=/e true\n', '2: RUN --mount from "evil:1" is not an allowed base image'],
    ['`# syntax=` after a `#!` line (BuildKit would run that frontend)', '#!/bin/sh\n# syntax=evil/frontend\nFROM airlock/base:busybox\n', '2: a `# syntax=` directive is refused'],
    ['`# syntax=` (a frontend image of the contributor\'s choosing)', '# syntax=docker/dockerfile:1\nFROM airlock/base:busybox\n', '1: a `# syntax=` directive is refused'],
    ['an instruction Docker does not know', 'FROM airlock/base:busybox\nFETCH http://x\n', '2: unknown instruction "FETCH"'],
  ];
  it.each(CASES)('%s', (_name, text, expected) => {
    const got = refusals(text);
    const [line, part] = [expected.slice(0, expected.indexOf(':')), expected.slice(expected.indexOf(':') + 2)];
    expect(got.some((g) => g.startsWith(`${line}: `) && g.includes(part)), `${JSON.stringify(got)} should have ${expected}`).toBe(true);
  });

  it('accepts the same files written plainly', () => {
    for (const text of [
      'FROM airlock/base:busybox\nRUN echo hi \\\n  there\nFROM airlock/base:busybox\nCOPY --from=0 /x /y\n',
      '\ufeff# escape=`\nFROM airlock/base:busybox AS a\nRUN echo hi `\n  there\nFROM a\nCOPY --from=a /x /y\n',
      '# escape=\\\n# check=skip=all\nFROM airlock/base:busybox\r\nRUN echo \\\r\n  there\r\n',
    ]) {
      expect(checkDockerfile(text, F, ALLOW).issues).toEqual([]);
    }
  });
});

describe('hostile bytes: never a crash, linear time', () => {
  let seed = 42;
  const rnd = (): number => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed / 0x7fffffff;
  };
  const ALPHABET = [...'FROM RUN ADD COPY ONBUILD # \\ ` " \' [ ] < << - -- = $ :// \n \r \t \v \f'.split(' '), ' ', '\n', '\0', '\u00a0', '\ufeff', '\u2028', 'escape=', 'syntax=', 'évil', '\ud800'];

  it('reads 3000 random files without throwing, every problem naming a line', () => {
    for (let k = 0; k < 3000; k++) {
      const parts: string[] = [];
      const len = Math.floor(rnd() * 60);
      for (let i = 0; i < len; i++) parts.push(ALPHABET[Math.floor(rnd() * ALPHABET.length)]!);
      const text = parts.join('');
      const r = checkDockerfile(text, F, ALLOW);
      for (const i of r.issues) expect(i.path).toMatch(/^Dockerfile:\d+$/);
      const bytes = Buffer.from(text);
      bytes[Math.floor(rnd() * Math.max(1, bytes.length))] = Math.floor(rnd() * 256); // and invalid UTF-8
      expect(() => readDockerfile(bytes)).not.toThrow();
    }
  });

  const BIG = 250 * 1024;
  const HOSTILE: [string, string][] = [
    ['one huge line', `FROM airlock/base:busybox\nRUN ${'x'.repeat(BIG)}\n`],
    ['a continuation of 120,000 lines', `FROM airlock/base:busybox\nRUN a \\\n${'\\\n'.repeat(120_000)}b\n`],
    ['120,000 comment lines inside a continuation', `FROM airlock/base:busybox\nRUN a \\\n${'#\n'.repeat(120_000)}b\n`],
    ['backslashes and backticks', `# escape=\`\nFROM airlock/base:busybox\nRUN ${'\\`'.repeat(BIG / 2)}\n`],
    ['a deeply nested JSON array', `FROM airlock/base:busybox\nCMD ${'['.repeat(BIG)}\n`],
    ['a huge flag full of quotes', `FROM airlock/base:busybox\nCOPY --from=${'"a'.repeat(BIG / 2)} /a /b\n`],
    ['ONBUILD ONBUILD …', `FROM airlock/base:busybox\n${'ONBUILD '.repeat(BIG / 8)}RUN x\n`],
    ['directive lines', `${'# escape=`\n'.repeat(BIG / 11)}FROM airlock/base:busybox\n`],
    ['NULs and lone CRs', `FROM airlock/base:busybox\nRUN ${'\0\r'.repeat(BIG / 2)}\n`],
    ['a problem on every line', 'FROM evil\n'.repeat(BIG / 10)],
    ['spaces of every kind', `FROM airlock/base:busybox\nRUN${'\u00a0\u2028 \t\v\f'.repeat(BIG / 12)}x\n`],
    ['heredoc markers', `FROM airlock/base:busybox\n${'RUN <<A\n'.repeat(BIG / 8)}`],
  ];
  it.each(HOSTILE)('%s: read and checked in bounded time', (_name, text) => {
    const t = performance.now();
    const r = readDockerfile(text);
    const c = checkDockerfile(text.slice(0, 256 * 1024), F, ALLOW);
    expect(performance.now() - t).toBeLessThan(5000); // typically well under 500 ms
    expect(r.nodes.length + r.problems.length).toBeGreaterThan(0);
    expect(c.issues.length).toBeLessThanOrEqual(2 * 100 + 1);
  });

  // Each shape is sized to about 230 KiB, under the 256 KiB at which checkDockerfile stops reading,
  // and must be read and checked within the same generous bound as the hostile inputs above. A
  // ratio of the times of 4n and n (about 4 when linear) flaked on a loaded machine (25 once, with
  // the small run at 3 ms), so it is not asserted here: a quadratic step at this size takes seconds.
  const SHAPES: [string, number, (k: number) => string][] = [
    ['a continuation with comments', 38_000, (k) => `FROM airlock/base:busybox\nRUN a \\\n${'# c\n\\\n'.repeat(k)}b\n`],
    ['a FROM on every line', 23_000, (k) => 'FROM evil\n'.repeat(k)],
    ['named stages that copy from each other', 4_000, (k) => Array.from({ length: k }, (_x, i) => `FROM airlock/base:busybox AS s${i}\nCOPY --from=s${Math.max(0, i - 1)} /a /b\n`).join('')],
    ['one long line', 38_000, (k) => `FROM airlock/base:busybox\nRUN ${'x \\\\ "'.repeat(k)}\n`],
  ];
  it.each(SHAPES)('a large input in bounded time: %s', (_name, k, gen) => {
    const time = (text: string): number => {
      let best = Infinity;
      for (let i = 0; i < 3; i++) {
        const t = performance.now();
        readDockerfile(text);
        checkDockerfile(text, F, ALLOW);
        best = Math.min(best, performance.now() - t);
      }
      return best;
    };
    expect(gen(k).length).toBeLessThan(256 * 1024);
    time(gen(k / 8)); // warm up
    expect(time(gen(k))).toBeLessThan(5000); // typically well under 100 ms
  });

  it('CRLF reads as LF', () => {
    const lf = 'FROM a\nRUN x \\\n  y\n# c\nCOPY --from=a b c\n';
    expect(readDockerfile(lf.replaceAll('\n', '\r\n')).nodes.map(brief)).toEqual(readDockerfile(lf).nodes.map(brief));
  });

  it('lists at most 100 errors, then says how many more', () => {
    const r = checkDockerfile('FROM evil\n'.repeat(500), F, ALLOW);
    expect(r.issues).toHaveLength(101);
    expect(r.issues[100]?.message).toBe('400 more problems not listed');
  });
});

describe('pinning base images (the trusted builder) with the same parser', () => {
  const pins = [{ name: 'airlock/base:busybox', digest: ID }];

  it('pins a FROM written across lines, and it reads the same but for the reference', () => {
    const text = 'FROM airlock/base:\\\nbusybox AS b\nRUN x\nFROM b\nCOPY --from=b /x /y\n';
    const out = pinBaseImages(text, pins);
    expect(out).toBe(`FROM \\\n${ID} AS b\nRUN x\nFROM b\nCOPY --from=b /x /y\n`);
    expect(readDockerfile(out).nodes.map(brief)).toEqual([['FROM', [], ID, 'AS', 'b'], ['RUN', [], 'x'], ['FROM', [], 'b'], ['COPY', ['--from=b'], '/x', '/y']]);
  });

  it('leaves a stage named like a pinned image alone (it is a stage to Docker)', () => {
    const text = 'FROM airlock/base:busybox AS busybox\nFROM busybox\n';
    expect(pinBaseImages(text, [{ name: 'busybox', digest: ID }])).toBe(text);
  });

  it('pins a quoted COPY --from and the FROM of a backtick-escaped file, and nothing hidden', () => {
    const text = '# escape=`\nFROM airlock/base:busybox AS a\nCOPY --from="airlock/base:busybox" /x /y\nRUN echo FROM airlock/base:busybox `\n  --from=airlock/base:busybox\n';
    expect(pinBaseImages(text, pins)).toBe(`# escape=\`\nFROM ${ID} AS a\nCOPY --from=${ID} /x /y\nRUN echo FROM airlock/base:busybox \`\n  --from=airlock/base:busybox\n`);
  });

  it('keeps CRLF, the BOM, and lines', () => {
    const text = '\ufeffFROM airlock/base:busybox\r\nRUN x\r\n';
    expect(pinBaseImages(text, pins)).toBe(`\ufeffFROM ${ID}\r\nRUN x\r\n`);
  });

  it('refuses to write a replacement that would change how the file reads', () => {
    expect(() => rewriteImageRefs('FROM airlock/base:busybox\n', () => 'a b')).toThrow(/cannot write/);
    expect(rewriteImageRefs('FROM x\n', () => undefined)).toBe('FROM x\n');
  });
});
