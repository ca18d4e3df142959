/**
 * The pure half of the Gerrit webhook (docs/conventions.md "Webhooks", after Woodpecker's parseHookPayload): raw body
 * bytes in, a validated `TriggerEvent` or a typed `Ignored` out. The fastify route checks the
 * signature over the same bytes first (verify.ts) and answers an `Ignored` with 202.
 *
 * What is acted on:
 * - patchset-created → `patchset` (`author` = the uploader);
 * - comment-added → `approval` (`author` = whoever commented; `comment` cut to 4 KiB);
 * - change-merged → `change-merged` (`commit` = Gerrit's `newRev`, the branch tip after the merge);
 * - change-abandoned, change-restored → `change-abandoned` (`abandoned` true or false);
 * - wip-state-changed, private-state-changed → `change-state` with the new `wip` or `private` flag;
 * - patchset-created carries the patch set's kind (`patchsetKind`: a trivial rebase keeps votes);
 * - ref-updated on refs/heads/* or refs/tags/* → `ref-updated`, deletions included
 *   (`newRev` all zeros: see `refUpdateKind`), so the scheduler can drop a deleted branch's queue.
 *
 * What is ignored, with a reason: event types not listed above; patch sets and comments of
 * changes that are private or drafts (their content must not reach the public CI tier or its
 * logs; a change that *becomes* private is still told, so its builds stop); patch sets or
 * comments on a change that is already merged or abandoned; changes whose destination is not a branch
 * (refs/meta/config holds Gerrit's project configuration, not code); ref-updated on Gerrit's own
 * refs (refs/changes/* is reported by the change events; refs/meta/*, refs/users/* … are internal).
 * Work-in-progress changes are still checked (authors want early results; Gerrit refuses to
 * submit them anyway); the event says `wip: true`.
 *
 * Throws only `PayloadTooLargeError` (body over 1 MiB) and `InvalidInputError` (not UTF-8, not
 * JSON, nested deeper than 32, or a field airlock reads is missing or malformed; each issue names
 * its path, e.g. `patchSet.number`).
 */
import { createHash } from 'node:crypto';
import { InvalidInputError, PayloadTooLargeError } from '#shared/errors.js';
import {
  GERRIT_EVENT_SCHEMAS,
  GerritEventEnvelope,
  type GerritAccount,
  type GerritChange,
  type GerritEventType,
  type GerritPatchSet,
} from '../../schemas/events/gerrit.js';
import { parseOrThrow } from '#shared/schemas/issues.js';
import { Ignored, MAX_COMMENT_BYTES, MAX_SUBJECT_BYTES, TriggerEvent } from '#shared/schemas/events/trigger.js';

/** Largest body accepted. Real events are a few KiB; a long commit message stays far below. */
export const MAX_GERRIT_EVENT_BYTES = 1024 * 1024; // 1 MiB
/** Deepest JSON nesting accepted. Gerrit's events nest 4 levels (event.patchSet.approvals[].by). */
export const MAX_GERRIT_EVENT_DEPTH = 32;

const FILE = 'gerrit-event';

