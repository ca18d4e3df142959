import { describe, expect, it } from 'vitest';
import { DockerDemuxer, LogCapture, sanitizeForTerminal, type LogChunk, type LogStream } from '#shared/runner/log-capture.js';

/** One frame of Docker's multiplexed stream: type, three zero bytes, big-endian length, payload. */
function frame(type: 0 | 1 | 2, payload: string | Buffer): Buffer {
  const data = typeof payload === 'string' ? Buffer.from(payload) : payload;
  const header = Buffer.alloc(8);
  header[0] = type;
  header.writeUInt32BE(data.length, 4);
  return Buffer.concat([header, data]);
}

/** Feed `pieces` to a fresh demuxer; what each stream got, and the raw chunks. */
function demux(pieces: Buffer[]): { stdout: string; stderr: string; chunks: LogChunk[] } {
  const d = new DockerDemuxer();
  const chunks: LogChunk[] = [];
  for (const p of pieces) d.push(p, (c) => chunks.push({ stream: c.stream, data: Buffer.from(c.data) }));
  const of = (s: LogStream) => Buffer.concat(chunks.filter((c) => c.stream === s).map((c) => c.data)).toString();
  return { stdout: of('stdout'), stderr: of('stderr'), chunks };
}

/** Consecutive chunks of one stream merged: the ordered story of what was said where. */
function story(chunks: LogChunk[]): [LogStream, string][] {
  const runs: [LogStream, Buffer[]][] = [];
  for (const c of chunks) {
    if (c.data.length === 0) continue;
    const last = runs[runs.length - 1];
    if (last && last[0] === c.stream) last[1].push(c.data);
    else runs.push([c.stream, [c.data]]);
  }
  return runs.map(([s, bufs]) => [s, Buffer.concat(bufs).toString()]);
}

const big = Buffer.alloc(70_000, 'y'); // longer than 16 bits of length
const STREAM = Buffer.concat([
  frame(1, 'hello\n'),
  frame(2, 'oops\n'),
  frame(1, ''),
  frame(2, ''),
  frame(1, big),
  frame(0, 'stdin-typed\n'),
  frame(2, 'bye\n'),
]);
const EXPECTED: [LogStream, string][] = [
  ['stdout', 'hello\n'],
  ['stderr', 'oops\n'],
  ['stdout', `${big.toString()}stdin-typed\n`],
  ['stderr', 'bye\n'],
];

describe('DockerDemuxer', () => {
  it('splits a whole stream into payloads tagged by stream', () => {
    const r = demux([STREAM]);
    expect(story(r.chunks)).toEqual(EXPECTED);
    expect(r.stderr).toBe('oops\nbye\n');
  });

  it('gives the same payload when fed one byte at a time', () => {
    const small = Buffer.concat([frame(1, 'hello\n'), frame(2, 'oops\n'), frame(1, ''), frame(2, 'é€\n'), frame(1, 'end')]);
    const bytes = [...small].map((b) => Buffer.from([b]));
    expect(story(demux(bytes).chunks)).toEqual(story(demux([small]).chunks));
    expect(demux(bytes).stdout).toBe('hello\nend');
    expect(demux(bytes).stderr).toBe('oops\né€\n');
  });

  it('gives the same payload when the stream is cut at any byte boundary', () => {
    const small = Buffer.concat([frame(1, 'ab'), frame(2, ''), frame(2, 'cd'), frame(1, 'e')]);
    const whole = story(demux([small]).chunks);
    expect(whole).toEqual([['stdout', 'ab'], ['stderr', 'cd'], ['stdout', 'e']]);
    for (let i = 0; i <= small.length; i++) {
      for (let j = i; j <= small.length; j++) {
        expect(story(demux([small.subarray(0, i), small.subarray(i, j), small.subarray(j)]).chunks)).toEqual(whole);
      }
    }
  });

  it('handles a big frame cut into uneven pieces', () => {
    const pieces: Buffer[] = [];
    for (let off = 0, n = 1; off < STREAM.length; off += n, n = (n * 7 + 3) % 4099 || 1) pieces.push(STREAM.subarray(off, off + n));
    expect(story(demux(pieces).chunks)).toEqual(EXPECTED);
  });

  it('emits nothing for zero-length frames and empty pushes', () => {
    const r = demux([Buffer.alloc(0), frame(2, ''), frame(1, ''), Buffer.alloc(0)]);
    expect(r.chunks.filter((c) => c.data.length > 0)).toEqual([]);
    expect(story(demux([frame(2, ''), frame(1, 'x')]).chunks)).toEqual([['stdout', 'x']]);
    expect(story(demux([frame(1, ''), frame(2, 'x')]).chunks)).toEqual([['stderr', 'x']]);
  });

  it('does not emit a header that is still incomplete', () => {
    const d = new DockerDemuxer();
    const got: LogChunk[] = [];
    const f = frame(2, 'late');
    d.push(f.subarray(0, 7), (c) => got.push(c));
    expect(got).toEqual([]);
    d.push(f.subarray(7), (c) => got.push(c));
    expect(got.map((c) => [c.stream, c.data.toString()])).toEqual([['stderr', 'late']]);
  });
});

