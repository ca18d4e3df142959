/**
 * A test double of Gerrit Code Review: its REST API and the events its webhooks plugin POSTs, as a
 * real HTTP server on 127.0.0.1 (random port), over real bare git repositories (the git CLI, hooks
 * off, no user or system config). No Gerrit server can be installed on this machine, so airlock's
 * Gerrit client (shared/review/gerrit-rest.ts) and event parser are tested against this. It is
 * written from Gerrit's public documentation, read against Gerrit's own Java sources where the
 * documentation is silent (messages, field presence); no code is copied:
 *
 * - REST basics (`/a/` + HTTP basic auth with the HTTP password, 401 with
 *   `WWW-Authenticate: Basic realm="Gerrit Code Review"`, the `)]}'` line before JSON, compact JSON
 *   for `Accept: application/json` or `pp=0`, plain-text errors ending in a newline, timestamps
 *   `yyyy-mm-dd hh:mm:ss.fffffffff` UTC, URL-encoded ids): Documentation/rest-api.txt.
 * - Changes (ChangeInfo, RevisionInfo, CommitInfo, LabelInfo, ApprovalInfo; the `o=` options; the
 *   `{change-id}` forms `project~number`, `project~branch~Change-Id`, a Change-Id, a number; the
 *   `{revision-id}` forms `current`, a patch set number, a sha or a prefix of 4+ hex digits; Query
 *   Changes with `q`, `n`, `S`/`start`, `_more_changes`; Set Review and ReviewResult; Submit;
 *   Abandon, Restore, Set Work In Progress, Set Ready For Review, Mark/Unmark Private):
 *   Documentation/rest-api-changes.txt, with java/.../server/change/ChangeJson.java (which labels and
 *   fields appear when), restapi/change/PostReview.java + PostReviewOp.java (label checks, the
 *   change message `Patch Set N: Label+V`, post-submit votes, votes on outdated patch sets copied
 *   forward) and restapi/change/Submit.java.
 * - Search operators: Documentation/user-search.txt; `Unsupported operator x:y` from
 *   java/.../index/query/QueryBuilder.java.
 * - Labels and submit rules (MaxWithBlock / NoBlock, permitted ranges, copyMinScore and copying
 *   by change kind): Documentation/config-labels.txt; change kinds by ChangeKindCacheImpl.java's rules
 *   (same tree and parent trees: NO_CHANGE or, with another message, NO_CODE_CHANGE; the prior
 *   patch set cherry-picked onto the new parent gives the new tree: TRIVIAL_REBASE, or
 *   MERGE_FIRST_PARENT_UPDATE for merges; REWORK otherwise, including a rebase with a new message).
 * - Submit (MERGE_IF_NECESSARY, "submitted together" ancestors, the aggregated 409 `Failed to
 *   submit N change(s) due to the following problems:`, `needs X` / `blocked by X`, path conflicts,
 *   missing dependencies naming outdated patch sets, merge commits `Merge "<subject>"` with
 *   `* changes:` for several, committed by the server): java/.../server/submit/MergeOp.java,
 *   CommitMergeStatus.java, SubmitStrategyListener.java, server/git/MergeUtil.java. Ref updates
 *   are announced before the change events of the same update (BatchUpdate fires ref-updated,
 *   then the ops' events), so `ref-updated` precedes `patchset-created` and `change-merged`.
 * - Events (attribute names, which ones are set, `wip`/`private` only when true, approval values
 *   as strings with `oldValue` only for labels the review changed): Documentation/cmd-stream-events.txt,
 *   json.txt, server/events/EventFactory.java and StreamEventsApiListener.java.
 * - The webhooks plugin (https://gerrit.googlesource.com/plugins/webhooks, config.md and its
 *   PostTask/HttpSession/HttpClientProvider): one POST per event and remote, body
 *   `GSON.toJson(event)` (plain Gson: `"project":{"name":…}`, `"changeKey":{"key":…}`, HTML-safe
 *   escapes such as `\u003d`), `Content-Type: application/json; charset=utf-8`, `X-Origin-Url`;
 *   success only on 200/201/202/204; a failed try (another status or a network error) is
 *   rescheduled after `retryInterval` (default 1000 ms) until `maxTries` (default 5; 0 or 1: one
 *   try); inside one try the HTTP client itself repeats a 5xx answer up to `maxTries` more times,
 *   `retryInterval` apart; two sender threads, so deliveries are not ordered; credentials in the
 *   URL (`http://user:pass@host/…`) are only sent after a 401 with a `WWW-Authenticate: Basic`
 *   challenge (Apache HttpClient 4 puts URL user info into its credentials provider, not a header).
 *
 * Not modelled: SSH and `gerrit stream-events`, NoteDb (no refs/changes/NN/N/meta and so no
 * ref-updated for it; state lives in memory), pushes over git (uploads go through `upload()`),
 * submit types other than MERGE_IF_NECESSARY with content merge, submit whole topic, submit
 * requirements (3.6+ would word an unsatisfied Code-Review as `submit requirement 'Code-Review' is
 * unsatisfied.`; this double uses label functions), reviewers added by REST, attention set,
 * hashtags, comments on files, drafts, change edits, ReviewInput `ready`/`work_in_progress`/
 * `on_behalf_of`, the `mergeable` field, `fetch` download schemes, group visibility (every group
 * is visible to every account), other permissions than label ranges and Submit (abandon and
 * restore: the owner or an account with Submit; work in progress: owner or uploader; private:
 * owner), project-created events, `TRIVIAL_REBASE_WITH_MESSAGE_UPDATE` (newer Gerrit).
 *
 * Faults for retry tests: `failNext(n, 'http-500' | 'http-503' | 'reset', prefix?)` makes the next
 * n REST requests (optionally only those whose path, without `/a`, starts with a prefix) fail.
 */
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer, request as httpRequest, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export type ChangeKind = 'REWORK' | 'TRIVIAL_REBASE' | 'MERGE_FIRST_PARENT_UPDATE' | 'NO_CODE_CHANGE' | 'NO_CHANGE';
export type ChangeStatus = 'NEW' | 'MERGED' | 'ABANDONED';
export type Fault = 'http-500' | 'http-503' | 'reset';

export interface GerritAccountSpec {
  id: number;
  username: string;
  name?: string;
  email?: string;
  /** HTTP password; absent: cannot use REST */
  password?: string;
  groups?: string[];
}

export interface LabelSpec {
  /** allowed range per group or username: the widest matching range applies */
  ranges: { who: string; min: number; max: number }[];
  /** MaxWithBlock: submittable needs the max value from someone and no min value; NoBlock: never required */
  function?: 'MaxWithBlock' | 'NoBlock';
  /** values copied to a new patch set: by change kind, and min votes always (Gerrit's copyMinScore) */
  copyOnKinds?: ('TRIVIAL_REBASE' | 'NO_CHANGE' | 'NO_CODE_CHANGE' | 'MERGE_FIRST_PARENT_UPDATE')[];
  copyMin?: boolean;
  /** the value range of the label */
  values: [number, number];
}

export interface WebhookRemote {
  url: string;
  /** Event types posted to this remote (`remote.NAME.event`); default all. */
  events?: string[];
  /** `remote.NAME.maxTries`, default 5. */
  maxTries?: number;
  /** `remote.NAME.retryInterval`, default 1000 ms. */
  retryIntervalMs?: number;
}

export interface GerritDoubleOptions {
  accounts: GerritAccountSpec[];
  /** default: Code-Review [-2,2] MaxWithBlock copyOnKinds [TRIVIAL_REBASE, NO_CHANGE] copyMin true, ranges [{who:'Registered Users', min:-1, max:1}]; Verified [-2,2] MaxWithBlock, no copy, ranges []. Everyone is in group 'Registered Users'. */
  labels?: Record<string, LabelSpec>;
  /** usernames or groups allowed to submit (Gerrit's Submit permission); default ['Registered Users'] */
  submit?: string[];
  /** where events are POSTed, as the webhooks plugin does */
  webhooks?: WebhookRemote[];
  dir?: string;
  /** the canonical web URL (change.url in events, `X-Origin-Url`); default the server's own URL */
  canonicalWebUrl?: string;
  /** Gerrit's `change.strictLabels`: unknown labels and values are a 400 instead of being dropped. Default false, as in Gerrit. */
  strictLabels?: boolean;
}

export interface RequestRecord {
  method: string;
  /** Path without the `/a` prefix, still URL-encoded: `/changes/my%2Fproject~3`. */
  path: string;
  query: string;
  /** HTTP status; 0 for a connection reset. */
  status: number;
  /** The authenticated username (absent: anonymous or refused). */
  user?: string;
}

export interface PostedEvent {
  type: string;
  /** The JSON body as sent, parsed. */
  body: unknown;
  delivered: boolean;
  /** HTTP requests made for it (every 5xx repeat and 401 challenge answer counts). */
  attempts: number;
  /** The remote it is for. */
  url: string;
  /** Dropped by `pauseWebhooks({ drop: true })`: raised (or due for a retry) while paused, never sent (again). */
  dropped?: boolean;
}

/** A refusal by the double's test-facing API, with the HTTP status and text the REST API would give. */
export class GerritDoubleError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
    this.name = 'GerritDoubleError';
  }
}

// ---------------------------------------------------------------------------------------------
// Internal model

interface Account {
  id: number;
  username: string;
  name: string | undefined;
  email: string | undefined;
  password: string | undefined;
  groups: string[];
}

interface Label {
  name: string;
  min: number;
  max: number;
  fn: 'MaxWithBlock' | 'NoBlock';
  copyOnKinds: Set<string>;
  copyMin: boolean;
  ranges: { who: string; min: number; max: number }[];
}

interface Approval {
  value: number;
  granted: number;
  tag: string | undefined;
  /** Copied from an earlier patch set (not cast on this one). */
  copied: boolean;
  postSubmit: boolean;
}

/** label name → account id → approval */
type Votes = Map<string, Map<number, Approval>>;

interface PatchSet {
  number: number;
  sha: string;
  ref: string;
  created: number;
  uploader: Account;
  kind: ChangeKind;
  parents: string[];
  insertions: number;
  deletions: number;
  votes: Votes;
}

interface ChangeMessage {
  id: string;
  author: Account | undefined;
  date: number;
  message: string;
  tag: string | undefined;
  patchset: number;
}

interface Change {
  number: number;
  project: string;
  /** Short name (`master`). */
  branch: string;
  changeId: string;
  owner: Account;
  status: ChangeStatus;
  created: number;
  updated: number;
  submitted: number | undefined;
  submitter: Account | undefined;
  wip: boolean;
  isPrivate: boolean;
  topic: string | undefined;
  hasReviewStarted: boolean;
  patchSets: PatchSet[];
  reviewers: Set<number>;
  ccs: Set<number>;
  messages: ChangeMessage[];
}

interface Ident {
  name: string;
  email: string;
}

interface CommitData {
  tree: string;
  parents: string[];
  author: { name: string; email: string; time: number; tz: number };
  committer: { name: string; email: string; time: number; tz: number };
  message: string;
}

interface Remote {
  url: URL;
  events: string[];
  maxTries: number;
  retryIntervalMs: number;
}

interface Delivery {
  entry: PostedEvent;
  remote: Remote;
  json: string;
  runs: number;
}

type Json = null | boolean | number | string | Json[] | { [key: string]: Json | undefined };
type JsonObject = { [key: string]: Json | undefined };

class HttpAnswer {
  constructor(
    readonly status: number,
    readonly body: Json | undefined,
    /** A plain-text error (or `OK`) instead of JSON. */
    readonly text?: string,
  ) {}
}

function refusal(status: number, text: string): HttpAnswer {
  return new HttpAnswer(status, undefined, text);
}

