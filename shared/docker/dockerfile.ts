/**
 * What a project's Dockerfile may ask of the image builders, checked before anything is built.
 * Pure: text in, `Issue[]` out, so it is tested as a table.
 *
 * The Dockerfile comes with the patch, so it is hostile input. The rules:
 * - every image the build reads is on the policy allowlist: each `FROM` that is not an earlier
 *   stage (or `scratch`), each `COPY --from=` and `RUN --mount=…,from=` that is not a finished stage;
 * - image names are written out: a `$` there is refused, because ARG values are chosen at build
 *   time, after this check (`ARG B=evil/image` then `FROM $B`);
 * - nothing is fetched: `ADD <url>` (and git sources) are refused — the engine itself downloads
 *   them in the host's network namespace, outside the build's `--network none`, and could reach
 *   the host's loopback. A `$` in an ADD source is refused for the same reason;
 * - `RUN --network`, `RUN --security` and `ONBUILD` are refused; `RUN --mount` is a BuildKit
 *   feature the classic builder airlock uses does not run: a warning.
 *
 * **Parsing is Docker's.** A check that reads the file differently from the engine checks another
 * file. The reader below follows moby/buildkit's `frontend/dockerfile/parser` rule for rule,
 * working on the UTF-8 bytes the engine receives, as Go does:
 * - lines end at `\n`; trailing `\r`s are dropped; a UTF-8 byte-order mark is dropped from the
 *   first line only;
 * - parser directives (`# escape=`, `# syntax=`, `# check=`; names in any case) are read from
 *   the top until the first line that is not one (an empty line, an instruction, any other
 *   comment, a directive Docker does not know); a repeated directive is an error;
 * - a line continues when it ends with the escape character (`\` or the `` ` `` of
 *   `# escape=`) and only spaces or tabs after it, *unless* that character is itself preceded by
 *   the escape character: `\\` at the end of a line does not continue it. In a continuation,
 *   comment lines and blank lines are skipped; continuation lines keep their leading spaces;
 * - the instruction is the first word (split at ASCII whitespace, after trimming Unicode spaces),
 *   in any case; then leading `--flag` words (quotes and the escape character apply in them), then
 *   the arguments, read per instruction (JSON array or shell form, whitespace words, key=value);
 * - `RUN`, `COPY`, `ADD` (and `ONBUILD`) lines with a heredoc (`<<EOF`) make the following lines
 *   file content, not instructions (in newer Docker; see below).
 *
 * **Where Docker versions disagree, the file is refused** (`readDockerfile`'s `problems`): the
 * engine on this machine is Docker 20.10, whose classic builder vendors buildkit v0.8's parser,
 * and a newer engine or BuildKit reads some files differently: heredocs (v0.8 has none), a
 * `# check=` directive before `# escape=` (v0.8 stops at it), a non-ASCII space after `#` in a
 * directive, the escape character inside `--flag` words (v0.8 always uses `\`), text after a JSON
 * array (v0.8 ignores it), several `\r` at a line's end. The reader then gives the current
 * parser's reading, except for heredocs: it does not skip their lines, so they are checked too.
 * Also refused: `# syntax=` (it would let a frontend image of the contributor's choosing read the
 * file; BuildKit also finds it after a `#!` line, as `//syntax=` or in a JSON file), a parser
 * directive Docker does not know, a `\r` that does not end a line, NUL bytes, lines over 65,000
 * bytes (Docker's limit is 64 KiB) and unknown instructions (Docker refuses them too). Any `<<` in
 * a RUN, COPY or ADD is taken for a heredoc: buildkit's heredoc rules rest on its shell lexer, and
 * a superset is safe (`RUN echo $((1 << 2))` is a heredoc to buildkit too).
 *
 * Checked against buildkit's own parsers (v0.8 and current) on its test data and ~46,000 random
 * files: see test/fixtures/dockerfiles/README.md. The reader runs in linear time and never throws.
 */
import type { Issue } from '../errors.js';
import { ImageRef } from '../schemas/job-spec.js';

/** A Dockerfile larger than this is refused (256 KiB: real ones are a few KiB). */
export const DOCKERFILE_MAX_BYTES = 256 * 1024;
/** A longer physical line is refused (Docker's own line reader stops with an error at 64 KiB). */
export const DOCKERFILE_MAX_LINE_BYTES = 65_000;
/** At most this many problems are listed; then one more issue says there are more. */
const MAX_ISSUES = 100;

/** One instruction: its keyword (upper case), `--flags` and the rest, and the line it starts on (1-based). */
export interface DockerfileInstruction {
  line: number;
  keyword: string;
  flags: { name: string; value: string | undefined }[];
  args: string;
}

/** One instruction as Docker's parser makes it (its AST node). */
export interface DockerfileNode {
  /** First and last physical line (1-based), continuation lines included. */
  line: number;
  endLine: number;
  /** The instruction word as written. */
  command: string;
  /** `command` in upper case when it is ASCII letters, else ''. */
  keyword: string;
  /** True when `keyword` is an instruction Docker knows. */
  known: boolean;
  /** The `--flag` words, as Docker extracts them (quotes and escapes applied): `--from=build`. */
  flagWords: string[];
  /** `flagWords` split at the first `=` (`value` undefined without one). Names keep their case. */
  flags: { name: string; value: string | undefined }[];
  /** What follows the flags, trimmed. */
  args: string;
  /** The arguments as Docker's line parser splits them; ONBUILD's is its inner instruction. */
  next: (string | DockerfileNode)[];
  /** True when the arguments are the JSON (exec) form. */
  json: boolean;
  /** The logical line: the physical lines joined, continuation characters removed. */
  original: string;
}

/** A problem found while reading, with the physical line it is on. */
export interface DockerfileProblem {
  line: number;
  message: string;
  severity: Issue['severity'];
}

export interface ParsedDockerfile {
  /** Parser directives from the top of the file, names lower case (`escape`, `syntax`, `check`). */
  directives: Record<string, string>;
  /** The escape character in force: `\` or `` ` ``. */
  escape: string;
  instructions: DockerfileInstruction[];
  nodes: DockerfileNode[];
  /** Everything that makes Docker refuse the file, or Docker versions read it differently. */
  problems: DockerfileProblem[];
}

/** The result of checking: the allowlisted external images the build reads, normalised, and every problem. */
export interface DockerfileCheck {
  baseImages: string[];
  issues: Issue[];
}

// ---------------------------------------------------------------------------------------------
// Go's byte and rune helpers (unicode.IsSpace, utf8.DecodeRune, strings.TrimSpace), on bytes.

const BACKSLASH = 0x5c;
// ignoreBOM: a BOM that is not the file's first bytes is an ordinary character to Docker; keep it.
const decoder = new TextDecoder('utf-8', { ignoreBOM: true });

