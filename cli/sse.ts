/**
 * A server-sent events parser (the WHATWG `text/event-stream` rules), as a pure function over text
 * so chunk boundaries can be tested as data. Feed it what is left from the last call plus the new
 * chunk; it returns every complete event and the text to keep for the next call:
 *
 *   let rest = '';
 *   for await (const text of decoded) {
 *     const r = parseSse(rest, text);
 *     rest = r.rest;
 *     for (const e of r.events) handle(e);
 *   }
 *
 * Lines end in LF, CRLF or CR (a CR at the very end of a chunk is held back: its LF may be in the
 * next one; pass `final` with the last chunk, often '', to release it). A blank line dispatches the event; `data:` lines join with LF; `:` lines are comments
 * (heartbeats); unknown fields are ignored; an event with no data is not dispatched. Decoding bytes
 * to text (and UTF-8 sequences split across chunks) is the caller's job: a streaming TextDecoder.
 */

export interface SseEvent {
  /** The `event:` field; `message` when absent. */
  event: string;
  data: string;
  /** The last `id:` seen, if any was in this event. */
  id?: string;
}

export function parseSse(rest: string, chunk: string, final = false): { events: SseEvent[]; rest: string } {
  let text = rest + chunk;
  // A trailing CR may be half of a CRLF split across chunks: decide when the next chunk comes
  // (or, at the end of the stream, `final`, take it as the line end it is).
  const heldCr = !final && text.endsWith('\r');
  if (heldCr) text = text.slice(0, -1);
  text = text.replace(/\r\n?/g, '\n');
  const blocks = text.split('\n\n');
  const pending = blocks.pop() ?? '';
  const events: SseEvent[] = [];
  for (const block of blocks) {
    const e = parseBlock(block);
    if (e) events.push(e);
  }
  return { events, rest: pending + (heldCr ? '\r' : '') };
}

/** One event's lines (without the blank line that ended it); undefined when it carries no data. */
function parseBlock(block: string): SseEvent | undefined {
  let event = '';
  let id: string | undefined;
  const data: string[] = [];
  for (const line of block.split('\n')) {
    if (line === '' || line.startsWith(':')) continue;
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'event') event = value;
    else if (field === 'data') data.push(value);
    else if (field === 'id' && !value.includes('\0')) id = value;
  }
  if (data.length === 0) return undefined;
  return { event: event || 'message', data: data.join('\n'), ...(id !== undefined ? { id } : {}) };
}
