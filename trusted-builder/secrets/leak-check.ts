/**
 * The leak check run before publishing: does any secret in use appear in the image, the logs or
 * the artifacts? A hit refuses the publish (the caller decides; this module only finds).
 *
 * Each secret is searched in these forms (a "needle" each), across chunk boundaries:
 * - `raw`: its UTF-8 bytes.
 * - `json-escaped`: as it appears inside a JSON string when escaping changes it — JavaScript's
 *   JSON.stringify, Go's encoding/json (which also writes `<`, `>`, `&` as `\u00XX` unless told
 *   not to, and U+2028/9 as `\u2028`/`\u2029` always; Docker's image config is written by Go),
 *   ASCII-only JSON (Python's default, `\uXXXX` for non-ASCII), `\/` for `/`, and JSON inside
 *   JSON (escaped twice).
 * - `base64` / `base64url`: the secret's bytes embedded in a larger base64 text at each of the 3
 *   byte alignments. For alignment k the secret is encoded behind k filler bytes, the characters
 *   that mix filler (or the unknown next byte) with secret bits are dropped, and the stable middle
 *   is the needle (≥ 7 characters for a 6-byte secret). `docker login`'s `auth` ("user:password")
 *   is caught this way. Base64 is also searched with CR/LF removed, for MIME/PEM line wrapping
 *   (`lineWrapped: true` on such a hit; it has no offset).
 * - `url-encoded`: percent-encoding (`encodeURIComponent`, and `+` for spaces), e.g. in a URL's
 *   userinfo.
 * - `hex`: lower- and upper-case hex of its bytes.
 *
 * Secrets shorter than MIN_SECRET_LENGTH (6) characters are skipped (`skippedSecrets` lists
 * them): a 5-character value such as `admin` or `12345` is found in nearly every root filesystem,
 * and its base64 needle at alignment 2 shrinks to 5 characters, so every image would be refused
 * for noise; such a secret gives no real protection anyway. The caller may refuse to publish at
 * all while one is in use.
 *
 * Results never hold a secret or any function of it (not even a short hash: a hash of a weak
 * password can be brute-forced); a hit names the secret by its index in the list given.
 *
 * Not searched: compressed or archived files *inside* a layer (.gz, .zip, .jar) are scanned as
 * stored bytes; other encodings (UTF-16, rot13, encryption). The image layers themselves may be
 * plain or gzip'd tars; zstd, xz or bzip2 layers are refused (fail closed) since they cannot be read.
 *
 * Matching is an Aho–Corasick automaton over the first 32 bytes of every needle, then a byte
 * comparison of the whole needle against a rolling history, so the cost per byte does not grow
 * with the number of secrets and a needle split across any number of chunks is still found. The
 * hot loop is one table lookup per byte, and at the root state one lookup skips each byte no needle
 * starts with (zeros, most of a binary). The history is a copy of the last 31 bytes and of what
 * pending candidates still need, not a concatenation of every chunk. The line-wrapped search below
 * keeps a copy of the bytes as far back as its longest wrapped needle (at most that much of each
 * chunk). Neither keeps a view of a chunk past its write: a source may reuse its buffer.
 *
 * The line-wrapped search removes CR/LF only where a base64 needle can span a line break: around a
 * break run with base64-alphabet bytes on both sides, from the longest wrapped needle's length
 * before it to as far after it, shortened where the base64 run ends. A needle that spans no break
 * is found by the plain search (which then also decides the result for its secret and form), so
 * the hits and counts are those of a search over the whole stream without CR/LF; everything else
 * (binary data, text without long base64 runs) is skipped after a native indexOf for the breaks.
 * test/trusted-builder/leak-check.test.ts holds both searches to a naive one over the whole
 * stream, with and without CR/LF, on random and adversarial data in chunks of many sizes.
 */
import { Readable } from 'node:stream';
import { createGunzip } from 'node:zlib';
import tar from 'tar-stream';
import { InternalError, InvalidInputError } from '#shared/errors.js';

export type LeakForm = 'raw' | 'json-escaped' | 'url-encoded' | 'base64' | 'base64url' | 'hex';

/** One secret found in one source, in one form (aggregated over every occurrence). */
export interface Leak {
  /** The source's name (a log file, an artifact, `layer <id>:<path>`, `config sha256:…`). */
  source: string;
  /** Index of the secret in the `secrets` list given to findLeaks. */
  secret: number;
  form: LeakForm;
  /** Byte offset of the first occurrence in the source; absent for a line-wrapped base64 hit. */
  offset?: number;
  /** Occurrences found (overlapping ones count). */
  count: number;
  /** Found only once CR/LF were removed (base64 wrapped at 64/76 columns). */
  lineWrapped?: true;
}

