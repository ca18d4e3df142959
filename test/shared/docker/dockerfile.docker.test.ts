/**
 * The Dockerfile reader against the real engine (Docker 20.10's classic builder, as airlock builds:
 * no network, no pulls). Two parts:
 * - an oracle: tricky Dockerfiles are built and the steps the engine ran (`Step N/M : …`) and
 *   their output (`RUN echo m-N`) are compared with what readDockerfile says they are; where Docker
 *   versions disagree (the reader refuses those), the engine's reading is shown to be the other one;
 * - the hostile ADDs of issue 15: a loopback HTTP server on 127.0.0.1 sees no request while the
 *   check (checkDockerfile, and the CI's EnvironmentBuilder) refuses each Dockerfile, and then,
 *   built without the check, the engine does fetch from it: the refused files were live.
 */
import { createServer, type Server } from 'node:http';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BuildLog, followBuildStream } from '#shared/docker/build-log.js';
import { createDocker } from '#shared/docker/client.js';
import { checkDockerfile, readDockerfile } from '#shared/docker/dockerfile.js';
import { PolicyViolationError } from '#shared/errors.js';
import { tarOf } from '../../support/tar.js';
import { cleanup, input, makeRig } from '../../untrusted-ci/environments/env-support.js';

const docker = createDocker();
const BASE = 'airlock/base:busybox';
/** Image ids the builds printed or made: removed in afterAll when untagged. */
const leftovers: string[] = [];

interface Built {
  ok: boolean;
  error: string | undefined;
  /** The instructions the engine ran, as it prints them. */
  steps: string[];
  /** The output lines that are not the engine's own. */
  output: string[];
}