/** unicode.IsSpace. */
function isSpace(cp: number): boolean {
  if (cp <= 0xff) return cp === 0x20 || (cp >= 0x09 && cp <= 0x0d) || cp === 0x85 || cp === 0xa0;
  return cp === 0x1680 || (cp >= 0x2000 && cp <= 0x200a) || cp === 0x2028 || cp === 0x2029 || cp === 0x202f || cp === 0x205f || cp === 0x3000;
}

/** The byte class of Docker's `reWhitespace` (`[\t\v\f\r ]`). */
function isAsciiWs(c: number): boolean {
  return c === 0x20 || c === 0x09 || c === 0x0b || c === 0x0c || c === 0x0d;
}

/** RE2's `\s` (`[\t\n\f\r ]`): no `\v`. */
function isRe2Space(c: number): boolean {
  return c === 0x20 || c === 0x09 || c === 0x0a || c === 0x0c || c === 0x0d;
}

const RUNE_ERROR = 0xfffd;

/** utf8.DecodeRune on b[i..end): [rune, width]; an invalid sequence is (RuneError, 1). */
function decodeRune(b: Uint8Array, i: number, end: number): [number, number] {
  const b0 = b[i]!;
  if (b0 < 0x80) return [b0, 1];
  const cont = (k: number, lo = 0x80, hi = 0xbf): number => {
    if (i + k >= end) return -1;
    const c = b[i + k]!;
    return c >= lo && c <= hi ? c & 0x3f : -1;
  };
  if (b0 >= 0xc2 && b0 <= 0xdf) {
    const c1 = cont(1);
    return c1 < 0 ? [RUNE_ERROR, 1] : [((b0 & 0x1f) << 6) | c1, 2];
  }
  if (b0 >= 0xe0 && b0 <= 0xef) {
    const c1 = cont(1, b0 === 0xe0 ? 0xa0 : 0x80, b0 === 0xed ? 0x9f : 0xbf);
    const c2 = c1 < 0 ? -1 : cont(2);
    return c2 < 0 ? [RUNE_ERROR, 1] : [((b0 & 0x0f) << 12) | (c1 << 6) | c2, 3];
  }
  if (b0 >= 0xf0 && b0 <= 0xf4) {
    const c1 = cont(1, b0 === 0xf0 ? 0x90 : 0x80, b0 === 0xf4 ? 0x8f : 0xbf);
    const c2 = c1 < 0 ? -1 : cont(2);
    const c3 = c2 < 0 ? -1 : cont(3);
    return c3 < 0 ? [RUNE_ERROR, 1] : [((b0 & 0x07) << 18) | (c1 << 12) | (c2 << 6) | c3, 4];
  }
  return [RUNE_ERROR, 1];
}

/** utf8.DecodeLastRune on b[start..end). */
function decodeLastRune(b: Uint8Array, start: number, end: number): [number, number] {
  const last = b[end - 1]!;
  if (last < 0x80) return [last, 1];
  const lim = Math.max(end - 4, start);
  let s = end - 2;
  while (s >= lim && (b[s]! & 0xc0) === 0x80) s--;
  if (s < lim) s = lim;
  const [r, size] = decodeRune(b, s, end);
  return s + size !== end ? [RUNE_ERROR, 1] : [r, size];
}

/** bytes.TrimLeftFunc(b[s..e), unicode.IsSpace): the new start. */
function trimLeftSpace(b: Uint8Array, s: number, e: number): number {
  while (s < e) {
    const [r, w] = decodeRune(b, s, e);
    if (!isSpace(r)) break;
    s += w;
  }
  return s;
}

/** strings.TrimSpace(b[s..e)): the new [start, end). */
function trimSpace(b: Uint8Array, s: number, e: number): [number, number] {
  s = trimLeftSpace(b, s, e);
  while (e > s) {
    const [r, w] = decodeLastRune(b, s, e);
    if (!isSpace(r)) break;
    e -= w;
  }
  return [s, e];
}

function text(b: Uint8Array, s = 0, e = b.length): string {
  return decoder.decode(b.subarray(s, e));
}

/** Go's `sb.WriteRune(rune(byte))`: a byte over 0x7f becomes the UTF-8 of U+0080..U+00FF. */
function pushByteAsRune(out: number[], c: number): void {
  if (c < 0x80) out.push(c);
  else out.push(0xc0 | (c >> 6), 0x80 | (c & 0x3f));
}

// ---------------------------------------------------------------------------------------------
// Lines and parser directives.

interface SourceLine {
  /** Offsets in the source bytes: the line without its `\n` and trailing `\r`s. */
  start: number;
  end: number;
}

/** The scanner: lines end at `\n` (kept out); trailing `\r`/`\n` are trimmed (trimNewline). */
function scanLines(b: Uint8Array): SourceLine[] {
  const lines: SourceLine[] = [];
  let s = 0;
  const push = (start: number, stop: number): void => {
    let e = stop;
    while (e > start && b[e - 1] === 0x0d) e--;
    lines.push({ start, end: e });
  };
  for (let i = 0; i < b.length; i++) {
    if (b[i] === 0x0a) {
      push(s, i);
      s = i + 1;
    }
  }
  if (s < b.length) push(s, b.length);
  return lines;
}

const KNOWN_DIRECTIVES_NEW = new Set(['syntax', 'escape', 'check']);
const KNOWN_DIRECTIVES_V08 = new Set(['syntax', 'escape']);

interface DirectiveScan {
  escape: number;
  directives: { name: string; value: string; line: number }[];
  error?: { line: number; message: string };
  /** The directive-shaped line with a name this parser does not know, that ended the scan. */
  unknown?: { line: number; name: string };
  /** Index of the first line that is not a directive. */
  stop: number;
}

/**
 * The directive regexp after the comment marker and the spaces that follow it:
 * `^([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$` on b[p..e), RE2's `\s` being `[\t\n\f\r ]`.
 */
function matchDirectiveBody(b: Uint8Array, p: number, e: number): { name: string; value: [number, number] } | undefined {
  const isAlpha = (c: number): boolean => (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a);
  const isDigit = (c: number): boolean => c >= 0x30 && c <= 0x39;
  if (p >= e || !isAlpha(b[p]!)) return undefined;
  const nameStart = p;
  while (p < e && (isAlpha(b[p]!) || isDigit(b[p]!))) p++;
  const name = text(b, nameStart, p).toLowerCase();
  while (p < e && isRe2Space(b[p]!)) p++;
  if (p >= e || b[p] !== 0x3d) return undefined;
  p++;
  const afterEq = p;
  while (p < e && isRe2Space(b[p]!)) p++;
  // `\s*(.+?)\s*$`: the value runs to the last non-space; if only spaces follow `=`, the greedy
  // `\s*` gives the last one back to `.+?`.
  if (p < e) {
    let ve = e;
    while (ve > p && isRe2Space(b[ve - 1]!)) ve--;
    return { name, value: [p, ve] };
  }
  if (afterEq < e) return { name, value: [e - 1, e] };
  return undefined;
}