const ZERO = '0'.repeat(40);
const EMPTY_TREE = '4b825dc642cb6eb9a060e54bf8d69288fbee4904';
const XSSI = ")]}'\n";
const SERVER_IDENT: Ident = { name: 'Gerrit Code Review', email: 'gerrit@localhost' };
const REGISTERED = 'Registered Users';
const ANONYMOUS = 'Anonymous Users';
const MAX_BODY = 1024 * 1024; // 1 MiB
const QUERY_LIMIT = 500; // Gerrit's default queryLimit
const WEBHOOK_THREADS = 2; // plugin threadPoolSize default
const WEBHOOK_TIMEOUT_MS = 5000; // plugin connectionTimeout / socketTimeout default
const LIST_OPTIONS = new Set([
  'LABELS', 'DETAILED_LABELS', 'SUBMIT_REQUIREMENTS', 'CURRENT_REVISION', 'ALL_REVISIONS', 'CURRENT_COMMIT', 'ALL_COMMITS',
  'CURRENT_FILES', 'ALL_FILES', 'DETAILED_ACCOUNTS', 'REVIEWER_UPDATES', 'MESSAGES', 'CURRENT_ACTIONS', 'CHANGE_ACTIONS',
  'REVIEWED', 'SKIP_MERGEABLE', 'SKIP_DIFFSTAT', 'SUBMITTABLE', 'WEB_LINKS', 'CHECK', 'COMMIT_FOOTERS', 'PUSH_CERTIFICATES',
  'TRACKING_IDS', 'DOWNLOAD_COMMANDS', 'STAR', 'CUSTOM_KEYED_VALUES', 'PARENTS',
]);
const DEFAULT_LABELS: Record<string, LabelSpec> = {
  'Code-Review': { values: [-2, 2], function: 'MaxWithBlock', copyOnKinds: ['TRIVIAL_REBASE', 'NO_CHANGE'], copyMin: true, ranges: [{ who: REGISTERED, min: -1, max: 1 }] },
  Verified: { values: [-2, 2], function: 'MaxWithBlock', ranges: [] },
};
const GIT_ENV: Record<string, string> = {
  PATH: process.env.PATH ?? '/usr/bin:/bin',
  HOME: '/nonexistent',
  GIT_CONFIG_NOSYSTEM: '1',
  GIT_CONFIG_GLOBAL: '/dev/null',
  LC_ALL: 'C',
};

export class GerritDouble {
  readonly requests: RequestRecord[] = [];
  /** One entry per event and remote it is for, updated as delivery goes on. */
  readonly posted: PostedEvent[] = [];
  /** Every event raised, whether or not a remote wants it. */
  readonly events: { type: string; body: unknown }[] = [];
  readonly #server: Server;
  readonly #sockets = new Set<Socket>();
  readonly #dir: string;
  readonly #ownDir: boolean;
  readonly #accounts: Account[];
  readonly #labels: Label[];
  readonly #submitters: string[];
  readonly #remotes: Remote[];
  readonly #strictLabels: boolean;
  readonly #changes = new Map<number, Change>();
  readonly #projects = new Set<string>();
  #canonical: string;
  #url = '';
  #nextChange = 1;
  #lastTs = 0;
  #commitClock = 1_700_000_000;
  #seq = 0;
  #faults: { remaining: number; fault: Fault; prefix: string }[] = [];
  // webhook sender
  #queue: Delivery[] = [];
  #held: Delivery[] = [];
  #running = 0;
  #timers = new Set<NodeJS.Timeout>();
  #paused: { drop: boolean } | undefined;
  #idleWaiters: (() => void)[] = [];
  #closed = false;