/** Build `text` as airlock does (classic builder, network none, no pulls, no cache); the context holds `f`. */
async function classicBuild(text: string): Promise<Built> {
  const tar = await tarOf([
    { name: 'Dockerfile', body: Buffer.from(text, 'utf8') },
    { name: 'f', body: 'f\n' },
  ]);
  const stream = await docker.buildImage(Readable.from([tar]), { dockerfile: 'Dockerfile', version: '1', networkmode: 'none', rm: true, forcerm: true, pull: false, nocache: true });
  const lines: string[] = [];
  // Warnings come in ANSI colours, the next line glued to their end.
  const outcome = await followBuildStream(stream, new BuildLog(4 << 20, (l) => lines.push(l.replace(/\x1b\[[0-9;]*m/g, ''))));
  for (const l of lines) {
    const m = /^ ---> ([0-9a-f]{12})$/.exec(l);
    if (m?.[1]) leftovers.push(m[1]);
  }
  if (outcome.ok && outcome.imageId) leftovers.push(outcome.imageId);
  const steps = lines.flatMap((l) => /^Step \d+\/\d+ : (.*)$/s.exec(l)?.slice(1) ?? []);
  const output = lines.filter((l) => !/^(Step \d|Sending build context| ---> |Removing intermediate|Successfully built|Downloading)/.test(l));
  return { ok: outcome.ok, error: outcome.ok ? undefined : outcome.error, steps, output };
}

/** What the reader says the engine will run: each instruction's logical line, trimmed as Docker prints it. */
const expectedSteps = (text: string): string[] => readDockerfile(text).nodes.map((n) => n.original.trim());

afterAll(async () => {
  for (const id of [...leftovers].reverse()) {
    const info = await docker
      .getImage(id)
      .inspect()
      .catch(() => undefined);
    if (!info || (info.RepoTags ?? []).length > 0) continue;
    await docker
      .getImage(info.Id)
      .remove({ force: true })
      .catch(() => {});
  }
});

describe('the engine runs the instructions the reader finds', () => {
  // [name, Dockerfile, output lines the build must print (each a prefix of one line)]
  const AGREED: [string, string, string[]][] = [
    ['`\\\\` at the end of a line ends it', `FROM ${BASE}\nRUN echo m-1 \\\\\nRUN echo m-2\n`, ['m-1', 'm-2']],
    ['a BOM, then `# escape=`', `\ufeff# escape=\`\nFROM ${BASE}\nRUN echo m-1 \\\nRUN echo m-2 \`\n  m-3\n`, ['m-1', 'm-2 m-3']],
    ['an unknown directive ends the directives', `# foo=bar\n# escape=\`\nFROM ${BASE}\nRUN echo m-1 #\`\nRUN echo m-2\n`, ['m-1', 'm-2']],
    ['comment and blank lines inside a continuation', `FROM ${BASE}\nRUN echo m-1 \\\n# comment\n    # indented comment\n\n  m-2\n`, ['m-1 m-2']],
    ['spaces and tabs after `\\`', `FROM ${BASE}\nRUN echo m-1 \\ \t \n  m-2\n`, ['m-1 m-2']],
    ['`\\` then a vertical tab ends the line', `FROM ${BASE}\nRUN echo m-1 \\\v\nRUN echo m-2\n`, ['m-1', 'm-2']],
    ['CRLF', `FROM ${BASE}\r\nRUN echo m-1 \\\r\n  m-2\r\n`, ['m-1 m-2']],
    ['`\\` alone on a line', `FROM ${BASE}\nRUN echo m-1 \\\n\\\n  m-2\n`, ['m-1 m-2']],
    ['instructions in any case, a no-break space before one', `FROM ${BASE}\nrun echo m-1\n\u00a0RuN echo m-2\n`, ['m-1', 'm-2']],
    ['JSON form, a flag with quotes', `FROM ${BASE}\nCOPY --chown="0:0" f /f\nRUN ["cat", "/f"]\nRUN ["echo", "m-1"]\n`, ['f', 'm-1']],
    ['a directive in any case, spaces around `=`', `#   ESCAPE  =  \`  \nFROM ${BASE}\nRUN echo m-1 \`\n  m-2\n`, ['m-1 m-2']],
    ['`# escape=` after a blank line is a comment', `\n# escape=\`\nFROM ${BASE}\nRUN echo m-1 \\\n  m-2\n`, ['m-1 m-2']],
    ['`# escape=` then `# check=`', `# escape=\`\n# check=skip=all\nFROM ${BASE}\nRUN echo m-1 \`\n  m-2\n`, ['m-1 m-2']],
  ];
  it.each(AGREED)('%s', async (_name, text, outputs) => {
    const parsed = readDockerfile(text);
    expect(parsed.problems.filter((p) => p.severity === 'error' && !p.message.startsWith('unknown parser directive'))).toEqual([]);
    const built = await classicBuild(text);
    expect(built.error).toBeUndefined();
    expect(built.steps).toEqual(expectedSteps(text));
    for (const o of outputs) expect(built.output.some((l) => l.startsWith(o)), `${o} in ${JSON.stringify(built.output)}`).toBe(true);
  });

  // Where Docker versions disagree the reader refuses the file; Docker 20.10 reads it the other way.
  const DISAGREED: [string, string, string, string[]][] = [
    ['a heredoc: Docker 20.10 runs the lines that follow', `FROM ${BASE}\nRUN cat <<"RUN echo m-end" || true\nRUN echo m-inside\nRUN echo m-end\n`, '`<<` in RUN', ['m-inside', 'm-end']],
    ['two CRs: Docker 20.10 drops one, so `\\` does not continue', `FROM ${BASE}\nRUN echo m-1 \\\r\r\nRUN echo m-2\n`, 'carriage return', ['m-1', 'm-2']],
    ['text after a JSON array: Docker 20.10 runs the array', `FROM ${BASE}\nRUN ["echo", "m-1"] junk\n`, 'after the JSON array', ['m-1']],
    ['`# check=` before `# escape=`: Docker 20.10 keeps `\\`', `# check=skip=all\n# escape=\`\nFROM ${BASE}\nRUN echo m-1 \\\n  m-2\n`, 'not read by every Docker version', ['m-1 m-2']],
  ];
  it.each(DISAGREED)('%s (refused)', async (_name, text, problem, outputs) => {
    expect(readDockerfile(text).problems.some((p) => p.severity === 'error' && p.message.includes(problem))).toBe(true);
    const built = await classicBuild(text);
    expect(built.error).toBeUndefined();
    for (const o of outputs) expect(built.output.some((l) => l.startsWith(o)), `${o} in ${JSON.stringify(built.output)}`).toBe(true);
  });

  it('the heredoc case: the reader lists the instructions Docker 20.10 runs', async () => {
    const text = `FROM ${BASE}\nRUN cat <<"RUN echo m-end" || true\nRUN echo m-inside\nRUN echo m-end\n`;
    expect((await classicBuild(text)).steps).toEqual(expectedSteps(text));
  });
});

describe('issue 15: a hidden ADD of a loopback URL is refused, and the engine would have fetched it', () => {
  const seen: string[] = [];
  let server: Server;
  let port = 0;
  const rig = makeRig();
  const PREFIX = `dfcheck-${process.pid}`;

  beforeAll(async () => {
    server = createServer((req, res) => {
      seen.push(req.url ?? '');
      res.end('fetched\n');
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    port = (server.address() as { port: number }).port;
  });
  afterAll(async () => {
    await new Promise<void>((r) => server.close(() => r()));
    await cleanup(rig, PREFIX);
  });

  const url = (path: string): string => `http://127.0.0.1:${port}${path}`;
  // [name, the path it fetches, Dockerfile]
  const cases = (): [string, string, string][] => [
    ['after a line ending in `\\\\`', '/h1', `FROM ${BASE}\nRUN echo hi \\\\\nADD ${url('/h1')} /x\n`],
    ['after a BOM and `# escape=`', '/h2', `\ufeff# escape=\`\nFROM ${BASE}\nRUN echo hi \\\nADD ${url('/h2')} /x\n`],
    ['after an unknown directive before `# escape=`', '/h3', `# foo=bar\n# escape=\`\nFROM ${BASE}\nRUN echo hi #\`\nADD ${url('/h3')} /x\n`],
    ['after `\\` and a vertical tab', '/h4', `FROM ${BASE}\nRUN echo hi \\\v\nADD ${url('/h4')} /x\n`],
    ['after `\\` and two CRs', '/h5', `FROM ${BASE}\nRUN echo hi \\\r\r\nADD ${url('/h5')} /x\n`],
    ['spelled with backtick escapes', '/h6', `# escape=\`\nFROM ${BASE}\nADD h\`ttp:\`/\`/127.0.0.1:${port}/h6 /x\n`],
    ['after `\\` and a no-break space', '/h7', `FROM ${BASE}\nRUN echo hi \\\u00a0\nADD ${url('/h7')} /x\n`],
  ];

  it('checkDockerfile and EnvironmentBuilder.ensure refuse each; the server sees nothing', async () => {
    for (const [name, , text] of cases()) {
      const check = checkDockerfile(text, 'Dockerfile', [BASE]);
      expect(check.issues.filter((i) => i.severity === 'error').length, name).toBeGreaterThan(0);
      const e = await rig.builder.ensure(await input(rig, `${PREFIX}-${name.length}`, text)).catch((x: unknown) => x);
      expect(e, name).toBeInstanceOf(PolicyViolationError);
    }
    await new Promise((r) => setTimeout(r, 200));
    expect(seen).toEqual([]);
  });

  it('built without the check, Docker fetches each from the host loopback (the refusals were needed)', async () => {
    for (const [name, path, text] of cases()) {
      const built = await classicBuild(text);
      expect(built.error, name).toBeUndefined();
      expect(seen, name).toContain(path);
    }
  });
});