/** Something to scan. A stream is read to its end before the next source is pulled. */
export interface LeakSource {
  name: string;
  data: Buffer | Uint8Array | Readable | AsyncIterable<Uint8Array | string>;
}

export const MIN_SECRET_LENGTH = 6; // characters (code points); see the module comment

/** Indexes of the secrets findLeaks will not search for, because they are too short. */
export function skippedSecrets(secrets: readonly string[], minLength = MIN_SECRET_LENGTH): number[] {
  return secrets.flatMap((s, i) => ([...s].length < minLength ? [i] : []));
}

/**
 * Every (source, secret, form) hit, in source order, then secret index, then form.
 * Reads every source to its end; a source stream that fails makes findLeaks fail (fail closed).
 */
export async function findLeaks(
  secrets: readonly string[],
  sources: AsyncIterable<LeakSource> | Iterable<LeakSource>,
  options: { minLength?: number } = {},
): Promise<Leak[]> {
  const plain = new NeedleSet();
  const wrapped = new NeedleSet();
  const seen = new Set<string>();
  secrets.forEach((secret, index) => {
    if ([...secret].length < (options.minLength ?? MIN_SECRET_LENGTH) || seen.has(secret)) return;
    seen.add(secret);
    for (const { form, bytes } of needlesOf(secret)) {
      plain.add(bytes, index, form);
      if (form === 'base64' || form === 'base64url') wrapped.add(bytes, index, form);
    }
  });
  const leaks: Leak[] = [];
  if (plain.size === 0) {
    for await (const source of sources) for await (const _ of chunksOf(source.data)); // still read them: fail closed on a broken stream
    return leaks;
  }
  const plainAuto = plain.build();
  const wrappedAuto = wrapped.size > 0 ? wrapped.build() : undefined;
  for await (const source of sources) {
    const a = new Scanner(plainAuto);
    const b = wrappedAuto && new WrappedSearch(wrappedAuto);
    for await (const chunk of chunksOf(source.data)) {
      a.write(chunk);
      b?.write(chunk);
    }
    const found = new Map<string, Leak>();
    for (const [needle, hit] of a.finish()) {
      for (const { secret, form } of plainAuto.owners[needle]!) {
        const key = `${secret}\0${form}`;
        const prev = found.get(key);
        if (prev) {
          prev.count += hit.count;
          prev.offset = Math.min(prev.offset!, hit.first);
        } else found.set(key, { source: source.name, secret, form, offset: hit.first, count: hit.count });
      }
    }
    for (const [needle, hit] of b?.finish() ?? []) {
      for (const { secret, form } of wrappedAuto!.owners[needle]!) {
        const key = `${secret}\0${form}`;
        const prev = found.get(key);
        if (!prev) found.set(key, { source: source.name, secret, form, count: hit.count, lineWrapped: true });
        else if (prev.lineWrapped) prev.count += hit.count;
      }
    }
    leaks.push(...[...found.values()].sort((x, y) => x.secret - y.secret || FORMS.indexOf(x.form) - FORMS.indexOf(y.form)));
  }
  return leaks;
}

const FORMS: readonly LeakForm[] = ['raw', 'json-escaped', 'url-encoded', 'base64', 'base64url', 'hex'];