  private constructor(o: GerritDoubleOptions) {
    this.#accounts = o.accounts.map((a) => ({ id: a.id, username: a.username, name: a.name, email: a.email, password: a.password, groups: [...(a.groups ?? [])] }));
    this.#labels = Object.entries(o.labels ?? DEFAULT_LABELS).map(([name, s]) => ({
      name,
      min: s.values[0],
      max: s.values[1],
      fn: s.function ?? 'MaxWithBlock',
      copyOnKinds: new Set(s.copyOnKinds ?? []),
      copyMin: s.copyMin ?? false,
      ranges: s.ranges,
    }));
    this.#submitters = o.submit ?? [REGISTERED];
    this.#remotes = (o.webhooks ?? []).map((w) => ({ url: new URL(w.url), events: w.events ?? [], maxTries: w.maxTries ?? 5, retryIntervalMs: w.retryIntervalMs ?? 1000 }));
    this.#strictLabels = o.strictLabels ?? false;
    this.#ownDir = o.dir === undefined;
    this.#dir = o.dir ?? mkdtempSync(join(tmpdir(), 'airlock-gerrit-'));
    this.#canonical = o.canonicalWebUrl ?? '';
    this.#server = createServer((req, res) => void this.#handle(req, res));
    this.#server.on('connection', (s: Socket) => {
      this.#sockets.add(s);
      s.on('close', () => this.#sockets.delete(s));
    });
  }

  /** Starts a double listening on 127.0.0.1:0. */
  static async start(o: GerritDoubleOptions): Promise<GerritDouble> {
    const g = new GerritDouble(o);
    await new Promise<void>((resolve, reject) => {
      g.#server.once('error', reject);
      g.#server.listen(0, '127.0.0.1', () => resolve());
    });
    g.#url = `http://127.0.0.1:${(g.#server.address() as AddressInfo).port}`;
    if (g.#canonical === '') g.#canonical = `${g.#url}/`;
    if (!g.#canonical.endsWith('/')) g.#canonical += '/';
    return g;
  }

  /** `http://127.0.0.1:<port>` */
  get url(): string {
    return this.#url;
  }

  async close(): Promise<void> {
    this.#closed = true;
    for (const t of this.#timers) clearTimeout(t);
    this.#timers.clear();
    for (const s of this.#sockets) s.destroy();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
    this.#wakeIdle(true);
    if (this.#ownDir) rmSync(this.#dir, { recursive: true, force: true });
  }

  /** The bare repository's path (what CI and the builder fetch from). */
  gitUrl(project: string): string {
    return join(this.#dir, 'git', `${project}.git`);
  }

  /** A project with one commit holding `files` on `master` (or `o.branch`, which becomes HEAD). Returns its sha. */
  createProject(name: string, files: Record<string, string>, o: { branch?: string } = {}): string {
    if (this.#projects.has(name)) throw new Error(`gerrit double: project ${name} already exists`);
    if (!/^[A-Za-z0-9][A-Za-z0-9._/-]*$/.test(name) || name.includes('..') || name.endsWith('/') || name.endsWith('.git')) throw new Error(`gerrit double: bad project name ${name}`);
    const gitDir = this.gitUrl(name);
    const branch = o.branch ?? 'master';
    mkdirSync(gitDir, { recursive: true });
    this.#git(name, ['init', '--quiet', '--bare', `--initial-branch=${branch}`, gitDir], { noGitDir: true });
    this.#projects.add(name);
    const tree = this.#tree(name, undefined, files);
    const sha = this.#commitTree(name, tree, [], 'Initial commit\n', SERVER_IDENT, SERVER_IDENT);
    this.#git(name, ['update-ref', `refs/heads/${branch}`, sha, ZERO]);
    return sha;
  }

  /** A commit written straight onto a branch, bypassing review (what someone with push rights, or a compromised host with a write credential, could do). Emits ref-updated; open changes whose current patch set becomes reachable are closed as merged, as a direct push does in Gerrit. */
  directPush(project: string, branch: string, files: Record<string, string | null>, o: { message?: string; parent?: string; as?: string } = {}): string {
    this.#needProject(project);
    const pusher = o.as === undefined ? undefined : this.#account(o.as);
    const ident = pusher ? identOf(pusher) : { name: 'Test Author', email: 'author@example.com' };
    const old = this.#resolve(project, `refs/heads/${branch}`);
    const parent = o.parent === undefined ? old : this.#mustResolve(project, o.parent);
    const tree = this.#tree(project, parent, files);
    const sha = this.#commitTree(project, tree, parent ? [parent] : [], o.message ?? `Direct push to ${branch}\n`, ident, ident);
    this.#git(project, ['update-ref', `refs/heads/${branch}`, sha, old ?? ZERO]);
    const ts = this.#tick();
    this.#raiseRefUpdated(project, `refs/heads/${branch}`, old ?? ZERO, sha, pusher, ts);
    this.#autoClose(project, branch, old, sha, pusher, ts);
    return sha;
  }

  /** Writes a commit (not on any branch) and returns its sha. Default parent: the tip of HEAD's branch. */
  writeCommit(project: string, files: Record<string, string | null>, o: { parent?: string; parents?: string[]; message?: string } = {}): string {
    this.#needProject(project);
    const parents = o.parents ? o.parents.map((p) => this.#mustResolve(project, p)) : [this.#mustResolve(project, o.parent ?? 'HEAD')];
    const tree = this.#tree(project, parents[0], files);
    const ident = { name: 'Test Author', email: 'author@example.com' };
    return this.#commitTree(project, tree, parents, o.message ?? 'A commit\n', ident, ident);
  }

  /**
   * Uploads a new change (patch set 1) or, with `change`, a new patch set of it, as a push to
   * `refs/for/<branch>` would. `parent` defaults to the branch tip; `files` are applied on the
   * parent's tree; without `files` (and `commit`) a new patch set is the previous one
   * cherry-picked onto `parent` (a rebase). The message gets a `Change-Id` footer; a new patch set
   * keeps the previous message unless `subject` is given. `commit`: upload an existing commit
   * (its Change-Id footer is used if it has one). Emits ref-updated for the patch set ref, then
   * patchset-created.
   */
  upload(o: {
    project: string;
    branch?: string;
    owner: string;
    subject?: string;
    files?: Record<string, string | null>;
    commit?: string;
    parent?: string;
    change?: number;
    wip?: boolean;
    private?: boolean;
    topic?: string;
  }): { number: number; patchset: number; sha: string; ref: string; changeId: string; kind: string } {
    this.#needProject(o.project);
    const uploader = this.#account(o.owner);
    let existing = o.change === undefined ? undefined : this.#changes.get(o.change);
    if (o.change !== undefined && !existing) throw new Error(`gerrit double: no change ${o.change}`);
    if (!existing && o.commit !== undefined) {
      // A push to refs/for/<branch> finds the open change by the commit's Change-Id footer.
      const key = changeIdFooter(this.#readCommit(o.project, this.#mustResolve(o.project, o.commit)).message);
      const target = shortBranch(o.branch ?? 'master');
      existing = [...this.#changes.values()].find((c) => c.project === o.project && c.branch === target && c.changeId === key && c.status === 'NEW');
    }
    if (existing && existing.project !== o.project) throw new Error(`gerrit double: change ${existing.number} is in ${existing.project}`);
    if (existing && existing.status !== 'NEW') throw new GerritDoubleError(409, `change ${this.#canonical}c/${existing.project}/+/${existing.number} closed`);
    const branch = existing?.branch ?? shortBranch(o.branch ?? 'master');
    if (existing && o.branch !== undefined && shortBranch(o.branch) !== existing.branch) throw new Error(`gerrit double: change ${existing.number} is for ${existing.branch}`);
    const tip = this.#resolve(o.project, `refs/heads/${branch}`);
    if (!tip) throw new GerritDoubleError(400, `branch ${branch} not found`);
    const number = existing?.number ?? this.#nextChange;
    const prev = existing ? last(existing.patchSets) : undefined;

    let sha: string;
    let changeId: string;
    if (o.commit !== undefined) {
      sha = this.#mustResolve(o.project, o.commit);
      changeId = existing?.changeId ?? changeIdFooter(this.#readCommit(o.project, sha).message) ?? newChangeId();
    } else {
      const parent = this.#mustResolve(o.project, o.parent ?? tip);
      changeId = existing?.changeId ?? newChangeId();
      let tree: string;
      if (o.files) tree = this.#tree(o.project, parent, o.files);
      else if (prev) {
        const prior = this.#readCommit(o.project, prev.sha);
        const base = prior.parents[0];
        const picked = base ? this.#threeWay(o.project, base, parent, prev.sha) : undefined;
        if (!picked) throw new GerritDoubleError(409, `patch set ${prev.number} of change ${number} cannot be rebased onto ${parent}: conflict`);
        tree = picked;
      } else tree = this.#treeOf(o.project, parent);
      const message =
        o.subject !== undefined || !prev ? `${o.subject ?? `Change ${number}`}\n\nChange-Id: ${changeId}\n` : this.#readCommit(o.project, prev.sha).message;
      const ident = identOf(uploader);
      sha = this.#commitTree(o.project, tree, [parent], message, ident, ident);
    }
    if (existing?.patchSets.some((p) => p.sha === sha)) throw new GerritDoubleError(400, 'no new changes');

    const commit = this.#readCommit(o.project, sha);
    const kind: ChangeKind = prev ? this.#kind(o.project, prev.sha, sha) : 'REWORK';
    const stats = this.#diffStat(o.project, commit.parents[0] ?? EMPTY_TREE, sha);
    const ts = this.#tick();
    const psNumber = (prev?.number ?? 0) + 1;
    const ref = changeRef(number, psNumber);
    this.#git(o.project, ['update-ref', ref, sha, ZERO]);
    const ps: PatchSet = { number: psNumber, sha, ref, created: ts, uploader, kind, parents: commit.parents, insertions: stats.insertions, deletions: stats.deletions, votes: new Map() };
    let change: Change;
    if (existing && prev) {
      change = existing;
      this.#copyOnUpload(prev, ps);
      change.patchSets.push(ps);
      const note = kind === 'TRIVIAL_REBASE' ? `: Patch Set ${prev.number} was rebased` : kind === 'NO_CODE_CHANGE' ? ': Commit message was updated' : '';
      this.#addMessage(change, uploader, ts, `Uploaded patch set ${psNumber}${note}.`, 'autogenerated:gerrit:newPatchSet', psNumber);
    } else {
      this.#nextChange++;
      change = {
        number,
        project: o.project,
        branch,
        changeId,
        owner: uploader,
        status: 'NEW',
        created: ts,
        updated: ts,
        submitted: undefined,
        submitter: undefined,
        wip: o.wip === true,
        isPrivate: o.private === true,
        topic: o.topic,
        hasReviewStarted: o.wip !== true,
        patchSets: [ps],
        reviewers: new Set(),
        ccs: new Set(),
        messages: [],
      };
      this.#changes.set(number, change);
      this.#addMessage(change, uploader, ts, `Uploaded patch set 1.`, 'autogenerated:gerrit:newPatchSet', 1);
    }
    change.updated = ts;
    this.#raiseRefUpdated(o.project, ref, ZERO, sha, uploader, ts);
    this.#raiseChangeEvent(change, 'patchset-created', ts, { uploader: this.#acctAttr(uploader) }, ps);
    return { number, patchset: psNumber, sha, ref, changeId, kind };
  }

  /** A human's review, through the same code path as the REST endpoint (permission checks included; throws a GerritDoubleError on refusal). */
  review(number: number, as: string, input: { labels?: Record<string, number>; message?: string; revision?: string; tag?: string }): void {
    const user = this.#account(as);
    const c = this.#visibleChange(number, user);
    const ps = this.#revision(c, input.revision ?? 'current');
    this.#throwIfRefused(this.#postReview(c, ps, user, { message: input.message, labels: input.labels, tag: input.tag }));
  }

  abandon(number: number, as: string, reason?: string): void {
    const user = this.#account(as);
    this.#throwIfRefused(this.#abandon(this.#visibleChange(number, user), user, reason));
  }

  restore(number: number, as: string, reason?: string): void {
    const user = this.#account(as);
    this.#throwIfRefused(this.#restore(this.#visibleChange(number, user), user, reason));
  }

  setWip(number: number, as: string, wip: boolean): void {
    const user = this.#account(as);
    this.#throwIfRefused(this.#setWip(this.#visibleChange(number, user), user, wip));
  }

  setPrivate(number: number, as: string, priv: boolean): void {
    const user = this.#account(as);
    this.#throwIfRefused(this.#setPrivate(this.#visibleChange(number, user), user, priv));
  }

  /** Submits as a user through the same code path as REST (throws a GerritDoubleError whose message is the 403/409 text when refused). */
  submitAs(number: number, as: string): void {
    const user = this.#account(as);
    this.#throwIfRefused(this.#submit(this.#visibleChange(number, user), user));
  }

  /** Internal view for assertions. `votes`: label → username → value on the current patch set (copied votes included, zeros left out). */
  changeState(number: number): {
    status: ChangeStatus;
    currentPatchset: number;
    revisions: { patchset: number; sha: string; kind: string; uploader: string }[];
    votes: Record<string, Record<string, number>>;
    submitter?: string;
    wip: boolean;
    private: boolean;
  } {
    const c = this.#changes.get(number);
    if (!c) throw new Error(`gerrit double: no change ${number}`);
    const cur = last(c.patchSets);
    const votes: Record<string, Record<string, number>> = {};
    for (const [label, byAccount] of cur.votes) {
      for (const [id, a] of byAccount) {
        if (a.value !== 0) (votes[label] ??= {})[this.#accountById(id).username] = a.value;
      }
    }
    return {
      status: c.status,
      currentPatchset: cur.number,
      revisions: c.patchSets.map((p) => ({ patchset: p.number, sha: p.sha, kind: p.kind, uploader: p.uploader.username })),
      votes,
      ...(c.submitter ? { submitter: c.submitter.username } : {}),
      wip: c.wip,
      private: c.isPrivate,
    };
  }

  branchTip(project: string, branch = 'master'): string {
    this.#needProject(project);
    const sha = this.#resolve(project, `refs/heads/${shortBranch(branch)}`);
    if (!sha) throw new Error(`gerrit double: no branch ${branch} in ${project}`);
    return sha;
  }

  /** Adds a webhook remote (`remote.NAME.*` in webhooks.config): events raised from now on are posted to it too. */
  addWebhook(w: WebhookRemote): void {
    this.#remotes.push({ url: new URL(w.url), events: w.events ?? [], maxTries: w.maxTries ?? 5, retryIntervalMs: w.retryIntervalMs ?? 1000 });
  }

  /** Stops sending webhooks: events raised meanwhile are dropped (`drop: true`) or queued and sent on resume. Simulates airlock being down. */
  pauseWebhooks(o: { drop: boolean }): void {
    this.#paused = { drop: o.drop };
  }

  /** Resumes sending; resolves when everything queued meanwhile has been delivered or given up. */
  async resumeWebhooks(): Promise<void> {
    this.#paused = undefined;
    const held = this.#held;
    this.#held = [];
    for (const d of held) this.#enqueue(d);
    await this.settle();
  }

  /** Resolves when every event raised so far has been delivered or given up (events held by a pause excepted). */
  settle(): Promise<void> {
    if (this.#idle()) return Promise.resolve();
    return new Promise((resolve) => this.#idleWaiters.push(resolve));
  }

  /** The next `n` REST requests (whose path without `/a` starts with `prefix`, if given) fail with `fault`. */
  failNext(n: number, fault: Fault, prefix = ''): void {
    this.#faults.push({ remaining: n, fault, prefix });
  }

  // -------------------------------------------------------------------------------------------
  // HTTP

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://gerrit');
    const method = req.method ?? 'GET';
    const authenticated = url.pathname === '/a' || url.pathname.startsWith('/a/');
    const path = authenticated ? url.pathname.slice(2) || '/' : url.pathname;
    const record: RequestRecord = { method, path, query: url.search.slice(1), status: 0 };
    this.requests.push(record);

    const fault = this.#faults.find((f) => f.remaining > 0 && path.startsWith(f.prefix));
    if (fault) {
      fault.remaining--;
      this.#faults = this.#faults.filter((f) => f.remaining > 0);
      if (fault.fault === 'reset') {
        req.socket.resetAndDestroy();
        return;
      }
      record.status = fault.fault === 'http-500' ? 500 : 503;
      return sendText(res, record.status, record.status === 500 ? 'Internal server error' : 'Service Unavailable');
    }

    let user: Account | undefined;
    if (authenticated) {
      user = this.#basicAuth(req.headers.authorization);
      if (!user) {
        record.status = 401;
        res.setHeader('WWW-Authenticate', 'Basic realm="Gerrit Code Review"');
        return sendText(res, 401, 'Unauthorized');
      }
      record.user = user.username;
    }

    let answer: HttpAnswer;
    try {
      const raw = await readBody(req, MAX_BODY);
      if (raw === undefined) answer = refusal(413, 'Request Entity Too Large');
      else answer = this.#route(method, path, url.searchParams, raw, req.headers['content-type'], user);
    } catch (e) {
      if (e instanceof HttpAnswer) answer = e;
      else answer = refusal(500, `Internal server error: ${(e as Error).message}`);
    }
    record.status = answer.status;
    // RestApiServlet.replyText: on a read, a text that might be HTML is sent as a JSON string.
    if (answer.text !== undefined && !(method === 'GET' && answer.status >= 400 && /[<&]/.test(answer.text))) return sendText(res, answer.status, answer.text);
    if (answer.text !== undefined) answer = new HttpAnswer(answer.status, answer.text);
    const compact = url.searchParams.get('pp') === '0' || (req.headers.accept ?? '').includes('application/json');
    const json = answer.body === undefined ? '' : JSON.stringify(answer.body, null, compact ? undefined : 2);
    const body = answer.body === undefined ? '' : XSSI + json + '\n';
    res.writeHead(answer.status, { 'Content-Type': 'application/json; charset=UTF-8', 'Content-Disposition': 'attachment', 'X-Content-Type-Options': 'nosniff', 'Content-Length': Buffer.byteLength(body) });
    res.end(body);
  }

  #basicAuth(header: string | undefined): Account | undefined {
    const m = /^Basic\s+([A-Za-z0-9+/=]+)\s*$/i.exec(header ?? '');
    if (!m?.[1]) return undefined;
    const decoded = Buffer.from(m[1], 'base64').toString('utf8');
    const colon = decoded.indexOf(':');
    if (colon < 0) return undefined;
    const username = decoded.slice(0, colon);
    const password = decoded.slice(colon + 1);
    const a = this.#accounts.find((x) => x.username === username);
    return a && a.password !== undefined && a.password === password ? a : undefined;
  }

  #route(method: string, path: string, query: URLSearchParams, raw: Buffer, contentType: string | undefined, user: Account | undefined): HttpAnswer {
    let segs: string[];
    try {
      segs = path.split('/').slice(1).map((s) => decodeURIComponent(s));
    } catch {
      return refusal(400, 'Invalid URL encoding');
    }
    const body = (): JsonObject => parseJsonBody(raw, contentType);
    const [root, id, sub, rev, action] = segs;
    const writeNeedsUser = (): Account => {
      if (!user) throw refusal(403, 'Authentication required');
      return user;
    };

    if (root === 'accounts' && id !== undefined && segs.length === 2) {
      if (method !== 'GET') return refusal(405, 'Method Not Allowed');
      if (id === 'self' || id === 'me') {
        if (!user) return refusal(403, 'Authentication required');
        return new HttpAnswer(200, this.#acctInfo(user, true));
      }
      const a = this.#accounts.find((x) => x.username === id || String(x.id) === id || x.email === id);
      return a ? new HttpAnswer(200, this.#acctInfo(a, true)) : refusal(404, `Account '${id}' not found`);
    }

    if (root === 'changes') {
      if (id === undefined || (id === '' && segs.length === 2)) {
        if (method !== 'GET') return refusal(405, 'Method Not Allowed');
        return this.#queryChanges(query, user);
      }
      const c = this.#findChange(id, user);
      const options = this.#options(query);
      if (sub === undefined) {
        if (method !== 'GET') return refusal(405, 'Method Not Allowed');
        return new HttpAnswer(200, this.#changeInfo(c, options, user));
      }
      if (sub === 'detail' && segs.length === 3) {
        if (method !== 'GET') return refusal(405, 'Method Not Allowed');
        for (const o of ['LABELS', 'DETAILED_LABELS', 'DETAILED_ACCOUNTS', 'MESSAGES']) options.add(o);
        return new HttpAnswer(200, this.#changeInfo(c, options, user));
      }
      if (sub === 'revisions' && rev !== undefined && segs.length === 5 && (action === 'review' || action === 'submit')) {
        if (method !== 'POST') return refusal(405, 'Method Not Allowed');
        const ps = this.#revision(c, rev);
        const who = writeNeedsUser();
        if (action === 'submit') {
          if (ps !== last(c.patchSets)) return refusal(409, `revision ${ps.sha} is not current revision`);
          body();
          return this.#submit(c, who);
        }
        const input = body();
        const labels = input.labels;
        if (labels !== undefined && (labels === null || typeof labels !== 'object' || Array.isArray(labels) || !Object.values(labels).every((v) => typeof v === 'number' && Number.isInteger(v)))) {
          return refusal(400, 'labels must be a map of label names to integers');
        }
        if (input.message !== undefined && typeof input.message !== 'string') return refusal(400, 'message must be a string');
        if (input.tag !== undefined && typeof input.tag !== 'string') return refusal(400, 'tag must be a string');
        return this.#postReview(c, ps, who, {
          message: typeof input.message === 'string' ? input.message : undefined,
          labels: labels === undefined ? undefined : (labels as Record<string, number>),
          tag: typeof input.tag === 'string' ? input.tag : undefined,
        });
      }
      if (segs.length === 3 && (sub === 'submit' || sub === 'abandon' || sub === 'restore' || sub === 'wip' || sub === 'ready' || sub === 'private' || sub === 'private.delete')) {
        if (sub === 'private' && method === 'DELETE') return this.#setPrivate(c, writeNeedsUser(), false);
        if (method !== 'POST') return refusal(405, 'Method Not Allowed');
        const who = writeNeedsUser();
        const input = body();
        const message = typeof input.message === 'string' && input.message.trim() !== '' ? input.message : undefined;
        switch (sub) {
          case 'submit':
            return this.#submit(c, who);
          case 'abandon':
            return this.#abandon(c, who, message);
          case 'restore':
            return this.#restore(c, who, message);
          case 'wip':
            return this.#setWip(c, who, true);
          case 'ready':
            return this.#setWip(c, who, false);
          case 'private':
            return this.#setPrivate(c, who, true);
          default:
            return this.#setPrivate(c, who, false);
        }
      }
      return refusal(404, 'Not Found');
    }

    if (root === 'projects' && id !== undefined && sub === 'branches') {
      if (method !== 'GET') return refusal(405, 'Method Not Allowed');
      if (!this.#projects.has(id)) return refusal(404, `Not found: ${id}`);
      if (rev === undefined || (rev === '' && segs.length === 4)) {
        const refs = this.#git(id, ['for-each-ref', '--format=%(refname) %(objectname)', 'refs/heads/']).out.split('\n').filter(Boolean);
        const head = this.#git(id, ['symbolic-ref', 'HEAD']).out;
        return new HttpAnswer(200, [{ ref: 'HEAD', revision: shortBranch(head) }, ...refs.map((l) => ({ ref: l.split(' ')[0] ?? '', revision: l.split(' ')[1] ?? '' }))]);
      }
      if (segs.length !== 4) return refusal(404, 'Not Found');
      const sha = this.#resolve(id, `refs/heads/${shortBranch(rev)}`);
      if (!sha) return refusal(404, `Not found: ${rev}`);
      return new HttpAnswer(200, { ref: `refs/heads/${shortBranch(rev)}`, revision: sha });
    }

    if (root === 'groups' && id !== undefined && sub === 'members' && (segs.length === 3 || (segs.length === 4 && rev === ''))) {
      if (method !== 'GET') return refusal(405, 'Method Not Allowed');
      if (!user) return refusal(404, `Not found: ${id}`);
      if (id === REGISTERED || id === ANONYMOUS) return refusal(405, 'Method Not Allowed');
      const members = this.#accounts.filter((a) => a.groups.includes(id));
      if (members.length === 0) return refusal(404, `Not found: ${id}`);
      members.sort((a, b) => (a.name ?? '').localeCompare(b.name ?? '') || (a.email ?? '').localeCompare(b.email ?? '') || a.id - b.id);
      return new HttpAnswer(200, members.map((a) => this.#acctInfo(a, true)));
    }

    return refusal(404, 'Not Found');
  }

  #options(query: URLSearchParams): Set<string> {
    const out = new Set<string>();
    for (const o of [...query.getAll('o'), ...query.getAll('O')]) {
      if (!LIST_OPTIONS.has(o)) throw refusal(400, `"${o}" is not a valid value for "-o"`);
      out.add(o);
    }
    return out;
  }

  // -------------------------------------------------------------------------------------------
  // Changes: lookup and JSON

  #findChange(id: string, user: Account | undefined): Change {
    const notFound = refusal(404, `Not found: ${id}`);
    let found: Change | undefined;
    const triplet = /^(.+)~(.+)~(I[0-9a-f]{40})$/.exec(id);
    const projectNumber = /^(.+)~([0-9]+)$/.exec(id);
    if (triplet) {
      const [, project, branch, key] = triplet;
      found = [...this.#changes.values()].find((c) => c.project === project && c.branch === shortBranch(branch ?? '') && c.changeId === key);
    } else if (projectNumber) {
      const c = this.#changes.get(Number(projectNumber[2]));
      found = c && c.project === projectNumber[1] ? c : undefined;
    } else if (/^[0-9]+$/.test(id)) {
      found = this.#changes.get(Number(id));
    } else if (/^I[0-9a-f]{40}$/.test(id)) {
      const all = [...this.#changes.values()].filter((c) => c.changeId === id && this.#canSee(c, user));
      if (all.length > 1) throw refusal(404, `Multiple changes found for ${id}`);
      found = all[0];
    }
    if (!found || !this.#canSee(found, user)) throw notFound;
    return found;
  }

  #revision(c: Change, rev: string): PatchSet {
    let ps: PatchSet | undefined;
    if (rev === 'current') ps = last(c.patchSets);
    else if (/^[0-9]{1,6}$/.test(rev) && c.patchSets.some((p) => p.number === Number(rev))) ps = c.patchSets.find((p) => p.number === Number(rev));
    else if (/^[0-9a-f]{4,40}$/.test(rev)) {
      const matches = c.patchSets.filter((p) => p.sha.startsWith(rev));
      ps = matches.length === 1 ? matches[0] : undefined;
    }
    if (!ps) throw refusal(404, `Not found: ${rev}`);
    return ps;
  }

  #canSee(c: Change, user: Account | undefined): boolean {
    if (!c.isPrivate) return true;
    return user !== undefined && (user.id === c.owner.id || c.reviewers.has(user.id) || c.ccs.has(user.id));
  }

  #changeInfo(c: Change, options: Set<string>, viewer: Account | undefined): JsonObject {
    const detailed = options.has('DETAILED_ACCOUNTS');
    const cur = last(c.patchSets);
    const out: JsonObject = {
      id: `${encodeURIComponent(c.project)}~${c.number}`,
      triplet_id: `${encodeURIComponent(c.project)}~${encodeURIComponent(c.branch)}~${c.changeId}`,
      project: c.project,
      branch: c.branch,
      topic: c.topic,
      hashtags: [],
      change_id: c.changeId,
      subject: this.#subject(c),
      status: c.status,
      created: gerritTime(c.created),
      updated: gerritTime(c.updated),
      submitted: c.submitted === undefined ? undefined : gerritTime(c.submitted),
      submitter: c.submitter ? this.#acctInfo(c.submitter, detailed) : undefined,
      submit_type: c.status === 'NEW' ? 'MERGE_IF_NECESSARY' : undefined,
      submittable: c.status === 'NEW' && options.has('SUBMITTABLE') ? this.#submittable(c) : undefined,
      insertions: cur.insertions,
      deletions: cur.deletions,
      total_comment_count: 0,
      unresolved_comment_count: 0,
      is_private: c.isPrivate ? true : undefined,
      work_in_progress: c.wip ? true : undefined,
      has_review_started: c.hasReviewStarted ? true : undefined,
      _number: c.number,
      owner: this.#acctInfo(c.owner, detailed),
    };
    if (options.has('LABELS') || options.has('DETAILED_LABELS')) {
      out.labels = this.#labelsInfo(c, options.has('LABELS'), options.has('DETAILED_LABELS'), detailed);
      if (options.has('DETAILED_LABELS')) {
        if (viewer) out.permitted_labels = c.status === 'ABANDONED' ? {} : this.#permittedLabels(c, viewer);
        const reviewers: JsonObject = {};
        const rv = [...c.reviewers].sort((a, b) => a - b);
        const cc = [...c.ccs].filter((x) => !c.reviewers.has(x)).sort((a, b) => a - b);
        if (rv.length) reviewers.REVIEWER = rv.map((x) => this.#acctInfo(this.#accountById(x), detailed));
        if (cc.length) reviewers.CC = cc.map((x) => this.#acctInfo(this.#accountById(x), detailed));
        out.reviewers = reviewers;
      }
    }
    if (options.has('MESSAGES')) {
      out.messages = c.messages.map((m) => ({
        id: m.id,
        author: m.author ? this.#acctInfo(m.author, detailed) : undefined,
        date: gerritTime(m.date),
        message: m.message,
        tag: m.tag,
        _revision_number: m.patchset,
      }));
    }
    if (options.has('CURRENT_REVISION') || options.has('ALL_REVISIONS')) {
      const revisions: JsonObject = {};
      for (const ps of options.has('ALL_REVISIONS') ? c.patchSets : [cur]) {
        const isCurrent = ps === cur;
        const withCommit = options.has('ALL_COMMITS') || (isCurrent && options.has('CURRENT_COMMIT'));
        revisions[ps.sha] = {
          kind: ps.kind,
          _number: ps.number,
          created: gerritTime(ps.created),
          uploader: this.#acctInfo(ps.uploader, detailed),
          ref: ps.ref,
          fetch: {},
          commit: withCommit ? this.#commitInfo(c.project, ps.sha) : undefined,
        };
      }
      out.current_revision = cur.sha;
      out.revisions = revisions;
    }
    return out;
  }

  #commitInfo(project: string, sha: string): JsonObject {
    const commit = this.#readCommit(project, sha);
    const person = (p: CommitData['author']): JsonObject => ({ name: p.name, email: p.email, date: gerritTime(p.time * 1000), tz: p.tz });
    return {
      parents: commit.parents.map((p) => ({ commit: p, subject: shortMessage(this.#readCommit(project, p).message) })),
      author: person(commit.author),
      committer: person(commit.committer),
      subject: shortMessage(commit.message),
      message: commit.message,
    };
  }

  #subject(c: Change): string {
    return shortMessage(this.#readCommit(c.project, last(c.patchSets).sha).message);
  }

  #acctInfo(a: Account, detailed: boolean): JsonObject {
    return detailed ? { _account_id: a.id, name: a.name, email: a.email, username: a.username } : { _account_id: a.id };
  }

  #labelsInfo(c: Change, standard: boolean, detailed: boolean, detailedAccounts: boolean): JsonObject {
    const cur = last(c.patchSets);
    const out: JsonObject = {};
    for (const label of this.#labels) {
      const info: JsonObject = {};
      const rec = this.#labelRecord(c, label);
      if (standard) {
        if (rec.status === 'OK' && rec.by) info.approved = this.#acctInfo(rec.by, detailedAccounts);
        if (rec.status === 'REJECT' && rec.by) {
          info.rejected = this.#acctInfo(rec.by, detailedAccounts);
          info.blocking = true;
        }
      }
      if (rec.status === 'MAY') info.optional = true;
      if (standard && info.approved === undefined && info.rejected === undefined) {
        for (const [id, a] of sortedVotes(cur.votes.get(label.name))) {
          if (a.value === 0 || info.approved !== undefined || info.rejected !== undefined) continue;
          const acct = this.#acctInfo(this.#accountById(id), detailedAccounts);
          if (a.value === label.min) info.rejected = acct;
          else if (a.value === label.max) info.approved = acct;
          else if (a.value < 0) {
            info.disliked = acct;
            info.value = a.value;
          } else if (info.disliked === undefined) {
            info.recommended = acct;
            info.value = a.value;
          }
        }
      }
      if (detailed) {
        const users = new Set<number>(c.reviewers);
        for (const ps of c.patchSets) for (const byAccount of ps.votes.values()) for (const id of byAccount.keys()) users.add(id);
        const all: JsonObject[] = [];
        for (const id of [...users].sort((a, b) => a - b)) {
          const acct = this.#accountById(id);
          const a = cur.votes.get(label.name)?.get(id);
          const range = c.status === 'NEW' ? this.#range(label, acct) : undefined;
          const canVote = this.#range(label, acct) !== undefined;
          all.push({
            value: a ? a.value : canVote ? 0 : undefined,
            date: a ? gerritTime(a.granted) : undefined,
            tag: a?.tag,
            post_submit: a?.postSubmit ? true : undefined,
            permitted_voting_range: range,
            ...this.#acctInfo(acct, detailedAccounts),
          });
        }
        info.all = all;
        info.values = labelValues(label);
        info.default_value = 0;
      }
      out[label.name] = info;
    }
    return out;
  }

  #permittedLabels(c: Change, viewer: Account): JsonObject {
    const out: JsonObject = {};
    for (const label of this.#labels) {
      const r = this.#range(label, viewer);
      if (!r || (r.min === 0 && r.max === 0)) continue;
      let floor = r.min;
      if (c.status === 'MERGED') floor = Math.max(floor, last(c.patchSets).votes.get(label.name)?.get(viewer.id)?.value ?? 0);
      const values: string[] = [];
      for (let v = floor; v <= r.max; v++) values.push(formatValue(v));
      out[label.name] = values;
    }
    return out;
  }

  // -------------------------------------------------------------------------------------------
  // Labels, permissions, submit records

  #label(name: string): Label | undefined {
    return this.#labels.find((l) => l.name === name);
  }

  /** The widest range among the rules matching the account (by username or group); undefined: may not vote. */
  #range(label: Label, a: Account): { min: number; max: number } | undefined {
    const matching = label.ranges.filter((r) => r.who === a.username || r.who === REGISTERED || a.groups.includes(r.who));
    if (matching.length === 0) return undefined;
    return { min: Math.max(label.min, Math.min(...matching.map((r) => r.min))), max: Math.min(label.max, Math.max(...matching.map((r) => r.max))) };
  }

  #canSubmit(a: Account): boolean {
    return this.#submitters.some((who) => who === a.username || who === REGISTERED || a.groups.includes(who));
  }

  #labelRecord(c: Change, label: Label): { status: 'OK' | 'REJECT' | 'NEED' | 'MAY'; by?: Account } {
    if (label.fn === 'NoBlock') return { status: 'MAY' };
    const votes = sortedVotes(last(c.patchSets).votes.get(label.name));
    const min = votes.find(([, a]) => a.value === label.min && a.value < 0);
    if (min) return { status: 'REJECT', by: this.#accountById(min[0]) };
    const max = votes.find(([, a]) => a.value === label.max && a.value > 0);
    if (max) return { status: 'OK', by: this.#accountById(max[0]) };
    return { status: 'NEED' };
  }

  #submittable(c: Change): boolean {
    return this.#labels.every((l) => ['OK', 'MAY'].includes(this.#labelRecord(c, l).status));
  }

  /** What blocks the change by its submit rules and state, as MergeOp words it; empty: nothing. */
  #problems(c: Change): string[] {
    if (c.status !== 'NEW') return [`Change ${c.number} is ${c.status.toLowerCase()}`];
    if (c.wip) return [`Change ${c.number} is work in progress`];
    const labels: string[] = [];
    for (const l of this.#labels) {
      const r = this.#labelRecord(c, l);
      if (r.status === 'REJECT') labels.push(`blocked by ${l.name}`);
      if (r.status === 'NEED') labels.push(`needs ${l.name}`);
    }
    return labels.length ? [labels.join('; ')] : [];
  }

  // -------------------------------------------------------------------------------------------
  // Query

  #queryChanges(query: URLSearchParams, user: Account | undefined): HttpAnswer {
    const qs = query.getAll('q');
    const options = this.#options(query);
    const nRaw = query.get('n') ?? query.get('limit');
    const sRaw = query.get('S') ?? query.get('start');
    const n = nRaw === null ? QUERY_LIMIT : Number(nRaw);
    const start = sRaw === null ? 0 : Number(sRaw);
    if (!Number.isInteger(n) || n < 0) return refusal(400, `"${nRaw ?? ''}" is not a valid value for "-n"`);
    if (!Number.isInteger(start) || start < 0) return refusal(400, `"${sRaw ?? ''}" is not a valid value for "-S"`);
    const one = (q: string): JsonObject[] => {
      const { predicate, limit } = this.#compileQuery(q, user);
      const lim = Math.min(n === 0 ? QUERY_LIMIT : n, limit ?? QUERY_LIMIT, QUERY_LIMIT);
      const matched = [...this.#changes.values()].filter((c) => this.#canSee(c, user) && predicate(c));
      matched.sort((a, b) => b.updated - a.updated || b.number - a.number);
      const page = matched.slice(start, start + lim);
      const infos = page.map((c) => this.#changeInfo(c, options, user));
      const lastInfo = infos[infos.length - 1];
      if (lastInfo && matched.length > start + lim) lastInfo._more_changes = true;
      return infos;
    };
    if (qs.length === 0) return new HttpAnswer(200, one('status:open'));
    if (qs.length === 1) return new HttpAnswer(200, one(qs[0] ?? ''));
    return new HttpAnswer(200, qs.map(one));
  }

  #compileQuery(q: string, user: Account | undefined): { predicate: (c: Change) => boolean; limit?: number } {
    if (q.trim() === '') throw refusal(400, 'query is empty');
    const ast = parseQuery(q);
    let limit: number | undefined;
    const compile = (node: QueryNode): ((c: Change) => boolean) => {
      switch (node.kind) {
        case 'and': {
          const parts = node.children.map(compile);
          return (c) => parts.every((p) => p(c));
        }
        case 'or': {
          const parts = node.children.map(compile);
          return (c) => parts.some((p) => p(c));
        }
        case 'not': {
          const inner = compile(node.child);
          return (c) => !inner(c);
        }
        case 'word':
          return this.#defaultField(node.value);
        case 'term':
          if (node.op === 'limit') {
            const v = Number(node.value);
            if (!Number.isInteger(v) || v < 1) throw refusal(400, `Invalid limit: ${node.value}`);
            limit = v;
            return () => true;
          }
          return this.#operator(node.op, node.value, user);
      }
    };
    return { predicate: compile(ast), ...(limit !== undefined ? { limit } : {}) };
  }

  #defaultField(value: string): (c: Change) => boolean {
    if (/^[0-9]+$/.test(value)) return (c) => c.number === Number(value);
    if (/^I[0-9a-f]{4,40}$/.test(value)) return (c) => c.changeId.startsWith(value);
    if (/^[0-9a-f]{4,40}$/.test(value)) return (c) => c.patchSets.some((p) => p.sha.startsWith(value));
    throw refusal(400, `Unsupported query: ${value}`);
  }

  #operator(op: string, value: string, user: Account | undefined): (c: Change) => boolean {
    const status = (v: string): ((c: Change) => boolean) => {
      switch (v.toLowerCase()) {
        case 'open':
        case 'pending':
        case 'new':
          return (c) => c.status === 'NEW';
        case 'merged':
          return (c) => c.status === 'MERGED';
        case 'abandoned':
          return (c) => c.status === 'ABANDONED';
        case 'closed':
          return (c) => c.status !== 'NEW';
        default:
          throw refusal(400, `Unrecognized value: ${v}`);
      }
    };
    switch (op) {
      case 'status':
        return status(value);
      case 'is':
        switch (value.toLowerCase()) {
          case 'wip':
            return (c) => c.wip;
          case 'private':
            return (c) => c.isPrivate;
          case 'submittable':
            return (c) => c.status === 'NEW' && this.#submittable(c);
          case 'open':
          case 'pending':
          case 'new':
          case 'merged':
          case 'abandoned':
          case 'closed':
            return status(value);
          default:
            throw refusal(400, `Invalid query: is:${value}`);
        }
      case 'project':
      case 'p':
        return (c) => c.project === value;
      case 'projects':
        return (c) => c.project.startsWith(value);
      case 'branch':
        return (c) => c.branch === shortBranch(value);
      case 'topic':
        return (c) => c.topic === value;
      case 'commit':
        if (!/^[0-9a-f]{4,40}$/.test(value)) throw refusal(400, `Invalid commit: ${value}`);
        return (c) => c.patchSets.some((p) => p.sha.startsWith(value));
      case 'change': {
        if (/^[0-9]+$/.test(value)) return (c) => c.number === Number(value);
        if (/^I[0-9a-f]{4,40}$/.test(value)) return (c) => c.changeId.startsWith(value);
        throw refusal(400, `Invalid change: ${value}`);
      }
      case 'owner': {
        if (value === 'self') {
          if (!user) throw refusal(400, 'self requires authentication');
          return (c) => c.owner.id === user.id;
        }
        const a = this.#accounts.filter((x) => x.username === value || x.email === value || x.name === value || String(x.id) === value);
        if (a.length === 0) throw refusal(400, `Account '${value}' not found`);
        return (c) => a.some((x) => x.id === c.owner.id);
      }
      case 'after':
      case 'since': {
        const t = parseQueryTime(value);
        return (c) => c.updated >= t;
      }
      case 'before':
      case 'until': {
        const t = parseQueryTime(value);
        return (c) => c.updated <= t;
      }
      case 'label': {
        const m = /^([A-Za-z0-9-]+?)(=|>=|<=|\+|-)([0-9]+|MAX|MIN|max|min)$/.exec(value);
        const label = m ? this.#label(m[1] ?? '') : undefined;
        if (!m || !label) throw refusal(400, `Invalid label: ${value}`);
        const cmp = m[2] ?? '=';
        const raw = (m[3] ?? '0').toUpperCase();
        const v = raw === 'MAX' ? label.max : raw === 'MIN' ? label.min : cmp === '-' ? -Number(raw) : Number(raw);
        const test = (x: number): boolean => (cmp === '>=' ? x >= v : cmp === '<=' ? x <= v : x === v);
        return (c) => [...(last(c.patchSets).votes.get(label.name)?.values() ?? [])].some((a) => a.value !== 0 && test(a.value));
      }
      default:
        throw refusal(400, `Unsupported operator ${op}:${value}`);
    }
  }

  // -------------------------------------------------------------------------------------------
  // Review

  #postReview(c: Change, ps: PatchSet, user: Account, input: { message: string | undefined; labels: Record<string, number> | undefined; tag: string | undefined }): HttpAnswer {
    // PostReview.checkLabels: unknown labels and values are dropped (400 with strictLabels), 0 is
    // always allowed, anything else must be in the account's permitted range (403).
    let labels: Record<string, number> | undefined;
    if (input.labels) {
      labels = {};
      for (const [name, value] of Object.entries(input.labels)) {
        const label = this.#label(name);
        if (!label) {
          if (this.#strictLabels) return refusal(400, `label "${name}" is not a configured label`);
          continue;
        }
        if (value !== 0 && (value < label.min || value > label.max)) {
          if (this.#strictLabels) return refusal(400, `label "${name}": ${value} is not a valid value`);
          continue;
        }
        const range = this.#range(label, user);
        if (value !== 0 && (!range || value < range.min || value > range.max)) return refusal(403, `Applying label "${label.name}": ${value} is restricted`);
        labels[label.name] = value;
      }
    }
    const inLabels = labels ?? {};
    const closed = c.status !== 'NEW';
    const approvals = new Map<string, number>();
    const oldApprovals = new Map<string, number | null>();
    const deltas: { label: string; value: number }[] = [];
    const changed: { label: Label; value: number }[] = [];
    let newVote = false;
    if (!(Object.keys(inLabels).length === 0 && closed)) {
      for (const label of this.#labels) {
        const current = ps.votes.get(label.name)?.get(user.id);
        const prev = current?.value ?? 0;
        const want = label.name in inLabels ? (inLabels[label.name] ?? 0) : prev;
        approvals.set(label.name, 0);
        if (want === 0) {
          oldApprovals.set(label.name, null);
          if (current) {
            if (current.value !== 0) {
              deltas.push({ label: label.name, value: 0 });
              oldApprovals.set(label.name, prev);
            }
            changed.push({ label, value: 0 });
          }
        } else if (current && (current.value !== want || (label.name in inLabels && current.copied))) {
          deltas.push({ label: label.name, value: want });
          oldApprovals.set(label.name, prev);
          approvals.set(label.name, want);
          changed.push({ label, value: want });
        } else if (current) {
          oldApprovals.set(label.name, null);
          approvals.set(label.name, want);
        } else {
          deltas.push({ label: label.name, value: want });
          oldApprovals.set(label.name, prev);
          approvals.set(label.name, want);
          changed.push({ label, value: want });
          newVote = true;
        }
      }
      // PostReviewOp.validatePostSubmitLabels
      if (closed && changed.length > 0) {
        if (c.status !== 'MERGED') return refusal(409, 'change is closed');
        const reduced = changed.filter(({ label, value }) => value < (ps.votes.get(label.name)?.get(user.id)?.value ?? 0)).map(({ label }) => label.name);
        if (reduced.length) return refusal(409, `Cannot reduce vote on labels for closed change: ${[...new Set(reduced)].sort().join(', ')}`);
      }
    }

    const ts = this.#tick();
    for (const { label, value } of changed) {
      const byAccount = ps.votes.get(label.name) ?? new Map<number, Approval>();
      ps.votes.set(label.name, byAccount);
      if (value === 0) byAccount.delete(user.id);
      else byAccount.set(user.id, { value, granted: ts, tag: input.tag, copied: false, postSubmit: c.status === 'MERGED' });
    }
    const copiedNotes = ps === last(c.patchSets) ? [] : this.#copyForward(c, ps, user, changed);
    let dirty = changed.length > 0;
    if (newVote) {
      c.reviewers.add(user.id);
      c.ccs.delete(user.id);
    } else if (!c.reviewers.has(user.id) && !c.ccs.has(user.id) && !Object.values(inLabels).some((v) => v !== 0)) {
      c.ccs.add(user.id);
      dirty = true;
    }

    const msg = (input.message ?? '').trim();
    let buf = deltas.map((d) => formatVote(d.label, d.value)).sort().map((s) => ` ${s}`).join('');
    if (copiedNotes.length) buf += `\n\nCopied votes on follow-up patch sets have been updated:${copiedNotes.map((n) => `\n* ${n}`).join('')}`;
    if (msg) buf += `\n\n${msg}`;
    let comment: string | undefined;
    if (buf.length > 0) {
      comment = `Patch Set ${ps.number}:${buf}`;
      this.#addMessage(c, user, ts, comment, input.tag, ps.number);
      dirty = true;
    }
    if (dirty) c.updated = ts;
    if (comment !== undefined) {
      const approvalAttrs = [...approvals].map(([label, value]) => {
        const old = oldApprovals.get(label);
        return { type: label, description: label, value: String(value), oldValue: old === null || old === undefined ? undefined : String(old) };
      });
      this.#raiseChangeEvent(c, 'comment-added', ts, { author: this.#acctAttr(user), approvals: approvalAttrs.length ? approvalAttrs : undefined, comment }, ps);
    }
    return new HttpAnswer(200, { labels: labels === undefined ? undefined : labels, change_info: this.#changeInfo(c, new Set(), user) });
  }

  /** Votes just cast on an outdated patch set, copied to the following ones while the label's rules allow (PostReviewOp.updateCopiedApprovalsOnFollowUpPatchSets). */
  #copyForward(c: Change, ps: PatchSet, user: Account, changed: { label: Label; value: number }[]): string[] {
    const notes: string[] = [];
    const followUps = c.patchSets.filter((p) => p.number > ps.number);
    for (const { label, value } of changed) {
      const copiedTo: number[] = [];
      let copyable = value !== 0;
      for (const f of followUps) {
        const byAccount = f.votes.get(label.name) ?? new Map<number, Approval>();
        f.votes.set(label.name, byAccount);
        const existing = byAccount.get(user.id);
        if (existing && !existing.copied) break;
        copyable = copyable && this.#copies(label, f.kind, value);
        if (copyable) {
          byAccount.set(user.id, { value, granted: existing?.granted ?? this.#lastTs, tag: undefined, copied: true, postSubmit: false });
          copiedTo.push(f.number);
        } else if (existing) byAccount.delete(user.id);
        else if (value === 0) break;
      }
      if (copiedTo.length) notes.push(`${formatVote(label.name, value)} has been copied to patch set ${copiedTo.join(', ')}.`);
    }
    return notes;
  }

  #copies(label: Label, kind: ChangeKind, value: number): boolean {
    return value !== 0 && (label.copyOnKinds.has(kind) || (label.copyMin && value === label.min));
  }

  /** Votes of the previous patch set that the labels' copy rules carry to a new one. */
  #copyOnUpload(prev: PatchSet, next: PatchSet): void {
    for (const label of this.#labels) {
      for (const [id, a] of prev.votes.get(label.name) ?? []) {
        if (!this.#copies(label, next.kind, a.value)) continue;
        const byAccount = next.votes.get(label.name) ?? new Map<number, Approval>();
        next.votes.set(label.name, byAccount);
        byAccount.set(id, { ...a, copied: true });
      }
    }
  }

  // -------------------------------------------------------------------------------------------
  // State changes: abandon, restore, work in progress, private

  #abandon(c: Change, user: Account, reason: string | undefined): HttpAnswer {
    if (user.id !== c.owner.id && !this.#canSubmit(user)) return refusal(403, 'not permitted: abandon');
    if (c.status !== 'NEW') return refusal(409, `change is ${c.status.toLowerCase()}`);
    const ts = this.#tick();
    c.status = 'ABANDONED';
    c.updated = ts;
    this.#addMessage(c, user, ts, reason ? `Abandoned\n\n${reason.trim()}` : 'Abandoned', undefined, last(c.patchSets).number);
    this.#raiseChangeEvent(c, 'change-abandoned', ts, { abandoner: this.#acctAttr(user), reason }, last(c.patchSets));
    return new HttpAnswer(200, this.#changeInfo(c, new Set(), user));
  }

  #restore(c: Change, user: Account, reason: string | undefined): HttpAnswer {
    if (user.id !== c.owner.id && !this.#canSubmit(user)) return refusal(403, 'not permitted: restore');
    if (c.status !== 'ABANDONED') return refusal(409, `change is ${c.status.toLowerCase()}`);
    const ts = this.#tick();
    c.status = 'NEW';
    c.updated = ts;
    this.#addMessage(c, user, ts, reason ? `Restored\n\n${reason.trim()}` : 'Restored', undefined, last(c.patchSets).number);
    this.#raiseChangeEvent(c, 'change-restored', ts, { restorer: this.#acctAttr(user), reason }, last(c.patchSets));
    return new HttpAnswer(200, this.#changeInfo(c, new Set(), user));
  }

  #setWip(c: Change, user: Account, wip: boolean): HttpAnswer {
    if (user.id !== c.owner.id && user.id !== last(c.patchSets).uploader.id) return refusal(403, 'not allowed to toggle work in progress');
    if (c.status !== 'NEW') return refusal(409, `change is ${c.status.toLowerCase()}`);
    if (wip && c.wip) return refusal(409, 'change is already work in progress');
    if (!wip && !c.wip) return refusal(409, 'change is not work in progress');
    const ts = this.#tick();
    c.wip = wip;
    if (!wip) c.hasReviewStarted = true;
    c.updated = ts;
    this.#addMessage(c, user, ts, wip ? 'Set Work In Progress' : 'Set Ready For Review', undefined, last(c.patchSets).number);
    this.#raiseChangeEvent(c, 'wip-state-changed', ts, { changer: this.#acctAttr(user) }, last(c.patchSets));
    return new HttpAnswer(200, undefined, 'OK');
  }

  #setPrivate(c: Change, user: Account, priv: boolean): HttpAnswer {
    if (user.id !== c.owner.id) return refusal(403, priv ? 'not allowed to mark private' : 'not allowed to unmark private');
    if (priv && c.status === 'MERGED') return refusal(409, 'cannot set a merged change to private');
    if (!priv && !c.isPrivate) return refusal(409, 'change is not private');
    if (priv && c.isPrivate) return new HttpAnswer(200, undefined, 'OK');
    const ts = this.#tick();
    c.isPrivate = priv;
    c.updated = ts;
    this.#addMessage(c, user, ts, priv ? 'Set private' : 'Unset private', undefined, last(c.patchSets).number);
    this.#raiseChangeEvent(c, 'private-state-changed', ts, { changer: this.#acctAttr(user) }, last(c.patchSets));
    return priv ? new HttpAnswer(201, undefined, 'OK') : new HttpAnswer(204, undefined, '');
  }

  // -------------------------------------------------------------------------------------------
  // Submit (MERGE_IF_NECESSARY)

  #submit(c: Change, user: Account): HttpAnswer {
    if (!this.#canSubmit(user)) return refusal(403, 'not permitted: submit');
    if (c.status !== 'NEW') return refusal(409, `change is ${c.status.toLowerCase()}`);
    const branchRef = `refs/heads/${c.branch}`;
    const tip = this.#resolve(c.project, branchRef);
    if (!tip) return refusal(409, `destination branch "${branchRef}" not found.`);
    const top = last(c.patchSets).sha;

    // The change set: this change and the open changes on its branch owning (any patch set of) a
    // commit between the branch tip and this change (MergeSuperSet; submitWholeTopic off).
    const between = this.#revList(c.project, top, tip);
    const set = new Map<number, Change>([[c.number, c]]);
    for (const other of this.#changes.values()) {
      if (other.project === c.project && other.branch === c.branch && other.status === 'NEW' && other.patchSets.some((p) => between.includes(p.sha))) set.set(other.number, other);
    }
    const members = [...set.values()].sort((a, b) => a.number - b.number);
    const fail = (problems: Map<number, string[]>): HttpAnswer => {
      const lines = [...problems].sort(([a], [b]) => a - b).map(([n, p]) => `Change ${n}: ${p.join('; ')}`);
      return refusal(409, `Failed to submit ${members.length} change${members.length > 1 ? 's' : ''} due to the following problems:\n${lines.join('\n')}`);
    };

    // MergeOp.checkSubmitRulesAndState
    const problems = new Map<number, string[]>();
    for (const m of members) {
      const p = this.#problems(m);
      if (p.length) problems.set(m.number, p);
    }
    if (problems.size) return fail(problems);

    // Integration: every commit to merge must be the current patch set of a change in the set.
    const mergeable = new Set(members.map((m) => last(m.patchSets).sha));
    for (const m of members) {
      const own = last(m.patchSets).sha;
      const missing = this.#revList(c.project, own, tip).find((sha) => sha !== own && !mergeable.has(sha));
      if (missing) problems.set(m.number, [`Depends on commit that cannot be merged. ${this.#missingDependency(c.project, own, missing, user)}`]);
    }
    if (problems.size) return fail(problems);

    let newTip: string;
    if (this.#isAncestor(c.project, top, tip)) newTip = tip; // already merged
    else if (this.#isAncestor(c.project, tip, top)) newTip = top; // fast-forward
    else {
      const merged = this.#mergeTrees(c.project, tip, top);
      if (!merged) {
        const conflict = 'Change could not be merged due to a path conflict. Please rebase the change locally and upload the rebased commit for review.';
        for (const m of members) problems.set(m.number, [conflict]);
        return fail(problems);
      }
      const inMerge = between.filter((sha) => mergeable.has(sha)).map((sha) => members.find((m) => last(m.patchSets).sha === sha)).filter((m): m is Change => m !== undefined);
      newTip = this.#commitTree(c.project, merged, [tip, top], mergeMessage(inMerge.map((m) => ({ subject: this.#subject(m), changeId: m.changeId, topic: m.topic })), c.branch), identOf(user), SERVER_IDENT);
    }
    if (newTip !== tip) this.#git(c.project, ['update-ref', branchRef, newTip, tip]);

    const ts = this.#tick();
    for (const m of members) {
      m.status = 'MERGED';
      m.submitted = ts;
      m.submitter = user;
      m.updated = ts;
      this.#addMessage(m, user, ts, 'Change has been successfully merged', 'autogenerated:gerrit:merged', last(m.patchSets).number);
    }
    if (newTip !== tip) this.#raiseRefUpdated(c.project, branchRef, tip, newTip, user, ts);
    for (const m of members) this.#raiseChangeEvent(m, 'change-merged', ts, { submitter: this.#acctAttr(user), newRev: newTip }, last(m.patchSets));
    return new HttpAnswer(200, this.#changeInfo(c, new Set(), user));
  }

  /** CommitMergeStatus.createMissingDependencyMessage. */
  #missingDependency(project: string, commit: string, other: string, user: Account): string {
    const owners = [...this.#changes.values()].filter((c) => c.project === project && c.patchSets.some((p) => p.sha === other) && this.#canSee(c, user));
    const one = owners[0];
    if (!one) return `Commit ${commit} depends on commit ${other} which cannot be merged. Is the change of this commit not visible to '${user.username}' or was it deleted?`;
    if (owners.length > 1) return `Commit ${commit} depends on commit ${other} of changes [${owners.map((o) => o.number).join(', ')}] which cannot be merged.`;
    const ps = one.patchSets.find((p) => p.sha === other);
    if (ps && ps !== last(one.patchSets)) {
      return `Commit ${commit} depends on commit ${other}, which is outdated patch set ${ps.number} of change ${one.number}. The latest patch set is ${last(one.patchSets).number}.`;
    }
    return `Commit ${commit} depends on commit ${other} of change ${one.number} which cannot be merged.`;
  }

  /** Changes whose current patch set a direct push made reachable are closed as merged (ReceiveCommits' auto-close). */
  #autoClose(project: string, branch: string, oldTip: string | undefined, newTip: string, pusher: Account | undefined, ts: number): void {
    const fresh = oldTip ? this.#revList(project, newTip, oldTip) : this.#revList(project, newTip, undefined);
    for (const c of [...this.#changes.values()].sort((a, b) => a.number - b.number)) {
      if (c.project !== project || c.branch !== branch || c.status !== 'NEW' || !fresh.includes(last(c.patchSets).sha)) continue;
      c.status = 'MERGED';
      c.submitted = ts;
      c.submitter = pusher;
      c.updated = ts;
      this.#addMessage(c, pusher, ts, `Change has been successfully pushed.`, 'autogenerated:gerrit:merged', last(c.patchSets).number);
      this.#raiseChangeEvent(c, 'change-merged', ts, { submitter: pusher ? this.#acctAttr(pusher) : undefined, newRev: newTip }, last(c.patchSets));
    }
  }

  // -------------------------------------------------------------------------------------------
  // Events and the webhooks plugin

  #raiseChangeEvent(c: Change, type: string, ts: number, fields: JsonObject, ps: PatchSet | undefined): void {
    // Plain Gson over the event class: the subclass's fields, then patchSet, then ChangeEvent's
    // (change, project as Project.NameKey {name}, refName, changeKey {key}), then type and time.
    const body: JsonObject = {
      ...fields,
      patchSet: ps ? this.#patchSetAttr(c, ps) : undefined,
      change: this.#changeAttr(c),
      project: { name: c.project },
      refName: `refs/heads/${c.branch}`,
      changeKey: { key: c.changeId },
      type,
      eventCreatedOn: Math.floor(ts / 1000),
    };
    this.#raise(type, body);
  }

  #raiseRefUpdated(project: string, refName: string, oldRev: string, newRev: string, who: Account | undefined, ts: number): void {
    this.#raise('ref-updated', {
      submitter: who ? this.#acctAttr(who) : undefined,
      refUpdate: { oldRev, newRev, refName, project },
      type: 'ref-updated',
      eventCreatedOn: Math.floor(ts / 1000),
    });
  }

  #changeAttr(c: Change): JsonObject {
    return {
      project: c.project,
      branch: c.branch,
      topic: c.topic,
      id: c.changeId,
      number: c.number,
      subject: this.#subject(c),
      owner: this.#acctAttr(c.owner),
      url: `${this.#canonical}c/${c.project}/+/${c.number}`,
      commitMessage: this.#readCommit(c.project, last(c.patchSets).sha).message,
      createdOn: Math.floor(c.created / 1000),
      status: c.status,
      wip: c.wip ? true : undefined,
      private: c.isPrivate ? true : undefined,
    };
  }

  #patchSetAttr(c: Change, ps: PatchSet): JsonObject {
    const commit = this.#readCommit(c.project, ps.sha);
    const author = this.#accounts.find((a) => a.email !== undefined && a.email === commit.author.email);
    return {
      number: ps.number,
      revision: ps.sha,
      parents: ps.parents,
      ref: ps.ref,
      uploader: this.#acctAttr(ps.uploader),
      createdOn: Math.floor(ps.created / 1000),
      author: author ? this.#acctAttr(author) : { name: commit.author.name, email: commit.author.email, username: '' },
      kind: ps.kind,
      sizeInsertions: ps.insertions,
      sizeDeletions: ps.deletions,
    };
  }

  #acctAttr(a: Account): JsonObject {
    return { name: a.name, email: a.email, username: a.username };
  }

  #raise(type: string, body: JsonObject): void {
    const json = gsonJson(body);
    const parsed: unknown = JSON.parse(json);
    this.events.push({ type, body: parsed });
    for (const remote of this.#remotes) {
      if (remote.events.length > 0 && !remote.events.includes(type)) continue;
      const entry: PostedEvent = { type, body: parsed, delivered: false, attempts: 0, url: remote.url.href };
      this.posted.push(entry);
      this.#enqueue({ entry, remote, json, runs: 0 });
    }
  }

  #enqueue(d: Delivery): void {
    if (this.#closed) return;
    if (this.#paused) {
      if (this.#paused.drop) d.entry.dropped = true;
      else this.#held.push(d);
      this.#wakeIdle();
      return;
    }
    this.#queue.push(d);
    this.#pump();
  }

  #pump(): void {
    while (!this.#closed && !this.#paused && this.#running < WEBHOOK_THREADS && this.#queue.length > 0) {
      const d = this.#queue.shift();
      if (!d) break;
      this.#running++;
      void this.#runDelivery(d).finally(() => {
        this.#running--;
        this.#pump();
        this.#wakeIdle();
      });
    }
  }

  /** One PostTask run: a POST (repeated by the HTTP client on 5xx), then a reschedule on failure while runs < maxTries. */
  async #runDelivery(d: Delivery): Promise<void> {
    d.runs++;
    let ok = false;
    for (let execution = 1; !this.#closed; execution++) {
      const status = await this.#post(d);
      if (status !== undefined && [200, 201, 202, 204].includes(status)) {
        ok = true;
        break;
      }
      if (status === undefined || status < 500 || execution > d.remote.maxTries) break;
      await this.#sleep(d.remote.retryIntervalMs);
    }
    if (ok) {
      d.entry.delivered = true;
      return;
    }
    if (this.#closed || d.runs >= d.remote.maxTries) return;
    const t = setTimeout(() => {
      this.#timers.delete(t);
      this.#enqueue(d);
    }, d.remote.retryIntervalMs);
    this.#timers.add(t);
  }

  /** One request, plus the credentialed repeat after a Basic challenge; the final status, or undefined for a network error. */
  async #post(d: Delivery): Promise<number | undefined> {
    const first = await this.#request(d, undefined);
    d.entry.attempts++;
    const url = d.remote.url;
    if (first.status === 401 && /basic/i.test(first.challenge ?? '') && url.username !== '') {
      const credentials = `${decodeURIComponent(url.username)}:${decodeURIComponent(url.password)}`;
      const second = await this.#request(d, `Basic ${Buffer.from(credentials, 'utf8').toString('base64')}`);
      d.entry.attempts++;
      return second.status;
    }
    return first.status;
  }

  #request(d: Delivery, authorization: string | undefined): Promise<{ status?: number; challenge?: string }> {
    const url = d.remote.url;
    return new Promise((resolve) => {
      const req = httpRequest(
        {
          host: url.hostname,
          port: url.port || 80,
          path: `${url.pathname}${url.search}`,
          method: 'POST',
          agent: false,
          headers: {
            'Content-Type': 'application/json; charset=utf-8',
            'X-Origin-Url': this.#canonical,
            'User-Agent': 'Apache-HttpClient/4.5.14 (Java/17.0.10)',
            'Accept-Encoding': 'gzip,deflate',
            'Content-Length': Buffer.byteLength(d.json),
            ...(authorization ? { Authorization: authorization } : {}),
          },
        },
        (res) => {
          res.resume();
          res.on('end', () => resolve({ status: res.statusCode ?? 0, challenge: res.headers['www-authenticate'] }));
          res.on('error', () => resolve({}));
        },
      );
      req.setTimeout(WEBHOOK_TIMEOUT_MS, () => req.destroy(new Error('socket timeout')));
      req.on('error', () => resolve({}));
      req.end(d.json);
    });
  }

  #sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const t = setTimeout(() => {
        this.#timers.delete(t);
        resolve();
      }, ms);
      this.#timers.add(t);
    });
  }

  #idle(): boolean {
    return this.#closed || (this.#queue.length === 0 && this.#running === 0 && this.#timers.size === 0);
  }

  #wakeIdle(force = false): void {
    if (!force && !this.#idle()) return;
    const waiters = this.#idleWaiters;
    this.#idleWaiters = [];
    for (const w of waiters) w();
  }

  // -------------------------------------------------------------------------------------------
  // Bookkeeping

  /** Milliseconds, strictly increasing: every modification gets its own `updated`. */
  #tick(): number {
    this.#lastTs = Math.max(Date.now(), this.#lastTs + 1);
    return this.#lastTs;
  }

  #addMessage(c: Change, author: Account | undefined, ts: number, message: string, tag: string | undefined, patchset: number): void {
    c.messages.push({ id: randomBytes(20).toString('hex'), author, date: ts, message, tag, patchset });
  }

  #account(username: string): Account {
    const a = this.#accounts.find((x) => x.username === username);
    if (!a) throw new Error(`gerrit double: no account ${username}`);
    return a;
  }

  #accountById(id: number): Account {
    const a = this.#accounts.find((x) => x.id === id);
    if (!a) throw new Error(`gerrit double: no account ${id}`);
    return a;
  }

  #visibleChange(number: number, user: Account): Change {
    const c = this.#changes.get(number);
    if (!c || !this.#canSee(c, user)) throw new GerritDoubleError(404, `Not found: ${number}`);
    return c;
  }

  #throwIfRefused(a: HttpAnswer): void {
    if (a.status >= 300) throw new GerritDoubleError(a.status, a.text ?? `HTTP ${a.status}`);
  }

  #needProject(project: string): void {
    if (!this.#projects.has(project)) throw new Error(`gerrit double: no project ${project}`);
  }

  // -------------------------------------------------------------------------------------------
  // git

  #git(project: string, args: string[], o: { input?: string; env?: Record<string, string>; ok?: number[]; noGitDir?: boolean } = {}): { out: string; raw: string; status: number } {
    const env = { ...GIT_ENV, ...(o.noGitDir ? {} : { GIT_DIR: this.gitUrl(project) }), ...o.env };
    const r = spawnSync('git', ['-c', 'core.hooksPath=/dev/null', '-c', 'safe.directory=*', ...args], { env, input: o.input, encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 });
    if (r.error) throw r.error;
    const status = r.status ?? -1;
    if (status !== 0 && !(o.ok ?? []).includes(status)) throw new Error(`gerrit double: git ${args.join(' ')} failed (${status}): ${r.stderr.trim()}`);
    return { out: r.stdout.trim(), raw: r.stdout, status };
  }

  #resolve(project: string, rev: string): string | undefined {
    const r = this.#git(project, ['rev-parse', '--verify', '--quiet', `${rev}^{commit}`], { ok: [1, 128] });
    return r.status === 0 ? r.out : undefined;
  }

  #mustResolve(project: string, rev: string): string {
    const sha = this.#resolve(project, rev);
    if (!sha) throw new Error(`gerrit double: no commit ${rev} in ${project}`);
    return sha;
  }

  #treeOf(project: string, commit: string): string {
    return this.#git(project, ['rev-parse', `${commit}^{tree}`]).out;
  }

  /** `files` written over `base`'s tree (null deletes a path) with a temporary index. */
  #tree(project: string, base: string | undefined, files: Record<string, string | null>): string {
    const index = join(this.gitUrl(project), `double-index-${process.pid}-${++this.#seq}`);
    const env = { GIT_INDEX_FILE: index };
    try {
      this.#git(project, base ? ['read-tree', base] : ['read-tree', '--empty'], { env });
      const lines: string[] = [];
      for (const [path, content] of Object.entries(files)) {
        if (content === null) lines.push(`0 ${ZERO}\t${path}`);
        else lines.push(`100644 ${this.#git(project, ['hash-object', '-w', '--stdin'], { input: content }).out}\t${path}`);
      }
      if (lines.length) this.#git(project, ['update-index', '--index-info'], { env, input: `${lines.join('\n')}\n` });
      return this.#git(project, ['write-tree'], { env }).out;
    } finally {
      rmSync(index, { force: true });
    }
  }

  /** A commit with exactly `message` (read from stdin, so not reformatted) and dates from a counter. */
  #commitTree(project: string, tree: string, parents: string[], message: string, author: Ident, committer: Ident): string {
    this.#commitClock += 60;
    const date = `${this.#commitClock} +0000`;
    return this.#git(project, ['commit-tree', tree, ...parents.flatMap((p) => ['-p', p])], {
      input: message,
      env: { GIT_AUTHOR_NAME: author.name, GIT_AUTHOR_EMAIL: author.email, GIT_AUTHOR_DATE: date, GIT_COMMITTER_NAME: committer.name, GIT_COMMITTER_EMAIL: committer.email, GIT_COMMITTER_DATE: date },
    }).out;
  }

  #readCommit(project: string, sha: string): CommitData {
    const raw = this.#git(project, ['cat-file', 'commit', sha]).raw;
    const split = raw.indexOf('\n\n');
    const headers = (split < 0 ? raw : raw.slice(0, split)).split('\n');
    const message = split < 0 ? '' : raw.slice(split + 2);
    const person = (line: string | undefined): CommitData['author'] => {
      const m = /^(.*) <(.*)> ([0-9]+) ([+-])([0-9]{2})([0-9]{2})$/.exec(line ?? '');
      if (!m) return { name: '', email: '', time: 0, tz: 0 };
      return { name: m[1] ?? '', email: m[2] ?? '', time: Number(m[3]), tz: (m[4] === '-' ? -1 : 1) * (Number(m[5]) * 60 + Number(m[6])) };
    };
    const header = (name: string): string[] => headers.filter((h) => h.startsWith(`${name} `)).map((h) => h.slice(name.length + 1));
    return { tree: header('tree')[0] ?? '', parents: header('parent'), author: person(header('author')[0]), committer: person(header('committer')[0]), message };
  }

  /** Commits reachable from `from` but not from `not`, newest first. */
  #revList(project: string, from: string, not: string | undefined): string[] {
    return this.#git(project, ['rev-list', from, ...(not ? [`^${not}`] : [])]).out.split('\n').filter(Boolean);
  }

  #isAncestor(project: string, a: string, b: string): boolean {
    return this.#git(project, ['merge-base', '--is-ancestor', a, b], { ok: [1] }).status === 0;
  }

  /** A content merge of two commits (`git merge-tree --write-tree`): the tree, or undefined on conflict. */
  #mergeTrees(project: string, ours: string, theirs: string): string | undefined {
    const r = this.#git(project, ['merge-tree', '--write-tree', '--no-messages', ours, theirs], { ok: [1] });
    return r.status === 0 ? r.out.split('\n')[0] : undefined;
  }

  /**
   * The tree of a three-way merge of `ours` and `theirs` over `base` (git 2.39's merge-tree has no
   * --merge-base: two throwaway commits with `base` as their only parent make it the merge base).
   */
  #threeWay(project: string, base: string, ours: string, theirs: string): string | undefined {
    const ident = { name: 'gerrit double', email: 'double@localhost' };
    const env = { GIT_AUTHOR_NAME: ident.name, GIT_AUTHOR_EMAIL: ident.email, GIT_AUTHOR_DATE: '1600000000 +0000', GIT_COMMITTER_NAME: ident.name, GIT_COMMITTER_EMAIL: ident.email, GIT_COMMITTER_DATE: '1600000000 +0000' };
    const x = this.#git(project, ['commit-tree', this.#treeOf(project, ours), '-p', base], { input: 'ours\n', env }).out;
    const y = this.#git(project, ['commit-tree', this.#treeOf(project, theirs), '-p', base], { input: 'theirs\n', env }).out;
    return this.#mergeTrees(project, x, y);
  }

  /** ChangeKindCacheImpl's rules, prior patch set → next. */
  #kind(project: string, prior: string, next: string): ChangeKind {
    if (prior === next) return 'NO_CODE_CHANGE';
    const p = this.#readCommit(project, prior);
    const n = this.#readCommit(project, next);
    const sameDeltaAndTree =
      p.tree === n.tree && p.parents.length === n.parents.length && p.parents.every((pp, i) => this.#treeOf(project, pp) === this.#treeOf(project, n.parents[i] ?? ''));
    if (p.message !== n.message) return sameDeltaAndTree ? 'NO_CODE_CHANGE' : 'REWORK';
    if (sameDeltaAndTree) return 'NO_CHANGE';
    const [pFirst, ...pRest] = p.parents;
    const [nFirst, ...nRest] = n.parents;
    if (!pFirst || !nFirst) return 'REWORK';
    const onlyFirstParentChanged = pFirst !== nFirst && pRest.length === nRest.length && pRest.every((x) => nRest.includes(x));
    if ((p.parents.length > 1 || n.parents.length > 1) && !onlyFirstParentChanged) return 'REWORK';
    const picked = this.#threeWay(project, pFirst, nFirst, prior);
    if (picked === n.tree) return p.parents.length === 1 ? 'TRIVIAL_REBASE' : 'MERGE_FIRST_PARENT_UPDATE';
    return 'REWORK';
  }

  #diffStat(project: string, from: string, to: string): { insertions: number; deletions: number } {
    let insertions = 0;
    let deletions = 0;
    for (const line of this.#git(project, ['diff', '--numstat', from, to]).out.split('\n')) {
      const [ins, del] = line.split('\t');
      if (ins && ins !== '-') insertions += Number(ins);
      if (del && del !== '-') deletions += Number(del);
    }
    return { insertions, deletions };
  }
}

