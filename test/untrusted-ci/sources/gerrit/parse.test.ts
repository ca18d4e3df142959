/** The Gerrit event parser against real payloads (test/fixtures/gerrit, see its README) and hostile edits of them. */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { InvalidInputError, PayloadTooLargeError } from '#shared/errors.js';
import { Ignored, ProjectName, TriggerEvent, isSafeRefName, refUpdateKind, type RefUpdatedEvent } from '#shared/schemas/events/trigger.js';
import { MAX_GERRIT_EVENT_BYTES, maxDepth, parseGerritEvent, truncateUtf8 } from '../../../../untrusted-ci/sources/gerrit/parse.js';

type Json = Record<string, unknown>;
const FIXTURES = new URL('../../../fixtures/gerrit/', import.meta.url);
const raw = (name: string): Buffer => readFileSync(new URL(`${name}.json`, FIXTURES));
const fixture = (name: string): Json => JSON.parse(raw(name).toString()) as Json;
const parse = (o: unknown) => parseGerritEvent(Buffer.from(JSON.stringify(o)));
const EVENT_ID = expect.stringMatching(/^gerrit:[0-9a-f]{64}$/);

/** Set (or with `undefined`, delete) the value at a dotted path such as `patchSet.uploader.username`. */
function edit(o: Json, path: string, value: unknown): Json {
  const copy = structuredClone(o);
  const keys = path.split('.');
  let node = copy as Record<string, unknown>;
  for (const k of keys.slice(0, -1)) node = node[k] as Record<string, unknown>;
  const last = keys[keys.length - 1]!;
  if (value === undefined) delete node[last];
  else node[last] = value;
  return copy;
}

function invalidAt(body: unknown, path: string): InvalidInputError {
  let caught: unknown;
  try {
    const r = Buffer.isBuffer(body) ? parseGerritEvent(body) : parse(body);
    expect.fail(`expected InvalidInputError at ${path}, got ${JSON.stringify(r)}`);
  } catch (e) {
    caught = e;
  }
  expect(caught).toBeInstanceOf(InvalidInputError);
  const err = caught as InvalidInputError;
  expect(err.issues.map((i) => i.path)).toContain(path);
  return err;
}