export function parseGerritEvent(raw: Buffer): TriggerEvent | Ignored {
  if (raw.length > MAX_GERRIT_EVENT_BYTES) {
    throw new PayloadTooLargeError(`Gerrit event is ${raw.length} bytes; at most ${MAX_GERRIT_EVENT_BYTES} are accepted`);
  }
  const json = decodeJson(raw);
  const { type } = parseOrThrow(GerritEventEnvelope, json, FILE);
  if (!isHandled(type)) return ignored(type, 'event type is not one airlock acts on');

  const file = `gerrit:${type}`;
  const eventId = `gerrit:${createHash('sha256').update(raw).digest('hex')}`;
  let result: TriggerEvent;
  switch (type) {
    case 'patchset-created': {
      const e = parseOrThrow(GERRIT_EVENT_SCHEMAS[type], json, file);
      const skip = skipChange(e.change, e.patchSet, file) ?? skipClosed(e.change);
      if (skip) return ignored(type, skip);
      result = {
        kind: 'patchset',
        ...changeFields(e.change, e.patchSet, eventId),
        ref: e.patchSet.ref,
        commit: e.patchSet.revision,
        author: authorName(e.uploader ?? e.patchSet.uploader, 'uploader', file),
        subject: e.change.subject === undefined ? undefined : truncateUtf8(e.change.subject, MAX_SUBJECT_BYTES),
        createdAt: secondsToMs(e.patchSet.createdOn ?? e.eventCreatedOn),
        wip: e.change.wip === true ? true : undefined,
        patchsetKind: patchsetKind(e.patchSet.kind),
      };
      break;
    }
    case 'comment-added': {
      const e = parseOrThrow(GERRIT_EVENT_SCHEMAS[type], json, file);
      const skip = skipChange(e.change, e.patchSet, file) ?? skipClosed(e.change);
      if (skip) return ignored(type, skip);
      result = {
        kind: 'approval',
        ...changeFields(e.change, e.patchSet, eventId),
        ref: e.patchSet.ref,
        commit: e.patchSet.revision,
        author: authorName(e.author, 'author', file),
        approvals: (e.approvals ?? []).map((a) => (a.oldValue === undefined ? { type: a.type, value: a.value } : { type: a.type, value: a.value, oldValue: a.oldValue })),
        comment: e.comment === undefined ? undefined : truncateUtf8(e.comment, MAX_COMMENT_BYTES),
      };
      break;
    }
    case 'change-merged': {
      const e = parseOrThrow(GERRIT_EVENT_SCHEMAS[type], json, file);
      const skip = skipChange({ ...e.change, private: false }, e.patchSet, file);
      if (skip) return ignored(type, skip);
      result = { kind: 'change-merged', ...changeFields(e.change, e.patchSet, eventId), commit: e.newRev };
      break;
    }
    case 'change-abandoned':
    case 'change-restored': {
      const e = parseOrThrow(GERRIT_EVENT_SCHEMAS[type], json, file);
      // No content travels with these: a private change's abandonment is told like any other.
      const skip = skipChange({ ...e.change, private: false }, e.patchSet, file);
      if (skip) return ignored(type, skip);
      const who = e.type === 'change-abandoned' ? e.abandoner : e.restorer;
      result = { kind: 'change-abandoned', ...changeFields(e.change, e.patchSet, eventId), abandoned: type === 'change-abandoned', author: optionalName(who) };
      break;
    }
    case 'wip-state-changed':
    case 'private-state-changed': {
      const e = parseOrThrow(GERRIT_EVENT_SCHEMAS[type], json, file);
      const skip = skipChange({ ...e.change, private: false }, e.patchSet, file);
      if (skip) return ignored(type, skip);
      result =
        type === 'wip-state-changed'
          ? { kind: 'change-state', ...changeFields(e.change, e.patchSet, eventId), wip: e.change.wip === true, author: optionalName(e.changer) }
          : { kind: 'change-state', ...changeFields(e.change, e.patchSet, eventId), private: e.change.private === true, author: optionalName(e.changer) };
      break;
    }
    case 'ref-updated': {
      const { refUpdate } = parseOrThrow(GERRIT_EVENT_SCHEMAS[type], json, file);
      // Old Gerrit versions sent short branch names here ("main" for refs/heads/main).
      const ref = refUpdate.refName.startsWith('refs/') ? refUpdate.refName : `refs/heads/${refUpdate.refName}`;
      const skip = skipRef(ref);
      if (skip) return ignored(type, skip);
      result = { kind: 'ref-updated', source: 'gerrit', eventId, project: refUpdate.project, ref, oldRev: refUpdate.oldRev, newRev: refUpdate.newRev };
      break;
    }
  }
  // Belt and braces: what leaves the edge is exactly the published schema, with no extra keys.
  return parseOrThrow(TriggerEvent, dropUndefined(result), file);
}

function isHandled(type: string): type is GerritEventType {
  return Object.hasOwn(GERRIT_EVENT_SCHEMAS, type);
}

function ignored(event: string, reason: string): Ignored {
  return parseOrThrow(Ignored, { kind: 'ignored', event, reason }, FILE);
}

/** Strict UTF-8, nesting depth checked before JSON.parse builds anything. */
function decodeJson(raw: Buffer): unknown {
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(raw);
  } catch {
    throw invalid('', 'body is not valid UTF-8');
  }
  const depth = maxDepth(text);
  if (depth > MAX_GERRIT_EVENT_DEPTH) throw invalid('', `JSON nests deeper than ${MAX_GERRIT_EVENT_DEPTH} levels`);
  try {
    return JSON.parse(text) as unknown;
  } catch {
    // JSON.parse's message quotes the input; keep the attacker's bytes out of our logs.
    throw invalid('', 'body is not valid JSON');
  }
}