// ---------------------------------------------------------------------------------------------
// Query language: terms joined by spaces or AND, OR (lower precedence), NOT / `-`, parentheses;
// values quoted with "…" or {…}.

type QueryNode =
  | { kind: 'and' | 'or'; children: QueryNode[] }
  | { kind: 'not'; child: QueryNode }
  | { kind: 'term'; op: string; value: string }
  | { kind: 'word'; value: string };

type Token = { t: '(' | ')' | 'AND' | 'OR' | 'NOT' } | { t: 'term'; op: string; value: string } | { t: 'word'; value: string };

function tokenize(q: string): Token[] {
  const out: Token[] = [];
  let i = 0;
  const bad = (why: string): HttpAnswer => refusal(400, `line 1:${i} ${why}`);
  const readValue = (): string => {
    const ch = q[i];
    if (ch === '"' || ch === '{') {
      const close = ch === '"' ? '"' : '}';
      const end = q.indexOf(close, i + 1);
      if (end < 0) throw bad(`missing ${close}`);
      const v = q.slice(i + 1, end);
      i = end + 1;
      return v;
    }
    const start = i;
    while (i < q.length && !/\s/.test(q[i] ?? '') && q[i] !== ')' && q[i] !== '(') i++;
    return q.slice(start, i);
  };
  while (i < q.length) {
    const ch = q[i] ?? '';
    if (/\s/.test(ch)) {
      i++;
      continue;
    }
    if (ch === '(' || ch === ')') {
      out.push({ t: ch });
      i++;
      continue;
    }
    if (ch === '-' && i + 1 < q.length && !/\s/.test(q[i + 1] ?? '')) {
      out.push({ t: 'NOT' });
      i++;
      continue;
    }
    const m = /^([A-Za-z_][A-Za-z0-9_-]*):/.exec(q.slice(i));
    if (m?.[1]) {
      i += m[0].length;
      out.push({ t: 'term', op: m[1].toLowerCase(), value: readValue() });
      continue;
    }
    const word = readValue();
    if (word === '') throw bad(`unexpected ${ch}`);
    if (word === 'AND' || word === 'OR' || word === 'NOT') out.push({ t: word });
    else out.push({ t: 'word', value: word });
  }
  return out;
}