/**
 * A directive at b[s..e), a line whose leading spaces are trimmed: `#`, then spaces, then the
 * body. The current parser skips Unicode spaces after `#` (`bytes.TrimLeftFunc`); buildkit v0.8
 * matched `^#\s*name…`, RE2's ASCII `\s`, without `\v`.
 */
function matchDirective(b: Uint8Array, s: number, e: number, variant: 'new' | 'v0.8'): { name: string; value: [number, number] } | undefined {
  if (s >= e || b[s] !== 0x23) return undefined;
  let p = s + 1;
  if (variant === 'new') p = trimLeftSpace(b, p, e);
  else while (p < e && isRe2Space(b[p]!)) p++;
  return matchDirectiveBody(b, p, e);
}

/** Reads the directives at the top, as the current parser (`'new'`) or buildkit v0.8 (`'v0.8'`) does. */
function scanDirectives(b: Uint8Array, lines: readonly SourceLine[], variant: 'new' | 'v0.8', bom: number): DirectiveScan {
  const known = variant === 'new' ? KNOWN_DIRECTIVES_NEW : KNOWN_DIRECTIVES_V08;
  const out: DirectiveScan = { escape: BACKSLASH, directives: [], stop: 0 };
  const seen = new Set<string>();
  for (let i = 0; i < lines.length; i++) {
    out.stop = i;
    const l = lines[i]!;
    const s = trimLeftSpace(b, i === 0 ? l.start + bom : l.start, l.end);
    const m = matchDirective(b, s, l.end, variant);
    if (!m) return out;
    if (!known.has(m.name)) {
      out.unknown = { line: i + 1, name: m.name };
      return out;
    }
    if (seen.has(m.name)) {
      out.error = { line: i + 1, message: `only one ${m.name} parser directive can be used` };
      return out;
    }
    seen.add(m.name);
    const value = text(b, m.value[0], m.value[1]);
    out.directives.push({ name: m.name, value, line: i + 1 });
    if (m.name === 'escape') {
      if (value !== '`' && value !== '\\') {
        out.error = { line: i + 1, message: `invalid escape token '${value}' does not match \` or \\` };
        return out;
      }
      out.escape = value.charCodeAt(0);
    }
  }
  out.stop = lines.length;
  return out;
}

/**
 * BuildKit's DetectSyntax, which picks the frontend image before any parsing: after a BOM and a
 * `#!` line, `# syntax=` or `// syntax=` directives (lines not left-trimmed), or the whole file
 * a JSON object `{"syntax": "…"}`. The line of what it finds, or undefined.
 */