describe('parseGerritEvent: fixtures', () => {
  it('patchset-created → patchset', () => {
    expect(parseGerritEvent(raw('patchset-created'))).toEqual({
      kind: 'patchset',
      source: 'gerrit',
      eventId: EVENT_ID,
      project: 'TestRepo1',
      branch: 'patch_create',
      change: '2',
      changeId: 'Ie10fd901201c53e9fe3b9766343060763ac81dc6',
      owner: 'admin',
      patchset: 1,
      ref: 'refs/changes/02/2/1',
      commit: 'b59138869113bfd9d3e7fbf9439d74e1ae6c54b8',
      author: 'admin',
      subject: 'test.file added',
      createdAt: 1700478731000,
      patchsetKind: 'REWORK',
    });
  });

  it('patchset-created in the Gerrit 2.x shape (numbers as strings, no username) → patchset', () => {
    expect(parseGerritEvent(raw('patchset-created-gerrit2'))).toEqual({
      kind: 'patchset',
      source: 'gerrit',
      eventId: EVENT_ID,
      project: 'tools/gerrit',
      branch: 'master',
      change: '56',
      changeId: 'Ia3ff6b65602e80209b9509a9ea50241f0791042d',
      owner: 'jdoe',
      patchset: 2,
      ref: 'refs/changes/56/56/2',
      commit: '0a96b652a4a7f840490b23dab1a6147b04e8865b',
      author: 'jane@example.com',
      subject: '9th',
      createdAt: 1365250060000,
    });
  });

  it('comment-added → approval, with string votes as numbers and the voter as author', () => {
    expect(parseGerritEvent(raw('comment-added'))).toEqual({
      kind: 'approval',
      source: 'gerrit',
      eventId: EVENT_ID,
      project: 'TestRepo',
      branch: 'test_branch',
      change: '1',
      changeId: 'I55862204ef71f69bc88c79fe2259f7cb8365699a',
      owner: 'admin',
      patchset: 2,
      ref: 'refs/changes/01/1/2',
      commit: 'ba8c3584916c93b3e17a1ab63072b0ebd0d3ed84',
      author: 'admin',
      approvals: [{ type: 'Code-Review', value: 2, oldValue: 1 }],
      comment: 'Patch Set 2: Code-Review+2',
    });
  });

  it('comment-added with Code-Review +2 and Verified +1', () => {
    const e = parseGerritEvent(raw('comment-added-verified'));
    expect(e).toMatchObject({
      kind: 'approval',
      approvals: [
        { type: 'Code-Review', value: 2 },
        { type: 'Verified', value: 1, oldValue: 0 },
      ],
      comment: 'Patch Set 2: Code-Review+2 Verified+1\n\nLooks good.',
    });
    expect(e.kind === 'approval' && e.approvals[0]).not.toHaveProperty('oldValue');
  });

  it('change-merged → change-merged with the merge result as commit', () => {
    expect(parseGerritEvent(raw('change-merged'))).toEqual({
      kind: 'change-merged',
      source: 'gerrit',
      eventId: EVENT_ID,
      project: 'TestRepo',
      branch: 'test_branch',
      change: '1',
      changeId: 'I55862204ef71f69bc88c79fe2259f7cb8365699a',
      owner: 'admin',
      patchset: 2,
      commit: '4c688da535ea3352536e3b320880aa353bd404b2',
    });
  });

  it('ref-updated (branch created) → ref-updated', () => {
    const e = parseGerritEvent(raw('ref-updated'));
    expect(e).toEqual({
      kind: 'ref-updated',
      source: 'gerrit',
      eventId: EVENT_ID,
      project: 'TestRepo',
      ref: 'refs/heads/test_branch',
      oldRev: '0000000000000000000000000000000000000000',
      newRev: '0c8c548ca93b44dd501c000ebb79ecc8f9aa4bd6',
    });
    expect(refUpdateKind(e as RefUpdatedEvent)).toBe('created');
  });

  it('ref-updated branch deletion → ref-updated with newRev all zeros', () => {
    const e = parseGerritEvent(raw('ref-updated-branch-deleted'));
    expect(e).toMatchObject({ kind: 'ref-updated', ref: 'refs/heads/test_branch', newRev: '0'.repeat(40) });
    expect(refUpdateKind(e as RefUpdatedEvent)).toBe('deleted');
    expect(refUpdateKind({ oldRev: 'a'.repeat(40), newRev: 'b'.repeat(40) })).toBe('updated');
  });

  it('change-abandoned → change-abandoned; change-restored, wip-state-changed and private-state-changed in their shapes', () => {
    const ab = fixture('change-abandoned');
    expect(parseGerritEvent(raw('change-abandoned'))).toEqual({
      kind: 'change-abandoned',
      source: 'gerrit',
      eventId: EVENT_ID,
      project: 'TestRepo',
      branch: 'test_branch',
      change: '21',
      changeId: 'Ifc7af9f849cbfb677ef6f1adcf05956292d4f571',
      owner: 'admin',
      patchset: 1,
      abandoned: true,
      author: 'admin',
    });
    const restored = { ...ab, type: 'change-restored', restorer: ab.abandoner, change: { ...(ab.change as Json), status: 'NEW' } };
    delete (restored as Json).abandoner;
    expect(parse(restored)).toMatchObject({ kind: 'change-abandoned', abandoned: false, author: 'admin' });
    const wip = { ...ab, type: 'wip-state-changed', changer: ab.abandoner, change: { ...(ab.change as Json), status: 'NEW', wip: true } };
    expect(parse(wip)).toMatchObject({ kind: 'change-state', wip: true, change: '21' });
    expect(parse({ ...wip, change: { ...(ab.change as Json), status: 'NEW' } })).toMatchObject({ kind: 'change-state', wip: false });
    const priv = { ...ab, type: 'private-state-changed', changer: ab.abandoner, change: { ...(ab.change as Json), status: 'NEW', private: true } };
    // A change that becomes private is told (so its builds stop), unlike its patch sets and comments.
    expect(parse(priv)).toMatchObject({ kind: 'change-state', private: true });
  });

  it('a patch set kind airlock does not know is left out (treated as a rework)', () => {
    expect(parse(edit(fixture('patchset-created'), 'patchSet.kind', 'TRIVIAL_REBASE_WITH_MESSAGE_UPDATE'))).not.toHaveProperty('patchsetKind');
    expect(parse(edit(fixture('patchset-created'), 'patchSet.kind', 'TRIVIAL_REBASE'))).toMatchObject({ patchsetKind: 'TRIVIAL_REBASE' });
  });

  it.each([
    ['ref-updated-change-meta', 'ref-updated', /change refs/],
    ['ref-updated-meta-config', 'ref-updated', /refs\/meta\/config/],
  ])('%s → ignored', (name, event, reason) => {
    const r = parseGerritEvent(raw(name));
    expect(r).toEqual({ kind: 'ignored', event, reason: expect.stringMatching(reason) });
    expect(Ignored.safeParse(r).success).toBe(true);
  });

  it('every result is exactly the published schema (no Gerrit fields leak through)', () => {
    for (const name of ['patchset-created', 'patchset-created-gerrit2', 'comment-added', 'comment-added-verified', 'change-merged', 'ref-updated', 'ref-updated-branch-deleted']) {
      const r = parseGerritEvent(raw(name));
      expect(TriggerEvent.safeParse(r).success, name).toBe(true);
    }
  });

  it('eventId is a hash of the body: a redelivery gets the same id, another event another', () => {
    const a = parseGerritEvent(raw('patchset-created'));
    const b = parseGerritEvent(raw('patchset-created'));
    const c = parse(edit(fixture('patchset-created'), 'eventCreatedOn', 1700478733));
    expect(a.kind !== 'ignored' && a.eventId).toBe(b.kind !== 'ignored' && b.eventId);
    expect(c.kind !== 'ignored' && c.eventId).not.toBe(a.kind !== 'ignored' && a.eventId);
  });
});