function parseQuery(q: string): QueryNode {
  const tokens = tokenize(q);
  let pos = 0;
  const peek = (): Token | undefined => tokens[pos];
  const orExpr = (): QueryNode => {
    const children = [andExpr()];
    while (peek()?.t === 'OR') {
      pos++;
      children.push(andExpr());
    }
    return children.length === 1 && children[0] ? children[0] : { kind: 'or', children };
  };
  const andExpr = (): QueryNode => {
    const children = [unary()];
    for (;;) {
      const t = peek();
      if (!t || t.t === ')' || t.t === 'OR') break;
      if (t.t === 'AND') pos++;
      children.push(unary());
    }
    return children.length === 1 && children[0] ? children[0] : { kind: 'and', children };
  };
  const unary = (): QueryNode => {
    const t = tokens[pos++];
    if (!t) throw refusal(400, `line 1:${q.length} no viable alternative at input '<EOF>'`);
    if (t.t === 'NOT') return { kind: 'not', child: unary() };
    if (t.t === '(') {
      const inner = orExpr();
      if (tokens[pos++]?.t !== ')') throw refusal(400, `line 1:${q.length} missing ')' at '<EOF>'`);
      return inner;
    }
    if (t.t === 'term') return { kind: 'term', op: t.op, value: t.value };
    if (t.t === 'word') return { kind: 'word', value: t.value };
    throw refusal(400, `line 1:0 no viable alternative at input '${t.t}'`);
  };
  const ast = orExpr();
  if (pos < tokens.length) throw refusal(400, `line 1:0 extraneous input '${tokens[pos]?.t ?? ''}'`);
  return ast;
}

