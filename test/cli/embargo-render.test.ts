/**
 * `airlock embargo list` / `show` as text: digests and commits in full (a team member compares them
 * with what skopeo and the provenance say), a blocked embargo shown as blocked (another patch of its
 * set does not apply) and not as broken, and `show` listing the private image and its artifacts.
 */
import { describe, expect, it } from 'vitest';
import { formatEmbargoResult, stateOf } from '../../cli/embargo-render.js';
import type { EmbargoDetail, EmbargoSummary } from '../../trusted-builder/embargo/wire.js';

const COMMIT = 'a'.repeat(40);
const LATER = 'b'.repeat(40);
const IMAGE_DIGEST = `sha256:${'c'.repeat(64)}`;
const base: EmbargoSummary = { id: 'emb-0123456789abcdef', project: 'demo/app', digest: `sha256:${'d'.repeat(64)}`, state: 'active', submittedBy: 'alice', submittedAt: '2026-01-01T00:00:00.000Z' };
const built = { at: '2026-01-01T00:01:00.000Z', commit: COMMIT, reference: `127.0.0.1:5001/private/demo/app:${COMMIT}`, digest: IMAGE_DIGEST };

describe('embargo list and show as text', () => {
  it('prints commits and image digests in full', () => {
    const out = formatEmbargoResult({ action: 'list', embargoes: [{ ...base, lastBuild: built }] });
    expect(out).toContain(`built on ${COMMIT} as ${built.reference}@${IMAGE_DIGEST}`);
  });

  it('tells blocked from broken, and a later build from both', () => {
    const blocked = { ...base, lastBuild: built, lastBreak: { at: '2026-01-01T00:02:00.000Z', commit: LATER, step: 'blocked' as const, reason: 'blocked: emb-1111111111111111 does not apply' } };
    const broken = { ...blocked, id: 'emb-1111111111111111', lastBreak: { ...blocked.lastBreak, step: 'apply' as const, reason: 'apply: does not apply' } };
    const legacy = { ...blocked, id: 'emb-2222222222222222', lastBreak: { at: blocked.lastBreak.at, commit: LATER, reason: 'blocked: emb-1111111111111111 does not apply' } };
    const fixed = { ...broken, id: 'emb-3333333333333333', lastBuild: { ...built, at: '2026-01-01T00:03:00.000Z' } };
    expect([blocked, broken, legacy, fixed, { ...base, state: 'retired' as const }].map(stateOf)).toEqual(['blocked', 'broken', 'blocked', 'active', 'retired']);
    const rows = formatEmbargoResult({ action: 'list', embargoes: [blocked, broken] }).split('\n');
    expect(rows[1]).toMatch(new RegExp(`^emb-0123456789abcdef +blocked +demo/app .* BLOCKED at ${LATER} \\(.*\\): blocked: emb-1111111111111111 does not apply$`));
    expect(rows[2]).toMatch(new RegExp(`^emb-1111111111111111 +broken +demo/app .* BROKEN at ${LATER} `));
  });

  it('show lists the private image and its artifacts with full digests', () => {
    const detail: EmbargoDetail = {
      ...base,
      lastBuild: built,
      patch: 'diff --git a/x b/x\n',
      breaks: [],
      logBytes: 10,
      artifacts: ['image.signature', 'provenance.json', 'provenance.json.asc'].map((name) => ({ name, size: 3, sha256: 'e'.repeat(64), at: built.at })),
    };
    const out = formatEmbargoResult({ action: 'show', embargo: detail });
    expect(out).toContain(`image:      ${built.reference}@${IMAGE_DIGEST} (public commit ${COMMIT}; check it with airlock embargo verify ${base.id})`);
    for (const name of ['image.signature', 'provenance.json', 'provenance.json.asc']) expect(out).toContain(`artifact:   ${name} (3 bytes, sha256:${'e'.repeat(64)}, ${built.at})`);
    expect(formatEmbargoResult({ action: 'show', embargo: { ...detail, lastBuild: undefined, artifacts: [] } as EmbargoDetail })).toContain('artifact:   none yet');
  });
});
