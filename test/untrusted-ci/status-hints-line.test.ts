/**
 * The status page's hint line (untrusted-ci/status/page/render.js `hintsText`), a pure function of
 * the snapshot's `hints`: nothing when hints are off or nothing waits; the backlog; the failing
 * delivery with its reason (which names the builder's URL), as text.
 */
import { describe, expect, it } from 'vitest';
import type { StatusHints } from '../../untrusted-ci/api/schemas/status.js';

type HintsText = (hints: StatusHints | undefined, now: number) => { text: string; failing: boolean } | undefined;
// A browser module without type declarations: imported by a computed path, typed here.
const page: string = '../../untrusted-ci/status/page/render.js';
const { hintsText } = (await import(page)) as { hintsText: HintsText };

describe('the status page hint line', () => {
  it('is absent when hints are off or all delivered', () => {
    expect(hintsText(undefined, 0)).toBeUndefined();
    expect(hintsText({ pending: 0 }, 0)).toBeUndefined();
  });
  it('shows the backlog, and the failing delivery with its reason and age', () => {
    expect(hintsText({ pending: 1 }, 0)).toEqual({ text: '1 promotion hint waiting for the trusted builder', failing: false });
    const reason = 'http://builder:8090/v1/hints: HTTP 404: no hint endpoint there';
    expect(hintsText({ pending: 3, failing: { status: 404, reason, at: 10_000 } }, 75_000)).toEqual({
      text: `3 promotion hints waiting for the trusted builder · last delivery failed 1 min 5 s ago: ${reason}`,
      failing: true,
    });
  });
});