/** `2006-01-02[ 15:04:05[.890][ -0700]]`, UTC when no zone is given. */
function parseQueryTime(v: string): number {
  const m = /^([0-9]{4})-([0-9]{2})-([0-9]{2})(?:[ T]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,9}))?)?(?:\s*([+-])([0-9]{2}):?([0-9]{2}))?$/.exec(v.trim());
  if (!m) throw refusal(400, `Unrecognized date: ${v}`);
  const ms = Date.UTC(Number(m[1]), Number(m[2]) - 1, Number(m[3]), Number(m[4] ?? 0), Number(m[5] ?? 0), Number(m[6] ?? 0), Number((m[7] ?? '0').padEnd(3, '0').slice(0, 3)));
  const offset = m[8] ? (m[8] === '-' ? -1 : 1) * (Number(m[9]) * 60 + Number(m[10])) * 60_000 : 0;
  if (Number.isNaN(ms)) throw refusal(400, `Unrecognized date: ${v}`);
  return ms - offset;
}

// ---------------------------------------------------------------------------------------------
// Helpers

/** Gerrit's timestamp: UTC, nine fraction digits (millisecond precision). */
function gerritTime(ms: number): string {
  return `${new Date(ms).toISOString().replace('T', ' ').replace('Z', '')}000000`;
}

