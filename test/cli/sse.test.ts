/**
 * The SSE parser, pure: whole streams, every split point, line-ending variants and the odd fields.
 */
import { describe, expect, it } from 'vitest';
import { parseSse, type SseEvent } from '../../cli/sse.js';

/** Feeds `chunks` one after another, as a reader would. */
function feed(chunks: string[]): { events: SseEvent[]; rest: string } {
  let rest = '';
  const events: SseEvent[] = [];
  for (const c of chunks) {
    const r = parseSse(rest, c);
    events.push(...r.events);
    rest = r.rest;
  }
  return { events, rest };
}

// What GET /api/builds/:id/events sends: named events, JSON data, a heartbeat comment, then `end`.
const STREAM =
  'event: build\ndata: {"type":"build","state":"running"}\n\n' +
  ': keep-alive\n\n' +
  'event: log\ndata: {"type":"log","job":"test","text":"hi\\n"}\n\n' +
  'event: end\ndata: {}\n\n';
const EXPECTED: SseEvent[] = [
  { event: 'build', data: '{"type":"build","state":"running"}' },
  { event: 'log', data: '{"type":"log","job":"test","text":"hi\\n"}' },
  { event: 'end', data: '{}' },
];

describe('parseSse', () => {
  it('parses a whole stream in one chunk; heartbeats are not events', () => {
    expect(feed([STREAM])).toEqual({ events: EXPECTED, rest: '' });
  });

  it('gives the same events whatever the split point', () => {
    for (let i = 0; i <= STREAM.length; i++) {
      expect(feed([STREAM.slice(0, i), STREAM.slice(i)]), `split at ${i}`).toEqual({ events: EXPECTED, rest: '' });
    }
  });

  it('gives the same events one character at a time', () => {
    expect(feed([...STREAM])).toEqual({ events: EXPECTED, rest: '' });
  });

  it('keeps an incomplete event for the next call', () => {
    const r = parseSse('', 'event: log\ndata: {"a":');
    expect(r.events).toEqual([]);
    expect(parseSse(r.rest, '1}\n\n').events).toEqual([{ event: 'log', data: '{"a":1}' }]);
  });

  it('accepts CRLF and CR line endings, including a CRLF split between chunks', () => {
    const crlf = STREAM.replace(/\n/g, '\r\n');
    expect(feed([crlf]).events).toEqual(EXPECTED);
    for (let i = 0; i <= crlf.length; i++) expect(feed([crlf.slice(0, i), crlf.slice(i)]).events, `split at ${i}`).toEqual(EXPECTED);
    // With CR alone, the last CR could still be half a CRLF: the event waits for more, or for the end.
    const cr = parseSse('', STREAM.replace(/\n/g, '\r'));
    expect(cr.events).toEqual(EXPECTED.slice(0, 2));
    expect(parseSse(cr.rest, '', true)).toEqual({ events: EXPECTED.slice(2), rest: '' });
  });

  it('joins data lines with LF, defaults the event name, keeps ids, ignores unknown fields and data-less events', () => {
    const r = parseSse('', 'data: one\ndata:two\ndata\nid: 7\nretry: 100\nfoo: bar\n\nevent: nothing\n\nid: 8\n\n');
    expect(r.events).toEqual([{ event: 'message', data: 'one\ntwo\n', id: '7' }]);
  });

  it('removes one leading space of a value only', () => {
    expect(parseSse('', 'data:   indented\n\n').events).toEqual([{ event: 'message', data: '  indented' }]);
  });
});
