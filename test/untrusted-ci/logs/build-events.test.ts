/**
 * BuildEvents: backfill then live, in order, exactly once — from memory while the backlog is
 * whole, from the events file when it was trimmed or the build has ended.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { BuildEvent } from '#shared/schemas/api/builds.js';
import { BuildEvents } from '../../../untrusted-ci/logs/build-events.js';

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'airlock-events-'));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

const log = (i: number): BuildEvent => ({ type: 'log', job: 'unit', text: `line ${i} ${'x'.repeat(40)}\n` });
const FINISHED: BuildEvent = { type: 'build', state: 'finished', result: 'passed', reason: '1 voting job passed' };

function collector(): { seen: BuildEvent[]; fn: (e: BuildEvent) => void } {
  const seen: BuildEvent[] = [];
  return { seen, fn: (e) => seen.push(e) };
}

describe('BuildEvents', () => {
  it('tells a subscriber when the stream ends without a final event (a cancelled or re-queued build), and not after unsubscribing', async () => {
    const ev = new BuildEvents(dir);
    ev.begin(1);
    let ended = 0;
    await ev.subscribe(1, () => {}, () => ended++);
    let ended2 = 0;
    const gone = await ev.subscribe(1, () => {}, () => ended2++);
    gone.unsubscribe();
    await ev.end(1);
    expect(ended).toBe(1);
    expect(ended2).toBe(0);
  });

  it('gives a subscriber the backlog, then live events, in order', async () => {
    const ev = new BuildEvents(dir);
    ev.begin(1);
    ev.publish(1, { type: 'job', job: 'unit', state: 'running' });
    ev.publish(1, log(1));
    const c = collector();
    const sub = await ev.subscribe(1, c.fn);
    expect(sub.live).toBe(true);
    ev.publish(1, log(2));
    ev.publish(1, FINISHED);
    await ev.end(1);
    ev.publish(1, log(3)); // after the end: dropped
    expect(c.seen).toEqual([{ type: 'job', job: 'unit', state: 'running' }, log(1), log(2), FINISHED]);
  });

  it('stops delivering after unsubscribe', async () => {
    const ev = new BuildEvents(dir);
    ev.begin(1);
    const c = collector();
    const sub = await ev.subscribe(1, c.fn);
    ev.publish(1, log(1));
    sub.unsubscribe();
    ev.publish(1, log(2));
    await ev.end(1);
    expect(c.seen).toEqual([log(1)]);
  });

  it('keeps builds apart', async () => {
    const ev = new BuildEvents(dir);
    ev.begin(1);
    ev.begin(2);
    const a = collector();
    await ev.subscribe(1, a.fn);
    ev.publish(2, log(2));
    ev.publish(1, log(1));
    await Promise.all([ev.end(1), ev.end(2)]);
    expect(a.seen).toEqual([log(1)]);
  });

  it('serves a late subscriber, after the end, from the file', async () => {
    const ev = new BuildEvents(dir);
    ev.begin(7);
    const all = [log(1), { type: 'job', job: 'unit', state: 'passed' } as const, log(2), FINISHED];
    for (const e of all) ev.publish(7, e);
    await ev.end(7);
    expect(ev.isLive(7)).toBe(false);
    const c = collector();
    const sub = await ev.subscribe(7, c.fn);
    expect(sub.live).toBe(false);
    expect(c.seen).toEqual(all);
    expect(readFileSync(join(ev.buildDir(7), 'events.jsonl'), 'utf8').trim().split('\n')).toHaveLength(all.length);
  });

  it('serves a subscriber that arrives while the end is being written, whole', async () => {
    const ev = new BuildEvents(dir);
    ev.begin(7);
    const all = Array.from({ length: 200 }, (_, i) => log(i));
    for (const e of all) ev.publish(7, e);
    const ending = ev.end(7); // not awaited: the file may not be flushed yet
    const c = collector();
    await ev.subscribe(7, c.fn);
    await ending;
    expect(c.seen).toEqual(all);
  });

  it('has nothing for a build that never began', async () => {
    const ev = new BuildEvents(dir);
    const c = collector();
    expect(await ev.subscribe(99, c.fn)).toMatchObject({ live: false });
    expect(c.seen).toEqual([]);
    ev.publish(99, log(1)); // no stream: ignored
    expect(ev.isLive(99)).toBe(false);
  });

  it('delivers everything, in order and once, when the backlog was trimmed', async () => {
    const ev = new BuildEvents(dir, 200); // a few log lines' worth
    ev.begin(3);
    ev.publish(3, { type: 'job', job: 'unit', state: 'running' });
    for (let i = 0; i < 50; i++) ev.publish(3, log(i));
    // Subscribed right after publishing: the file may still be behind the backlog.
    const c = collector();
    const subscribing = ev.subscribe(3, c.fn);
    for (let i = 50; i < 60; i++) ev.publish(3, log(i));
    const sub = await subscribing;
    expect(sub.live).toBe(true);
    for (let i = 60; i < 70; i++) ev.publish(3, log(i));
    ev.publish(3, FINISHED);
    await ev.end(3);
    const expected = [{ type: 'job', job: 'unit', state: 'running' }, ...Array.from({ length: 70 }, (_, i) => log(i)), FINISHED];
    expect(c.seen).toEqual(expected);
  });

  it('delivers everything to a trimmed-backlog subscriber whose build ends while it catches up', async () => {
    const ev = new BuildEvents(dir, 200);
    ev.begin(4);
    for (let i = 0; i < 30; i++) ev.publish(4, log(i));
    const c = collector();
    const subscribing = ev.subscribe(4, c.fn);
    ev.publish(4, FINISHED);
    const ending = ev.end(4);
    const sub = await subscribing;
    await ending;
    expect(sub.live).toBe(false);
    expect(c.seen).toEqual([...Array.from({ length: 30 }, (_, i) => log(i)), FINISHED]);
  });

  it('keeps memory bounded: log pieces are dropped from the backlog, other events kept', async () => {
    const ev = new BuildEvents(dir, 300);
    ev.begin(5);
    ev.publish(5, { type: 'job', job: 'unit', state: 'running' });
    for (let i = 0; i < 100; i++) ev.publish(5, log(i));
    await ev.end(5);
    // The file has them all regardless.
    const lines = readFileSync(join(ev.buildDir(5), 'events.jsonl'), 'utf8').trim().split('\n');
    expect(lines).toHaveLength(101);
  });

  it('begin() again starts the stream afresh (a re-run after recovery)', async () => {
    const ev = new BuildEvents(dir);
    ev.begin(8);
    ev.publish(8, log(1));
    await ev.end(8);
    ev.begin(8);
    ev.publish(8, log(2));
    await ev.end(8);
    const c = collector();
    await ev.subscribe(8, c.fn);
    expect(c.seen).toEqual([log(2)]);
  });

  it('skips a torn last line (a crash mid-write) instead of failing the subscriber', async () => {
    const ev = new BuildEvents(dir);
    ev.begin(9);
    ev.publish(9, log(1));
    await ev.end(9);
    const { appendFileSync } = await import('node:fs');
    appendFileSync(join(ev.buildDir(9), 'events.jsonl'), '{"type":"log","job":"un');
    const c = collector();
    await ev.subscribe(9, c.fn);
    expect(c.seen).toEqual([log(1)]);
  });
});
