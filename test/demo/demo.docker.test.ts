/**
 * `npm run demo -- --once` as a user runs it (minus the bootstrap, which `npm test` has run): a
 * real child process that starts code review (the Gerrit stand-in) and both services as its own
 * children, on real Docker, git, the bootstrap's registry and skopeo. It must exit 0, tell the whole story, and leave nothing behind:
 * no service process, no demo root, no image of the demo project.
 */
import { describe, expect, it } from 'vitest';
import { DEMO_TIMEOUT_MS, expectNothingLeft, runDemo } from '../support/demo-run.js';

describe('npm run demo -- --once', () => {
  it('tells the two-tier story, every step as it should, and leaves nothing behind', async () => {
    const { code, output, ms } = await runDemo([]);
    expect(code, output).toBe(0);
    expect(output).not.toContain('✘');
    for (const line of [
      /✔ trusted builder: pid \d+, http:\/\/127\.0\.0\.1:\d+/,
      /✔ untrusted CI: pid \d+, http:\/\/127\.0\.0\.1:\d+/,
      /✔ check of change 1 .*: passed/,
      /✔ check of change 2 .*: passed/,
      /✔ gate verdict on change 1: SUCCESS/,
      /✔ gate verdict on change 2: FAILURE/,
      /✔ gate verdict on change 3: SUCCESS/,
      /✔ code review: http:\/\/127\.0\.0\.1:\d+ — a stand-in for Gerrit/,
      /✔ code review shows the CI's votes: Verified \+1, \+1, \+1/,
      /✔ merged in order: change 1, change 3/,
      /✔ code review merged changes 1 and 3 \(submitted by airlock-ci after its Verified \+2\); change 2 stays open with Verified -2/,
      /✔ master holds changes 1 and 3, never 2, and its tree is exactly the one the gate tested/,
      /✔ each signed provenance names the reviewed changes, their owners, approvers and submitter — change 1 by ada: Code-Review \+2 grace/,
      /✔ the builder refuses it: no review — .*is not the result of a reviewed change/,
      /✔ a hint for an older commit .* is refused — .*does not descend from/,
      /✔ nothing of either was signed or pushed/,
      /✔ the CI's hint sender told the builder of each merge \(2 signed hints accepted\)/,
      /✔ commit [0-9a-f]{10} promoted/,
      /✔ skopeo copy docker:\/\/127\.0\.0\.1:5000\/demo\/greeter-[0-9a-f]{8}:[0-9a-f]{40}: signature accepted/,
      /✔ an unsigned image in the same registry .* is refused — .*signature/,
      /✔ the consumers' login reads no embargoed image: 127\.0\.0\.1:5001 refuses it, 127\.0\.0\.1:5000 holds no private\//,
      /digest {5}sha256:[0-9a-f]{64}/,
      /signature {2}\/.*\/signature-1/,
      /CI \(untrusted\) +http:\/\/127\.0\.0\.1:\d+\//,
      /✔ the builder's page lists the promotions and their digests, and only behind its login/,
      /builder \(trusted\) +http:\/\/127\.0\.0\.1:\d+\/ui \(its page; user airlock-demo-sre, password \S+\)/,
      /demo: every step did what it should/,
    ]) {
      expect(output, output).toMatch(line);
    }
    console.log(`demo --once took ${(ms / 1000).toFixed(1)} s`);

    await expectNothingLeft(output);
  }, DEMO_TIMEOUT_MS + 30_000);
});