function detectSyntax(b: Uint8Array): number | undefined {
  let s = b.length >= 3 && b[0] === 0xef && b[1] === 0xbb && b[2] === 0xbf ? 3 : 0;
  let firstLine = 1;
  if (b[s] === 0x23 && b[s + 1] === 0x21) {
    const nl = b.indexOf(0x0a, s);
    s = nl < 0 ? b.length : nl + 1;
    firstLine = 2;
  }
  for (const marker of [[0x23], [0x2f, 0x2f]]) {
    const seen = new Set<string>();
    for (let p = s, n = firstLine; p < b.length; n++) {
      const nl = b.indexOf(0x0a, p);
      const stop = nl < 0 ? b.length : nl;
      const e = stop > p && b[stop - 1] === 0x0d ? stop - 1 : stop; // bufio.ScanLines drops one `\r`
      if (e - p < marker.length || !marker.every((c, k) => b[p + k] === c)) break;
      const m = matchDirectiveBody(b, trimLeftSpace(b, p + marker.length, e), e);
      if (!m || !KNOWN_DIRECTIVES_NEW.has(m.name) || seen.has(m.name)) break;
      if (m.name === 'syntax') return n;
      seen.add(m.name);
      p = stop + 1;
    }
  }
  const rest = text(b, s);
  if (/^[\t\n\r ]*\{/.test(rest)) {
    try {
      const v: unknown = JSON.parse(rest);
      if (v !== null && typeof v === 'object' && !Array.isArray(v) && typeof (v as Record<string, unknown>).syntax === 'string') return firstLine;
    } catch {
      // not JSON
    }
  }
  return undefined;
}

// ---------------------------------------------------------------------------------------------
// Instructions.

const DISPATCH: Record<string, 'list' | 'nameOrNameVal' | 'maybeJson' | 'env' | 'words' | 'health' | 'string' | 'sub'> = {
  add: 'list',
  arg: 'nameOrNameVal',
  cmd: 'maybeJson',
  copy: 'list',
  entrypoint: 'maybeJson',
  env: 'env',
  expose: 'words',
  from: 'words',
  healthcheck: 'health',
  label: 'env',
  maintainer: 'string',
  onbuild: 'sub',
  run: 'maybeJson',
  shell: 'maybeJson',
  stopsignal: 'string',
  user: 'string',
  volume: 'list',
  workdir: 'string',
};
/** Instructions whose lines may start heredocs (buildkit: ADD, COPY, RUN, and ONBUILD of them). */
const HEREDOC_CAPABLE = new Set(['add', 'copy', 'run', 'onbuild']);

interface FlagWord {
  word: string;
  /** The raw word's span in the logical line. */
  start: number;
  end: number;
}

/** Where a logical line's bytes come from: `len` bytes at logical offset `l` are source bytes at `src`. */
interface Piece {
  l: number;
  src: number;
  len: number;
}

interface INode {
  node: DockerfileNode;
  logical: Uint8Array;
  pieces: Piece[];
  flagWords: FlagWord[];
  /** The arguments' span in the logical line. */
  argsSpan: [number, number];
}

/**
 * extractBuilderFlags: leading words starting with `--` (spaces are tested byte by byte, as Docker
 * does), quotes and the escape character applied; `--` alone ends them. Returns the words and
 * where the rest begins.
 */
function extractFlags(b: Uint8Array, s: number, e: number, esc: number): { words: FlagWord[]; rest: number } {
  const words: FlagWord[] = [];
  let phase: 'spaces' | 'word' | 'quote' = 'spaces';
  let buf: number[] = [];
  let quote = 0;
  let blankOK = false;
  let wordStart = s;
  let ch = 0;
  const isDashDash = (): boolean => buf.length === 2 && buf[0] === 0x2d && buf[1] === 0x2d;
  const emit = (end: number): void => {
    words.push({ word: decoder.decode(Uint8Array.from(buf)), start: wordStart, end });
  };
  for (let pos = s; pos <= e; pos++) {
    if (pos !== e) ch = b[pos]!;
    if (phase === 'spaces') {
      if (pos === e) break;
      if (isSpace(ch)) continue;
      if (ch !== 0x2d || pos + 1 === e || b[pos + 1] !== 0x2d) return { words, rest: pos };
      phase = 'word';
      wordStart = pos;
    }
    if (pos === e) {
      if (!isDashDash() && (blankOK || buf.length > 0)) emit(e);
      break;
    }
    if (phase === 'word') {
      if (isSpace(ch)) {
        phase = 'spaces';
        if (isDashDash()) return { words, rest: pos };
        if (blankOK || buf.length > 0) emit(pos);
        buf = [];
        blankOK = false;
        continue;
      }
      if (ch === 0x27 || ch === 0x22) {
        quote = ch;
        blankOK = true;
        phase = 'quote';
        continue;
      }
      if (ch === esc) {
        if (pos + 1 === e) continue;
        pos++;
        ch = b[pos]!;
      }
      pushByteAsRune(buf, ch);
      continue;
    }
    // quote
    if (ch === quote) {
      phase = 'word';
      continue;
    }
    if (ch === esc) {
      if (pos + 1 === e) {
        phase = 'word';
        continue;
      }
      pos++;
      ch = b[pos]!;
    }
    pushByteAsRune(buf, ch);
  }
  return { words, rest: e };
}

/** parseWords: whitespace-separated words; quotes and escapes are kept, but group. */
function parseWords(rest: string, esc: string): string[] {
  const words: string[] = [];
  let phase: 'spaces' | 'word' | 'quote' = 'spaces';
  let quote = '';
  let blankOK = false;
  let word = '';
  const cps = Array.from(rest);
  for (let pos = 0; pos <= cps.length; pos++) {
    let ch = cps[pos] ?? '';
    if (phase === 'spaces') {
      if (pos === cps.length) break;
      if (isSpace(ch.codePointAt(0)!)) continue;
      phase = 'word';
    }
    if (pos === cps.length) {
      if (blankOK || word !== '') words.push(word);
      break;
    }
    if (phase === 'word') {
      if (isSpace(ch.codePointAt(0)!)) {
        phase = 'spaces';
        if (blankOK || word !== '') words.push(word);
        word = '';
        blankOK = false;
        continue;
      }
      if (ch === "'" || ch === '"') {
        quote = ch;
        blankOK = true;
        phase = 'quote';
      }
      if (ch === esc) {
        if (pos + 1 === cps.length) continue;
        word += ch;
        pos++;
        ch = cps[pos]!;
      }
      word += ch;
      continue;
    }
    if (ch === quote) phase = 'word';
    if (ch === esc && quote !== "'") {
      if (pos + 1 === cps.length) {
        phase = 'word';
        continue;
      }
      pos++;
      word += ch;
      ch = cps[pos]!;
    }
    word += ch;
  }
  return words;
}

const splitWs = (s: string): string[] => s.split(/[\t\v\f\r ]+/);

type JsonResult = { kind: 'json'; values: string[] } | { kind: 'notJson' } | { kind: 'notStrings' };

/**
 * One pass over the brackets of `s`, outside JSON strings: how deep they nest, and where the
 * first value ends (depth back to 0; -1 if never). Go's json.Unmarshal of a []any calls depth
 * over 10000 a syntax error; v0.8's json.Decoder reads only the first value.
 */
function scanBrackets(s: string): { maxDepth: number; firstEnd: number } {
  let depth = 0;
  let maxDepth = 0;
  let firstEnd = -1;
  let inStr = false;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (inStr) {
      if (c === 0x5c) i++;
      else if (c === 0x22) inStr = false;
    } else if (c === 0x22) inStr = true;
    else if (c === 0x5b || c === 0x7b) maxDepth = Math.max(maxDepth, ++depth);
    else if (c === 0x5d || c === 0x7d) {
      if (--depth === 0 && firstEnd < 0) firstEnd = i + 1;
    }
  }
  return { maxDepth, firstEnd };
}

function parseJsonArray(s: string): JsonResult {
  if (scanBrackets(s).maxDepth > 10_000) return { kind: 'notJson' };
  let v: unknown;
  try {
    v = JSON.parse(s);
  } catch {
    return { kind: 'notJson' };
  }
  if (!Array.isArray(v)) return { kind: 'notJson' };
  return v.every((x) => typeof x === 'string') ? { kind: 'json', values: v as string[] } : { kind: 'notStrings' };
}

interface LineParse {
  next: (string | DockerfileNode)[];
  json: boolean;
  error?: string;
  /** Docker versions read the JSON form differently (v0.8 ignores text after the array). */
  jsonAmbiguous?: boolean;
}

/** parseJSON (TrimLeft, `[`, a whole JSON array of strings), and what v0.8's Decoder would say. */
function maybeJson(rest: string): { r: JsonResult; ambiguous: boolean } {
  const lead = trimStartGo(rest);
  if (!lead.startsWith('[')) return { r: { kind: 'notJson' }, ambiguous: false };
  const r = parseJsonArray(lead);
  let ambiguous = false;
  if (r.kind === 'notJson') {
    const end = scanBrackets(lead).firstEnd;
    if (end > 0 && end < lead.length) {
      const first = parseJsonArray(lead.slice(0, end));
      ambiguous = first.kind !== 'notJson';
    }
  }
  return { r, ambiguous };
}

/** strings.TrimLeftFunc(s, unicode.IsSpace) on a JS string. */
function trimStartGo(s: string): string {
  let i = 0;
  while (i < s.length) {
    const cp = s.codePointAt(i)!;
    if (!isSpace(cp)) break;
    i += cp > 0xffff ? 2 : 1;
  }
  return s.slice(i);
}