function shortBranch(b: string): string {
  return b.startsWith('refs/heads/') ? b.slice('refs/heads/'.length) : b;
}

function changeRef(change: number, patchset: number): string {
  return `refs/changes/${String(change % 100).padStart(2, '0')}/${change}/${patchset}`;
}

function newChangeId(): string {
  return `I${randomBytes(20).toString('hex')}`;
}

function changeIdFooter(message: string): string | undefined {
  const paragraphs = message.trimEnd().split(/\n\s*\n/);
  const footer = paragraphs[paragraphs.length - 1] ?? '';
  const m = /^Change-Id: (I[0-9a-f]{40})\s*$/m.exec(footer);
  return paragraphs.length > 1 ? m?.[1] : undefined;
}

/** JGit's short message: the first paragraph on one line. */
function shortMessage(message: string): string {
  return (message.trim().split(/\n\s*\n/)[0] ?? '').replace(/\s*\n\s*/g, ' ').trim();
}

function identOf(a: Account): Ident {
  return { name: a.name ?? a.username, email: a.email ?? `${a.username}@localhost` };
}

function last<T>(xs: T[]): T {
  const x = xs[xs.length - 1];
  if (x === undefined) throw new Error('gerrit double: empty list');
  return x;
}

function sortedVotes(m: Map<number, Approval> | undefined): [number, Approval][] {
  return [...(m ?? [])].sort(([a], [b]) => a - b);
}