/** The deepest `{`/`[` nesting in `text`, ignoring brackets inside strings. Linear, no recursion. */
export function maxDepth(text: string): number {
  let depth = 0;
  let max = 0;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (inString) {
      if (c === 0x5c /* \ */) i++;
      else if (c === 0x22 /* " */) inString = false;
    } else if (c === 0x22) inString = true;
    else if (c === 0x7b /* { */ || c === 0x5b /* [ */) max = Math.max(max, ++depth);
    else if (c === 0x7d /* } */ || c === 0x5d /* ] */) depth--;
  }
  return max;
}

function invalid(path: string, message: string, file = FILE): InvalidInputError {
  return new InvalidInputError([{ file, path, message, severity: 'error' }]);
}

/**
 * Why a change event is not acted on, or undefined. Throws when the patch set's ref does not
 * name this change and patch set: the ref is what gets fetched, so it must not point elsewhere.
 */
function skipChange(change: GerritChange, ps: GerritPatchSet, file: string): string | undefined {
  const m = /^refs\/changes\/([0-9]{2})\/([0-9]+)\/([0-9]+)$/.exec(ps.ref);
  const n = String(change.number);
  if (!m || m[2] !== n || m[1] !== n.padStart(2, '0').slice(-2) || Number(m[3]) !== ps.number) {
    throw invalid('patchSet.ref', `${ps.ref} is not the ref of change ${n} patch set ${ps.number}`, file);
  }
  if (change.branch.startsWith('refs/') && !change.branch.startsWith('refs/heads/')) {
    return change.branch === 'refs/meta/config'
      ? 'change targets refs/meta/config (Gerrit project configuration, not code)'
      : 'change targets a ref outside refs/heads/';
  }
  if (change.private === true) return 'change is private: its content must not reach the public CI';
  if (ps.isDraft === true || change.status === 'DRAFT') return 'patch set is a draft: its content must not reach the public CI';
  return undefined;
}

function skipClosed(change: GerritChange): string | undefined {
  if (change.status === 'MERGED' || change.status === 'ABANDONED') return `change is already ${change.status.toLowerCase()}`;
  return undefined;
}

function skipRef(ref: string): string | undefined {
  if (ref.startsWith('refs/heads/') || ref.startsWith('refs/tags/')) return undefined;
  if (ref === 'refs/meta/config') return 'refs/meta/config is Gerrit project configuration, not code';
  if (ref.startsWith('refs/changes/')) return 'change refs are reported by patchset-created and comment-added';
  return 'Gerrit-internal ref';
}

function changeFields(change: GerritChange, ps: GerritPatchSet, eventId: string) {
  const owner = optionalName(change.owner);
  return {
    ...(owner ? { owner } : {}),
    source: 'gerrit' as const,
    eventId,
    project: change.project,
    branch: change.branch.startsWith('refs/heads/') ? change.branch.slice('refs/heads/'.length) : change.branch,
    change: String(change.number),
    changeId: change.id,
    patchset: ps.number,
  };
}

/** username, else e-mail, else full name: the most stable account identifier Gerrit sent. */
function authorName(account: GerritAccount | undefined, path: string, file: string): string {
  const name = account?.username || account?.email || account?.name;
  if (!name) throw invalid(path, 'needs a username, email or name', file);
  return name;
}

function optionalName(account: GerritAccount | undefined): string | undefined {
  const name = account?.username || account?.email || account?.name;
  return name ? truncateUtf8(name, 256) : undefined;
}

const KINDS = ['REWORK', 'TRIVIAL_REBASE', 'MERGE_FIRST_PARENT_UPDATE', 'NO_CODE_CHANGE', 'NO_CHANGE'] as const;
/** Gerrit's change kind, or undefined for one this version of airlock does not know (treated as a rework). */
function patchsetKind(kind: string | undefined): (typeof KINDS)[number] | undefined {
  return KINDS.find((k) => k === kind);
}

function secondsToMs(s: number | undefined): number | undefined {
  return s === undefined ? undefined : s * 1000;
}

/** At most `max` bytes of UTF-8, cut at a code point boundary. */
export function truncateUtf8(s: string, max: number): string {
  if (Buffer.byteLength(s) <= max) return s;
  let out = '';
  let n = 0;
  for (const ch of s) {
    n += Buffer.byteLength(ch);
    if (n > max) break;
    out += ch;
  }
  return out;
}

function dropUndefined<T extends object>(o: T): T {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as T;
}