describe('parseGerritEvent: what is ignored and what is still checked', () => {
  const ps = fixture('patchset-created');
  const ca = fixture('comment-added');

  it.each([
    ['a change for refs/meta/config', edit(ps, 'change.branch', 'refs/meta/config'), /refs\/meta\/config/],
    ['a change for another non-branch ref', edit(ps, 'change.branch', 'refs/for/x'), /outside refs\/heads/],
    ['a private change', edit(ps, 'change.private', true), /private/],
    ['a draft patch set (Gerrit < 2.15)', edit(ps, 'patchSet.isDraft', true), /draft/],
    ['a draft change (Gerrit < 2.15)', edit(ps, 'change.status', 'DRAFT'), /draft/],
    ['a comment on an abandoned change', edit(ca, 'change.status', 'ABANDONED'), /abandoned/],
    ['a comment on a private change', edit(ca, 'change.private', true), /private/],
    ['an unknown event type', edit(ps, 'type', 'hashtags-changed'), /not one airlock acts on/],
    ['a Gerrit user ref update', edit(fixture('ref-updated'), 'refUpdate.refName', 'refs/users/00/1000000'), /internal/],
  ])('%s', (_, body, reason) => {
    expect(parse(body)).toMatchObject({ kind: 'ignored', reason: expect.stringMatching(reason) });
  });

  it('a work-in-progress change is still checked, marked wip', () => {
    expect(parse(edit(ps, 'change.wip', true))).toMatchObject({ kind: 'patchset', wip: true });
    expect(parseGerritEvent(raw('patchset-created'))).not.toHaveProperty('wip');
  });

  it('a branch given as refs/heads/x is shortened like Gerrit does', () => {
    expect(parse(edit(ps, 'change.branch', 'refs/heads/release/1.0'))).toMatchObject({ branch: 'release/1.0' });
  });

  it('ref-updated: short names (old Gerrit) become refs/heads/…; tags are kept', () => {
    const ru = fixture('ref-updated');
    expect(parse(edit(ru, 'refUpdate.refName', 'master'))).toMatchObject({ kind: 'ref-updated', ref: 'refs/heads/master' });
    expect(parse(edit(ru, 'refUpdate.refName', 'refs/tags/v1.0'))).toMatchObject({ kind: 'ref-updated', ref: 'refs/tags/v1.0' });
  });

  it('author: username, else email, else name', () => {
    const noUser = edit(ps, 'uploader', { name: 'Ada', email: 'ada@example.com' });
    expect(parse(noUser)).toMatchObject({ author: 'ada@example.com' });
    expect(parse(edit(ps, 'uploader', { name: 'Ada', email: '' }))).toMatchObject({ author: 'Ada' });
    // Without the event's uploader, the patch set's uploader counts.
    expect(parse(edit(ps, 'uploader', undefined))).toMatchObject({ author: 'admin' });
    expect(parse(edit(ca, 'author', { username: 'rev' }))).toMatchObject({ author: 'rev' });
  });

  it('a comment without votes has no approvals', () => {
    expect(parse(edit(ca, 'approvals', undefined))).toMatchObject({ kind: 'approval', approvals: [] });
  });

  it('the comment is cut to 4 KiB and the subject to 1 KiB of UTF-8, on a character boundary', () => {
    const long = 'é'.repeat(5000); // 10000 bytes
    const c = parse(edit(ca, 'comment', long));
    expect(c.kind === 'approval' && Buffer.byteLength(c.comment ?? '')).toBe(4096);
    expect(c.kind === 'approval' && long.startsWith(c.comment ?? 'x')).toBe(true);
    const s = parse(edit(ps, 'change.subject', `a${long}`));
    expect(s.kind === 'patchset' && Buffer.byteLength(s.subject ?? '')).toBe(1023);
    expect(truncateUtf8('a😀b', 4)).toBe('a');
    expect(truncateUtf8('a😀b', 5)).toBe('a😀');
  });
});

