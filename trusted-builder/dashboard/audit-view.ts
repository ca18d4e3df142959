/**
 * What of an audit record the builder's page may show. Its viewers operate the builder (SRE) but
 * need not be on the security team, so the page is stricter than the audit file itself:
 *
 * - Nothing of the embargo lane. Left out: every `embargo` record; every record any of whose
 *   strings names a `private/` repository or the private lookaside (`PRIVATE_MARK`; a public
 *   project whose name has a `private` segment is hidden too: failing closed); the `secret-read`s
 *   of the embargo key's path and of the lane's registry login; and (in audit-digest.ts, which has the history) a `secret-read` for
 *   a commit after that commit was signed, which only the private lane does. The page shows no
 *   count or sequence number of records either, so what was left out leaves no gap.
 * - No secret value. The log holds none (audit-log.ts refuses secret-like field names), and still
 *   only the fields listed per kind in `SHOWN_FIELDS` are shown, as text; any other field is left
 *   out without a trace (the audit file has it for those who may read it). The table is total over
 *   `AuditKind`: a new kind does not compile until someone decides what of it the page shows.
 */
import type { AuditKind, AuditRecord, JsonValue } from '../audit/audit-log.js';

/** Per kind, the fields shown and in that order; `never`: the kind is not shown at all. */
export const SHOWN_FIELDS: Readonly<Record<AuditKind, readonly string[] | 'never'>> = {
  'hint-accepted': ['source', 'project', 'branch', 'commit', 'ciRun', 'queued', 'note', 'retryOf'],
  'hint-refused': ['reason', 'from', 'suppressedBefore'],
  'verify-passed': ['project', 'commit', 'branch', 'hintBranch', 'policy', 'review'],
  'verify-refused': ['project', 'commit', 'step', 'state', 'reason'],
  'dependencies-verified': ['project', 'commit', 'lockfiles', 'npm', 'debian', 'indexes'],
  'secret-read': ['path', 'store', 'purpose', 'project', 'commit'],
  'tests-passed': ['project', 'commit', 'jobs'],
  'tests-failed': ['project', 'commit', 'jobs'],
  'leak-check': ['project', 'commit', 'searched', 'leaks', 'where'],
  'image-built': ['project', 'commit', 'image', 'bases'],
  pushed: ['project', 'commit', 'reference', 'digest', 'attempts'],
  signed: ['project', 'commit', 'digest', 'key', 'signature', 'provenance'],
  'promotion-failed': ['project', 'commit', 'step', 'state', 'reason'],
  embargo: 'never',
};

/** A `private/` repository (`127.0.0.1:5000/private/team/app`, `private/team/app`) or the private lookaside. */
const PRIVATE_MARK = /(^|[^A-Za-z0-9_])private(\/|-lookaside)/;
/** One value shown at most this long (a reason can quote a whole git error). */
const MAX_VALUE_CHARS = 2000;

/** Whether any string in `value`, at any depth (keys too), names the private namespace. */
export function namesPrivate(value: JsonValue): boolean {
  if (typeof value === 'string') return PRIVATE_MARK.test(value);
  if (value === null || typeof value !== 'object') return false;
  if (Array.isArray(value)) return value.some(namesPrivate);
  return Object.entries(value).some(([k, v]) => PRIVATE_MARK.test(k) || namesPrivate(v));
}

/**
 * Whether the page may show `record` at all, by the rules that need no history: its kind, the
 * private namespace, the embargo lane's secret paths (`hiddenSecretPaths`: its key, its registry login).
 */
export function mayShow(record: AuditRecord, hiddenSecretPaths: ReadonlySet<string>): boolean {
  if (SHOWN_FIELDS[record.kind] === 'never') return false;
  if (record.kind === 'secret-read' && typeof record.path === 'string' && hiddenSecretPaths.has(record.path)) return false;
  if (record.kind === 'secret-read' && record.lane === 'private') return false; // the embargo lane's
  return !namesPrivate(record as unknown as JsonValue);
}

/** A field's value as one line of text: lists joined with commas, objects as JSON; capped. */
export function valueText(value: JsonValue): string {
  const text = typeof value === 'string' ? value : Array.isArray(value) ? value.map(valueText).join(', ') : JSON.stringify(value);
  return text.length > MAX_VALUE_CHARS ? `${text.slice(0, MAX_VALUE_CHARS)}…` : text;
}

/** The whitelisted fields `record` has, in the whitelist's order, as text. */
export function shownFields(record: AuditRecord): { name: string; value: string }[] {
  const names = SHOWN_FIELDS[record.kind];
  if (names === 'never') return [];
  return names.flatMap((name) => (Object.hasOwn(record, name) && record[name] !== undefined ? [{ name, value: valueText(record[name]!) }] : []));
}

/** A string field of `record`, if it has one. */
export function stringField(record: AuditRecord, name: string): string | undefined {
  const v = record[name];
  return typeof v === 'string' ? v : undefined;
}