function parseArgs(kind: (typeof DISPATCH)[string] | undefined, restBytes: Uint8Array, esc: number, depth: number, line: number): LineParse {
  const rest = text(restBytes);
  const escCh = String.fromCharCode(esc);
  switch (kind) {
    case undefined:
      return { next: [''], json: false }; // parseIgnore: one empty node
    case 'list':
    case 'maybeJson': {
      if (kind === 'maybeJson' && rest === '') return { next: [], json: false };
      const { r, ambiguous } = maybeJson(rest);
      if (r.kind === 'json') return { next: r.values, json: true };
      if (r.kind === 'notStrings') return { next: [], json: false, error: 'when using JSON array syntax, arrays must be comprised of strings only' };
      const res: LineParse = { next: kind === 'maybeJson' ? [rest] : rest === '' ? [] : splitWs(rest), json: false };
      if (ambiguous) res.jsonAmbiguous = true;
      return res;
    }
    case 'words':
      return { next: rest === '' ? [] : splitWs(rest), json: false };
    case 'string':
      return { next: rest === '' ? [] : [rest], json: false };
    case 'nameOrNameVal':
      return { next: parseWords(rest, escCh), json: false };
    case 'env': {
      const words = parseWords(rest, escCh);
      if (words.length === 0) return { next: [], json: false };
      if (!words[0]!.includes('=')) {
        const m = /[\t\v\f\r ]+/.exec(rest);
        if (!m) return { next: [], json: false, error: 'must have two arguments' };
        return { next: [rest.slice(0, m.index), rest.slice(m.index + m[0].length), ''], json: false };
      }
      const next: string[] = [];
      for (const w of words) {
        const k = w.indexOf('=');
        if (k < 0) return { next: [], json: false, error: `Syntax error - can't find = in ${goQuote(w)}. Must be of the form: name=value` };
        next.push(w.slice(0, k), w.slice(k + 1), '=');
      }
      return { next, json: false };
    }
    case 'health': {
      let sep = 0;
      while (sep < restBytes.length && !isSpace(restBytes[sep]!)) sep++;
      let nx = sep;
      while (nx < restBytes.length && isSpace(restBytes[nx]!)) nx++;
      if (sep === 0) return { next: [], json: false };
      const inner = parseArgs('maybeJson', restBytes.subarray(nx), esc, depth, line);
      return { ...inner, next: [text(restBytes, 0, sep), ...inner.next] };
    }
    case 'sub': {
      if (rest === '') return { next: [], json: false };
      if (depth >= 4) return { next: [], json: false, error: 'ONBUILD nested too deeply' };
      const child = buildNode(restBytes, esc, line, line, depth + 1);
      const res: LineParse = { next: [child.node], json: false };
      if (child.error) res.error = child.error;
      return res;
    }
  }
}

/** newNodeFromLine: split the logical line into command, flags and arguments, and parse those. */
function buildNode(L: Uint8Array, esc: number, line: number, endLine: number, depth = 0): { node: DockerfileNode; flagWords: FlagWord[]; argsSpan: [number, number]; error?: string; jsonAmbiguous?: boolean; flagsDiffer?: boolean } {
  const [ts, te] = trimSpace(L, 0, L.length);
  let cmdEnd = ts;
  while (cmdEnd < te && !isAsciiWs(L[cmdEnd]!)) cmdEnd++;
  let flagWords: FlagWord[] = [];
  let argsSpan: [number, number] = [te, te];
  let flagsDiffer = false;
  if (cmdEnd < te) {
    let j = cmdEnd;
    while (j < te && isAsciiWs(L[j]!)) j++;
    const f = extractFlags(L, j, te, esc);
    flagWords = f.words;
    argsSpan = trimSpace(L, f.rest, te);
    if (esc !== BACKSLASH) {
      // buildkit v0.8 always reads `\` as the escape character in flags.
      const old = extractFlags(L, j, te, BACKSLASH);
      flagsDiffer = old.rest !== f.rest || old.words.length !== f.words.length || old.words.some((w, k) => w.word !== f.words[k]?.word);
    }
  }
  const command = text(L, ts, cmdEnd);
  const ascii = /^[A-Za-z]+$/.test(command);
  const lower = ascii ? command.toLowerCase() : '';
  const kind = Object.hasOwn(DISPATCH, lower) ? DISPATCH[lower] : undefined;
  const parsed = parseArgs(kind, L.subarray(argsSpan[0], argsSpan[1]), esc, depth, line);
  const node: DockerfileNode = {
    line,
    endLine,
    command,
    keyword: ascii ? command.toUpperCase() : '',
    known: kind !== undefined,
    flagWords: flagWords.map((w) => w.word),
    flags: flagWords.map((w) => {
      const body = w.word.slice(2);
      const k = body.indexOf('=');
      return k < 0 ? { name: body, value: undefined } : { name: body.slice(0, k), value: body.slice(k + 1) };
    }),
    args: text(L, argsSpan[0], argsSpan[1]),
    next: parsed.next,
    json: parsed.json,
    original: text(L),
  };
  const out: ReturnType<typeof buildNode> = { node, flagWords, argsSpan };
  if (parsed.error) out.error = kind === 'env' && parsed.error === 'must have two arguments' ? `${command.toUpperCase()} must have two arguments` : parsed.error;
  if (parsed.jsonAmbiguous) out.jsonAmbiguous = true;
  if (flagsDiffer) out.flagsDiffer = true;
  return out;
}

const NO_INSTRUCTIONS = 'file with no instructions';

interface Internal {
  parsed: ParsedDockerfile;
  inodes: INode[];
  bom: boolean;
  lines: SourceLine[];
}

function toBytes(input: string | Uint8Array): Uint8Array {
  return typeof input === 'string' ? Buffer.from(input, 'utf8') : input;
}