/** The byte strings that betray `secret`, each with its form; duplicates across forms removed (first form wins). */
export function needlesOf(secret: string): { form: LeakForm; bytes: Buffer }[] {
  const raw = Buffer.from(secret, 'utf8');
  const out: { form: LeakForm; bytes: Buffer }[] = [];
  const have = new Set<string>();
  const add = (form: LeakForm, bytes: Buffer): void => {
    const key = bytes.toString('latin1');
    if (bytes.length === 0 || have.has(key)) return;
    have.add(key);
    out.push({ form, bytes });
  };
  add('raw', raw);
  for (const s of jsonEscapings(secret)) add('json-escaped', Buffer.from(s, 'utf8'));
  for (const s of urlEncodings(secret)) add('url-encoded', Buffer.from(s, 'utf8'));
  for (let k = 0; k < 3; k++) {
    const b64 = base64Middle(raw, k);
    add('base64', Buffer.from(b64, 'latin1'));
    add('base64url', Buffer.from(b64.replace(/\+/g, '-').replace(/\//g, '_'), 'latin1'));
  }
  add('hex', Buffer.from(raw.toString('hex'), 'latin1'));
  add('hex', Buffer.from(raw.toString('hex').toUpperCase(), 'latin1'));
  return out;
}

/**
 * The base64 characters that encode only `raw`'s bits when `raw` sits k bytes past a 3-byte
 * boundary: k=0 keeps everything but the final character of a partial group, k=1 also drops the
 * first 2 characters, k=2 the first 3.
 */
function base64Middle(raw: Buffer, k: number): string {
  const enc = Buffer.concat([Buffer.alloc(k), raw]).toString('base64').replace(/=+$/, '');
  const end = (k + raw.length) % 3 === 0 ? enc.length : enc.length - 1;
  return enc.slice([0, 2, 3][k], end);
}

/** The forms JSON encoders give the string's inside (without the quotes), and JSON inside JSON. */
function jsonEscapings(s: string): string[] {
  const once = new Set<string>([JSON.stringify(s).slice(1, -1)]);
  for (const html of [false, true])
    for (const lineSep of [false, true])
      for (const ascii of [false, true])
        for (const shortBF of [true, false])
          for (const slash of [false, true]) once.add(jsonInner(s, { html, lineSep, ascii, shortBF, slash }));
  const twice = [...once].map((x) => JSON.stringify(x).slice(1, -1));
  return [...once, ...twice];
}

/**
 * One JSON encoder's escaping of `s`: `html` is Go's default (`<`, `>`, `&` as \u00XX), `lineSep`
 * Go's always (U+2028/9 as \u2028/9, also with SetEscapeHTML(false)), `ascii` Python's
 * ensure_ascii (every non-ASCII code unit as \uXXXX), `shortBF` writes \b and \f (older Go writes
 * \u0008 and \u000c), `slash` writes `/` as `\/` (PHP).
 */
function jsonInner(s: string, o: { html: boolean; lineSep: boolean; ascii: boolean; shortBF: boolean; slash: boolean }): string {
  const u = (c: number): string => `\\u${c.toString(16).padStart(4, '0')}`;
  let out = '';
  for (const ch of s) {
    const c = ch.codePointAt(0)!;
    if (ch === '"') out += '\\"';
    else if (ch === '\\') out += '\\\\';
    else if (ch === '\n') out += '\\n';
    else if (ch === '\r') out += '\\r';
    else if (ch === '\t') out += '\\t';
    else if (ch === '\b' && o.shortBF) out += '\\b';
    else if (ch === '\f' && o.shortBF) out += '\\f';
    else if (c < 0x20) out += u(c);
    else if (ch === '/' && o.slash) out += '\\/';
    else if (o.html && (ch === '<' || ch === '>' || ch === '&')) out += u(c);
    else if (o.lineSep && (c === 0x2028 || c === 0x2029)) out += u(c);
    else if (o.ascii && c > 0x7f) {
      for (let i = 0; i < ch.length; i++) out += u(ch.charCodeAt(i));
    } else out += ch;
  }
  return out;
}

/** Percent-encodings: encodeURIComponent, RFC 3986 strict (also !'()*), and forms with + for space. */
function urlEncodings(s: string): string[] {
  let plain: string;
  try {
    plain = encodeURIComponent(s);
  } catch {
    return []; // a lone surrogate: no URL encoder produces it
  }
  const strict = plain.replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
  return [plain, strict, plain.replace(/%20/g, '+'), strict.replace(/%20/g, '+')];
}

const PREFIX = 32; // bytes of each needle in the automaton; the rest is compared on a candidate

interface Automaton {
  /**
   * next[(state << 8) | byte] → the next state, already shifted left by 8 (a full DFA: failure
   * links folded in), with the sign bit set when needles end there. At most 2^22 states, so a
   * shifted state fits in 31 bits.
   */
  next: Int32Array;
  /** 1 for the bytes that leave the root state: the hot loop skips the others with one lookup each. */
  start: Uint8Array;
  /** Needles whose prefix ends at a state (including via suffix links); undefined for most. */
  out: (number[] | undefined)[];
  needles: Buffer[];
  prefixLen: number[];
  owners: { secret: number; form: LeakForm }[][];
}

class NeedleSet {
  readonly #index = new Map<string, number>();
  readonly #needles: Buffer[] = [];
  readonly #owners: { secret: number; form: LeakForm }[][] = [];

  get size(): number {
    return this.#needles.length;
  }

  add(bytes: Buffer, secret: number, form: LeakForm): void {
    const key = bytes.toString('latin1');
    let i = this.#index.get(key);
    if (i === undefined) {
      i = this.#needles.push(bytes) - 1;
      this.#index.set(key, i);
      this.#owners.push([]);
    }
    if (!this.#owners[i]!.some((o) => o.secret === secret && o.form === form)) this.#owners[i]!.push({ secret, form });
  }

  build(): Automaton {
    const children: Map<number, number>[] = [new Map()];
    const own: number[][] = [[]];
    const prefixLen = this.#needles.map((n) => Math.min(PREFIX, n.length));
    this.#needles.forEach((needle, i) => {
      let s = 0;
      for (let j = 0; j < prefixLen[i]!; j++) {
        const b = needle[j]!;
        let c = children[s]!.get(b);
        if (c === undefined) {
          c = children.push(new Map()) - 1;
          own.push([]);
          children[s]!.set(b, c);
        }
        s = c;
      }
      own[s]!.push(i);
    });
    const n = children.length;
    if (n > 1 << 22) throw new InvalidInputError([{ file: 'leak check', path: 'secrets', message: 'too many secrets to search at once', severity: 'error' }]);
    const delta = new Int32Array(n * 256);
    const fail = new Int32Array(n);
    const out: (number[] | undefined)[] = new Array<number[] | undefined>(n);
    const queue = new Int32Array(n);
    let head = 0;
    let tail = 0;
    for (let b = 0; b < 256; b++) {
      const c = children[0]!.get(b);
      if (c !== undefined) {
        delta[b] = c;
        queue[tail++] = c;
      }
    }
    if (own[0]!.length) out[0] = own[0];
    while (head < tail) {
      const s = queue[head++]!;
      const merged = [...own[s]!, ...(out[fail[s]!] ?? [])];
      if (merged.length) out[s] = merged;
      for (let b = 0; b < 256; b++) {
        const c = children[s]!.get(b);
        if (c !== undefined) {
          fail[c] = delta[fail[s]! * 256 + b]!;
          delta[s * 256 + b] = c;
          queue[tail++] = c;
        } else {
          delta[s * 256 + b] = delta[fail[s]! * 256 + b]!;
        }
      }
    }
    const next = new Int32Array(n * 256);
    for (let i = 0; i < next.length; i++) {
      const t = delta[i]!;
      next[i] = (t << 8) | (out[t] !== undefined ? 0x80000000 : 0);
    }
    const start = new Uint8Array(256);
    for (let b = 0; b < 256; b++) if (delta[b] !== 0) start[b] = 1;
    return { next, start, out, needles: this.#needles, prefixLen, owners: this.#owners };
  }
}

/**
 * Feeds a stream's bytes through an automaton, verifying candidates against a rolling history.
 * The history holds the chunks (or the parts of them) a candidate still needs, and the last
 * PREFIX − 1 bytes, where a candidate found in the next chunk may start; nothing else is copied.
 */
class Scanner {
  #state = 0; // shifted left by 8, as in Automaton.next
  #pos = 0; // absolute offset of the next byte
  #hist: Uint8Array[] = []; // contiguous, from #histStart to #pos
  #histStart = 0;
  #pending: { needle: number; start: number }[] = [];
  readonly #hits = new Map<number, { first: number; count: number }>();

  constructor(readonly auto: Automaton) {}

  write(chunk: Uint8Array): void {
    const len = chunk.length;
    if (len === 0) return;
    const { next, start, out, prefixLen } = this.auto;
    const base = this.#pos;
    let s = this.#state;
    let i = 0;
    while (i < len) {
      if (s === 0) {
        // At the root, a byte that starts no needle leaves it there: skip those with one lookup each.
        while (i < len && start[chunk[i]!] === 0) i++;
        if (i === len) break;
      }
      s = next[s | chunk[i]!]!;
      if (s < 0) {
        s &= 0x7fffffff;
        for (const needle of out[s >>> 8]!) this.#pending.push({ needle, start: base + i + 1 - prefixLen[needle]! });
      }
      i++;
    }
    this.#state = s;
    this.#pos += len;
    this.#hist.push(chunk);
    if (this.#pending.length) this.#verify();
    this.#trim();
  }

  /** Hits per needle index; candidates still waiting for bytes the source never sent are dropped. */
  finish(): Map<number, { first: number; count: number }> {
    this.#pending = [];
    return this.#hits;
  }

  #verify(): void {
    const still: { needle: number; start: number }[] = [];
    for (const p of this.#pending) {
      const needle = this.auto.needles[p.needle]!;
      if (p.start + needle.length > this.#pos) {
        still.push(p);
        continue;
      }
      if (needle.length > PREFIX && !this.#historyEquals(p.start, needle)) continue;
      const hit = this.#hits.get(p.needle);
      if (hit) {
        hit.count++;
        hit.first = Math.min(hit.first, p.start);
      } else this.#hits.set(p.needle, { first: p.start, count: 1 });
    }
    this.#pending = still;
  }

  /** Whether the history from absolute offset `at` holds `needle` (it holds all of its bytes). */
  #historyEquals(at: number, needle: Buffer): boolean {
    let segStart = this.#histStart;
    let j = 0; // bytes of the needle compared
    for (const seg of this.#hist) {
      const segEnd = segStart + seg.length;
      if (segEnd > at + j) {
        const from = at + j - segStart;
        const n = Math.min(seg.length - from, needle.length - j);
        if (needle.compare(seg, from, from + n, j, j + n) !== 0) return false;
        j += n;
        if (j === needle.length) return true;
      }
      segStart = segEnd;
    }
    return false;
  }

  /** Drops the history no candidate needs; copies what is kept of the chunk just written. */
  #trim(): void {
    let keepFrom = this.#pos - (PREFIX - 1);
    for (const p of this.#pending) keepFrom = Math.min(keepFrom, p.start);
    keepFrom = Math.max(keepFrom, this.#histStart);
    while (this.#hist.length > 0 && this.#histStart + this.#hist[0]!.length <= keepFrom) this.#histStart += this.#hist.shift()!.length;
    if (this.#hist.length === 0) {
      this.#histStart = this.#pos;
      return;
    }
    const first = this.#hist[0]!;
    if (keepFrom > this.#histStart) {
      this.#hist[0] = first.subarray(keepFrom - this.#histStart);
      this.#histStart = keepFrom;
    }
    // Copy the kept part of the chunk just written (the last segment), so the history does not
    // pin the whole (possibly large) buffer it was cut from.
    const last = this.#hist.length - 1;
    this.#hist[last] = new Uint8Array(this.#hist[last]!);
  }
}

/**
 * The search for base64 wrapped at some column: the stream with CR/LF removed, but only where a
 * needle can span a line break. A hit that spans no break is also in the stream as it is, so the
 * plain search finds it (and a wrapped hit counts only where the plain search found none for that
 * secret and form). A needle spans only break runs with needle bytes (base64 characters) on both
 * sides, so only the bytes around such a run are searched: back from it to `reach` bytes (the
 * longest wrapped needle, less one) or the first byte that is no needle byte, whichever is nearer,
 * and on after it as far (a needle spanning several breaks lies in the union of their regions).
 * Breaks are found with native indexOf; the regions of a chunk are copied, without their breaks,
 * into one buffer and scanned in one write, a byte no needle holds between regions that are not
 * adjacent (it ends every partial match, as a reset would). The rest of the stream is not copied
 * or scanned.
 */
class WrappedSearch {
  readonly #scanner: Scanner;
  /** 1 for a byte some wrapped needle holds, 2 for CR and LF, 0 otherwise. */
  readonly #cls: Uint8Array;
  readonly #reach: number;
  readonly #separator: number; // a byte no wrapped needle holds
  #pos = 0; // absolute offset (in the stream as it is) of the next chunk
  #fedTo = 0; // regions are taken up to here; a region that starts here goes on from the last one
  #needTo = 0; // regions must go on up to here, unless the base64 run ends first
  #last = -1; // the last byte before #pos that is no CR/LF (-1: none yet)
  readonly #recent: Uint8Array[] = []; // copies of the last ≥ reach bytes before #pos (all of them, nearer the start)
  #recentStart = 0;
  readonly #regions: number[] = []; // this chunk's regions: start, end, 1 if it goes on from the one before
  #buf = new Uint8Array(0); // reused: the scanner copies what it keeps

  constructor(auto: Automaton) {
    this.#scanner = new Scanner(auto);
    this.#cls = new Uint8Array(256);
    for (const needle of auto.needles) for (const b of needle) this.#cls[b] = 1;
    this.#cls[10] = 2; // base64 never holds CR or LF, so no wrapped needle does
    this.#cls[13] = 2;
    this.#separator = this.#cls.indexOf(0);
    if (this.#separator < 0) throw new InternalError('leak check: wrapped needles hold every byte value');
    this.#reach = auto.needles.reduce((m, n) => Math.max(m, n.length - 1), 0); // not Math.max(...list): a long list overflows the stack
  }

  write(chunk: Uint8Array): void {
    const len = chunk.length;
    if (len === 0) return;
    const pos = this.#pos;
    const cls = this.#cls;
    let lf = chunk.indexOf(10);
    let cr = chunk.indexOf(13);
    while (lf >= 0 || cr >= 0) {
      const p = lf < 0 ? cr : cr < 0 ? lf : Math.min(lf, cr);
      let q = p + 1;
      while (q < len && cls[chunk[q]!] === 2) q++;
      this.#forward(chunk, pos + p);
      const prev = p > 0 ? chunk[p - 1]! : this.#last;
      if (prev >= 0 && cls[prev] === 1 && (q === len || cls[chunk[q]!] === 1)) {
        // A needle may span this break run (its end unknown yet counts as one that may).
        if (this.#fedTo < pos + p) this.#region(this.#back(chunk, p), pos + p);
        this.#fedTo = pos + q; // the break run itself, removed: what follows goes on from before it
        this.#needTo = Math.max(this.#needTo, pos + q + this.#reach);
      } else {
        this.#needTo = Math.min(this.#needTo, this.#fedTo); // no needle spans it: a region ends here
      }
      if (q >= len) break;
      if (lf >= 0 && lf < q) lf = chunk.indexOf(10, q);
      if (cr >= 0 && cr < q) cr = chunk.indexOf(13, q);
    }
    this.#forward(chunk, pos + len);
    if (this.#regions.length > 0) this.#scan(chunk);
    for (let i = len - 1; i >= 0; i--) {
      if (cls[chunk[i]!] !== 2) {
        this.#last = chunk[i]!;
        break;
      }
    }
    this.#pos += len;
    // Keep a copy of this chunk's last `reach` bytes, not a view: a source may refill its buffer
    // once the chunk is handed on.
    const keep = Math.min(len, this.#reach);
    if (keep < len || this.#recent.length === 0) {
      this.#recent.length = 0;
      this.#recentStart = this.#pos - keep;
    }
    this.#recent.push(new Uint8Array(chunk.subarray(len - keep)));
    while (this.#recent.length > 1 && this.#recentStart + this.#recent[0]!.length <= this.#pos - this.#reach) this.#recentStart += this.#recent.shift()!.length;
  }

  finish(): Map<number, { first: number; count: number }> {
    return this.#scanner.finish();
  }

  #region(from: number, to: number): void {
    if (to > from) this.#regions.push(from, to, from === this.#fedTo ? 1 : 0);
    this.#fedTo = to;
  }

  /** Takes the region still needed after earlier breaks up to `until` (no CR/LF lies before it), while the base64 run lasts. */
  #forward(chunk: Uint8Array, until: number): void {
    if (this.#needTo <= this.#fedTo) return;
    const pos = this.#pos;
    const from = this.#fedTo - pos;
    const lim = Math.min(this.#needTo, until) - pos;
    let j = from;
    while (j < lim && this.#cls[chunk[j]!] === 1) j++;
    this.#region(pos + from, pos + j);
    if (j < lim) this.#needTo = this.#fedTo; // a byte no needle holds: the run is over
  }

  /**
   * Where the region before the break run at chunk index `p` starts (absolute): up to `reach`
   * bytes back, not past a byte no needle holds or a CR/LF (a needle spanning that earlier break
   * too would have made it a region's), not before what was taken.
   */
  #back(chunk: Uint8Array, p: number): number {
    const cls = this.#cls;
    const floor = Math.max(this.#fedTo, this.#pos + p - this.#reach);
    let at = this.#pos + p;
    for (let i = p - 1; i >= 0 && at > floor && cls[chunk[i]!] === 1; i--) at--;
    if (at > floor && at === this.#pos) {
      // On into the chunks before this one, newest first.
      for (let k = this.#recent.length - 1; k >= 0 && at > floor; k--) {
        const seg = this.#recent[k]!;
        let i = seg.length - 1;
        for (; i >= 0 && at > floor && cls[seg[i]!] === 1; i--) at--;
        if (i >= 0) break; // stopped inside this chunk
      }
    }
    return at;
  }

  /** Copies this chunk's regions (none holds a CR/LF) into one buffer, a separator before each that does not go on from the one before, and scans it. */
  #scan(chunk: Uint8Array): void {
    const r = this.#regions;
    let size = 0;
    for (let k = 0; k < r.length; k += 3) size += r[k + 1]! - r[k]! + 1 - r[k + 2]!;
    if (this.#buf.length < size) this.#buf = new Uint8Array(Math.max(size, 2 * this.#buf.length));
    const buf = this.#buf;
    const pos = this.#pos;
    let j = 0;
    for (let k = 0; k < r.length; k += 3) {
      const from = r[k]!;
      const to = r[k + 1]!;
      if (r[k + 2] === 0) buf[j++] = this.#separator;
      if (from < pos) {
        let segStart = this.#recentStart;
        for (const seg of this.#recent) {
          const segEnd = segStart + seg.length;
          if (segEnd > from && segStart < to) {
            const part = seg.subarray(Math.max(0, from - segStart), Math.min(seg.length, to - segStart));
            buf.set(part, j);
            j += part.length;
          }
          segStart = segEnd;
        }
      }
      if (to > pos) {
        const part = chunk.subarray(Math.max(0, from - pos), to - pos);
        buf.set(part, j);
        j += part.length;
      }
    }
    r.length = 0;
    this.#scanner.write(buf.subarray(0, j));
  }
}

async function* chunksOf(data: LeakSource['data']): AsyncIterable<Uint8Array> {
  if (data instanceof Uint8Array) {
    yield data;
    return;
  }
  for await (const c of data as AsyncIterable<Uint8Array | string>) yield typeof c === 'string' ? Buffer.from(c, 'utf8') : c;
}

// ---------------------------------------------------------------------------------------------
// docker save archives

/**
 * Every file of an image, as leak-check sources, from a `docker save` tar stream (the legacy
 * layout of Docker < 25 — `<id>/layer.tar`, `<config>.json`, `manifest.json` — and the OCI layout
 * of Docker ≥ 25 — `blobs/sha256/<hex>`, `index.json`).
 *
 * Each entry of the outer tar is sniffed rather than looked up in manifest.json, because
 * manifest.json comes last: a tar (plain, or gzip'd) is a layer and each regular file in it
 * becomes a source `layer <id>:<path>`, where <id> is `sha256:<hex>` for an OCI blob and the
 * layer directory's id in the legacy layout; then one more source per layer,
 * `layer <id>:(entry names)`, holds its file and link names, which can carry a secret too.
 * Every other entry is yielded whole: the image config as `config sha256:<hex>` (legacy) or
 * `blob sha256:<hex>` (OCI) — its Env and history are where `ENV TOKEN=…` lands — and the rest
 * (manifest.json, the legacy `<id>/json`, which repeats the config) as `image <path>`.
 * A zstd, xz or bzip2 blob throws InvalidInputError: what cannot be read cannot be cleared.
 *
 * With `perFile: false`, each layer is one source `layer <id>` of its raw tar bytes instead, with
 * the long paths a ustar header splits in two fields rejoined after them: the same secrets are
 * found (file contents are contiguous in a tar, names are in its headers) at a fraction of the
 * cost, but a hit names only the layer — search again per file to say where.
 *
 * Sources must be consumed in order (findLeaks does); one not read to its end is drained when
 * the next is pulled.
 */
export async function* imageLayerSources(archive: Readable | AsyncIterable<Uint8Array>, options: { perFile?: boolean } = {}): AsyncGenerator<LeakSource> {
  const perFile = options.perFile ?? true;
  const input = archive instanceof Readable ? archive : Readable.from(archive);
  const extract = tar.extract();
  input.on('error', (e) => extract.destroy(e));
  input.pipe(extract);
  try {
    for await (const entry of extract) {
      const cursor = new Cursor(entry as AsyncIterable<Uint8Array>);
      const h = entry.header;
      if (h.type === 'file' || h.type === 'contiguous-file') {
        const name = h.name.replace(/^\.\//, '');
        const blob = /^blobs\/sha256\/([0-9a-f]{64})$/.exec(name)?.[1];
        const legacyLayer = /^([0-9a-f]{64})\/layer\.tar$/.exec(name)?.[1];
        const legacyConfig = /^([0-9a-f]{64})\.json$/.exec(name)?.[1];
        const layerId = blob ? `sha256:${blob}` : (legacyLayer ?? name);
        const wholeName = legacyConfig ? `config sha256:${legacyConfig}` : blob ? `blob sha256:${blob}` : `image ${name}`;
        yield* blobSources(cursor, name, layerId, wholeName, true, perFile);
      }
      await cursor.drain();
    }
  } finally {
    extract.destroy();
    input.unpipe(extract);
    input.destroy();
  }
}

type Sniffed = 'gzip' | 'tar' | 'unreadable' | 'other';

function sniff(head: Buffer): Sniffed {
  if (head.length >= 2 && head[0] === 0x1f && head[1] === 0x8b) return 'gzip';
  if (head.length >= 262 && head.toString('latin1', 257, 262) === 'ustar') return 'tar';
  const zstd = head.length >= 4 && head.readUInt32LE(0) === 0xfd2fb528;
  const xz = head.length >= 6 && head.subarray(0, 6).equals(Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]));
  const bzip2 = head.length >= 4 && head.toString('latin1', 0, 3) === 'BZh' && head[3]! >= 0x31 && head[3]! <= 0x39;
  return zstd || xz || bzip2 ? 'unreadable' : 'other';
}

/** One blob of the outer archive: a layer's files, or the blob itself. Reads `cursor` to its end. */
async function* blobSources(cursor: Cursor, path: string, layerId: string, wholeName: string, mayGunzip: boolean, perFile: boolean): AsyncGenerator<LeakSource> {
  const kind = sniff(await cursor.peek(512));
  if (kind === 'unreadable') {
    throw new InvalidInputError([{ file: 'image archive', path, message: 'is compressed with zstd, xz or bzip2, which the leak check cannot read', severity: 'error' }]);
  }
  if (kind === 'gzip' && mayGunzip) {
    const gz = createGunzip();
    const src = Readable.from(cursor.stream());
    src.on('error', (e) => gz.destroy(e));
    src.pipe(gz);
    yield* blobSources(new Cursor(gz), path, layerId, wholeName, false, perFile);
  } else if (kind === 'tar' && !perFile) {
    // The layer's tar as it is: every file's content is contiguous in it, and its headers carry
    // the names (those a ustar header splits are added, rejoined, after it), so this finds what
    // the per-file sources find, without parsing the layer.
    yield { name: `layer ${layerId}`, data: withSplitNames(cursor.stream()) };
  } else if (kind === 'tar') {
    yield* layerSources(cursor.stream(), layerId);
  } else {
    yield { name: wholeName, data: cursor.stream() };
  }
  await cursor.drain();
}

const USTAR_MAGIC = [...Buffer.from('ustar\0', 'latin1')];

/**
 * A layer's raw tar bytes as they come, then (after a LF) the paths its ustar headers split, each
 * rejoined, one a line. A path longer than 100 bytes may be stored as a prefix field (offset 345)
 * and a name field (offset 0) with the `/` between them dropped — Go's archive/tar, and so Docker,
 * writes such headers, splitting at a `/` — so a secret holding a `/` can be in no contiguous byte
 * range of the tar. Every 512-byte block at a 512-byte boundary with the ustar magic and a
 * non-empty prefix is taken for a header, without following the entries' sizes: a file's data also
 * starts on a boundary, so a data block that looks like a header only adds a line to search.
 * The lines are raw bytes (no decoding); they are held until the tar ends (at most 256 bytes for
 * each split path; the per-file sources hold every name).
 */
async function* withSplitNames(tarBytes: AsyncIterable<Uint8Array>): AsyncGenerator<Uint8Array> {
  const lines: Buffer[] = [];
  const take = (b: Uint8Array, o: number): void => {
    if (b[o + 345] === 0 || !USTAR_MAGIC.every((c, i) => b[o + 257 + i] === c)) return;
    const field = (from: number, len: number): Uint8Array => {
      const end = b.subarray(from, from + len).indexOf(0);
      return b.subarray(from, end < 0 ? from + len : from + end);
    };
    lines.push(Buffer.concat([Buffer.from([10]), field(o + 345, 155), Buffer.from('/'), field(o, 100)]));
  };
  const block = new Uint8Array(512); // a block that straddles chunks
  let have = 0;
  for await (const chunk of tarBytes) {
    let i = 0;
    if (have > 0) {
      i = Math.min(512 - have, chunk.length);
      block.set(chunk.subarray(0, i), have);
      have += i;
      if (have === 512) {
        take(block, 0);
        have = 0;
      }
    }
    for (; i + 512 <= chunk.length; i += 512) take(chunk, i);
    if (i < chunk.length) {
      block.set(chunk.subarray(i), 0);
      have = chunk.length - i;
    }
    yield chunk;
  }
  if (lines.length > 0) yield Buffer.concat(lines);
}

async function* layerSources(bytes: AsyncIterable<Uint8Array>, layerId: string): AsyncGenerator<LeakSource> {
  const src = Readable.from(bytes);
  const extract = tar.extract();
  src.on('error', (e) => extract.destroy(e));
  src.pipe(extract);
  const names: string[] = [];
  try {
    for await (const entry of extract) {
      const cursor = new Cursor(entry as AsyncIterable<Uint8Array>);
      const h = entry.header;
      names.push(h.name);
      if (h.linkname) names.push(h.linkname);
      if (h.type === 'file' || h.type === 'contiguous-file') yield { name: `layer ${layerId}:${h.name.replace(/^(\.\/)+/, '')}`, data: cursor.stream() };
      await cursor.drain();
    }
  } finally {
    extract.destroy();
    src.unpipe(extract);
    src.destroy();
  }
  yield { name: `layer ${layerId}:(entry names)`, data: Buffer.from(names.join('\n'), 'utf8') };
}

/**
 * One pass over a stream through a single iterator: peek at its head, hand the whole stream on
 * once, and drain whatever the consumer left, so the archive behind it can move on.
 */
class Cursor {
  readonly #it: AsyncIterator<Uint8Array>;
  #head: Buffer[] = [];
  #done = false;

  constructor(source: AsyncIterable<Uint8Array>) {
    this.#it = source[Symbol.asyncIterator]();
  }

  /** At least `n` bytes from the start (fewer if the stream is shorter), without consuming them. */
  async peek(n: number): Promise<Buffer> {
    let size = this.#head.reduce((a, b) => a + b.length, 0);
    while (size < n && !this.#done) {
      const r = await this.#it.next();
      if (r.done) this.#done = true;
      else {
        const b = Buffer.from(r.value.buffer, r.value.byteOffset, r.value.length);
        this.#head.push(b);
        size += b.length;
      }
    }
    return Buffer.concat(this.#head);
  }

  async *stream(): AsyncGenerator<Uint8Array> {
    while (this.#head.length) yield this.#head.shift()!;
    while (!this.#done) {
      const r = await this.#it.next();
      if (r.done) this.#done = true;
      else yield r.value;
    }
  }

  async drain(): Promise<void> {
    this.#head = [];
    while (!this.#done) if ((await this.#it.next()).done) this.#done = true;
  }
}