/** `Code-Review+2`, `Verified-1`, `-Code-Review` (a vote removed): LabelVote.format. */
function formatVote(label: string, value: number): string {
  return value === 0 ? `-${label}` : `${label}${value > 0 ? '+' : ''}${value}`;
}

/** `-2`, `-1`, ` 0`, `+1`: LabelValue.formatValue. */
function formatValue(v: number): string {
  return v === 0 ? ' 0' : v > 0 ? `+${v}` : String(v);
}

function labelValues(label: Label): JsonObject {
  const known: Record<string, Record<number, string>> = {
    'Code-Review': {
      [-2]: 'This shall not be submitted',
      [-1]: 'I would prefer this is not submitted as is',
      0: 'No score',
      1: 'Looks good to me, but someone else must approve',
      2: 'Looks good to me, approved',
    },
    Verified: { [-2]: 'Fails, do not submit', [-1]: 'Fails', 0: 'No score', 1: 'Verified', 2: 'Verified, ready to submit' },
  };
  const out: JsonObject = {};
  for (let v = label.min; v <= label.max; v++) out[formatValue(v)] = known[label.name]?.[v] ?? (v === 0 ? 'No score' : `${label.name} ${formatValue(v)}`);
  return out;
}

/** MergeUtil.writeMergeCommit's message: `Merge "<subject>"`, or the Change-Ids / topic of several, `into <branch>` off master. */
function mergeMessage(merged: { subject: string; changeId: string; topic: string | undefined }[], branch: string): string {
  let summary: string;
  const first = merged[0];
  if (merged.length === 1 && first) summary = `Merge "${first.subject}"`;
  else {
    const topics = [...new Set(merged.map((m) => m.topic).filter((t): t is string => t !== undefined && t !== ''))];
    if (topics.length === 1) summary = `Merge changes from topic "${topics[0] ?? ''}"`;
    else if (topics.length > 1) summary = `Merge changes from topics "${topics.join('", "')}"`;
    else summary = `Merge changes ${merged.slice(0, 5).map((m) => m.changeId.slice(0, 9)).join(',')}${merged.length > 5 ? ', ...' : ''}`;
  }
  if (branch !== 'master') summary += ` into ${branch}`;
  if (merged.length > 1) summary += `\n\n* changes:\n${merged.map((m) => `  ${m.subject}\n`).join('')}`;
  return summary;
}

/** JSON as Gson writes it by default: compact, nulls left out, HTML-safe escapes. */
function gsonJson(value: JsonObject): string {
  return JSON.stringify(value).replace(/[<>&='\u2028\u2029]/g, (ch) => `\\u${ch.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

function parseJsonBody(raw: Buffer, contentType: string | undefined): JsonObject {
  if (raw.length === 0) return {};
  if (!/^application\/json\b/i.test(contentType ?? '')) throw refusal(400, `Expected Content-Type: application/json`);
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw.toString('utf8'));
  } catch (e) {
    throw refusal(400, `Invalid JSON: ${(e as Error).message}`);
  }
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) throw refusal(400, 'Expected JSON object');
  return parsed as JsonObject;
}

async function readBody(req: IncomingMessage, max: number): Promise<Buffer | undefined> {
  const chunks: Buffer[] = [];
  let size = 0;
  let tooLarge = false;
  for await (const c of req) {
    const b = c as Buffer;
    size += b.length;
    if (size > max) tooLarge = true;
    else chunks.push(b);
  }
  return tooLarge ? undefined : Buffer.concat(chunks);
}

function sendText(res: ServerResponse, status: number, text: string): void {
  const body = text === '' || text.endsWith('\n') ? text : `${text}\n`;
  res.writeHead(status, { 'Content-Type': 'text/plain; charset=UTF-8', 'X-Content-Type-Options': 'nosniff', 'Content-Length': Buffer.byteLength(body) });
  res.end(body);
}