function parseInternal(b: Uint8Array): Internal {
  const problems: DockerfileProblem[] = [];
  const problem = (line: number, message: string, severity: Issue['severity'] = 'error'): void => {
    problems.push({ line, message, severity });
  };
  const lines = scanLines(b);
  const bom = b.length >= 3 && b[0] === 0xef && b[1] === 0xbb && b[2] === 0xbf;

  // Bytes and lines Docker versions (or readers) disagree on.
  let reportedCr = false;
  let reportedNul = false;
  let lineNo = 1;
  let lineStart = 0;
  for (let i = 0; i < b.length; i++) {
    const c = b[i]!;
    if (c === 0x0a) {
      if (i - lineStart > DOCKERFILE_MAX_LINE_BYTES) problem(lineNo, `line ${lineNo} is longer than ${DOCKERFILE_MAX_LINE_BYTES} bytes (Docker reads at most 64 KiB a line)`);
      lineNo++;
      lineStart = i + 1;
    } else if (c === 0x0d && b[i + 1] !== 0x0a && !reportedCr) {
      reportedCr = true;
      problem(lineNo, 'a carriage return not followed by a line feed: Docker versions split such lines differently');
    } else if (c === 0 && !reportedNul) {
      reportedNul = true;
      problem(lineNo, 'a NUL byte: a Dockerfile is text');
    }
  }
  if (b.length - lineStart > DOCKERFILE_MAX_LINE_BYTES) problem(lineNo, `line ${lineNo} is longer than ${DOCKERFILE_MAX_LINE_BYTES} bytes (Docker reads at most 64 KiB a line)`);

  // Parser directives, read as the current parser and as buildkit v0.8 (Docker 20.10) do.
  const cur = scanDirectives(b, lines, 'new', bom ? 3 : 0);
  const v08 = scanDirectives(b, lines, 'v0.8', bom ? 3 : 0);
  if (cur.error) problem(cur.error.line, cur.error.message);
  else if (v08.error) problem(v08.error.line, `${v08.error.message} (as Docker 20.10 reads the directives)`);
  if (!cur.error && !v08.error && cur.escape !== v08.escape) {
    const at = cur.directives.find((d) => d.name === 'escape')?.line ?? 1;
    problem(at, 'this escape directive is not read by every Docker version (Docker 20.10 stops reading directives at `# check=` or at a non-ASCII space after `#`): put `# escape=` on the first line, with only ASCII spaces after `#`');
  }
  const syntaxAt = cur.directives.find((d) => d.name === 'syntax')?.line ?? v08.directives.find((d) => d.name === 'syntax')?.line ?? detectSyntax(b);
  if (syntaxAt !== undefined) problem(syntaxAt, 'a `# syntax=` directive is refused: it names a frontend image that would read this Dockerfile instead of Docker\'s parser');
  if (cur.unknown) problem(cur.unknown.line, `unknown parser directive \`${cur.unknown.name}\`: Docker stops reading directives there, newer versions may not; only \`# escape=\` and \`# check=\` are accepted (write other comments below a blank line, not as \`name=value\`)`);
  const escape = cur.escape;
  const directives: Record<string, string> = {};
  for (const d of cur.directives) directives[d.name] = d.value;

  const inodes: INode[] = [];
  let currentLine = 0;
  let i = 0;
  while (i < lines.length) {
    const first = lines[i++]!;
    const s0 = trimLeftSpace(b, currentLine === 0 && bom ? first.start + 3 : first.start, first.end);
    const isComment = s0 < first.end && b[s0] === 0x23;
    currentLine++;
    const startLine = currentLine;
    if (isComment) {
      // A directive-looking comment after the directives: ignored by Docker, maybe not by its author.
      if (startLine - 1 >= cur.stop && inodes.length === 0) {
        const m = matchDirective(b, s0, first.end, 'new');
        if (m && (m.name === 'escape' || m.name === 'syntax') && !(m.name === 'syntax' && syntaxAt === startLine)) {
          problem(startLine, `this \`# ${m.name}=\` is an ordinary comment to Docker: directives must come first, before any other comment or blank line`, 'warning');
        }
      }
      continue;
    }
    const pieces: Piece[] = [];
    let len = 0;
    const add = (s: number, e: number): void => {
      if (e > s) {
        pieces.push({ l: len, src: s, len: e - s });
        len += e - s;
      }
    };
    let eol = continuation(b, s0, first.end, escape, add);
    if (eol && len === 0) continue;
    while (!eol && i < lines.length) {
      const l = lines[i++]!;
      currentLine++;
      const t = trimLeftSpace(b, l.start, l.end);
      if (t < l.end && b[t] === 0x23) continue; // a comment line
      if (t === l.end) continue; // an empty continuation line
      eol = continuation(b, l.start, l.end, escape, add);
    }
    const L = new Uint8Array(len);
    for (const p of pieces) L.set(b.subarray(p.src, p.src + p.len), p.l);
    const built = buildNode(L, escape, startLine, currentLine);
    const lower = built.node.keyword.toLowerCase();
    if (built.error) problem(startLine, built.error);
    if (built.jsonAmbiguous) problem(startLine, 'text after the JSON array: Docker 20.10 reads the array and ignores the rest, newer Docker reads the whole line as a shell command');
    if (built.flagsDiffer) problem(startLine, 'a `--flag` word with `\\` or the escape character in it: Docker 20.10 reads `\\` as the escape character in flags, newer Docker the escape directive\'s');
    if (HEREDOC_CAPABLE.has(lower) && hasHeredocMarker(L)) {
      problem(startLine, `\`<<\` in ${built.node.keyword}: newer Docker reads it as a heredoc (the lines that follow become file content, not instructions), Docker 20.10 does not; write the content to a file in the repository`);
    }
    inodes.push({ node: built.node, logical: L, pieces, flagWords: built.flagWords, argsSpan: built.argsSpan });
  }
  if (inodes.length === 0) problem(Math.max(1, currentLine), NO_INSTRUCTIONS);

  const nodes = inodes.map((n) => n.node);
  return {
    parsed: {
      directives,
      escape: String.fromCharCode(escape),
      instructions: nodes.map((n) => ({ line: n.line, keyword: n.keyword, flags: n.flags, args: n.args })),
      nodes,
      problems,
    },
    inodes,
    bom,
    lines,
  };
}

/** `<<` anywhere in the line: buildkit looks for heredocs only in such lines (`strings.Contains(line, "<<")`). */
function hasHeredocMarker(L: Uint8Array): boolean {
  for (let k = L.indexOf(0x3c); k >= 0 && k + 1 < L.length; k = L.indexOf(0x3c, k + 1)) if (L[k + 1] === 0x3c) return true;
  return false;
}

/**
 * trimContinuationCharacter: `([^E])E[ \t]*$|^E[ \t]*$` for the escape character E. Adds the
 * line's content (without the continuation) as a piece; true when the line ends the instruction.
 */
function continuation(b: Uint8Array, s: number, e: number, esc: number, add: (s: number, e: number) => void): boolean {
  let k = e;
  while (k > s && (b[k - 1] === 0x20 || b[k - 1] === 0x09)) k--;
  if (k > s && b[k - 1] === esc) {
    if (k - 1 === s) return false; // the escape character alone: an empty piece
    if (b[k - 2] !== esc) {
      add(s, k - 1);
      return false;
    }
  }
  add(s, e);
  return true;
}

/** Read a Dockerfile as Docker's parser does: directives, instructions and every problem found. Never throws. */
export function readDockerfile(input: string | Uint8Array): ParsedDockerfile {
  return parseInternal(toBytes(input)).parsed;
}

/** Split text into instructions, as Docker's parser does. Never throws. */
export function parseDockerfile(input: string | Uint8Array): ParsedDockerfile {
  return readDockerfile(input);
}

// ---------------------------------------------------------------------------------------------
// Docker's AST dump (`Node.Dump()`), the format of buildkit's parser test results.

/** strconv.Quote. */
function goQuote(s: string): string {
  let out = '"';
  for (const ch of s) {
    const cp = ch.codePointAt(0)!;
    if (ch === '"' || ch === '\\') out += `\\${ch}`;
    else if (cp === 0x20 || (cp > 0x20 && cp < 0x7f) || (cp > 0x7f && cp !== 0xfffd && /^[\p{L}\p{M}\p{N}\p{P}\p{S}]$/u.test(ch))) out += ch;
    else if (cp === 0xfffd) out += '\\ufffd';
    else {
      const esc: Record<number, string> = { 7: '\\a', 8: '\\b', 12: '\\f', 10: '\\n', 13: '\\r', 9: '\\t', 11: '\\v' };
      if (esc[cp]) out += esc[cp];
      else if (cp < 0x20 || cp === 0x7f) out += `\\x${cp.toString(16).padStart(2, '0')}`;
      else if (cp < 0x10000) out += `\\u${cp.toString(16).padStart(4, '0')}`;
      else out += `\\U${cp.toString(16).padStart(8, '0')}`;
    }
  }
  return `${out}"`;
}

