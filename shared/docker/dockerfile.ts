/**
 * What a project's Dockerfile may ask of the environment builder, checked before anything is
 * built. Pure: text in, `Issue[]` out, so it is tested as a table.
 *
 * The Dockerfile comes with the patch, so it is hostile input. The rules:
 * - every image the build reads is on the policy allowlist: each `FROM` that is not an earlier
 *   stage (or `scratch`), each `COPY --from=` and `RUN --mount=…,from=` that is not a stage;
 * - image names are written out: a `$` there is refused, because ARG values are chosen at build
 *   time, after this check (`ARG B=evil/image` then `FROM $B`);
 * - nothing is fetched: `ADD <url>` (and git sources) are refused — the engine itself downloads
 *   them, outside the build's `--network none`, and could reach the host's loopback. A `$` in an
 *   ADD source is refused for the same reason (it could expand to a URL);
 * - `RUN --network` and `RUN --security` are refused; `RUN --mount` and a `# syntax=` directive
 *   are BuildKit features the classic builder airlock uses does not run: they are warnings.
 * Parsing follows Docker's: parser directives (`# escape=`) at the top, line continuations with
 * the escape character, comment and blank lines skipped inside continuations, keywords in any case.
 */
import type { Issue } from '../errors.js';
import { ImageRef } from '../schemas/job-spec.js';

/** A Dockerfile larger than this is refused (256 KiB: real ones are a few KiB). */
export const DOCKERFILE_MAX_BYTES = 256 * 1024;

/** One instruction: its keyword (upper case), `--flags` and the rest, and the line it starts on (1-based). */
export interface DockerfileInstruction {
  line: number;
  keyword: string;
  flags: { name: string; value: string | undefined }[];
  args: string;
}

export interface ParsedDockerfile {
  /** Parser directives from the top of the file, names lower case (`escape`, `syntax`). */
  directives: Record<string, string>;
  instructions: DockerfileInstruction[];
}

/** The result of checking: the allowlisted external images the build reads, normalised, and every problem. */
export interface DockerfileCheck {
  baseImages: string[];
  issues: Issue[];
}

const DIRECTIVE = /^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.*?)\s*$/;
const INSTRUCTION = /^\s*([A-Za-z]+)(?:\s+([\s\S]*))?$/;
const URL_LIKE = /^(?:[a-z][a-z0-9+.-]*:\/\/|[\w.-]+@[\w.-]+:)/i;
const STAGE_NAME = /^[a-z][a-z0-9._-]*$/;

/** Split text into instructions, as Docker's parser does. Never throws. */
export function parseDockerfile(text: string): ParsedDockerfile {
  const lines = text.split(/\r?\n/);
  const directives: Record<string, string> = {};
  let i = 0;
  for (; i < lines.length; i++) {
    const m = DIRECTIVE.exec(lines[i] ?? '');
    if (!m) break;
    const name = (m[1] ?? '').toLowerCase();
    if (name in directives) break; // a repeated directive is a comment
    directives[name] = m[2] ?? '';
  }
  const escape = directives.escape === '`' ? '`' : '\\';
  const instructions: DockerfileInstruction[] = [];
  let current: { line: number; text: string } | undefined;
  for (; i < lines.length; i++) {
    const raw = lines[i] ?? '';
    const trimmed = raw.trim();
    // Comment and blank lines are dropped, also in the middle of a continuation.
    if (trimmed === '' || trimmed.startsWith('#')) continue;
    const body = raw.replace(/\s+$/, '');
    const continues = body.endsWith(escape);
    const piece = continues ? body.slice(0, -1) : body;
    current = current ? { line: current.line, text: current.text + piece } : { line: i + 1, text: piece };
    if (continues) continue;
    pushInstruction(instructions, current);
    current = undefined;
  }
  if (current) pushInstruction(instructions, current);
  return { directives, instructions };
}

function pushInstruction(out: DockerfileInstruction[], logical: { line: number; text: string }): void {
  const m = INSTRUCTION.exec(logical.text);
  if (!m) {
    out.push({ line: logical.line, keyword: '', flags: [], args: logical.text.trim() });
    return;
  }
  let rest = (m[2] ?? '').trim();
  const flags: DockerfileInstruction['flags'] = [];
  // Leading `--name[=value]` words are flags (Docker's BFlags), for every instruction.
  for (;;) {
    const f = /^--([A-Za-z][A-Za-z0-9-]*)(?:=(\S*))?(?:\s+|$)/.exec(rest);
    if (!f) break;
    flags.push({ name: (f[1] ?? '').toLowerCase(), value: f[2] });
    rest = rest.slice(f[0].length);
  }
  out.push({ line: logical.line, keyword: (m[1] ?? '').toUpperCase(), flags, args: rest.trim() });
}

/**
 * Docker's short forms spelled out, so `airlock/base` is `airlock/base:latest` and
 * `docker.io/library/x` is `x:latest`. The allowlist and the Dockerfile are compared in this form.
 */
export function normalizeImageRef(ref: string): string {
  let r = ref.trim();
  for (const prefix of ['docker.io/', 'index.docker.io/']) {
    if (r.startsWith(prefix)) r = r.slice(prefix.length);
  }
  if (r.startsWith('library/')) r = r.slice('library/'.length);
  const name = r.slice(r.lastIndexOf('/') + 1);
  if (!r.startsWith('sha256:') && !r.includes('@') && !name.includes(':')) r += ':latest';
  return r;
}