const chunk = (s: string, stream: LogStream = 'stdout'): LogChunk => ({ stream, data: Buffer.from(s) });

describe('LogCapture', () => {
  it('keeps exactly the first capBytes and counts the rest', () => {
    const cap = new LogCapture(10);
    expect(cap.add(chunk('abcd'))?.data.toString()).toBe('abcd');
    expect(cap.truncated).toBe(false);
    const partial = cap.add(chunk('efghijkl', 'stderr'));
    expect(partial).toEqual({ stream: 'stderr', data: Buffer.from('efghij') });
    expect(cap.add(chunk('mno'))).toBeUndefined();
    expect(cap.add(chunk('p'.repeat(1000)))).toBeUndefined();
    expect(cap.bytes().toString()).toBe('abcdefghij');
    expect(cap.bytes()).toHaveLength(10);
    expect(cap.totalBytes).toBe(4 + 8 + 3 + 1000);
    expect(cap.truncated).toBe(true);
  });

  it('is not truncated when the log fills the cap exactly', () => {
    const cap = new LogCapture(6);
    expect(cap.add(chunk('abc'))?.data.toString()).toBe('abc');
    expect(cap.add(chunk('def'))?.data.toString()).toBe('def');
    expect(cap.truncated).toBe(false);
    expect(cap.totalBytes).toBe(6);
    expect(cap.add(chunk(''))).toBeUndefined();
    expect(cap.truncated).toBe(false);
    expect(cap.add(chunk('g'))).toBeUndefined();
    expect(cap.truncated).toBe(true);
    expect(cap.totalBytes).toBe(7);
    expect(cap.bytes().toString()).toBe('abcdef');
  });

  it('with a cap of 0 keeps nothing and still counts', () => {
    const cap = new LogCapture(0);
    expect(cap.add(chunk('x'))).toBeUndefined();
    expect(cap.bytes()).toHaveLength(0);
    expect(cap.totalBytes).toBe(1);
    expect(cap.truncated).toBe(true);
  });

  it('copies what it keeps, so a reused buffer cannot change the log', () => {
    const cap = new LogCapture(100);
    const buf = Buffer.from('original');
    const kept = cap.add({ stream: 'stdout', data: buf });
    buf.fill('X');
    expect(cap.bytes().toString()).toBe('original');
    expect(kept?.data.toString()).toBe('original');
  });

  it('works with the demuxer end to end', () => {
    const cap = new LogCapture(8);
    const d = new DockerDemuxer();
    d.push(Buffer.concat([frame(1, 'hello '), frame(2, 'world'), frame(1, '!!!')]), (c) => cap.add(c));
    expect(cap.bytes().toString()).toBe('hello wo');
    expect(cap.totalBytes).toBe(14);
    expect(cap.truncated).toBe(true);
  });
});

describe('sanitizeForTerminal', () => {
  it.each([
    ['ANSI colour', '\x1b[31mred\x1b[0m', '\ufffd[31mred\ufffd[0m'],
    ['OSC title', '\x1b]0;pwned\x07', '\ufffd]0;pwned\ufffd'],
    ['NUL and bell', 'a\x00b\x07c', 'a\ufffdb\ufffdc'],
    ['backspace', 'secret\x08\x08\x08\x08\x08\x08public', `secret${'\ufffd'.repeat(6)}public`],
    ['vertical tab and form feed', 'a\x0bb\x0cc', 'a\ufffdb\ufffdc'],
    ['DEL', 'a\x7fb', 'a\ufffdb'],
    ['C1 CSI', 'a\u009b31mb', 'a\ufffd31mb'],
    ['C1 range end', 'a\u009fb', 'a\ufffdb'],
    ['newline and tab kept', 'a\tb\nc\n', 'a\tb\nc\n'],
    ['lone CR becomes a newline', 'progress 10%\rprogress 99%', 'progress 10%\nprogress 99%'],
    ['trailing CR', 'a\r', 'a\n'],
    ['CRLF kept', 'a\r\nb\r\n', 'a\r\nb\r\n'],
    ['CR CR LF', 'a\r\r\nb', 'a\n\r\nb'],
    ['printable unicode kept', 'héllo ✓ 日本 \u00a0', 'héllo ✓ 日本 \u00a0'],
  ])('%s', (_what, input, output) => {
    expect(sanitizeForTerminal(input)).toBe(output);
  });

  it('leaves no C0 or C1 control character except tab, newline and CR before LF', () => {
    let all = '';
    for (let c = 0; c < 0xa0; c++) all += String.fromCharCode(c);
    const out = sanitizeForTerminal(all);
    for (const ch of out) {
      const c = ch.charCodeAt(0);
      if (c < 0x20 || (c >= 0x7f && c < 0xa0)) expect(['\t', '\n']).toContain(ch);
    }
    expect(out).toContain(' !"#$%&'); // printable ASCII untouched
    expect(out).toContain('xyz{|}~');
  });
});