function dumpNode(n: DockerfileNode): string {
  let s = n.command.toLowerCase();
  if (n.flagWords.length > 0) s += ` [${n.flagWords.map(goQuote).join(' ')}]`;
  for (const a of n.next) s += typeof a === 'string' ? ` ${goQuote(a)}` : ` (${dumpNode(a)})`;
  return s.trim();
}

/** The parse as buildkit's `Node.Dump()` prints it: one `(instruction "arg" …)` per line. */
export function dumpDockerfile(parsed: ParsedDockerfile): string {
  return parsed.nodes.map((n) => `(${dumpNode(n)})`).join('\n');
}

// ---------------------------------------------------------------------------------------------
// The policy check.

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
  return imageIssues(image, new Set(allowlist.map(normalizeImageRef)), file, path, what);
}

function imageIssues(image: string, allowed: ReadonlySet<string>, file: string, path: string, what: string): Issue[] {
  const err = (message: string): Issue[] => [{ file, path, message, severity: 'error' }];
  if (image.includes('$')) {
    return err(`${what} ${JSON.stringify(image)} uses variable substitution: write the image name out (build arguments are chosen after the allowlist check)`);
  }
  if (!ImageRef.safeParse(image).success) return err(`${what} ${JSON.stringify(image)} is not a Docker image reference`);
  if (!allowed.has(normalizeImageRef(image))) {
    return err(`${what} ${JSON.stringify(image)} is not an allowed base image (allowed: ${[...allowed].join(', ')})`);
  }
  return [];
}

const STAGE_NAME = /^[a-z][a-z0-9._-]*$/;

/**
 * An ADD source that the engine would fetch: a URL (`://`), a git remote (`user@host:…`,
 * `github.com/…`). Tested on the word with every quote and escape character removed: Docker's
 * shell-word expansion only removes such characters, so whatever it could turn into a URL
 * shows here already.
 */
