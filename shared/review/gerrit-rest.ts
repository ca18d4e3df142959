/**
 * Gerrit's REST API, as both tiers speak it: the wire shapes airlock reads (ChangeInfo,
 * RevisionInfo, LabelInfo, ApprovalInfo, AccountInfo, BranchInfo) and one small HTTP client.
 * The untrusted CI uses it with its own account to vote, comment, submit and re-read changes; the
 * trusted builder uses it with a read-only account of its own to read the review record. Neither
 * shares the other's credential.
 *
 * Wire rules (Gerrit's REST documentation, "rest-api.txt"):
 * - authenticated calls go under `/a/` with HTTP basic authentication (the account's HTTP
 *   password);
 * - every JSON answer starts with the line `)]}'` (against cross-site script inclusion), which is
 *   stripped before parsing;
 * - a change is named `<project>~<number>` with the project URL-encoded (`/` as `%2F`);
 * - timestamps are UTC strings `2013-02-01 09:59:32.126000000`;
 * - errors come back as plain text with the status (400, 401, 403, 404, 409, 412, 422, 5xx).
 *
 * What comes back is treated as input: bodies are capped (`maxResponseBytes`), every call has a
 * deadline, and objects are parsed with zod (loose: Gerrit adds fields release by release; the
 * fields airlock reads are strictly typed). Errors name the method and path, never the password;
 * a refusal quotes at most 500 characters of Gerrit's reason, control characters removed.
 */
import { z } from 'zod';
import { InvalidInputError, ReviewAuthFailedError, ReviewRefusedError, ReviewUnavailableError } from '../errors.js';
import { zodIssues } from '../schemas/issues.js';

/** The line Gerrit puts before every JSON answer. */
export const XSSI_PREFIX = ")]}'";

const Text = (max: number) => z.string().max(max);
const Sha = z.string().regex(/^(?:[0-9a-f]{40}|[0-9a-f]{64})$/, 'not a commit id');
/** `2013-02-01 09:59:32.126000000` (UTC). */
export const GerritTimestamp = z.string().regex(/^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(?:\.\d{1,9})?$/, 'not a Gerrit timestamp');

/** AccountInfo. With DETAILED_ACCOUNTS: name, email, username. */
export const AccountInfo = z.looseObject({
  _account_id: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER).optional(),
  name: Text(256).optional(),
  email: Text(256).optional(),
  username: Text(256).optional(),
});
export type AccountInfo = z.infer<typeof AccountInfo>;

/** ApprovalInfo: an account's vote on a label (DETAILED_LABELS' `all`). A value of 0 is no vote. */
export const ApprovalInfo = AccountInfo.extend({
  value: z.number().int().min(-1000).max(1000).optional(),
  date: GerritTimestamp.optional(),
  tag: Text(256).optional(),
  permitted_voting_range: z.looseObject({ min: z.number().int(), max: z.number().int() }).optional(),
  /** Given after the change was merged. */
  post_submit: z.boolean().optional(),
});
export type ApprovalInfo = z.infer<typeof ApprovalInfo>;

/** LabelInfo. `all` and `values` come with DETAILED_LABELS; `approved`/`rejected` with LABELS. */
export const LabelInfo = z.looseObject({
  approved: AccountInfo.optional(),
  rejected: AccountInfo.optional(),
  recommended: AccountInfo.optional(),
  disliked: AccountInfo.optional(),
  blocking: z.boolean().optional(),
  value: z.number().int().optional(),
  default_value: z.number().int().optional(),
  all: z.array(ApprovalInfo).max(10_000).optional(),
  values: z.record(Text(16), Text(1024)).optional(),
});
export type LabelInfo = z.infer<typeof LabelInfo>;

/** GitPersonInfo: a commit's author or committer. */
const GitPersonInfo = z.looseObject({ name: Text(256).optional(), email: Text(256).optional() });

/** CommitInfo (CURRENT_COMMIT / ALL_COMMITS). */
export const CommitInfo = z.looseObject({
  commit: Sha.optional(),
  author: GitPersonInfo.optional(),
  committer: GitPersonInfo.optional(),
  parents: z.array(z.looseObject({ commit: Sha, subject: Text(64 * 1024).optional() })).max(64).optional(),
  subject: Text(64 * 1024).optional(),
  message: Text(1024 * 1024).optional(),
});

/** The kinds a new patch set can be (Gerrit's ChangeKind). */
export const ChangeKind = z.enum(['REWORK', 'TRIVIAL_REBASE', 'MERGE_FIRST_PARENT_UPDATE', 'NO_CODE_CHANGE', 'NO_CHANGE']);
export type ChangeKind = z.infer<typeof ChangeKind>;

