/**
 * `npm run demo -- --once --security-team` as the security team runs it: the normal story, then the
 * embargo lane (on in this mode only) driven as a member drives it: a submitted patch built
 * privately, verified, copied with the team's login under a policy requiring the builder's
 * signature, refused to the consumers' login, and its unique string in no public output. It must
 * exit 0 and leave nothing behind (no service process, no demo root, no image of the project).
 */
import { describe, expect, it } from 'vitest';
import { DEMO_TIMEOUT_MS, expectNothingLeft, runDemo } from '../support/demo-run.js';

describe('npm run demo -- --once --security-team', () => {
  it("adds the security team's act, every step as it should, and leaves nothing behind", async () => {
    const { code, output, ms } = await runDemo(['--security-team']);
    expect(code, output).toBe(0);
    expect(output).not.toContain('✘');
    for (const line of [
      /embargo lane on: its key in the builder's store \(public half: \/\S+\/builder\/embargo-key\.pub\.asc\)/,
      /✔ skopeo copy docker:\/\/127\.0\.0\.1:5000\/demo\/greeter-[0-9a-f]{8}:[0-9a-f]{40}: signature accepted/,
      /▶ the security team's embargo lane/,
      /✔ airlock embargo submit --project demo\/greeter-[0-9a-f]{8} --patch fix\.patch: (emb-[0-9a-f]+)/,
      /✔ airlock embargo show emb-[0-9a-f]+: built privately on the published commit [0-9a-f]{10} — 127\.0\.0\.1:5001\/private\/demo\/greeter-[0-9a-f]{8}:[0-9a-f]{40}/,
      /✔ airlock embargo verify emb-[0-9a-f]+ --signing-key signing-key\.pub\.asc --lookaside DIR: signed by [0-9A-F]{16}/,
      /✔ skopeo copy docker:\/\/127\.0\.0\.1:5001\/private\/demo\/greeter-[0-9a-f]{8}:… with the team's login: signature accepted/,
      /✔ the consumers' login on 127\.0\.0\.1:5001: 401/,
      /✔ the patch's unique string is in no public output — the CI's log and data dir, the builder's log, the builder's public lookaside, the public registry's .*, the builder's page/,
      /demo: every step did what it should/,
    ]) {
      expect(output, output).toMatch(line);
    }
    console.log(`demo --once --security-team took ${(ms / 1000).toFixed(1)} s`);

    await expectNothingLeft(output);
  }, DEMO_TIMEOUT_MS + 30_000);
});