describe('parseGerritEvent: malformed input is an InvalidInputError naming the path', () => {
  const ps = fixture('patchset-created');
  const ca = fixture('comment-added');
  const cm = fixture('change-merged');
  const ru = fixture('ref-updated');

  it.each([
    ['patchset-created', ps, 'patchSet.number'],
    ['patchset-created', ps, 'patchSet.ref'],
    ['patchset-created', ps, 'patchSet'],
    ['patchset-created', ps, 'change'],
    ['patchset-created', ps, 'change.project'],
    ['patchset-created', ps, 'change.branch'],
    ['patchset-created', ps, 'change.number'],
    ['comment-added', ca, 'author'],
    ['comment-added', ca, 'patchSet.number'],
    ['change-merged', cm, 'patchSet'],
    ['change-merged', cm, 'change.number'],
    ['ref-updated', ru, 'refUpdate'],
    ['ref-updated', ru, 'refUpdate.newRev'],
    ['ref-updated', ru, 'refUpdate.oldRev'],
    ['ref-updated', ru, 'refUpdate.refName'],
    ['ref-updated', ru, 'refUpdate.project'],
    ['patchset-created', ps, 'type'],
  ])('%s without %s', (_, body, path) => {
    const err = invalidAt(edit(body, path, undefined), path);
    expect(err.code).toBe('AIRLOCK_E_INVALID_INPUT');
  });

  it('no uploader anywhere, or one with no name at all', () => {
    const none = edit(edit(ps, 'uploader', undefined), 'patchSet.uploader', undefined);
    invalidAt(none, 'uploader');
    invalidAt(edit(ps, 'uploader', { name: '', email: '', username: '' }), 'uploader');
    invalidAt(edit(ca, 'author', {}), 'author');
  });

  it.each([
    ['patchSet.number', 0],
    ['patchSet.number', -1],
    ['patchSet.number', 1.5],
    ['patchSet.number', 'two'],
    ['patchSet.number', null],
    ['patchSet.revision', 'B59138869113BFD9D3E7FBF9439D74E1AE6C54B8'],
    ['patchSet.revision', 'b5913886'],
    ['patchSet.ref', 'refs/heads/main'],
    ['patchSet.ref', 'refs/changes/02/3/1'], // not change 2
    ['patchSet.ref', 'refs/changes/02/2/7'], // not patch set 1
    ['patchSet.ref', 'refs/changes/12/2/1'], // wrong shard
    ['change.id', 'not-a-change-id'],
    ['change.private', 'yes'],
    ['change', 'a string'],
    ['eventCreatedOn', 'yesterday'],
  ])('%s = %j', (path, value) => {
    invalidAt(edit(ps, path, value), path);
  });

  it.each([['approvals.0.value' as const, 'lots'], ['approvals.0.type' as const, 'Code Review!'], ['approvals.0.value' as const, '99999']])('%s = %j', (path, value) => {
    invalidAt(edit(ca, path, value), path.replace('.0.', '[0].'));
  });

  it.each(['../x', 'a/../b', 'a/./b', 'a//b', '/abs', 'a/', '.hidden', '-rf', 'a b', 'a\nb', 'x'.repeat(201), ''])('project %j', (project) => {
    invalidAt(edit(ps, 'change.project', project), 'change.project');
    invalidAt(edit(ru, 'refUpdate.project', project), 'refUpdate.project');
  });

  it.each(['a..b', 'a b', 'x.lock', 'a/', '/a', 'a//b', '-rf', 'a@{1}', 'a\\b', 'a~1', 'a^', 'a:b', 'a?', 'a*', 'a[', '.a', 'a/.b', 'a.', '@', 'a\u0001', 'a\u007f', ''])('branch %j', (branch) => {
    invalidAt(edit(ps, 'change.branch', branch), 'change.branch');
    invalidAt(edit(ru, 'refUpdate.refName', branch), 'refUpdate.refName');
  });

  it.each([
    ['not JSON', Buffer.from('{"type":')],
    ['not UTF-8', Buffer.from([0x7b, 0xff, 0xfe, 0x7d])],
    ['an array', Buffer.from('[]')],
    ['null', Buffer.from('null')],
    ['a string', Buffer.from('"patchset-created"')],
    ['empty', Buffer.alloc(0)],
  ])('a body that is %s', (_, body) => {
    invalidAt(body, '');
  });

  it('the JSON error does not quote the body', () => {
    const err = invalidAt(Buffer.from('{"type": SECRET-LOOKING-TOKEN}'), '');
    expect(err.message).not.toContain('SECRET');
  });

  it('a type that is not a plain name', () => {
    invalidAt(edit(ps, 'type', 'x'.repeat(101)), 'type');
    invalidAt(edit(ps, 'type', 'patchset created\n'), 'type');
    invalidAt(edit(ps, 'type', 42), 'type');
  });

  it('deep nesting is refused before JSON.parse; normal nesting in extra fields is fine', () => {
    const deep = (n: number) => `${'['.repeat(n)}${']'.repeat(n)}`;
    invalidAt(Buffer.from(`{"type":"patchset-created","x":${deep(100_000)}}`), '');
    expect(parseGerritEvent(Buffer.from(JSON.stringify(ps).replace(/}$/, `,"x":${deep(30)}}`)))).toMatchObject({ kind: 'patchset' });
    expect(maxDepth('{"a":"[[[{{{","b":[{}]}')).toBe(3);
    expect(maxDepth('["\\"[["]')).toBe(1);
  });
});