/** RevisionInfo (CURRENT_REVISION / ALL_REVISIONS). */
export const RevisionInfo = z.looseObject({
  _number: z.number().int().min(1).max(999_999_999),
  kind: ChangeKind.or(Text(64)).optional(),
  ref: z.string().regex(/^refs\/changes\/[0-9]{2}\/[0-9]{1,9}\/[0-9]{1,9}$/, 'not a change ref'),
  created: GerritTimestamp.optional(),
  uploader: AccountInfo.optional(),
  /** Who really uploaded it, when someone uploaded on another's behalf. */
  real_uploader: AccountInfo.optional(),
  commit: CommitInfo.optional(),
});
export type RevisionInfo = z.infer<typeof RevisionInfo>;

export const ChangeStatus = z.enum(['NEW', 'MERGED', 'ABANDONED']);

/** ChangeInfo, as far as airlock reads it. `revisions` is keyed by commit id. */
export const ChangeInfo = z.looseObject({
  id: Text(2048),
  project: Text(255),
  branch: Text(255),
  change_id: Text(64).optional(),
  subject: Text(64 * 1024).optional(),
  status: ChangeStatus,
  created: GerritTimestamp.optional(),
  updated: GerritTimestamp,
  submitted: GerritTimestamp.optional(),
  submitter: AccountInfo.optional(),
  _number: z.number().int().min(1).max(999_999_999),
  owner: AccountInfo,
  labels: z.record(Text(100), LabelInfo).optional(),
  current_revision: Sha.optional(),
  revisions: z.record(Sha, RevisionInfo).optional(),
  work_in_progress: z.boolean().optional(),
  is_private: z.boolean().optional(),
  submittable: z.boolean().optional(),
  _more_changes: z.boolean().optional(),
});
export type ChangeInfo = z.infer<typeof ChangeInfo>;

/** BranchInfo. */
export const BranchInfo = z.looseObject({ ref: Text(255), revision: Sha });
export type BranchInfo = z.infer<typeof BranchInfo>;

/** ReviewInput, as airlock sends it: a message and label votes. */
export interface ReviewInput {
  message?: string;
  labels?: Record<string, number>;
  /** `autogenerated:…` tags mark bot messages (Gerrit hides them behind "show all"). */
  tag?: string;
  notify?: 'NONE' | 'OWNER' | 'OWNER_REVIEWERS' | 'ALL';
}

/** `o=` options of GET /changes/. */
export type ChangeOption = 'CURRENT_REVISION' | 'ALL_REVISIONS' | 'CURRENT_COMMIT' | 'ALL_COMMITS' | 'DETAILED_LABELS' | 'LABELS' | 'DETAILED_ACCOUNTS' | 'SUBMITTABLE' | 'MESSAGES';

export interface GerritCredentials {
  username: string;
  password: string;
}

export interface GerritClientOptions {
  /** The server's base URL (`https://review.example.org`, or with a path prefix). */
  url: string;
  /** The account's HTTP password; without it, anonymous calls (no `/a/`). */
  credentials?: GerritCredentials;
  /** Deadline of one call. Default 30 s. */
  timeoutMs?: number;
  /** Largest answer read. Default 16 MiB. */
  maxResponseBytes?: number;
  fetch?: typeof fetch;
}

const DEFAULT_TIMEOUT_MS = 30_000; // 30 s
const DEFAULT_MAX_RESPONSE_BYTES = 16 * 1024 * 1024; // 16 MiB
const REASON_MAX = 500;
/** Pages of a query read at most (a runaway server must not keep us paging for ever). */
const MAX_QUERY_PAGES = 100;

/** `<project>~<number>`, URL-encoded: how airlock names a change in a REST path. */
export function changePath(project: string, number: number | string): string {
  return encodeURIComponent(`${project}~${number}`);
}

/** Gerrit's timestamp for a time (UTC, milliseconds). */
export function gerritTime(ms: number): string {
  return new Date(ms).toISOString().replace('T', ' ').replace('Z', '');
}

/** A Gerrit timestamp as milliseconds since the epoch. */
export function parseGerritTime(t: string): number {
  const [date, time = '00:00:00'] = t.split(' ');
  const [hms = '00:00:00', frac = '0'] = time.split('.');
  return Date.parse(`${date}T${hms}.${frac.padEnd(3, '0').slice(0, 3)}Z`);
}

/** The most stable name Gerrit gave an account: username, else e-mail, else name, else its id. */
export function accountName(a: AccountInfo | undefined): string | undefined {
  if (!a) return undefined;
  return a.username || a.email || a.name || (a._account_id !== undefined ? `account ${a._account_id}` : undefined);
}