function isRemoteSource(src: string): boolean {
  const s = src.replace(/["'\\`]/g, '');
  return s.includes('://') || /[\w.-]+@[\w.-]+:/.test(s) || s.startsWith('github.com/');
}

/** An image reference the build reads, and how it resolved. */
interface ImageUse {
  inode: INode;
  kind: 'FROM image' | 'COPY --from' | 'RUN --mount from';
  ref: string;
  resolved: 'stage' | 'scratch' | 'image';
  /** FROM: the image word's span in the logical line; COPY: the flag word's. */
  span?: [number, number];
  flagName?: string;
}

/** Walk the instructions with the policy's rules: the problems, and every image reference. */
function analyze(p: Internal): { problems: DockerfileProblem[]; uses: ImageUse[] } {
  const problems: DockerfileProblem[] = [];
  const uses: ImageUse[] = [];
  const add = (line: number, message: string, severity: Issue['severity'] = 'error'): void => {
    problems.push({ line, message, severity });
  };
  /** Lower-case names of the finished stages (a stage is finished when the next FROM begins). */
  const finished = new Set<string>();
  let finishedCount = 0;
  /** The current stage's lower-case name ('' if unnamed); undefined before the first FROM. */
  let current: string | undefined;
  const use = (inode: INode, kind: ImageUse['kind'], ref: string, extra: Partial<ImageUse> = {}): void => {
    // A FROM is read before its own stage begins: the stage before it counts as finished.
    const isFrom = kind === 'FROM image';
    const lower = ref.toLowerCase();
    const named = finished.has(lower) || (isFrom && current !== undefined && current !== '' && current === lower);
    const count = isFrom && current !== undefined ? finishedCount + 1 : finishedCount;
    let resolved: ImageUse['resolved'] = 'image';
    if (/^[a-z][a-z0-9._-]*$/i.test(ref) && named) resolved = 'stage';
    else if (!isFrom && /^\d{1,9}$/.test(ref) && Number(ref) < count) resolved = 'stage';
    else if (isFrom && ref === 'scratch') resolved = 'scratch';
    uses.push({ inode, kind, ref, resolved, ...extra });
  };

  const beginStage = (name: string): void => {
    if (current !== undefined) {
      if (current !== '') finished.add(current);
      finishedCount++;
    }
    current = name;
  };

  let seenFrom = false;
  for (const inode of p.inodes) {
    const n = inode.node;
    const line = n.line;
    const kw = n.keyword;
    if (!n.known) {
      add(line, `unknown instruction ${JSON.stringify(n.command.slice(0, 40))}: not a Dockerfile instruction`);
      continue;
    }
    if (!seenFrom && kw !== 'FROM' && kw !== 'ARG') add(line, `${kw} before the first FROM (only ARG may come first)`);
    switch (kw) {
      case 'FROM': {
        seenFrom = true;
        for (const f of n.flags) if (f.name !== 'platform') add(line, `FROM --${f.name} is not supported`);
        const w = n.next as string[];
        if (w.length !== 1 && !(w.length === 3 && w[1]!.toLowerCase() === 'as')) {
          add(line, 'FROM takes an image and an optional `AS name`');
          beginStage('');
          break;
        }
        const [a0] = inode.argsSpan;
        let e0 = a0;
        while (e0 < inode.argsSpan[1] && !isAsciiWs(inode.logical[e0]!)) e0++;
        use(inode, 'FROM image', w[0]!, { span: [a0, e0] });
        const raw = w[2] ?? '';
        const name = raw.toLowerCase();
        if (raw !== '' && !STAGE_NAME.test(name)) add(line, `invalid stage name ${JSON.stringify(raw)}`);
        else if (name !== '' && (finished.has(name) || current === name)) add(line, `stage name ${JSON.stringify(name)} is used twice`);
        beginStage(name);
        break;
      }
      case 'COPY':
        n.flags.forEach((f, k) => {
          if (f.name.toLowerCase() !== 'from') return;
          const w = inode.flagWords[k]!;
          use(inode, 'COPY --from', f.value ?? '', { span: [w.start, w.end], flagName: f.name });
        });
        break;
      case 'ONBUILD':
        // Its trigger runs when the stage is used as a base, unchecked: refuse it outright.
        add(line, 'ONBUILD is refused: the instruction it defers would escape these checks');
        break;
      case 'ADD': {
        for (const src of (n.next as string[]).slice(0, -1)) {
          if (isRemoteSource(src)) add(line, `ADD ${JSON.stringify(src)} would download during the build: builds have no network; vendor the file into the repository`);
          else if (src.includes('$')) add(line, `ADD source ${JSON.stringify(src)} uses variable substitution, which could expand to a URL: write it out`);
        }
        break;
      }
      case 'RUN':
        for (const f of n.flags) {
          const name = f.name.toLowerCase();
          if (name === 'network' || name === 'security') add(line, `RUN --${f.name} is refused: builds run with no network and no extra privileges`);
          else if (name === 'mount') {
            add(line, 'RUN --mount is a BuildKit feature; the classic builder used for environments refuses it', 'warning');
            const v = f.value ?? '';
            if (v.includes('"')) add(line, 'RUN --mount with a `"`: BuildKit reads the value as CSV; write it without quotes');
            for (const field of v.split(',')) {
              const k = field.indexOf('=');
              if (k >= 0 && field.slice(0, k).toLowerCase() === 'from') use(inode, 'RUN --mount from', field.slice(k + 1));
            }
          } else add(line, `RUN --${f.name} is not supported`);
        }
        break;
      default:
        break;
    }
  }
  return { problems, uses };
}

/** Check a Dockerfile against the allowlist. `file` names it in issues (`path` is `file:line`). */
export function checkDockerfile(text: string, file: string, allowlist: readonly string[]): DockerfileCheck {
  const issues: Issue[] = [];
  const baseImages: string[] = [];
  let errors = 0;
  let dropped = 0;
  const add = (line: number, message: string, severity: Issue['severity'] = 'error'): void => {
    if (severity === 'error' && errors >= MAX_ISSUES) {
      dropped++;
      return;
    }
    if (severity === 'error') errors++;
    else if (issues.length >= 2 * MAX_ISSUES) return;
    issues.push({ file, path: `${file}:${line}`, message, severity });
  };
  if (Buffer.byteLength(text) > DOCKERFILE_MAX_BYTES) {
    add(1, `the Dockerfile is larger than ${DOCKERFILE_MAX_BYTES} bytes`);
    return { baseImages, issues };
  }
  const p = parseInternal(toBytes(text));
  const a = analyze(p);
  const allowed = new Set(allowlist.map(normalizeImageRef));
  // 'no FROM instruction' below says it for an empty file.
  const all = [...p.parsed.problems.filter((pr) => pr.message !== NO_INSTRUCTIONS), ...a.problems];
  const ordered = [...a.uses.map((u) => ({ line: u.inode.node.line, u })), ...all.map((pr) => ({ line: pr.line, pr }))];
  // Problems in line order, each image reference checked where it is used.
  ordered.sort((x, y) => x.line - y.line);
  for (const o of ordered) {
    if ('pr' in o && o.pr) {
      add(o.pr.line, o.pr.message, o.pr.severity);
      continue;
    }
    const u = (o as { u: ImageUse }).u;
    if (u.resolved !== 'image') continue;
    const found = imageIssues(u.ref, allowed, file, `${file}:${o.line}`, u.kind);
    for (const f of found) add(o.line, f.message);
    if (found.length === 0) {
      const norm = normalizeImageRef(u.ref);
      if (!baseImages.includes(norm)) baseImages.push(norm);
    }
  }
  if (!p.inodes.some((n) => n.node.keyword === 'FROM')) add(1, 'no FROM instruction');
  if (dropped > 0) issues.push({ file, path: `${file}:1`, message: `${dropped} more problems not listed`, severity: 'error' });
  return { baseImages, issues };
}

// ---------------------------------------------------------------------------------------------
// Rewriting image references (the trusted builder pins bases by image id).

/**
 * The Dockerfile with each image reference that `checkDockerfile` would check as an image (a
 * `FROM` that is not a stage or `scratch`, a `COPY --from=` that is not a finished stage) replaced
 * by `replace(ref)` where that returns a string. Found by the same parser as the check; the result
 * is parsed again and must read the same apart from the replaced references, or this throws.
 */
export function rewriteImageRefs(input: string, replace: (ref: string) => string | undefined): string {
  const src = toBytes(input);
  const p = parseInternal(src);
  const { uses } = analyze(p);
  const edits: { start: number; end: number; bytes: Uint8Array }[] = [];
  const expected = new Map<INode, { from?: string; flags: Map<number, string> }>();
  for (const u of uses) {
    if (u.resolved !== 'image' || !u.span || (u.kind !== 'FROM image' && u.kind !== 'COPY --from')) continue;
    const to = replace(u.ref);
    if (to === undefined || to === u.ref) continue;
    if (/[\s"'`\\$]/.test(to)) throw new Error(`cannot write image reference ${JSON.stringify(to)} into a Dockerfile`);
    const word = u.kind === 'FROM image' ? to : `--${u.flagName ?? 'from'}=${to}`;
    const exp = expected.get(u.inode) ?? { flags: new Map<number, string>() };
    if (u.kind === 'FROM image') exp.from = to;
    else exp.flags.set(u.inode.flagWords.findIndex((w) => w.start === u.span![0]), word);
    expected.set(u.inode, exp);
    // The span's source parts: the new text goes into the last part, the others are emptied (a
    // first line keeps its instruction word, a middle line its continuation character).
    const parts: { start: number; end: number }[] = [];
    for (const pc of u.inode.pieces) {
      const a = Math.max(u.span[0], pc.l);
      const b = Math.min(u.span[1], pc.l + pc.len);
      if (a < b) parts.push({ start: pc.src + (a - pc.l), end: pc.src + (b - pc.l) });
    }
    parts.forEach((pt, k) => edits.push({ ...pt, bytes: k === parts.length - 1 ? Buffer.from(word, 'utf8') : new Uint8Array(0) }));
  }
  if (edits.length === 0) return input;
  edits.sort((x, y) => x.start - y.start);
  const chunks: Uint8Array[] = [];
  let at = 0;
  for (const e of edits) {
    chunks.push(src.subarray(at, e.start), e.bytes);
    at = e.end;
  }
  chunks.push(src.subarray(at));
  const out = Buffer.concat(chunks);

  // The rewritten file must read the same, apart from the replaced words.
  const again = parseInternal(out);
  const sig = (n: DockerfileNode, exp?: { from?: string; flags: Map<number, string> }): string => {
    const next = [...n.next];
    const flags = [...n.flagWords];
    if (exp?.from !== undefined) next[0] = exp.from;
    for (const [k, w] of exp?.flags ?? []) flags[k] = w;
    return JSON.stringify([n.line, n.endLine, n.command, flags, next, n.json]);
  };
  const same =
    again.inodes.length === p.inodes.length &&
    again.parsed.escape === p.parsed.escape &&
    again.parsed.problems.length === p.parsed.problems.length &&
    p.inodes.every((n, k) => sig(n.node, expected.get(n)) === sig(again.inodes[k]!.node));
  if (!same) throw new Error('rewriting the image references would change how the Dockerfile reads');
  return out.toString('utf8');
}