describe('parseGerritEvent: size cap', () => {
  it('refuses a body over 1 MiB with PayloadTooLargeError, accepts one of exactly 1 MiB', () => {
    const body = JSON.stringify(fixture('patchset-created'));
    const at = (n: number) => Buffer.from(body + ' '.repeat(n - Buffer.byteLength(body)));
    expect(() => parseGerritEvent(at(MAX_GERRIT_EVENT_BYTES + 1))).toThrow(PayloadTooLargeError);
    expect(parseGerritEvent(at(MAX_GERRIT_EVENT_BYTES))).toMatchObject({ kind: 'patchset' });
  });
});

describe('name rules', () => {
  it.each(['main', 'master', 'feature/x-1', 'refs/heads/main', 'release-1.0', 'v1.0_rc', 'ünïcode', 'a.b', 'refs/changes/02/2/1'])('isSafeRefName(%j)', (n) => {
    expect(isSafeRefName(n)).toBe(true);
  });
  it('rejects a 256-character ref name', () => {
    expect(isSafeRefName('a'.repeat(255))).toBe(true);
    expect(isSafeRefName('a'.repeat(256))).toBe(false);
  });
  it.each(['tools/gerrit', 'a', 'A.b_c-d/e.git', 'x'.repeat(200)])('ProjectName %j', (p) => {
    expect(ProjectName.safeParse(p).success).toBe(true);
  });
});