/** Text of a refusal fit for a message: control characters out, at most REASON_MAX characters. */
function reason(text: string): string {
  // eslint-disable-next-line no-control-regex
  const t = text.replace(/[\u0000-\u0008\u000b-\u001f\u007f]/g, '').trim();
  return t.length > REASON_MAX ? `${t.slice(0, REASON_MAX)}…` : t;
}

export class GerritClient {
  readonly url: string;
  readonly #auth: string | undefined;
  private readonly fetch: typeof fetch;
  private readonly timeoutMs: number;
  private readonly maxBytes: number;

  constructor(o: GerritClientOptions) {
    const u = new URL(o.url);
    if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new InvalidInputError([{ file: 'review system', path: 'url', message: `must be http(s), not ${u.protocol}`, severity: 'error' }]);
    if (u.username || u.password) throw new InvalidInputError([{ file: 'review system', path: 'url', message: 'must not carry credentials (they come from a file or the secret store)', severity: 'error' }]);
    this.url = o.url.replace(/\/+$/, '');
    this.#auth = o.credentials ? `Basic ${Buffer.from(`${o.credentials.username}:${o.credentials.password}`, 'utf8').toString('base64')}` : undefined;
    this.fetch = o.fetch ?? globalThis.fetch;
    this.timeoutMs = o.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.maxBytes = o.maxResponseBytes ?? DEFAULT_MAX_RESPONSE_BYTES;
  }

  /** GET a JSON answer; `path` starts with `/` and is relative to the (authenticated) API root. */
  get<S extends z.ZodType>(path: string, schema: S, signal?: AbortSignal): Promise<z.infer<S>> {
    return this.call('GET', path, undefined, schema, signal);
  }

  post<S extends z.ZodType>(path: string, body: unknown, schema: S, signal?: AbortSignal): Promise<z.infer<S>> {
    return this.call('POST', path, body, schema, signal);
  }

  /** The account the credentials belong to (a cheap check that they work). */
  self(signal?: AbortSignal): Promise<AccountInfo> {
    return this.get('/accounts/self', AccountInfo, signal);
  }

  /** One change with the given options, or undefined when Gerrit does not know it (or hides it). */
  async change(project: string, number: number, options: readonly ChangeOption[], signal?: AbortSignal): Promise<ChangeInfo | undefined> {
    const q = options.map((o) => `o=${o}`).join('&');
    return this.get(`/changes/${changePath(project, number)}${q ? `?${q}` : ''}`, ChangeInfo, signal).catch((e: unknown) => {
      if (e instanceof ReviewRefusedError && e.status === 404) return undefined;
      throw e;
    });
  }

  /** Every change a query finds (paged with `S`, `limit` per page), newest update first. */
  async query(q: string, options: readonly ChangeOption[], o: { limit?: number; max?: number; signal?: AbortSignal } = {}): Promise<ChangeInfo[]> {
    const limit = o.limit ?? 100;
    const max = o.max ?? 10_000;
    const out: ChangeInfo[] = [];
    for (let page = 0; page < MAX_QUERY_PAGES && out.length < max; page++) {
      const params = [`q=${encodeURIComponent(q)}`, ...options.map((x) => `o=${x}`), `n=${limit}`, `S=${out.length}`];
      const got = await this.get(`/changes/?${params.join('&')}`, z.array(ChangeInfo).max(10_000), o.signal);
      out.push(...got);
      if (got.length === 0 || got[got.length - 1]?._more_changes !== true) break;
    }
    return out.slice(0, max);
  }

  /** A branch's tip, or undefined when there is no such branch. */
  async branch(project: string, branch: string, signal?: AbortSignal): Promise<BranchInfo | undefined> {
    return this.get(`/projects/${encodeURIComponent(project)}/branches/${encodeURIComponent(branch)}`, BranchInfo, signal).catch((e: unknown) => {
      if (e instanceof ReviewRefusedError && e.status === 404) return undefined;
      throw e;
    });
  }

  /** Votes and a message on one revision of a change. */
  async review(project: string, number: number, revision: string, input: ReviewInput, signal?: AbortSignal): Promise<void> {
    await this.post(`/changes/${changePath(project, number)}/revisions/${encodeURIComponent(revision)}/review`, input, z.unknown(), signal);
  }