/** Issues for one image reference that the build would read (empty when allowed). */
export function checkImageAllowed(image: string, allowlist: readonly string[], file: string, path: string, what = 'image'): Issue[] {
  const err = (message: string): Issue[] => [{ file, path, message, severity: 'error' }];
  if (image.includes('$')) {
    return err(`${what} ${JSON.stringify(image)} uses variable substitution: write the image name out (build arguments are chosen after the allowlist check)`);
  }
  if (!ImageRef.safeParse(image).success) return err(`${what} ${JSON.stringify(image)} is not a Docker image reference`);
  const allowed = new Set(allowlist.map(normalizeImageRef));
  if (!allowed.has(normalizeImageRef(image))) {
    return err(`${what} ${JSON.stringify(image)} is not an allowed base image (allowed: ${[...allowed].join(', ')})`);
  }
  return [];
}

/** `["a", "b"]` (exec form) or whitespace-separated words. */
function words(args: string): string[] {
  if (args.startsWith('[')) {
    try {
      const v: unknown = JSON.parse(args);
      if (Array.isArray(v) && v.every((s) => typeof s === 'string')) return v as string[];
    } catch {
      // not JSON: Docker treats it as shell form too
    }
  }
  return args.split(/\s+/).filter((w) => w !== '');
}

/** Check a Dockerfile against the allowlist. `file` names it in issues (`path` is `file:line`). */
export function checkDockerfile(text: string, file: string, allowlist: readonly string[]): DockerfileCheck {
  const issues: Issue[] = [];
  const baseImages: string[] = [];
  const add = (line: number, message: string, severity: Issue['severity'] = 'error'): void => {
    issues.push({ file, path: `${file}:${line}`, message, severity });
  };
  if (Buffer.byteLength(text) > DOCKERFILE_MAX_BYTES) {
    add(1, `the Dockerfile is larger than ${DOCKERFILE_MAX_BYTES} bytes`);
    return { baseImages, issues };
  }
  const parsed = parseDockerfile(text);
  if ('syntax' in parsed.directives) {
    add(1, 'the `# syntax=` directive is ignored: environments are built by the classic builder, no frontend image is fetched', 'warning');
  }
  const stages: string[] = []; // lower-case names (or '' for an unnamed stage), in order
  /** An image the build reads: a stage (by name or index, earlier only) or an allowlisted image. */
  const useImage = (line: number, ref: string, what: string): void => {
    const lower = ref.toLowerCase();
    if (stages.includes(lower) && lower !== '') return;
    if (what !== 'FROM image' && /^\d+$/.test(ref) && Number(ref) < stages.length) return;
    if (what === 'FROM image' && lower === 'scratch') return;
    const found = checkImageAllowed(ref, allowlist, file, `${file}:${line}`, what);
    issues.push(...found);
    if (found.length === 0) {
      const n = normalizeImageRef(ref);
      if (!baseImages.includes(n)) baseImages.push(n);
    }
  };

  let seenFrom = false;
  for (const ins of parsed.instructions) {
    if (ins.keyword === '') {
      add(ins.line, `not an instruction: ${JSON.stringify(ins.args.slice(0, 80))}`);
      continue;
    }
    if (!seenFrom && ins.keyword !== 'FROM' && ins.keyword !== 'ARG') {
      add(ins.line, `${ins.keyword} before the first FROM (only ARG may come first)`);
    }
    switch (ins.keyword) {
      case 'FROM': {
        seenFrom = true;
        for (const f of ins.flags) if (f.name !== 'platform') add(ins.line, `FROM --${f.name} is not supported`);
        const w = words(ins.args);
        if (w.length !== 1 && !(w.length === 3 && w[1]?.toLowerCase() === 'as')) {
          add(ins.line, 'FROM takes an image and an optional `AS name`');
          stages.push('');
          break;
        }
        useImage(ins.line, w[0] ?? '', 'FROM image');
        const name = (w[2] ?? '').toLowerCase();
        if (name !== '' && !STAGE_NAME.test(name)) add(ins.line, `invalid stage name ${JSON.stringify(w[2])}`);
        else if (name !== '' && stages.includes(name)) add(ins.line, `stage name ${JSON.stringify(name)} is used twice`);
        stages.push(name);
        break;
      }
      case 'COPY':
        for (const f of ins.flags) if (f.name === 'from') useImage(ins.line, f.value ?? '', 'COPY --from');
        break;
      case 'ONBUILD':
        // Its trigger runs when the stage is used as a base, unchecked: refuse it outright.
        add(ins.line, 'ONBUILD is refused: the instruction it defers would escape these checks');
        break;
      case 'ADD': {
        const w = words(ins.args);
        for (const raw of w.slice(0, -1)) {
          // Docker's lexer drops quotes and backslashes before it looks for a URL: so do we.
          const src = raw.replace(/["'\\]/g, '');
          if (URL_LIKE.test(src) || src.includes('://')) add(ins.line, `ADD ${JSON.stringify(src)} would download during the build: builds have no network; vendor the file into the repository`);
          else if (src.includes('$')) add(ins.line, `ADD source ${JSON.stringify(src)} uses variable substitution, which could expand to a URL: write it out`);
        }
        break;
      }
      case 'RUN':
        for (const f of ins.flags) {
          if (f.name === 'network' || f.name === 'security') add(ins.line, `RUN --${f.name} is refused: builds run with no network and no extra privileges`);
          else if (f.name === 'mount') {
            add(ins.line, 'RUN --mount is a BuildKit feature; the classic builder used for environments refuses it', 'warning');
            const from = /(?:^|,)from=([^,]*)/.exec(f.value ?? '')?.[1];
            if (from !== undefined) useImage(ins.line, from, 'RUN --mount from');
          } else add(ins.line, `RUN --${f.name} is not supported`);
        }
        break;
      default:
        break;
    }
  }
  if (!seenFrom) add(1, 'no FROM instruction');
  return { baseImages, issues };
}