  /**
   * Ask Gerrit to submit the change at exactly `revision` ("Submit Revision": refused with 409 when
   * it is no longer the current patch set); its answer names the change's new status (a 409 says why
   * not).
   */
  submit(project: string, number: number, revision: string, signal?: AbortSignal): Promise<{ status: string }> {
    return this.post(`/changes/${changePath(project, number)}/revisions/${encodeURIComponent(revision)}/submit`, { wait_for_merge: true }, z.looseObject({ status: z.string().max(32) }), signal);
  }

  /** An account by username, e-mail or id, or undefined when there is none (or it is hidden). */
  async account(name: string, signal?: AbortSignal): Promise<AccountInfo | undefined> {
    return this.get(`/accounts/${encodeURIComponent(name)}`, AccountInfo, signal).catch((e: unknown) => {
      if (e instanceof ReviewRefusedError && e.status === 404) return undefined;
      throw e;
    });
  }

  /** The members of a group (its included groups' too). */
  groupMembers(group: string, signal?: AbortSignal): Promise<AccountInfo[]> {
    return this.get(`/groups/${encodeURIComponent(group)}/members/?recursive`, z.array(AccountInfo).max(100_000), signal);
  }

  private async call<S extends z.ZodType>(method: 'GET' | 'POST', path: string, body: unknown, schema: S, signal?: AbortSignal): Promise<z.infer<S>> {
    const url = `${this.url}${this.#auth ? '/a' : ''}${path}`;
    const what = `${method} ${path.split('?')[0]}`;
    const headers: Record<string, string> = { accept: 'application/json' };
    if (this.#auth) headers.authorization = this.#auth;
    if (body !== undefined) headers['content-type'] = 'application/json; charset=UTF-8';
    const deadline = AbortSignal.timeout(this.timeoutMs);
    const sig = signal ? AbortSignal.any([signal, deadline]) : deadline;
    let res: Response;
    try {
      res = await this.fetch(url, { method, headers, redirect: 'manual', signal: sig, ...(body !== undefined ? { body: JSON.stringify(body) } : {}) });
    } catch (e) {
      if (signal?.aborted) throw e;
      const why = deadline.aborted ? `no answer within ${this.timeoutMs} ms` : `cannot be reached (${(e as Error).cause instanceof Error ? ((e as Error).cause as Error).message : (e as Error).message})`;
      throw new ReviewUnavailableError(`the review system at ${this.url} ${why}: ${what}`, { cause: e });
    }
    const text = await this.readBody(res, what, sig);
    if (res.status === 401) throw new ReviewAuthFailedError(`the review system at ${this.url} refused airlock's credentials (401) for ${what}${text ? `: ${reason(text)}` : ''}`);
    // 403 is a permission this account lacks for this request (Gerrit: "Applying label … is restricted").
    if (res.status === 403) throw new ReviewRefusedError(403, `the review system does not permit ${what} to airlock's account (403)${text ? `: ${reason(text)}` : ''}`);
    if (res.status >= 500 || res.status === 429 || res.status === 408) throw new ReviewUnavailableError(`the review system at ${this.url} answered ${res.status} to ${what}${text ? `: ${reason(text)}` : ''}`);
    if (res.status >= 300) throw new ReviewRefusedError(res.status, `the review system refused ${what} (${res.status})${text ? `: ${reason(text)}` : ''}`);
    const json = text.startsWith(XSSI_PREFIX) ? text.slice(XSSI_PREFIX.length) : text;
    let value: unknown;
    try {
      value = json.trim() === '' ? undefined : JSON.parse(json);
    } catch {
      throw new ReviewUnavailableError(`the review system's answer to ${what} is not JSON`);
    }
    const r = schema.safeParse(value);
    if (!r.success) throw new InvalidInputError(zodIssues(r.error, `review system answer to ${what}`));
    return r.data;
  }

  /** The body as UTF-8 text, at most `maxBytes`. */
  private async readBody(res: Response, what: string, signal: AbortSignal): Promise<string> {
    if (!res.body) return '';
    const reader = res.body.getReader();
    const chunks: Uint8Array[] = [];
    let size = 0;
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        size += value.byteLength;
        if (size > this.maxBytes) {
          await reader.cancel().catch(() => undefined);
          throw new ReviewUnavailableError(`the review system's answer to ${what} is larger than ${this.maxBytes} bytes`);
        }
        chunks.push(value);
      }
    } catch (e) {
      if (e instanceof ReviewUnavailableError) throw e;
      if (signal.aborted && !(e instanceof Error && e.name === 'AbortError' && res.status < 300)) throw new ReviewUnavailableError(`the review system's answer to ${what} did not arrive in time`, { cause: e });
      throw new ReviewUnavailableError(`reading the review system's answer to ${what} failed`, { cause: e });
    }
    return Buffer.concat(chunks).toString('utf8');
  }
}
